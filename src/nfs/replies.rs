//! Memory for replies waiting to be written: a gateway-wide budget, and a share of it
//! per client address. A call takes what its reply may need (a READ its count, a
//! READDIR its maxcount, anything else a little) before it runs and gives it back
//! once the reply is on the wire. A client that stops reading its replies soon holds
//! its whole share: its connections stop being read (TCP pushes back on it), other
//! clients keep the rest of the budget, and its writers give up after the write
//! timeout, closing its connections.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use prometheus::IntGauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::xdr::XdrCursor;

/// What a reply other than READ or READDIR(PLUS) may take: attributes, wcc data,
/// a path (READLINK), RPC headers.
pub const SMALL_REPLY: u32 = 8 << 10;
/// Headers and attributes around READ data or directory entries.
const OVERHEAD: u32 = 1 << 10;

pub struct ReplyBudget {
    total: Arc<Semaphore>,
    per_client: u32,
    clients: Mutex<HashMap<IpAddr, Arc<Semaphore>>>,
    /// `bucketgate_nfs_reply_bytes`
    gauge: Option<IntGauge>,
}

/// Memory held for one reply until it is written.
pub struct Held {
    _client: OwnedSemaphorePermit,
    _total: OwnedSemaphorePermit,
    bytes: u32,
    gauge: Option<IntGauge>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(g) = &self.gauge {
            g.sub(i64::from(self.bytes));
        }
    }
}

impl ReplyBudget {
    pub fn new(total_bytes: u64, per_client_bytes: u64, gauge: Option<IntGauge>) -> ReplyBudget {
        let total_bytes = total_bytes.clamp(1 << 20, u64::from(u32::MAX)) as u32;
        ReplyBudget {
            total: Arc::new(Semaphore::new(total_bytes as usize)),
            per_client: per_client_bytes.clamp(1 << 20, u64::from(total_bytes)) as u32,
            clients: Mutex::new(HashMap::new()),
            gauge,
        }
    }

    /// Waits until `bytes` (at most a client's share) are free for `client`, in its
    /// share and in the whole budget. Cancel-safe.
    pub async fn acquire(&self, client: IpAddr, bytes: u32) -> Held {
        let bytes = bytes.clamp(1, self.per_client);
        let share = self
            .clients
            .lock()
            .entry(client)
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_client as usize)))
            .clone();
        // Always the client's share first: a client waiting for the whole budget
        // then holds only its own share, never the others'.
        let own = share.acquire_many_owned(bytes).await.expect("never closed");
        let total = self
            .total
            .clone()
            .acquire_many_owned(bytes)
            .await
            .expect("never closed");
        if let Some(g) = &self.gauge {
            g.add(i64::from(bytes));
        }
        Held {
            _client: own,
            _total: total,
            bytes,
            gauge: self.gauge.clone(),
        }
    }

    /// Forgets `client`'s share when nothing of it is held (its last connection went).
    pub fn release_client(&self, client: IpAddr) {
        let mut c = self.clients.lock();
        if let Some(s) = c.get(&client)
            && Arc::strong_count(s) == 1
            && s.available_permits() == self.per_client as usize
        {
            c.remove(&client);
        }
    }
}

/// What the reply to an NFSv3 call may take, from its arguments: READ's count and
/// READDIR/READDIRPLUS's maxcount (as asked, capped at `max_io`), else a small reply.
pub fn reply_estimate(proc: u32, args: &Bytes, max_io: u32) -> u32 {
    let mut c = XdrCursor::new(args.clone());
    let asked = match proc {
        // READ: file, offset, count
        6 => c.fh_bytes().and_then(|_| c.u64()).and_then(|_| c.u32()).ok(),
        // READDIR: dir, cookie, verifier, count
        16 => c
            .fh_bytes()
            .and_then(|_| c.u64())
            .and_then(|_| c.array::<8>())
            .and_then(|_| c.u32())
            .ok(),
        // READDIRPLUS: dir, cookie, verifier, dircount, maxcount
        17 => c
            .fh_bytes()
            .and_then(|_| c.u64())
            .and_then(|_| c.array::<8>())
            .and_then(|_| c.u32())
            .and_then(|_| c.u32())
            .ok(),
        _ => None,
    };
    match asked {
        Some(n) => n.min(max_io) + OVERHEAD,
        None => SMALL_REPLY,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_args(count: u32) -> Bytes {
        let mut a = Vec::new();
        a.extend_from_slice(&8u32.to_be_bytes());
        a.extend_from_slice(&[1; 8]);
        a.extend_from_slice(&0u64.to_be_bytes());
        a.extend_from_slice(&count.to_be_bytes());
        a.into()
    }

    #[test]
    fn estimates_follow_what_the_call_asks() {
        assert_eq!(reply_estimate(6, &read_args(4096), 1 << 20), 4096 + OVERHEAD);
        assert_eq!(
            reply_estimate(6, &read_args(u32::MAX), 1 << 20),
            (1 << 20) + OVERHEAD
        );
        assert_eq!(
            reply_estimate(6, &Bytes::from_static(b"junk"), 1 << 20),
            SMALL_REPLY
        );
        assert_eq!(reply_estimate(1, &read_args(1 << 20), 1 << 20), SMALL_REPLY);
    }

    /// A client that holds its whole share waits; another client does not.
    #[tokio::test]
    async fn a_client_at_its_share_waits_and_others_go_on() {
        let gauge = IntGauge::new("g", "g").unwrap();
        let b = Arc::new(ReplyBudget::new(8 << 20, 2 << 20, Some(gauge.clone())));
        let (greedy, other): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let h1 = b.acquire(greedy, 1 << 20).await;
        let _h2 = b.acquire(greedy, 1 << 20).await;
        let waiting = tokio::spawn({
            let b = b.clone();
            async move { b.acquire(greedy, 1 << 20).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "over its share");
        let _o = tokio::time::timeout(std::time::Duration::from_secs(1), b.acquire(other, 1 << 20))
            .await
            .expect("another client is not held up");
        assert_eq!(gauge.get(), 3 << 20);
        drop(h1);
        let _h3 = tokio::time::timeout(std::time::Duration::from_secs(1), waiting)
            .await
            .expect("freed")
            .unwrap();
        assert_eq!(gauge.get(), 3 << 20);
    }
}
