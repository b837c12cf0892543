//! CSV with a header row (RFC 4180). Columns are matched by name, case-insensitively,
//! with Darwin Core aliases; every other named column becomes a string attribute.

use std::ops::ControlFlow;

use csv::{ByteRecord, ErrorKind, ReaderBuilder};
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

fn columns(header: &ByteRecord) -> Result<Columns, Rejection> {
    let mut cols = Vec::with_capacity(header.len());
    let mut problems = Vec::new();
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
        if let Some(dup) = cols.iter().position(|c| same(c, &col)) {
            let msg = format!("column {} repeats column {} (same meaning)", i + 1, dup + 1);
            problems.push(problem(at_line(1), Some(name), None, msg));
        }
        cols.push(col);
    }
    let has = |f: Field| {
        cols.iter()
            .any(|c| matches!(c, Column::Field(g) if *g == f))
    };
    if !ALL_FIELDS.iter().any(|f| has(*f)) {
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

fn same(a: &Column, b: &Column) -> bool {
    match (a, b) {
        (Column::Field(x), Column::Field(y)) => x == y,
        (Column::Attribute(x), Column::Attribute(y)) => x.eq_ignore_ascii_case(y),
        _ => false,
    }
}

fn reader(input: &mut Input) -> csv::Reader<&mut std::io::BufReader<crate::input::Source>> {
    ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(&mut input.reader)
}

fn header_row(rdr: &mut csv::Reader<impl std::io::Read>) -> Result<ByteRecord, csv::Error> {
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
                let line = rec.position().map_or(0, |p| p.line());
                if row(&cols, &rec, line, rows).is_break() {
                    return Ok(());
                }
            }
            Err(e) => {
                if let ErrorKind::UnequalLengths {
                    pos,
                    expected_len,
                    len,
                } = e.kind()
                {
                    unequal(
                        rows,
                        pos.as_ref().map_or(0, |p| p.line()),
                        *expected_len,
                        *len,
                    );
                    continue;
                }
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
