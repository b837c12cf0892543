//! Concurrency shared fairly: uploads have their own slots and a per-device limit, so
//! one device cannot take every upload slot and no upload can delay a sign-in or a
//! dashboard page, which draw on slots of their own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::AppState;

/// The one route whose requests draw on [`UploadSlots`] instead of the general slots.
const UPLOAD_PATH: &str = "/api/v1/batches";

/// Resumable uploads: their `PATCH` requests take upload slots in the handler too.
const RESUMABLE_PATH: &str = "/api/v1/uploads/";

/// Devices remembered at most before idle entries are pruned.
const PRUNE_ABOVE: usize = 1024;

/// Slots for uploads: `per_device` for each device, `total` over all of them.
pub struct UploadSlots {
    total: Arc<Semaphore>,
    per_device: usize,
    devices: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// Held while an upload is received and ingested.
pub struct UploadPermit {
    _device: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
}

impl UploadSlots {
    pub fn new(total: usize, per_device: usize) -> UploadSlots {
        UploadSlots {
            total: Arc::new(Semaphore::new(total.max(1))),
            per_device: per_device.max(1),
            devices: Mutex::default(),
        }
    }

    /// Waits for one of `device`'s slots, then for one of all uploads'. In that order,
    /// a device over its share waits without holding a slot another device could use.
    pub async fn acquire(&self, device: &str) -> anyhow::Result<UploadPermit> {
        let mine = {
            let mut devices = self.devices.lock().unwrap_or_else(|e| e.into_inner());
            if devices.len() > PRUNE_ABOVE {
                let full = self.per_device;
                devices.retain(|_, s| Arc::strong_count(s) > 1 || s.available_permits() < full);
            }
            devices
                .entry(device.to_string())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_device)))
                .clone()
        };
        let device_permit = mine.acquire_owned().await?;
        let total = self.total.clone().acquire_owned().await?;
        Ok(UploadPermit {
            _device: device_permit,
            _total: total,
        })
    }
}

/// Middleware: every request but an upload takes one of the general slots while its
/// handler runs (uploads take theirs in the handler, once the device is known).
pub async fn general_slots(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let resumable = req.method() == Method::PATCH && path.starts_with(RESUMABLE_PATH);
    if resumable
        || req.method() == Method::POST && (path == UPLOAD_PATH || path.starts_with("/openrosa/"))
    {
        return next.run(req).await;
    }
    let _permit = state.request_slots.clone().acquire_owned().await;
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_busy_device_waits_while_another_device_uploads() {
        let slots = UploadSlots::new(3, 2);
        let _a1 = slots.acquire("a").await.unwrap();
        let _a2 = slots.acquire("a").await.unwrap();
        let third = tokio::time::timeout(Duration::from_millis(50), slots.acquire("a")).await;
        assert!(third.is_err(), "a third upload of device a must wait");
        // Device a's waiting upload holds no total slot: b still gets the last one.
        let b = tokio::time::timeout(Duration::from_secs(5), slots.acquire("b")).await;
        assert!(b.is_ok());
    }
}
