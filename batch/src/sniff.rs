//! Recognising the format from the first bytes of the (decompressed) content. File
//! names are not trusted: devices and FTP clients rename, and `.txt` is common.

use std::io::BufRead;

use serde_json::Value;

use crate::input::Input;
use crate::model::{RejectKind, Rejection};
use crate::problems::reject;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sniffed {
    Csv,
    Ndjson,
    /// CTData JSON or GeoJSON; which one is only known after reading the top-level
    /// keys, which may come in any order.
    JsonDocument,
}

/// Looks at the first buffer of content without consuming it (apart from a BOM).
pub(crate) fn sniff(input: &mut Input) -> Result<Sniffed, Rejection> {
    input.skip_bom()?;
    let prefix = match input.reader.fill_buf() {
        Ok(buf) => buf.to_vec(),
        Err(e) => return Err(input.fail(e)),
    };
    // The source fills the buffer completely unless the content ends first.
    let complete = input.reader.get_ref().ended();
    classify(&prefix, complete)
}

fn classify(prefix: &[u8], complete: bool) -> Result<Sniffed, Rejection> {
    let unknown = |what: &str| Err(reject(RejectKind::UnknownFormat, what));
    if prefix.is_empty() {
        return unknown("file is empty");
    }
    let Some(start) = prefix.iter().position(|b| !b.is_ascii_whitespace()) else {
        return if complete {
            unknown("file is empty: it contains only blank space")
        } else {
            unknown("not a CTData batch: the first 64 KiB are blank")
        };
    };
    if prefix.iter().any(|b| is_binary(*b)) {
        return unknown(
            "not a CTData batch: binary data (expected CTData JSON, NDJSON, CSV or GeoJSON text)",
        );
    }
    match prefix[start] {
        b'{' => Ok(json_kind(&prefix[start..])),
        b'[' => unknown(
            "not a CTData batch: the file is a JSON array; a batch is a JSON object with \"ctdata_batch\": 1 or a GeoJSON FeatureCollection",
        ),
        b'"' | b'0'..=b'9' | b'-' if serde_json::from_slice::<Value>(prefix).is_ok() => {
            unknown("not a CTData batch: a single JSON value, not an object")
        }
        _ => Ok(Sniffed::Csv),
    }
}

/// Control characters other than tab, newline, form feed and carriage return never
/// occur in the text formats; invalid UTF-8 alone is not binary (it gets an Encoding
/// rejection naming the line instead).
pub(crate) fn is_binary(b: u8) -> bool {
    matches!(b, 0x00..=0x08 | 0x0b | 0x0e..=0x1f | 0x7f)
}

/// NDJSON if the first line is a complete JSON object that is a batch header (or at
/// least not a whole document) and more lines follow.
fn json_kind(text: &[u8]) -> Sniffed {
    let Some(nl) = text.iter().position(|b| *b == b'\n') else {
        return Sniffed::JsonDocument;
    };
    let Ok(Value::Object(first)) = serde_json::from_slice::<Value>(&text[..nl]) else {
        return Sniffed::JsonDocument;
    };
    let whole_document = ["sightings", "features", "type"]
        .iter()
        .any(|k| first.contains_key(*k));
    if whole_document {
        return Sniffed::JsonDocument;
    }
    let more = text[nl..].iter().any(|b| !b.is_ascii_whitespace());
    if first.contains_key("ctdata_batch") || more {
        Sniffed::Ndjson
    } else {
        Sniffed::JsonDocument
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_by_content() {
        let k = |s: &str| classify(s.as_bytes(), true).map_err(|r| r.summary);
        assert_eq!(k("id,observed_at\n1,2\n"), Ok(Sniffed::Csv));
        assert_eq!(k("{\"ctdata_batch\":1}\n{\"a\":1}\n"), Ok(Sniffed::Ndjson));
        assert_eq!(
            k("{\"ctdata_batch\":1,\"sightings\":[]}\n"),
            Ok(Sniffed::JsonDocument)
        );
        assert_eq!(
            k("{\n \"type\": \"FeatureCollection\"\n}"),
            Ok(Sniffed::JsonDocument)
        );
        assert!(k("").unwrap_err().contains("file is empty"));
        assert!(k(" \n\t\r\n").unwrap_err().contains("file is empty"));
        assert!(k("[1,2]").unwrap_err().contains("JSON array"));
        assert!(classify(b"\x89PNG\r\n\x1a\n\0\0", true)
            .unwrap_err()
            .summary
            .contains("binary"));
    }
}
