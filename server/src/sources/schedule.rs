//! Sources with `poll_every` are pulled by `serve` on that schedule.

use std::sync::Arc;

use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::Puller;
use crate::replica::Replica;

/// One task per scheduled source. A pull runs to its end before the next tick is
/// looked at, so one source is never pulled twice at once; a pull longer than the
/// period skips the ticks it missed. `stop` cancelled ends each task after the file
/// in hand.
///
/// With several replicas on one database (`replica` given), each tick is run by the
/// one replica that records it first in the database; the others skip it.
pub fn spawn_schedules(
    puller: Arc<Puller>,
    stop: CancellationToken,
    replica: Option<Replica>,
) -> Vec<JoinHandle<()>> {
    let mut tasks = Vec::new();
    for source in puller.sources().iter().cloned() {
        let Some(every) = source.poll_every else {
            continue;
        };
        let (puller, stop, replica) = (puller.clone(), stop.clone(), replica.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
            tracing::info!(source = source.name, every = ?every, "pulling on a schedule");
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => break,
                }
                if let Some(replica) = &replica {
                    let job = format!("pull:{}", source.name);
                    match replica.claim_run(puller.db(), &job, every).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::debug!(
                                source = source.name,
                                "pulled by another replica this time"
                            );
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(
                                source = source.name,
                                "cannot agree with the other replicas on this pull; skipped: {e:#}"
                            );
                            continue;
                        }
                    }
                }
                puller.pull(&source, "schedule", &stop).await;
            }
        }));
    }
    tasks
}
