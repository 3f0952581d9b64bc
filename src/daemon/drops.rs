//! The recent drops: a bounded ring per worker of the last packets it
//! dropped, with their reasons and times, for `conntrackd why` and
//! `conntrackd drops`.
//!
//! A worker writes only its own ring, under a mutex nobody else holds
//! except a control client copying it out; if that client holds it at that
//! moment, the worker does not wait: the record is counted as unrecorded.
//! Rings are allocated once at start and never grow.

use crate::conntrack::ConnState;
use crate::reason::Reason;
use crate::wire::{lax, TcpFlags};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Drops each worker remembers.
pub const PER_WORKER: usize = 1024;

/// One dropped packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DropRecord {
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub unix_ms: u64,
    pub queue: u16,
    pub reason: Reason,
    /// The state of its connection when it came (`NONE`: untracked).
    pub state: ConnState,
    /// What its headers say, as far as they could be read.
    pub protocol: Option<u8>,
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    pub ports: Option<(u16, u16)>,
    pub flags: Option<TcpFlags>,
    /// Bytes on the wire.
    pub len: u32,
}

impl DropRecord {
    /// A record of `bytes` (from the IP header on), read leniently: a
    /// malformed packet still shows who sent it.
    pub fn new(
        unix_ms: u64,
        queue: u16,
        reason: Reason,
        state: ConnState,
        bytes: &[u8],
        len: u32,
    ) -> DropRecord {
        let h = lax::headers(bytes);
        DropRecord {
            unix_ms,
            queue,
            reason,
            state,
            protocol: h.protocol,
            src: h.src,
            dst: h.dst,
            ports: h.ports,
            flags: h.tcp.map(|t| t.flags),
            len,
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "time_ms": self.unix_ms,
            "queue": self.queue,
            "reason": self.reason.name(),
            "state": self.state.to_string(),
            "proto": self.protocol.map(|p| crate::wire::protocol_name(p).into_owned()),
            "src": self.src.map(|a| a.to_string()),
            "sport": self.ports.map(|p| p.0),
            "dst": self.dst.map(|a| a.to_string()),
            "dport": self.ports.map(|p| p.1),
            "flags": self.flags.map(|f| f.to_string()),
            "len": self.len,
        })
    }
}

/// Every worker's ring.
#[derive(Debug)]
pub struct Drops {
    rings: Vec<Mutex<RingSlot>>,
    /// Records lost because a reader held the ring at that moment.
    unrecorded: AtomicU64,
}

/// One worker's ring (a newtype so that `Drops` prints as counts, not records).
pub struct RingSlot(VecDeque<DropRecord>);

impl std::fmt::Debug for RingSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} drops", self.0.len())
    }
}

impl Drops {
    pub fn new(workers: usize) -> Drops {
        Drops {
            rings: (0..workers.max(1))
                .map(|_| Mutex::new(RingSlot(VecDeque::with_capacity(PER_WORKER))))
                .collect(),
            unrecorded: AtomicU64::new(0),
        }
    }

    /// Remembers a drop in `worker`'s ring, forgetting its oldest when full.
    /// Never waits.
    #[inline]
    pub fn record(&self, worker: usize, record: DropRecord) {
        let Some(ring) = self.rings.get(worker) else {
            return;
        };
        match ring.try_lock() {
            Ok(mut slot) => {
                let records = &mut slot.0;
                if records.len() == PER_WORKER {
                    records.pop_front();
                }
                records.push_back(record);
            }
            Err(_) => {
                self.unrecorded.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub fn unrecorded(&self) -> u64 {
        self.unrecorded.load(Ordering::Relaxed)
    }

    /// The last `last` drops `keep` selects, oldest first.
    pub fn recent(&self, last: usize, keep: impl Fn(&DropRecord) -> bool) -> Vec<DropRecord> {
        let mut all = Vec::new();
        for ring in &self.rings {
            // Copy out under the lock, filter after: the worker waits for nothing.
            let copy: Vec<DropRecord> = {
                let slot = ring.lock().unwrap_or_else(|e| e.into_inner());
                slot.0.iter().copied().collect()
            };
            all.extend(copy.into_iter().filter(|r| keep(r)));
        }
        all.sort_by_key(|r| r.unix_ms);
        let skip = all.len().saturating_sub(last);
        all.split_off(skip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::build;

    fn record(ms: u64, port: u16) -> DropRecord {
        let src = std::net::SocketAddr::new([198, 18, 0, 2].into(), port);
        let pkt = build::tcp(src, "198.19.0.2:80".parse().unwrap())
            .flags(TcpFlags::SYN | TcpFlags::FIN)
            .build();
        DropRecord::new(
            ms,
            0,
            Reason::InvalidFlags,
            ConnState::None,
            &pkt,
            pkt.len() as u32,
        )
    }

    #[test]
    fn rings_merge_in_time_order_filter_and_read_the_headers() {
        let drops = Drops::new(2);
        for i in 0..(PER_WORKER as u64 + 10) {
            drops.record((i % 2) as usize, record(i, 1000 + (i % 50_000) as u16));
        }
        let all = drops.recent(usize::MAX, |_| true);
        assert_eq!(all.len(), PER_WORKER + 10);
        assert_eq!(all.first().unwrap().unix_ms, 0);
        assert_eq!(all.last().unwrap().unix_ms, PER_WORKER as u64 + 9);
        let last = drops.recent(3, |r| r.ports.is_some_and(|p| p.0 % 2 == 0));
        assert_eq!(
            last.iter().map(|r| r.unix_ms).collect::<Vec<_>>(),
            vec![
                PER_WORKER as u64 + 4,
                PER_WORKER as u64 + 6,
                PER_WORKER as u64 + 8
            ]
        );
        let r = all[0];
        assert_eq!(r.protocol, Some(6));
        assert_eq!(r.src, Some([198, 18, 0, 2].into()));
        assert_eq!(r.ports, Some((1000, 80)));
        assert_eq!(r.to_json()["reason"], "invalid_flags");
    }

    #[test]
    fn a_full_ring_forgets_its_oldest() {
        let drops = Drops::new(1);
        for i in 0..(3 * PER_WORKER as u64) {
            drops.record(0, record(i, 1000));
        }
        let all = drops.recent(usize::MAX, |_| true);
        assert_eq!(all.len(), PER_WORKER);
        assert_eq!(all[0].unix_ms, 2 * PER_WORKER as u64);
        assert_eq!(drops.unrecorded(), 0);
    }
}
