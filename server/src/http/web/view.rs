//! What the page templates (`server/templates/`, askama) share: rendering into a
//! response, the page frame, and the small value types the macros in `macros.html` take.
//! Templates escape every value; none is marked safe.

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use super::session::Signed;

/// The template's page with `status`.
pub fn render(status: StatusCode, page: impl Template) -> Response {
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!("cannot render a dashboard page: {e}");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page could not be made",
            )
                .into_response()
        }
    }
}

/// A page that is only a message.
pub fn message(status: StatusCode, title: &str, message: &str) -> Response {
    render(status, Message { title, message })
}

#[derive(Template)]
#[template(path = "message.html")]
struct Message<'a> {
    title: &'a str,
    message: &'a str,
}

/// Any failure inside a page, in words: handlers return `Result<Response, Failure>` and
/// use `?`.
pub struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        message(
            StatusCode::SERVICE_UNAVAILABLE,
            "Something went wrong",
            &self.0,
        )
    }
}

pub type PageResult = Result<Response, Failure>;

/// A UTC time as `2026-11-22 08:59:05`, from RFC 3339 text or a `DateTime<Utc>`.
pub fn utc(t: impl std::fmt::Display) -> String {
    let t = t.to_string().replacen('T', " ", 1);
    t.get(..19).unwrap_or(&t).to_string()
}

/// Filters the templates use.
pub mod filters {
    /// `{{ t|when }}`: see [`super::utc`].
    #[askama::filter_fn]
    pub fn when(t: impl std::fmt::Display, _: &dyn askama::Values) -> askama::Result<String> {
        Ok(super::utc(t))
    }
}

const PAGES: [(&str, &str); 7] = [
    ("/", "Overview"),
    ("/devices", "Devices"),
    ("/batches", "Batches"),
    ("/rejected", "Rejected"),
    ("/sightings", "Sightings"),
    ("/patrols", "Patrols"),
    ("/sources", "Sources"),
];

/// The frame around a signed-in page (`page.html`): the navigation with `active`
/// marked, the administrator, the session's CSRF token for the page's forms.
pub struct Frame<'a> {
    pub admin: &'a str,
    pub csrf: &'a str,
    pub active: &'static str,
    pub title: String,
}

pub struct NavLink {
    pub href: &'static str,
    pub name: &'static str,
    pub active: bool,
}

impl Frame<'_> {
    pub fn nav(&self) -> Vec<NavLink> {
        PAGES
            .iter()
            .map(|&(href, name)| NavLink {
                href,
                name,
                active: href == self.active,
            })
            .collect()
    }
}

impl Signed {
    /// The frame of a page under the navigation entry `active`.
    pub fn frame(&self, active: &'static str, title: impl Into<String>) -> Frame<'_> {
        Frame {
            admin: &self.admin,
            csrf: &self.csrf,
            active,
            title: title.into(),
        }
    }
}

/// An outcome in one line: `<p class="ok|error" id="…">`.
pub struct Notice {
    pub ok: bool,
    pub id: &'static str,
    pub text: String,
}

impl Notice {
    pub fn ok(text: impl Into<String>) -> Notice {
        Notice {
            ok: true,
            id: "notice",
            text: text.into(),
        }
    }

    pub fn error(text: impl std::fmt::Display) -> Notice {
        Notice {
            ok: false,
            id: "notice",
            text: text.to_string(),
        }
    }
}

/// A filter's `<select>`: "all" first, then the options, `chosen` selected.
pub struct Select {
    pub name: &'static str,
    pub options: Vec<(&'static str, bool)>,
}

impl Select {
    pub fn new(name: &'static str, options: &[&'static str], chosen: Option<&str>) -> Select {
        Select {
            name,
            options: options.iter().map(|o| (*o, chosen == Some(*o))).collect(),
        }
    }
}

/// First page / Next page links that keep the filters in `keep`.
pub struct Pager {
    pub path: String,
    pub keep: Vec<(&'static str, String)>,
    /// The cursor to continue before, when the page was full.
    pub next: Option<i64>,
}

impl Pager {
    /// The first page of `path` with the filters in `keep` that were given.
    pub fn new(path: impl Into<String>, keep: &[(&'static str, Option<String>)]) -> Pager {
        Pager {
            path: path.into(),
            keep: given_pairs(keep),
            next: None,
        }
    }

    /// A Next page link before `last` (the page's last cursor) if the page was `full`.
    pub fn after(mut self, last: Option<i64>, full: bool) -> Pager {
        self.next = last.filter(|_| full);
        self
    }
}

/// The pairs whose value was given.
pub fn given_pairs(pairs: &[(&'static str, Option<String>)]) -> Vec<(&'static str, String)> {
    pairs
        .iter()
        .filter_map(|(k, v)| Some((*k, v.clone().filter(|v| !v.is_empty())?)))
        .collect()
}

/// An empty form field counts as not given.
pub fn given(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}

/// A row of a sightings table with the sighting's files (thumbnails for images).
pub struct TableRow {
    pub row: crate::db::SightingRow,
    pub files: Vec<crate::db::CursorFile>,
}

impl std::ops::Deref for TableRow {
    type Target = crate::db::SightingRow;
    fn deref(&self) -> &Self::Target {
        &self.row
    }
}

/// The rows of a sightings table, each with its files, looked up in one query.
pub async fn table_rows(
    db: &crate::db::Db,
    rows: Vec<crate::db::SightingRow>,
) -> sqlx::Result<Vec<TableRow>> {
    let cursors: Vec<i64> = rows.iter().map(|r| r.cursor).collect();
    let mut files: std::collections::HashMap<i64, Vec<crate::db::CursorFile>> =
        std::collections::HashMap::new();
    for f in db.files_by_cursor(&cursors).await? {
        files.entry(f.cursor).or_default().push(f);
    }
    Ok(rows
        .into_iter()
        .map(|row| TableRow {
            files: files.remove(&row.cursor).unwrap_or_default(),
            row,
        })
        .collect())
}
