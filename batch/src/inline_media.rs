//! Media carried inside a batch (base64 strings in a CyberTracker upload, attribute
//! bytes in a CTX record), handed out piece by piece so the server can put each file
//! in its attachment store before the batch commits. A file is never held whole: the
//! CTX bytes are copied from the cabinet stream in 32 KiB blocks, and the base64 text
//! (which the JSON parser holds as one string anyway) is decoded 48 KiB at a time.
//!
//! Only media the sighting's listing names is handed out: the same rules as
//! [`read`](crate::read) decide what is media, and deleted CTX records give none.

use std::io;
use std::path::Path;

use base64::Engine;
use serde::de::SeqAccess;
use serde_json::Value;
use uuid::Uuid;

use crate::cybertracker::{self, Parsed};
use crate::fields::RowAt;
use crate::input::Input;
use crate::json::{self, ArrayKind, Elements};
use crate::model::{Format, Limits, RejectKind, Rejection, Scan};
use crate::problems::reject;

/// What one handed-out file is, told after its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaItem {
    pub sighting_id: Uuid,
    /// The name the sighting's listing gives it (the element, or `<id>-<n>` in a CTX).
    pub name: String,
    pub content_type: String,
}

/// Where the files go: `begin`, any number of `chunk`s, then `end` for each.
pub trait MediaSink {
    fn begin(&mut self) -> io::Result<()>;
    fn chunk(&mut self, bytes: &[u8]) -> io::Result<()>;
    fn end(&mut self, item: MediaItem) -> io::Result<()>;
}

/// Whether files of this format can carry media.
pub fn has_media(format: Format) -> bool {
    matches!(format, Format::Cybertracker | Format::Ctx)
}

/// Hands every media file of a scanned batch to `sink`, in file order.
pub fn media(
    path: &Path,
    scan: &Scan,
    limits: &Limits,
    sink: &mut dyn MediaSink,
) -> Result<(), Rejection> {
    match scan.format {
        Format::Ctx => crate::ctx::media(path, limits, sink),
        Format::Cybertracker => {
            let mut input = Input::open(path, limits)?;
            input.skip_bom()?;
            let mut walker = Walker {
                sha256: &scan.sha256,
                sink,
                failed: None,
            };
            let parsed = json::parse(&mut input, &mut walker);
            if let Some(e) = walker.failed {
                return Err(sink_failed(e));
            }
            parsed.map(drop)
        }
        _ => Ok(()),
    }
}

pub(crate) fn sink_failed(e: io::Error) -> Rejection {
    reject(
        RejectKind::Io,
        format!("storing an attached file failed: {e}"),
    )
}

struct Walker<'a> {
    sha256: &'a str,
    sink: &'a mut dyn MediaSink,
    failed: Option<io::Error>,
}

impl Walker<'_> {
    fn feature(&mut self, v: Value, i: u64) -> io::Result<()> {
        // The candidates are copied out first: `feature` consumes the value.
        let candidates: Vec<(String, String)> = v
            .pointer("/properties/sighting")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .filter(|(_, s)| s.starts_with("data:") || s.len() >= 64)
            .collect();
        if candidates.is_empty() {
            return Ok(());
        }
        let row = RowAt {
            line: None,
            prefix: Some(format!("features[{i}]")),
        };
        let Ok(Parsed::Sighting(s)) = cybertracker::feature(v, &row, self.sha256, i) else {
            return Ok(());
        };
        for (element, text) in candidates {
            let Some(listing) = s.attributes.get(&element) else {
                continue;
            };
            let listed = listing.get("kept").is_some()
                && listing.get("name") == Some(&Value::String(element.clone()));
            let Some(content_type) = listing
                .get("type")
                .and_then(Value::as_str)
                .filter(|_| listed)
            else {
                continue;
            };
            self.sink.begin()?;
            decode_base64(&text, self.sink)?;
            self.sink.end(MediaItem {
                sighting_id: s.id,
                name: element,
                content_type: content_type.to_string(),
            })?;
        }
        Ok(())
    }
}

/// Decodes (a `data:` URI's or bare) base64 in pieces, skipping whitespace.
fn decode_base64(text: &str, sink: &mut dyn MediaSink) -> io::Result<()> {
    let data = match text.strip_prefix("data:") {
        Some(rest) => rest.split_once(',').map_or("", |(_, d)| d),
        None => text,
    };
    const PIECE: usize = 64 * 1024;
    let mut piece = Vec::with_capacity(PIECE);
    let mut out = Vec::with_capacity(PIECE / 4 * 3);
    let mut flush = |piece: &mut Vec<u8>, sink: &mut dyn MediaSink| -> io::Result<()> {
        out.clear();
        base64::engine::general_purpose::STANDARD
            .decode_vec(&piece[..], &mut out)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        piece.clear();
        sink.chunk(&out)
    };
    for b in data.bytes().filter(|b| !b.is_ascii_whitespace()) {
        piece.push(b);
        if piece.len() == PIECE {
            flush(&mut piece, sink)?;
        }
    }
    if !piece.is_empty() {
        flush(&mut piece, sink)?;
    }
    Ok(())
}

impl Elements for Walker<'_> {
    fn elements<'de, A: SeqAccess<'de>>(
        &mut self,
        kind: ArrayKind,
        mut seq: A,
    ) -> Result<u64, A::Error> {
        let mut i = 0;
        while let Some(v) = seq.next_element::<Value>()? {
            if kind == ArrayKind::Features && self.failed.is_none() {
                if let Err(e) = self.feature(v, i) {
                    self.failed = Some(e);
                }
            }
            i += 1;
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collects what it is handed, checking the begin/chunk/end order.
    #[derive(Default)]
    struct Collect {
        open: Option<Vec<u8>>,
        files: Vec<Vec<u8>>,
    }

    impl MediaSink for Collect {
        fn begin(&mut self) -> io::Result<()> {
            assert!(self.open.replace(Vec::new()).is_none(), "begin twice");
            Ok(())
        }
        fn chunk(&mut self, bytes: &[u8]) -> io::Result<()> {
            self.open
                .as_mut()
                .expect("a chunk before begin")
                .extend_from_slice(bytes);
            Ok(())
        }
        fn end(&mut self, _: MediaItem) -> io::Result<()> {
            let bytes = self.open.take().expect("end before begin");
            self.files.push(bytes);
            Ok(())
        }
    }

    #[test]
    fn base64_is_decoded_in_pieces_across_line_breaks() {
        let bytes: Vec<u8> = (0..200_003u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let text = base64::engine::general_purpose::STANDARD.encode(&bytes);
        let wrapped: Vec<&str> = text
            .as_bytes()
            .chunks(76)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        for s in [
            text.clone(),
            wrapped.join("\r\n"),
            format!("data:image/png;base64,{}", wrapped.join("\n")),
        ] {
            let mut sink = Collect::default();
            sink.begin().unwrap();
            decode_base64(&s, &mut sink).unwrap();
            assert_eq!(sink.open.unwrap(), bytes);
        }
        let mut sink = Collect::default();
        sink.begin().unwrap();
        let broken = format!("{}!{}", &text[..70_000], &text[70_001..]);
        assert!(decode_base64(&broken, &mut sink).is_err());
    }
}
