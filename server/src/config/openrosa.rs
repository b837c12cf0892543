//! Settings of the attachment store (`[storage]`) and of the OpenRosa channel
//! (`[openrosa]`, ODK Collect, KoboCollect and the CyberTracker app's connectors).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageSettings {
    /// Where attachments are kept, by SHA-256. Default: `attachments` beside the drop
    /// directory (`./ctdata-data/attachments`).
    pub attachments_dir: Option<PathBuf>,
    /// Largest single attachment accepted, in bytes, on any channel.
    pub max_attachment_bytes: u64,
}

impl Default for StorageSettings {
    fn default() -> Self {
        StorageSettings {
            attachments_dir: None,
            max_attachment_bytes: 100 << 20,
        }
    }
}

impl StorageSettings {
    /// The attachments folder, for a drop directory at `drop_dir`.
    pub fn attachments_dir(&self, drop_dir: &Path) -> PathBuf {
        match &self.attachments_dir {
            Some(dir) => dir.clone(),
            None => drop_dir
                .parent()
                .unwrap_or(Path::new("."))
                .join("attachments"),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OpenRosaSettings {
    /// Accept OpenRosa submissions on `/openrosa/…`.
    pub enabled: bool,
    /// Advertised as `X-OpenRosa-Accept-Content-Length`: the phone splits a submission
    /// with larger attachments over several POSTs of about this size.
    pub accept_content_length: u64,
    /// Largest single POST accepted, in bytes (XML and attachments together).
    pub max_submission_bytes: u64,
    /// Largest submission XML accepted, in bytes.
    pub max_xml_bytes: u64,
    /// Most attachments one submission may hold, over all its POSTs.
    pub max_attachments: usize,
    /// How each form's fields become sightings; forms not listed use the defaults.
    pub forms: Vec<FormMapping>,
}

impl Default for OpenRosaSettings {
    fn default() -> Self {
        OpenRosaSettings {
            enabled: true,
            accept_content_length: 10 << 20,
            max_submission_bytes: 100 << 20,
            max_xml_bytes: 4 << 20,
            max_attachments: 100,
            forms: Vec::new(),
        }
    }
}

/// Which fields of one form fill a sighting. Each names a field by its name, or by its
/// path below the instance root (or below the repeat, for a form with `repeat`), such
/// as `"details/species"`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FormMapping {
    /// The form id: the `id` attribute of the submission's root element.
    pub form_id: String,
    /// The time of the sighting. Default: `end`, then `start`, then `today`.
    pub time: Option<String>,
    /// A `geopoint` ("lat lon altitude accuracy"). Default: the first geopoint.
    pub location: Option<String>,
    pub species: Option<String>,
    pub count: Option<String>,
    pub observer: Option<String>,
    /// A repeat group: each of its entries becomes a sighting of its own (fields not
    /// found in the entry are looked up in the whole submission).
    pub repeat: Option<String>,
}

impl OpenRosaSettings {
    pub fn form(&self, form_id: &str) -> Option<&FormMapping> {
        self.forms.iter().find(|f| f.form_id == form_id)
    }
}
