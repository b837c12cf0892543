//! What the page shows, read from the home folder the way `ctdata status` reads it.

use std::io::BufRead;
use std::path::Path;

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Local, Utc};
use ctdata_batch::Sighting;
use serde::Serialize;
use serde_json::Value;

use super::{App, SendResult};
use crate::config::{Config, Protocol};
use crate::home::{list_files, Home, OUTBOX, REJECTED, SENT};
use crate::{outbox, state};

/// Shown in the lists: enough to recognise, not the whole history.
const RECENT: usize = 12;

#[derive(Serialize, Default)]
pub struct Overview {
    /// Why the settings cannot be read (no `init` yet, a damaged file).
    settings_problem: Option<String>,
    settings: Option<Settings>,
    open_sightings: usize,
    pending: Vec<BatchLine>,
    refused: Vec<BatchLine>,
    sent: Vec<BatchLine>,
    recent: Vec<SightingLine>,
    last_success: Option<String>,
    last_error: Option<String>,
    autosend: AutosendView,
    sync_off: bool,
    send: SendView,
}

#[derive(Serialize)]
struct Settings {
    device: String,
    protocol: Protocol,
    url: String,
    user: Option<String>,
    has_token: bool,
    ca_file: Option<String>,
    download_same: bool,
    download_url: String,
    download_has_token: bool,
}

#[derive(Serialize)]
struct BatchLine {
    name: String,
    sightings: Option<u64>,
    /// Where it stands, in words.
    state: String,
    why: Option<String>,
}

#[derive(Serialize)]
struct SightingLine {
    time: String,
    species: String,
    count: Option<i64>,
    observer: String,
    position: String,
    notes: String,
    sent: bool,
}

#[derive(Serialize, Default)]
struct AutosendView {
    running: bool,
    /// Started from this window (so it can be stopped here).
    ours: bool,
    every_secs: Option<u64>,
    last_attempt: Option<String>,
    next_attempt: Option<String>,
    failures: u32,
}

#[derive(Serialize, Default)]
struct SendView {
    running: bool,
    step: String,
    bytes: u64,
    total: u64,
    result: Option<SendResult>,
}

pub async fn overview(State(app): State<App>) -> Json<Overview> {
    let ours = super::actions::autosend_is_ours(&app);
    let send = send_view(&app);
    let home = app.0.home.clone();
    let built = tokio::task::spawn_blocking(move || build(&home, ours)).await;
    let mut view = match built {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => Overview {
            settings_problem: Some(format!("{e:#}")),
            ..Overview::default()
        },
        Err(e) => Overview {
            settings_problem: Some(e.to_string()),
            ..Overview::default()
        },
    };
    view.send = send;
    Json(view)
}

fn send_view(app: &App) -> SendView {
    let job = app.0.send.lock().unwrap_or_else(|p| p.into_inner());
    let mut v = SendView {
        running: job.running,
        result: job.result.clone(),
        ..SendView::default()
    };
    if let (true, Some(pb)) = (job.running, &job.progress) {
        v.bytes = pb.position();
        v.total = pb.length().unwrap_or(0);
        v.step = pb.message();
    }
    v
}

pub fn when(t: DateTime<Utc>) -> String {
    let local = t.with_timezone(&Local);
    if local.date_naive() == Local::now().date_naive() {
        format!("today {}", local.format("%H:%M:%S"))
    } else {
        local.format("%Y-%m-%d %H:%M").to_string()
    }
}

fn build(home: &Home, autosend_ours: bool) -> anyhow::Result<Overview> {
    let mut v = Overview::default();
    let st = state::read(home)?;
    v.sync_off = st.sync_off;
    let event =
        |e: &Option<state::Event>| e.as_ref().map(|e| format!("{}: {}", when(e.at), e.message));
    v.last_success = event(&st.last_success);
    v.last_error = event(&st.last_error);
    let running = home.try_lock(crate::autosend::LOCK)?.is_none();
    v.autosend = AutosendView {
        running,
        ours: autosend_ours,
        ..AutosendView::default()
    };
    if let (true, Some(a)) = (running, &st.autosend) {
        v.autosend.every_secs = Some(a.every_secs);
        v.autosend.failures = a.failures;
        v.autosend.last_attempt = a.last_attempt.map(when);
        let next = a.next_attempt.or_else(|| {
            a.last_attempt
                .map(|t| t + chrono::Duration::seconds(a.every_secs as i64))
        });
        v.autosend.next_attempt = next.map(when);
    }
    match Config::load(home) {
        Ok(c) => v.settings = Some(settings(&c)),
        Err(e) => v.settings_problem = Some(format!("{e:#}")),
    }
    let open = outbox::read_open(home)?;
    v.open_sightings = open.len();

    // The last error explains the first waiting batch only if no send worked since.
    let failing = match (&st.last_error, &st.last_success) {
        (Some(e), Some(s)) if s.at >= e.at => None,
        (e, _) => e.as_ref().map(|e| e.message.clone()),
    };
    for (i, name) in list_files(&home.dir(OUTBOX))?.into_iter().enumerate() {
        let rows = Some(outbox::rows_in(&home.dir(OUTBOX).join(&name)));
        let (state, why) = match (&failing, i) {
            (Some(e), 0) => ("not sent: the last try failed".to_string(), Some(e.clone())),
            _ if st.sync_off => ("waiting: sync is off".to_string(), None),
            _ => ("waiting to be sent".to_string(), None),
        };
        v.pending.push(BatchLine {
            name,
            sightings: rows,
            state,
            why,
        });
    }
    let rejected = home.dir(REJECTED);
    for name in newest(&rejected, ".reason.txt")? {
        let why = std::fs::read_to_string(rejected.join(format!("{name}.reason.txt")))
            .map(|t| t.trim().to_string())
            .ok();
        v.refused.push(BatchLine {
            sightings: outbox::batch_rows(&rejected.join(&name)).ok(),
            name,
            state: "refused by the server".to_string(),
            why,
        });
    }
    let sent = home.dir(SENT);
    for name in newest(&sent, ".receipt.json")? {
        let receipt = std::fs::read(sent.join(format!("{name}.receipt.json")))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok());
        v.sent.push(BatchLine {
            sightings: outbox::batch_rows(&sent.join(&name)).ok(),
            state: receipt.as_ref().map_or("sent".to_string(), receipt_words),
            why: None,
            name,
        });
    }

    // Newest first: the open batch, then the newest sealed batches.
    let mut recent: Vec<SightingLine> = open
        .iter()
        .rev()
        .take(RECENT)
        .map(|s| line(s, false))
        .collect();
    let mut sealed: Vec<(String, bool)> = list_files(&home.dir(OUTBOX))?
        .into_iter()
        .map(|n| (n, false))
        .chain(
            list_files(&sent)?
                .into_iter()
                .filter(|n| !n.ends_with(".receipt.json"))
                .map(|n| (n, true)),
        )
        .collect();
    // Names start with the sequence number.
    sealed.sort();
    for (name, was_sent) in sealed.iter().rev() {
        if recent.len() >= RECENT {
            break;
        }
        let dir = home.dir(if *was_sent { SENT } else { OUTBOX });
        let want = RECENT - recent.len();
        let mut rows = first_sightings(&dir.join(name), want);
        rows.reverse();
        recent.extend(rows.iter().map(|s| line(s, *was_sent)));
    }
    v.recent = recent;
    Ok(v)
}

/// The batch files in `dir` that have a `NAME{suffix}` beside them, newest first.
fn newest(dir: &Path, suffix: &str) -> anyhow::Result<Vec<String>> {
    let names = list_files(dir)?;
    let mut found: Vec<String> = names
        .iter()
        .filter_map(|n| n.strip_suffix(suffix))
        .filter(|batch| names.iter().any(|n| n == batch))
        .map(str::to_string)
        .collect();
    found.sort();
    found.reverse();
    found.truncate(RECENT);
    Ok(found)
}

/// Up to `n` sightings from the start of a sealed batch (its rows follow a header line).
fn first_sightings(path: &Path, n: usize) -> Vec<Sighting> {
    let Ok(file) = std::fs::File::open(path) else {
        return Vec::new();
    };
    std::io::BufReader::new(file)
        .lines()
        .take(n + 1)
        .map_while(Result::ok)
        .filter_map(|l| serde_json::from_str::<Sighting>(&l).ok())
        .take(n)
        .collect()
}

fn line(s: &Sighting, sent: bool) -> SightingLine {
    let notes = match s.attributes.get("notes") {
        Some(Value::String(t)) => t.clone(),
        Some(other) => other.to_string(),
        None => String::new(),
    };
    SightingLine {
        time: s.observed_at.format("%Y-%m-%d %H:%M").to_string(),
        species: s.species.clone().unwrap_or_default(),
        count: s.count,
        observer: s.observer.clone().unwrap_or_default(),
        position: format!("{:.5}, {:.5}", s.latitude, s.longitude),
        notes,
        sent,
    }
}

/// A kept receipt in words: the server's own, or a file handed over.
fn receipt_words(r: &Value) -> String {
    let text = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or_default();
    let num = |k: &str| r.get(k).and_then(Value::as_u64).unwrap_or(0);
    match text("status") {
        "delivered" => format!(
            "handed over by {}; the server stores it when it takes the file",
            text("channel")
        ),
        "duplicate" => format!(
            "the server already had it ({} sightings), received {}",
            num("sightings"),
            text("received_at")
        ),
        _ => format!(
            "stored by the server: {} new sightings, {} already there, received {}",
            num("inserted"),
            num("duplicates"),
            text("received_at")
        ),
    }
}

fn settings(c: &Config) -> Settings {
    let down = c.download();
    Settings {
        device: c.device.clone(),
        protocol: c.upload.protocol,
        url: c.upload.url.clone(),
        user: c.upload.user.clone(),
        has_token: c.upload.token.is_some() || c.upload.token_file.is_some(),
        ca_file: c.upload.ca_file.as_ref().map(|p| p.display().to_string()),
        download_same: c.download.is_none(),
        download_url: down.url.clone(),
        download_has_token: down.token.is_some() || down.token_file.is_some(),
    }
}
