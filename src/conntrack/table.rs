//! The connection table: sharded, flood-resistant, bounded.
//!
//! A `DashMap` keyed by [`FlowKey`] with a randomly seeded `ahash` (an attacker
//! choosing addresses and ports cannot aim entries at one bucket). The table
//! counts entries and half-open connections itself so that the limits cost one
//! atomic load per new connection. When full, it evicts an entry that never
//! completed its handshake (or has expired) from a bounded scan of the new
//! key's shard, as nf_conntrack's early drop does.

use super::key::{FlowKey, Side};
use super::tcp::{EndpointState, TcpConn};
use crate::time::Timestamp;
use dashmap::DashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Buckets one eviction attempt looks at per shard, and in all.
const EVICTION_SCAN: usize = 128;
const EVICTION_BUDGET: usize = 1024;

/// Protocol-specific state of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp(TcpConn),
    Udp,
    Icmp,
    Other,
}

const F_REPLIED: u8 = 1 << 0;
const F_ASSURED: u8 = 1 << 1;
const F_HALF_OPEN: u8 = 1 << 2;
const F_LOG: u8 = 1 << 3;

/// One tracked connection (40 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conn {
    pub proto: Proto,
    /// Expiry, in whole seconds of the engine's clock.
    expires: u32,
    /// Which side of the key opened the connection.
    pub originator: Side,
    flags: u8,
}

impl Conn {
    pub fn new(proto: Proto, originator: Side, log: bool) -> Conn {
        Conn {
            proto,
            expires: 0,
            originator,
            flags: if log { F_LOG } else { 0 },
        }
    }

    pub fn expired(&self, now: Timestamp) -> bool {
        now.as_secs() >= self.expires as u64
    }

    pub fn set_timeout(&mut self, now: Timestamp, secs: u32) {
        self.expires = (now.as_secs() + secs as u64).min(u32::MAX as u64) as u32;
    }

    pub fn expires_at_secs(&self) -> u32 {
        self.expires
    }

    pub fn replied(&self) -> bool {
        self.flags & F_REPLIED != 0
    }

    pub fn set_replied(&mut self) {
        self.flags |= F_REPLIED;
    }

    /// Completed its handshake (TCP) or saw a reply: evicted last.
    pub fn assured(&self) -> bool {
        self.flags & F_ASSURED != 0
    }

    pub fn set_assured(&mut self) {
        self.flags |= F_ASSURED;
    }

    /// The rule that admitted the connection asked for logging.
    pub fn log(&self) -> bool {
        self.flags & F_LOG != 0
    }

    fn counted_half_open(&self) -> bool {
        self.flags & F_HALF_OPEN != 0
    }

    pub fn state(&self) -> ConnState {
        match self.proto {
            Proto::Tcp(t) => {
                let (o, r) = t.states();
                ConnState::Tcp(o, r)
            }
            Proto::Udp => ConnState::Udp {
                replied: self.replied(),
            },
            Proto::Icmp => ConnState::Icmp {
                replied: self.replied(),
            },
            Proto::Other => ConnState::Other {
                replied: self.replied(),
            },
        }
    }
}

/// A connection's state as users read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConnState {
    /// No connection.
    None,
    /// Originator's and responder's TCP states.
    Tcp(EndpointState, EndpointState),
    Udp {
        replied: bool,
    },
    Icmp {
        replied: bool,
    },
    Other {
        replied: bool,
    },
}

impl fmt::Display for ConnState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = |replied: bool| if replied { "REPLIED" } else { "UNREPLIED" };
        match self {
            ConnState::None => f.write_str("NONE"),
            ConnState::Tcp(o, s) => write!(f, "{o}:{s}"),
            ConnState::Udp { replied } => write!(f, "UDP_{}", r(*replied)),
            ConnState::Icmp { replied } => write!(f, "ICMP_{}", r(*replied)),
            ConnState::Other { replied } => write!(f, "OTHER_{}", r(*replied)),
        }
    }
}

/// Sizes the table enforces.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub max_half_open: usize,
}

pub struct Table {
    map: DashMap<FlowKey, Conn, ahash::RandomState>,
    len: AtomicUsize,
    half_open: AtomicUsize,
    limits: Limits,
}

/// Why a new connection could not be inserted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    Table,
    HalfOpen,
}

impl Table {
    pub fn new(limits: Limits) -> Table {
        // Shards: a power of two well above the core count keeps writers apart.
        let shards = (std::thread::available_parallelism().map_or(4, |n| n.get()) * 16)
            .next_power_of_two()
            .max(16);
        // Pre-size for a quarter of the limit: growth beyond is amortised, and a
        // small limit does not reserve memory it never uses.
        let capacity = (limits.max_connections / 4).min(1 << 20);
        Table {
            map: DashMap::with_capacity_and_hasher_and_shard_amount(
                capacity,
                ahash::RandomState::new(),
                shards,
            ),
            len: AtomicUsize::new(0),
            half_open: AtomicUsize::new(0),
            limits,
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn half_open(&self) -> usize {
        self.half_open.load(Ordering::Relaxed)
    }

    pub(crate) fn map(&self) -> &DashMap<FlowKey, Conn, ahash::RandomState> {
        &self.map
    }

    /// Checks room for a new connection, evicting one unassured or expired
    /// entry if the table is full. Call without holding any entry of the table.
    pub fn make_room(&self, key: &FlowKey, half_open: bool, now: Timestamp) -> Result<(), Full> {
        if half_open && self.half_open() >= self.limits.max_half_open {
            return Err(Full::HalfOpen);
        }
        if self.len() < self.limits.max_connections {
            return Ok(());
        }
        if self.evict_one(key, now) {
            Ok(())
        } else {
            Err(Full::Table)
        }
    }

    /// Inserts a new connection (the caller checked `make_room`). If another
    /// thread inserted the same key meanwhile, that entry wins and is returned.
    pub fn insert_new(&self, key: FlowKey, mut conn: Conn) -> Result<(), Conn> {
        use dashmap::mapref::entry::Entry;
        match self.map.entry(key) {
            Entry::Occupied(o) => Err(*o.get()),
            Entry::Vacant(v) => {
                self.account_half_open(&mut conn);
                v.insert(conn);
                self.len.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    /// Brings the half-open count in line with the connection's TCP state;
    /// call after every state change.
    #[inline]
    pub fn account_half_open(&self, conn: &mut Conn) {
        let is_half_open = matches!(conn.proto, Proto::Tcp(t) if t.is_half_open());
        if is_half_open != conn.counted_half_open() {
            if is_half_open {
                conn.flags |= F_HALF_OPEN;
                self.half_open.fetch_add(1, Ordering::Relaxed);
            } else {
                conn.flags &= !F_HALF_OPEN;
                self.half_open.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    fn account_removed(&self, conn: &Conn) {
        self.len.fetch_sub(1, Ordering::Relaxed);
        if conn.counted_half_open() {
            self.half_open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Removes an entry if `pred` holds for it.
    pub fn remove_if(&self, key: &FlowKey, pred: impl FnOnce(&Conn) -> bool) -> Option<Conn> {
        let (_, conn) = self.map.remove_if(key, |_, c| pred(c))?;
        self.account_removed(&conn);
        Some(conn)
    }

    /// Removes every expired entry; returns how many.
    pub fn expire(&self, now: Timestamp) -> usize {
        let mut removed = 0;
        self.map.retain(|_, conn| {
            if conn.expired(now) {
                self.account_removed(conn);
                removed += 1;
                false
            } else {
                true
            }
        });
        removed
    }

    /// Early drop: removes one expired or never-assured entry found in a
    /// bounded scan, starting in `key`'s shard at a bucket the key's hash
    /// picks and moving on to the next shards, at most `EVICTION_BUDGET`
    /// buckets in all (nf_conntrack scans a bounded range of buckets too).
    fn evict_one(&self, key: &FlowKey, now: Timestamp) -> bool {
        let shards = self.map.shards();
        let first = self.map.determine_map(key);
        let hash = self.map.hash_usize(key);
        let mut budget = EVICTION_BUDGET;
        for n in 0..shards.len() {
            if budget == 0 {
                break;
            }
            let mut shard = shards[(first + n) % shards.len()].write();
            let buckets = shard.buckets();
            let start = hash.rotate_left(23) & (buckets - 1);
            let scan = buckets.min(EVICTION_SCAN).min(budget);
            budget -= scan;
            let mut victim = None;
            for i in 0..scan {
                let index = (start + i) & (buckets - 1);
                // SAFETY: `index < buckets`, we hold the shard's write lock, and a
                // bucket is dereferenced only after `is_bucket_full` says it holds
                // an initialised element.
                unsafe {
                    if shard.is_bucket_full(index) {
                        let bucket = shard.bucket(index);
                        let conn = bucket.as_ref().1.get();
                        if conn.expired(now) || !conn.assured() {
                            victim = Some(bucket);
                            break;
                        }
                    }
                }
            }
            if let Some(bucket) = victim {
                // SAFETY: the bucket is full and belongs to this shard, whose
                // write lock is still held.
                let ((_, conn), _) = unsafe { shard.remove(bucket) };
                self.account_removed(conn.get());
                return true;
            }
        }
        false
    }

    /// A snapshot of every connection (for listings and replay summaries).
    pub fn snapshot(&self) -> Vec<(FlowKey, Conn)> {
        self.map.iter().map(|e| (*e.key(), *e.value())).collect()
    }
}
