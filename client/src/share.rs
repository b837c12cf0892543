//! The share protocol: the server's `CTData` drop folder, mounted on this machine.
//! A batch goes to `CTData/<device>/NAME.part`, is fsynced, then renamed to `NAME`:
//! the server ignores `.part` files, so it never sees half a batch.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use ctdata_api::{Receipt, Status};

use crate::config::Endpoint;
use crate::home::sync_dir;
use crate::send::{Outcome, Proof};

/// The device's folder in the share. The share itself must exist: creating it would
/// hide an unmounted share behind a local folder nobody reads.
pub fn device_dir(endpoint: &Endpoint, device: &str) -> Result<PathBuf, String> {
    let root = endpoint.share_root();
    if !root.is_dir() {
        return Err(format!(
            "the share folder {} is not there (is the share mounted?)",
            root.display()
        ));
    }
    Ok(root.join(device))
}

/// Copies a batch into this device's folder; a batch relayed for a handheld (send on
/// sync) into its `relay/<handheld>/` folder, which the server takes as the
/// handheld's when this device may relay for it.
pub fn put(
    endpoint: &Endpoint,
    device: &str,
    path: &Path,
    name: &str,
    relay: Option<&str>,
) -> Outcome {
    match device_dir(endpoint, device) {
        Ok(dir) => match relay {
            Some(handheld) => put_into(&dir.join(RELAY_FOLDER).join(handheld), path, name),
            None => put_into(&dir, path, name),
        },
        Err(why) => Outcome::Retry(why),
    }
}

/// The folder in a device's folder (over FTP: its root) that relayed batches go to.
pub const RELAY_FOLDER: &str = "relay";

/// Copies `path` into `dir` as `name` through `name.part`.
pub fn put_into(dir: &Path, path: &Path, name: &str) -> Outcome {
    match copy_in(dir, path, name) {
        Ok(()) => Outcome::Delivered {
            duplicate: false,
            receipt: Proof::handed_over(dir.join(name).display().to_string(), "share", None),
        },
        Err(e) => Outcome::Retry(format!("cannot write to {}: {e}", dir.display())),
    }
}

fn copy_in(dir: &Path, path: &Path, name: &str) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let part = dir.join(format!("{name}.part"));
    let mut to = File::create(&part)?;
    io::copy(&mut File::open(path)?, &mut to)?;
    to.sync_all()?;
    drop(to);
    fs::rename(&part, dir.join(name))?;
    sync_dir(dir)
}

/// What the server said about delivered batches, from its `receipts/<device>/` folder
/// in the share: counts by status and the reason of each refused one.
pub fn server_receipts(endpoint: &Endpoint, device: &str, sent: &[String]) -> String {
    let dir = endpoint.share_root().join("receipts").join(device);
    let (mut stored, mut before, mut waiting) = (0, 0, 0);
    let mut refused = Vec::new();
    for name in sent {
        let receipt = fs::read(dir.join(format!("{name}.receipt.json")))
            .ok()
            .and_then(|b| serde_json::from_slice::<Receipt>(&b).ok());
        let Some(r) = receipt else {
            waiting += 1;
            continue;
        };
        match r.status {
            Status::Ingested => stored += 1,
            Status::Duplicate => before += 1,
            Status::Rejected => refused.push(format!(
                "\n  refused by the server: {name}: {}",
                r.reason.as_deref().unwrap_or("no reason given")
            )),
        }
    }
    format!(
        "{stored} stored, {before} already stored before, {} refused, {waiting} not yet taken{}",
        refused.len(),
        refused.concat()
    )
}
