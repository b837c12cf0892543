//! The page frame and small HTML helpers. Everything user-supplied goes through `esc`.

use std::fmt::Write;

use axum::response::Html;

use super::Signed;

pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `2026-11-22T08:59:05.123Z` as `2026-11-22 08:59:05` (UTC).
pub fn when(t: &impl std::fmt::Display) -> String {
    let t = t.to_string().replace('T', " ");
    esc(t.get(..19).unwrap_or(&t))
}

const PAGES: [(&str, &str); 6] = [
    ("/", "Overview"),
    ("/devices", "Devices"),
    ("/batches", "Batches"),
    ("/rejected", "Rejected"),
    ("/sightings", "Sightings"),
    ("/sources", "Sources"),
];

fn head(title: &str) -> String {
    format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{} · CTData</title><link rel=\"stylesheet\" href=\"/assets/style.css\"></head>",
        esc(title)
    )
}

/// The hidden field every state-changing form carries.
pub fn csrf_field(signed: &Signed) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(&signed.csrf)
    )
}

/// A one-button form that POSTs to `action`.
pub fn button(signed: &Signed, action: &str, label: &str, class: &str) -> String {
    format!(
        "<form method=\"post\" action=\"{}\" class=\"inline\">{}<button class=\"{class}\">{}</button></form>",
        esc(action),
        csrf_field(signed),
        esc(label)
    )
}

pub fn page(signed: &Signed, active: &str, title: &str, body: &str) -> Html<String> {
    let mut nav = String::new();
    for (href, name) in PAGES {
        let class = if href == active {
            " class=\"active\""
        } else {
            ""
        };
        let _ = write!(nav, "<a href=\"{href}\"{class}>{name}</a>");
    }
    Html(format!(
        "{}<body><header><a class=\"brand\" href=\"/\">CTData</a><nav>{nav}</nav>\
         <div class=\"who\"><a href=\"/account\" id=\"account\">{}</a>{}</div></header><main><h1>{}</h1>{body}</main></body></html>",
        head(title),
        esc(&signed.admin),
        button(signed, "/logout", "Sign out", "link"),
        esc(title)
    ))
}

pub fn message_page(title: &str, message: &str) -> Html<String> {
    Html(format!(
        "{}<body><main class=\"narrow\"><h1>{}</h1><p class=\"error\">{}</p>\
         <p><a href=\"/\">Back to the dashboard</a></p></main></body></html>",
        head(title),
        esc(title),
        esc(message)
    ))
}

pub fn login_page(error: Option<&str>, csrf: &str, no_admins: bool) -> Html<String> {
    let error = error
        .map(|e| format!("<p class=\"error\" id=\"login-error\">{}</p>", esc(e)))
        .unwrap_or_default();
    let first = if no_admins {
        "<p id=\"no-admin\">No administrator exists yet. On the server, create the first one \
         with <code>ctdata-server admin add NAME</code> (it asks for the password), then sign \
         in here.</p>"
    } else {
        ""
    };
    Html(format!(
        "{}<body><main class=\"narrow\"><h1>CTData sign in</h1>{error}{first}\
         <form method=\"post\" action=\"/login\" class=\"stack\">\
         <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
         <label>Administrator <input name=\"name\" id=\"name\" autocomplete=\"username\" required></label>\
         <label>Password <input type=\"password\" name=\"password\" id=\"password\" \
         autocomplete=\"current-password\" required></label>\
         <button id=\"sign-in\">Sign in</button></form></main></body></html>",
        head("Sign in"),
        esc(csrf)
    ))
}

/// A query string of the non-empty pairs.
pub fn query(pairs: &[(&str, Option<String>)]) -> String {
    let parts: Vec<String> = pairs
        .iter()
        .filter_map(|(k, v)| {
            let v = v.as_deref().filter(|v| !v.is_empty())?;
            Some(format!("{k}={}", urlencode(v)))
        })
        .collect();
    parts.join("&")
}

pub fn urlencode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b => {
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// A `<select>` with "all" first.
pub fn select(name: &str, options: &[&str], chosen: Option<&str>) -> String {
    let mut s = format!("<select name=\"{name}\" id=\"f-{name}\"><option value=\"\">all</option>");
    for o in options {
        let sel = if chosen == Some(*o) { " selected" } else { "" };
        let _ = write!(s, "<option{sel}>{}</option>", esc(o));
    }
    s.push_str("</select>");
    s
}

/// An empty form field counts as not given.
pub fn given(v: &Option<String>) -> Option<String> {
    v.as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}
