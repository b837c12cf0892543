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

/// Where batches are cut: one huge file never becomes one all-or-nothing send.
#[derive(Debug, Clone, Copy)]
pub struct Cut {
    pub max_sightings: u64,
    /// Bytes of NDJSON (uncompressed).
    pub max_bytes: u64,
}

impl Default for Cut {
    /// About a minute of a 3G link once gzipped (16 MB of NDJSON is ~3 MB on the wire).
    fn default() -> Self {
        Cut {
            max_sightings: 50_000,
            max_bytes: 16 * 1024 * 1024,
        }
    }
}

impl Cut {
    /// Row ranges `(skip, take)` of parts within the limits, from each row's size.
    fn parts(&self, sizes: impl IntoIterator<Item = u64>) -> Vec<(u64, u64)> {
        let mut parts = Vec::new();
        let (mut start, mut n, mut bytes) = (0u64, 0u64, 0u64);
        for size in sizes {
            if n > 0 && (n + 1 > self.max_sightings.max(1) || bytes + size > self.max_bytes) {
                parts.push((start, n));
                start += n;
                n = 0;
                bytes = 0;
            }
            n += 1;
            bytes += size;
        }
        if n > 0 {
            parts.push((start, n));
        }
        parts
    }
}

fn row_size(s: &Sighting) -> u64 {
    serde_json::to_vec(s).map_or(0, |v| v.len() as u64 + 1)
}

/// Seals the open batch into `outbox/`; `None` when it holds nothing.
pub fn seal(home: &Home, device: &str, locked: &mut Locked) -> anyhow::Result<Option<String>> {
    Ok(seal_cut(home, device, locked, Cut::default())?
        .into_iter()
        .next())
}

/// Seals the open batch into `outbox/` as batches within `cut`; their files.
pub fn seal_cut(
    home: &Home,
    device: &str,
    locked: &mut Locked,
    cut: Cut,
) -> anyhow::Result<Vec<String>> {
    let sightings = read_open(home)?;
    if sightings.is_empty() {
        return Ok(Vec::new());
    }
    let parts = cut.parts(sightings.iter().map(row_size));
    let ranges = (parts.len() > 1).then_some(&parts);
    let ids: Vec<Uuid> = parts.iter().map(|_| Uuid::new_v4()).collect();
    let sealings = take_numbers(locked, &ids, None, ranges)?;
    let mut files = Vec::new();
    for sealing in sealings {
        let (skip, take) = sealing.rows.unwrap_or((0, sightings.len() as u64));
        let part = &sightings[skip as usize..(skip + take) as usize];
        write_batch(home, device, &sealing, |w| {
            part.iter().try_for_each(|s| w.push(s))
        })
        .with_context(|| {
            format!(
                "the open batch ({}, {} sightings) is kept and sealed by the next command \
                 once this is fixed",
                home.open_batch().display(),
                sightings.len()
            )
        })?;
        finish_open(home, locked, &sealing)?;
        files.push(sealing.file);
    }
    Ok(files)
}

/// Takes one sequence number per batch id, saved together before anything is written,
/// so a crash finishes all of them or none.
fn take_numbers(
    locked: &mut Locked,
    ids: &[Uuid],
    source: Option<&Path>,
    ranges: Option<&Vec<(u64, u64)>>,
) -> anyhow::Result<Vec<Sealing>> {
    let mut out = Vec::new();
    for (i, batch_id) in ids.iter().enumerate() {
        let seq = locked.state.next_seq;
        let sealing = Sealing {
            file: format!("{seq:06}-{batch_id}.ndjson"),
            seq,
            batch_id: *batch_id,
            created_at: chrono::Local::now().fixed_offset(),
            source: source.map(Path::to_path_buf),
            rows: ranges.map(|r| r[i]),
        };
        locked.state.next_seq += 1;
        locked.state.sealing.push(sealing.clone());
        out.push(sealing);
    }
    locked.save()?;
    Ok(out)
}

/// Marks `sealing` done; the open batch goes once no part of it is left to write.
fn finish_open(home: &Home, locked: &mut Locked, sealing: &Sealing) -> anyhow::Result<()> {
    locked.state.sealing.retain(|s| s.seq != sealing.seq);
    let open_left = locked.state.sealing.iter().any(|s| s.source.is_none());
    if sealing.source.is_none() && !open_left {
        match fs::remove_file(home.open_batch()) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e.into()),
            _ => sync_dir(&home.root)?,
        }
    }
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
    write(&mut fill).map_err(|e| {
        // A half-written batch would only hold on to space a full disk needs back.
        let _ = fs::remove_file(&tmp);
        anyhow::Error::new(e).context(format!("cannot write {}", dir.join(&s.file).display()))
    })
}

/// A file whose content is not a batch this client can take (format, encoding, rows):
/// reading it again gives the same answer. Failures without this mark (a read error, a
/// card pulled out, a full disk) may pass.
#[derive(Debug)]
pub struct Invalid(pub String);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Invalid {}

/// `path`'s rejection as an error: [`Invalid`] unless reading the file failed.
pub fn rejected(path: &Path, r: ctdata_batch::Rejection) -> anyhow::Error {
    let msg = format!("{}: {r}", path.display());
    if r.kind == ctdata_batch::RejectKind::Io {
        anyhow::anyhow!(msg)
    } else {
        Invalid(msg).into()
    }
}

/// Whether `e` says the file itself is bad (not the disk or the device it is on).
pub fn is_invalid(e: &anyhow::Error) -> bool {
    e.chain().any(|c| c.is::<Invalid>())
}

pub enum Imported {
    /// A new batch, with this many sightings.
    New { file: String, rows: u64 },
    /// The same content was imported before, as this batch.
    Before { file: String },
}

/// Turns a file from another tool (CTData JSON/NDJSON, CSV, GeoJSON, gzipped or not)
/// into a batch of this device. The same content twice is taken once: its batch ids are
/// derived from the content hash, a part already written (by an import cut short) is
/// not written again, and the hash is remembered once every part is in place.
pub fn import(
    home: &Home,
    device: &str,
    locked: &mut Locked,
    path: &Path,
) -> anyhow::Result<Imported> {
    Ok(import_cut(home, device, locked, path, Cut::default())?.0)
}

/// [`import`], cutting the file into batches within `cut`; also returns every batch made.
pub fn import_cut(
    home: &Home,
    device: &str,
    locked: &mut Locked,
    path: &Path,
    cut: Cut,
) -> anyhow::Result<(Imported, Vec<String>)> {
    let limits = Limits::default();
    let shown = path.display();
    let scan = ctdata_batch::scan(path, &limits).map_err(|r| rejected(path, r))?;
    if let Some(file) = locked.state.imported.get(&scan.sha256) {
        return Ok((Imported::Before { file: file.clone() }, Vec::new()));
    }
    // Every row is checked before a number is taken, so a bad file leaves no gap.
    let mut sizes = Vec::new();
    let summary = ctdata_batch::read(path, &scan, &limits, |s| {
        sizes.push(row_size(&s));
        ControlFlow::Continue(())
    })
    .map_err(|r| rejected(path, r))?;
    let parts = cut.parts(sizes);
    // The same content always makes the same batch ids: the whole file's hash, and the
    // part's number when it is cut.
    let ids: Vec<Uuid> = (0..parts.len().max(1))
        .map(|k| {
            let name = match parts.len() {
                0 | 1 => format!("import/{device}/{}", scan.sha256),
                _ => format!("import/{device}/{}/{k}", scan.sha256),
            };
            Uuid::new_v5(&CTDATA_NAMESPACE, name.as_bytes())
        })
        .collect();
    // Parts an earlier, interrupted import of the same content already wrote (a crash
    // or a full disk between its parts) are kept; only the missing ones are written.
    let ranges: Vec<(u64, u64)> = match parts.len() {
        0 | 1 => vec![(0, summary.rows)],
        _ => parts.clone(),
    };
    let mut files: Vec<Option<String>> = Vec::new();
    for (k, id) in ids.iter().enumerate() {
        let found = written_batch(home, id)?;
        if let Some(file) = &found {
            let have = batch_rows(file)?;
            if have != ranges[k].1 {
                bail!(
                    "{shown}: part {} of an earlier import of this file ({}) holds {have} \
                     sightings, not {}: import it again with the same --max-sightings and \
                     --max-bytes as then",
                    k + 1,
                    file.display(),
                    ranges[k].1
                );
            }
        }
        files.push(found.and_then(|f| f.file_name().map(|n| n.to_string_lossy().into_owned())));
    }
    let missing: Vec<usize> = (0..ids.len()).filter(|&k| files[k].is_none()).collect();
    // Absolute: a crash is finished by whichever command runs next, from any folder.
    let source = std::path::absolute(path)?;
    let new_ids: Vec<Uuid> = missing.iter().map(|&k| ids[k]).collect();
    let new_ranges: Vec<(u64, u64)> = missing.iter().map(|&k| ranges[k]).collect();
    let sealings = take_numbers(
        locked,
        &new_ids,
        Some(&source),
        (parts.len() > 1).then_some(&new_ranges),
    )?;
    for (sealing, &k) in sealings.iter().zip(&missing) {
        copy_rows(home, device, sealing, &source)?;
        finish_open(home, locked, sealing)?;
        files[k] = Some(sealing.file.clone());
    }
    // Only now, with every part durably in place (each written, fsynced and renamed),
    // is the file imported: a crash or a full disk before this leaves it to be imported
    // again, which writes just the parts still missing.
    let files: Vec<String> = files.into_iter().flatten().collect();
    locked
        .state
        .imported
        .insert(scan.sha256.clone(), files[0].clone());
    locked.save()?;
    if sealings.is_empty() {
        return Ok((
            Imported::Before {
                file: files[0].clone(),
            },
            Vec::new(),
        ));
    }
    Ok((
        Imported::New {
            file: files[0].clone(),
            rows: summary.rows,
        },
        files,
    ))
}

/// The batch with this id in `outbox/`, `sent/` or `rejected/`, if one was written.
fn written_batch(home: &Home, id: &Uuid) -> anyhow::Result<Option<std::path::PathBuf>> {
    let suffix = format!("-{id}.ndjson");
    for dir in [OUTBOX, SENT, REJECTED] {
        let dir = home.dir(dir);
        let names = crate::home::list_files(&dir)
            .with_context(|| format!("cannot list {}", dir.display()))?;
        if let Some(name) = names.into_iter().find(|n| n.ends_with(&suffix)) {
            return Ok(Some(dir.join(name)));
        }
    }
    Ok(None)
}

/// Writes the sightings of `source` as the batch `sealing`.
fn copy_rows(home: &Home, device: &str, sealing: &Sealing, source: &Path) -> anyhow::Result<()> {
    let limits = Limits::default();
    let shown = source.display();
    let scan = ctdata_batch::scan(source, &limits).map_err(|r| anyhow::anyhow!("{shown}: {r}"))?;
    let mut failure = None;
    let (skip, take) = sealing.rows.unwrap_or((0, u64::MAX));
    write_batch(home, device, sealing, |w| {
        let mut at = 0u64;
        let pushed = ctdata_batch::read(source, &scan, &limits, |s| {
            at += 1;
            if at <= skip {
                return ControlFlow::Continue(());
            }
            if at > skip.saturating_add(take) {
                return ControlFlow::Break(());
            }
            match w.push(&s) {
                Ok(()) => ControlFlow::Continue(()),
                Err(e) => {
                    failure = Some(e);
                    ControlFlow::Break(())
                }
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
    let pending = locked.state.sealing.clone();
    for sealing in pending.clone() {
        let written = [OUTBOX, SENT, REJECTED]
            .iter()
            .any(|d| home.dir(d).join(&sealing.file).exists());
        let redone = if written {
            Ok(())
        } else {
            match &sealing.source {
                None => {
                    let sightings = read_open(home)?;
                    let (skip, take) = sealing.rows.unwrap_or((0, sightings.len() as u64));
                    let end = (skip + take).min(sightings.len() as u64) as usize;
                    let part = &sightings[(skip as usize).min(end)..end];
                    write_batch(home, device, &sealing, |w| {
                        part.iter().try_for_each(|s| w.push(s))
                    })
                }
                Some(source) => copy_rows(home, device, &sealing, source),
            }
        };
        match (redone, &sealing.source) {
            (Ok(()), _) => {
                let msg = format!("finished sealing {}, which was interrupted", sealing.file);
                eprintln!("{msg}");
                home.log(&msg);
            }
            (Err(e), None) => {
                // The open batch is the only copy of what was recorded: it stays, and so
                // does the seal, to be finished once the cause (a full disk, most often)
                // is gone.
                let kept = read_open(home).map_or(0, |s| s.len());
                let msg = format!(
                    "could not finish sealing {}: {e:#}; the open batch ({}, {kept} \
                     sightings) is kept and the seal is finished by the next command once \
                     this is fixed",
                    sealing.file,
                    home.open_batch().display()
                );
                home.log(&msg);
                bail!(msg);
            }
            (Err(e), Some(source)) => {
                // The source is gone or changed, or the disk is full: the number stays
                // unused (a visible gap), and importing the file again writes the parts
                // still missing.
                let msg = format!(
                    "could not finish sealing {}: {e:#}; import {} again to finish it",
                    sealing.file,
                    source.display()
                );
                eprintln!("{msg}");
                home.log(&msg);
                // Earlier clients recorded the file as imported (as its first part)
                // before its parts were written: forget it, whichever part failed.
                let parts: Vec<&String> = pending
                    .iter()
                    .filter(|s| s.source.as_ref() == Some(source))
                    .map(|s| &s.file)
                    .collect();
                locked.state.imported.retain(|_, f| !parts.contains(&&*f));
            }
        }
        finish_open(home, locked, &sealing)?;
    }
    Ok(())
}

/// Sightings in an outbox file: a sealed batch's trailer, or for a file relayed as it
/// is (a handheld's CSV or GeoJSON) its rows, counted.
pub fn rows_in(path: &Path) -> u64 {
    batch_rows(path).unwrap_or_else(|_| {
        let limits = Limits::default();
        ctdata_batch::scan(path, &limits)
            .ok()
            .and_then(|scan| {
                ctdata_batch::read(path, &scan, &limits, |_| ControlFlow::Continue(())).ok()
            })
            .map_or(0, |summary| summary.rows)
    })
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
