//! `ctdata test`: the connection test. Each step prints ✓ and what it found, or ✗ and
//! the cause in plain words; the first failure ends the test.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use ctdata_api::{ErrorBody, WhoAmI};
use reqwest::Url;
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::ServerName;

use crate::config::{Config, Endpoint, Protocol};
use crate::home::Home;
use crate::{ftp, http, share};

const STEP_TIMEOUT: Duration = Duration::from_secs(15);

type Step = Result<String, String>;

pub async fn run(home: &Home) -> anyhow::Result<ExitCode> {
    let config = Config::load(home)?;
    println!(
        "testing {} ({}) for device {}",
        config.upload.url, config.upload.protocol, config.device
    );
    let ok = match config.upload.protocol {
        Protocol::Https => https(&config).await?,
        Protocol::Ftp | Protocol::Ftps => {
            let config = config.clone();
            tokio::task::spawn_blocking(move || ftp_steps(&config)).await?
        }
        Protocol::Share => show("write and delete a probe file", probe_share(&config)),
    };
    Ok(if ok {
        println!("all steps passed");
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn show(step: &str, result: Step) -> bool {
    match result {
        Ok(found) => {
            println!("✓ {step}: {found}");
            true
        }
        Err(cause) => {
            println!("✗ {step}: {cause}");
            false
        }
    }
}

async fn https(config: &Config) -> anyhow::Result<bool> {
    let up = &config.upload;
    let url = Url::parse(&up.url).with_context(|| format!("{:?} is not a URL", up.url))?;
    let host = url.host_str().unwrap_or_default().to_string();
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs = match resolve(&host, port).await {
        Ok(a) => a,
        Err(cause) => return Ok(show("resolve host", Err(cause))),
    };
    let shown: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
    show(
        "resolve host",
        Ok(format!("{host} is {}", shown.join(", "))),
    );
    let stream = match connect(&addrs).await {
        Ok(s) => s,
        Err(cause) => return Ok(show("connect", Err(cause))),
    };
    show(
        "connect",
        Ok(format!("{} accepts connections", stream.peer_addr()?)),
    );
    if url.scheme() == "https" {
        if !show("TLS", tls(up, &host, stream).await) {
            return Ok(false);
        }
    } else {
        println!(
            "- TLS: skipped, the URL is plain http:// (the token crosses the network unencrypted)"
        );
    }
    let client = http::client(up)?;
    if !show("server health (/healthz)", healthz(&client, up).await) {
        return Ok(false);
    }
    Ok(show("log in", login(&client, config).await))
}

async fn resolve(host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    let found = tokio::time::timeout(STEP_TIMEOUT, tokio::net::lookup_host((host, port))).await;
    match found {
        Err(_) => Err(format!(
            "looking up {host} took longer than {STEP_TIMEOUT:?}"
        )),
        Ok(Err(e)) => Err(format!(
            "cannot find host {host:?} (is the name right, is there a network?): {e}"
        )),
        Ok(Ok(addrs)) => Ok(addrs.collect()),
    }
}

async fn connect(addrs: &[SocketAddr]) -> Result<TcpStream, String> {
    let mut causes = Vec::new();
    for addr in addrs {
        match tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                causes.push(format!(
                    "{addr} refused the connection: nothing is listening on port {} \
                 (is the server running, is the port right?)",
                    addr.port()
                ))
            }
            Ok(Err(e)) => causes.push(format!("{addr}: {e}")),
            Err(_) => causes.push(format!(
                "{addr} did not answer within {STEP_TIMEOUT:?} (a firewall, or the wrong address?)"
            )),
        }
    }
    Err(causes.join("; "))
}

async fn tls(up: &Endpoint, host: &str, stream: TcpStream) -> Step {
    let tls = ftp::tls_config(up).map_err(|e| e.to_string())?;
    let name = ServerName::try_from(host.to_string()).map_err(|e| format!("{host}: {e}"))?;
    let connector = tokio_rustls::TlsConnector::from(tls);
    match tokio::time::timeout(STEP_TIMEOUT, connector.connect(name, stream)).await {
        Err(_) => Err(format!(
            "the TLS handshake took longer than {STEP_TIMEOUT:?}"
        )),
        Ok(Err(e)) => Err(format!(
            "the secure connection failed: {}",
            crate::pinned::explain(&e.to_string())
        )),
        Ok(Ok(s)) => {
            let version = s.get_ref().1.protocol_version();
            Ok(format!("certificate valid for {host}, {version:?}"))
        }
    }
}

async fn healthz(client: &reqwest::Client, up: &Endpoint) -> Step {
    let url = format!("{}/healthz", up.base());
    match client.get(&url).timeout(STEP_TIMEOUT).send().await {
        Err(e) => Err(http::describe(&e, &up.url)),
        Ok(r) if r.status().is_success() => Ok("the server is up".into()),
        Ok(r) => Err(format!(
            "{url} answered {}: is this the address of a ctdata-server?",
            r.status()
        )),
    }
}

async fn login(client: &reqwest::Client, config: &Config) -> Step {
    let up = &config.upload;
    let token = up.require_token().map_err(|e| format!("{e:#}"))?;
    let url = format!("{}/api/v1/whoami", up.base());
    let r = client
        .get(&url)
        .bearer_auth(token)
        .timeout(STEP_TIMEOUT)
        .send()
        .await
        .map_err(|e| http::describe(&e, &up.url))?;
    let status = r.status();
    let body = r.bytes().await.unwrap_or_default();
    let message = serde_json::from_slice::<ErrorBody>(&body)
        .map(|b| b.message)
        .unwrap_or_default();
    match status.as_u16() {
        200 => {
            let device = serde_json::from_slice::<WhoAmI>(&body)
                .map(|w| w.device)
                .unwrap_or_default();
            if device == config.device {
                Ok(format!("the token is accepted for device {device}"))
            } else {
                Err(format!(
                    "the token belongs to device {device:?}, but this client is set up as {:?}: \
                     fix --device or --token with `ctdata init`",
                    config.device
                ))
            }
        }
        401 => Err(format!(
            "the server does not accept this token: it is wrong, or device {} is not \
             registered (the administrator runs `ctdata-server device add {}`)",
            config.device, config.device
        )),
        403 => Err(format!("the server refuses this device: {message}")),
        404 => Err("the server has no /api/v1/whoami: it is older than this client".into()),
        _ => Err(format!("{url} answered {status}: {message}")),
    }
}

fn probe_share(config: &Config) -> Step {
    let dir = share::device_dir(&config.upload, &config.device)?;
    let probe = dir.join(".ctdata-probe.part");
    std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(&probe, b"probe"))
        .and_then(|()| std::fs::remove_file(&probe))
        .map_err(|e| format!("cannot write in {}: {e}", dir.display()))?;
    Ok(format!("{} is writable", dir.display()))
}

fn ftp_steps(config: &Config) -> bool {
    let t = match ftp::Target::new(config) {
        Ok(t) => t,
        Err(cause) => return show("settings", Err(cause.to_string())),
    };
    let addrs = match t.addrs() {
        Ok(a) if !a.is_empty() => a,
        Ok(_) => return show("resolve host", Err(format!("{} has no address", t.host))),
        Err(cause) => return show("resolve host", Err(cause.to_string())),
    };
    let shown: Vec<String> = addrs.iter().map(|a| a.ip().to_string()).collect();
    show(
        "resolve host",
        Ok(format!("{} is {}", t.host, shown.join(", "))),
    );
    let tcp = match ftp::connect(&t, addrs[0]) {
        Ok(tcp) => tcp,
        Err(cause) => return show("connect", Err(cause.to_string())),
    };
    show("connect", Ok(format!("{} accepts connections", addrs[0])));
    let step = if t.secure {
        "TLS (AUTH TLS)"
    } else {
        "FTP greeting"
    };
    let mut session = match ftp::greet(&t, &config.upload, tcp) {
        Ok(s) => s,
        Err(cause) => return show(step, Err(cause.to_string())),
    };
    if t.secure {
        show(step, Ok(format!("certificate valid for {}", t.host)));
    } else {
        show(step, Ok("the server speaks FTP".into()));
        println!("- TLS: skipped, plain ftp:// (the password crosses the network unencrypted)");
    }
    let ok = show(
        "log in",
        ftp::login(&t, &mut session).map_err(|e| e.to_string()),
    ) && match ftp::enter_folder(&t, &mut session) {
        Ok(folder) => {
            show(
                "find the CTData folder",
                Ok(format!("batches go to {folder}")),
            ) && show(
                "write and delete a probe file",
                ftp::probe(&mut session)
                    .map(|()| format!("{folder} is writable"))
                    .map_err(|e| e.to_string()),
            )
        }
        Err(cause) => show("find the CTData folder", Err(cause.to_string())),
    };
    ftp::quit(session);
    ok
}
