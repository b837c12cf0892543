//! The field client sending over FTP and FTPS: to Debian's vsftpd (a plain FTP site as
//! CyberTracker devices use, which the server then pulls from) and to the server's own
//! embedded FTP server; and its connection test against both.

use ctdata_tests::client::Client;
use ctdata_tests::ftp::{stored, wait_for_batches};
use ctdata_tests::vsftpd::Vsftpd;
use ctdata_tests::{both_backends, free_port, Backend, ServerEnv, TestDb};

/// `ctdata init` for FTP(S) at `url` as `user` with `secret`.
fn init_ftp(client: &Client, url: &str, user: &str, secret: &str, extra: &[&str]) {
    let protocol = url.split("://").next().unwrap();
    let mut args = vec![
        "init",
        "--protocol",
        protocol,
        "--url",
        url,
        "--device",
        "ranger-07",
        "--user",
        user,
        "--token",
        secret,
    ];
    args.extend_from_slice(extra);
    client.ok(&args);
}

/// `ctdata test`: its exit code and standard output.
fn connection_test(client: &Client) -> (Option<i32>, String) {
    let run = || {
        let out = client.run(&["test"]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    // libunftp 0.24 may read a client's TLS hello as an FTP command (its AUTH TLS race,
    // about one login in six under load): the handshake then fails. Run again, at most
    // twice, when the TLS step failed; a fault of ours (a wrong certificate, say) fails
    // every attempt the same way.
    let mut got = run();
    for _ in 0..2 {
        if !got.1.contains("✗ TLS") {
            break;
        }
        eprintln!("libunftp's AUTH TLS race, trying again: {}", got.1);
        got = run();
    }
    got
}

/// `ctdata test` passes every step of a plain FTP connection, and batches go to `folder`.
fn every_step_passes(client: &Client, folder: &str) {
    let (code, test) = connection_test(client);
    assert_eq!(code, Some(0), "{test}");
    let found = format!("✓ find the CTData folder: batches go to {folder}\n");
    for step in [
        "✓ connect",
        "✓ FTP greeting",
        "✓ log in",
        &found,
        "✓ write and delete a probe file",
    ] {
        assert!(test.contains(step), "{step}:\n{test}");
    }
}

/// The server's configuration: one `[[sources]]` table pulling vsftpd's `CTData` and
/// deleting what it ingested, the password in a file beside it.
fn pull_from(env: &ServerEnv, site: &Vsftpd) {
    let password = env.dir.path().join("site.pass");
    std::fs::write(&password, format!("{}\n", site.password)).unwrap();
    std::fs::write(
        env.dir.path().join("ctdata.toml"),
        format!(
            "[[sources]]\nname = \"field-ftp\"\nurl = \"{}\"\nuser = \"{}\"\n\
             password_file = \"{}\"\nafter_download = \"delete\"\ntimeout_secs = 20\n",
            site.url("CTData"),
            site.user,
            password.display()
        ),
    )
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_to_vsftpd_then_the_server_pulls_the_batches_in() {
    let (Some(db), Some(site)) = (TestDb::new(Backend::Postgres).await, Vsftpd::start()) else {
        return;
    };
    let client = Client::new();
    init_ftp(&client, &site.url(""), &site.user, &site.password, &[]);
    every_step_passes(&client, "/CTData");
    assert!(site.files().is_empty(), "the probe file was deleted");

    client.record(3, "Loxodonta africana");
    client.ok(&["seal"]);
    client.record(1, "Syncerus caffer");
    let out = client.ok(&["send"]);
    assert!(out.contains("sent 2 batches (4 sightings"), "{out}");
    let sent = client.batches_in("sent");
    assert_eq!(site.files(), sent, "renamed into place, no .part left");
    for name in &sent {
        let there = std::fs::read(site.ctdata().join(name)).unwrap();
        let here = std::fs::read(client.path("sent").join(name)).unwrap();
        assert_eq!(there, here, "{name} arrived whole");
    }

    // Assisted sync with the site: a reference file comes down, the list says so.
    site.put("reference.csv", b"species\nLeo\n");
    let out = client.ok(&["compare"]);
    assert!(out.contains("only there (3):"), "{out}");
    assert!(out.contains("  reference.csv  12 bytes"), "{out}");
    client.ok(&["fetch", "reference.csv"]);
    assert_eq!(
        std::fs::read_to_string(client.path("inbox/reference.csv")).unwrap(),
        "species\nLeo\n"
    );
    assert!(!site.ctdata().join("reference.csv").exists());
    // push copies (the local file stays); FTP compares by size and time, and says so.
    client.ok(&["push", "reference.csv"]);
    assert!(site.ctdata().join("reference.csv").exists());
    assert!(client.path("inbox/reference.csv").exists());
    let out = client.ok(&["compare"]);
    assert!(
        out.contains("inbox/reference.csv  same size; modified"),
        "{out}"
    );
    assert!(out.contains("compared by size and time"), "{out}");
    // Never overwritten without being told; --move removes it here afterwards.
    let again = client.run(&["push", "reference.csv"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists on the remote"));
    let out = client.ok(&["push", "reference.csv", "--overwrite", "--move"]);
    assert!(out.contains("removed here"), "{out}");
    assert!(!client.path("inbox/reference.csv").exists());
    std::fs::remove_file(site.ctdata().join("reference.csv")).unwrap();

    // The server pulls what the client left on the site: the same batches, by name,
    // came by the 'pull' channel, and the site is emptied.
    let env = ServerEnv::new(&db);
    pull_from(&env, &site);
    let out = env.command(&["download"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = stored(&db).await;
    let mut names: Vec<String> = rows.iter().map(|r| r.2.clone()).collect();
    names.sort();
    assert_eq!(names, sent);
    assert!(
        rows.iter().all(|r| r.0 == "ranger-07" && r.1 == "pull"),
        "{rows:?}"
    );
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, 4);
    assert!(site.files().is_empty(), "{:?}", site.files());

    // A password the site refuses, and a port nobody listens on: the cause, in words.
    init_ftp(&client, &site.url(""), &site.user, "wrong", &[]);
    let (code, text) = connection_test(&client);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains(&format!(
            "✗ log in: the FTP server refused user \"{}\"",
            site.user
        )),
        "{text}"
    );
    assert!(text.contains("530"), "{text}");
    let closed = format!("ftp://127.0.0.1:{}/", free_port());
    init_ftp(&client, &closed, &site.user, &site.password, &[]);
    let (code, text) = connection_test(&client);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("✗ connect: "), "{text}");
    assert!(text.contains("refused the connection"), "{text}");
    client.record(1, "Panthera leo");
    let out = client.run(&["send", "--retries", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(client.batches_in("outbox").len(), 1, "kept for later");

    // A folder that is not there.
    init_ftp(
        &client,
        &site.url("missing"),
        &site.user,
        &site.password,
        &[],
    );
    let (code, text) = connection_test(&client);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("✗ find the CTData folder: folder /missing is not there"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_over_ftps_to_vsftpd_trusting_its_certificate() {
    let Some(site) = Vsftpd::start_tls() else {
        return;
    };
    let cert = site.cert.clone().expect("FTPS site has a certificate");
    let client = Client::new();
    let url = site.url("");
    init_ftp(&client, &url, &site.user, &site.password, &[]);
    let (code, text) = connection_test(&client);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("✗ TLS (AUTH TLS)"), "{text}");
    assert!(text.contains("--ca-file"), "{text}");

    init_ftp(
        &client,
        &url,
        &site.user,
        &site.password,
        &["--ca-file", cert.to_str().unwrap()],
    );
    let (code, test) = connection_test(&client);
    assert_eq!(code, Some(0), "{test}");
    assert!(test.contains("✓ TLS (AUTH TLS)"), "{test}");
    assert!(test.contains("✓ write and delete a probe file"), "{test}");
    client.record(2, "Loxodonta africana");
    let out = client.ok(&["send"]);
    assert!(out.contains("sent 1 batch (2 sightings"), "{out}");
    assert_eq!(site.files(), client.batches_in("sent"));
}

both_backends!(sends_to_the_servers_own_ftp_server);

async fn sends_to_the_servers_own_ftp_server(db: TestDb) {
    let mut env = ServerEnv::new(&db);
    env.enable_ftp();
    let token = env.device_token("ranger-07");
    let server = env.serve().await;
    let url = format!("ftp://127.0.0.1:{}/", server.ftp_port());
    let client = Client::new();
    init_ftp(&client, &url, "ranger-07", &token, &[]);
    // The device's own folder on the server is its `/`.
    every_step_passes(&client, "/");

    client.record(2, "Loxodonta africana");
    client.ok(&["seal"]);
    client.record(3, "Syncerus caffer");
    let out = client.ok(&["send"]);
    assert!(out.contains("sent 2 batches (5 sightings"), "{out}");
    let sent = client.batches_in("sent");
    let rows = wait_for_batches(&db, 2).await;
    let mut got: Vec<(String, String, String)> = rows.clone();
    got.sort();
    let expected: Vec<(String, String, String)> = sent
        .iter()
        .map(|n| ("ranger-07".to_string(), "ftp".to_string(), n.clone()))
        .collect();
    assert_eq!(got, expected);
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, 5);
    // Nothing is sent twice.
    let out = client.ok(&["send"]);
    assert!(out.contains("sent 0 batches"), "{out}");
    assert_eq!(stored(&db).await.len(), 2);

    // A token the server does not know is refused at log in.
    init_ftp(&client, &url, "ranger-07", "not-the-token", &[]);
    let (code, text) = connection_test(&client);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("✗ log in: the FTP server refused user \"ranger-07\""),
        "{text}"
    );
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_over_ftps_to_the_servers_own_ftp_server() {
    let Some(db) = TestDb::new(Backend::Postgres).await else {
        return;
    };
    let mut env = ServerEnv::new(&db);
    let cert = env.enable_ftps();
    let token = env.device_token("ranger-07");
    let server = env.serve().await;
    let port = server.ftp_port();
    let client = Client::new();

    // Plain FTP is refused by a server that requires TLS: the test says so.
    init_ftp(
        &client,
        &format!("ftp://127.0.0.1:{port}/"),
        "ranger-07",
        &token,
        &[],
    );
    let (code, text) = connection_test(&client);
    assert_eq!(code, Some(1), "{text}");

    init_ftp(
        &client,
        &format!("ftps://127.0.0.1:{port}/"),
        "ranger-07",
        &token,
        &["--ca-file", cert.to_str().unwrap()],
    );
    let (code, test) = connection_test(&client);
    assert_eq!(code, Some(0), "{test}");
    assert!(test.contains("✓ TLS (AUTH TLS)"), "{test}");
    client.record(4, "Panthera leo");
    let out = client.ok(&["send"]);
    assert!(out.contains("sent 1 batch (4 sightings"), "{out}");
    let rows = wait_for_batches(&db, 1).await;
    assert_eq!(rows[0].0, "ranger-07");
    assert_eq!(rows[0].1, "ftp");
    assert_eq!(db.scalar("SELECT count(*) FROM sightings").await, 4);
    drop(server);
}
