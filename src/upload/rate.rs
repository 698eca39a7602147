//! The upload rate limit: bytes sent to the store are paced on a virtual clock
//! shared by every share. A request of `n` bytes starts when the clock says the
//! earlier ones have had their time at the current rate, and moves it on by
//! `n / rate`; the transfer itself then runs at the link's speed, so a slow limit
//! never trips the store's minimum-throughput timeout. Writes into the cache are not
//! paced: only what leaves the gateway is.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use crate::config::{Rate, RateWindow};

pub struct RateLimiter {
    base: Rate,
    schedule: Vec<RateWindow>,
    /// When the next request may start.
    next: Mutex<Instant>,
}

impl RateLimiter {
    /// A limiter for `[upload] rate_limit` and `rate_schedule`; `None` when neither
    /// ever limits.
    pub fn new(base: Rate, schedule: Vec<RateWindow>) -> Option<Arc<RateLimiter>> {
        if base.0.is_none() && schedule.iter().all(|w| w.rate.0.is_none()) {
            return None;
        }
        Some(Arc::new(RateLimiter {
            base,
            schedule,
            next: Mutex::new(Instant::now()),
        }))
    }

    /// The limit now, in bytes per second (`None`: unlimited).
    pub fn current(&self) -> Option<u64> {
        let (wday, minute) = local_now();
        self.schedule
            .iter()
            .find(|w| w.applies(wday, minute))
            .map_or(self.base, |w| w.rate)
            .0
    }

    /// Waits until `n` more bytes may be sent.
    pub async fn wait(&self, n: u64) {
        let Some(rate) = self.current() else {
            return;
        };
        let start = {
            let mut next = self.next.lock();
            let start = (*next).max(Instant::now());
            *next = start + Duration::from_secs_f64(n as f64 / rate as f64);
            start
        };
        tokio::time::sleep_until(start).await;
    }
}

/// (weekday, 0 Sunday; minutes since midnight) in the gateway's local time zone.
fn local_now() -> (u8, u16) {
    // SAFETY: time(NULL) has no preconditions; localtime_r writes only into `tm`,
    // which is a plain C struct for which all-zero bytes are a valid value.
    unsafe {
        let t = libc::time(std::ptr::null_mut());
        let mut tm: libc::tm = std::mem::zeroed();
        if libc::localtime_r(&t, &mut tm).is_null() {
            return (0, 0);
        }
        (tm.tm_wday as u8, (tm.tm_hour * 60 + tm.tm_min) as u16)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paced on tokio's clock, paused: 10 requests of 1 MiB at 4 MiB/s take 2.25 s
    /// (the first starts at once), however many wait at the same time.
    #[tokio::test(start_paused = true)]
    async fn requests_are_paced_to_the_rate() {
        let l = RateLimiter::new(Rate(Some(4 << 20)), Vec::new()).unwrap();
        let t0 = Instant::now();
        let waits = (0..10).map(|_| l.wait(1 << 20));
        futures::future::join_all(waits).await;
        assert_eq!(t0.elapsed(), Duration::from_millis(2250));
        assert!(RateLimiter::new(Rate(None), Vec::new()).is_none());
    }
}
