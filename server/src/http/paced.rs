//! Request bodies held to a pace: one that stalls, or trickles slower than the minimum
//! rate on average, ends in an error instead of holding its slot and connection. Every
//! body gets it (uploads and the dashboard's forms alike), since every handler that
//! reads a body would otherwise wait on it without limit.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use hyper::body::{Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// Before the average counts: TCP slow start, a radio waking up, a sender that has to
/// read its file first.
pub const RATE_GRACE: Duration = Duration::from_secs(10);

/// Why a body was cut off.
#[derive(Debug, thiserror::Error)]
pub enum TooSlow {
    #[error("the request body sent nothing for {0} s")]
    Stalled(u64),
    #[error("the request body arrived slower than {0} bytes/s on average")]
    Slow(u64),
}

impl TooSlow {
    /// The `TooSlow` somewhere in `e`'s chain of causes, if any.
    pub fn find<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a TooSlow> {
        let mut cause = Some(e);
        while let Some(c) = cause {
            if let Some(slow) = c.downcast_ref::<TooSlow>() {
                return Some(slow);
            }
            cause = c.source();
        }
        None
    }
}

pub struct PacedBody {
    inner: Body,
    min_rate: u64,
    idle: Duration,
    grace: Duration,
    /// The first poll: a handler that waits for a slot before reading is not charged
    /// for the wait.
    started: Option<Instant>,
    last: Instant,
    received: u64,
    timer: Pin<Box<Sleep>>,
}

impl PacedBody {
    pub fn new(inner: Body, min_rate: u64, idle: Duration) -> PacedBody {
        let now = Instant::now();
        PacedBody {
            inner,
            min_rate,
            idle,
            grace: RATE_GRACE,
            started: None,
            last: now,
            received: 0,
            timer: Box::pin(tokio::time::sleep_until(now + idle)),
        }
    }

    fn stall_deadline(&self) -> Instant {
        self.last + self.idle
    }

    /// When `received` bytes should have arrived at the minimum rate.
    fn rate_deadline(&self, started: Instant) -> Option<Instant> {
        (self.min_rate > 0).then(|| {
            let secs = self.received as f64 / self.min_rate as f64;
            started + self.grace + Duration::from_secs_f64(secs.min(1e9))
        })
    }

    fn rearm(&mut self, started: Instant) {
        let stall = self.stall_deadline();
        let deadline = self.rate_deadline(started).map_or(stall, |r| r.min(stall));
        self.timer.as_mut().reset(deadline);
    }
}

impl hyper::body::Body for PacedBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let started = match this.started {
            Some(s) => s,
            None => {
                let now = Instant::now();
                this.started = Some(now);
                this.last = now;
                this.rearm(now);
                now
            }
        };
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                }
                this.last = Instant::now();
                this.rearm(started);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(()) => {
                    let why = if Instant::now() >= this.stall_deadline() {
                        TooSlow::Stalled(this.idle.as_secs())
                    } else {
                        TooSlow::Slow(this.min_rate)
                    };
                    Poll::Ready(Some(Err(why.into())))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn a_trickle_is_cut_off_and_a_steady_body_is_not() {
        let (mut tx, rx) =
            futures::channel::mpsc::channel::<Result<Frame<Bytes>, std::io::Error>>(4);
        let body = Body::new(http_body_util::StreamBody::new(rx));
        let mut paced = PacedBody::new(body, 1000, Duration::from_secs(60));
        paced.grace = Duration::from_millis(300);
        // A byte every 20 ms against a minimum of 1000 bytes/s: fine during the grace,
        // then cut, though it never stalls.
        let sender = tokio::spawn(async move {
            use futures::SinkExt;
            for _ in 0..1000 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let byte = Frame::data(Bytes::from_static(b"x"));
                if tx.send(Ok(byte)).await.is_err() {
                    return;
                }
            }
        });
        let started = Instant::now();
        let err = loop {
            match paced.frame().await {
                Some(Ok(_)) => continue,
                Some(Err(e)) => break e,
                None => panic!("the trickle ended without being cut off"),
            }
        };
        assert!(
            matches!(TooSlow::find(err.as_ref()), Some(TooSlow::Slow(1000))),
            "{err}"
        );
        assert!(started.elapsed() >= Duration::from_millis(300));
        sender.abort();

        let steady = Body::from(vec![b'y'; 10_000]);
        let collected = PacedBody::new(steady, 100, Duration::from_secs(60))
            .collect()
            .await;
        assert_eq!(collected.unwrap().to_bytes().len(), 10_000);
    }
}
