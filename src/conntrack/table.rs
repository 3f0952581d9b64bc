//! The connection table: sharded, flood-resistant, bounded.
//!
//! A `DashMap` keyed by [`FlowKey`] with a seeded `ahash`: the daemon passes a
//! random seed (an attacker choosing addresses and ports cannot aim entries at
//! one bucket), replay and tests a fixed one ([`Layout::FIXED`]), so that which
//! entry an eviction picks depends only on the packets. The table
//! counts entries and half-open connections itself so that the limits cost one
//! atomic load per new connection. When full, it evicts an entry that never
//! completed its handshake (or has expired) from a bounded scan of the new
//! key's shard, as nf_conntrack's early drop does.

use super::key::{FlowKey, Key4, Key6, Side};
use super::tcp::{EndpointState, TcpConn};
use crate::time::Timestamp;
use dashmap::mapref::one::{Ref, RefMut};
use dashmap::DashMap;
use std::fmt;
use std::hash::Hash;
use std::ops::{Deref, DerefMut};
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

    pub fn set_expires_at_secs(&mut self, secs: u32) {
        self.expires = secs;
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

/// How the table lies in memory: its shard count and hash seed. Both decide
/// where an entry lands, and so which entry a full table's eviction scan
/// finds; the caller chooses them, the table reads nothing of the machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// A power of two, at least 1 (DashMap's requirement).
    pub shards: usize,
    pub seed: u64,
}

impl Layout {
    /// The same on every machine and run: replay and tests.
    pub const FIXED: Layout = Layout {
        shards: 64,
        seed: 0x5eed_c0de_0fc7_d0d0,
    };

    /// Shards for `cores` threads: a power of two well above the core count
    /// keeps writers apart.
    pub fn for_cores(cores: usize, seed: u64) -> Layout {
        Layout {
            shards: (cores.max(1) * 16).next_power_of_two().max(16),
            seed,
        }
    }

    fn hasher(&self, family: u64) -> ahash::RandomState {
        ahash::RandomState::with_seeds(
            self.seed,
            self.seed.rotate_left(32) ^ family,
            0x243f_6a88_85a3_08d3,
            0x1319_8a2e_0370_7344,
        )
    }
}

type Map<K> = DashMap<K, Conn, ahash::RandomState>;

/// IPv4 and IPv6 connections live in two maps: an IPv4 entry is 64 bytes
/// (16-byte key), an IPv6 one 88.
pub struct Table {
    v4: Map<Key4>,
    v6: Map<Key6>,
    len: AtomicUsize,
    half_open: AtomicUsize,
    limits: Limits,
}

/// A connection locked for update (its shard's write lock is held).
pub enum ConnMut<'a> {
    V4(RefMut<'a, Key4, Conn>),
    V6(RefMut<'a, Key6, Conn>),
}

impl Deref for ConnMut<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        match self {
            ConnMut::V4(r) => r.value(),
            ConnMut::V6(r) => r.value(),
        }
    }
}

impl DerefMut for ConnMut<'_> {
    fn deref_mut(&mut self) -> &mut Conn {
        match self {
            ConnMut::V4(r) => r.value_mut(),
            ConnMut::V6(r) => r.value_mut(),
        }
    }
}

/// A connection locked for reading.
pub enum ConnRef<'a> {
    V4(Ref<'a, Key4, Conn>),
    V6(Ref<'a, Key6, Conn>),
}

impl Deref for ConnRef<'_> {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        match self {
            ConnRef::V4(r) => r.value(),
            ConnRef::V6(r) => r.value(),
        }
    }
}

/// Why a new connection could not be inserted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    Table,
    HalfOpen,
}

impl Table {
    /// Panics when `layout.shards` is not a power of two.
    pub fn new(limits: Limits, layout: Layout) -> Table {
        assert!(
            layout.shards.is_power_of_two(),
            "table shards must be a power of two, not {}",
            layout.shards
        );
        let shards = layout.shards;
        // Pre-size for a quarter of the limit: growth beyond is amortised, and a
        // small limit does not reserve memory it never uses.
        let capacity = (limits.max_connections / 4).min(1 << 20);
        // IPv6 is pre-sized smaller: it grows when a network uses it.
        Table {
            v4: DashMap::with_capacity_and_hasher_and_shard_amount(
                capacity,
                layout.hasher(4),
                shards,
            ),
            v6: DashMap::with_capacity_and_hasher_and_shard_amount(
                capacity / 8,
                layout.hasher(6),
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

    /// The connection under `key`, locked for update.
    #[inline]
    pub fn get_mut(&self, key: &FlowKey) -> Option<ConnMut<'_>> {
        match key {
            FlowKey::V4(k) => self.v4.get_mut(k).map(ConnMut::V4),
            FlowKey::V6(k) => self.v6.get_mut(k).map(ConnMut::V6),
        }
    }

    /// The connection under `key`, locked for reading.
    pub fn get(&self, key: &FlowKey) -> Option<ConnRef<'_>> {
        match key {
            FlowKey::V4(k) => self.v4.get(k).map(ConnRef::V4),
            FlowKey::V6(k) => self.v6.get(k).map(ConnRef::V6),
        }
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
    pub fn insert_new(&self, key: FlowKey, conn: Conn) -> Result<(), Conn> {
        match key {
            FlowKey::V4(k) => self.insert_in(&self.v4, k, conn),
            FlowKey::V6(k) => self.insert_in(&self.v6, k, conn),
        }
    }

    fn insert_in<K: Hash + Eq>(&self, map: &Map<K>, key: K, mut conn: Conn) -> Result<(), Conn> {
        use dashmap::mapref::entry::Entry;
        match map.entry(key) {
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
        let conn = match key {
            FlowKey::V4(k) => self.v4.remove_if(k, |_, c| pred(c))?.1,
            FlowKey::V6(k) => self.v6.remove_if(k, |_, c| pred(c))?.1,
        };
        self.account_removed(&conn);
        Some(conn)
    }

    /// Removes every expired entry; returns how many.
    pub fn expire(&self, now: Timestamp) -> usize {
        self.expire_in(&self.v4, now) + self.expire_in(&self.v6, now)
    }

    fn expire_in<K: Hash + Eq>(&self, map: &Map<K>, now: Timestamp) -> usize {
        let mut removed = 0;
        map.retain(|_, conn| {
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
    /// picks and moving on to the next shards (and the other family's map),
    /// at most `EVICTION_BUDGET` buckets in all (nf_conntrack scans a bounded
    /// range of buckets too).
    fn evict_one(&self, key: &FlowKey, now: Timestamp) -> bool {
        let mut budget = EVICTION_BUDGET;
        match key {
            FlowKey::V4(k) => {
                self.evict_in(&self.v4, k, now, &mut budget)
                    || self.evict_in(&self.v6, &Default::default(), now, &mut budget)
            }
            FlowKey::V6(k) => {
                self.evict_in(&self.v6, k, now, &mut budget)
                    || self.evict_in(&self.v4, &Default::default(), now, &mut budget)
            }
        }
    }

    fn evict_in<K: Hash + Eq>(
        &self,
        map: &Map<K>,
        key: &K,
        now: Timestamp,
        budget: &mut usize,
    ) -> bool {
        let shards = map.shards();
        let first = map.determine_map(key);
        let hash = map.hash_usize(key);
        for n in 0..shards.len() {
            if *budget == 0 {
                break;
            }
            let mut shard = shards[(first + n) % shards.len()].write();
            let buckets = shard.buckets();
            let start = hash.rotate_left(23) & (buckets - 1);
            let scan = buckets.min(EVICTION_SCAN).min(*budget);
            *budget -= scan;
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
        let v4 = self.v4.iter().map(|e| (FlowKey::V4(*e.key()), *e.value()));
        let v6 = self.v6.iter().map(|e| (FlowKey::V6(*e.key()), *e.value()));
        v4.chain(v6).collect()
    }
}
