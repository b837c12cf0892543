//! Recording, sealing and importing: how sightings become batch files in `outbox/`.
//!
//! Sealing takes a sequence number and a batch id and *first* saves them in the state
//! (`sealing`), then writes the batch (temporary file, fsync, rename). A crash in
//! between is finished on the next start by writing the same batch again, byte for
//! byte, so a batch is never lost, never numbered twice and never sent with two
//! contents under one id.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::ops::ControlFlow;
use std::path::Path;

use anyhow::{bail, Context};
use ctdata_batch::write::{BatchHeader, NdjsonWriter};
use ctdata_batch::{Limits, Sighting, CTDATA_NAMESPACE};
use uuid::Uuid;

use crate::home::{sync_dir, Home, OUTBOX, REJECTED, SENT};
use crate::state::{self, Locked, Sealing};

/// Takes the state lock and finishes any seal a crash interrupted.
pub fn lock(home: &Home, device: &str) -> anyhow::Result<Locked> {
    let mut locked = state::lock(home)?;
    if !locked.state.sealing.is_empty() {
        recover(home, device, &mut locked)?;
    }
    Ok(locked)
}

/// Appends one sighting to the open batch, durably; returns how many it now holds.
pub fn record(home: &Home, device: &str, s: &Sighting) -> anyhow::Result<usize> {
    let _locked = lock(home, device)?;
    let path = home.open_batch();
    let mut file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(&path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    drop_torn_tail(&mut file)?;
    let mut line = serde_json::to_vec(s)?;
    line.push(b'\n');
    file.write_all(&line)?;
    file.sync_data()?;
    Ok(read_open(home)?.len())
}

/// A crash mid-append can leave half a line; it was never acknowledged, so it goes.
fn drop_torn_tail(file: &mut File) -> io::Result<()> {
    let mut text = Vec::new();
    file.seek(SeekFrom::Start(0))?;
    file.read_to_end(&mut text)?;
    if text.last().is_some_and(|&b| b != b'\n') {
        let keep = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        file.set_len(keep as u64)?;
    }
    Ok(())
}

/// The sightings of the open batch: every complete line.
pub fn read_open(home: &Home) -> anyhow::Result<Vec<Sighting>> {
    let path = home.open_batch();
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
    complete
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .with_context(|| format!("{} line {} is damaged", path.display(), i + 1))
        })
        .collect()
}

/// Seals the open batch into `outbox/`; `None` when it holds nothing.
pub fn seal(home: &Home, device: &str, locked: &mut Locked) -> anyhow::Result<Option<String>> {
    let sightings = read_open(home)?;
    if sightings.is_empty() {
        return Ok(None);
    }
    let sealing = take_number(locked, Uuid::new_v4(), None)?;
    write_batch(home, device, &sealing, |w| {
        sightings.iter().try_for_each(|s| w.push(s))
    })?;
    finish_open(home, locked, &sealing)?;
    Ok(Some(sealing.file))
}

fn take_number(
    locked: &mut Locked,
    batch_id: Uuid,
    source: Option<&Path>,
) -> anyhow::Result<Sealing> {
    let seq = locked.state.next_seq;
    let sealing = Sealing {
        file: format!("{seq:06}-{batch_id}.ndjson"),
        seq,
        batch_id,
        created_at: chrono::Local::now().fixed_offset(),
        source: source.map(Path::to_path_buf),
    };
    locked.state.next_seq += 1;
    locked.state.sealing.push(sealing.clone());
    locked.save()?;
    Ok(sealing)
}

fn finish_open(home: &Home, locked: &mut Locked, sealing: &Sealing) -> anyhow::Result<()> {
    if sealing.source.is_none() {
        match fs::remove_file(home.open_batch()) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
            _ => sync_dir(&home.root)?,
        }
    }
    locked.state.sealing.retain(|s| s.seq != sealing.seq);
    locked.save()
}

type Fill<'a> = dyn FnMut(&mut NdjsonWriter<BufWriter<File>>) -> io::Result<()> + 'a;

/// Writes `outbox/FILE` through a temporary name: it appears whole or not at all.
fn write_batch(
    home: &Home,
    device: &str,
    s: &Sealing,
    mut fill: impl FnMut(&mut NdjsonWriter<BufWriter<File>>) -> io::Result<()>,
) -> anyhow::Result<()> {
    let dir = home.dir(OUTBOX);
    let tmp = dir.join(format!(".{}.tmp", s.file));
    let header = BatchHeader {
        batch_id: s.batch_id,
        device_id: device.to_string(),
        created_at: s.created_at,
    };
    let write = |fill: &mut Fill| -> io::Result<()> {
        let file = File::create(&tmp)?;
        let mut w = NdjsonWriter::with_sequence(BufWriter::new(file), &header, s.seq)?;
        fill(&mut w)?;
        let file = w.finish()?.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        fs::rename(&tmp, dir.join(&s.file))?;
        sync_dir(&dir)
    };
    write(&mut fill).with_context(|| format!("cannot write {}", dir.join(&s.file).display()))
}

pub enum Imported {
    /// A new batch, with this many sightings.
    New { file: String, rows: u64 },
    /// The same content was imported before, as this batch.
    Before { file: String },
}

/// Turns a file from another tool (CTData JSON/NDJSON, CSV, GeoJSON, gzipped or not)
/// into a batch of this device. The same content twice is taken once: its batch id is
/// derived from the content hash, and the hash is remembered.
pub fn import(
    home: &Home,
    device: &str,
    locked: &mut Locked,
    path: &Path,
) -> anyhow::Result<Imported> {
    let limits = Limits::default();
    let shown = path.display();
    let scan = ctdata_batch::scan(path, &limits).map_err(|r| anyhow::anyhow!("{shown}: {r}"))?;
    if let Some(file) = locked.state.imported.get(&scan.sha256) {
        return Ok(Imported::Before { file: file.clone() });
    }
    // Every row is checked before a number is taken, so a bad file leaves no gap.
    let summary = ctdata_batch::read(path, &scan, &limits, |_| ControlFlow::Continue(()))
        .map_err(|r| anyhow::anyhow!("{shown}: {r}"))?;
    let id = Uuid::new_v5(
        &CTDATA_NAMESPACE,
        format!("import/{device}/{}", scan.sha256).as_bytes(),
    );
    // Absolute: a crash is finished by whichever command runs next, from any folder.
    let source = std::path::absolute(path)?;
    let sealing = take_number(locked, id, Some(&source))?;
    locked
        .state
        .imported
        .insert(scan.sha256.clone(), sealing.file.clone());
    copy_rows(home, device, &sealing, &source)?;
    finish_open(home, locked, &sealing)?;
    Ok(Imported::New {
        file: sealing.file,
        rows: summary.rows,
    })
}

/// Writes the sightings of `source` as the batch `sealing`.
fn copy_rows(home: &Home, device: &str, sealing: &Sealing, source: &Path) -> anyhow::Result<()> {
    let limits = Limits::default();
    let shown = source.display();
    let scan = ctdata_batch::scan(source, &limits).map_err(|r| anyhow::anyhow!("{shown}: {r}"))?;
    let mut failure = None;
    write_batch(home, device, sealing, |w| {
        let pushed = ctdata_batch::read(source, &scan, &limits, |s| match w.push(&s) {
            Ok(()) => ControlFlow::Continue(()),
            Err(e) => {
                failure = Some(e);
                ControlFlow::Break(())
            }
        });
        match (pushed, failure.take()) {
            (_, Some(e)) => Err(e),
            (Err(r), None) => Err(io::Error::other(format!("{shown}: {r}"))),
            (Ok(_), None) => Ok(()),
        }
    })
}

/// Finishes every seal a crash interrupted.
fn recover(home: &Home, device: &str, locked: &mut Locked) -> anyhow::Result<()> {
    for sealing in locked.state.sealing.clone() {
        let written = [OUTBOX, SENT, REJECTED]
            .iter()
            .any(|d| home.dir(d).join(&sealing.file).exists());
        let redone = if written {
            Ok(())
        } else {
            match &sealing.source {
                None => {
                    let sightings = read_open(home)?;
                    write_batch(home, device, &sealing, |w| {
                        sightings.iter().try_for_each(|s| w.push(s))
                    })
                }
                Some(source) => copy_rows(home, device, &sealing, source),
            }
        };
        match redone {
            Ok(()) => home.log(&format!("finished sealing {} after a crash", sealing.file)),
            Err(e) => {
                // The source is gone or changed: the number stays unused (a visible gap)
                // and the file may be imported again.
                let msg = format!("could not finish sealing {}: {e:#}", sealing.file);
                eprintln!("{msg}");
                home.log(&msg);
                locked.state.imported.retain(|_, f| *f != sealing.file);
            }
        }
        finish_open(home, locked, &sealing)?;
    }
    Ok(())
}

/// Sightings in a sealed batch, from its trailer (the last line).
pub fn batch_rows(path: &Path) -> anyhow::Result<u64> {
    let mut file = File::open(path)?;
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(len.saturating_sub(4096)))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;
    let tail = String::from_utf8_lossy(&tail);
    let last = tail.trim_end().rsplit('\n').next().unwrap_or_default();
    let trailer: serde_json::Value = serde_json::from_str(last)?;
    match trailer.get("count").and_then(|c| c.as_u64()) {
        Some(n) => Ok(n),
        None => bail!("{} has no trailer", path.display()),
    }
}
