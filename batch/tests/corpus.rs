//! Runs scan + read over every committed fixture: good ones must load, bad ones must be
//! refused for the specific reason their `.expect` file names.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use ctdata_batch::{read, scan, Limits, Rejection};
use uuid::Uuid;

fn fixtures(kind: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures")
        .join(kind);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_none_or(|e| e != "expect"))
        .collect();
    files.sort();
    files
}

fn load(path: &Path) -> Result<u64, Rejection> {
    load_ids(path).map(|(_, ids)| ids.len() as u64)
}

fn load_ids(path: &Path) -> Result<(Uuid, Vec<Uuid>), Rejection> {
    let limits = Limits::default();
    let s = scan(path, &limits)?;
    let mut ids = Vec::new();
    let summary = read(path, &s, &limits, |row| {
        ids.push(row.id);
        ControlFlow::Continue(())
    })?;
    assert_eq!(summary.rows, ids.len() as u64);
    Ok((s.batch_id, ids))
}

/// The server's tests load all good fixtures into one database: ids must not collide.
#[test]
fn good_fixture_ids_are_unique() {
    let mut seen = HashSet::new();
    for f in fixtures("good") {
        let (batch, ids) = load_ids(&f).unwrap();
        assert!(seen.insert(batch), "{}: batch id reused", f.display());
        for id in ids {
            assert!(seen.insert(id), "{}: id {id} reused", f.display());
        }
    }
}

#[test]
fn every_good_fixture_loads() {
    let files = fixtures("good");
    assert!(files.len() >= 7, "good fixtures missing");
    for f in files {
        match load(&f) {
            Ok(n) => assert!(n >= 3, "{}: only {n} rows", f.display()),
            Err(r) => panic!("{} rejected: {r}", f.display()),
        }
    }
}

#[test]
fn every_bad_fixture_is_rejected_for_its_reason() {
    let files = fixtures("bad");
    assert!(files.len() >= 28, "bad fixtures missing");
    let mut failures = Vec::new();
    for f in files {
        let name = f.file_name().unwrap().to_string_lossy().into_owned();
        // Duplicate ids are the database's to find (constant memory here).
        if name.contains("dup-ids") {
            continue;
        }
        let stem = &name[..name.find('.').unwrap()];
        let expect_path = f.with_file_name(format!("{stem}.expect"));
        let expect = std::fs::read_to_string(&expect_path).unwrap();
        let expect = expect.trim_end_matches(['\n', '\r']);
        match load(&f) {
            Ok(n) => failures.push(format!("{name}: accepted with {n} rows")),
            Err(r) if !r.to_string().contains(expect) => {
                failures.push(format!("{name}: expected {expect:?} in:\n{r}"))
            }
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n\n"));
}

/// `cargo test -p ctdata-batch --test corpus -- --ignored --nocapture show` prints every
/// rejection, to review the wording.
#[test]
#[ignore]
fn show_rejections() {
    for f in fixtures("bad") {
        match load(&f) {
            Ok(n) => println!("{}: OK {n}", f.display()),
            Err(r) => println!(
                "{}: [{:?}] {r}\n",
                f.file_name().unwrap().to_string_lossy(),
                r.kind
            ),
        }
    }
}
