//! Test harness: a fresh database per test (PostgreSQL or SQLite), the real
//! `ctdata-server` binary as a child process, fixtures, and polling with deadlines
//! instead of sleeps.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sqlx::Connection;

pub mod api;
pub mod batch;
pub mod browser;
pub mod client;
pub mod ctx;
pub mod ftp;
pub mod httpz;
/// The loopback link simulator, shared with the bench (`link/`).
pub use ctdata_link as link;
pub mod netshare;
pub mod openrosa;
pub mod smart;
pub mod tmpfs;
pub mod vsftpd;
pub mod web;

/// Where the test PostgreSQL server is; a database per test is created on it.
pub fn pg_admin_url() -> String {
    std::env::var("CTDATA_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

pub use batch::{write_batch, Batch};

/// A PostgreSQL database of its own, or `None` (skip) when PostgreSQL is unreachable
/// outside CI.
pub async fn pg() -> Option<TestDb> {
    TestDb::new(Backend::Postgres).await
}

/// A loopback port that was free a moment ago, for a peer that cannot bind port 0
/// and report the port itself (vsftpd, chromedriver) or for a port nobody listens on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// A self-signed certificate for 127.0.0.1 and localhost as PEM files in `dir`:
/// (certificate, key).
pub fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let names = vec!["127.0.0.1".to_string(), "localhost".to_string()];
    let certified = rcgen::generate_simple_self_signed(names).expect("a certificate");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).expect("write cert.pem");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write key.pem");
    (cert, key)
}

/// The repository's fixture folder.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database of its own for one test, dropped afterwards.
pub struct TestDb {
    pub url: String,
    pub backend: Backend,
    pg_name: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// A fresh database on `backend`, or `None` when PostgreSQL is not reachable outside
    /// CI. In CI (`CI` set) an unreachable PostgreSQL fails the test: never a silent skip.
    pub async fn new(backend: Backend) -> Option<TestDb> {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = format!("sqlite://{}", dir.path().join("ctdata.db").display());
                Some(TestDb {
                    url,
                    backend,
                    pg_name: None,
                    _dir: Some(dir),
                })
            }
            Backend::Postgres => Self::postgres().await,
        }
    }

    async fn postgres() -> Option<TestDb> {
        let admin = pg_admin_url();
        let mut conn = match sqlx::PgConnection::connect(&admin).await {
            Ok(c) => c,
            Err(e) if std::env::var_os("CI").is_some() => {
                panic!("CI is set but PostgreSQL at {admin} is unreachable: {e}")
            }
            Err(e) => {
                eprintln!(
                    "SKIPPED: PostgreSQL at {admin} is unreachable ({e}); set CTDATA_TEST_PG"
                );
                return None;
            }
        };
        let name = format!("ctdata_test_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create test database");
        let url = match admin.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{name}"),
            None => panic!("CTDATA_TEST_PG must end with /DATABASE"),
        };
        Some(TestDb {
            url,
            backend: Backend::Postgres,
            pg_name: Some(name),
            _dir: None,
        })
    }

    /// Runs a query that returns one integer.
    pub async fn scalar(&self, sql: &str) -> i64 {
        match self.backend {
            Backend::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.url)
                    .await
                    .expect("connect");
                let v: i64 = sqlx::query_scalar(sql).fetch_one(&mut c).await.expect(sql);
                v
            }
            Backend::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.url)
                    .await
                    .expect("connect");
                let v: i64 = sqlx::query_scalar(sql).fetch_one(&mut c).await.expect(sql);
                v
            }
        }
    }

    /// Runs a query that returns rows of text columns.
    pub async fn texts(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        use sqlx::Row;
        fn collect<R: Row>(rows: Vec<R>) -> Vec<Vec<Option<String>>>
        where
            for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
            usize: sqlx::ColumnIndex<R>,
        {
            rows.iter()
                .map(|r| {
                    (0..r.len())
                        .map(|i| r.try_get::<Option<String>, _>(i).expect("text column"))
                        .collect()
                })
                .collect()
        }
        match self.backend {
            Backend::Postgres => {
                let mut c = sqlx::PgConnection::connect(&self.url)
                    .await
                    .expect("connect");
                collect(sqlx::query(sql).fetch_all(&mut c).await.expect(sql))
            }
            Backend::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&self.url)
                    .await
                    .expect("connect");
                collect(sqlx::query(sql).fetch_all(&mut c).await.expect(sql))
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(name) = self.pg_name.take() else {
            return;
        };
        let admin = pg_admin_url();
        // Drop runs inside the test's runtime: use a thread with a runtime of its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&admin).await.ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await
                    .ok()
            })
        })
        .join();
    }
}

/// For each `async fn NAME(db: TestDb)`, declares the tests `NAME::sqlite` and
/// `NAME::postgres`, each calling it with a fresh database of that kind.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn sqlite() {
                    let db = $crate::TestDb::new($crate::Backend::Sqlite).await.expect("sqlite");
                    super::$name(db).await;
                }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() {
                    if let Some(db) = $crate::TestDb::new($crate::Backend::Postgres).await {
                        super::$name(db).await;
                    }
                }
            }
        )+
    };
}

/// Polls `check` until it returns `Some`, failing the test with `what` after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The `ctdata-server` binary of this build profile, built on first use.
pub fn server_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| build_bin("ctdata-server", "ctdata-server"))
        .clone()
}

/// Builds `bin` of `package` in this test's build profile (a test does not depend on
/// the binaries it runs, so cargo has not built them) and returns its path.
pub fn build_bin(package: &str, bin: &str) -> PathBuf {
    // target/<profile>/deps/this-test → target/<profile>/BIN
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf();
    let release = profile_dir.file_name().is_some_and(|n| n == "release");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--quiet", "-p", package, "--bin", bin]);
    if release {
        cmd.arg("--release");
    }
    let status = cmd.status().expect("run cargo build");
    assert!(status.success(), "building {bin} failed");
    profile_dir.join(bin)
}

/// A running `ctdata-server serve`, killed when dropped.
pub struct Server {
    pub child: Child,
    /// Its standard error: the log.
    pub log: PathBuf,
    pub ready: Ready,
}

/// Everything a server under test needs: a drop directory and a database.
pub struct ServerEnv {
    pub dir: tempfile::TempDir,
    pub db_url: String,
    /// More `CTDATA__…` settings for this environment's commands.
    pub extra_env: Vec<(String, String)>,
}

impl ServerEnv {
    pub fn new(db: &TestDb) -> ServerEnv {
        ServerEnv {
            dir: tempfile::tempdir().expect("temp dir"),
            db_url: db.url.clone(),
            extra_env: Vec::new(),
        }
    }

    pub fn drop_dir(&self) -> PathBuf {
        self.dir.path().join("CTData")
    }

    /// `ctdata-server ARGS` with this environment's settings.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(server_bin());
        cmd.args(args)
            .current_dir(self.dir.path())
            .env("CTDATA__DATABASE__URL", &self.db_url)
            .env("CTDATA__INGEST__DROP_DIR", self.drop_dir())
            .env("CTDATA__INGEST__SETTLE_SECS", "0.3")
            .env("CTDATA__INGEST__RESCAN_SECS", "1")
            .env("CTDATA__HTTP__BIND", "127.0.0.1:0")
            .env("CTDATA_LOG", "info,sqlx=warn")
            .envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        cmd
    }

    /// Turns on the embedded FTP server: port 0 on loopback (read the real one with
    /// [`Server::ftp_port`]) and a passive port range that parallel tests, in this
    /// process or another, are unlikely to share (libunftp also retries taken ports).
    pub fn enable_ftp(&mut self) {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let slot =
            (std::process::id().wrapping_mul(7) + NEXT.fetch_add(1, Ordering::Relaxed)) % 400;
        let first = 12_000 + slot * 40;
        self.extra_env.extend([
            ("CTDATA__FTP__ENABLED".to_string(), "true".to_string()),
            ("CTDATA__FTP__BIND".to_string(), "127.0.0.1:0".to_string()),
            (
                "CTDATA__FTP__PASSIVE_PORTS".to_string(),
                format!("{first}-{}", first + 39),
            ),
        ]);
    }

    /// Serves the API over HTTPS with a self-signed certificate made for this
    /// environment; returns the certificate, for clients to trust.
    pub fn enable_https(&mut self) -> PathBuf {
        let (cert, key) = self_signed(self.dir.path());
        self.set("CTDATA__HTTP__TLS_CERT", &cert.display().to_string());
        self.set("CTDATA__HTTP__TLS_KEY", &key.display().to_string());
        cert
    }

    /// Turns on the embedded FTP server requiring TLS, with a self-signed certificate;
    /// returns the certificate.
    pub fn enable_ftps(&mut self) -> PathBuf {
        self.enable_ftp();
        let (cert, key) = self_signed(self.dir.path());
        self.set("CTDATA__FTP__TLS_CERT", &cert.display().to_string());
        self.set("CTDATA__FTP__TLS_KEY", &key.display().to_string());
        self.set("CTDATA__FTP__REQUIRE_TLS", "true");
        cert
    }

    /// One more `CTDATA__…` setting for this environment's commands.
    pub fn set(&mut self, key: &str, value: &str) {
        self.extra_env.push((key.to_string(), value.to_string()));
    }

    /// Registers a device with `ctdata-server device add` and returns its token.
    pub fn device_token(&self, name: &str) -> String {
        let out = self
            .command(&["device", "add", name])
            .output()
            .expect("run device add");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("token")
            .trim()
            .to_string()
    }

    /// Adds administrator `alice` (password "a long enough password", given on
    /// standard input) and returns an API token for her.
    pub fn admin_token(&self) -> String {
        use std::io::Write;
        let mut child = self
            .command(&["admin", "add", "alice"])
            .stdin(Stdio::piped())
            .spawn()
            .expect("run admin add");
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(b"a long enough password\n")
            .expect("write password");
        drop(stdin);
        assert!(child.wait().expect("admin add").success());
        let out = self
            .command(&["admin", "token", "alice"])
            .output()
            .expect("run admin token");
        String::from_utf8(out.stdout)
            .expect("token")
            .trim()
            .to_string()
    }

    /// Starts `serve` and waits, with a deadline, for its ready line (standard output;
    /// the log is standard error). Fails at once with the log if the server exits.
    pub async fn serve(&self) -> Server {
        let name = uuid::Uuid::new_v4().simple().to_string();
        let log = self.dir.path().join(format!("server-{name}.log"));
        let out = self.dir.path().join(format!("server-{name}.out"));
        let child = self
            .command(&["serve"])
            .stdout(std::fs::File::create(&out).expect("stdout file"))
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("start ctdata-server");
        let mut server = Server {
            child,
            log,
            ready: Ready::default(),
        };
        let (child, log) = (&mut server.child, &server.log);
        server.ready = eventually("the server's ready line", Duration::from_secs(60), || {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                panic!("the server exited ({status}):\n{log}");
            }
            let ready = std::fs::read_to_string(&out)
                .ok()
                .and_then(|text| text.lines().find_map(Ready::parse));
            std::future::ready(ready)
        })
        .await;
        server
    }
}

/// Where a started server listens, from the line `serve` prints once it is ready:
/// `ctdata-server: ready http=ADDR [ftp=ADDR]` (`https=` with TLS).
#[derive(Debug, Clone, Default)]
pub struct Ready {
    /// `http://ADDR` or `https://ADDR`.
    pub http_base: String,
    pub ftp: Option<std::net::SocketAddr>,
}

impl Ready {
    fn parse(line: &str) -> Option<Ready> {
        let fields = line.strip_prefix("ctdata-server: ready ")?;
        let mut ready = Ready::default();
        for field in fields.split_whitespace() {
            match field.split_once('=')? {
                ("ftp", addr) => ready.ftp = Some(addr.parse().ok()?),
                (scheme @ ("http" | "https"), addr) => {
                    ready.http_base = format!("{scheme}://{addr}")
                }
                _ => {}
            }
        }
        (!ready.http_base.is_empty()).then_some(ready)
    }
}

impl Server {
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `http://127.0.0.1:PORT`, or `https://…` when it serves TLS (it binds port 0).
    pub fn http_base(&self) -> String {
        self.ready.http_base.clone()
    }

    /// A reqwest client for its API over plain HTTP ([`api::Api::trusting`] for HTTPS).
    pub fn api(&self) -> api::Api {
        api::Api::new(&self.http_base())
    }

    /// The FTP port (it binds port 0).
    pub fn ftp_port(&self) -> u16 {
        self.ready.ftp.expect("the server serves FTP").port()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "kill -TERM failed");
        self.child.wait().expect("wait for server")
    }

    /// SIGKILL, as a crash.
    pub fn crash(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Files a rejected delivery leaves in `rejected/`: the file and its reason.
pub fn rejected_reasons(drop_dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(devices) = std::fs::read_dir(drop_dir.join("rejected")) else {
        return out;
    };
    for dev in devices.flatten() {
        for f in std::fs::read_dir(dev.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = f.file_name().to_string_lossy().into_owned();
            if let Some(base) = name.strip_suffix(".reason.txt") {
                let reason = std::fs::read_to_string(f.path()).unwrap_or_default();
                out.push((base.to_string(), reason));
            }
        }
    }
    out.sort();
    out
}

/// Number of regular files below `dir`.
pub fn count_files(dir: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => count_files(&e.path()),
            Ok(t) if t.is_file() => 1,
            _ => 0,
        })
        .sum()
}
