//! COPY in text format: the fast path for whole files and for the staging table, and
//! what a value PostgreSQL refuses tells the sender.

use std::fmt::Write as _;

use ctdata_batch::Sighting;
use sqlx::PgConnection;

use super::Ids;
use crate::db::RowStream;

/// Bytes handed to COPY at a time.
const COPY_CHUNK: usize = 1 << 20;

pub(super) enum Copied {
    Done(ctdata_batch::ReadSummary, i64),
    Rejected(ctdata_batch::Rejection),
    UniqueViolation,
}
/// COPYs every row of `stream` into `table`; with `ordinal`, also the row's position.
pub(super) async fn copy_rows(
    conn: &mut PgConnection,
    table: &str,
    columns: &str,
    ids: &Ids,
    ordinal: Option<&str>,
    mut stream: RowStream,
) -> anyhow::Result<Copied> {
    let cols = match ordinal {
        Some(o) => format!("{o}, {columns}"),
        None => columns.to_string(),
    };
    let mut copy = conn
        .copy_in_raw(&format!("COPY {table} ({cols}) FROM STDIN"))
        .await?;
    let mut buf = String::with_capacity(COPY_CHUNK * 2);
    let mut n: i64 = 0;
    let mut send_err = None;
    while let Some(chunk) = stream.rx.recv().await {
        for s in &chunk {
            if ordinal.is_some() {
                let _ = write!(buf, "{n}\t");
            }
            encode_row(&mut buf, s, ids);
            n += 1;
        }
        if buf.len() >= COPY_CHUNK {
            if let Err(e) = copy.send(std::mem::take(&mut buf).into_bytes()).await {
                send_err = Some(e);
                break;
            }
            buf.reserve(COPY_CHUNK * 2);
        }
    }
    if let Some(e) = send_err {
        drop(stream.rx);
        let _ = stream.done.await;
        return classify(e);
    }
    match stream.done.await? {
        Err(rejection) => {
            copy.abort("batch rejected").await.ok();
            Ok(Copied::Rejected(rejection))
        }
        Ok(summary) => {
            if !buf.is_empty() {
                if let Err(e) = copy.send(buf.into_bytes()).await {
                    return classify(e);
                }
            }
            match copy.finish().await {
                Ok(count) => Ok(Copied::Done(summary, count as i64)),
                Err(e) => classify(e),
            }
        }
    }
}

/// A unique violation sends the load down the staging path; a value PostgreSQL cannot
/// store (SQLSTATE classes 22 "data exception" and 54 "program limit exceeded") rejects
/// the file, since retrying would fail the same way forever; anything else is the
/// database's trouble, not the file's, and is retried later.
pub(super) fn classify(e: sqlx::Error) -> anyhow::Result<Copied> {
    let sqlx::Error::Database(d) = &e else {
        return Err(e.into());
    };
    if d.is_unique_violation() {
        return Ok(Copied::UniqueViolation);
    }
    let code = d.code().unwrap_or_default();
    if !(code.starts_with("22") || code.starts_with("54")) {
        return Err(e.into());
    }
    let pg = d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>();
    let place = pg.and_then(|pg| pg.r#where());
    // The context names our tables and statements: of use to us, not to the sender.
    tracing::debug!(
        sqlstate = code.as_ref(),
        detail = pg.and_then(|pg| pg.detail()).unwrap_or("-"),
        place = place.unwrap_or("-"),
        "PostgreSQL refused a value: {}",
        d.message()
    );
    Ok(Copied::Rejected(ctdata_batch::Rejection {
        kind: ctdata_batch::RejectKind::InvalidRows,
        summary: refusal(d.message(), place),
        problems: vec![],
        total_problems: 1,
    }))
}

/// The reason a sender reads for a value PostgreSQL refused: the sighting (counting
/// from 1), the field and the value, taken from the COPY context
/// `COPY <table>, line <n>, column <field>: "<value>"`, and nothing else of it.
fn refusal(message: &str, place: Option<&str>) -> String {
    // Context lines run innermost first (a jsonb value's own parse position, say);
    // the COPY line is the one that points into the sender's file.
    let copy = place
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("COPY "))
        .unwrap_or_default();
    // The value may hold ", " itself: split only as far as the field name.
    let mut at = Vec::new();
    let rest = copy.split_once(", ").map_or("", |(_, r)| r);
    if let Some(rest) = rest.strip_prefix("line ") {
        let (line, rest) = rest.split_once(", ").unwrap_or((rest, ""));
        at.push(format!("sighting {}", line.trim()));
        if let Some(column) = rest.strip_prefix("column ") {
            match column.split_once(": ") {
                Some((field, value)) => at.push(format!("field {field}, value {value}")),
                None => at.push(format!("field {column}")),
            }
        }
    }
    if at.is_empty() {
        format!("the database refused a value: {message}")
    } else {
        format!(
            "{}: the database refused the value: {message}",
            at.join(", ")
        )
    }
}

/// One line of COPY text format.
fn encode_row(buf: &mut String, s: &Sighting, ids: &Ids) {
    let _ = write!(
        buf,
        "{}\t{}\t{}\t{}\t{}\t{}\t{}\t",
        s.id,
        ids.batch,
        ids.device,
        s.observed_at.to_rfc3339(),
        s.observed_at.offset().local_minus_utc(),
        s.latitude,
        s.longitude
    );
    opt_num(buf, s.altitude);
    opt_num(buf, s.accuracy);
    opt_text(buf, s.observer.as_deref());
    opt_text(buf, s.species.as_deref());
    opt_num(buf, s.count);
    let attrs = serde_json::to_string(&s.attributes).unwrap_or_else(|_| "{}".into());
    escape(buf, &attrs);
    buf.push('\n');
}

fn opt_num(buf: &mut String, v: Option<impl std::fmt::Display>) {
    match v {
        Some(v) => {
            let _ = write!(buf, "{v}\t");
        }
        None => buf.push_str("\\N\t"),
    }
}

fn opt_text(buf: &mut String, v: Option<&str>) {
    match v {
        Some(v) => {
            escape(buf, v);
            buf.push('\t');
        }
        None => buf.push_str("\\N\t"),
    }
}

/// COPY text format escapes: backslash, and the delimiter / row characters.
fn escape(buf: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => buf.push_str("\\\\"),
            '\t' => buf.push_str("\\t"),
            '\n' => buf.push_str("\\n"),
            '\r' => buf.push_str("\\r"),
            c => buf.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use sqlx::Connection;

    use super::*;

    /// A value our parser lets through but PostgreSQL refuses, sent the way a load sends
    /// it (COPY into a staging table): the reason names the sighting and the field, and
    /// none of the table, the statement or PostgreSQL's internal detail.
    #[tokio::test]
    async fn a_refused_value_names_the_sighting_and_field_not_the_sql() {
        let Some(db) = ctdata_tests::TestDb::new(ctdata_tests::Backend::Postgres).await else {
            return;
        };
        let mut conn = PgConnection::connect(&db.url).await.expect("connect");
        sqlx::query("CREATE TEMP TABLE staging (ord bigint, species text, attributes jsonb)")
            .execute(&mut conn)
            .await
            .expect("staging table");
        let mut copy = conn
            .copy_in_raw("COPY staging (ord, species, attributes) FROM STDIN")
            .await
            .expect("copy");
        // The second row's attributes hold an escaped NUL, which jsonb cannot store.
        let rows = "0\tpica\t{}\n1\tcorvus\t{\"n\": 1, \"note\": \"a\\\\u0000b\"}\n";
        let err = match copy.send(rows.as_bytes()).await {
            Ok(_) => copy
                .finish()
                .await
                .expect_err("PostgreSQL refuses \\u0000 in jsonb"),
            Err(e) => e,
        };
        let Ok(Copied::Rejected(r)) = classify(err) else {
            panic!("a refused value rejects the file");
        };
        assert!(r.summary.contains("sighting 2"), "{}", r.summary);
        assert!(
            r.summary
                .contains(r#"field attributes, value "{"n": 1, "note""#),
            "{}",
            r.summary
        );
        for internal in ["COPY", "staging", "line 2", "cannot be converted"] {
            assert!(!r.summary.contains(internal), "{internal} in {}", r.summary);
        }
    }
}
