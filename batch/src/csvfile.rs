//! CSV with a header row (RFC 4180). Columns are matched by name, case-insensitively,
//! with Darwin Core aliases; every other named column becomes a string attribute.

use std::ops::ControlFlow;

use std::io::BufRead;

use csv::{ByteRecord, ErrorKind, ReaderBuilder, Terminator};
use serde_json::Value;

use crate::fields::{Draft, Field, ALL_FIELDS};
use crate::input::Input;
use crate::model::{Problem, RejectKind, Rejection, Sighting};
use crate::problems::{at_line, problem, reject, Rows};

/// What each column means: a sighting field, or an attribute named by the header.
enum Column {
    Field(Field),
    Attribute(String),
    /// Blank header cell (a trailing comma from a spreadsheet): ignored.
    Unnamed,
}

pub(crate) struct Columns(Vec<Column>);

fn accepted(f: Field) -> String {
    format!("{} or {}", f.name(), f.darwin_core())
}

/// More columns than any real export has (Darwin Core has about 200 terms): a header
/// wider than this is not a sightings table, and refusing it keeps a hostile header
/// from costing more than reading it.
pub(crate) const MAX_COLUMNS: usize = 1000;

/// What makes two columns the same: one field, or one attribute name in any case.
#[derive(PartialEq, Eq, Hash)]
enum Meaning {
    Field(usize),
    Attribute(String),
}

fn columns(header: &ByteRecord) -> Result<Columns, Rejection> {
    if header.len() > MAX_COLUMNS {
        return Err(reject(
            RejectKind::Header,
            format!(
                "CSV header row has {} columns; at most {MAX_COLUMNS} are accepted: remove unused columns",
                header.len()
            ),
        ));
    }
    let mut cols = Vec::with_capacity(header.len());
    let mut problems = Vec::new();
    // First column of each meaning: one lookup per column keeps a wide header linear.
    let mut first = std::collections::HashMap::with_capacity(header.len());
    for (i, raw) in header.iter().enumerate() {
        let Ok(name) = std::str::from_utf8(raw).map(str::trim) else {
            return Err(reject(
                RejectKind::Encoding,
                "file is not UTF-8 text (line 1, the header row)",
            ));
        };
        let col = match Field::from_alias(name) {
            _ if name.is_empty() => Column::Unnamed,
            Some(f) => Column::Field(f),
            None => Column::Attribute(name.to_owned()),
        };
        let meaning = match &col {
            Column::Field(f) => Some(Meaning::Field(*f as usize)),
            Column::Attribute(a) => Some(Meaning::Attribute(a.to_ascii_lowercase())),
            Column::Unnamed => None,
        };
        if let Some(meaning) = meaning {
            if let Some(dup) = first.get(&meaning) {
                let msg = format!("column {} repeats column {} (same meaning)", i + 1, dup + 1);
                problems.push(problem(at_line(1), Some(name), None, msg));
            } else {
                first.insert(meaning, i);
            }
        }
        cols.push(col);
    }
    let has = |f: Field| {
        cols.iter()
            .any(|c| matches!(c, Column::Field(g) if *g == f))
    };
    if !ALL_FIELDS.iter().any(|f| has(*f)) {
        if let Some(sep) = other_separator(header) {
            return Err(reject(
                RejectKind::Header,
                format!(
                    "CSV header row is separated by {sep:?}, not by commas (as spreadsheets set to a \
                     European locale save CSV): save it again as CSV with comma separators, e.g. \
                     \"CSV UTF-8 (Comma delimited)\", or export it as CTData JSON"
                ),
            ));
        }
        return Err(reject(
            RejectKind::UnknownFormat,
            "not a CTData batch: not JSON, and not a CSV with a header row naming observed_at, latitude and longitude",
        ));
    }
    let missing: Vec<Field> = ALL_FIELDS
        .into_iter()
        .filter(|f| f.required() && !has(*f))
        .collect();
    for f in &missing {
        let msg = format!(
            "column {} is required; accepted names: {} (any case)",
            f.name(),
            accepted(*f)
        );
        problems.push(problem(at_line(1), Some(f.name()), None, msg));
    }
    if problems.is_empty() {
        return Ok(Columns(cols));
    }
    let names: Vec<&str> = missing.iter().map(|f| f.name()).collect();
    let summary = if names.is_empty() {
        "invalid CSV header row".to_owned()
    } else {
        format!("CSV header lacks required column {}", names.join(", "))
    };
    Err(Rejection {
        kind: RejectKind::Header,
        summary,
        total_problems: problems.len() as u64,
        problems,
    })
}

/// `;` or tab when the header names the sighting fields split by it instead of commas.
fn other_separator(header: &ByteRecord) -> Option<char> {
    let cells: Vec<_> = header.iter().map(String::from_utf8_lossy).collect();
    [';', '\t'].into_iter().find(|sep| {
        cells
            .iter()
            .flat_map(|cell| cell.split(*sep))
            .filter(|name| Field::from_alias(name).is_some_and(Field::required))
            .count()
            >= 2
    })
}

/// Rows end at `\n` (`\r` before it is trimmed with the other blanks): csv's own CRLF
/// handling counts a line only once the next record starts. A file with no `\n` in its
/// first buffer but with `\r` ends its lines the old Mac way, and keeps csv's handling.
fn reader(input: &mut Input) -> csv::Reader<Ends<&mut std::io::BufReader<crate::input::Source>>> {
    let cr_only = match input.reader.fill_buf() {
        Ok(buf) => !buf.contains(&b'\n') && buf.contains(&b'\r'),
        Err(_) => false,
    };
    let terminator = if cr_only {
        Terminator::CRLF
    } else {
        Terminator::Any(b'\n')
    };
    ReaderBuilder::new()
        .has_headers(true)
        .flexible(true)
        .terminator(terminator)
        .from_reader(Ends {
            inner: &mut input.reader,
            total: 0,
            last: None,
            eof: false,
        })
}

/// Passes the content through, remembering how it ends: whether the last row has a
/// line break after it decides that row's line number.
struct Ends<R> {
    inner: R,
    total: u64,
    last: Option<u8>,
    eof: bool,
}

impl<R: std::io::Read> std::io::Read for Ends<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.total += n as u64;
        if n == 0 {
            self.eof |= !buf.is_empty();
        } else {
            self.last = Some(buf[n - 1]);
        }
        Ok(n)
    }
}

/// The line a record starts on, read off where it ends. The parser's own record
/// position is taken before blank lines are skipped, so it is too low after one.
fn start_line<R: std::io::Read>(rdr: &csv::Reader<Ends<R>>, rec: &ByteRecord) -> u64 {
    let after = rdr.position();
    let ends = rdr.get_ref();
    let unterminated =
        ends.eof && after.byte() == ends.total && ends.last.is_some_and(|b| b != b'\n');
    let end = after.line() - u64::from(!unterminated);
    let inside = rec.as_slice().iter().filter(|b| **b == b'\n').count() as u64;
    end.saturating_sub(inside).max(1)
}

/// A line holding only `\r` (a blank line of a Windows file): not a row.
fn blank(rec: &ByteRecord) -> bool {
    rec.len() == 1 && rec[0].iter().all(u8::is_ascii_whitespace)
}

fn header_row<R: std::io::Read>(rdr: &mut csv::Reader<R>) -> Result<ByteRecord, csv::Error> {
    rdr.byte_headers().cloned()
}

/// First pass: the header row only; the rest is hashed by the caller's drain.
pub(crate) fn scan(input: &mut Input) -> Result<(), Rejection> {
    let header = header_row(&mut reader(input));
    columns(&header.map_err(|e| csv_error(input, e))?).map(drop)
}

pub(crate) fn read<F>(input: &mut Input, rows: &mut Rows<'_, F>) -> Result<(), Rejection>
where
    F: FnMut(Sighting) -> ControlFlow<()>,
{
    let mut rdr = reader(input);
    let header = header_row(&mut rdr);
    let header = match header {
        Ok(h) => h,
        Err(e) => {
            drop(rdr);
            return Err(csv_error(input, e));
        }
    };
    let cols = columns(&header)?;
    let mut rec = ByteRecord::new();
    loop {
        match rdr.read_byte_record(&mut rec) {
            Ok(false) => return Ok(()),
            Ok(true) => {
                let line = start_line(&rdr, &rec);
                if rec.len() != header.len() {
                    if !blank(&rec) {
                        unequal(rows, line, header.len() as u64, rec.len() as u64);
                    }
                    continue;
                }
                if row(&cols, &rec, line, rows).is_break() {
                    return Ok(());
                }
            }
            Err(e) => {
                drop(rdr);
                return Err(csv_error(input, e));
            }
        }
    }
}

fn unequal<F: FnMut(Sighting) -> ControlFlow<()>>(
    rows: &mut Rows<'_, F>,
    line: u64,
    expected: u64,
    len: u64,
) {
    let msg = format!(
        "row has {len} fields but the header has {expected}: the row is cut short, or a value with a comma is not quoted"
    );
    rows.fail(
        RejectKind::Syntax,
        format!("CSV row at line {line} has {len} fields, expected {expected}"),
    );
    // An Err row never asks the sink anything, so it cannot break.
    let _ = rows.row(Err(vec![problem(at_line(line), None, None, msg)]));
}

fn row<F>(cols: &Columns, rec: &ByteRecord, line: u64, rows: &mut Rows<'_, F>) -> ControlFlow<()>
where
    F: FnMut(Sighting) -> ControlFlow<()>,
{
    let mut draft = Draft::default();
    let mut problems: Vec<Problem> = Vec::new();
    for (col, raw) in cols.0.iter().zip(rec.iter()) {
        let name = match col {
            Column::Field(f) => f.name(),
            Column::Attribute(a) => a.as_str(),
            Column::Unnamed => continue,
        };
        let Ok(cell) = std::str::from_utf8(raw) else {
            rows.fail(
                RejectKind::Encoding,
                format!("file is not UTF-8 text (line {line})"),
            );
            let msg = "not valid UTF-8 text; save the file as UTF-8";
            problems.push(problem(at_line(line), Some(name), None, msg));
            continue;
        };
        match col {
            Column::Field(f) => {
                if let Err(msg) = draft.set_text(*f, cell) {
                    problems.push(problem(
                        at_line(line),
                        Some(name),
                        Some(cell.trim().to_owned()),
                        msg,
                    ));
                }
            }
            Column::Attribute(a) if !cell.trim().is_empty() => {
                let value = Value::String(cell.trim().to_owned());
                match crate::fields::nul_in(a, &value) {
                    Some(msg) => problems.push(problem(at_line(line), Some(a), None, msg)),
                    None => {
                        draft.attributes.insert(a.clone(), value);
                    }
                }
            }
            _ => {}
        }
    }
    let parsed = if problems.is_empty() {
        draft.finish(rows.sha256, rows.seen).map_err(|missing| {
            let row_at = crate::fields::RowAt {
                line: Some(line),
                prefix: None,
            };
            row_at.missing(missing, &mut problems);
            problems
        })
    } else {
        Err(problems)
    };
    rows.row(parsed)
}

fn csv_error(input: &mut Input, e: csv::Error) -> Rejection {
    match e.into_kind() {
        ErrorKind::Io(e) => input.fail(e),
        ErrorKind::Utf8 { pos, .. } => {
            let line = pos.map_or(1, |p| p.line());
            reject(
                RejectKind::Encoding,
                format!("file is not UTF-8 text (line {line})"),
            )
        }
        other => reject(RejectKind::Syntax, format!("CSV syntax error: {other:?}")),
    }
}
