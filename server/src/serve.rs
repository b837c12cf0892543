//! The long-running daemon: watch the drop directory and ingest until told to stop.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::{mpsc, Notify};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::connlimit::ConnLimits;
use crate::db::Db;
use crate::dropdir::DropDir;
use crate::ingest::Ingestor;
use crate::replica::{Replica, SqliteLock};
use crate::sources::Puller;

/// Connects, migrates and builds the ingestor the settings describe.
pub async fn open(settings: &Settings) -> anyhow::Result<Ingestor> {
    let db = Db::connect(
        settings.database.url.expose_secret(),
        settings.database.max_connections,
    )
    .await?;
    db.migrate().await?;
    prepare_partitions(&db).await;
    Ok(Ingestor::new(
        db,
        settings.ingest.limits(),
        &settings.ingest.default_device,
    )
    .with_cybertracker(settings.formats.cybertracker.clone())
    .with_attachments(
        crate::attachments::AttachmentStore::new(
            &settings.storage.attachments_dir(&settings.ingest.drop_dir),
        ),
        settings.storage.max_attachment_bytes,
    ))
}

/// Makes the coming months' partitions of `sightings` (PostgreSQL). A failure is only
/// logged: rows of a month without a partition are stored in the default partition.
async fn prepare_partitions(db: &Db) {
    match db.prepare_partitions().await {
        Ok(0) => {}
        Ok(n) => tracing::info!("made {n} monthly partitions of sightings"),
        Err(e) => tracing::warn!(
            "could not make the coming months' partitions of sightings (tried again in an \
             hour; meanwhile new sightings are stored in sightings_default): {e}"
        ),
    }
}

/// Runs the ingest loop until `shutdown` resolves, then finishes the file in hand and
/// returns.
pub async fn run(
    mut settings: Settings,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    fit_connections(&mut settings);
    // SQLite serves one server: a second `serve` on the same file stops here.
    let url = settings.database.url.expose_secret();
    let _alone = match url.starts_with("sqlite:") {
        true => Some(SqliteLock::acquire(&crate::db::sqlite_file(url)?)?),
        false => None,
    };
    let ingestor = open(&settings).await?;
    let replica = Replica {
        name: settings.replica.name().into(),
        lease: settings.replica.lease_secs,
        heartbeat: settings.replica.heartbeat_secs,
    };
    // On PostgreSQL any number of replicas may share the database (and the drop
    // directory): claims name their replica, and the lease says whose claims wait.
    let shared = matches!(ingestor.db, Db::Postgres(_));
    if shared {
        crate::layout::claim_as_replica(&replica.name);
    }
    match replica.register(&ingestor.db).await {
        Ok(()) => {}
        // Other replicas take over the claims of one without a lease: on a shared
        // database a replica that cannot register does not start.
        Err(e) if shared => return Err(e),
        // Alone (SQLite) the lease guards nothing: a full disk must not stop the
        // server, which then refuses uploads with 503 until there is room; the
        // heartbeat registers it again.
        Err(e) => tracing::warn!("cannot register this server in the database yet: {e:#}"),
    }
    ingestor.metrics.set_replica(&replica.name);
    let mut drop_dir = DropDir::new(
        &settings.ingest.drop_dir,
        ingestor.clone(),
        settings.ingest.settle_secs,
    )?
    .with_incomplete_grace(settings.ingest.incomplete_grace_secs);
    if shared {
        drop_dir = drop_dir.as_replica(&replica.name);
    }
    let puller = Arc::new(Puller::new(
        settings.sources.clone(),
        &settings.ingest.drop_dir,
        ingestor.clone(),
    ));
    // One token stops them all: the HTTP server finishes requests in flight, the FTP
    // server gives sessions a grace period, scheduled pulls and the ingest loop finish
    // the file in hand.
    let stop = CancellationToken::new();
    let woken = Arc::new(Notify::new());
    // The coming months' partitions of sightings (PostgreSQL), checked every hour.
    if shared {
        let db = ingestor.db.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(3600));
            every.set_missed_tick_behavior(MissedTickBehavior::Delay);
            every.tick().await;
            loop {
                tokio::select! {
                    _ = every.tick() => prepare_partitions(&db).await,
                    _ = stop.cancelled() => break,
                }
            }
        });
    }
    let (http_addr, http) = start_http(
        &settings,
        ingestor.clone(),
        puller.clone(),
        stop.clone().cancelled_owned(),
    )
    .await?;
    // A complete FTP upload is claimed by the FTP server itself and rings `woken`.
    let (ftp_addr, ftp) = match settings.ftp.enabled {
        true => {
            let (addr, task) = crate::ftp::start(
                &settings.ftp,
                settings.ingest.drop_dir.clone(),
                ingestor.db.clone(),
                woken.clone(),
                stop.clone().cancelled_owned(),
            )
            .await?;
            (Some(addr), Some(task))
        }
        false => (None, None),
    };
    tracing::info!(
        drop_dir = %settings.ingest.drop_dir.display(),
        database = ingestor.db.backend(),
        "ctdata-server watching the drop directory"
    );

    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown.await;
            stop.cancel();
        }
    });
    // The heartbeat outlives the other tasks: the lease is only given up once nothing
    // of this replica runs any more.
    let beat_stop = CancellationToken::new();
    let heartbeat = replica.spawn_heartbeat(ingestor.db.clone(), beat_stop.clone());
    tracing::info!(
        replica = %replica.name,
        lease = ?replica.lease,
        "this server is replica {}",
        replica.name
    );
    let pulls =
        crate::sources::spawn_schedules(puller, stop.clone(), shared.then(|| replica.clone()));
    let (events, mut changes) = mpsc::unbounded_channel();
    let mut watcher = watch(&settings.ingest.drop_dir, events.clone());
    ready_line(&http_addr, ftp_addr);
    let mut rescan =
        tokio::time::interval(settings.ingest.rescan_secs.max(Duration::from_millis(100)));
    rescan.set_missed_tick_behavior(MissedTickBehavior::Skip);

    // Doubles while the drop directory stays away (share unmounted), up to a minute.
    let away_policy = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(500))
        .with_max_delay(Duration::from_secs(60))
        .without_max_times();
    let mut away_pauses = away_policy.build();
    let mut away = false;
    while !stop.is_cancelled() {
        // Writes and closes seen since the last pass decide what is still open.
        note_changes(&mut drop_dir, &mut changes, None);
        match drop_dir.ingest_once(&stop).await {
            Ok(report) if report.unavailable => {
                away = true;
                let pause = away_pauses.next().unwrap_or(Duration::from_secs(60));
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = woken.notified() => {}
                    _ = stop.cancelled() => {}
                }
                // Events from a watch on a vanished folder say nothing any more.
                while changes.try_recv().is_ok() {}
                continue;
            }
            Ok(report) if report.errors > 0 => {
                // Something outside our control failed (the database, the disk): pause
                // before trying the same files again.
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = woken.notified() => {}
                    _ = stop.cancelled() => {}
                }
                note_changes(&mut drop_dir, &mut changes, None);
                continue;
            }
            Ok(_) => {}
            Err(e) => tracing::error!("drop directory scan failed: {e:#}"),
        }
        if away {
            // Back from away: the old watch died with the folder it watched.
            away = false;
            away_pauses = away_policy.build();
            watcher = watch(&settings.ingest.drop_dir, events.clone());
        }
        let settle_wait = drop_dir
            .next_settle()
            .map(|d| d + Duration::from_millis(20));
        tokio::select! {
            _ = woken.notified() => {
                // An FTP upload was claimed: let the ones right behind it join this
                // pass, so a burst shares one filesystem sync and one scan.
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            _ = stop.cancelled() => {}
            _ = rescan.tick() => {}
            _ = sleep_opt(settle_wait) => {}
            Some(change) = changes.recv() => {
                // Take the whole burst of events before scanning once.
                tokio::time::sleep(Duration::from_millis(20)).await;
                note_changes(&mut drop_dir, &mut changes, Some(change));
            }
        }
    }
    drop(watcher);
    tracing::info!("ingest stopped");
    for pull in pulls {
        let _ = pull.await;
    }
    http.await??;
    tracing::info!("HTTP stopped");
    if let Some(ftp) = ftp {
        ftp.await??;
        tracing::info!("FTP stopped");
    }
    beat_stop.cancel();
    let _ = heartbeat.await;
    ingestor.db.close().await;
    Ok(())
}

/// Raises the open-files limit and lowers the connection caps to what it can hold with
/// descriptors to spare, so full listeners leave the database and the drop directory
/// room to work.
fn fit_connections(settings: &mut Settings) {
    let limit = crate::connlimit::raise_open_files_limit();
    let ftp_max = match settings.ftp.enabled {
        true => settings.ftp.max_connections,
        false => 0,
    };
    let (http, ftp) = crate::connlimit::fit_caps(limit, settings.http.max_connections, ftp_max);
    if http < settings.http.max_connections || ftp < ftp_max {
        tracing::warn!(
            open_files_limit = limit,
            "http.max_connections lowered from {} to {http} and ftp.max_connections from {ftp_max} \
             to {ftp} to fit the open-files limit with {} descriptors to spare; raise the limit \
             (LimitNOFILE= in the service unit) to keep the configured caps",
            settings.http.max_connections,
            crate::connlimit::RESERVED_FDS
        );
        settings.http.max_connections = http;
        if settings.ftp.enabled {
            settings.ftp.max_connections = ftp;
        }
    }
}

/// Takes every queued change notification: renames mark files complete.
fn note_changes(
    drop_dir: &mut DropDir,
    changes: &mut mpsc::UnboundedReceiver<Change>,
    first: Option<Change>,
) {
    let mut next = first.or_else(|| changes.try_recv().ok());
    while let Some(change) = next {
        match change {
            Change::Renamed(path) => drop_dir.note_renamed(&path),
            Change::Written(path) => drop_dir.note_written(&path),
            Change::Closed(path) => drop_dir.note_closed(&path),
            Change::Touched => {}
        }
        next = changes.try_recv().ok();
    }
}

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

/// Tells whoever started the server (a supervisor, a test harness) that it serves, on
/// standard output and in one line a program can read instead of the log:
/// `ctdata-server: ready http=127.0.0.1:8080 ftp=127.0.0.1:2121` (`https=` when the
/// API serves TLS; `ftp=` only when FTP is on). Logs go to standard error.
fn ready_line(http: &str, ftp: Option<std::net::SocketAddr>) {
    use std::io::Write;
    let ftp = ftp.map(|a| format!(" ftp={a}")).unwrap_or_default();
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "ctdata-server: ready {http}{ftp}");
    let _ = out.flush();
}

/// Binds `http.bind` and serves the API on its own task, over HTTPS when
/// `http.tls_cert` and `http.tls_key` are set; returns `http=ADDR` (`https=ADDR`) for
/// the ready line. Spooled uploads left by a crash are removed first: their senders got
/// no answer and will send again.
async fn start_http(
    settings: &Settings,
    ingestor: Ingestor,
    puller: Arc<Puller>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(String, tokio::task::JoinHandle<anyhow::Result<()>>)> {
    // Certificate problems stop the start before anything is bound or removed.
    let tls = crate::http::tls::acceptor(&settings.http)?;
    let drop_dir = settings.ingest.drop_dir.clone();
    crate::layout::clear_spools(&drop_dir);
    let attachments_dir = settings.storage.attachments_dir(&drop_dir);
    let store = crate::attachments::AttachmentStore::open(&attachments_dir).map_err(|e| {
        anyhow::anyhow!(
            "cannot use storage.attachments_dir {}: {e}",
            attachments_dir.display()
        )
    })?;
    // Resumable uploads survive a restart; expired ones are swept now and every minute,
    // with the attachments' temporary files a crashed replica left for good.
    let swept = drop_dir.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(60));
        loop {
            every.tick().await;
            let dir = swept.clone();
            if let Ok(n @ 1..) =
                tokio::task::spawn_blocking(move || crate::http::resumable::sweep(&dir)).await
            {
                tracing::info!("deleted {n} expired resumable uploads");
            }
            let store = store.clone();
            let stale = crate::attachments::STALE_TMP;
            if let Ok(Ok(n @ 1..)) =
                tokio::task::spawn_blocking(move || store.clear_temporary(false, stale)).await
            {
                tracing::info!("deleted {n} attachment temporary files left by a crash");
            }
        }
    });
    let listener = tokio::net::TcpListener::bind(&settings.http.bind)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on http.bind {}: {e}", settings.http.bind))?;
    let addr = listener.local_addr()?;
    let ready = match tls {
        Some(_) => {
            tracing::info!("HTTPS API listening on {addr}");
            format!("https={addr}")
        }
        None => {
            tracing::info!("HTTP API listening on {addr}");
            format!("http={addr}")
        }
    };
    let state = http_state(settings, ingestor, puller, tls.is_some());
    let http = &settings.http;
    let policy = crate::http::ConnPolicy {
        header_read_timeout: at_least_100ms(http.header_read_timeout_secs),
        idle_timeout: at_least_100ms(http.idle_timeout_secs),
        limits: ConnLimits::trusting(
            "http",
            http.max_connections,
            http.max_connections_per_ip,
            &http.trusted_proxies,
        ),
        min_body_rate: http.min_body_bytes_per_sec,
        body_idle_timeout: at_least_100ms(http.body_idle_timeout_secs),
    };
    let app = crate::http::app(state);
    let task = tokio::spawn(crate::http::serve(listener, app, policy, tls, shutdown));
    Ok((ready, task))
}

/// The API's state as `serve` builds it from the settings (also for in-process tests
/// of [`crate::http::app`]); `secure_cookie` when it serves HTTPS.
pub fn http_state(
    settings: &Settings,
    ingestor: Ingestor,
    puller: Arc<Puller>,
    secure_cookie: bool,
) -> crate::http::AppState {
    let drop_dir = settings.ingest.drop_dir.clone();
    crate::http::AppState {
        attachments: crate::attachments::AttachmentStore::new(
            &settings.storage.attachments_dir(&drop_dir),
        ),
        max_attachment_bytes: settings.storage.max_attachment_bytes,
        openrosa: Arc::new(settings.openrosa.clone()),
        ingestor,
        drop_dir: Arc::new(drop_dir),
        max_body_bytes: settings.http.max_body_bytes,
        body_idle_timeout: at_least_100ms(settings.http.body_idle_timeout_secs),
        auth_failures: Arc::new(crate::http::throttle::AuthFailures::new(
            settings.http.trusted_proxies.clone(),
        )),
        password_checks: Arc::new(tokio::sync::Semaphore::new(2)),
        puller,
        read_devices: Arc::new(settings.http.read_devices.clone()),
        dwca: Arc::new(settings.dwca.clone()),
        request_slots: Arc::new(tokio::sync::Semaphore::new(
            settings.http.max_concurrent_requests.max(1),
        )),
        uploads: Arc::new(crate::http::fair::UploadSlots::new(
            settings.http.max_concurrent_requests,
            settings.http.max_uploads_per_device,
        )),
        max_spool_per_device: settings.http.max_spool_bytes_per_device,
        resumable: Arc::new(crate::http::resumable::Registry::new(
            settings.http.upload_expiry_secs,
        )),
        dashboard: Arc::new(crate::http::DashboardSettings {
            session: settings.http.session_hours,
            stale_after_days: settings.http.stale_after_days.as_secs_f64() / 86_400.0,
            secure_cookie,
            map_tiles: settings
                .http
                .map_tile_url
                .clone()
                .map(|url| crate::http::MapTiles {
                    url,
                    attribution: settings.http.map_tile_attribution.clone(),
                }),
        }),
    }
}

fn at_least_100ms(d: Duration) -> Duration {
    d.max(Duration::from_millis(100))
}

/// What a change notification tells the loop.
enum Change {
    /// Renamed into place: complete now.
    Renamed(PathBuf),
    /// Data written: open for writing until closed.
    Written(PathBuf),
    /// Closed after writing.
    Closed(PathBuf),
    /// Anything else: worth a look once it settles.
    Touched,
}

/// Change notifications, where the platform gives them. Without a watcher (some
/// network filesystems) the periodic rescan still finds everything.
fn watch(dir: &Path, events: mpsc::UnboundedSender<Change>) -> Option<notify::RecommendedWatcher> {
    let root = dir.to_path_buf();
    let handler = move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        let target = match event.kind {
            EventKind::Modify(ModifyKind::Name(RenameMode::To)) => event.paths.first(),
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => event.paths.get(1),
            _ => None,
        };
        let ours = |p: &PathBuf| {
            p.strip_prefix(&root)
                .ok()
                .and_then(|rel| rel.iter().next())
                .is_some_and(|top| crate::layout::is_server_folder(&top.to_string_lossy()))
        };
        if event.paths.iter().all(ours) {
            return;
        }
        let first = event.paths.first().filter(|p| !ours(p)).cloned();
        let change = match (target, event.kind, first) {
            (Some(path), _, _) if !ours(path) => Change::Renamed(path.clone()),
            // Not a creation: a hard link putting a file back creates, and writes nothing.
            (_, EventKind::Modify(ModifyKind::Data(_)), Some(path)) => Change::Written(path),
            (_, EventKind::Access(AccessKind::Close(AccessMode::Write)), Some(path)) => {
                Change::Closed(path)
            }
            _ => Change::Touched,
        };
        let _ = events.send(change);
    };
    let watcher = notify::recommended_watcher(handler).and_then(|mut w| {
        w.watch(dir, RecursiveMode::Recursive)?;
        Ok(w)
    });
    match watcher {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(
                "no change notifications for {} ({e}); relying on rescans",
                dir.display()
            );
            None
        }
    }
}
