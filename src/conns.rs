//! The open connections of a listener (NFS, admin), for the limits taken at
//! accept: how many each client address holds, and which has been idle longest, to be closed for a newcomer when
//! the gateway (or that client) is at its limit. A client whose connection is closed
//! while idle reconnects when it next needs one; a refused newcomer would get no
//! service at all, so an idle slot is worth less than a new connection.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

struct Entry {
    ip: IpAddr,
    /// Since when no call has run and nothing has arrived; `None` while busy.
    idle_since: Option<Instant>,
    close: CancellationToken,
}

#[derive(Default)]
pub struct Registry {
    conns: Mutex<HashMap<u64, Entry>>,
    next: AtomicU64,
}

/// A connection's place in the registry, given up when dropped.
pub struct Registered {
    registry: Arc<Registry>,
    id: u64,
    /// Cancelled when the connection is shed.
    pub close: CancellationToken,
}

impl Registry {
    pub fn register(self: &Arc<Self>, ip: IpAddr) -> Registered {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let close = CancellationToken::new();
        self.conns.lock().insert(
            id,
            Entry {
                ip,
                // Nothing received yet: a connection that never sends is idle.
                idle_since: Some(Instant::now()),
                close: close.clone(),
            },
        );
        Registered {
            registry: self.clone(),
            id,
            close,
        }
    }

    /// Connections `ip` holds.
    pub fn count(&self, ip: IpAddr) -> usize {
        self.conns.lock().values().filter(|e| e.ip == ip).count()
    }

    /// Connections open.
    pub fn total(&self) -> usize {
        self.conns.lock().len()
    }

    /// Closes the connection idle the longest (of `ip`'s, when given). False when
    /// none is idle.
    pub fn shed_oldest_idle(&self, ip: Option<IpAddr>) -> bool {
        let conns = self.conns.lock();
        let oldest = conns
            .values()
            .filter(|e| ip.is_none_or(|ip| e.ip == ip) && !e.close.is_cancelled())
            .filter_map(|e| e.idle_since.map(|t| (t, e)))
            .min_by_key(|(t, _)| *t);
        match oldest {
            Some((_, e)) => {
                e.close.cancel();
                true
            }
            None => false,
        }
    }
}

impl Registered {
    /// The connection is idle (no call running, waiting for the client) or not.
    pub fn set_idle(&self, idle: bool) {
        if let Some(e) = self.registry.conns.lock().get_mut(&self.id) {
            match (idle, e.idle_since) {
                (true, None) => e.idle_since = Some(Instant::now()),
                (false, Some(_)) => e.idle_since = None,
                _ => {}
            }
        }
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.registry.conns.lock().remove(&self.id);
    }
}
