//! CTData NDJSON: a header line, one sighting per line, and a trailer line whose count
//! and SHA-256 prove the file arrived whole.

use std::io::BufRead;
use std::ops::ControlFlow;

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::fields::{show, sighting_from_object, RowAt};
use crate::header::{self, Header, Trailer};
use crate::input::Input;
use crate::model::{Problem, RejectKind, Rejection, Sighting};
use crate::problems::{at_line, problem, reject, reject_with, Rows};

/// A longer line is refused rather than buffered: one line is one sighting, and no
/// honest sighting is anywhere near this size.
const MAX_LINE: usize = 16 << 20;

const NO_TRAILER: &str = "NDJSON batch has no trailer line: the file is truncated";
const AFTER_TRAILER: &str = "NDJSON batch has content after its trailer line";

/// Reads lines with real line numbers, keeping a running SHA-256 of the bytes before
/// the current line (what the trailer's `sha256` covers).
struct Lines<'i> {
    input: &'i mut Input,
    number: u64,
    hasher: Sha256,
    before: Sha256,
    buf: Vec<u8>,
}

impl<'i> Lines<'i> {
    fn new(input: &'i mut Input) -> Self {
        // The trailer's sha256 covers every byte before it, a byte order mark included.
        let mut hasher = Sha256::new();
        if input.bom {
            hasher.update(b"\xEF\xBB\xBF");
        }
        Lines {
            input,
            number: 0,
            hasher,
            before: Sha256::new(),
            buf: Vec::new(),
        }
    }

    /// The next non-blank line, without its line ending.
    fn next(&mut self) -> Result<Option<Line<'_>>, Rejection> {
        loop {
            self.buf.clear();
            self.before = self.hasher.clone();
            if !self.read_line()? {
                return Ok(None);
            }
            self.number += 1;
            self.hasher.update(&self.buf);
            if !self.buf.trim_ascii().is_empty() {
                return Ok(Some(Line {
                    number: self.number,
                    text: self.buf.trim_ascii(),
                    before: &self.before,
                }));
            }
        }
    }

    /// Appends one line (with its `\n`) to `buf`; false at end of input.
    fn read_line(&mut self) -> Result<bool, Rejection> {
        loop {
            let chunk = match self.input.reader.fill_buf() {
                Ok(c) => c,
                Err(e) => return Err(self.input.fail(e)),
            };
            if chunk.is_empty() {
                return Ok(!self.buf.is_empty());
            }
            let (take, done) = match chunk.iter().position(|b| *b == b'\n') {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            };
            self.buf.extend_from_slice(&chunk[..take]);
            self.input.reader.consume(take);
            if self.buf.len() > MAX_LINE {
                let msg = format!(
                    "line {} is longer than {} MiB",
                    self.number + 1,
                    MAX_LINE >> 20
                );
                return Err(reject(RejectKind::Syntax, msg));
            }
            if done {
                return Ok(true);
            }
        }
    }
}

struct Line<'a> {
    number: u64,
    text: &'a [u8],
    /// Hash state of all bytes before this line.
    before: &'a Sha256,
}

/// Parses a line as a JSON object, or says why it is not one.
fn object(line: u64, text: &[u8]) -> Result<Map<String, Value>, (RejectKind, Problem)> {
    let Ok(s) = std::str::from_utf8(text) else {
        let p = problem(
            at_line(line),
            None,
            None,
            "line is not valid UTF-8 text; save the file as UTF-8",
        );
        return Err((RejectKind::Encoding, p));
    };
    match serde_json::from_str::<Value>(s) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => {
            let p = problem(
                at_line(line),
                None,
                Some(show(&other)),
                "each line must be a JSON object",
            );
            Err((RejectKind::Syntax, p))
        }
        Err(e) => {
            let p = problem(
                at_line(line),
                None,
                None,
                format!("line is not valid JSON: {e}"),
            );
            Err((RejectKind::Syntax, p))
        }
    }
}

fn summary(kind: RejectKind, line: u64) -> String {
    match kind {
        RejectKind::Encoding => format!("file is not UTF-8 text (line {line})"),
        _ => format!("NDJSON line {line} is not a valid JSON object"),
    }
}

fn read_header(lines: &mut Lines) -> Result<Header, Rejection> {
    let Some(Line {
        number: n, text, ..
    }) = lines.next()?
    else {
        return Err(reject(RejectKind::UnknownFormat, "file is empty"));
    };
    let map = object(n, text).map_err(|(kind, p)| reject_with(kind, summary(kind, n), p))?;
    header::validate(&map, &|_| at_line(n), false)
}

/// What the trailer check found, as a failure summary.
fn check_trailer(t: &Trailer, rows: u64, header: &Header, before: Sha256) -> Result<(), String> {
    if t.count != rows {
        return Err(format!(
            "NDJSON trailer declares {} rows but the file has {rows}: the file is truncated or was altered",
            t.count
        ));
    }
    if let Some(declared) = header.count.filter(|c| *c != rows) {
        return Err(format!(
            "NDJSON header declares count {declared} but the file has {rows} rows: the file is truncated or was altered"
        ));
    }
    let actual = hex::encode(before.finalize());
    match &t.sha256 {
        Some(sha) if *sha != actual => Err(format!(
            "NDJSON trailer sha256 {sha} does not match the content ({actual}): the file was altered or damaged"
        )),
        _ => Ok(()),
    }
}

/// First pass: header, and the trailer on the last non-blank line. Rows are only counted.
pub(crate) fn scan(input: &mut Input) -> Result<(Header, u64), Rejection> {
    let mut lines = Lines::new(input);
    let header = read_header(&mut lines)?;
    let mut last: Option<(u64, Vec<u8>, Sha256)> = None;
    let mut seen = 0u64;
    let mut trailer_like = None;
    while let Some(line) = lines.next()? {
        seen += 1;
        if line.text.starts_with(b"{\"ctdata_trailer\"") {
            trailer_like = Some(line.number);
        }
        // Reuse the previous buffer: only the last line can be the trailer.
        let mut buf = last.take().map(|(_, b, _)| b).unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(line.text);
        last = Some((line.number, buf, line.before.clone()));
    }
    let Some((n, text, before)) = last else {
        return Err(reject(RejectKind::Truncated, NO_TRAILER));
    };
    let trailer = match object(n, &text) {
        Ok(map) => header::trailer(&map, n)?,
        Err(_) => None,
    };
    let Some(trailer) = trailer else {
        return Err(match trailer_like {
            Some(t) => reject(RejectKind::Syntax, format!("{AFTER_TRAILER} (line {t})")),
            None => reject(RejectKind::Truncated, NO_TRAILER),
        });
    };
    check_trailer(&trailer, seen - 1, &header, before)
        .map_err(|s| reject(RejectKind::Truncated, s))?;
    Ok((header, trailer.count))
}

/// Second pass: every line validated, valid rows to the sink in order.
pub(crate) fn read<F>(input: &mut Input, rows: &mut Rows<'_, F>) -> Result<(), Rejection>
where
    F: FnMut(Sighting) -> ControlFlow<()>,
{
    let mut lines = Lines::new(input);
    let header = read_header(&mut lines)?;
    let mut trailer: Option<(u64, Trailer, Sha256)> = None;
    while let Some(Line {
        number: n,
        text,
        before,
    }) = lines.next()?
    {
        if let Some((t_line, _, _)) = &trailer {
            let p = problem(
                at_line(n),
                None,
                None,
                format!("content after the trailer line (line {t_line})"),
            );
            rows.add(p);
            rows.fail(
                RejectKind::Syntax,
                format!("{AFTER_TRAILER} (line {t_line})"),
            );
            break;
        }
        let map = match object(n, text) {
            Ok(map) => map,
            Err((kind, p)) => {
                rows.fail(kind, summary(kind, n));
                // An Err row never asks the sink anything, so it cannot break.
                let _ = rows.row(Err(vec![p]));
                continue;
            }
        };
        if let Some(t) = header::trailer(&map, n)? {
            trailer = Some((n, t, before.clone()));
            continue;
        }
        let at = RowAt {
            line: Some(n),
            prefix: None,
        };
        if rows
            .row(sighting_from_object(map, &at, rows.sha256, rows.seen))
            .is_break()
        {
            return Ok(());
        }
    }
    match trailer {
        None => rows.fail(RejectKind::Truncated, NO_TRAILER),
        Some((_, t, before)) => {
            if let Err(s) = check_trailer(&t, rows.seen, &header, before) {
                rows.fail(RejectKind::Truncated, s);
            }
        }
    }
    Ok(())
}
