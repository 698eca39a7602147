//! Keeps the `store_reachable` readiness check honest when the gateway is idle. The
//! check reports whether a share's last store request was answered; without traffic
//! that answer would go stale both ways: an outage while idle would go unnoticed, and
//! after an outage with nothing left to upload `/readyz` (and the StoreUnreachable
//! alert) would stay failed for ever. So: a share whose store has not been asked
//! anything for `IDLE_PROBES` intervals, or whose last request failed, gets one
//! `ListObjectsV2` of its prefix (max 1 key) per interval. With the default 10 s
//! interval an idle share costs about 2,900 LIST requests a day.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Gateway;
use crate::remote::ObjectStore;

/// Default probe interval (`Gateway::probe_interval`).
pub const PROBE_INTERVAL: Duration = Duration::from_secs(10);
/// A healthy share is probed after this many intervals without a store request.
const IDLE_PROBES: u32 = 3;

pub(super) async fn run(gateway: Arc<Gateway>, stop: CancellationToken) {
    let interval = gateway.probe_interval;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        for s in &gateway.shares {
            let inst = &s.instrumented;
            if inst.reachable() && inst.since_last_request() < interval * IDLE_PROBES {
                continue;
            }
            let probe = inst.list(&s.prefix, Some("/"), None, 1);
            // A probe that hangs is as good as a failed one; the store's own timeouts
            // apply too, this only bounds the loop.
            let answered = tokio::select! {
                _ = stop.cancelled() => return,
                r = tokio::time::timeout(interval.max(Duration::from_secs(5)), probe) => r.is_ok(),
            };
            if !answered {
                tracing::warn!(share = %s.config.name, "store probe timed out");
            }
        }
    }
}
