//! FTP and FTPS (explicit, AUTH TLS; rustls): upload to `NAME.part`, check the size
//! the server reports, rename to `NAME`. FTP servers answer "226 transfer complete"
//! even for a client that died mid-upload, so only a renamed file counts as sent.

use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::ProgressBar;
use reqwest::Url;
use suppaftp::types::FileType;
use suppaftp::{FtpError, FtpStream, ImplFtpStream, RustlsConnector, RustlsFtpStream, TlsStream};
use tokio_rustls::rustls::ClientConfig;

use crate::config::{Config, Endpoint, Protocol};
use crate::send::{Outcome, Proof};

const TIMEOUT: Duration = Duration::from_secs(30);
/// A data connection that moves no byte for this long is given up (a silent link).
const STALL: Duration = crate::resume::STALL;
/// Connections in a row that gain nothing before a batch is left for a later try.
const FRUITLESS_TRIES: u32 = 4;
/// Pieces per `STOR` (at the offset, `REST`): they grow while they go through quickly
/// and shrink after a cut, so a piece fits the link's few seconds.
const FIRST_PIECE: u64 = 64 * 1024;
const MIN_PIECE: u64 = 16 * 1024;
const MAX_PIECE: u64 = 1024 * 1024;

/// What went wrong talking to an FTP server, by what the caller can do about it; each
/// carries the explanation for the user.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The upload settings cannot work (not a URL, unreadable token or `ca_file`):
    /// fix the configuration.
    #[error("{0}")]
    Settings(String),
    /// No such host, nothing listening, no answer, no FTP greeting, or the connection
    /// broke: worth trying again later.
    #[error("{0}")]
    Connection(String),
    /// The secure connection (AUTH TLS) failed: usually a certificate to trust.
    #[error("{0}")]
    Tls(String),
    /// The server refused the user or password: no other file will go either.
    #[error("{0}")]
    Login(String),
    /// The server refused a command on a file or folder (missing folder, no permission,
    /// disk full).
    #[error("{0}")]
    Refused(String),
}

impl Error {
    /// From a failed FTP command: an answer from the server is a refusal, anything else
    /// a broken connection. `what` puts the explanation in context.
    fn command(e: FtpError, what: impl FnOnce(String) -> String) -> Error {
        let refused = matches!(e, FtpError::UnexpectedResponse(_));
        let text = what(explain(e));
        if refused {
            Error::Refused(text)
        } else {
            Error::Connection(text)
        }
    }
}

/// A logged-in session, in the folder batches go to.
pub enum Session {
    Plain(FtpStream),
    Tls(Box<RustlsFtpStream>),
}

/// Where and as whom: parsed from the upload settings.
pub struct Target {
    pub host: String,
    pub port: u16,
    pub path: String,
    pub secure: bool,
    pub user: String,
    pub password: String,
}

impl Target {
    pub fn new(config: &Config) -> Result<Target, Error> {
        let up = &config.upload;
        let url = Url::parse(&up.url)
            .map_err(|e| Error::Settings(format!("{:?} is not a URL: {e}", up.url)))?;
        let password = up
            .token()
            .map_err(|e| Error::Settings(format!("{e:#}")))?
            .unwrap_or_default();
        Ok(Target {
            host: url.host_str().unwrap_or_default().to_string(),
            port: url.port().unwrap_or(21),
            path: url.path().to_string(),
            secure: up.protocol == Protocol::Ftps,
            user: up.user.clone().unwrap_or_else(|| config.device.clone()),
            password,
        })
    }

    pub fn addrs(&self) -> Result<Vec<SocketAddr>, Error> {
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map(Iterator::collect)
            .map_err(|e| {
                Error::Connection(format!(
                    "cannot find host {:?} (is the name right, is there a network?): {e}",
                    self.host
                ))
            })
    }
}

/// rustls (ring) with the public roots and the endpoint's own `ca_file` (pinned, see
/// [`crate::pinned`]); also used by the HTTPS connection test.
pub fn tls_config(up: &Endpoint) -> Result<Arc<ClientConfig>, Error> {
    crate::pinned::client_config(up)
        .map(Arc::new)
        .map_err(Error::Settings)
}

/// The TCP connection (the first step of `ctdata test`).
pub fn connect(t: &Target, addr: SocketAddr) -> Result<TcpStream, Error> {
    let tcp = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| {
        Error::Connection(match e.kind() {
            std::io::ErrorKind::ConnectionRefused => format!(
                "{addr} refused the connection: nothing is listening on port {} \
             (is the FTP server running, is the port right?)",
                t.port
            ),
            std::io::ErrorKind::TimedOut => format!("{addr} did not answer within {TIMEOUT:?}"),
            _ => format!("{addr}: {e}"),
        })
    })?;
    let _ = tcp.set_read_timeout(Some(TIMEOUT));
    let _ = tcp.set_write_timeout(Some(TIMEOUT));
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// The server's greeting, then for FTPS the switch to TLS (AUTH TLS) before any
/// password is sent.
pub fn greet(t: &Target, up: &Endpoint, tcp: TcpStream) -> Result<Session, Error> {
    let not_ftp = |e| Error::Connection(format!("no FTP server greeting: {}", explain(e)));
    if !t.secure {
        return FtpStream::connect_with_stream(tcp)
            .map(|s| Session::Plain(s.passive_stream_builder(data_connection)))
            .map_err(not_ftp);
    }
    let connector = RustlsConnector::from(tls_config(up)?);
    RustlsFtpStream::connect_with_stream(tcp)
        .map_err(not_ftp)?
        .passive_stream_builder(data_connection)
        .into_secure(connector, &t.host)
        .map(|s| Session::Tls(Box::new(s)))
        .map_err(|e| {
            Error::Tls(format!(
                "the secure connection (AUTH TLS) failed: {}",
                crate::pinned::explain(&explain(e))
            ))
        })
}

/// A passive data connection that gives up on a silent link within [`STALL`] instead of
/// waiting for the system's TCP timeouts (minutes).
fn data_connection(addr: SocketAddr) -> Result<TcpStream, FtpError> {
    let tcp = TcpStream::connect_timeout(&addr, STALL).map_err(FtpError::ConnectionError)?;
    let _ = tcp.set_read_timeout(Some(STALL));
    let _ = tcp.set_write_timeout(Some(STALL));
    Ok(tcp)
}

/// Logs in and switches to binary transfers.
pub fn login(t: &Target, session: &mut Session) -> Result<String, Error> {
    fn on<T: TlsStream>(t: &Target, s: &mut ImplFtpStream<T>) -> Result<String, Error> {
        s.login(t.user.as_str(), t.password.as_str()).map_err(|e| {
            if !matches!(e, FtpError::UnexpectedResponse(_)) {
                return Error::Connection(format!("logging in failed: {}", explain(e)));
            }
            let said = explain(e);
            // The CTData server says so in a `530-Locked out for N more minutes…` line
            // (plain FTP only; over FTPS it cannot add that line).
            if said.to_ascii_lowercase().contains("locked out") {
                return Error::Login(format!(
                    "the FTP server has locked out user {:?} at this address after repeated \
                     failed logins; it refuses even the right token until then: {said}",
                    t.user
                ));
            }
            Error::Login(format!(
                "the FTP server refused user {:?}: {} (wrong user or token? After repeated \
                 failed logins from this address the server also refuses the right token for \
                 a while (ftp.lockout_secs): wait, then try again)",
                t.user, said
            ))
        })?;
        s.transfer_type(FileType::Binary)
            .map_err(|e| Error::command(e, |why| format!("binary mode: {why}")))?;
        Ok(format!("logged in as {}", t.user))
    }
    match session {
        Session::Plain(s) => on(t, s),
        Session::Tls(s) => on(t, s),
    }
}

/// Enters the URL's folder, and `CTData/` inside it when there is one; returns it.
pub fn enter_folder(t: &Target, session: &mut Session) -> Result<String, Error> {
    fn on<T: TlsStream>(t: &Target, s: &mut ImplFtpStream<T>) -> Result<String, Error> {
        if !t.path.is_empty() && t.path != "/" {
            s.cwd(&t.path).map_err(|e| {
                Error::command(e, |why| format!("folder {} is not there: {why}", t.path))
            })?;
        }
        let names = s.nlst(None).map_err(|e| Error::command(e, |why| why))?;
        if names.iter().any(|n| n.trim_end_matches('/') == "CTData") {
            s.cwd("CTData").map_err(|e| Error::command(e, |why| why))?;
        }
        s.pwd().map_err(|e| Error::command(e, |why| why))
    }
    match session {
        Session::Plain(s) => on(t, s),
        Session::Tls(s) => on(t, s),
    }
}

/// Opens a logged-in session in the batch folder.
pub fn open(config: &Config) -> Result<Session, Error> {
    let t = Target::new(config)?;
    let addr = *t
        .addrs()?
        .first()
        .ok_or_else(|| Error::Connection("the host has no address".into()))?;
    let tcp = connect(&t, addr)?;
    let mut session = greet(&t, &config.upload, tcp)?;
    login(&t, &mut session)?;
    enter_folder(&t, &mut session)?;
    Ok(session)
}

/// Uploads one file on an open session: `NAME.part` from where the server's copy of it
/// ends (a copy left by a cut is resumed with `REST` + `STOR`), size check, rename.
pub fn put(session: &mut Session, path: &Path, name: &str) -> Outcome {
    let (mut sent, mut piece) = (Sent::default(), MAX_PIECE);
    match attempt(
        session,
        path,
        name,
        &ProgressBar::hidden(),
        &mut sent,
        &mut piece,
        false,
    ) {
        Attempt::Done(outcome) => outcome,
        Attempt::Lost { why, .. } => Outcome::Retry(why),
    }
}

/// Makes `relay/HANDHELD/` on the server (send on sync: a batch relayed for the
/// handheld goes there, and the server takes it as the handheld's when this station may
/// relay for it); returns the remote name for `name` in it.
pub fn relay_name(session: &mut Session, handheld: &str, name: &str) -> String {
    let folder = format!("{}/{handheld}", crate::share::RELAY_FOLDER);
    match session {
        Session::Plain(s) => {
            let _ = s.mkdir(crate::share::RELAY_FOLDER);
            let _ = s.mkdir(&folder);
        }
        Session::Tls(s) => {
            let _ = s.mkdir(crate::share::RELAY_FOLDER);
            let _ = s.mkdir(&folder);
        }
    }
    format!("{folder}/{name}")
}

/// A relayed batch's outcome in words: 550 on the rename into place means the server
/// does not let `station` relay for `handheld` (it says why in its log). This batch is
/// refused; the others still go.
pub fn relay_outcome(outcome: Outcome, station: &str, handheld: &str) -> Outcome {
    match outcome {
        Outcome::Retry(why) if why.starts_with("renaming") && why.contains("550") => {
            Outcome::Refused(format!(
                "{why}: the server refuses batches of {handheld} from {station}; may \
                 {station} relay for {handheld}? The administrator can allow it with \
                 `ctdata-server device relay {station} --for {handheld}`"
            ))
        }
        other => other,
    }
}

/// Delivers one file over as many connections as it takes on a link that cuts every
/// few seconds: each connection resumes `NAME.part` where the server's copy ends, so a
/// cut costs only the bytes in flight. `slot` holds the send's session: opened here
/// when missing, emptied after a failure (the next batch then starts afresh). Gives up
/// (for a later try) after [`FRUITLESS_TRIES`] connections in a row that did not move
/// the server's copy on. Returns the outcome and the bytes put on the wire: of a cut
/// connection, those the server's copy shows it took (bytes handed to the socket but
/// lost in the cut do not count), of the last one all it sent.
pub fn deliver(
    slot: &mut Option<Session>,
    config: &Config,
    path: &Path,
    name: &str,
    progress: &ProgressBar,
) -> (Outcome, u64) {
    let url = &config.upload.url;
    let mut wire = 0u64;
    // A cut connection's bytes, until the next connection sees what the server kept.
    let mut unsettled: Option<Sent> = None;
    let mut fruitless = 0u32;
    let mut piece = FIRST_PIECE;
    let mut renaming = false;
    // The most the server's copy was known to hold.
    let mut best: Option<u64> = None;
    let mut last_error = String::new();
    loop {
        if fruitless >= FRUITLESS_TRIES {
            wire += unsettled.map_or(0, |u| u.written);
            return (Outcome::Retry(last_error), wire);
        }
        let session = match slot {
            Some(s) => s,
            None => match open(config) {
                Ok(s) => slot.insert(s),
                // As over HTTP, credentials or settings the server refuses stop the run:
                // no other batch would go either.
                Err(e @ (Error::Login(_) | Error::Settings(_))) => {
                    return (Outcome::Stop(format!("{url}: {e}")), wire)
                }
                Err(e) => {
                    last_error = format!("{url}: {e}");
                    fruitless += 1;
                    std::thread::sleep(Duration::from_millis(500));
                    continue;
                }
            },
        };
        let mut sent = Sent::default();
        let result = attempt(
            session, path, name, progress, &mut sent, &mut piece, renaming,
        );
        if let Some(u) = unsettled.take() {
            wire += match sent.server_had {
                Some(now) => u.written.min(now.saturating_sub(u.from)),
                None => {
                    // Not settled yet: the next connection may tell.
                    unsettled = Some(u);
                    0
                }
            };
        }
        match result {
            Attempt::Done(outcome) => {
                wire += sent.confirmed + sent.written + unsettled.map_or(0, |u| u.written);
                if !matches!(outcome, Outcome::Delivered { .. }) {
                    // The session may be in any state after a refusal.
                    *slot = None;
                }
                return (outcome, wire);
            }
            Attempt::Lost {
                why,
                renaming: r,
                server_had,
            } => {
                *slot = None;
                renaming = r;
                wire += sent.confirmed;
                if sent.written > 0 {
                    let earlier = unsettled.map_or(0, |u| u.written);
                    wire += earlier;
                    unsettled = Some(sent);
                }
                // What the server holds now, as far as this connection knows.
                let held = if sent.confirmed > 0 || sent.written > 0 {
                    Some(sent.from)
                } else {
                    server_had
                };
                let gained = sent.confirmed > 0
                    || match (held, best) {
                        (Some(now), Some(before)) => now > before,
                        (Some(_), None) => true,
                        (None, _) => false,
                    };
                if gained {
                    best = held.max(best);
                    fruitless = 0;
                } else {
                    fruitless += 1;
                    std::thread::sleep(Duration::from_millis(500));
                }
                last_error = match best {
                    Some(at) => format!(
                        "{why} (the server holds {at} bytes of {name}.part; the upload resumes there)"
                    ),
                    None => why,
                };
            }
        }
    }
}

/// What one connection put on its data connection.
#[derive(Debug, Default, Clone, Copy)]
struct Sent {
    /// The size of the server's `.part` when the connection asked.
    server_had: Option<u64>,
    /// Bytes of pieces the server's size confirmed.
    confirmed: u64,
    /// The offset the piece in flight started from.
    from: u64,
    /// Bytes of the piece in flight handed to the data connection.
    written: u64,
}

/// What one connection's try at an upload came to.
enum Attempt {
    /// Decided on this connection (delivered, refused, or not worth another connection now).
    Done(Outcome),
    /// The connection failed: worth another one. `renaming`: it failed while the rename
    /// was asked for, which may have happened; `server_had`: the size of the server's
    /// `.part` when the connection started, if it got that far.
    Lost {
        why: String,
        renaming: bool,
        server_had: Option<u64>,
    },
}

fn attempt(
    session: &mut Session,
    path: &Path,
    name: &str,
    progress: &ProgressBar,
    sent: &mut Sent,
    piece: &mut u64,
    renaming: bool,
) -> Attempt {
    match session {
        Session::Plain(s) => attempt_on(s, path, name, progress, sent, piece, renaming),
        Session::Tls(s) => attempt_on(s, path, name, progress, sent, piece, renaming),
    }
}

fn attempt_on<T: TlsStream>(
    s: &mut ImplFtpStream<T>,
    path: &Path,
    name: &str,
    progress: &ProgressBar,
    sent: &mut Sent,
    piece: &mut u64,
    renaming: bool,
) -> Attempt {
    let part = format!("{name}.part");
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => {
            return Attempt::Done(Outcome::Stop(format!(
                "cannot read {}: {e}",
                path.display()
            )))
        }
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let delivered = || {
        Attempt::Done(Outcome::Delivered {
            duplicate: false,
            receipt: Proof::handed_over(name, "ftp", Some(len)),
        })
    };
    let lost = |why: String, server_had: Option<u64>| Attempt::Lost {
        why,
        renaming: false,
        server_had,
    };
    progress.set_length(len);
    // Where the server's copy ends. No copy, or one longer than the file (not this
    // upload's), starts at 0.
    let server_had = match s.size(&part) {
        Ok(n) => n as u64,
        // The connection broke while the rename was asked for and the `.part` is gone:
        // the rename happened, the server has the file.
        Err(FtpError::UnexpectedResponse(_)) if renaming => return delivered(),
        Err(FtpError::UnexpectedResponse(_)) => 0,
        Err(e) => {
            return lost(
                format!("asking for the size of {part} failed: {}", explain(e)),
                None,
            )
        }
    };
    sent.server_had = Some(server_had);
    let mut offset = if server_had <= len { server_had } else { 0 };
    progress.set_position(offset);
    if offset > 0 {
        progress.set_message(format!("resuming at {offset} of {len} bytes"));
    }
    // In pieces, each confirmed by the size the server then reports: the bar shows what
    // the server holds, not what the local socket took, and a cut loses at most the
    // piece in flight.
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = (*piece).min(len - offset);
        if n == 0 && offset > 0 {
            break;
        }
        let started = Instant::now();
        let resumed = s
            .resume_transfer(offset as usize)
            .and_then(|_| s.put_with_stream(&part));
        let upload = match resumed {
            Ok(u) => Ok(u),
            // A server that does not resume uploads (REST refused): from the start, whole.
            Err(FtpError::UnexpectedResponse(_)) if offset > 0 => {
                offset = 0;
                *piece = MAX_PIECE.max(len);
                progress.set_position(0);
                s.put_with_stream(&part)
            }
            Err(e) => Err(e),
        };
        // The server's refusal is its answer; anything else is the link.
        let failed = |e: FtpError| match e {
            FtpError::UnexpectedResponse(_) => Attempt::Done(Outcome::Retry(format!(
                "uploading {part} failed: {}",
                explain(e)
            ))),
            e => lost(
                format!("uploading {part} failed: {}", explain(e)),
                Some(server_had),
            ),
        };
        let mut upload = match upload {
            Ok(u) => u,
            Err(e) => return failed(e),
        };
        let n = (*piece).min(len - offset);
        sent.from = offset;
        if let Err(e) = file.seek(SeekFrom::Start(offset)) {
            return Attempt::Done(Outcome::Stop(format!(
                "cannot read {}: {e}",
                path.display()
            )));
        }
        let mut left = n;
        while left > 0 {
            let want = buf.len().min(left as usize);
            let k = match file.read(&mut buf[..want]) {
                Ok(0) => break,
                Ok(k) => k,
                Err(e) => {
                    return Attempt::Done(Outcome::Stop(format!(
                        "cannot read {}: {e}",
                        path.display()
                    )))
                }
            };
            if let Err(e) = upload.write_all(&buf[..k]) {
                *piece = (*piece / 2).max(MIN_PIECE);
                return lost(
                    format!("the connection broke while uploading {part}: {e}"),
                    Some(server_had),
                );
            }
            sent.written += k as u64;
            left -= k as u64;
        }
        match upload.finish() {
            Ok(()) => {}
            Err(e) => {
                if !matches!(e, FtpError::UnexpectedResponse(_)) {
                    *piece = (*piece / 2).max(MIN_PIECE);
                }
                return failed(e);
            }
        }
        // "226 transfer complete" also ends a cut upload: only the size tells.
        let now = match s.size(&part) {
            Ok(now) => now as u64,
            Err(e) => {
                return lost(
                    format!("asking for the size of {part} failed: {}", explain(e)),
                    Some(server_had),
                )
            }
        };
        if now > len {
            let _ = s.rm(&part);
            return Attempt::Done(Outcome::Retry(format!(
                "{part} arrived with {now} of {len} bytes"
            )));
        }
        if now < offset + n {
            return lost(
                format!("{part} holds {now} of {len} bytes after the upload"),
                Some(server_had),
            );
        }
        offset = now;
        sent.confirmed += sent.written;
        sent.written = 0;
        progress.set_position(offset);
        if started.elapsed() < Duration::from_secs(2) {
            *piece = (*piece * 2).min(MAX_PIECE);
        }
        if offset >= len {
            break;
        }
    }
    progress.set_position(len);
    match s.rename(part.as_str(), name) {
        Ok(()) => delivered(),
        Err(e @ FtpError::UnexpectedResponse(_)) => Attempt::Done(Outcome::Retry(format!(
            "renaming {part} to {name} failed: {}",
            explain(e)
        ))),
        Err(e) => Attempt::Lost {
            why: format!("renaming {part} to {name} failed: {}", explain(e)),
            renaming: true,
            server_had: Some(len),
        },
    }
}

/// Writes and deletes a probe file (the connection test's last step).
pub fn probe(session: &mut Session) -> Result<(), Error> {
    fn on<T: TlsStream>(s: &mut ImplFtpStream<T>) -> Result<(), Error> {
        let name = ".ctdata-probe.part";
        s.put_file(name, &mut &b"probe"[..])
            .map_err(|e| Error::command(e, |why| format!("cannot write {name}: {why}")))?;
        s.rm(name)
            .map_err(|e| Error::command(e, |why| format!("cannot delete {name}: {why}")))
    }
    match session {
        Session::Plain(s) => on(s),
        Session::Tls(s) => on(s),
    }
}

pub fn quit(session: Session) {
    let _ = match session {
        Session::Plain(mut s) => s.quit(),
        Session::Tls(mut s) => s.quit(),
    };
}

/// The server's words for what went wrong.
fn explain(e: FtpError) -> String {
    match e {
        FtpError::UnexpectedResponse(r) => {
            let text = String::from_utf8_lossy(&r.body).trim().to_string();
            format!("the server answered {text}")
        }
        FtpError::ConnectionError(e) => format!("the connection failed: {e}"),
        other => other.to_string(),
    }
}

/// Files in the batch folder with their sizes (folders, which have no size, are left
/// out).
pub fn list(session: &mut Session) -> Result<Vec<(String, u64)>, Error> {
    fn on<T: TlsStream>(s: &mut ImplFtpStream<T>) -> Result<Vec<(String, u64)>, Error> {
        let names = s.nlst(None).map_err(|e| Error::command(e, |why| why))?;
        let mut found = Vec::new();
        for name in names {
            let name = name.rsplit('/').next().unwrap_or_default().to_string();
            if let Ok(size) = s.size(&name) {
                found.push((name, size as u64));
            }
        }
        Ok(found)
    }
    match session {
        Session::Plain(s) => on(s),
        Session::Tls(s) => on(s),
    }
}

/// The remote file's modification time (MDTM), when the server tells it.
pub fn modified(session: &mut Session, name: &str) -> Option<chrono::NaiveDateTime> {
    match session {
        Session::Plain(s) => s.mdtm(name).ok(),
        Session::Tls(s) => s.mdtm(name).ok(),
    }
}

/// Downloads `name` into the file `to`; returns the bytes received.
pub fn get(session: &mut Session, name: &str, to: &mut std::fs::File) -> Result<u64, Error> {
    fn on<T: TlsStream>(
        s: &mut ImplFtpStream<T>,
        name: &str,
        to: &mut std::fs::File,
    ) -> Result<u64, Error> {
        s.retr(name, |r| {
            std::io::copy(r, to).map_err(FtpError::ConnectionError)
        })
        .map_err(|e| Error::command(e, |why| format!("downloading {name} failed: {why}")))
    }
    match session {
        Session::Plain(s) => on(s, name, to),
        Session::Tls(s) => on(s, name, to),
    }
}

pub fn delete(session: &mut Session, name: &str) -> Result<(), Error> {
    let done = match session {
        Session::Plain(s) => s.rm(name),
        Session::Tls(s) => s.rm(name),
    };
    done.map_err(|e| Error::command(e, |why| format!("deleting {name} failed: {why}")))
}
