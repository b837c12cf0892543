//! The field client `ctdata` as a child process, with a home folder of its own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use crate::{eventually, Server, ServerEnv};

/// The `ctdata` binary of this build profile, built on first use.
pub fn client_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| crate::build_bin("ctdata-client", "ctdata"))
        .clone()
}

/// A client installation: its home folder (`--home`).
pub struct Client {
    pub home: tempfile::TempDir,
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

impl Client {
    pub fn new() -> Client {
        Client {
            home: tempfile::tempdir().expect("temp dir"),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.home.path().join(rel)
    }

    /// `ctdata --home HOME ARGS`, no terminal, no inherited CTDATA_HOME.
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(client_bin());
        cmd.arg("--home")
            .arg(self.home.path())
            .args(args)
            .env_remove("CTDATA_HOME")
            .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run ctdata")
    }

    /// Runs and requires success; returns standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "ctdata {args:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// `init` for HTTP(S) to `base` as `device` with `token`.
    pub fn init_https(&self, base: &str, device: &str, token: &str) {
        self.ok(&[
            "init",
            "--protocol",
            "https",
            "--url",
            base,
            "--device",
            device,
            "--token",
            token,
        ]);
    }

    /// A new client that sends to `server` over HTTP(S) as `device`, which is
    /// registered in `env` now; with the device's token.
    pub fn sending_to(env: &ServerEnv, server: &Server, device: &str) -> (Client, String) {
        let token = env.device_token(device);
        let client = Client::new();
        client.init_https(&server.http_base(), device, &token);
        (client, token)
    }

    /// `ctdata init` for a share (a mounted folder) at `path` as `device`, with more
    /// options in `extra`.
    pub fn init_share(&self, path: &Path, device: &str, extra: &[&str]) {
        let path = path.to_str().expect("a UTF-8 path");
        let mut args = vec![
            "init",
            "--protocol",
            "share",
            "--url",
            path,
            "--device",
            device,
        ];
        args.extend_from_slice(extra);
        self.ok(&args);
    }

    /// Records `n` sightings of `species`.
    pub fn record(&self, n: usize, species: &str) {
        for i in 0..n {
            let lat = format!("{}", -24.0 - i as f64 / 1000.0);
            self.ok(&[
                "record",
                "--species",
                species,
                "--lat",
                &lat,
                "--lon",
                "31.5",
                "--count",
                "1",
            ]);
        }
    }

    /// Files (not receipts or reasons) in a folder of the home.
    pub fn batches_in(&self, dir: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path(dir))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".ndjson") && !n.starts_with('.'))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.path("ctdata.log")).unwrap_or_default()
    }
}

/// A long-running `ctdata` (autosend, dock --watch), stopped with SIGTERM.
pub struct Running {
    pub child: Child,
    /// Standard output and error, together.
    pub output: PathBuf,
}

impl Running {
    pub fn start(client: &Client, args: &[&str]) -> Running {
        let output = client
            .home
            .path()
            .with_extension(format!("{}.out", uuid::Uuid::new_v4().simple()));
        let file = std::fs::File::create(&output).expect("output file");
        let child = client
            .command(args)
            .stdout(file.try_clone().expect("output file"))
            .stderr(file)
            .spawn()
            .expect("start ctdata");
        Running { child, output }
    }

    pub fn output_text(&self) -> String {
        std::fs::read_to_string(&self.output).unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn child_running(&mut self) -> bool {
        self.child.try_wait().expect("wait").is_none()
    }

    /// SIGTERM, then the exit status and the output (bounded wait).
    pub async fn terminate(mut self) -> (ExitStatus, String) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill")
            .success());
        let child = &mut self.child;
        let status = eventually("ctdata to stop on SIGTERM", Duration::from_secs(30), || {
            let done = child.try_wait().expect("wait");
            async move { done }
        })
        .await;
        (status, self.output_text())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.output);
    }
}

/// An NDJSON import of `rows` sightings of ranger-07 in `dir`: its path and size.
pub fn import_file(dir: &Path, rows: usize) -> (PathBuf, u64) {
    let path = dir.join(format!("patrol-{rows}.ndjson"));
    crate::Batch::new("ranger-07", rows).write(&path);
    let len = std::fs::metadata(&path).unwrap().len();
    (path, len)
}

/// The bytes on the wire a `send` summary reports.
pub fn wire_bytes(summary: &str) -> u64 {
    let before = summary
        .split(" bytes on the wire")
        .next()
        .unwrap_or_else(|| panic!("no wire bytes in {summary}"));
    before.rsplit(' ').next().unwrap().parse().unwrap()
}
