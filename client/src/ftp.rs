//! FTP and FTPS (explicit, AUTH TLS; rustls): upload to `NAME.part`, check the size
//! the server reports, rename to `NAME`. FTP servers answer "226 transfer complete"
//! even for a client that died mid-upload, so only a renamed file counts as sent.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use suppaftp::types::FileType;
use suppaftp::{FtpError, FtpStream, ImplFtpStream, RustlsConnector, RustlsFtpStream, TlsStream};
use tokio_rustls::rustls::ClientConfig;

use crate::config::{Config, Endpoint, Protocol};
use crate::send::{Outcome, Proof};

const TIMEOUT: Duration = Duration::from_secs(30);

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
            .map(Session::Plain)
            .map_err(not_ftp);
    }
    let connector = RustlsConnector::from(tls_config(up)?);
    RustlsFtpStream::connect_with_stream(tcp)
        .map_err(not_ftp)?
        .into_secure(connector, &t.host)
        .map(|s| Session::Tls(Box::new(s)))
        .map_err(|e| {
            Error::Tls(format!(
                "the secure connection (AUTH TLS) failed: {}",
                crate::pinned::explain(&explain(e))
            ))
        })
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

/// Uploads one batch: `NAME.part`, size check, rename.
pub fn put(session: &mut Session, path: &Path, name: &str) -> Outcome {
    match session {
        Session::Plain(s) => put_on(s, path, name),
        Session::Tls(s) => put_on(s, path, name),
    }
}

/// Uploads a batch relayed for `handheld` (send on sync) into `relay/HANDHELD/`,
/// which the server takes as the handheld's when `station` may relay for it.
pub fn put_relayed(
    session: &mut Session,
    path: &Path,
    name: &str,
    station: &str,
    handheld: &str,
) -> Outcome {
    let folder = format!("{}/{handheld}", crate::share::RELAY_FOLDER);
    let remote = format!("{folder}/{name}");
    let outcome = match session {
        Session::Plain(s) => {
            let _ = s.mkdir(crate::share::RELAY_FOLDER);
            let _ = s.mkdir(&folder);
            put_on(s, path, &remote)
        }
        Session::Tls(s) => {
            let _ = s.mkdir(crate::share::RELAY_FOLDER);
            let _ = s.mkdir(&folder);
            put_on(s, path, &remote)
        }
    };
    match outcome {
        // 550 on the rename into place: the server does not let this station relay
        // for the handheld (it says why in its log). This batch is refused; the
        // others still go.
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

fn put_on<T: TlsStream>(s: &mut ImplFtpStream<T>, path: &Path, name: &str) -> Outcome {
    let part = format!("{name}.part");
    let mut file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return Outcome::Stop(format!("cannot read {}: {e}", path.display())),
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let sent = s
        .put_file(&part, &mut file)
        .and_then(|_| s.size(&part))
        .map_err(explain);
    match sent {
        Ok(n) if n as u64 == len => {}
        Ok(n) => {
            let _ = s.rm(&part);
            return Outcome::Retry(format!("{part} arrived with {n} of {len} bytes"));
        }
        Err(e) => return Outcome::Retry(format!("uploading {part} failed: {e}")),
    }
    match s.rename(part.as_str(), name) {
        Ok(()) => Outcome::Delivered {
            duplicate: false,
            receipt: Proof::handed_over(name, "ftp", Some(len)),
        },
        Err(e) => Outcome::Retry(format!("renaming {part} to {name} failed: {}", explain(e))),
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
