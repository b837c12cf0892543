//! The buttons. Send runs `send::send_watched` here, to show its bytes; the others run
//! the `ctdata` command itself, so the page does exactly what the command line does and
//! shows its own words.

use std::process::Stdio;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use indicatif::{ProgressBar, ProgressDrawTarget};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

use super::{App, SendResult};
use crate::config::{Config, Endpoint, Protocol, Token};
use crate::home::{list_files, OUTBOX};
use crate::outbox;
use crate::send::{self, Options};

/// What a command said: its exit and its lines (standard output, then errors).
#[derive(Serialize)]
pub struct Said {
    ok: bool,
    lines: Vec<String>,
}

fn problem(status: StatusCode, text: impl Into<String>) -> Response {
    let said = Said {
        ok: false,
        lines: vec![text.into()],
    };
    (status, Json(said)).into_response()
}

/// `ctdata --home HOME ARGS`, with `input` on its standard input.
async fn ctdata(app: &App, args: &[String], input: Option<String>) -> Said {
    let mut cmd = tokio::process::Command::new(&app.0.exe);
    cmd.arg("--home")
        .arg(&app.0.home.root)
        .args(args)
        .env_remove("CTDATA_HOME")
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return Said {
                ok: false,
                lines: vec![format!("cannot run {}: {e}", app.0.exe.display())],
            }
        }
    };
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        let _ = stdin.write_all(format!("{text}\n").as_bytes()).await;
    }
    match child.wait_with_output().await {
        Ok(out) => {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            Said {
                ok: out.status.success(),
                lines: text
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| l.strip_prefix("error: ").unwrap_or(l).to_string())
                    .collect(),
            }
        }
        Err(e) => Said {
            ok: false,
            lines: vec![format!("ctdata failed: {e}")],
        },
    }
}

fn answer(said: Said) -> Response {
    let status = if said.ok {
        StatusCode::OK
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    (status, Json(said)).into_response()
}

/// Tap to send: seal and send, in the background; the page follows the progress.
pub async fn send(State(app): State<App>) -> Response {
    let config = match Config::load(&app.0.home) {
        Ok(c) => c,
        Err(e) => return problem(StatusCode::CONFLICT, format!("{e:#}")),
    };
    // As `ctdata send` without --force: sync switched off means nothing leaves.
    if crate::state::read(&app.0.home).is_ok_and(|s| s.sync_off) {
        return problem(
            StatusCode::CONFLICT,
            "sync is off on this device: switch it on (Sync on) to send",
        );
    }
    let progress = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden());
    {
        let mut job = app.0.send.lock().unwrap_or_else(|p| p.into_inner());
        if job.running {
            return problem(StatusCode::CONFLICT, "a send is already running");
        }
        job.running = true;
        job.progress = Some(progress.clone());
        job.result = None;
    }
    let runner = app.clone();
    tokio::spawn(async move {
        let home = &runner.0.home;
        // The command line's defaults (`ctdata send`).
        let opts = Options {
            retries: 3,
            retry_delay: Duration::from_secs(1),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let outcome = async {
            home.create()?;
            send::send_watched(home, &config, &opts, Some(progress)).await
        }
        .await;
        let result = match outcome {
            Ok(r) => words(&r, &config),
            Err(e) => SendResult {
                ok: false,
                level: "bad",
                headline: format!("Not sent: {e:#}"),
                detail: String::new(),
                at: Utc::now(),
            },
        };
        let mut job = runner.0.send.lock().unwrap_or_else(|p| p.into_inner());
        job.running = false;
        job.progress = None;
        job.result = Some(result);
    });
    (
        StatusCode::ACCEPTED,
        Json(Said {
            ok: true,
            lines: vec![],
        }),
    )
        .into_response()
}

/// A send's report for a ranger.
fn words(r: &send::Report, config: &Config) -> SendResult {
    let stored = match config.upload.protocol {
        Protocol::Https => "stored by the server",
        _ => "handed over (the server stores them when it takes the files)",
    };
    let batches = |n: usize| {
        if n == 1 {
            "1 batch".to_string()
        } else {
            format!("{n} batches")
        }
    };
    let mut headline = if r.delivered == 0 && r.rejected.is_empty() && r.pending == 0 {
        "Nothing to send: everything is already sent.".to_string()
    } else if r.delivered > 0 {
        format!(
            "Sent: {} sightings in {}, {stored}.",
            r.sightings,
            batches(r.delivered)
        )
    } else {
        String::new()
    };
    if !r.rejected.is_empty() {
        headline += &format!(
            " {} refused by the server (the reason is listed below).",
            batches(r.rejected.len())
        );
    }
    if r.pending > 0 {
        headline += &format!(
            " Not sent: {} waiting (why is below); they go with the next send.",
            batches(r.pending)
        );
    }
    let detail = if r.pending > 0 {
        format!(
            "Why: {}",
            r.error.as_deref().unwrap_or("the send was stopped")
        )
    } else if r.delivered > 0 {
        format!(
            "{} of sightings went to {} as {} on the wire.",
            size(r.bytes),
            config.upload.url,
            size(r.wire_bytes)
        )
    } else {
        String::new()
    };
    SendResult {
        ok: r.pending == 0 && r.rejected.is_empty(),
        level: if r.pending > 0 {
            "bad"
        } else if r.rejected.is_empty() {
            "good"
        } else {
            "warn"
        },
        headline: headline.trim().to_string(),
        detail,
        at: Utc::now(),
    }
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 => format!("{:.1} MB", b as f64 / f64::from(1 << 20)),
        b if b >= 1 << 10 => format!("{} KB", b / 1024),
        b => format!("{b} bytes"),
    }
}

#[derive(Serialize)]
struct StepLine {
    /// `ok`, `failed`, `skipped` or `info`.
    mark: &'static str,
    text: String,
}

/// Test connection: `ctdata test`, each step ✓ or ✗.
pub async fn test(State(app): State<App>) -> Response {
    let said = ctdata(&app, &["test".into()], None).await;
    let steps: Vec<StepLine> = said
        .lines
        .iter()
        .map(|l| {
            let (mark, text) = if let Some(t) = l.strip_prefix("✓ ") {
                ("ok", t)
            } else if let Some(t) = l.strip_prefix("✗ ") {
                ("failed", t)
            } else if let Some(t) = l.strip_prefix("- ") {
                ("skipped", t)
            } else {
                ("info", l.as_str())
            };
            StepLine {
                mark,
                text: text.to_string(),
            }
        })
        .collect();
    Json(serde_json::json!({ "ok": said.ok, "steps": steps })).into_response()
}

#[derive(Deserialize)]
pub struct RecordForm {
    /// RFC 3339 with offset (the page adds the browser's).
    at: Option<String>,
    lat: String,
    lon: String,
    species: Option<String>,
    count: Option<String>,
    observer: Option<String>,
    notes: Option<String>,
}

fn given(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|s| !s.is_empty())
}

pub async fn record(State(app): State<App>, Json(f): Json<RecordForm>) -> Response {
    let mut args: Vec<String> = vec!["record".into()];
    let mut push = |flag: &str, v: &str| {
        args.push(flag.into());
        args.push(v.into());
    };
    push("--lat", f.lat.trim());
    push("--lon", f.lon.trim());
    for (flag, value) in [
        ("--at", &f.at),
        ("--species", &f.species),
        ("--count", &f.count),
        ("--observer", &f.observer),
    ] {
        if let Some(v) = given(value) {
            push(flag, v);
        }
    }
    if let Some(n) = given(&f.notes) {
        push("--attr", &format!("notes={n}"));
    }
    answer(ctdata(&app, &args, None).await)
}

/// Files uploaded from the page wait here, in the client's home, while they are imported.
pub const STAGING: &str = ".staging";

/// Removes what an import left in [`STAGING`] when the program was stopped during it
/// (older than a day, so another window's import in progress is left alone).
pub fn sweep_staging(home: &crate::home::Home) {
    let Ok(entries) = std::fs::read_dir(home.dir(STAGING)) else {
        return;
    };
    let day = Duration::from_secs(86_400);
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .is_ok_and(|t| t.elapsed().unwrap_or_default() > day);
        if old && entry.file_name().to_string_lossy().starts_with("import-") {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

#[derive(Deserialize)]
pub struct ImportQuery {
    name: String,
}

/// The page uploads the chosen file; it is imported from a private folder of its own
/// under [`STAGING`] in the client's home (the outbox's disk, not the system's temporary
/// folder, which may be small, full or cleared) under its own name, so messages name it.
pub async fn import(State(app): State<App>, Query(q): Query<ImportQuery>, body: Bytes) -> Response {
    let name = std::path::Path::new(&q.name)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .unwrap_or_else(|| "import".into());
    let staging = app.0.home.dir(STAGING);
    let dir = crate::home::create_private_dir(&staging).and_then(|()| {
        tempfile::Builder::new()
            .prefix("import-")
            .tempdir_in(&staging)
    });
    let dir = match dir {
        Ok(d) => d,
        Err(e) => {
            let why = format!("cannot make a folder in {}: {e}", staging.display());
            return problem(StatusCode::INTERNAL_SERVER_ERROR, why);
        }
    };
    let path = dir.path().join(&name);
    let staged = async {
        let mut file = tokio::fs::File::create(&path).await?;
        file.write_all(&body).await?;
        file.sync_all().await
    };
    if let Err(e) = staged.await {
        let why = format!(
            "{name}: cannot keep it in {} to import: {e}",
            staging.display()
        );
        return problem(StatusCode::INTERNAL_SERVER_ERROR, why);
    }
    let said = ctdata(&app, &["import".into(), path.display().to_string()], None).await;
    // The temporary folder's path means nothing to the ranger.
    let shown = format!("{}/", dir.path().display());
    answer(Said {
        ok: said.ok,
        lines: said.lines.iter().map(|l| l.replace(&shown, "")).collect(),
    })
}

#[derive(Deserialize)]
pub struct SettingsForm {
    protocol: Protocol,
    url: String,
    device: String,
    user: Option<String>,
    /// Empty keeps the token in use.
    token: Option<String>,
    ca_file: Option<String>,
    download_same: bool,
    download_url: Option<String>,
    download_token: Option<String>,
}

/// Writes the settings with `ctdata init`; the token goes over standard input (never
/// on a command line), an unchanged token is kept.
pub async fn settings(State(app): State<App>, Json(f): Json<SettingsForm>) -> Response {
    let before = Config::load(&app.0.home).ok();
    let mut args: Vec<String> = vec![
        "init".into(),
        "--protocol".into(),
        f.protocol.to_string(),
        "--url".into(),
        f.url.trim().into(),
        "--device".into(),
        f.device.trim().into(),
    ];
    if let Some(u) = given(&f.user) {
        args.extend(["--user".into(), u.into()]);
    }
    if let Some(ca) = given(&f.ca_file) {
        args.extend(["--ca-file".into(), ca.into()]);
    }
    if let Some(b) = &before {
        args.extend(["--keep-sent-days".into(), b.keep_sent_days.to_string()]);
    }
    let old = before.as_ref().map(|b| &b.upload);
    let mut input = None;
    if let Some(t) = given(&f.token) {
        input = Some(t.to_string());
    } else if let Some(t) = old.and_then(|o| o.token.as_ref()) {
        input = Some(t.expose().to_string());
    } else if let Some(file) = old.and_then(|o| o.token_file.as_ref()) {
        args.extend(["--token-file".into(), file.display().to_string()]);
    }
    if input.is_some() {
        args.push("--token-stdin".into());
    }
    let said = ctdata(&app, &args, input).await;
    if !said.ok || f.download_same {
        return answer(said);
    }
    // Download settings are written the way `init --download-url` writes them; the
    // token is added here so that it never appears on a command line.
    match download(&app, &f, before.as_ref()) {
        Ok(line) => answer(Said {
            ok: true,
            lines: said.lines.into_iter().chain([line]).collect(),
        }),
        Err(e) => problem(StatusCode::UNPROCESSABLE_ENTITY, format!("{e:#}")),
    }
}

fn download(app: &App, f: &SettingsForm, before: Option<&Config>) -> anyhow::Result<String> {
    let home = &app.0.home;
    let mut config = Config::load(home)?;
    let url = given(&f.download_url)
        .ok_or_else(|| {
            anyhow::anyhow!("the download address is empty (or tick \"same as upload\")")
        })?
        .to_string();
    let kept = before
        .and_then(|b| b.download.as_ref())
        .and_then(|d| d.token.clone());
    let token = given(&f.download_token)
        .map(|t| Token::from(t.to_string()))
        .or(kept);
    config.download = Some(Endpoint {
        protocol: if url.contains("://") {
            Protocol::Https
        } else {
            Protocol::Share
        },
        url,
        user: None,
        token,
        token_file: None,
        ca_file: config.upload.ca_file.clone(),
    });
    config.validate()?;
    config.save(home)?;
    Ok(format!("downloads come from {}", config.download().url))
}

#[derive(Deserialize)]
pub struct AutosendForm {
    on: bool,
    /// As `autosend --every` takes it: 30s, 15m, 1h.
    every: Option<String>,
}

/// Auto-send on: `ctdata autosend --every …` runs beside the window (and stops with
/// it). Off: that process is asked to stop (SIGTERM), finishing a send in flight.
pub async fn autosend(State(app): State<App>, Json(f): Json<AutosendForm>) -> Response {
    if !f.on {
        if !autosend_is_ours(&app) {
            let running = app
                .0
                .home
                .try_lock(crate::autosend::LOCK)
                .map(|l| l.is_none())
                .unwrap_or(false);
            if running {
                return problem(
                    StatusCode::CONFLICT,
                    "auto-send was started outside this window (a service or a terminal): \
                     stop it there, or turn sync off",
                );
            }
        }
        stop_autosend(&app).await;
        return answer(Said {
            ok: true,
            lines: vec!["auto-send is off".into()],
        });
    }
    let every = given(&f.every).unwrap_or("15m").to_string();
    if let Err(e) = every.parse::<crate::duration::Dur>() {
        return problem(StatusCode::UNPROCESSABLE_ENTITY, format!("how often: {e}"));
    }
    stop_autosend(&app).await;
    // Its lines also go to ctdata.log; its standard error is kept in a file (a pipe
    // nobody reads would fill up, or break its writes once closed).
    let said = app.0.home.root.join(".app-autosend.err");
    let err = match std::fs::File::create(&said) {
        Ok(f) => f,
        Err(e) => return problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    let mut cmd = tokio::process::Command::new(&app.0.exe);
    cmd.arg("--home")
        .arg(&app.0.home.root)
        .args(["autosend", "--every", &every])
        .env_remove("CTDATA_HOME")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err);
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return problem(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    };
    // Ours from the start, so the page never shows it as someone else's.
    *app.0.autosend.lock().unwrap_or_else(|p| p.into_inner()) = Some(child);
    // It refuses at once (sync off, already running) or settles into its loop.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let ended = {
            let mut slot = app.0.autosend.lock().unwrap_or_else(|p| p.into_inner());
            match slot.as_mut().map(|c| c.try_wait()) {
                Some(Ok(Some(status))) => {
                    *slot = None;
                    Some(status.to_string())
                }
                Some(Err(e)) => Some(e.to_string()),
                _ => None,
            }
        };
        if let Some(status) = ended {
            let why = std::fs::read_to_string(&said).unwrap_or_default();
            let why = why.trim().trim_start_matches("error: ").to_string();
            return problem(
                StatusCode::CONFLICT,
                format!("auto-send did not start ({status}): {why}"),
            );
        }
    }
    answer(Said {
        ok: true,
        lines: vec![format!("auto-send is on: every {every}")],
    })
}

/// Whether an autosend started here is still running (reaps it once it ended).
pub fn autosend_is_ours(app: &App) -> bool {
    let mut slot = app.0.autosend.lock().unwrap_or_else(|p| p.into_inner());
    match slot.as_mut().map(|c| c.try_wait()) {
        Some(Ok(None)) => true,
        Some(_) => {
            *slot = None;
            false
        }
        None => false,
    }
}

/// Stops an autosend started here, the way systemd would (SIGTERM), and waits for it.
pub async fn stop_autosend(app: &App) {
    let child = app
        .0
        .autosend
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    let Some(mut child) = child else {
        return;
    };

    // Our own child, not reaped yet, so the pid is still its own. (The crate forbids
    // unsafe code, so not libc::kill.)
    let asked = match child.id() {
        Some(pid) if cfg!(unix) => tokio::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .await
            .is_ok_and(|s| s.success()),
        _ => false,
    };
    if !asked {
        let _ = child.start_kill();
    }
    let _ = child.wait().await;
}

#[derive(Deserialize)]
pub struct SyncForm {
    on: bool,
}

pub async fn sync(State(app): State<App>, Json(f): Json<SyncForm>) -> Response {
    let word = if f.on { "on" } else { "off" };
    answer(ctdata(&app, &["sync".into(), word.into()], None).await)
}

#[derive(Deserialize)]
pub struct PurgeForm {
    /// The number of unsent batches the confirmation named.
    unsent: usize,
}

/// Unsent batches: sealed ones in the outbox, and the open batch if it holds any.
pub fn unsent(app: &App) -> anyhow::Result<usize> {
    let home = &app.0.home;
    let sealed = list_files(&home.dir(OUTBOX))?.len();
    let open = usize::from(!outbox::read_open(home)?.is_empty());
    Ok(sealed + open)
}

/// `ctdata sync purge --yes`, only if the confirmation named the number there is now.
pub async fn purge(State(app): State<App>, Json(f): Json<PurgeForm>) -> Response {
    match unsent(&app) {
        Ok(n) if n != f.unsent => {
            return problem(
                StatusCode::CONFLICT,
                format!(
                    "nothing deleted: there are now {n} unsent batches, not {}; look again",
                    f.unsent
                ),
            )
        }
        Ok(_) => {}
        Err(e) => return problem(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    }
    stop_autosend(&app).await;
    answer(ctdata(&app, &["sync".into(), "purge".into(), "--yes".into()], None).await)
}

pub async fn quit(State(app): State<App>) -> Response {
    app.0.quit.notify_one();
    answer(Said {
        ok: true,
        lines: vec!["CTData has stopped: you can close this page".into()],
    })
}
