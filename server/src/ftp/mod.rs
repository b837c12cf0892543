//! The embedded FTP/FTPS server (libunftp): devices log in with their name and token
//! and upload into their own folder of the drop directory.
//!
//! We accept control connections ourselves and hand each to a libunftp server of its
//! own (`Server::service`), because libunftp's listener leaves Nagle's algorithm on
//! (23 small files/s measured; ~1,700 with `TCP_NODELAY`) and offers no hook to change
//! that, and because owning the listener lets `bind` use port 0 and log the real port.

mod auth;
mod beneath;
mod control;
mod fs;
mod handoff;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use libunftp::options::{ActivePassiveMode, FtpsRequired};
use libunftp::{Server, ServerBuilder};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::config::FtpSettings;
use crate::db::Db;
pub use handoff::remove_stale_parts;

/// What passive replies announce (`ftp.passive_host`): an IPv4 address as it is, a
/// name resolved by libunftp at each reply, nothing for the control connection's own.
fn passive_host(setting: &str) -> libunftp::options::PassiveHost {
    use libunftp::options::PassiveHost;
    match setting.trim() {
        "" => PassiveHost::FromConnection,
        s => match s.parse::<std::net::Ipv4Addr>() {
            Ok(ip) => PassiveHost::Ip(ip),
            Err(_) => PassiveHost::Dns(s.to_string()),
        },
    }
}

/// `ftp.passive_host` at start-up: an IPv4 address, or a name that has one (passive
/// replies carry IPv4 only). A malformed value stops the start; a name that does not
/// resolve now is only warned about (the DNS may not be up yet at boot).
async fn check_passive_host(setting: &str) -> anyhow::Result<()> {
    let s = setting.trim();
    if s.is_empty() || s.parse::<std::net::Ipv4Addr>().is_ok() {
        return Ok(());
    }
    if s.contains(':') || s.contains('/') || s.contains(' ') {
        anyhow::bail!(
            "ftp.passive_host {s:?} is neither an IPv4 address nor a DNS name: passive replies \
             carry an IPv4 address only, without a port"
        );
    }
    match tokio::net::lookup_host((s, 0))
        .await
        .map(|mut addrs| addrs.any(|a| a.is_ipv4()))
    {
        Ok(true) => {}
        Ok(false) => tracing::warn!(
            "ftp.passive_host {s:?} has no IPv4 address: passive replies will fail until it has one"
        ),
        Err(e) => tracing::warn!(
            "ftp.passive_host {s:?} does not resolve now ({e}): passive replies will fail until it does"
        ),
    }
    Ok(())
}

/// How long open sessions get to finish after the shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Everything a connection's server is built from.
struct Setup {
    auth: Arc<auth::DeviceAuth>,
    handoff: Arc<handoff::Handoff>,
    settings: FtpSettings,
    passive: std::ops::RangeInclusive<u16>,
    tls: Option<(PathBuf, PathBuf)>,
}

impl Setup {
    /// The server for one control connection (`None`: only to check the settings).
    fn server(
        &self,
        control: Option<Arc<control::Control>>,
    ) -> anyhow::Result<Server<fs::DeviceFs, auth::Device>> {
        let handoff = self.handoff.clone();
        let limits = fs::Limits {
            data_timeout: self
                .settings
                .data_timeout_secs
                .max(Duration::from_millis(100)),
            max_file_bytes: self.settings.max_file_bytes,
            device_quota_bytes: self.settings.device_quota_bytes,
        };
        let events = control.clone().map(control::Events);
        let authenticator = Arc::new(auth::SessionAuth {
            devices: self.auth.clone(),
            control: control.clone(),
        });
        let mut builder = ServerBuilder::<fs::DeviceFs, auth::Device>::with_user_detail_provider(
            Box::new(move || fs::DeviceFs::new(handoff.clone(), limits, control.clone())),
            Arc::new(auth::Devices),
        )
        .authenticator(authenticator)
        .greeting("CTData FTP server")
        .passive_ports(self.passive.clone())
        .passive_host(passive_host(&self.settings.passive_host))
        .idle_session_timeout(self.settings.idle_timeout_secs.as_secs().max(1))
        .active_passive_mode(ActivePassiveMode::PassiveOnly);
        if let Some(events) = events {
            builder = builder.notify_data(events.clone()).notify_presence(events);
        }
        if let Some((cert, key)) = &self.tls {
            builder = builder.ftps(cert.clone(), key.clone());
        }
        if self.settings.require_tls {
            builder = builder.ftps_required(FtpsRequired::All, FtpsRequired::All);
        }
        Ok(builder.build()?)
    }
}

/// Binds `ftp.bind` and serves FTP on its own task until `shutdown`; a task also
/// removes stale `.part` uploads. `wake` is the ingest loop's: a complete upload
/// rings it. Returns the bound address with the task.
pub async fn start(
    settings: &FtpSettings,
    drop_dir: PathBuf,
    db: Db,
    wake: Arc<Notify>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    let passive = settings.passive_ports.range();
    check_passive_host(&settings.passive_host).await?;
    // libunftp loads the files itself: load them here first so a problem is a start-up
    // error that names the setting and the file.
    let tls = crate::tls::pair("ftp", "FTPS", &settings.tls_cert, &settings.tls_key)?;
    if let Some((cert, key)) = &tls {
        crate::tls::server_config("ftp", cert, key)?;
    }
    anyhow::ensure!(
        tls.is_some() || !settings.require_tls,
        "ftp.require_tls is set but ftp.tls_cert and ftp.tls_key are not: TLS needs a certificate"
    );
    let setup = Arc::new(Setup {
        auth: Arc::new(auth::DeviceAuth {
            db: db.clone(),
            require_tls: settings.require_tls,
            lockout: auth::Lockout::new(settings.max_login_failures, settings.lockout_secs),
        }),
        handoff: Arc::new(handoff::Handoff {
            drop_dir: drop_dir.clone(),
            wake,
            fsync_before_reply: settings.fsync_before_reply,
            db,
        }),
        settings: settings.clone(),
        passive,
        tls,
    });
    // Building once now turns a bad setting into a startup error.
    setup.server(None).context("ftp settings")?;
    let listener = tokio::net::TcpListener::bind(&settings.bind)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on ftp.bind {}: {e}", settings.bind))?;
    let addr = listener.local_addr()?;
    tracing::info!(
        passive_ports = %settings.passive_ports,
        ftps = setup.tls.is_some(),
        require_tls = settings.require_tls,
        "FTP listening on {addr}"
    );
    let sweeper = tokio::spawn(sweep_stale_parts(drop_dir, settings.stale_part_secs));
    let task = tokio::spawn(async move {
        let result = serve_connections(listener, setup, shutdown).await;
        sweeper.abort();
        result
    });
    Ok((addr, task))
}

/// Accepts control connections until `shutdown`, each with `TCP_NODELAY` and its own
/// libunftp server, within `ftp.max_connections` and `ftp.max_connections_per_ip`;
/// then gives open sessions a grace period.
async fn serve_connections(
    listener: tokio::net::TcpListener,
    setup: Arc<Setup>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let limits = crate::connlimit::ConnLimits::new(
        "ftp",
        setup.settings.max_connections,
        setup.settings.max_connections_per_ip,
    );
    let mut sessions = JoinSet::new();
    // Every live session's control, so that uploads its client has confirmed are still
    // handed off when shutdown cuts the session before it ends by itself.
    let mut controls: Vec<std::sync::Weak<control::Control>> = Vec::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = sessions.join_next(), if !sessions.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    limits.accept_failed(&e);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = limits.admit(peer.ip()) else {
            // Told why if the socket takes the line now; closed at once either way.
            let _ = stream.try_write(b"421 Too many connections, try again later.\r\n");
            continue;
        };
        // Replies are small writes; with Nagle on, each waits for the client's delayed
        // ACK (~40 ms), which caps a client at ~23 files/s.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::warn!(%peer, "could not set TCP_NODELAY on an FTP connection: {e}");
        }
        let control = match control::Control::of(&stream) {
            Ok(c) => Arc::new(c),
            Err(e) => {
                tracing::warn!(%peer, "FTP connection refused, its socket could not be duplicated: {e}");
                continue;
            }
        };
        controls.retain(|c| c.strong_count() > 0);
        controls.push(Arc::downgrade(&control));
        let watch = Arc::downgrade(&control);
        let login_by = setup
            .settings
            .login_timeout_secs
            .max(Duration::from_millis(100));
        tokio::spawn(async move {
            tokio::time::sleep(login_by).await;
            if watch.upgrade().is_some_and(|c| c.close_unless_logged_in()) {
                tracing::debug!(%peer, "FTP connection closed: no login within ftp.login_timeout_secs");
            }
        });
        match setup.server(Some(control.clone())) {
            Ok(server) => {
                let handoff = setup.handoff.clone();
                sessions.spawn(async move {
                    let _slot = slot;
                    if let Err(e) = server.service(stream).await {
                        tracing::warn!(%peer, "FTP session ended with an error: {e}");
                    }
                    // Uploads the client confirmed by how it left; errors are logged.
                    let _ = control::hand_off(&handoff, control.finish()).await;
                });
            }
            Err(e) => {
                tracing::error!(%peer, "FTP connection refused, the server could not be set up: {e:#}")
            }
        }
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while sessions.join_next().await.is_some() {}
    })
    .await;
    // A client still connected when its session is cut has read its 226s: those
    // uploads were acknowledged, so they go to ingest (resumed at the next start).
    for control in controls.iter().filter_map(std::sync::Weak::upgrade) {
        let _ = control::hand_off(&setup.handoff, control.finish()).await;
    }
    sessions.abort_all();
    Ok(())
}

async fn sweep_stale_parts(drop_dir: PathBuf, age: Duration) {
    let every = (age / 4).clamp(Duration::from_millis(200), Duration::from_secs(300));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tick.tick().await;
        let dir = drop_dir.clone();
        let _ = tokio::task::spawn_blocking(move || remove_stale_parts(&dir, age)).await;
    }
}
