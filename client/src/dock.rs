//! Send on sync: a handheld synced to this PC leaves its files in a folder; `dock`
//! imports the new ones (by content hash, never twice) and sends.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::bail;

use crate::config::Config;
use crate::home::{sync_dir, Home, DOCKED};
use crate::outbox::{self, Imported};
use crate::send::{self, Options};
use crate::state;
use crate::DockArgs;

/// How deep `dock` looks into the folder (a device's export tree is shallow).
const MAX_DEPTH: usize = 6;
/// After a failed send, `--watch` waits this long before sending again.
const RESEND_PAUSE: Duration = Duration::from_secs(30);

pub async fn run(home: &Home, a: DockArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(home)?;
    home.create()?;
    if !a.dir.is_dir() {
        bail!(
            "{} is not a folder (is the device connected?)",
            a.dir.display()
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    if !a.watch {
        let failed = take_new(home, &config, &a, &|_| true, &mut HashMap::new());
        let pending = send_now(home, &config, &stop).await?;
        return Ok(if failed == 0 && pending == 0 {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        });
    }
    let stopper = stop.clone();
    tokio::spawn(async move {
        crate::autosend::until_stop_signal().await;
        stopper.store(true, Ordering::SeqCst);
    });
    eprintln!(
        "watching {} every {}; stop with Ctrl-C or SIGTERM",
        a.dir.display(),
        a.interval
    );
    home.log(&format!("dock: watching {}", a.dir.display()));
    let mut seen: HashMap<PathBuf, (u64, Option<SystemTime>)> = HashMap::new();
    let mut resend_at: Option<Instant> = None;
    let mut transient = HashMap::new();
    while !stop.load(Ordering::SeqCst) {
        // A file is taken once it looks the same as one round ago: the sync finished.
        let now = candidates(&a.dir);
        let settled = |p: &Path| seen.get(p) == now.get(p);
        let before = outbox_count(home);
        take_new(home, &config, &a, &settled, &mut transient);
        let imported = outbox_count(home) > before;
        seen = now;
        let retry_due = resend_at.is_some_and(|t| Instant::now() >= t);
        if imported || retry_due {
            let pending = send_now(home, &config, &stop).await?;
            resend_at = (pending > 0).then(|| Instant::now() + RESEND_PAUSE);
        }
        let until = Instant::now() + a.interval.0;
        while Instant::now() < until && !stop.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    home.log("dock: stopped watching");
    eprintln!("dock stopped");
    Ok(ExitCode::SUCCESS)
}

fn outbox_count(home: &Home) -> usize {
    crate::home::list_files(&home.dir(crate::home::OUTBOX)).map_or(0, |f| f.len())
}

async fn send_now(home: &Home, config: &Config, stop: &Arc<AtomicBool>) -> anyhow::Result<usize> {
    let opts = Options {
        retries: 2,
        retry_delay: Duration::from_secs(1),
        stop: stop.clone(),
    };
    let report = send::send(home, config, &opts).await?;
    println!("{}", report.summary(&config.upload.url));
    Ok(report.pending)
}

/// Imports every candidate `ready` accepts; returns how many were not taken this time.
/// A file whose content is bad (its format, its rows) is reported once and then skipped
/// quietly until its content changes: a handheld's bad export stays on it until someone
/// deletes it, and must not fill the log or fail every run. A file that could not be
/// read or stored (the card pulled out mid-read, an I/O error, no permission, a full
/// disk) is not bad: it is tried again on the next scan, and reported again when the
/// cause changes (`transient` remembers the last report per file for `--watch`).
fn take_new(
    home: &Home,
    config: &Config,
    a: &DockArgs,
    ready: &dyn Fn(&Path) -> bool,
    transient: &mut HashMap<PathBuf, String>,
) -> usize {
    let mut failed = 0;
    let mut known = 0;
    let mut still = HashMap::new();
    for path in candidates(&a.dir).into_keys().filter(|p| ready(p)) {
        let hash = content_hash(&path);
        if let Some(h) = &hash {
            if state::read(home).is_ok_and(|s| s.dock_bad.contains_key(h)) {
                known += 1;
                continue;
            }
        }
        let Err(e) = take(home, config, a, &path) else {
            continue;
        };
        failed += 1;
        if outbox::is_invalid(&e) {
            let msg = format!("dock: not taken: {e:#}");
            eprintln!("{msg}");
            home.log(&msg);
            if let Some(h) = hash {
                if let Err(e) = remember_bad(home, h, &msg) {
                    eprintln!("dock: {e:#}");
                }
            }
            continue;
        }
        let msg = format!(
            "dock: could not take {} this time (tried again on the next scan): {e:#}",
            path.display()
        );
        if transient.get(&path) != Some(&msg) {
            eprintln!("{msg}");
            home.log(&msg);
        }
        still.insert(path, msg);
    }
    *transient = still;
    if known > 0 && !a.watch {
        eprintln!("dock: {known} file(s) reported before are still not taken (see ctdata.log)");
    }
    failed
}

fn content_hash(path: &Path) -> Option<String> {
    use sha2::{Digest, Sha256};
    let mut file = std::fs::File::open(path).ok()?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).ok()?;
    Some(hex::encode(hasher.finalize()))
}

fn remember_bad(home: &Home, hash: String, why: &str) -> anyhow::Result<()> {
    let mut locked = state::lock(home)?;
    locked.state.dock_bad.insert(hash, why.to_string());
    locked.save()
}

fn take(home: &Home, config: &Config, a: &DockArgs, path: &Path) -> anyhow::Result<()> {
    let mut locked = outbox::lock(home, &config.device)?;
    let handheld = handheld_of(a, path)?;
    let imported = match relay(home, config, &mut locked, path, handheld.as_deref())? {
        Some(done) => done,
        None => outbox::import(home, &config.device, &mut locked, path)?,
    };
    let batch = match imported {
        Imported::New { file, rows } => {
            let msg = format!(
                "dock: took {} as batch {file} ({rows} sightings)",
                path.display()
            );
            println!("{msg}");
            home.log(&msg);
            file
        }
        Imported::Before { file } => file,
    };
    drop(locked);
    if a.move_files {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let stem = batch.trim_end_matches(".ndjson");
        move_file(path, &home.dir(DOCKED).join(format!("{stem}-{name}")))?;
    }
    Ok(())
}

/// The handheld a docked file that names no device belongs to: `--device`, or with
/// `--by-folder` the subfolder of the dock folder it is in (`DIR/ranger-09/…`) when
/// that is a device name. Otherwise none: the file is the station's own (a synced
/// folder's own subfolders, such as dates, name no device).
fn handheld_of(a: &DockArgs, path: &Path) -> anyhow::Result<Option<String>> {
    if let Some(name) = &a.device {
        if let Err(e) = name.parse::<ctdata_batch::DeviceName>() {
            bail!("--device: {e}");
        }
        return Ok(Some(name.clone()));
    }
    if !a.by_folder {
        return Ok(None);
    }
    let Ok(rel) = path.strip_prefix(&a.dir) else {
        return Ok(None);
    };
    let mut parts = rel.iter();
    let (Some(folder), Some(_file)) = (parts.next(), parts.next()) else {
        return Ok(None);
    };
    let folder = folder.to_string_lossy();
    Ok(ctdata_batch::DeviceName::is_valid(&folder).then(|| folder.into_owned()))
}

/// A file that a handheld recorded is sent as it is, for the handheld: a CTData batch
/// that names it (its device and batch id stay), or a CSV or GeoJSON that names no
/// device, from `handheld` (its batch id is then the server's, from the content). The
/// server files it as the handheld's (when this station may relay for it) and the
/// same file docked at two PCs is stored once. Returns None for anything else (the
/// station's own batches and files), which is imported as before.
fn relay(
    home: &Home,
    config: &Config,
    locked: &mut state::Locked,
    path: &Path,
    handheld: Option<&str>,
) -> anyhow::Result<Option<Imported>> {
    let limits = ctdata_batch::Limits::default();
    let Ok(scan) = ctdata_batch::scan(path, &limits) else {
        return Ok(None);
    };
    let Some(device) = scan
        .device_id
        .clone()
        .or_else(|| handheld.map(str::to_string))
        .filter(|d| !d.eq_ignore_ascii_case(&config.device))
    else {
        return Ok(None);
    };
    if let Some(file) = locked.state.imported.get(&scan.sha256) {
        return Ok(Some(Imported::Before { file: file.clone() }));
    }
    // Every row is checked here too: a broken file is reported now, not by the server.
    let summary = ctdata_batch::read(
        path,
        &scan,
        &limits,
        |_| std::ops::ControlFlow::Continue(()),
    )
    .map_err(|r| outbox::rejected(path, r))?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let ext = name.find('.').map_or("", |i| &name[i..]);
    let file = format!("relay-{device}-{}{ext}", scan.batch_id);
    let bytes = std::fs::read(path)?;
    crate::home::write_atomic(&home.dir(crate::home::OUTBOX).join(&file), &bytes)?;
    locked.state.imported.insert(scan.sha256, file.clone());
    // Only batches still waiting in outbox/ need their handheld remembered: the
    // others were sent or refused, so the record does not grow with every dock.
    let outbox = home.dir(crate::home::OUTBOX);
    locked
        .state
        .relayed
        .retain(|name, _| outbox.join(name).exists());
    locked.state.relayed.insert(file.clone(), device.clone());
    locked.save()?;
    home.log(&format!(
        "dock: {} is {device}'s batch {}: sent as it is, for {device}",
        path.display(),
        scan.batch_id
    ));
    Ok(Some(Imported::New {
        file,
        rows: summary.rows,
    }))
}

/// Rename, or copy and delete when DIR is another file system (a mounted device).
fn move_file(from: &Path, to: &Path) -> anyhow::Result<()> {
    if std::fs::rename(from, to).is_err() {
        std::fs::copy(from, to)?;
        std::fs::File::open(to)?.sync_all()?;
        std::fs::remove_file(from)?;
    }
    if let Some(dir) = to.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Batch-like files below `dir` with their size and modification time. Hidden and
/// temporary names are never taken: they are still being written.
fn candidates(dir: &Path) -> HashMap<PathBuf, (u64, Option<SystemTime>)> {
    let mut found = HashMap::new();
    let mut stack = vec![(dir.to_path_buf(), 0)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_lowercase();
            let Ok(meta) = entry.metadata() else { continue };
            if name.starts_with('.') {
                continue;
            }
            if meta.is_dir() && depth < MAX_DEPTH {
                stack.push((entry.path(), depth + 1));
            } else if meta.is_file() && is_batch_name(&name) {
                found.insert(entry.path(), (meta.len(), meta.modified().ok()));
            }
        }
    }
    found
}

fn is_batch_name(name: &str) -> bool {
    let name = name.strip_suffix(".gz").unwrap_or(name);
    [".json", ".ndjson", ".csv", ".geojson"]
        .iter()
        .any(|ext| name.ends_with(ext))
}
