//! The field client where the field hurts it, against the real server on both backends:
//! its disk fills up while it seals, imports or docks (its home on a small tmpfs), the
//! system's temporary folder is full when the window imports a file, and an upgrade
//! finds the single pull cursor of an earlier version in `state.json`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use ctdata_tests::client::Client;
use ctdata_tests::tmpfs::Tmpfs;
use ctdata_tests::{both_backends, eventually, ServerEnv, TestDb};

both_backends! {
    a_full_disk_while_sealing_loses_no_sighting,
    an_import_cut_short_by_a_full_disk_is_completed_by_importing_it_again,
    a_docked_file_that_could_not_be_stored_is_taken_once_there_is_room,
    the_window_imports_with_the_system_temporary_folder_full,
    a_pull_after_an_upgrade_goes_on_from_the_old_cursor,
}

/// The client's disk, on a tmpfs of its own.
trait ClientDisk {
    fn client(&self) -> Client;
    fn fill_leaving(&self, room: u64) -> PathBuf;
}

impl ClientDisk for Tmpfs {
    /// A client whose home is on this filesystem.
    fn client(&self) -> Client {
        Client {
            home: tempfile::tempdir_in(self.path()).expect("home on the tmpfs"),
        }
    }

    /// Fills the filesystem, then frees `room` bytes (rounded up to pages): what is left
    /// for the client. Returns the filler to delete for room again.
    fn fill_leaving(&self, room: u64) -> PathBuf {
        let spare = self.path().join("spare");
        let filler = self.path().join("filler");
        write_zeros(&spare, room.div_ceil(4096) * 4096);
        write_zeros(&filler, u64::MAX);
        std::fs::remove_file(&spare).expect("free the room");
        filler
    }
}

/// Writes zeros to `path`, one page at a time, until `limit` bytes or the disk is full.
fn write_zeros(path: &Path, limit: u64) {
    let mut f = std::fs::File::create(path).expect("create filler");
    let page = [0u8; 4096];
    let mut written = 0;
    while written < limit {
        if f.write_all(&page).is_err() {
            break;
        }
        written += page.len() as u64;
    }
    let _ = f.sync_all();
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A note long enough that a few dozen sightings make a batch of many pages.
fn long_note(i: usize) -> String {
    format!(
        "{i:05} {}",
        "patrol observed the herd near the waterhole; ".repeat(8)
    )
}

/// A CSV export of `rows` sightings with long notes.
fn csv(rows: usize, tag: &str) -> String {
    let mut s = String::from("observed_at,latitude,longitude,species,notes\n");
    for i in 0..rows {
        let note = long_note(i);
        s += &format!(
            "2024-05-03T{:02}:{:02}:00+02:00,-24.4,31.8,Loxodonta africana,{tag} {note}\n",
            6 + i / 60 % 12,
            i % 60
        );
    }
    s
}

fn state(client: &Client) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(client.path("state.json")).unwrap()).unwrap()
}

fn outbox_rows(client: &Client) -> Vec<u64> {
    client
        .batches_in("outbox")
        .iter()
        .map(|b| {
            let text = std::fs::read_to_string(client.path("outbox").join(b)).unwrap();
            let trailer: serde_json::Value =
                serde_json::from_str(text.trim_end().rsplit('\n').next().unwrap()).unwrap();
            trailer["count"].as_u64().unwrap()
        })
        .collect()
}

async fn a_full_disk_while_sealing_loses_no_sighting(db: TestDb) {
    let Some(fs) = Tmpfs::mount("2m") else {
        return;
    };
    let env = ServerEnv::new(&db);
    let token = env.device_token("ranger-03");
    let server = env.serve().await;
    let client = fs.client();
    client.init_https(&server.http_base(), "ranger-03", &token);
    const N: usize = 60;
    for i in 0..N {
        let lat = format!("{}", -24.0 - i as f64 / 1000.0);
        let note = format!("notes={}", long_note(i));
        client.ok(&[
            "record",
            "--species",
            "Loxodonta africana",
            "--lat",
            &lat,
            "--lon",
            "31.5",
            "--attr",
            &note,
        ]);
    }
    let open = std::fs::read(client.path("open.ndjson")).unwrap();
    assert!(open.len() > 30_000, "{} bytes", open.len());

    // Room for the state, not for the batch.
    let filler = fs.fill_leaving(16 * 1024);
    let out = client.run(&["seal"]);
    assert!(!out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("No space left on device"), "{said}");
    assert!(said.contains("open batch"), "{said}");
    // The next commands find the seal unfinished and the disk still full: they say so
    // and keep the open batch (they used to delete it).
    for args in [&["seal"][..], &["send"][..]] {
        let out = client.run(args);
        let said = text(&out);
        assert!(!out.status.success(), "{args:?}: {said}");
        assert!(
            said.contains("could not finish sealing") && said.contains("No space left on device"),
            "{args:?}: {said}"
        );
        assert!(said.contains(&format!("{N} sightings")), "{args:?}: {said}");
        assert_eq!(
            std::fs::read(client.path("open.ndjson")).unwrap(),
            open,
            "the recorded sightings are kept as they were"
        );
    }
    assert!(client.batches_in("outbox").is_empty());
    assert_eq!(
        std::fs::read_dir(client.path("outbox")).unwrap().count(),
        0,
        "no half-written batch holds on to the space"
    );

    // Room again: the seal is finished and every sighting arrives, once.
    std::fs::remove_file(&filler).unwrap();
    let out = client.run(&["send"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("finished sealing"), "{}", text(&out));
    assert!(!client.path("open.ndjson").exists());
    assert_eq!(
        db.scalar("SELECT count(*) FROM sightings").await,
        N as i64,
        "{}",
        text(&out)
    );
    assert_eq!(db.scalar("SELECT count(*) FROM batches").await, 1);
    assert!(state(&client)["sealing"].as_array().unwrap().is_empty());
    assert!(server.terminate().success());
}

async fn an_import_cut_short_by_a_full_disk_is_completed_by_importing_it_again(db: TestDb) {
    let Some(fs) = Tmpfs::mount("4m") else {
        return;
    };
    let env = ServerEnv::new(&db);
    let token = env.device_token("ranger-04");
    let server = env.serve().await;
    let source_dir = tempfile::tempdir().unwrap();
    let source = source_dir.path().join("day.csv");
    const ROWS: usize = 500;
    std::fs::write(&source, csv(ROWS, "day")).unwrap();
    let source = source.to_str().unwrap();
    let cut = ["--max-sightings", "100"];
    let import = |c: &Client| c.run(&[&["import", source][..], &cut[..]].concat());

    // The size of each part, measured with a client on a roomy disk.
    let scratch = Client::new();
    scratch.init_https(&server.http_base(), "ranger-04", &token);
    assert!(import(&scratch).status.success());
    let part = std::fs::metadata(
        scratch
            .path("outbox")
            .join(&scratch.batches_in("outbox")[0]),
    )
    .unwrap()
    .len();

    // Room for two parts and a half: the third does not fit.
    let client = fs.client();
    client.init_https(&server.http_base(), "ranger-04", &token);
    let filler = fs.fill_leaving(part * 5 / 2);
    let out = import(&client);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("No space left on device"),
        "{}",
        text(&out)
    );
    assert_eq!(client.batches_in("outbox").len(), 2, "{}", text(&out));
    // Again while the disk is still full: the file was not imported (it used to say
    // "already imported" here and never write the missing parts).
    let out = import(&client);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(!said.contains("already imported"), "{said}");
    assert!(said.contains("No space left on device"), "{said}");

    // Room again, but the card with the file was taken out meanwhile: the next send
    // cannot finish the missing parts and sends the two written.
    std::fs::remove_file(&filler).unwrap();
    let away = format!("{source}.away");
    std::fs::rename(source, &away).unwrap();
    let out = client.run(&["send"]);
    let said = text(&out);
    assert!(said.contains("sent 2 batches"), "{said}");
    assert!(
        said.contains("could not finish sealing") && said.contains("again to finish it"),
        "{said}"
    );
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, 200);

    // The card back: importing the file again writes the three missing parts (it used
    // to say "already imported", and 300 sightings never left), none twice.
    std::fs::rename(&away, source).unwrap();
    let out = import(&client);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("already imported"), "{}", text(&out));
    assert_eq!(outbox_rows(&client), vec![100; 3], "{}", text(&out));
    let out = import(&client);
    assert!(text(&out).contains("already imported"), "{}", text(&out));
    assert_eq!(client.batches_in("outbox").len(), 3);
    let out = client.run(&["send"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        db.scalar("SELECT count(*) FROM sightings").await,
        ROWS as i64
    );
    assert_eq!(
        db.scalar("SELECT count(DISTINCT batch_id) FROM batches")
            .await,
        5
    );
    let out = import(&client);
    assert!(text(&out).contains("already imported"), "{}", text(&out));
    assert!(client.batches_in("outbox").is_empty());
    assert!(server.terminate().success());
}

async fn a_docked_file_that_could_not_be_stored_is_taken_once_there_is_room(db: TestDb) {
    let Some(fs) = Tmpfs::mount("2m") else {
        return;
    };
    let env = ServerEnv::new(&db);
    let token = env.device_token("station-pc");
    let server = env.serve().await;
    let client = fs.client();
    client.init_https(&server.http_base(), "station-pc", &token);
    let synced = tempfile::tempdir().unwrap();
    let dir = synced.path().to_str().unwrap().to_string();
    std::fs::write(synced.path().join("day1.csv"), csv(200, "day1")).unwrap();

    let filler = fs.fill_leaving(16 * 1024);
    let out = client.run(&["dock", &dir]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("day1.csv")
            && said.contains("No space left on device")
            && said.contains("tried again"),
        "{said}"
    );
    assert!(
        !said.contains("not taken:"),
        "not reported as a bad file: {said}"
    );
    assert!(
        state(&client)["dock_bad"].as_object().unwrap().is_empty(),
        "a full disk says nothing about the file"
    );

    // Room again: the next run takes it (it used to skip it for ever as "reported").
    std::fs::remove_file(&filler).unwrap();
    let out = client.run(&["dock", &dir]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert!(!text(&out).contains("reported before"), "{}", text(&out));
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, 200);
    // And once only.
    let out = client.run(&["dock", &dir]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, 200);
    assert!(server.terminate().success());
}

async fn the_window_imports_with_the_system_temporary_folder_full(db: TestDb) {
    let Some(tmp) = Tmpfs::mount("256k") else {
        return;
    };
    let env = ServerEnv::new(&db);
    let token = env.device_token("ranger-05");
    let server = env.serve().await;
    let client = Client::new();
    client.init_https(&server.http_base(), "ranger-05", &token);
    tmp.fill_leaving(0);

    let printed = client.home.path().with_extension("app.out");
    let mut child = client
        .command(&["app", "--no-browser"])
        .env("TMPDIR", tmp.path())
        .stdout(std::fs::File::create(&printed).unwrap())
        .stderr(std::fs::File::create(printed.with_extension("err")).unwrap())
        .spawn()
        .expect("start ctdata app");
    let url = eventually("the app's address", Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&printed).unwrap_or_default();
        let url = text
            .lines()
            .find_map(|l| l.strip_prefix("ctdata app: open "))
            .and_then(|l| l.split_whitespace().next())
            .map(str::to_string);
        std::future::ready(url)
    })
    .await;
    let (base, key) = url.split_once("/?key=").unwrap();
    let upload = client.home.path().with_extension("day2.csv");
    std::fs::write(&upload, csv(40, "day2")).unwrap();
    // What the page sends when the ranger picks a file and taps Import.
    let out = Command::new("curl")
        .args(["-s", "-w", "\n%{http_code}", "-H"])
        .arg(format!("x-ctdata-key: {key}"))
        .args([
            "-H",
            "content-type: application/octet-stream",
            "--data-binary",
        ])
        .arg(format!("@{}", upload.display()))
        .arg(format!("{base}/api/import?name=day2.csv"))
        .output()
        .expect("run curl");
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&printed);
    let _ = std::fs::remove_file(printed.with_extension("err"));
    let _ = std::fs::remove_file(&upload);
    assert!(said.ends_with("\n200"), "{said}");
    assert!(said.contains("40 sightings"), "{said}");
    assert!(said.contains("day2.csv"), "{said}");
    assert!(
        std::fs::read_dir(client.path(".staging"))
            .unwrap()
            .next()
            .is_none(),
        "the staged upload is gone once imported"
    );
    let out = client.run(&["send"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, 40);
    assert!(server.terminate().success());
}

fn inbox(c: &Client) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(c.path("inbox"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

/// Rewrites `state.json` as a client before per-format cursors left it: one
/// `pull_cursor`, no `pull_cursors`.
fn as_old_client_left_it(client: &Client, cursor: i64) {
    let mut s = state(client);
    let map = s.as_object_mut().unwrap();
    map.remove("pull_cursors");
    map.insert("pull_cursor".into(), cursor.into());
    std::fs::write(
        client.path("state.json"),
        serde_json::to_vec_pretty(&s).unwrap(),
    )
    .unwrap();
}

async fn a_pull_after_an_upgrade_goes_on_from_the_old_cursor(db: TestDb) {
    let env = ServerEnv::new(&db);
    let token = env.device_token("ranger-06");
    let admin = env.admin_token();
    let server = env.serve().await;
    let client = Client::new();
    client.ok(&[
        "init",
        "--protocol",
        "https",
        "--url",
        &server.http_base(),
        "--device",
        "ranger-06",
        "--token",
        &token,
        "--download-token",
        &admin,
    ]);
    client.record(3, "Loxodonta africana");
    client.ok(&["send"]);
    let out = client.ok(&["pull", "--format", "csv"]);
    assert!(out.contains("pulled"), "{out}");
    let first = inbox(&client);
    assert_eq!(first.len(), 1, "{first:?}");
    let cursor: i64 = first[0]
        .strip_prefix("sightings-0-")
        .and_then(|n| n.strip_suffix(".csv"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{first:?}"));

    // The upgrade: CSV goes on where the old client's CSV pulls ended; GeoJSON, which
    // that client never pulled, starts from the beginning.
    as_old_client_left_it(&client, cursor);
    let out = client.ok(&["pull", "--format", "csv"]);
    assert!(out.contains("nothing new"), "{out}");
    let out = client.ok(&["pull", "--format", "geojson"]);
    assert!(out.contains("pulled"), "{out}");
    let saved = std::fs::read_to_string(client.path("state.json")).unwrap();
    assert!(!saved.contains("\"pull_cursor\""), "{saved}");

    // The inbox emptied by the operator before the upgrade: no trace of which format
    // was pulled, so every format goes on from the old cursor, as before.
    for name in inbox(&client) {
        std::fs::remove_file(client.path("inbox").join(name)).unwrap();
    }
    as_old_client_left_it(&client, cursor);
    for format in ["csv", "geojson", "ndjson"] {
        let out = client.ok(&["pull", "--format", format]);
        assert!(out.contains("nothing new"), "{format}: {out}");
    }
    client.record(1, "Panthera leo");
    client.ok(&["send"]);
    let out = client.ok(&["pull", "--format", "csv"]);
    assert!(out.contains("pulled"), "{out}");
    let names = inbox(&client);
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(
        names[0].starts_with(&format!("sightings-{cursor}-")),
        "{names:?}"
    );
    let rows = std::fs::read_to_string(client.path("inbox").join(&names[0])).unwrap();
    assert_eq!(rows.lines().count(), 2, "a header and the new row: {rows}");
    assert!(server.terminate().success());
}
