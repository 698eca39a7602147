//! Group commit for the metadata store: requests that must be durable before their
//! reply (COMMIT, FILE_SYNC WRITE, CREATE, MKDIR, REMOVE, RENAME, SETATTR, ...) share
//! fdatasyncs of the metadata journal (`crate::journal`) instead of paying one each.
//!
//! The rule: a caller's change is applied before it asks, and it is answered once a
//! flush that *started after it asked* has finished. One flush runs at a time; the
//! callers that arrive while it runs wait for it, then one of them starts the next
//! flush for all of them. So N concurrent requests cost about two flushes, not N, and
//! a request never waits behind more than the flush in progress and its own. No lock
//! is held while a flush runs: this module's own lock is taken only to take a ticket
//! and to record a finished flush.

use parking_lot::{Condvar, Mutex};

use crate::error::Result;

#[derive(Default)]
pub(crate) struct GroupFlush {
    state: Mutex<State>,
    finished: Condvar,
}

#[derive(Default)]
struct State {
    /// Tickets handed out so far.
    issued: u64,
    /// Every ticket up to here is covered by a finished flush.
    durable: u64,
    /// A flush is running.
    running: bool,
    /// Flushes run, and callers they answered (for tests and metrics).
    flushes: u64,
    answered: u64,
}

impl GroupFlush {
    /// Returns once a run of `flush` that started after this call has succeeded; the
    /// caller's error when the run that covers it fails.
    pub(crate) fn durable(&self, flush: impl Fn() -> Result<()>) -> Result<()> {
        let mut st = self.state.lock();
        st.issued += 1;
        let ticket = st.issued;
        loop {
            if st.durable >= ticket {
                st.answered += 1;
                return Ok(());
            }
            if st.running {
                self.finished.wait(&mut st);
                continue;
            }
            // Lead the next flush: it covers every ticket issued so far.
            st.running = true;
            let upto = st.issued;
            drop(st);
            let result = flush();
            st = self.state.lock();
            st.running = false;
            st.flushes += 1;
            if result.is_ok() {
                st.durable = st.durable.max(upto);
            }
            self.finished.notify_all();
            // On failure, the waiters it would have answered lead their own attempt.
            result?;
        }
    }

    /// (flushes run, requests answered by them) since the cache opened.
    pub(crate) fn counts(&self) -> (u64, u64) {
        let st = self.state.lock();
        (st.flushes, st.answered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    /// 32 threads each apply a change (a counter) then ask for durability; each is
    /// answered only by a flush that saw its change, and flushes are shared.
    #[test]
    fn a_request_is_answered_by_a_flush_that_saw_its_change() {
        let g = Arc::new(GroupFlush::default());
        let applied = Arc::new(AtomicU64::new(0));
        let flushed = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..32)
            .map(|_| {
                let (g, applied, flushed) = (g.clone(), applied.clone(), flushed.clone());
                std::thread::spawn(move || {
                    for _ in 0..20 {
                        let mine = applied.fetch_add(1, Ordering::SeqCst) + 1;
                        g.durable(|| {
                            // What this flush makes durable: every change applied now.
                            let seen = applied.load(Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(2));
                            flushed.fetch_max(seen, Ordering::SeqCst);
                            Ok(())
                        })
                        .unwrap();
                        assert!(
                            flushed.load(Ordering::SeqCst) >= mine,
                            "answered before its change was flushed"
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let (flushes, answered) = g.counts();
        assert_eq!(answered, 640);
        assert!(flushes < 640 / 2, "{flushes} flushes for 640 requests");
    }

    /// A failed flush fails the request that led it; the others try again.
    #[test]
    fn a_failed_flush_is_reported_and_the_next_one_is_tried() {
        let g = GroupFlush::default();
        let fail = AtomicU64::new(1);
        let flush = || {
            if fail.fetch_sub(1, Ordering::SeqCst) == 1 {
                Err(crate::error::CacheError::Io(std::io::Error::other("disk")))
            } else {
                Ok(())
            }
        };
        assert!(g.durable(flush).is_err());
        assert!(g.durable(flush).is_ok());
    }
}
