//! An FTP or FTPS (explicit TLS, rustls) source, in passive mode. Every command is
//! bounded by the source's timeout, and every failure names the step and the cause in
//! the words an administrator looks for: host not found, connection refused, timed
//! out, TLS handshake failed, login incorrect, folder missing, permission denied.

use std::future::Future;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use suppaftp::list::ListParser;
use suppaftp::tokio::{AsyncRustlsConnector, AsyncRustlsFtpStream};
use suppaftp::types::FileType;
use suppaftp::FtpError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::remote::{RemoteFile, StepError};
use crate::config::{Place, SourceSettings};

/// Folders below the source folder are followed this deep at most.
const MAX_DEPTH: usize = 16;
/// A listing larger than this is cut short (and said so): the rest waits for the next pull.
const MAX_ENTRIES: usize = 100_000;

pub struct FtpRemote {
    ftp: AsyncRustlsFtpStream,
    folder: String,
    timeout: Duration,
}

impl FtpRemote {
    pub async fn open(source: &SourceSettings, password: &str) -> Result<FtpRemote, StepError> {
        let Place::Ftp {
            tls,
            host,
            port,
            folder,
        } = source.url.place().clone()
        else {
            return Err(StepError::fatal(
                "read the url",
                "it is not ftp://HOST[:PORT]/FOLDER",
            ));
        };
        let t = source.timeout();
        let stream = connect(&host, port, t).await?;
        let _ = stream.set_nodelay(true);
        let greeting = AsyncRustlsFtpStream::connect_with_stream(stream);
        let mut ftp = within(t, "wait for the server's greeting", greeting, "")
            .await
            .map_err(StepError::into_fatal)?;
        if tls {
            let connector = tls_connector(source)?;
            ftp = match tokio::time::timeout(t, ftp.into_secure(connector, &host)).await {
                Err(_) => return Err(StepError::fatal("TLS handshake", &timed_out(t))),
                Ok(Err(FtpError::SecureError(e))) => {
                    return Err(StepError::fatal(
                        "TLS handshake",
                        &format!("TLS handshake failed: {e}"),
                    ))
                }
                Ok(Err(FtpError::UnexpectedResponse(r))) => {
                    let why = format!(
                        "the server does not offer TLS (AUTH TLS answered {})",
                        reply(&r)
                    );
                    return Err(StepError::fatal("TLS handshake", &why));
                }
                Ok(Err(e)) => return Err(StepError::fatal("TLS handshake", &cause(e))),
                Ok(Ok(ftp)) => ftp,
            };
        }
        // A web host's PASV reply often names an internal address: connect data
        // channels to the address the control connection reached instead.
        ftp.set_passive_nat_workaround(true);
        let user = source.user.as_deref().unwrap_or("anonymous");
        within(
            t,
            &format!("log in as {user}"),
            ftp.login(user, password),
            "",
        )
        .await
        .map_err(|e| {
            if e.cause.starts_with("530") {
                StepError::fatal(&e.step, &format!("login incorrect ({})", e.cause))
            } else {
                e.into_fatal()
            }
        })?;
        within(
            t,
            "switch to binary transfers",
            ftp.transfer_type(FileType::Binary),
            "",
        )
        .await
        .map_err(StepError::into_fatal)?;
        let missing = "the folder is missing or this user may not open it";
        within(
            t,
            &format!("open the folder {folder}"),
            ftp.cwd(&folder),
            missing,
        )
        .await
        .map_err(StepError::into_fatal)?;
        Ok(FtpRemote {
            ftp,
            folder,
            timeout: t,
        })
    }

    fn full(&self, rel: &str) -> String {
        format!("{}/{rel}", self.folder.trim_end_matches('/'))
    }

    /// Every file below the folder, skipping `skip` (a relative folder) and temp names.
    pub async fn list(&mut self, skip: Option<&str>) -> Result<Vec<RemoteFile>, StepError> {
        let mut out = Vec::new();
        let mut pending = vec![(String::new(), 0usize)];
        let mut entries = 0usize;
        while let Some((dir, depth)) = pending.pop() {
            let path = if dir.is_empty() {
                self.folder.clone()
            } else {
                self.full(&dir)
            };
            let lines = within(
                self.timeout,
                &format!("list {path}"),
                self.ftp.list(Some(&path)),
                "permission denied",
            )
            .await;
            let lines = match lines {
                Ok(lines) => lines,
                // One unreadable device folder must not hold up every other one.
                Err(e) if !dir.is_empty() && !e.fatal => {
                    tracing::warn!("skipping a folder: {e}");
                    continue;
                }
                Err(e) => return Err(e.into_fatal()),
            };
            for line in lines {
                entries += 1;
                if entries > MAX_ENTRIES {
                    tracing::warn!(folder = self.folder, "listing cut at {MAX_ENTRIES} entries");
                    break;
                }
                let Ok(entry) =
                    ListParser::parse_posix(&line).or_else(|_| ListParser::parse_dos(&line))
                else {
                    tracing::debug!(line, "unreadable listing line skipped");
                    continue;
                };
                let name = entry.name().to_string();
                if name == "." || name == ".." || !crate::dropdir::is_candidate_name(&name) {
                    continue;
                }
                if crate::sendcreds::is_out_name(&name) {
                    tracing::info!(
                        file = name,
                        "a CyberTracker .OUT file (a password in plain text) is never fetched"
                    );
                    continue;
                }
                let rel = if dir.is_empty() {
                    name.clone()
                } else {
                    format!("{dir}/{name}")
                };
                if entry.is_directory() {
                    if depth < MAX_DEPTH && Some(rel.as_str()) != skip {
                        pending.push((rel, depth + 1));
                    }
                } else if entry.is_file() {
                    let listed: chrono::DateTime<chrono::Utc> = entry.modified().into();
                    out.push(RemoteFile {
                        rel,
                        size: entry.size() as u64,
                        modified: listed.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
                    });
                }
            }
        }
        // The listing's time is only to the minute for recent files: ask for the exact
        // one, which tells a rewritten file from the one handled before.
        for f in &mut out {
            let path = self.full(&f.rel);
            if let Ok(Ok(t)) = tokio::time::timeout(self.timeout, self.ftp.mdtm(&path)).await {
                f.modified = t.format("%Y-%m-%dT%H:%M:%SZ").to_string();
            }
        }
        out.sort_by(|a, b| a.rel.cmp(&b.rel));
        Ok(out)
    }

    /// Downloads one file to `dest` (fsynced); returns the bytes received.
    pub async fn fetch(&mut self, f: &RemoteFile, dest: &Path) -> Result<u64, StepError> {
        let path = self.full(&f.rel);
        let step = format!("download {path}");
        let t = self.timeout;
        let mut stream = within(
            t,
            &step,
            self.ftp.retr_as_stream(&path),
            "permission denied, or the file is gone",
        )
        .await?;
        let local = |e: io::Error| {
            StepError::fatal(&step, &format!("cannot write {}: {e}", dest.display()))
        };
        let mut file = tokio::fs::File::create(dest).await.map_err(local)?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut total = 0u64;
        loop {
            let n = match tokio::time::timeout(t, stream.read(&mut buf)).await {
                Err(_) => {
                    return Err(StepError::fatal(
                        &step,
                        &format!("the transfer stalled: {}", timed_out(t)),
                    ))
                }
                Ok(Err(e)) => return Err(StepError::fatal(&step, &io_cause(&e, t))),
                Ok(Ok(n)) => n,
            };
            if n == 0 {
                break;
            }
            file.write_all(&buf[..n]).await.map_err(local)?;
            total += n as u64;
        }
        within(t, &step, stream.finish(), "").await?;
        file.sync_all().await.map_err(local)?;
        Ok(total)
    }

    pub async fn delete(&mut self, f: &RemoteFile) -> Result<(), StepError> {
        let path = self.full(&f.rel);
        within(
            self.timeout,
            &format!("delete {path}"),
            self.ftp.rm(&path),
            "permission denied",
        )
        .await
    }

    /// Moves a file into `folder` (relative to the source folder unless absolute),
    /// keeping its path below the source folder.
    pub async fn move_to(&mut self, f: &RemoteFile, folder: &str) -> Result<(), StepError> {
        let base = if folder.starts_with('/') {
            folder.trim_end_matches('/').to_string()
        } else {
            self.full(folder.trim_end_matches('/'))
        };
        let to = format!("{base}/{}", f.rel);
        // Create the folders on the way; "already exists" answers are expected.
        let mut dir = String::new();
        for part in to
            .trim_start_matches('/')
            .split('/')
            .collect::<Vec<_>>()
            .split_last()
            .map(|(_, d)| d.to_vec())
            .unwrap_or_default()
        {
            dir = format!("{dir}/{part}");
            let _ = tokio::time::timeout(self.timeout, self.ftp.mkdir(&dir)).await;
        }
        let from = self.full(&f.rel);
        within(
            self.timeout,
            &format!("move {from} to {to}"),
            self.ftp.rename(&from, &to),
            "permission denied",
        )
        .await
    }

    pub async fn close(mut self) {
        let _ = tokio::time::timeout(self.timeout, self.ftp.quit()).await;
    }
}

/// Resolves and connects, naming which of the two failed and why.
async fn connect(host: &str, port: u16, t: Duration) -> Result<TcpStream, StepError> {
    let step = format!("connect to {host}:{port}");
    let addrs: Vec<_> = match tokio::time::timeout(t, tokio::net::lookup_host((host, port))).await {
        Err(_) => {
            return Err(StepError::fatal(
                &step,
                &format!("looking up the host {}", timed_out(t)),
            ))
        }
        Ok(Err(e)) => return Err(StepError::fatal(&step, &format!("host not found ({e})"))),
        Ok(Ok(a)) => a.collect(),
    };
    let mut last = format!("host not found (no address for {host})");
    for addr in addrs {
        match tokio::time::timeout(t, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(e)) => last = io_cause(&e, t),
            Err(_) => last = timed_out(t),
        }
    }
    Err(StepError::fatal(&step, &last))
}

/// The rustls client: the public roots plus the source's `tls_ca_file`.
fn tls_connector(source: &SourceSettings) -> Result<AsyncRustlsConnector, StepError> {
    let config = crate::tls::client_config("tls_ca_file", source.tls_ca_file.as_deref())
        .map_err(|e| StepError::fatal("read tls_ca_file", &format!("{e:#}")))?;
    Ok(AsyncRustlsConnector::from(
        tokio_rustls::TlsConnector::from(Arc::new(config)),
    ))
}

/// Runs one FTP command within the timeout. `on_550` explains a 550 answer at this
/// step (the server's own words follow).
async fn within<T>(
    t: Duration,
    step: &str,
    fut: impl Future<Output = Result<T, FtpError>>,
    on_550: &str,
) -> Result<T, StepError> {
    match tokio::time::timeout(t, fut).await {
        Err(_) => Err(StepError::fatal(step, &timed_out(t))),
        Ok(Ok(v)) => Ok(v),
        // The server answered: the connection is still good for the next file.
        Ok(Err(FtpError::UnexpectedResponse(r))) => {
            let code = r.status.code();
            let why = match code {
                550 | 553 if !on_550.is_empty() => format!("{} ({on_550})", reply(&r)),
                _ => reply(&r),
            };
            Err(StepError::recoverable(step, &why))
        }
        Ok(Err(e)) => Err(StepError::fatal(step, &cause(e))),
    }
}

fn cause(e: FtpError) -> String {
    match e {
        FtpError::ConnectionError(e) => io_cause(&e, Duration::ZERO),
        FtpError::SecureError(e) => format!("TLS handshake failed: {e}"),
        FtpError::UnexpectedResponse(r) => reply(&r),
        other => other.to_string(),
    }
}

/// `550 Failed to change directory.`
fn reply(r: &suppaftp::types::Response) -> String {
    let text = String::from_utf8_lossy(&r.body);
    let text = text.trim();
    let text = text
        .strip_prefix(&r.status.code().to_string())
        .unwrap_or(text)
        .trim_start_matches(['-', ' ']);
    format!("{} {}", r.status.code(), text.trim())
}

fn io_cause(e: &io::Error, t: Duration) -> String {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => {
            "connection refused (nothing listens on that port)".into()
        }
        io::ErrorKind::TimedOut if !t.is_zero() => timed_out(t),
        io::ErrorKind::TimedOut => "timed out".into(),
        io::ErrorKind::ConnectionReset => "the server reset the connection".into(),
        io::ErrorKind::UnexpectedEof => "the server closed the connection".into(),
        _ => e.to_string(),
    }
}

fn timed_out(t: Duration) -> String {
    format!("timed out after {:.0} s", t.as_secs_f64())
}
