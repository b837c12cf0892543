//! Background auto-send: a timer that sends when there is something to send, backs
//! off (capped, exponential, with jitter) while sends fail, never runs two sends at
//! once, and stops cleanly on SIGTERM or Ctrl-C.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::Utc;
use tokio::sync::Notify;
use tokio::time::{Instant, MissedTickBehavior};

use crate::config::Config;
use crate::home::{list_files, Home, OUTBOX};
use crate::send::{self, Options};
use crate::state::{self, AutosendState, State};
use crate::{outbox, pull, AutosendArgs};

pub const LOCK: &str = ".autosend.lock";
/// How often a waiting autosend looks whether sync is back on (a file read).
const SYNC_OFF_LOOK: Duration = Duration::from_millis(500);

pub async fn run(home: &Home, a: AutosendArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(home)?;
    home.create()?;
    let Some(_running) = home.try_lock(LOCK)? else {
        bail!("autosend is already running for {}", home.root.display());
    };
    let every = a.every.0;
    let retry_min = a.retry_min.0;
    let retry_max = a.retry_max.map_or(every, |d| d.0).max(retry_min);
    let pull = (a.pull || a.pull_into.is_some())
        .then(|| pull::Target::new(&a.pull_format, a.pull_into.clone()))
        .transpose()?;
    let stop = Arc::new(AtomicBool::new(false));
    let woken = Arc::new(Notify::new());
    tokio::spawn(stop_on_signal(stop.clone(), woken.clone()));

    home.log(&format!("autosend started: every {every:?}"));
    eprintln!("autosend: every {every:?}; stop with Ctrl-C or SIGTERM");
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut failures = 0u32;
    let mut pauses = retry_pauses(retry_min, retry_max);
    let mut retry_at: Option<Instant> = None;
    loop {
        tokio::select! {
            () = woken.notified() => {}
            _ = tick.tick(), if retry_at.is_none() => {}
            () = tokio::time::sleep_until(retry_at.unwrap_or_else(Instant::now)), if retry_at.is_some() => {}
        }
        if stop.load(Ordering::SeqCst) {
            break;
        }
        if state::read(home)?.sync_off {
            if !wait_while_sync_off(home, &stop).await? {
                break;
            }
            tick.reset_immediately();
            continue;
        }
        if let Some(target) = &pull {
            autopull(home, &config, target).await;
        }
        if !something_to_send(home)? {
            retry_at = None;
            failures = 0;
            pauses = retry_pauses(retry_min, retry_max);
            save(home, every, failures, None)?;
            continue;
        }
        let opts = Options {
            retries: 0,
            retry_delay: retry_min,
            stop: stop.clone(),
        };
        let line = match send::send(home, &config, &opts).await {
            Ok(r) if r.pending == 0 => {
                failures = 0;
                pauses = retry_pauses(retry_min, retry_max);
                retry_at = None;
                format!("autosend: {}", r.summary(&config.upload.url))
            }
            outcome => {
                failures = failures.saturating_add(1);
                let pause = pauses.next().unwrap_or(retry_max);
                retry_at = Some(Instant::now() + pause);
                let why = match outcome {
                    Ok(r) => r.summary(&config.upload.url),
                    Err(e) => format!("{e:#}"),
                };
                format!(
                    "autosend: attempt failed ({failures} in a row): {why}; next try in {pause:?}"
                )
            }
        };
        home.log(&line);
        eprintln!("{line}");
        let next = retry_at.map(|at| Utc::now() + (at - Instant::now()));
        save(home, every, failures, next)?;
    }
    let mut locked = state::lock(home)?;
    locked.state.autosend = None;
    locked.save()?;
    home.log("autosend stopped");
    eprintln!("autosend stopped");
    Ok(ExitCode::SUCCESS)
}

/// The pull on autosend's timer (`--pull`): its line goes to the log; a failed pull
/// does not touch the send's backoff and is tried again at the next look.
async fn autopull(home: &Home, config: &Config, target: &pull::Target) {
    let line = match pull::pull(home, config, target, pull::Start::Saved).await {
        Ok(line) => format!("autosend: {line}"),
        Err(e) => format!("autosend: pull failed: {e:#}"),
    };
    home.log(&line);
    eprintln!("{line}");
}

/// While sync is off for this device, autosend waits rather than exiting (a service
/// manager would only start it again and again). Says so once, and once more when sync
/// comes back on. Returns false when told to stop while waiting.
async fn wait_while_sync_off(home: &Home, stop: &AtomicBool) -> anyhow::Result<bool> {
    let line = "autosend: sync is off for this device; waiting for `ctdata sync on`";
    home.log(line);
    eprintln!("{line}");
    while state::read(home)?.sync_off {
        if stop.load(Ordering::SeqCst) {
            return Ok(false);
        }
        tokio::time::sleep(SYNC_OFF_LOOK).await;
    }
    let line = "autosend: sync is on again; sending resumes";
    home.log(line);
    eprintln!("{line}");
    Ok(!stop.load(Ordering::SeqCst))
}

fn something_to_send(home: &Home) -> anyhow::Result<bool> {
    Ok(!list_files(&home.dir(OUTBOX))?.is_empty() || !outbox::read_open(home)?.is_empty())
}

/// The pauses after failures in a row: `retry_min · 2^(n-1)`, at most `retry_max`,
/// with a random part of it (up to half) taken off so that many devices coming back
/// online do not all call at once. backon's jitter adds up to 100 %, so the policy is
/// built on halves.
fn retry_pauses(retry_min: Duration, retry_max: Duration) -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(retry_min / 2)
        .with_max_delay(retry_max / 2)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
        .map(move |pause| pause.min(retry_max))
}

fn save(
    home: &Home,
    every: Duration,
    failures: u32,
    next_attempt: Option<chrono::DateTime<Utc>>,
) -> anyhow::Result<()> {
    let mut locked = state::lock(home)?;
    locked.state.autosend = Some(AutosendState {
        every_secs: every.as_secs(),
        last_attempt: Some(Utc::now()),
        next_attempt,
        failures,
    });
    locked.save()
}

async fn stop_on_signal(stop: Arc<AtomicBool>, woken: Arc<Notify>) {
    until_stop_signal().await;
    stop.store(true, Ordering::SeqCst);
    woken.notify_one();
}

/// Returns on SIGTERM (what systemd sends) or Ctrl-C.
pub async fn until_stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// For `status`: whether autosend runs, and how it is doing.
pub fn describe(home: &Home, state: &State) -> anyhow::Result<String> {
    let running = home.try_lock(LOCK)?.is_none();
    let mut s = match (running, &state.autosend) {
        (true, Some(a)) => {
            let mut s = format!("running, every {}s", a.every_secs);
            if let Some(t) = a.last_attempt {
                s += &format!(
                    ", last looked {}",
                    t.with_timezone(&chrono::Local).format("%H:%M:%S")
                );
            }
            if a.failures > 0 {
                s += &format!(", {} failed sends in a row", a.failures);
            }
            if let Some(t) = a.next_attempt {
                s += &format!(
                    ", next try {}",
                    t.with_timezone(&chrono::Local).format("%H:%M:%S")
                );
            }
            s
        }
        (true, None) => "running".to_string(),
        (false, _) => "not running".to_string(),
    };
    if state.sync_off {
        s += " (sync is off for this device)";
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let (min, max) = (Duration::from_secs(10), Duration::from_secs(60));
        for _ in 0..100 {
            let pauses: Vec<Duration> = retry_pauses(min, max).take(30).collect();
            let first = pauses[0];
            assert!(first >= min / 2 && first <= min, "{first:?}");
            let third = pauses[2];
            assert!(third >= min * 2 && third <= min * 4, "{third:?}");
            let late = pauses[29];
            assert!(late >= max / 2 && late <= max, "{late:?}");
        }
    }
}
