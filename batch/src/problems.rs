//! Building rejections: collecting row problems without unbounded memory, and deciding
//! which kind of failure a file is refused for when several things are wrong.

use std::ops::ControlFlow;

use crate::model::{Location, Problem, RejectKind, Rejection, Sighting};

/// Values quoted back in problems are cut to this many characters, so a hostile
/// megabyte-long cell cannot bloat the stored rejection.
const MAX_VALUE_CHARS: usize = 80;

pub(crate) fn shorten(s: &str) -> String {
    match s.char_indices().nth(MAX_VALUE_CHARS) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_owned(),
    }
}

/// A rejection with no listed problems.
pub(crate) fn reject(kind: RejectKind, summary: impl Into<String>) -> Rejection {
    Rejection {
        kind,
        summary: summary.into(),
        problems: Vec::new(),
        total_problems: 0,
    }
}

/// A rejection with exactly one problem.
pub(crate) fn reject_with(kind: RejectKind, summary: impl Into<String>, p: Problem) -> Rejection {
    Rejection {
        kind,
        summary: summary.into(),
        problems: vec![p],
        total_problems: 1,
    }
}

pub(crate) fn problem(
    at: Location,
    field: Option<&str>,
    value: Option<String>,
    message: impl Into<String>,
) -> Problem {
    Problem {
        at,
        field: field.map(str::to_owned),
        value: value.map(|v| shorten(&v)),
        message: message.into(),
    }
}

pub(crate) fn at_line(line: u64) -> Location {
    Location {
        line: Some(line),
        path: None,
    }
}

pub(crate) fn at_path(path: impl Into<String>) -> Location {
    Location {
        line: None,
        path: Some(path.into()),
    }
}

/// Higher wins when a file has several kinds of trouble: a truncated file usually
/// also has a broken last row, and "truncated" is the reason that matters.
fn rank(kind: RejectKind) -> u8 {
    match kind {
        RejectKind::InvalidRows => 1,
        RejectKind::Header => 2,
        RejectKind::Syntax => 3,
        RejectKind::Encoding => 4,
        RejectKind::Truncated => 5,
        _ => 6,
    }
}

/// Collects the problems of a second pass and feeds valid rows to the caller's sink
/// until the first problem: after that nothing may be stored anyway, but listing
/// more problems saves the sender round trips.
pub(crate) struct Rows<'a, F> {
    sink: F,
    pub sha256: &'a str,
    max_listed: usize,
    problems: Vec<Problem>,
    total: u64,
    bad_rows: u64,
    fatal: Option<(RejectKind, String)>,
    /// Rows seen so far, valid or not; the next row's 0-based index.
    pub seen: u64,
    delivered: u64,
    pub stopped: bool,
}

impl<'a, F: FnMut(Sighting) -> ControlFlow<()>> Rows<'a, F> {
    pub fn new(sink: F, sha256: &'a str, max_listed: usize) -> Self {
        Rows {
            sink,
            sha256,
            max_listed,
            problems: Vec::new(),
            total: 0,
            bad_rows: 0,
            fatal: None,
            seen: 0,
            delivered: 0,
            stopped: false,
        }
    }

    pub fn add(&mut self, p: Problem) {
        self.total += 1;
        if self.problems.len() < self.max_listed {
            self.problems.push(p);
        }
    }

    /// Records a failure of the file as a whole; the highest-ranked one names it.
    pub fn fail(&mut self, kind: RejectKind, summary: impl Into<String>) {
        let replace = match &self.fatal {
            None => true,
            Some((k, _)) => rank(kind) > rank(*k),
        };
        if replace {
            self.fatal = Some((kind, summary.into()));
        }
    }

    pub fn is_clean(&self) -> bool {
        self.total == 0 && self.fatal.is_none()
    }

    /// Hands one parsed row on. Returns `Break` when the sink asked to stop.
    pub fn row(&mut self, parsed: Result<Sighting, Vec<Problem>>) -> ControlFlow<()> {
        self.seen += 1;
        match parsed {
            Ok(s) if self.is_clean() => {
                self.delivered += 1;
                if (self.sink)(s).is_break() {
                    self.stopped = true;
                    return ControlFlow::Break(());
                }
            }
            Ok(_) => {}
            Err(ps) => {
                self.bad_rows += 1;
                ps.into_iter().for_each(|p| self.add(p));
            }
        }
        ControlFlow::Continue(())
    }

    /// Counts a valid row that is not a sighting (a CyberTracker waypoint).
    pub fn skip(&mut self) {
        self.seen += 1;
    }

    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    pub fn finish(self) -> Result<u64, Rejection> {
        if self.is_clean() || self.stopped {
            return Ok(self.delivered);
        }
        let (kind, summary) = match self.fatal {
            Some(f) => f,
            None => (RejectKind::InvalidRows, invalid_rows(self.bad_rows)),
        };
        Err(Rejection {
            kind,
            summary,
            problems: self.problems,
            total_problems: self.total,
        })
    }
}

fn invalid_rows(n: u64) -> String {
    if n == 1 {
        "1 invalid row".to_owned()
    } else {
        format!("{n} invalid rows")
    }
}
