use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ctdata_server::commands::{self, ExportArgs};
use ctdata_server::config::{Settings, EXAMPLE_CONFIG};
use ctdata_server::credentials;
use ctdata_server::db::TokenChoice;
use ctdata_server::ingest::Status;

/// CTData server: collects field batches from the CTData drop directory, over HTTP(S)
/// over FTP(S), and from remote FTP sites and shares into one consolidated database (embedded SQLite by default, PostgreSQL in production).
#[derive(Parser)]
#[command(name = "ctdata-server", version)]
struct Cli {
    /// Configuration file (TOML). Default: ./ctdata.toml when it exists. Environment
    /// variables CTDATA__SECTION__KEY override it.
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Watch the drop directory and serve the HTTP API on http.bind (and FTP/FTPS on
    /// ftp.bind when ftp.enabled), ingesting every batch that arrives, and pull sources
    /// that have a poll_every schedule, until SIGTERM or Ctrl-C.
    ///
    /// Once it listens and watches, it prints one line on standard output for a
    /// supervisor or script to read (logs go to standard error):
    /// `ctdata-server: ready http=127.0.0.1:8080 ftp=127.0.0.1:2121`, with `https=`
    /// when the API serves TLS and `ftp=` only when FTP is on. With port 0 in http.bind
    /// or ftp.bind it names the port the system chose.
    Serve,
    /// Apply database migrations and exit (serve also does this at start).
    Migrate,
    /// Ingest now, for a scheduled task. With no PATH: one pass over the drop directory
    /// (claim, ingest, archive). With PATHs: ingest those files or folders in place;
    /// FIFOs, sockets, devices and symlink loops are skipped with the reason.
    /// Exit code 2 when any file was rejected.
    Ingest {
        /// Files or folders to ingest in place.
        paths: Vec<PathBuf>,
        /// Device for files that do not name one (CSV, GeoJSON).
        #[arg(long, value_name = "NAME")]
        device: Option<String>,
        /// Print each receipt as one line of JSON (the receipt an HTTP upload answers
        /// with) instead of a line of text.
        #[arg(long)]
        json: bool,
    },
    /// Pull from the remote sources ([[sources]] in the configuration: FTP, FTPS or a
    /// mounted share) now, ingest what is new, and report per source what was found,
    /// fetched, ingested, duplicate and rejected, and any error with its step and cause.
    /// Exit code 1 when any source reported an error.
    Download {
        /// Only this source.
        #[arg(long, value_name = "NAME")]
        source: Option<String>,
        /// Print the report as JSON (the same document as POST /api/v1/admin/download).
        #[arg(long)]
        json: bool,
    },
    /// Export sightings in cursor order. The next cursor is printed on stderr (and
    /// written to --cursor-file); pass it as --since to get only what arrived later.
    /// On a terminal, the rows written so far and the rate are shown on stderr.
    Export(ExportArgs),
    /// Export the track points of CyberTracker and SMART devices: a GeoJSON LineString
    /// per device and UTC day, or CSV with one row per point.
    Tracks {
        #[arg(long, value_enum, default_value = "geojson")]
        format: ctdata_server::tracks::TrackFormat,
        /// Only this device's track.
        #[arg(long, value_name = "NAME")]
        device: Option<String>,
        /// Write here (complete or not at all) instead of stdout.
        #[arg(long, short, value_name = "FILE")]
        output: Option<std::path::PathBuf>,
    },
    /// Export SMART patrols as CSV: one row per patrol with start, end, distance along
    /// its track (metres, pauses left out) and observation count.
    Patrols {
        /// Write here (complete or not at all) instead of stdout.
        #[arg(long, short, value_name = "FILE")]
        output: Option<std::path::PathBuf>,
    },
    /// Field devices and their tokens.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Administrator accounts and API tokens.
    #[command(subcommand)]
    Admin(AdminCommand),
    /// Print a commented example configuration with every default.
    DefaultConfig,
    /// OpenRosa submissions (ODK Collect, KoboCollect, the CyberTracker app).
    #[command(subcommand)]
    Openrosa(OpenrosaCommand),
}

#[derive(Subcommand)]
enum OpenrosaCommand {
    /// Map every current (not edited-away) submission again from its kept XML with the
    /// [[openrosa.forms]] mappings as configured now. Where the sightings differ, each
    /// changed one is replaced by a new version (same id, same attachments; the old row
    /// is kept in sighting_versions and an incremental export hands the new one out
    /// again), one transaction per submission; running it again changes nothing.
    /// Prints submissions read, sightings changed and unchanged, and each submission
    /// that failed with the reason (its sightings stay as they were). Exit code 2 when
    /// any submission failed.
    Remap {
        /// Only submissions of this form id (the root element's id attribute).
        #[arg(long, value_name = "FORM_ID")]
        form: Option<String>,
        /// Report what would change without writing anything.
        #[arg(long)]
        dry_run: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum DeviceCommand {
    /// Register a device and print its secret token, once: only a hash is kept.
    Add {
        name: String,
        /// Let this device (a station PC that handhelds are docked at) deliver batches
        /// recorded by these devices under their own names: names separated by
        /// commas, or '*' for any device
        #[arg(long, value_name = "NAMES")]
        relay_for: Option<String>,
    },
    /// Set which devices a device may relay for (send on sync), or --none.
    Relay {
        name: String,
        /// Device names separated by commas, or '*' for any device
        #[arg(long = "for", value_name = "NAMES", required_unless_present = "none")]
        relay_for: Option<String>,
        /// Relay for nobody
        #[arg(long, conflicts_with = "relay_for")]
        none: bool,
    },
    /// Devices with when they were created and last seen, batches, sightings, state.
    List,
    /// Give a device a new token (printed once); the old one stops working at once.
    Rotate { name: String },
    /// Revoke a device's token; its data stays.
    Revoke { name: String },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Add an administrator. The password is read from standard input (first line) when
    /// it is not a terminal, else prompted for twice; at least 10 characters.
    Add { name: String },
    /// Administrators, when they were created, and their active API tokens.
    List,
    /// Remove an administrator, with its API tokens and dashboard sign-ins.
    Remove { name: String },
    /// Set a new password (read like `admin add`); the administrator's dashboard
    /// sign-ins end.
    Passwd { name: String },
    /// Create an API token for scripts and print it, once. With --list, --revoke or
    /// --all, manage the existing ones instead.
    Token {
        name: String,
        /// List the administrator's tokens (their first characters, never the rest).
        #[arg(long, conflicts_with_all = ["revoke", "all"])]
        list: bool,
        /// Revoke the one active token that starts with TOKEN_PREFIX (as listed, or
        /// the whole token).
        #[arg(long, value_name = "TOKEN_PREFIX", conflicts_with = "all")]
        revoke: Option<String>,
        /// Revoke all of the administrator's active tokens.
        #[arg(long)]
        all: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::DefaultConfig = cli.command {
        print!("{EXAMPLE_CONFIG}");
        return ExitCode::SUCCESS;
    }
    // The FTP client traces its commands, PASS and the password included: never
    // below info, whatever CTDATA_LOG asks for.
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("CTDATA_LOG")
        .unwrap_or_else(|_| "info,sqlx=warn".into())
        .add_directive("suppaftp=info".parse().expect("a valid directive"));
    // libunftp instruments every command with an info span that formats its whole
    // session: unreadable, and slow enough to halve FTP throughput. Its warnings stay.
    if !std::env::var("CTDATA_LOG").is_ok_and(|v| v.contains("libunftp")) {
        filter = filter.add_directive("libunftp=warn".parse().expect("a valid directive"));
    }
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(ctdata_server::hygiene::EscapedStderr { ansi })
        .with_ansi(ansi)
        .init();
    ctdata_server::hygiene::private_files();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(cli.config.as_deref())?;
    match cli.command {
        Command::Serve => {
            ctdata_server::serve::run(settings, shutdown_signal()).await?;
        }
        Command::Migrate => {
            ctdata_server::serve::open(&settings)
                .await?
                .db
                .close()
                .await;
            eprintln!("migrations applied");
        }
        Command::Ingest {
            paths,
            device,
            json,
        } => {
            let report = commands::ingest(&settings, &paths, device.as_deref()).await?;
            for r in &report.receipts {
                match json {
                    true => println!("{}", serde_json::to_string(r)?),
                    false => println!("{}", commands::describe(r)),
                }
            }
            for (path, why) in &report.skipped {
                println!("skipped   {}: {why}", path.display());
            }
            let rejected = report.count(Status::Rejected);
            eprintln!(
                "{} file(s): {} rejected, {} still being written (left for the next run)",
                report.receipts.len(),
                rejected,
                report.waiting
            );
            if rejected > 0 {
                return Ok(ExitCode::from(2));
            }
        }
        Command::Download { source, json } => {
            let ingestor = ctdata_server::serve::open(&settings).await?;
            let puller = ctdata_server::sources::Puller::new(
                settings.sources.clone(),
                &settings.ingest.drop_dir,
                ingestor.clone(),
            );
            let report = puller.download(source.as_deref(), "cli").await;
            ingestor.db.close().await;
            let report = report?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", ctdata_server::sources::describe(&report));
            }
            if !report.ok {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Export(args) => {
            let summary = commands::export(&settings, args).await?;
            eprintln!(
                "exported {} sightings; next cursor: {}",
                summary.rows, summary.next_cursor
            );
        }
        Command::Tracks {
            format,
            device,
            output,
        } => {
            let db = ctdata_server::serve::open(&settings).await?.db;
            let chunks = ctdata_server::tracks::track_chunks(&db, format, device);
            commands::write_chunks(output.as_deref(), chunks).await?;
        }
        Command::Patrols { output } => {
            let db = ctdata_server::serve::open(&settings).await?.db;
            let csv = ctdata_server::tracks::PatrolFormat::Csv;
            let chunks = ctdata_server::tracks::patrol_chunks(&db, csv);
            commands::write_chunks(output.as_deref(), chunks).await?;
        }
        Command::Device(cmd) => device(&settings, cmd).await?,
        Command::Admin(cmd) => admin(&settings, cmd).await?,
        Command::Openrosa(OpenrosaCommand::Remap {
            form,
            dry_run,
            json,
        }) => {
            let db = ctdata_server::serve::open(&settings).await?.db;
            let report =
                ctdata_server::openrosa_remap::remap(&settings, &db, form.as_deref(), dry_run)
                    .await;
            db.close().await;
            let report = report?;
            match json {
                true => println!("{}", serde_json::to_string_pretty(&report)?),
                false => print!("{}", ctdata_server::openrosa_remap::describe(&report)),
            }
            if !report.failed.is_empty() {
                return Ok(ExitCode::from(2));
            }
        }
        Command::DefaultConfig => unreachable!("handled before the runtime starts"),
    }
    Ok(ExitCode::SUCCESS)
}

async fn device(settings: &Settings, cmd: DeviceCommand) -> anyhow::Result<()> {
    let db = ctdata_server::serve::open(settings).await?.db;
    match cmd {
        DeviceCommand::Add { name, relay_for } => {
            let rule = relay_for
                .as_deref()
                .map(ctdata_server::relay::parse_rule)
                .transpose()?;
            let token = credentials::add_device(&db, &name).await?;
            if let Some(rule) = &rule {
                db.set_relay(&name, Some(rule)).await?;
                eprintln!("device {name} may relay for: {rule}");
            }
            eprintln!("device {name} registered; its token (shown only now):");
            println!("{token}");
        }
        DeviceCommand::Relay {
            name,
            relay_for,
            none: _,
        } => {
            let rule = relay_for
                .as_deref()
                .map(ctdata_server::relay::parse_rule)
                .transpose()?;
            match db.set_relay(&name, rule.as_deref()).await? {
                ctdata_server::db::Change::Done => match rule {
                    Some(rule) => eprintln!("device {name} may relay for: {rule}"),
                    None => eprintln!("device {name} relays for nobody"),
                },
                _ => anyhow::bail!("no device {name}: `ctdata-server device add {name}` first"),
            }
        }
        DeviceCommand::List => print!("{}", credentials::device_table(&db.list_devices().await?)),
        DeviceCommand::Rotate { name } => {
            let token = credentials::rotate_device(&db, &name).await?;
            eprintln!("device {name} has a new token; the old one no longer works:");
            println!("{token}");
        }
        DeviceCommand::Revoke { name } => {
            credentials::revoke_device(&db, &name).await?;
            eprintln!("device {name} revoked");
        }
    }
    db.close().await;
    Ok(())
}

async fn admin(settings: &Settings, cmd: AdminCommand) -> anyhow::Result<()> {
    let db = ctdata_server::serve::open(settings).await?.db;
    match cmd {
        AdminCommand::Add { name } => {
            let password = credentials::read_new_password()?;
            credentials::add_admin(&db, &name, &password).await?;
            eprintln!("administrator {name} added");
        }
        AdminCommand::List => print!("{}", credentials::admin_table(&db.list_admins().await?)),
        AdminCommand::Remove { name } => {
            credentials::remove_admin(&db, &name).await?;
            eprintln!("administrator {name} removed, with its API tokens and sign-ins");
        }
        AdminCommand::Passwd { name } => {
            let password = credentials::read_new_password()?;
            credentials::set_admin_password(&db, &name, &password, None).await?;
            eprintln!("administrator {name} has a new password; its dashboard sign-ins ended");
        }
        AdminCommand::Token {
            name, list: true, ..
        } => print!(
            "{}",
            credentials::token_table(&credentials::admin_tokens(&db, &name).await?)
        ),
        AdminCommand::Token {
            name, revoke, all, ..
        } if all || revoke.is_some() => {
            let which = match revoke {
                Some(prefix) => TokenChoice::Prefix(credentials::token_prefix(&prefix).to_string()),
                None => TokenChoice::All,
            };
            let n = credentials::revoke_admin_tokens(&db, &name, &which).await?;
            eprintln!("{n} API token(s) of {name} revoked");
        }
        AdminCommand::Token { name, .. } => {
            let token = credentials::admin_token(&db, &name).await?;
            eprintln!("API token for {name} (shown only now):");
            println!("{token}");
        }
    }
    db.close().await;
    Ok(())
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutdown requested: finishing the current file");
}
