//! Sources with `poll_every` are pulled by `serve` on that schedule.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;

use super::Puller;

/// One task per scheduled source. A pull runs to its end before the next tick is
/// looked at, so one source is never pulled twice at once; a pull longer than the
/// period skips the ticks it missed. `stop` set to true ends each task after the file
/// in hand.
pub fn spawn_schedules(
    puller: Arc<Puller>,
    stopping: watch::Receiver<bool>,
    stop: Arc<AtomicBool>,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    for source in puller.sources().iter().cloned() {
        let Ok(Some(every)) = source.poll() else {
            continue;
        };
        let (puller, mut stopping, stop) = (puller.clone(), stopping.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
            tracing::info!(source = source.name, every = ?every, "pulling on a schedule");
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopping.wait_for(|s| *s) => break,
                }
                puller.pull(&source, "schedule", &stop).await;
            }
        }));
    }
    tasks
}
