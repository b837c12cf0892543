//! The drop directory's layout: every folder name the server uses in it, and the paths
//! and file names built from them. No other module names a folder.
//!
//! Top level (the names are reserved, in any letter case, and never become devices):
//! - `.processing/<device>/<stamp>[.<channel>][.cut]-<name>`: claimed share and FTP files
//!   (`.processing/<device>+<station>/` for files a station relays from its
//!   `relay/<device>/` folder);
//! - `.incoming/<device>/<stamp>-upload`: HTTP request bodies being spooled;
//! - `.uploads/<device>/<id>.part` and `<id>.json`: resumable HTTP uploads (tus);
//! - `.pulling/<source>/<device>/<stamp>-<name>`: files fetched from remote sources;
//! - `archive/<date>/<device>/<claim>`: stored (or already stored) files;
//! - `rejected/<device>/<claim>` with `<claim>.reason.txt` beside it: refused files;
//! - `receipts/<device>/<name>.receipt.json`: receipts for file-based senders.
//!
//! `reference/`, at the top or inside a device's folder, holds reference files
//! (KeySets, species lists) and is never ingested.
//!
//! `<device>` is [`NO_DEVICE`] for files that arrived without one (the top level of
//! the share, a source's top folder).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use chrono::Utc;

use crate::types::Channel;

/// Claimed files, waiting for (or in) their ingest.
pub const PROCESSING: &str = ".processing";
/// HTTP request bodies being spooled.
pub const INCOMING: &str = ".incoming";
/// Resumable uploads: kept across restarts until finished or expired.
pub const UPLOADS: &str = ".uploads";
/// Files fetched from remote sources, waiting for their ingest; a hidden name, so the
/// drop-directory loop never takes them.
pub const PULLING: &str = ".pulling";
pub const ARCHIVE: &str = "archive";
pub const REJECTED: &str = "rejected";
pub const RECEIPTS: &str = "receipts";
/// Folder standing for "no device" in the server's own folders.
pub const NO_DEVICE: &str = "_";

/// Every top-level folder the server owns.
const SERVER_FOLDERS: [&str; 7] = [
    PROCESSING, INCOMING, UPLOADS, PULLING, ARCHIVE, REJECTED, RECEIPTS,
];
/// The folders the drop-directory loop needs before its first pass.
pub const DROP_DIR_FOLDERS: [&str; 4] = [PROCESSING, ARCHIVE, REJECTED, RECEIPTS];

/// Suffix of the file beside a rejected file that says why it was refused.
const REASON_SUFFIX: &str = ".reason.txt";
/// Suffix of a receipt file.
const RECEIPT_SUFFIX: &str = ".receipt.json";
/// Longest sender file name accepted where a receipt file is written beside it:
/// `<name>.receipt.json`, written under a temporary `.<name>.receipt.json.tmp`, must
/// fit a filesystem's 255-byte name limit.
pub const MAX_NAME_BYTES: usize = 255 - ".receipt.json.tmp".len() - 1;

/// The folders of one drop directory.
#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Layout {
        Layout {
            root: root.to_path_buf(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A server folder at the top level (one of this module's constants).
    pub fn folder(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Where `device`'s HTTP uploads are spooled: a folder per device, so concurrent
    /// uploads do not all queue for one directory lock.
    pub fn incoming(&self, device: &str) -> PathBuf {
        self.root.join(INCOMING).join(device)
    }

    /// Where `device`'s resumable uploads are kept.
    pub fn uploads(&self, device: &str) -> PathBuf {
        self.root.join(UPLOADS).join(device)
    }

    /// Where one source's fetched files wait for their ingest.
    pub fn pulling(&self, source: &str) -> PathBuf {
        self.root.join(PULLING).join(source)
    }

    /// The lock file that lets one pull of a source run at a time.
    pub fn pull_lock(&self, source: &str) -> PathBuf {
        self.root.join(PULLING).join(format!("{source}.lock"))
    }

    /// Where files of `device_dir` are claimed to.
    pub fn processing(&self, device_dir: &str) -> PathBuf {
        self.root.join(PROCESSING).join(device_dir)
    }

    /// Today's archive folder of `device_dir`.
    pub fn archive(&self, device_dir: &str) -> PathBuf {
        let day = Utc::now().format("%Y-%m-%d").to_string();
        self.root.join(ARCHIVE).join(day).join(device_dir)
    }

    pub fn rejected(&self, device_dir: &str) -> PathBuf {
        self.root.join(REJECTED).join(device_dir)
    }

    pub fn receipts(&self, device: &str) -> PathBuf {
        self.root.join(RECEIPTS).join(device)
    }

    /// A path recorded relative to the drop directory (a rejection's stored file).
    pub fn resolve(&self, relative: &str) -> PathBuf {
        self.root.join(relative)
    }

    /// Removes a rejected file (given as recorded) and its reason; one already gone is
    /// not an error. On failure, the path that could not be removed.
    pub fn remove_rejected(&self, relative: &str) -> Result<(), (PathBuf, io::Error)> {
        let path = self.resolve(relative);
        for p in [reason_file(&path), path] {
            match fs::remove_file(&p) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err((p, e)),
                _ => {}
            }
        }
        Ok(())
    }
}

/// The drop-directory path a rejected file is kept at, as recorded with the rejection.
pub fn rejected_relative(device_dir: &str, claim: &str) -> String {
    Path::new(REJECTED)
        .join(device_dir)
        .join(claim)
        .to_string_lossy()
        .into_owned()
}

/// The file beside a rejected file that says why.
pub fn reason_file(rejected: &Path) -> PathBuf {
    let name = rejected.file_name().unwrap_or_default().to_string_lossy();
    rejected.with_file_name(format!("{name}{REASON_SUFFIX}"))
}

/// The name of the reason file of a rejected file named `claim`.
pub fn reason_file_name(claim: &str) -> String {
    format!("{claim}{REASON_SUFFIX}")
}

/// The name of the receipt of a file the sender named `name`.
pub fn receipt_file_name(name: &str) -> String {
    format!("{name}{RECEIPT_SUFFIX}")
}

/// The folder name for a delivery's device ([`NO_DEVICE`] for none).
pub fn device_dir(device: Option<&str>) -> &str {
    device.unwrap_or(NO_DEVICE)
}

/// The device a folder name stands for (none for [`NO_DEVICE`]); for a relay claim
/// folder (see [`relay_claim_dir`]) the device that recorded the files.
pub fn device_of_dir(dir: &str) -> Option<&str> {
    let device = dir.split_once(RELAY_MARK).map_or(dir, |(device, _)| device);
    (device != NO_DEVICE).then_some(device)
}

/// Separates the two names of a relay claim folder: never part of a device name.
const RELAY_MARK: char = '+';

/// The `.processing/` folder of files that `station` relays for `device` (from its
/// `relay/<device>/` folder over FTP or the share): `<device>+<station>`.
pub fn relay_claim_dir(device: &str, station: &str) -> String {
    format!("{device}{RELAY_MARK}{station}")
}

/// The station that relayed the files of a `.processing/` folder, if it is a relay
/// claim folder.
pub fn relayer_of_dir(dir: &str) -> Option<&str> {
    dir.split_once(RELAY_MARK).map(|(_, station)| station)
}

/// The device a file at `rel` (a path below a device's folder, without the device's
/// folder itself) is relayed for: `relay/<device>/…` with a valid device name.
pub fn relayed_device(rel: &Path) -> Option<String> {
    let mut parts = rel.iter().map(|p| p.to_string_lossy());
    let (folder, device, _file) = (parts.next()?, parts.next()?, parts.next()?);
    (folder.eq_ignore_ascii_case(crate::relay::FOLDER)
        && ctdata_batch::DeviceName::is_valid(&device))
    .then(|| device.into_owned())
}

/// The name of the folder `path` is in.
pub fn parent_name(path: &Path) -> String {
    path.parent()
        .and_then(Path::file_name)
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

/// Whether a top-level name in the drop directory is one of the server's own folders.
pub fn is_server_folder(name: &str) -> bool {
    SERVER_FOLDERS.contains(&name)
}

/// Reference files (KeySets, species lists) that devices and people keep in the drop
/// directory, at the top or in a device's folder: never ingested, so a client can
/// move them to and from the live folder.
pub const REFERENCE: &str = "reference";

/// Whether a folder name (at any level) is a reference folder, in any letter case.
pub fn is_reference_folder(name: &str) -> bool {
    name.eq_ignore_ascii_case(REFERENCE)
}

/// Whether a device name would be one of the server's folders on some filesystem
/// (a case-insensitive share makes `Archive` the archive): such a name never becomes a
/// device, or its FTP root would be the server's folder.
pub fn is_reserved_name(name: &str) -> bool {
    SERVER_FOLDERS.iter().any(|f| f.eq_ignore_ascii_case(name)) || is_reference_folder(name)
}

/// A claim name prefix that sorts by time and never repeats within a process.
pub fn stamp() -> String {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed) % 1_000_000;
    format!("{}{seq:06}", Utc::now().format("%Y%m%dT%H%M%S%9f"))
}

/// Marks a claim whose sender name was cut to fit; the full name is in a sidecar.
pub const CUT_TAG: &str = "cut";

/// The start of a claim name, `<stamp>[.<channel>]`: the tag names the channel (none
/// for the share), so a file claimed before a crash is ingested after the restart
/// with the channel it came by.
/// With several replicas on one database, the stamp names the replica that claimed
/// (`<stamp>@<replica>`), so the others know whose claim it is.
pub fn claim_head(channel: Channel) -> String {
    let stamp = replica_stamp();
    match channel {
        Channel::Share => stamp,
        other => format!("{stamp}.{other}"),
    }
}

/// A [`stamp`] that names this replica when several share the drop directory
/// (`<stamp>@<replica>`): claim names and HTTP spool names start with it.
pub fn replica_stamp() -> String {
    match CLAIMING_REPLICA.get() {
        Some(replica) => format!("{}@{replica}", stamp()),
        None => stamp(),
    }
}

/// Removes the HTTP request bodies a crash left in `.incoming/`: their senders got no
/// answer and send again. Alone, the whole folder goes; with replicas sharing the
/// drop directory, only this replica's own spools (and untagged ones from before
/// replicas), never the bodies another replica is receiving right now.
pub fn clear_spools(drop_dir: &Path) {
    let incoming = drop_dir.join(INCOMING);
    let Some(me) = CLAIMING_REPLICA.get() else {
        let _ = std::fs::remove_dir_all(&incoming);
        return;
    };
    let Ok(devices) = std::fs::read_dir(&incoming) else {
        return;
    };
    for device in devices.flatten() {
        let Ok(files) = std::fs::read_dir(device.path()) else {
            continue;
        };
        for file in files.flatten() {
            let name = file.file_name().to_string_lossy().into_owned();
            if claim_replica(&name).is_none_or(|r| r == me.as_str()) {
                let _ = std::fs::remove_file(file.path());
            }
        }
    }
}

/// The replica this process claims files as, set once when `serve` starts on
/// PostgreSQL.
static CLAIMING_REPLICA: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Makes every claim of this process name `replica` (see [`claim_head`]).
pub fn claim_as_replica(replica: &str) {
    let _ = CLAIMING_REPLICA.set(replica.to_string());
}

/// The replica this process claims files as, when it is one of several.
pub fn claiming_replica() -> Option<&'static str> {
    CLAIMING_REPLICA.get().map(String::as_str)
}

/// The replica named in a claim name, if any.
pub fn claim_replica(claim_name: &str) -> Option<&str> {
    let (head, _) = claim_name.split_once('-')?;
    let stamp = head.split('.').next()?;
    stamp.split_once('@').map(|(_, replica)| replica)
}

/// The claim name of a file `name` from `channel`, unless its name is cut.
pub fn claim_name(channel: Channel, name: &str) -> String {
    format!("{}-{name}", claim_head(channel))
}

/// The channel, the sender's file name and whether that name was cut, in a claim name
/// `<stamp>[.<channel>][.cut]-<name>`. Anything else is a share file.
pub fn parse_claim_name(claim_name: &str) -> (Channel, &str, bool) {
    let Some((head, name)) = claim_name.split_once('-') else {
        return (Channel::Share, claim_name, false);
    };
    let mut tags = head.split('.').skip(1);
    let (first, second) = (tags.next(), tags.next());
    let cut = first == Some(CUT_TAG) || second == Some(CUT_TAG);
    let channel = first.and_then(|t| t.parse().ok()).unwrap_or(Channel::Share);
    (channel, name, cut)
}

/// Write to a temporary name, fsync, rename: readers never see half a file.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let mut f = fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    fs::rename(&tmp, dir.join(name))
}

/// Moves a processed file; another process finishing it first is not an error.
///
/// No directory fsync: a rename lost to a power cut only brings the file back to be
/// looked at again, and the batch id (or claim name) makes that a no-op. What must be
/// durable is the commit, which precedes every move.
pub fn move_file(from: &Path, to: &Path) -> io::Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir)?;
    }
    match fs::rename(from, to) {
        Err(e) if e.kind() == io::ErrorKind::NotFound && !from.exists() => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_name_their_replica() {
        assert_eq!(
            claim_replica("20261202T101010123456789000001@r2.ftp-a-b.json"),
            Some("r2")
        );
        assert_eq!(
            claim_replica("20261202T101010123456789000001@r_1-x.json"),
            Some("r_1")
        );
        assert_eq!(
            claim_replica("20261202T101010123456789000001-x@y.json"),
            None
        );
        let (channel, name, cut) =
            parse_claim_name("20261202T101010123456789000001@r2.ftp-a-b.json");
        assert_eq!((channel, name, cut), (Channel::Ftp, "a-b.json", false));
    }

    #[test]
    fn one_list_of_server_folders() {
        assert!(is_reserved_name("Archive") && is_reserved_name("RECEIPTS"));
        assert!(is_reserved_name(".Incoming") && is_reserved_name(".pulling"));
        assert!(!is_reserved_name("archive2") && !is_server_folder("Archive"));
        assert!(is_reserved_name("Reference") && is_reference_folder("REFERENCE"));
        assert!(is_server_folder(".incoming") && is_server_folder(".pulling"));
        assert_eq!(
            rejected_relative(NO_DEVICE, "x.json"),
            "rejected/_/x.json".to_string()
        );
        assert_eq!(device_of_dir(device_dir(None)), None);
        let relay = relay_claim_dir("ranger-09", "station-pc");
        assert_eq!(device_of_dir(&relay), Some("ranger-09"));
        assert_eq!(relayer_of_dir(&relay), Some("station-pc"));
        assert_eq!(relayer_of_dir("ranger-09"), None);
        assert_eq!(
            relayed_device(Path::new("Relay/ranger-09/a.csv")),
            Some("ranger-09".into())
        );
        assert_eq!(relayed_device(Path::new("relay/ranger-09")), None);
        assert_eq!(relayed_device(Path::new("relay/bad name/a.csv")), None);
        assert_eq!(relayed_device(Path::new("2024/ranger-09/a.csv")), None);
    }

    #[test]
    fn claim_names_carry_the_channel() {
        let c = |name| parse_claim_name(name);
        assert_eq!(
            c("20261122T101010123456789000001-a-b.json"),
            (Channel::Share, "a-b.json", false)
        );
        assert_eq!(
            c("20261122T101010123456789000001.ftp-x.json"),
            (Channel::Ftp, "x.json", false)
        );
        assert_eq!(
            c("20261122T101010123456789000001.zz-x.json"),
            (Channel::Share, "x.json", false)
        );
        assert_eq!(
            c("20261122T101010123456789000001.ftp.cut-x"),
            (Channel::Ftp, "x", true)
        );
        assert_eq!(
            c("20261122T101010123456789000001.cut-x"),
            (Channel::Share, "x", true)
        );
        let (ftp, share) = (
            claim_name(Channel::Ftp, "y.csv"),
            claim_name(Channel::Share, "y"),
        );
        assert_eq!(c(&ftp), (Channel::Ftp, "y.csv", false));
        assert_eq!(c(&share), (Channel::Share, "y", false));
    }
}
