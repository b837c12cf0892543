//! `export --with-attachments`: one zip holding the export (`sightings.<format>`) and
//! every file linked to an exported sighting under `files/<sighting id>/<name>`.
//!
//! Memory stays constant however many rows and files there are: the export is encoded
//! to a temporary file while the links of each row are listed in a second one, then
//! the zip is written by copying from those and from the attachment store, one file
//! at a time.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Seek, Write};
use std::path::Path;

use anyhow::Context;
use zip::write::SimpleFileOptions;

use crate::attachments::AttachmentStore;
use crate::db::{Db, ExportFilter};
use crate::export::{write_export_with, ExportFormat, ExportSummary};

/// Writes the zip to `out`; the export's summary and the number of files added.
pub async fn write_zip(
    db: &Db,
    store: &AttachmentStore,
    filter: ExportFilter,
    format: ExportFormat,
    out: File,
) -> anyhow::Result<(ExportSummary, u64, File)> {
    let body = tempfile::tempfile().context("a temporary file for the export")?;
    let mut links = BufWriter::new(tempfile::tempfile().context("a temporary file")?);
    let mut writer = tokio::io::BufWriter::new(tokio::fs::File::from_std(body));
    let summary = write_export_with(db, filter, format, &mut writer, |row| {
        let Some(files) = row.attachments() else {
            return Ok(());
        };
        for f in files.as_array().into_iter().flatten() {
            let (Some(name), Some(sha)) = (f["name"].as_str(), f["sha256"].as_str()) else {
                continue;
            };
            writeln!(
                links,
                "{}\t{sha}\t{}",
                row.sighting.id,
                name.replace(['\t', '\n'], " ")
            )?;
        }
        Ok(())
    })
    .await?;
    use tokio::io::AsyncWriteExt;
    writer.flush().await?;
    let body = writer.into_inner().into_std().await;
    let links = links.into_inner().map_err(|e| e.into_error())?;
    let store = store.clone();
    let name = format!("sightings.{}", format.extension());
    let (files, out) =
        tokio::task::spawn_blocking(move || zip_up(&store, &name, body, links, out)).await??;
    Ok((summary, files, out))
}

fn zip_up(
    store: &AttachmentStore,
    export_name: &str,
    mut body: File,
    mut links: File,
    out: File,
) -> anyhow::Result<(u64, File)> {
    let mut zip = zip::ZipWriter::new(BufWriter::with_capacity(256 * 1024, out));
    let deflated = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .large_file(true);
    // Photos, audio and video are compressed already.
    let stored = SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(true);
    body.rewind()?;
    zip.start_file(export_name, deflated)?;
    std::io::copy(&mut body, &mut zip)?;
    links.rewind()?;
    let mut added = 0;
    for line in BufReader::new(links).lines() {
        let line = line?;
        let mut parts = line.splitn(3, '\t');
        let (Some(sighting), Some(sha), Some(name)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let path = store
            .path(sha)
            .with_context(|| format!("attachment {sha:?} is not a SHA-256"))?;
        let mut file = File::open(&path)
            .with_context(|| format!("attachment {sha} ({name}) missing at {}", path.display()))?;
        zip.start_file(format!("files/{sighting}/{}", safe_name(name)), stored)?;
        std::io::copy(&mut file, &mut zip)?;
        added += 1;
    }
    let out = zip.finish()?.into_inner().map_err(|e| e.into_error())?;
    Ok((added, out))
}

/// A link name as one plain zip entry name: no folders, no `..`.
fn safe_name(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if matches!(c, '/' | '\\') || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    match cleaned.as_str() {
        "" | "." | ".." => "_".to_string(),
        _ => cleaned,
    }
}

/// Whether `path`'s folder can take the zip's temporary file; used to fail early.
pub fn check_output(path: &Path) -> anyhow::Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    if let Some(dir) = dir {
        anyhow::ensure!(
            dir.is_dir(),
            "--output folder {} does not exist",
            dir.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::safe_name;

    #[test]
    fn names_stay_inside_their_folder() {
        assert_eq!(safe_name("a.jpg"), "a.jpg");
        assert_eq!(safe_name("../../x"), ".._.._x");
        assert_eq!(safe_name(".."), "_");
        assert_eq!(safe_name("a\\b"), "a_b");
    }
}
