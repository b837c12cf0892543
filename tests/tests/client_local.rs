//! The field client on its own, with a plain folder as the share (no server needed):
//! assisted sync (compare, push, fetch), sync off/purge, pruning of sent/, init's
//! questions on a terminal, finishing what a crash interrupted, and two sends never
//! running at once.

use std::time::Duration;

use ctdata_tests::client::{Client, Running};
use ctdata_tests::eventually;

/// A CSV export as a handheld would leave it; `tag` makes the content unique.
fn csv(rows: usize, tag: &str) -> String {
    let mut s = String::from("observed_at,latitude,longitude,species,notes\n");
    for i in 0..rows {
        s += &format!("2024-05-03T06:{i:02}:00+02:00,-24.4,31.8,Loxodonta africana,{tag}\n");
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compare_push_fetch_and_purge_on_a_share() {
    let share = tempfile::tempdir().unwrap();
    let root = share.path().join("CTData");
    let remote = root.join("ranger-07");
    std::fs::create_dir_all(&remote).unwrap();
    std::fs::write(remote.join("reference.csv"), csv(1, "ref")).unwrap();
    let client = Client::new();
    client.init_share(&root, "ranger-07", &[]);
    client.record(1, "Loxodonta africana");
    client.ok(&["seal"]);
    let batch = client.batches_in("outbox").remove(0);

    let out = client.ok(&["compare"]);
    assert!(out.contains("only here (1):"), "{out}");
    assert!(out.contains(&format!("outbox/{batch}")), "{out}");
    assert!(out.contains("only there (1):\n  reference.csv"), "{out}");
    assert!(out.contains("on both (0):"), "{out}");

    client.ok(&["push", &batch]);
    assert!(remote.join(&batch).is_file());
    assert_eq!(client.batches_in("sent"), std::slice::from_ref(&batch));
    client.ok(&["fetch", "reference.csv"]);
    assert_eq!(
        std::fs::read_to_string(client.path("inbox/reference.csv")).unwrap(),
        csv(1, "ref")
    );
    assert!(!remote.join("reference.csv").exists());
    let out = client.ok(&["compare"]);
    assert!(out.contains("  inbox/reference.csv"), "{out}");
    assert!(
        out.contains(&format!("only there (1):\n  {batch}")),
        "{out}"
    );
    let missing = client.run(&["fetch", "nothing.csv"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("nothing.csv is not on the remote"));

    // sync off pauses a running autosend: it waits (saying so once) instead of exiting,
    // `send` refuses without --force, and sync on lets autosend send again.
    let mut autosend = Running::start(&client, &["autosend", "--every", "200ms"]);
    eventually("autosend to start", Duration::from_secs(30), || async {
        client.log_text().contains("autosend started").then_some(())
    })
    .await;
    client.ok(&["sync", "off"]);
    eventually("autosend to wait", Duration::from_secs(30), || async {
        client
            .log_text()
            .contains("waiting for `ctdata sync on`")
            .then_some(())
    })
    .await;
    client.record(1, "Panthera pardus");
    let refused = client.run(&["send"]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("sync is off") && stderr.contains("--force"),
        "{stderr}"
    );
    assert_eq!(
        client.batches_in("outbox").len(),
        0,
        "nothing sealed or sent"
    );
    // A second autosend started while sync is off waits too (a service manager would
    // otherwise restart it forever); it is the first one that holds the lock.
    let second = client.run(&["autosend", "--every", "200ms"]);
    assert!(String::from_utf8_lossy(&second.stderr).contains("already running"));
    // Several looks later it still waits, and has said so once.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(autosend.child_running());
    assert_eq!(
        client
            .log_text()
            .matches("waiting for `ctdata sync on`")
            .count(),
        1,
        "{}",
        client.log_text()
    );
    client.ok(&["sync", "on"]);
    eventually(
        "autosend to send the pardus",
        Duration::from_secs(30),
        || async {
            client
                .batches_in("sent")
                .iter()
                .any(|b| {
                    std::fs::read_to_string(client.path("sent").join(b))
                        .unwrap_or_default()
                        .contains("Panthera pardus")
                })
                .then_some(())
        },
    )
    .await;
    let (status, output) = autosend.terminate().await;
    assert!(status.success(), "{output}");
    assert!(output.contains("sync is on again"), "{output}");
    client.ok(&["sync", "off"]);
    client.record(1, "Panthera pardus");
    client.ok(&["send", "--force"]);
    client.ok(&["sync", "on"]);

    // Purge asks first; with --yes it deletes here and, with --remote, there.
    client.record(1, "Syncerus caffer");
    let asked = client.run(&["sync", "purge", "--remote"]);
    assert_eq!(asked.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&asked.stderr).contains("pass --yes"));
    assert!(
        remote.join(&batch).is_file(),
        "nothing deleted without --yes"
    );
    client.ok(&["sync", "purge", "--remote", "--yes"]);
    assert!(!remote.join(&batch).exists());
    assert!(client.batches_in("sent").is_empty());
    assert!(!client.path("inbox/reference.csv").exists());
    let status = client.ok(&["status"]);
    assert!(status.contains("open batch: 0 sightings"), "{status}");
    client.record(1, "Panthera leo");
    client.ok(&["seal"]);
    assert!(
        client.batches_in("outbox")[0].starts_with("000004-"),
        "numbers are never reused (1 pushed, 2 and 3 sent while sync was toggled)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sent_copies_are_pruned_by_age() {
    let share = tempfile::tempdir().unwrap();
    let client = Client::new();
    client.init_share(share.path(), "ranger-07", &["--keep-sent-days", "30"]);
    client.record(1, "Loxodonta africana");
    client.ok(&["send"]);
    let old = client.batches_in("sent").remove(0);
    let receipt = client.path("sent").join(format!("{old}.receipt.json"));
    let aged = std::process::Command::new("touch")
        .args(["-d", "31 days ago"])
        .arg(&receipt)
        .status()
        .unwrap();
    assert!(aged.success());
    client.record(1, "Syncerus caffer");
    client.ok(&["send"]);
    let kept = client.batches_in("sent");
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_ne!(kept[0], old);
    assert!(!receipt.exists());
    assert!(client
        .log_text()
        .contains("deleted 2 files from sent/ older than 30 days"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_asks_on_a_terminal() {
    // `script` gives ctdata a pseudo-terminal; the answers are typed into it.
    let client = Client::new();
    let command = format!(
        "{} --home {} init",
        ctdata_tests::client::client_bin().display(),
        client.home.path().display()
    );
    let mut child = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run script (util-linux)");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(b"https\nhttp://127.0.0.1:9/\nranger-09\nctd_secret\n")
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(
        screen.contains("Protocol (https, ftp, ftps or share) [https]:"),
        "{screen}"
    );
    assert!(screen.contains("Device token:"), "{screen}");
    let config = std::fs::read_to_string(client.path("config.toml")).unwrap();
    assert!(config.contains("device = \"ranger-09\""), "{config}");
    assert!(config.contains("token = \"ctd_secret\""), "{config}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(client.path("config.toml"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the token is readable by its owner only"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_mid_seal_or_mid_record_is_finished_on_the_next_run() {
    let share = tempfile::tempdir().unwrap();
    let client = Client::new();
    client.init_share(share.path(), "ranger-07", &[]);
    client.record(2, "Loxodonta africana");
    // A record killed mid-write leaves half a line: it was never acknowledged.
    let open = client.path("open.ndjson");
    let mut text = std::fs::read_to_string(&open).unwrap();
    text.push_str("{\"id\":\"3f2b8c1e-5d4a");
    std::fs::write(&open, text).unwrap();
    let out = client.ok(&["record", "--lat", "1", "--lon", "2"]);
    assert!(out.contains("(3 in the open batch)"), "{out}");

    // The state as a seal leaves it when killed after taking its number, before the
    // batch file was written: one of the open batch, one of an imported file.
    let csv_file = share.path().join("handheld.csv");
    std::fs::write(&csv_file, csv(2, "crash")).unwrap();
    let (open_id, import_id) = (uuid::Uuid::new_v4(), uuid::Uuid::new_v4());
    let state = serde_json::json!({
        "next_seq": 9,
        "sealing": [
            {"file": format!("000007-{open_id}.ndjson"), "seq": 7, "batch_id": open_id,
             "created_at": "2024-05-01T10:00:00+02:00", "source": null},
            {"file": format!("000008-{import_id}.ndjson"), "seq": 8, "batch_id": import_id,
             "created_at": "2024-05-01T10:00:01+02:00", "source": csv_file},
        ],
    });
    std::fs::write(client.path("state.json"), state.to_string()).unwrap();

    let out = client.ok(&["seal"]);
    assert!(out.contains("nothing to seal"), "{out}");
    assert_eq!(
        client.batches_in("outbox"),
        [
            format!("000007-{open_id}.ndjson"),
            format!("000008-{import_id}.ndjson")
        ]
    );
    let first = std::fs::read_to_string(
        client
            .path("outbox")
            .join(format!("000007-{open_id}.ndjson")),
    )
    .unwrap();
    let header: serde_json::Value = serde_json::from_str(first.lines().next().unwrap()).unwrap();
    assert_eq!(header["sequence"], 7);
    assert_eq!(header["batch_id"], open_id.to_string());
    assert_eq!(
        first.lines().count(),
        1 + 3 + 1,
        "header, 3 sightings, trailer"
    );
    assert!(!open.exists(), "the open batch went into the sealed one");
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(client.path("state.json")).unwrap()).unwrap();
    assert_eq!(state["sealing"], serde_json::json!([]));
    assert_eq!(state["next_seq"], 9);
    assert_eq!(client.log_text().matches("finished sealing").count(), 2);

    let out = client.ok(&["send"]);
    assert!(out.contains("sent 2 batches (5 sightings"), "{out}");
    client.record(1, "Panthera leo");
    client.ok(&["seal"]);
    assert!(client.batches_in("outbox")[0].starts_with("000009-"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sends_never_overlap() {
    let share = tempfile::tempdir().unwrap();
    let client = Client::new();
    client.init_share(share.path(), "ranger-07", &[]);
    client.record(1, "Loxodonta africana");
    // flock(1) holds the send lock, as a send in progress (or autosend's) does, until
    // its standard input closes.
    let mut holder = std::process::Command::new("flock")
        .arg(client.path(".send.lock"))
        .arg("cat")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("run flock (util-linux)");
    let lock = client.path(".send.lock");
    eventually(
        "flock to hold the lock",
        Duration::from_secs(30),
        || async {
            let busy = std::process::Command::new("flock")
                .args(["--nonblock", lock.to_str().unwrap(), "true"])
                .status()
                .unwrap();
            (!busy.success()).then_some(())
        },
    )
    .await;
    let waiting = Running::start(&client, &["send"]);
    eventually(
        "send to wait for the other",
        Duration::from_secs(30),
        || async {
            waiting
                .output_text()
                .contains("another send is running in this home; waiting")
                .then_some(())
        },
    )
    .await;
    assert!(
        client.batches_in("sent").is_empty(),
        "nothing sent while the other runs"
    );
    drop(holder.stdin.take());
    holder.wait().unwrap();
    let mut waiting = waiting;
    let status = eventually(
        "the waiting send to finish",
        Duration::from_secs(30),
        || {
            let done = waiting.child.try_wait().unwrap();
            async move { done }
        },
    )
    .await;
    assert!(status.success(), "{}", waiting.output_text());
    assert_eq!(client.batches_in("sent").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moves_never_lose_or_overwrite_a_file() {
    let share = tempfile::tempdir().unwrap();
    let root = share.path().join("CTData");
    let remote = root.join("ranger-07");
    std::fs::create_dir_all(&remote).unwrap();
    // Someone else's file in the device folder, and a species list of the same name
    // as the one this ranger will push.
    std::fs::write(remote.join("notes-from-hq.txt"), "keep me").unwrap();
    std::fs::write(remote.join("species.csv"), "elephant\n").unwrap();
    let client = Client::new();
    client.init_share(&root, "ranger-07", &[]);
    let outside = tempfile::tempdir().unwrap();
    let mine = outside.path().join("species.csv");
    std::fs::write(&mine, "lion\n").unwrap();
    let mine_arg = mine.to_str().unwrap();

    // Same name there: refused without a terminal, nothing changed on either side.
    let out = client.run(&["push", mine_arg]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("species.csv already exists on the remote: not overwritten"),
        "{stderr}"
    );
    assert!(
        stderr.contains("--overwrite") && stderr.contains("--keep-both"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read_to_string(remote.join("species.csv")).unwrap(),
        "elephant\n"
    );
    // --keep-both: the new copy under a free name; --move never deletes outside the
    // data folder.
    let out = client.ok(&["push", mine_arg, "--keep-both", "--move"]);
    assert!(out.contains("pushed species.csv as species-2.csv"), "{out}");
    assert!(out.contains("outside the data folder"), "{out}");
    assert!(
        mine.is_file(),
        "a file outside the data folder is never deleted"
    );
    assert_eq!(
        std::fs::read_to_string(remote.join("species-2.csv")).unwrap(),
        "lion\n"
    );
    assert_eq!(
        std::fs::read_to_string(remote.join("species.csv")).unwrap(),
        "elephant\n"
    );
    // --overwrite replaces it; the local copy stays without --move.
    let out = client.ok(&["push", mine_arg, "--overwrite"]);
    assert!(out.contains("the local copy is kept"), "{out}");
    assert_eq!(
        std::fs::read_to_string(remote.join("species.csv")).unwrap(),
        "lion\n"
    );
    assert!(mine.is_file());

    // compare: same size, other content is found by hash.
    std::fs::write(client.path("inbox/keyset.xml"), "<a>1</a>").unwrap();
    std::fs::write(remote.join("keyset.xml"), "<a>2</a>").unwrap();
    std::fs::write(client.path("inbox/same.txt"), "same").unwrap();
    std::fs::write(remote.join("same.txt"), "same").unwrap();
    let out = client.ok(&["compare"]);
    assert!(
        out.contains("inbox/keyset.xml  DIFFERENT content (same size, other SHA-256)"),
        "{out}"
    );
    assert!(
        out.contains("inbox/same.txt  same content (size and SHA-256)"),
        "{out}"
    );
    // fetch does not overwrite inbox/keyset.xml either.
    let out = client.run(&["fetch", "keyset.xml"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        remote.join("keyset.xml").is_file(),
        "left there when refused"
    );
    assert_eq!(
        std::fs::read_to_string(client.path("inbox/keyset.xml")).unwrap(),
        "<a>1</a>"
    );
    client.ok(&["fetch", "keyset.xml", "--keep-both"]);
    assert_eq!(
        std::fs::read_to_string(client.path("inbox/keyset-2.xml")).unwrap(),
        "<a>2</a>"
    );
    // push --move from inside the data folder removes the local file.
    let out = client.ok(&["push", "keyset-2.xml", "--move"]);
    assert!(out.contains("removed here"), "{out}");
    assert!(!client.path("inbox/keyset-2.xml").exists());

    // purge --remote deletes what this client put there, and nothing else.
    client.record(1, "Loxodonta africana");
    client.ok(&["send"]);
    let batch = client.batches_in("sent").remove(0);
    assert!(remote.join(&batch).is_file());
    client.ok(&["sync", "purge", "--remote", "--yes"]);
    for gone in [
        batch.as_str(),
        "species-2.csv",
        "species.csv",
        "keyset-2.xml",
    ] {
        assert!(!remote.join(gone).exists(), "{gone} was this client's");
    }
    for kept in ["notes-from-hq.txt", "same.txt"] {
        assert!(remote.join(kept).is_file(), "{kept} is not this client's");
    }
}
