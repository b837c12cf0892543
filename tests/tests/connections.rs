//! Idle and slow connections cannot exhaust the server: thousands of silent sockets and
//! hundreds of trickled bodies from other loopback addresses, while a device uploads and the
//! administrator signs in, against the real `ctdata-server serve`.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use ctdata_tests::{both_backends, eventually, write_batch, ServerEnv, TestDb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const PASSWORD: &str = "a long enough password";
const IDLE_SOCKETS: usize = 5_000;
/// Of each kind: sign-in forms, and uploads of one device. More than the old
/// per-route concurrency limit (256).
const SLOW_BODIES: usize = 300;
/// Connections one address may hold in the load test.
const PER_ADDRESS: usize = 64;

/// The sockets this test holds need more descriptors than a default soft limit.
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    if soft < hard {
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).expect("setrlimit");
    }
    let (soft, _) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    assert!(
        soft as usize > IDLE_SOCKETS + 2 * SLOW_BODIES + 200,
        "this test needs an open-files limit above {}",
        IDLE_SOCKETS + 2 * SLOW_BODIES + 200
    );
}

fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The server's open sockets: connections and listeners (and PostgreSQL connections),
/// not the SQLite files a busier pool keeps open.
fn open_sockets(pid: i32) -> usize {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return 0;
    };
    dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count()
}

/// A TCP connection to `to` from the loopback address `from` (bound before connecting).
async fn connect_from(from: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().expect("address"))?;
    tokio::time::timeout(Duration::from_secs(5), socket.connect(to))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// Opens `n` connections from `from`, a few hundred handshakes at a time, within
/// `limit` overall; those that fail are not retried.
async fn open_many(
    from: &'static str,
    to: SocketAddr,
    n: usize,
    limit: Duration,
) -> Vec<TcpStream> {
    let deadline = Instant::now() + limit;
    let mut open = Vec::with_capacity(n);
    let mut tried = 0;
    while tried < n && Instant::now() < deadline {
        let batch = (n - tried).min(250);
        tried += batch;
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..batch {
            set.spawn(connect_from(from, to));
        }
        while let Some(done) = set.join_next().await {
            if let Ok(Ok(s)) = done {
                open.push(s);
            }
        }
    }
    open
}

/// curl with a hard deadline: the status, or 0 when it could not finish.
fn curl_status(args: &[&str]) -> u16 {
    let out = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "30",
        ])
        .args(args)
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

fn sign_in(base: &str) -> u16 {
    ctdata_tests::web::sign_in(base, "alice", PASSWORD).0
}

fn upload(base: &str, token: &str, file: &std::path::Path) -> u16 {
    curl_status(&[
        "-H",
        &format!("Authorization: Bearer {token}"),
        "--data-binary",
        &format!("@{}", file.display()),
        &format!("{base}/api/v1/batches"),
    ])
}

fn addr_of(base: &str) -> SocketAddr {
    base.trim_start_matches("http://").parse().expect("address")
}

async fn idle_and_slow_clients_leave_room_for_devices_and_the_administrator(db: TestDb) {
    raise_open_files_limit();
    let mut env = ServerEnv::new(&db);
    // A tight cap per address, so that the descriptors it holds are easy to bound.
    env.extra_env.push((
        "CTDATA__HTTP__MAX_CONNECTIONS_PER_IP".to_string(),
        PER_ADDRESS.to_string(),
    ));
    env.admin_token();
    let field = env.device_token("field-1");
    let slowpoke = env.device_token("slowpoke");
    let server = env.serve().await;
    let base = server.http_base();
    let to = addr_of(&base);
    let pid = server.pid();

    // Warm up (sessions, the database pool), then count the descriptors at rest.
    let started = Instant::now();
    assert_eq!(sign_in(&base), 303);
    let at_rest = started.elapsed();
    println!("sign-in at rest: {at_rest:?}");
    let batch = env.dir.path().join("first.ndjson");
    write_batch(&batch, "field-1", 3);
    assert_eq!(upload(&base, &field, &batch), 201);
    let baseline = open_fds(pid);
    let baseline_sockets = open_sockets(pid);

    // The slow ones first, so that they hold their slots before anything else comes.
    let slow_forms = open_many("127.0.0.3", to, SLOW_BODIES, Duration::from_secs(30)).await;
    let slow_uploads = open_many("127.0.0.4", to, SLOW_BODIES, Duration::from_secs(30)).await;
    assert!(
        slow_forms.len() >= SLOW_BODIES / 2 && slow_uploads.len() >= SLOW_BODIES / 2,
        "connected only {} + {} slow sockets",
        slow_forms.len(),
        slow_uploads.len()
    );
    // Sign-in forms from 127.0.0.3, uploads of the device "slowpoke" from 127.0.0.4:
    // each sends part of its body, then one byte a second.
    let mut slow = Vec::new();
    let forms = slow_forms.into_iter().map(|s| (true, s));
    for (form, mut s) in forms.chain(slow_uploads.into_iter().map(|s| (false, s))) {
        let head = if form {
            "POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: 1000\r\n\r\nname=alice&pass"
                .to_string()
        } else {
            format!(
                "POST /api/v1/batches HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {slowpoke}\r\n\
                 Content-Length: 100000\r\n\r\n{{\"batch_id\":"
            )
        };
        let _ = s.write_all(head.as_bytes()).await;
        slow.push(s);
    }
    let trickle = tokio::spawn(async move {
        for _ in 0..120 {
            tokio::time::sleep(Duration::from_secs(1)).await;
            for s in slow.iter_mut() {
                let _ = tokio::time::timeout(Duration::from_millis(5), s.write_all(b"x")).await;
            }
        }
        slow
    });

    let idle = open_many("127.0.0.2", to, IDLE_SOCKETS, Duration::from_secs(90)).await;
    // Under that load, from 127.0.0.1: the administrator signs in, a device uploads.
    let started = Instant::now();
    let signed_in = tokio::task::spawn_blocking({
        let base = base.clone();
        move || sign_in(&base)
    })
    .await
    .unwrap();
    let sign_in_took = started.elapsed();
    let second = env.dir.path().join("second.ndjson");
    write_batch(&second, "field-1", 3);
    let started = Instant::now();
    let uploaded = tokio::task::spawn_blocking({
        let (base, field, second) = (base.clone(), field.clone(), second.clone());
        move || upload(&base, &field, &second)
    })
    .await
    .unwrap();
    let upload_took = started.elapsed();
    let under_load = open_fds(pid);
    println!(
        "under load: {} idle + {} slow sockets held by the test, {under_load} descriptors in the \
         server (baseline {baseline}); sign-in {sign_in_took:?}, upload {upload_took:?}",
        idle.len(),
        2 * SLOW_BODIES
    );
    assert_eq!(
        signed_in, 303,
        "the administrator could not sign in under load"
    );
    assert_eq!(uploaded, 201, "the device could not upload under load");
    // Relative to the sign-in at rest: the password check's cost depends on the build.
    let within = at_rest * 2 + Duration::from_secs(5);
    assert!(
        sign_in_took < within && upload_took < within,
        "sign-in took {sign_in_took:?}, upload {upload_took:?} (at rest {at_rest:?})"
    );
    assert!(
        under_load < baseline + 3 * 2 * PER_ADDRESS + 100,
        "{under_load} descriptors under load (baseline {baseline}): the caps did not hold"
    );

    // Thousands of refusals make a few log lines, not thousands.
    let log = server.log_text();
    let reports = log
        .matches("connections refused since the last report")
        .count();
    assert!(
        (1..=5).contains(&reports),
        "{reports} refusal reports in the log"
    );

    trickle.abort();
    drop(idle);
    // The server lets go of every connection: back to the sockets it had at rest
    // (the database pool may have grown under load: up to 8 more).
    eventually(
        "the server's sockets back to the baseline",
        Duration::from_secs(60),
        || async { (open_sockets(pid) <= baseline_sockets + 8).then_some(()) },
    )
    .await;
    println!(
        "after closing: {} descriptors, {} sockets (at rest {baseline}, {baseline_sockets})",
        open_fds(pid),
        open_sockets(pid)
    );
    assert_eq!(sign_in(&base), 303);
}

/// Reads until the server closes the connection; the time that took.
async fn closed_within(mut s: TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + limit).into(), s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

async fn silent_and_idle_connections_are_closed(db: TestDb) {
    let mut env = ServerEnv::new(&db);
    env.enable_ftp();
    env.extra_env.extend([
        (
            "CTDATA__HTTP__IDLE_TIMEOUT_SECS".to_string(),
            "2".to_string(),
        ),
        (
            "CTDATA__FTP__LOGIN_TIMEOUT_SECS".to_string(),
            "2".to_string(),
        ),
    ]);
    let server = env.serve().await;
    let to = addr_of(&server.http_base());
    let ftp: SocketAddr = format!("127.0.0.1:{}", server.ftp_port()).parse().unwrap();

    // Silent after connecting.
    let silent = TcpStream::connect(to).await.unwrap();
    // HTTP/1.1 keep-alive, idle after one request.
    let mut kept = TcpStream::connect(to).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 512];
    let n = kept.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    // HTTP/2 (prior knowledge): the preface and an empty SETTINGS frame, then nothing.
    let mut h2 = TcpStream::connect(to).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    // FTP: the greeting, then no command (the idle timeout stays at its 600 s: the
    // login timeout must close it).
    let ftp_silent = TcpStream::connect(ftp).await.unwrap();

    let limit = Duration::from_secs(20);
    for (what, s) in [
        ("a silent HTTP connection", silent),
        ("an idle HTTP/1.1 keep-alive connection", kept),
        ("an idle HTTP/2 connection", h2),
        ("a silent FTP control connection", ftp_silent),
    ] {
        let took = closed_within(s, limit).await;
        assert!(took.is_some(), "{what} was still open after {limit:?}");
        println!("{what} closed after {:?}", took.unwrap());
    }
}

both_backends!(
    idle_and_slow_clients_leave_room_for_devices_and_the_administrator,
    silent_and_idle_connections_are_closed
);
