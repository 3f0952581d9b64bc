//! The recent drops: a bounded ring per worker of the last packets it
//! dropped, with their reasons and times, for `conntrackd why` and
//! `conntrackd drops`.
//!
//! A worker writes only its own ring, once per batch of packets, under a
//! mutex nobody else holds except a control client copying it out; if that
//! client holds it at that moment, the worker does not wait: the records are
//! counted as unrecorded. Each ring sits on cache lines of its own (workers
//! never contend for a line). Rings are allocated once at start and never
//! grow.
//!
//! Drops are the hot path under attack, so recording one costs a copy of the
//! packet's first bytes and no parsing: the headers are read (leniently: a
//! malformed packet still shows who sent it) when a record is read.

use super::HEAD;
use crate::conntrack::ConnState;
use crate::reason::Reason;
use crate::wire::lax;
use crossbeam_utils::CachePadded;
use serde_json::{json, Value};
use std::collections::VecDeque;
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
    /// Bytes on the wire.
    pub len: u32,
    /// The packet's first bytes (from the IP header on), read by [`Self::headers`].
    head: [u8; HEAD],
    head_len: u8,
}

impl DropRecord {
    /// A record of `bytes` (from the IP header on): its first [`HEAD`]
    /// bytes, parsed only when read.
    #[inline]
    pub fn new(
        unix_ms: u64,
        queue: u16,
        reason: Reason,
        state: ConnState,
        bytes: &[u8],
        len: u32,
    ) -> DropRecord {
        let n = bytes.len().min(HEAD);
        let mut head = [0; HEAD];
        head[..n].copy_from_slice(&bytes[..n]);
        DropRecord {
            unix_ms,
            queue,
            reason,
            state,
            len,
            head,
            head_len: n as u8,
        }
    }

    /// What its headers say, as far as they can be read (leniently: a
    /// malformed packet still shows who sent it).
    pub fn headers(&self) -> lax::Headers {
        lax::headers(&self.head[..usize::from(self.head_len)])
    }

    pub fn to_json(&self) -> Value {
        let h = self.headers();
        json!({
            "time_ms": self.unix_ms,
            "queue": self.queue,
            "reason": self.reason.name(),
            "state": self.state.to_string(),
            "proto": h.protocol.map(|p| crate::wire::protocol_name(p).into_owned()),
            "src": h.src.map(|a| a.to_string()),
            "sport": h.ports.map(|p| p.0),
            "dst": h.dst.map(|a| a.to_string()),
            "dport": h.ports.map(|p| p.1),
            "flags": h.tcp.map(|t| t.flags.to_string()),
            "len": self.len,
        })
    }
}

/// Every worker's ring.
#[derive(Debug)]
pub struct Drops {
    rings: Vec<CachePadded<Mutex<RingSlot>>>,
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
                .map(|_| {
                    CachePadded::new(Mutex::new(RingSlot(VecDeque::with_capacity(PER_WORKER))))
                })
                .collect(),
            unrecorded: AtomicU64::new(0),
        }
    }

    /// Remembers a batch's drops in `worker`'s ring (one lock for all),
    /// forgetting the oldest when full. Never waits.
    #[inline]
    pub fn record_all(&self, worker: usize, records: &[DropRecord]) {
        if records.is_empty() {
            return;
        }
        let Some(ring) = self.rings.get(worker) else {
            return;
        };
        match ring.try_lock() {
            Ok(mut slot) => {
                let ring = &mut slot.0;
                for &record in records {
                    if ring.len() == PER_WORKER {
                        ring.pop_front();
                    }
                    ring.push_back(record);
                }
            }
            Err(_) => {
                self.unrecorded
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
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
    use crate::wire::{build, TcpFlags};

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
            drops.record_all((i % 2) as usize, &[record(i, 1000 + (i % 50_000) as u16)]);
        }
        let all = drops.recent(usize::MAX, |_| true);
        assert_eq!(all.len(), PER_WORKER + 10);
        assert_eq!(all.first().unwrap().unix_ms, 0);
        assert_eq!(all.last().unwrap().unix_ms, PER_WORKER as u64 + 9);
        let last = drops.recent(3, |r| r.headers().ports.is_some_and(|p| p.0 % 2 == 0));
        assert_eq!(
            last.iter().map(|r| r.unix_ms).collect::<Vec<_>>(),
            vec![
                PER_WORKER as u64 + 4,
                PER_WORKER as u64 + 6,
                PER_WORKER as u64 + 8
            ]
        );
        let r = all[0].headers();
        assert_eq!(r.protocol, Some(6));
        assert_eq!(r.src, Some([198, 18, 0, 2].into()));
        assert_eq!(r.ports, Some((1000, 80)));
        assert_eq!(all[0].to_json()["reason"], "invalid_flags");
        assert_eq!(all[0].to_json()["flags"], "SF");
    }

    /// The headers of the largest IPv4 header and of IPv6 with an extension
    /// header are within the bytes kept; a record of a longer packet keeps
    /// only [`HEAD`] bytes.
    #[test]
    fn the_kept_bytes_hold_the_headers() {
        let src6: std::net::SocketAddr = "[2001:db8:1::2]:40000".parse().unwrap();
        let dst6: std::net::SocketAddr = "[2001:db8:2::2]:443".parse().unwrap();
        let mut pkt = build::tcp(src6, dst6)
            .flags(TcpFlags::ACK)
            .payload(&[7; 1000])
            .build();
        // A hop-by-hop header (8 bytes of padding) before TCP.
        let tcp = pkt.split_off(40);
        pkt[6] = 0;
        pkt.extend_from_slice(&[6, 0, 1, 4, 0, 0, 0, 0]);
        pkt.extend_from_slice(&tcp);
        let r = DropRecord::new(1, 0, Reason::NoConnection, ConnState::None, &pkt, 1048);
        let h = r.headers();
        assert_eq!(h.protocol, Some(6));
        assert_eq!(h.ports, Some((40000, 443)));
        assert_eq!(h.tcp.map(|t| t.flags), Some(TcpFlags(TcpFlags::ACK)));
        assert_eq!((r.head_len as usize, r.len), (HEAD, 1048));
        // An IPv4 header with 40 bytes of options (NOPs).
        let src: std::net::SocketAddr = "198.18.0.2:40001".parse().unwrap();
        let mut pkt = build::tcp(src, "198.19.0.2:80".parse().unwrap())
            .flags(TcpFlags::SYN)
            .build();
        let tcp = pkt.split_off(20);
        pkt[0] = 0x4f;
        pkt.extend_from_slice(&[1; 40]);
        pkt.extend_from_slice(&tcp);
        let h = DropRecord::new(1, 0, Reason::NoConnection, ConnState::None, &pkt, 100).headers();
        assert_eq!(h.ports, Some((40001, 80)));
        assert_eq!(h.tcp.map(|t| t.flags), Some(TcpFlags(TcpFlags::SYN)));
    }

    #[test]
    fn a_full_ring_forgets_its_oldest() {
        let drops = Drops::new(1);
        for i in 0..(3 * PER_WORKER as u64) {
            drops.record_all(0, &[record(i, 1000)]);
        }
        let all = drops.recent(usize::MAX, |_| true);
        assert_eq!(all.len(), PER_WORKER);
        assert_eq!(all[0].unix_ms, 2 * PER_WORKER as u64);
        assert_eq!(drops.unrecorded(), 0);
    }
}
