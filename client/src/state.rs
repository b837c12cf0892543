//! `state.json`: the little the client must remember across runs and crashes.
//!
//! Written whole with [`write_atomic_private`] (temporary file, fsync, rename, fsync of the
//! folder) and only while `.state.lock` is held, so a crash leaves the previous or the
//! next version, never a torn one, and two processes never interleave updates.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::PathBuf;

use anyhow::Context;
use chrono::{DateTime, FixedOffset, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::home::{write_atomic_private, Home};

const LOCK: &str = ".state.lock";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct State {
    /// Sequence number of the next sealed batch (per device, from 1).
    pub next_seq: u64,
    /// Batches whose number was taken but whose file may not be in the outbox yet:
    /// finished on the next start if a crash interrupted them.
    pub sealing: Vec<Sealing>,
    /// Content hash (SHA-256) of every file imported or docked → the batch made of it.
    pub imported: BTreeMap<String, String>,
    pub last_success: Option<Event>,
    pub last_error: Option<Event>,
    /// `since` for the next `pull`, per target: each file format has its own, so a CSV
    /// pull does not make a later GeoJSON pull miss rows. (A `pull --into DB` keeps its
    /// cursor inside that database.)
    pub pull_cursors: BTreeMap<String, i64>,
    pub autosend: Option<AutosendState>,
    /// Content hash (SHA-256) of each file `dock` could not take → why; reported once,
    /// then skipped quietly until its content changes.
    pub dock_bad: BTreeMap<String, String>,
    /// Names this client put on the remote with `push` (for `sync purge --remote`).
    pub pushed: std::collections::BTreeSet<String>,
    /// `sync off`: autosend waits, `send` wants `--force`.
    pub sync_off: bool,
    /// The one cursor of clients before `pull_cursors`, shared by every format: read
    /// to fill `pull_cursors` (see [`migrate_pull_cursor`]), never written.
    #[serde(skip_serializing)]
    pub(crate) pull_cursor: Option<i64>,
    /// Send on sync: outbox batches a handheld recorded → that handheld. They go as
    /// it is, for it (`X-CTData-Relay-For` over HTTP, `relay/<device>/` over FTP and
    /// the share).
    pub relayed: BTreeMap<String, String>,
}

impl Default for State {
    fn default() -> Self {
        State {
            next_seq: 1,
            sealing: Vec::new(),
            imported: BTreeMap::new(),
            last_success: None,
            last_error: None,
            pull_cursors: BTreeMap::new(),
            autosend: None,
            dock_bad: BTreeMap::new(),
            pushed: Default::default(),
            sync_off: false,
            pull_cursor: None,
            relayed: BTreeMap::new(),
        }
    }
}

/// A batch being sealed: everything needed to write it again, byte for byte.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sealing {
    pub file: String,
    pub seq: u64,
    pub batch_id: Uuid,
    pub created_at: DateTime<FixedOffset>,
    /// The imported file, or `None` for the open batch (`open.ndjson`).
    pub source: Option<PathBuf>,
    /// The part of the source this batch holds when it was cut into several: rows
    /// `skip..skip + take`. `None`: all of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<(u64, u64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event {
    pub at: DateTime<Utc>,
    pub message: String,
}

impl Event {
    pub fn now(message: impl Into<String>) -> Event {
        Event {
            at: Utc::now(),
            message: message.into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AutosendState {
    pub every_secs: u64,
    pub last_attempt: Option<DateTime<Utc>>,
    pub next_attempt: Option<DateTime<Utc>>,
    pub failures: u32,
}

/// The state, loaded under its lock; `save` writes it back. Dropping releases the lock.
pub struct Locked {
    pub state: State,
    home: Home,
    _lock: File,
}

impl Locked {
    pub fn save(&self) -> anyhow::Result<()> {
        let path = self.home.state_path();
        let bytes = serde_json::to_vec_pretty(&self.state)?;
        write_atomic_private(&path, &bytes)
            .with_context(|| format!("cannot write {}", path.display()))
    }
}

/// Takes the state lock (waiting for another process to finish) and loads the state.
pub fn lock(home: &Home) -> anyhow::Result<Locked> {
    let lock = home.lock(LOCK)?;
    let state = read(home)?;
    Ok(Locked {
        state,
        home: home.clone(),
        _lock: lock,
    })
}

/// Reads the state without locking, for reports.
pub fn read(home: &Home) -> anyhow::Result<State> {
    let path = home.state_path();
    match std::fs::read(&path) {
        Ok(bytes) => {
            let mut state: State = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is damaged", path.display()))?;
            migrate_pull_cursor(home, &mut state);
            Ok(state)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// The formats a pull into a file can have.
const PULL_FORMATS: [&str; 3] = ["csv", "geojson", "ndjson"];

/// Gives the single `pull_cursor` of an earlier client to the formats it was for, so
/// the first pull after an upgrade goes on where the last one ended instead of fetching
/// everything again. The files that client left in `inbox/` (`sightings-SINCE-NEXT.FORMAT`)
/// say which formats it pulled and up to where: each such format goes on from its last
/// file (never past the old cursor). When `inbox/` shows none (emptied by the operator),
/// every format goes on from the old cursor, as that client did. Formats with a cursor
/// of their own keep it. (`pull --into DB` came later and keeps its own cursor.)
fn migrate_pull_cursor(home: &Home, state: &mut State) {
    let Some(old) = state.pull_cursor.take() else {
        return;
    };
    let mut seen: BTreeMap<&str, i64> = BTreeMap::new();
    let names = crate::home::list_files(&home.dir(crate::home::INBOX)).unwrap_or_default();
    for name in &names {
        let Some((range, format)) = name
            .strip_prefix("sightings-")
            .and_then(|n| n.rsplit_once('.'))
        else {
            continue;
        };
        let Some(format) = PULL_FORMATS.iter().find(|f| **f == format) else {
            continue;
        };
        let Some(next) = range
            .split_once('-')
            .and_then(|(_, next)| next.parse::<i64>().ok())
        else {
            continue;
        };
        let at = seen.entry(format).or_insert(0);
        *at = (*at).max(next.min(old));
    }
    if seen.is_empty() {
        seen = PULL_FORMATS.iter().map(|f| (*f, old)).collect();
    }
    for (format, at) in seen {
        state.pull_cursors.entry(format.to_string()).or_insert(at);
    }
}

/// Records how a send ended (for `status`).
pub fn note(home: &Home, outcome: Result<String, String>) -> anyhow::Result<()> {
    let mut s = lock(home)?;
    match outcome {
        Ok(m) => s.state.last_success = Some(Event::now(m)),
        Err(m) => s.state.last_error = Some(Event::now(m)),
    }
    s.save()
}
