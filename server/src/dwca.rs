//! The Darwin Core Archive export, for publishing to GBIF: `occurrence.txt` (one
//! Occurrence per sighting, tab-separated), `meta.xml` (which column is which Darwin Core
//! term) and `eml.xml` (the dataset's metadata, GBIF's profile), zipped.
//!
//! Rows are encoded as they come from the database and deflated straight into a file on
//! a blocking thread, so memory stays the same however many rows there are. Sensitive
//! species leave the server only generalised to a grid cell, or not at all.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::{BufWriter, Seek, Write};
use std::path::Path;

use anyhow::Context;
use futures::StreamExt;
use serde_json::Value;
use sha2::{Digest, Sha256};
use zip::write::SimpleFileOptions;

use crate::config::DwcaSettings;
use crate::db::{Db, ExportFilter, ExportRow};

const DWC: &str = "http://rs.tdwg.org/dwc/terms/";

/// The columns of `occurrence.txt`, in order: each a Darwin Core term. Column 0 is the
/// core id.
pub const TERMS: [&str; 20] = [
    "occurrenceID",
    "basisOfRecord",
    "eventDate",
    "decimalLatitude",
    "decimalLongitude",
    "geodeticDatum",
    "coordinateUncertaintyInMeters",
    "scientificName",
    "vernacularName",
    "kingdom",
    "taxonRank",
    "individualCount",
    "occurrenceStatus",
    "recordedBy",
    "eventID",
    "countryCode",
    "locality",
    "dataGeneralizations",
    "informationWithheld",
    "dynamicProperties",
];

/// The term's URI, e.g. `http://rs.tdwg.org/dwc/terms/eventDate`.
pub fn term_uri(term: &str) -> String {
    format!("{DWC}{term}")
}

/// Attribute keys that name the patrol or session a sighting belongs to (`eventID`),
/// first found wins.
const EVENT_KEYS: [&str; 6] = [
    "eventID",
    "event_id",
    "patrol_id",
    "session_id",
    "patrol",
    "session",
];

/// Metres per degree of latitude, rounded up (it is 110.57 km at the equator and
/// 111.69 km at the poles; a degree of longitude is never longer).
const METRES_PER_DEGREE: f64 = 111_700.0;

/// Taxonomy for one species-field value, from the mapping file.
#[derive(Debug, Clone, Default)]
pub struct Taxon {
    pub scientific_name: String,
    pub vernacular_name: String,
    pub kingdom: String,
    pub taxon_rank: String,
}

/// How a sensitive species is protected.
#[derive(Debug, Clone, Copy)]
enum Protection {
    Grid(f64),
    Exclude,
}

/// What an archive holds and what was left out.
#[derive(Debug, Clone, Copy, Default)]
pub struct DwcaSummary {
    /// Occurrences written.
    pub rows: u64,
    /// Sightings left out because they have no species (`dwca.allow_unnamed` is off).
    pub unnamed: u64,
    /// Sightings of excluded sensitive species, left out.
    pub excluded: u64,
    /// Occurrences whose coordinates were generalised to a grid.
    pub generalised: u64,
    /// Sightings left out because their stored time cannot be rendered.
    pub unrenderable: u64,
    /// The archive's size.
    pub bytes: u64,
    /// Give this as `since` next time to get only newer rows.
    pub next_cursor: i64,
}

/// The archive writer for one configuration: metadata checked, mapping file read.
pub struct Publisher {
    settings: DwcaSettings,
    taxa: HashMap<String, Taxon>,
    protect: HashMap<String, Protection>,
    basis_by_device: HashMap<String, String>,
}

impl Publisher {
    /// Checks that every setting the metadata needs is there (the error names the first
    /// one missing) and reads the species mapping file.
    pub fn new(settings: &DwcaSettings) -> anyhow::Result<Publisher> {
        let required = [
            ("title", &settings.title),
            ("description", &settings.description),
            ("publishing_organisation", &settings.publishing_organisation),
            ("creator", &settings.creator),
            ("contact", &settings.contact),
            ("metadata_provider", &settings.metadata_provider),
        ];
        for (name, value) in required {
            anyhow::ensure!(
                value.as_deref().is_some_and(|v| !v.trim().is_empty()),
                "dwca.{name} is not set: a Darwin Core Archive needs it for its metadata (eml.xml); \
                 set it in the [dwca] section of the configuration"
            );
        }
        anyhow::ensure!(
            settings.licence.is_some(),
            "dwca.licence is not set: a Darwin Core Archive needs it for its metadata (eml.xml); \
             set it in the [dwca] section to CC0-1.0, CC-BY-4.0 or CC-BY-NC-4.0"
        );
        let taxa = match &settings.species_file {
            Some(path) => {
                read_taxa(path).with_context(|| format!("dwca.species_file {}", path.display()))?
            }
            None => HashMap::new(),
        };
        let protect = settings
            .sensitive
            .iter()
            .map(|s| {
                let p = if s.exclude {
                    Protection::Exclude
                } else {
                    Protection::Grid(s.grid_degrees.unwrap_or(settings.sensitive_grid_degrees))
                };
                (key(&s.name), p)
            })
            .collect();
        let basis_by_device = settings
            .basis_of_record_by_device
            .iter()
            .map(|(d, b)| (key(d), b.as_str().to_string()))
            .collect();
        Ok(Publisher {
            settings: settings.clone(),
            taxa,
            protect,
            basis_by_device,
        })
    }

    /// Writes the archive of the matching sightings into `file` (from its start) and
    /// gives the file back.
    pub async fn write(
        &self,
        db: &Db,
        filter: ExportFilter,
        file: std::fs::File,
    ) -> anyhow::Result<(std::fs::File, DwcaSummary)> {
        let meta = meta_xml();
        let eml = self.eml_xml();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(4);
        let zipper = tokio::task::spawn_blocking(move || -> anyhow::Result<std::fs::File> {
            let mut zip = zip::ZipWriter::new(BufWriter::with_capacity(256 * 1024, file));
            let small =
                SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
            zip.start_file("meta.xml", small)?;
            zip.write_all(meta.as_bytes())?;
            zip.start_file("eml.xml", small)?;
            zip.write_all(eml.as_bytes())?;
            zip.start_file("occurrence.txt", small.large_file(true))?;
            while let Some(chunk) = rx.blocking_recv() {
                zip.write_all(chunk.as_bytes())?;
            }
            let mut file = zip.finish()?.into_inner().map_err(|e| e.into_error())?;
            file.flush()?;
            file.rewind()?;
            Ok(file)
        });

        let mut summary = DwcaSummary {
            next_cursor: filter.since,
            ..Default::default()
        };
        let bound = filter.until.map(|until| until.max(filter.since));
        let mut buf = TERMS.join("\t");
        buf.push('\n');
        let mut rows = db.export(filter);
        let mut sent = Ok(());
        while let Some(row) = rows.next().await {
            let row = match row {
                Ok(row) => row,
                Err(e) => {
                    sent = Err(anyhow::Error::from(e));
                    break;
                }
            };
            summary.next_cursor = row.cursor;
            match self.row(&row, &mut buf) {
                Outcome::Written { generalised } => {
                    summary.rows += 1;
                    summary.generalised += u64::from(generalised);
                }
                Outcome::Unnamed => summary.unnamed += 1,
                Outcome::Excluded => summary.excluded += 1,
                Outcome::Unrenderable => summary.unrenderable += 1,
            }
            if buf.len() >= 64 * 1024 && tx.send(std::mem::take(&mut buf)).await.is_err() {
                break;
            }
        }
        if sent.is_ok() && !buf.is_empty() {
            let _ = tx.send(buf).await;
        }
        drop(tx);
        let file = zipper.await.context("the archive writer panicked")??;
        sent?;
        summary.bytes = file.metadata()?.len();
        summary.next_cursor = bound.unwrap_or(summary.next_cursor);
        Ok((file, summary))
    }

    /// Appends one `occurrence.txt` line for `r`, or says why there is none.
    fn row(&self, r: &ExportRow, out: &mut String) -> Outcome {
        let s = &r.sighting;
        if r.problem.is_some() {
            return Outcome::Unrenderable;
        }
        let local = s
            .species
            .as_deref()
            .map(str::trim)
            .filter(|n| !n.is_empty());
        let taxon = local.and_then(|n| self.taxa.get(&key(n)));
        let scientific = match (taxon, local) {
            (Some(t), _) if !t.scientific_name.is_empty() => Some(t.scientific_name.as_str()),
            (_, local) => local,
        };
        if scientific.is_none() && !self.settings.allow_unnamed {
            return Outcome::Unnamed;
        }
        let protection = [scientific, local]
            .into_iter()
            .flatten()
            .find_map(|n| self.protect.get(&key(n)).copied());
        let grid = match protection {
            Some(Protection::Exclude) => return Outcome::Excluded,
            Some(Protection::Grid(g)) => Some(g),
            None => None,
        };

        let mut attributes = r.attributes();
        let event_id = EVENT_KEYS.iter().find_map(|k| match attributes.get(*k) {
            Some(Value::String(v)) if !v.trim().is_empty() => Some(v.clone()),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        });
        if event_id.is_some() {
            for k in EVENT_KEYS {
                attributes.remove(k);
            }
        }

        let _ = write!(out, "urn:uuid:{}\t", s.id);
        let basis = self
            .basis_by_device
            .get(&key(&r.device))
            .map_or(self.settings.basis_of_record.as_str(), String::as_str);
        cell(out, basis);
        let _ = write!(out, "{}\t", s.observed_at.to_rfc3339());
        let accuracy = s.accuracy.filter(|a| a.is_finite() && *a > 0.0);
        match grid {
            None => {
                let _ = write!(out, "{}\t{}\tEPSG:4326\t", s.latitude, s.longitude);
                if let Some(a) = accuracy {
                    let _ = write!(out, "{a}");
                }
                out.push('\t');
            }
            Some(g) => {
                let decimals = grid_decimals(g);
                let _ = write!(
                    out,
                    "{:.*}\t{:.*}\tEPSG:4326\t{}\t",
                    decimals,
                    cell_centre(s.latitude, g),
                    decimals,
                    cell_centre(s.longitude, g),
                    widened_uncertainty(accuracy, g)
                );
            }
        }
        cell(out, scientific.unwrap_or(""));
        let t = taxon.cloned().unwrap_or_default();
        cell(out, &t.vernacular_name);
        cell(out, &t.kingdom);
        cell(out, &t.taxon_rank);
        match s.count {
            Some(n) => {
                let status = if n == 0 { "absent" } else { "present" };
                let _ = write!(out, "{n}\t{status}\t");
            }
            None => out.push_str("\tpresent\t"),
        }
        let observer = s
            .observer
            .as_deref()
            .map(str::trim)
            .filter(|o| !o.is_empty());
        match observer {
            Some(o) if self.settings.pseudonymise_observers => {
                let _ = write!(out, "{}\t", self.pseudonym(o));
            }
            Some(o) => cell(out, o),
            None => out.push('\t'),
        }
        cell(out, event_id.as_deref().unwrap_or(""));
        cell(out, self.settings.country_code.as_deref().unwrap_or(""));
        cell(out, self.settings.locality.as_deref().unwrap_or(""));
        match grid {
            None => {
                out.push_str("\t\t");
                if !attributes.is_empty() {
                    clean(out, &Value::Object(attributes).to_string());
                }
            }
            Some(g) => {
                let _ = write!(
                    out,
                    "Coordinates generalised to the centre of a {g} degree grid cell \
                     (sensitive species)\tExact coordinates and the sighting's other \
                     attributes withheld (sensitive species)\t"
                );
            }
        }
        out.push('\n');
        Outcome::Written {
            generalised: grid.is_some(),
        }
    }

    /// A stable pseudonym: the observer's name hashed with the secret key.
    fn pseudonym(&self, observer: &str) -> String {
        let secret = self.settings.pseudonym_key.as_deref().unwrap_or("");
        let mut h = Sha256::new();
        h.update((secret.len() as u64).to_be_bytes());
        h.update(secret.as_bytes());
        h.update(observer.as_bytes());
        format!("observer-{}", &hex::encode(h.finalize())[..16])
    }

    /// `eml.xml`: GBIF's metadata profile (EML 2.1.1) from the `[dwca]` settings.
    pub fn eml_xml(&self) -> String {
        let s = &self.settings;
        let text = |v: &Option<String>| xml(v.as_deref().unwrap_or("").trim());
        let licence = s.licence.expect("checked in new");
        let title = s.title.as_deref().unwrap_or("");
        let package = uuid::Uuid::new_v5(
            &uuid::Uuid::NAMESPACE_URL,
            format!("ctdata:dwca:{title}").as_bytes(),
        );
        let organisation = text(&s.publishing_organisation);
        let today = chrono::Utc::now().format("%Y-%m-%d");
        let mut e = String::new();
        let _ = write!(
            e,
            r#"<?xml version="1.0" encoding="UTF-8"?>
<eml:eml xmlns:eml="eml://ecoinformatics.org/eml-2.1.1"
         xmlns:dc="http://purl.org/dc/terms/"
         xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"
         xsi:schemaLocation="eml://ecoinformatics.org/eml-2.1.1 http://rs.gbif.org/schema/eml-gbif-profile/1.1/eml.xsd"
         packageId="{package}" system="http://gbif.org" scope="system" xml:lang="eng">
  <dataset>
    <title xml:lang="eng">{title}</title>
{creator}{provider}{publisher}    <pubDate>{today}</pubDate>
    <language>eng</language>
    <abstract>
      <para>{description}</para>
    </abstract>
    <intellectualRights>
      <para>This work is licensed under a <ulink url="{url}"><citetitle>{licence_title}</citetitle></ulink>.</para>
    </intellectualRights>
{contact}  </dataset>
  <additionalMetadata>
    <metadata>
      <gbif>
        <dateStamp>{today}</dateStamp>
        <hierarchyLevel>dataset</hierarchyLevel>
      </gbif>
    </metadata>
  </additionalMetadata>
</eml:eml>
"#,
            title = xml(title.trim()),
            creator = party("creator", s.creator.as_deref(), Some(&organisation), None),
            provider = party(
                "metadataProvider",
                s.metadata_provider.as_deref(),
                Some(&organisation),
                None
            ),
            publisher = party(
                "associatedParty",
                None,
                Some(&organisation),
                Some("publisher")
            ),
            description = text(&s.description),
            url = licence.url(),
            licence_title = licence.title(),
            contact = party("contact", s.contact.as_deref(), Some(&organisation), None),
        );
        e
    }
}

enum Outcome {
    Written { generalised: bool },
    Unnamed,
    Excluded,
    Unrenderable,
}

/// `meta.xml`: the Darwin Core text descriptor of `occurrence.txt`.
pub fn meta_xml() -> String {
    let mut m = String::from(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<archive xmlns="http://rs.tdwg.org/dwc/text/" metadata="eml.xml">
  <core encoding="UTF-8" fieldsTerminatedBy="\t" linesTerminatedBy="\n" fieldsEnclosedBy="" ignoreHeaderLines="1" rowType="http://rs.tdwg.org/dwc/terms/Occurrence">
    <files>
      <location>occurrence.txt</location>
    </files>
    <id index="0"/>
"#,
    );
    for (i, term) in TERMS.iter().enumerate() {
        let _ = writeln!(m, "    <field index=\"{i}\" term=\"{}\"/>", term_uri(term));
    }
    m.push_str("  </core>\n</archive>\n");
    m
}

/// An EML responsible party from `Name <email>` (or `Name`), with an organisation.
fn party(
    element: &str,
    who: Option<&str>,
    organisation: Option<&str>,
    role: Option<&str>,
) -> String {
    let mut p = format!("    <{element}>\n");
    if let Some(who) = who {
        let (name, email) = match who.trim().rsplit_once('<') {
            Some((name, rest)) if rest.ends_with('>') => {
                (name.trim(), Some(rest.trim_end_matches('>').trim()))
            }
            _ => (who.trim(), None),
        };
        let (given, sur) = match name.rsplit_once(' ') {
            Some((given, sur)) => (Some(given.trim()), sur.trim()),
            None => (None, name),
        };
        p.push_str("      <individualName>\n");
        if let Some(given) = given {
            let _ = writeln!(p, "        <givenName>{}</givenName>", xml(given));
        }
        let _ = writeln!(p, "        <surName>{}</surName>", xml(sur));
        p.push_str("      </individualName>\n");
        if let Some(org) = organisation {
            let _ = writeln!(p, "      <organizationName>{org}</organizationName>");
        }
        if let Some(email) = email {
            let _ = writeln!(
                p,
                "      <electronicMailAddress>{}</electronicMailAddress>",
                xml(email)
            );
        }
    } else if let Some(org) = organisation {
        let _ = writeln!(p, "      <organizationName>{org}</organizationName>");
    }
    if let Some(role) = role {
        let _ = writeln!(p, "      <role>{role}</role>");
    }
    let _ = writeln!(p, "    </{element}>");
    p
}

/// Escapes text for XML content and attribute values.
fn xml(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&apos;"),
            c if c.is_control() && !matches!(c, '\n' | '\t') => o.push(' '),
            c => o.push(c),
        }
    }
    o
}

/// A text cell and its tab: tabs, line breaks and other control characters become
/// spaces, as the descriptor declares no quoting or escaping.
fn cell(out: &mut String, v: &str) {
    clean(out, v);
    out.push('\t');
}

fn clean(out: &mut String, v: &str) {
    if v.contains(|c: char| c.is_control()) {
        out.extend(v.chars().map(|c| if c.is_control() { ' ' } else { c }));
    } else {
        out.push_str(v);
    }
}

/// The lookup key of a species or device name: trimmed, case folded.
fn key(name: &str) -> String {
    name.trim().to_lowercase()
}

/// The centre of the grid cell of size `g` degrees holding `x`.
pub fn cell_centre(x: f64, g: f64) -> f64 {
    ((x / g).floor() + 0.5) * g
}

/// Decimals that show a cell centre of a `g` degree grid exactly (one more than `g` needs).
fn grid_decimals(g: f64) -> usize {
    let mut d = 0;
    while d < 9 && ((g * 10f64.powi(d as i32)).round() - g * 10f64.powi(d as i32)).abs() > 1e-9 {
        d += 1;
    }
    d + 1
}

/// Metres from a cell's centre that cover the whole cell, plus the position's own accuracy.
pub fn widened_uncertainty(accuracy: Option<f64>, g: f64) -> u64 {
    let half_diagonal = g * METRES_PER_DEGREE * std::f64::consts::SQRT_2 / 2.0;
    (half_diagonal + accuracy.unwrap_or(0.0)).ceil() as u64
}

/// Reads the species mapping: CSV with a header line naming `local` (or `code` /
/// `species`), `scientificName`, and optionally `vernacularName`, `kingdom`, `taxonRank`.
fn read_taxa(path: &Path) -> anyhow::Result<HashMap<String, Taxon>> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .trim(csv::Trim::All)
        .from_path(path)?;
    let headers = reader.headers()?.clone();
    let column = |names: &[&str]| {
        headers
            .iter()
            .position(|h| names.iter().any(|n| h.eq_ignore_ascii_case(n)))
    };
    let local = column(&["local", "code", "species"])
        .context("the header line needs a column \"local\" (the species field's value)")?;
    let scientific =
        column(&["scientificName"]).context("the header line needs a column \"scientificName\"")?;
    let vernacular = column(&["vernacularName"]);
    let kingdom = column(&["kingdom"]);
    let rank = column(&["taxonRank"]);
    let mut taxa = HashMap::new();
    for (n, record) in reader.records().enumerate() {
        let record = record.with_context(|| format!("line {}", n + 2))?;
        let get = |i: Option<usize>| i.and_then(|i| record.get(i)).unwrap_or("").to_string();
        let name = get(Some(local));
        if name.is_empty() {
            continue;
        }
        taxa.insert(
            key(&name),
            Taxon {
                scientific_name: get(Some(scientific)),
                vernacular_name: get(vernacular),
                kingdom: get(kingdom),
                taxon_rank: get(rank),
            },
        );
    }
    Ok(taxa)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cell_centres_sit_inside_their_cell_and_the_uncertainty_covers_it() {
        for (x, g) in [
            (-1.2345, 0.1),
            (36.81234, 0.1),
            (0.0, 0.5),
            (179.99, 0.25),
            (-89.99, 1.0),
        ] {
            let c = cell_centre(x, g);
            assert!((c - x).abs() <= g / 2.0 + 1e-9, "{x} {g} {c}");
            let shown: f64 = format!("{:.*}", grid_decimals(g), c).parse().unwrap();
            assert!((shown - c).abs() < 1e-9, "{x} {g} {shown}");
        }
        assert_eq!(grid_decimals(0.1), 2);
        assert_eq!(grid_decimals(1.0), 1);
        assert_eq!(grid_decimals(0.25), 3);
        assert!(widened_uncertainty(None, 0.1) as f64 >= 0.05 * 111_320.0 * 2f64.sqrt());
    }

    #[test]
    fn pseudonyms_are_stable_per_observer_and_key() {
        let mut settings = DwcaSettings {
            title: Some("t".into()),
            description: Some("d".into()),
            publishing_organisation: Some("o".into()),
            creator: Some("c".into()),
            contact: Some("c".into()),
            metadata_provider: Some("m".into()),
            licence: Some(crate::config::Licence::Cc0),
            pseudonymise_observers: true,
            pseudonym_key: Some("a secret of sixteen+".into()),
            ..Default::default()
        };
        let p = Publisher::new(&settings).unwrap();
        let a = p.pseudonym("T. Mokoena");
        assert_eq!(a, p.pseudonym("T. Mokoena"));
        assert_ne!(a, p.pseudonym("L. Nkosi"));
        assert!(!a.contains("Mokoena") && a.starts_with("observer-"), "{a}");
        settings.pseudonym_key = Some("another secret of sixteen".into());
        assert_ne!(
            a,
            Publisher::new(&settings).unwrap().pseudonym("T. Mokoena")
        );
    }

    #[test]
    fn cells_lose_tabs_and_line_breaks() {
        let mut out = String::new();
        cell(&mut out, "a\tb\nc\r\\N");
        assert_eq!(out, "a b c \\N\t");
    }
}
