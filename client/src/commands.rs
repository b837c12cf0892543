//! The local commands: init, record, import, seal, send, status.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use chrono::DateTime;
use ctdata_batch::Sighting;
use serde_json::{Map, Value};

use crate::config::{Config, Endpoint, Protocol, Token};
use crate::home::{list_files, Home, OUTBOX, REJECTED, SENT};
use crate::outbox::{self, Imported};
use crate::send::{self, Options};
use crate::{state, InitArgs, RecordArgs, SendArgs};

pub fn init(home: &Home, a: InitArgs) -> anyhow::Result<ExitCode> {
    let ask = std::io::stdin().is_terminal();
    let protocol = match a.protocol {
        Some(p) => p,
        None if ask => {
            let answer = prompt("Protocol (https, ftp, ftps or share)", Some("https"))?;
            <Protocol as clap::ValueEnum>::from_str(&answer, true).map_err(|_| {
                anyhow::anyhow!("unknown protocol {answer:?}: https, ftp, ftps or share")
            })?
        }
        None => bail!("--protocol is missing (https, ftp, ftps or share)"),
    };
    let example = match protocol {
        Protocol::Https => "https://ctdata.example.org:8443",
        Protocol::Ftp => "ftp://ctdata.example.org:2121/",
        Protocol::Ftps => "ftps://ctdata.example.org:2121/CTData",
        Protocol::Share => "/mnt/share/CTData",
    };
    let url = given_or_asked(a.url, ask, &format!("URL, e.g. {example}"), "--url")?;
    let device = given_or_asked(a.device, ask, "Device name, e.g. ranger-07", "--device")?;
    let mut token = a.token;
    if a.token_stdin {
        // On a terminal, without echo like the question below.
        let line = if ask {
            rpassword::prompt_password("Token: ")?
        } else {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            line
        };
        let line = line.trim();
        if line.is_empty() {
            bail!("--token-stdin: standard input held no token (its first line is empty)");
        }
        token = Some(line.to_string());
    }
    if protocol != Protocol::Share && token.is_none() && a.token_file.is_none() {
        if !ask {
            bail!(
                "--token-stdin, --token-file or --token is missing ({protocol} needs the device token or FTP password)"
            );
        }
        let question = match protocol {
            Protocol::Https => "Device token: ",
            _ => "FTP password: ",
        };
        token = Some(rpassword::prompt_password(question)?.trim().to_string());
    }
    let upload = Endpoint {
        protocol,
        url,
        user: a.user,
        token: token.map(Token::from),
        token_file: a.token_file,
        ca_file: a.ca_file.map(absolute).transpose()?,
    };
    let download = match (a.download_url, a.download_token) {
        (Some(url), token) => Some(Endpoint {
            protocol: if url.contains("://") {
                Protocol::Https
            } else {
                Protocol::Share
            },
            url,
            user: None,
            token: token.map(Token::from),
            token_file: None,
            ca_file: upload.ca_file.clone(),
        }),
        // A download token alone means: download from where we upload, as someone
        // who may read (an administrator's token), not as this device.
        (None, Some(token)) => Some(Endpoint {
            user: None,
            token: Some(Token::from(token)),
            token_file: None,
            ..upload.clone()
        }),
        (None, None) => None,
    };
    let config = Config {
        device,
        upload,
        download,
        keep_sent_days: a.keep_sent_days,
    };
    config.validate()?;
    home.create()?;
    config.save(home)?;
    println!(
        "wrote {}: device {} sends over {} to {}",
        home.config_path().display(),
        config.device,
        config.upload.protocol,
        config.upload.url
    );
    Ok(ExitCode::SUCCESS)
}

/// On a terminal, asks whether to send although sync is off; elsewhere the answer is no.
fn confirm_send_while_off() -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        return Ok(false);
    }
    let answer = prompt(
        "Sync is off for this device. Send anyway? (yes/no)",
        Some("no"),
    )?;
    Ok(matches!(answer.to_lowercase().as_str(), "y" | "yes"))
}

fn absolute(p: PathBuf) -> anyhow::Result<PathBuf> {
    Ok(std::path::absolute(&p)?)
}

fn given_or_asked(
    v: Option<String>,
    ask: bool,
    question: &str,
    flag: &str,
) -> anyhow::Result<String> {
    match v {
        Some(v) => Ok(v),
        None if ask => prompt(question, None),
        None => bail!("{flag} is missing (not a terminal, so nothing can be asked)"),
    }
}

fn prompt(question: &str, default: Option<&str>) -> anyhow::Result<String> {
    let mut out = std::io::stderr();
    match default {
        Some(d) => write!(out, "{question} [{d}]: ")?,
        None => write!(out, "{question}: ")?,
    }
    out.flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let answer = line.trim();
    match (answer.is_empty(), default) {
        (true, Some(d)) => Ok(d.to_string()),
        (true, None) => bail!("{question}: no answer given"),
        (false, _) => Ok(answer.to_string()),
    }
}

/// Loads the settings and makes sure the folders exist.
fn setup(home: &Home) -> anyhow::Result<Config> {
    let config = Config::load(home)?;
    home.create()?;
    Ok(config)
}

pub fn record(home: &Home, a: RecordArgs) -> anyhow::Result<ExitCode> {
    let config = setup(home)?;
    if !(a.lat.is_finite() && (-90.0..=90.0).contains(&a.lat)) {
        bail!("--lat {} is not a latitude: -90 to 90 degrees", a.lat);
    }
    if !(a.lon.is_finite() && (-180.0..=180.0).contains(&a.lon)) {
        bail!("--lon {} is not a longitude: -180 to 180 degrees", a.lon);
    }
    if a.count.is_some_and(|c| c < 0) {
        bail!("--count must be 0 or more");
    }
    let observed_at = match &a.at {
        Some(t) => DateTime::parse_from_rfc3339(t).with_context(|| {
            format!(
                "--at {t:?} is not an RFC 3339 time with offset, e.g. 2024-05-01T06:30:00+02:00"
            )
        })?,
        None => chrono::Local::now().fixed_offset(),
    };
    let mut attributes = Map::new();
    for kv in &a.attrs {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--attr {kv:?} must be KEY=VALUE"))?;
        let value = match serde_json::from_str::<Value>(v) {
            Ok(v @ (Value::Number(_) | Value::Bool(_))) => v,
            _ => Value::String(v.to_string()),
        };
        attributes.insert(k.to_string(), value);
    }
    let sighting = Sighting {
        id: uuid::Uuid::new_v4(),
        observed_at,
        latitude: a.lat,
        longitude: a.lon,
        altitude: None,
        accuracy: None,
        observer: a.observer,
        species: a.species,
        count: a.count,
        attributes,
    };
    let n = outbox::record(home, &config.device, &sighting)?;
    println!("recorded sighting {} ({n} in the open batch)", sighting.id);
    Ok(ExitCode::SUCCESS)
}

pub fn import(home: &Home, files: &[PathBuf], cut: outbox::Cut) -> anyhow::Result<ExitCode> {
    let config = setup(home)?;
    let mut locked = outbox::lock(home, &config.device)?;
    let mut failed = 0;
    for file in files {
        match outbox::import_cut(home, &config.device, &mut locked, file, cut) {
            Ok((Imported::New { file: batch, rows }, all)) if all.len() > 1 => println!(
                "{}: {} batches {batch} … {} ({rows} sightings)",
                file.display(),
                all.len(),
                all.last().map_or("", String::as_str)
            ),
            Ok((Imported::New { file: batch, rows }, _)) => {
                println!("{}: batch {batch} ({rows} sightings)", file.display())
            }
            Ok((Imported::Before { file: batch }, _)) => {
                println!("{}: already imported as {batch}; skipped", file.display())
            }
            Err(e) => {
                failed += 1;
                eprintln!("not imported: {e:#}");
            }
        }
    }
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub fn seal(home: &Home, cut: outbox::Cut) -> anyhow::Result<ExitCode> {
    let config = setup(home)?;
    let mut locked = outbox::lock(home, &config.device)?;
    let files = outbox::seal_cut(home, &config.device, &mut locked, cut)?;
    if files.is_empty() {
        println!("nothing to seal: the open batch is empty");
    }
    for file in files {
        let rows = outbox::batch_rows(&home.dir(OUTBOX).join(&file))?;
        println!("sealed {file} ({rows} sightings)");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn send(home: &Home, a: SendArgs) -> anyhow::Result<ExitCode> {
    let config = setup(home)?;
    if state::read(home)?.sync_off && !a.force && !confirm_send_while_off()? {
        bail!(
            "sync is off for this device: nothing sent. `ctdata send --force` sends anyway, \
             `ctdata sync on` turns sync back on"
        );
    }
    let opts = Options {
        retries: a.retries,
        retry_delay: a.retry_delay.0,
        stop: Arc::default(),
    };
    let report = send::send(home, &config, &opts).await?;
    println!("{}", report.summary(&config.upload.url));
    Ok(if report.pending == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub fn status(home: &Home) -> anyhow::Result<ExitCode> {
    let config = Config::load(home)?;
    let state = state::read(home)?;
    println!("home: {}", home.root.display());
    println!(
        "device {} sends over {} to {}",
        config.device, config.upload.protocol, config.upload.url
    );
    let open = outbox::read_open(home)?.len();
    let queued = list_files(&home.dir(OUTBOX))?;
    let rows: u64 = queued
        .iter()
        .map(|f| outbox::rows_in(&home.dir(OUTBOX).join(f)))
        .sum();
    println!("open batch: {open} sightings (sealed by `ctdata seal` or `ctdata send`)");
    let batches = if queued.len() == 1 {
        "batch"
    } else {
        "batches"
    };
    println!(
        "pending: {} {batches}, {rows} sightings in outbox/",
        queued.len()
    );
    for f in &queued {
        let path = home.dir(OUTBOX).join(f);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        let rows = outbox::rows_in(&path);
        match crate::resume::remembered(&path) {
            Some(r) => println!(
                "  {f}: {rows} sightings, {size} bytes; resumable at {} of {} bytes (gzip)",
                r.offset, r.length
            ),
            None => println!("  {f}: {rows} sightings, {size} bytes; waiting"),
        }
    }
    let sent: Vec<String> = list_files(&home.dir(SENT))?
        .into_iter()
        .filter(|f| !f.ends_with(".receipt.json"))
        .collect();
    println!("sent: {} batches kept in sent/", sent.len());
    if config.upload.protocol == Protocol::Share && !sent.is_empty() {
        let said = crate::share::server_receipts(&config.upload, &config.device, &sent);
        println!("server receipts for them: {said}");
    }
    for f in list_files(&home.dir(REJECTED))? {
        if let Some(batch) = f.strip_suffix(".reason.txt") {
            let reason = std::fs::read_to_string(home.dir(REJECTED).join(&f)).unwrap_or_default();
            println!("rejected: {batch}: {}", reason.trim());
        }
    }
    let when = |e: &Option<state::Event>| match e {
        Some(e) => format!(
            "{} — {}",
            e.at.with_timezone(&chrono::Local)
                .format("%Y-%m-%d %H:%M:%S"),
            e.message
        ),
        None => "never".to_string(),
    };
    println!("last successful send: {}", when(&state.last_success));
    println!("last error: {}", when(&state.last_error));
    println!("autosend: {}", crate::autosend::describe(home, &state)?);
    Ok(ExitCode::SUCCESS)
}
