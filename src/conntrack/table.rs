//! The connection table: sharded, flood-resistant, bounded.
//!
//! A `DashMap` keyed by [`FlowKey`] with a seeded `ahash`: the daemon passes a
//! random seed (an attacker choosing addresses and ports cannot aim entries at
//! one bucket), replay and tests a fixed one ([`Layout::FIXED`]), so that which
//! entry an eviction picks depends only on the packets. The table
//! counts entries and half-open connections itself so that the limits cost one
//! atomic load per new connection.
//!
//! Early drop: when the half-open cap or the table is full, a new connection
//! evicts the oldest unassured entry (a handshake never completed, a flow
//! never replied to) instead of being refused, so that a SYN flood cannot
//! lock real clients out (nf_conntrack's `early_drop`). The table keeps the
//! keys of unassured entries in creation order in two bounded FIFO queues
//! (half-open TCP, and the rest); an eviction pops keys until one still names
//! an unassured entry. Every key is pushed once and popped at most once, so
//! the work is O(1) amortised, and each eviction is bounded
//! (`EVICTION_TRIES`). An assured entry is never evicted for a new one; a new
//! connection is refused only when no unassured entry is left to evict.

use super::key::{FlowKey, Key4, Key6, Side};
use super::role::Role;
use super::sources::Sources;
use super::tcp::{EndpointState, TcpConn};
use crate::time::Timestamp;
use dashmap::mapref::one::{Ref, RefMut};
use dashmap::DashMap;
use std::fmt;
use std::hash::Hash;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Entries per shard the daemon's layout aims at, at most (see
/// [`Layout::for_table`]): a walk of 2,048 entries holds a shard for tens of
/// microseconds.
const SHARD_ENTRIES: usize = 2_048;
const MAX_SHARDS: usize = 4_096;

/// Keys one eviction may pop before it gives up (stale keys, whose entries
/// were assured or removed since, are skipped).
const EVICTION_TRIES: usize = 64;

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
/// Counted against its source's limits (release it when the entry goes).
const F_SOURCE: u8 = 1 << 4;
/// A RST was accepted on it (its end is a reset, not a teardown).
const F_RESET: u8 = 1 << 5;
/// A peer gateway's connection, copied here (see [`Conn::peer`]).
const F_PEER: u8 = 1 << 6;
/// Opened by the SYN proxy: its proxy state is in [`Table::proxied`].
const F_PROXIED: u8 = 1 << 7;

/// One tracked connection (80 bytes: 48 of state, 32 of accounting).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conn {
    pub proto: Proto,
    /// Expiry, in whole seconds of the engine's clock.
    expires: u32,
    /// When it was opened, in whole seconds of the engine's clock (its age).
    opened: u32,
    /// Which side of the key opened the connection.
    pub originator: Side,
    flags: u8,
    /// The rule that admitted it, plus one (0: the default action), under
    /// the policy of `generation` (a reload renumbers rules).
    rule: u16,
    generation: u16,
    /// Packets and bytes accepted per direction: [from the originator,
    /// from the responder]. Packets saturate at 2^32 (years at the rates one
    /// NFQUEUE connection carries), bytes at 2^64.
    packets: [u32; 2],
    bytes: [u64; 2],
    /// When the cluster was last told of it, in milliseconds of the
    /// engine's clock modulo 2^16 (see [`Conn::progress_due`]).
    synced: u16,
}

/// `Conn::rule` of a connection admitted elsewhere (see [`AdmittedBy::Unknown`]).
const RULE_UNKNOWN: u16 = u16::MAX;

/// What admitted a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdmittedBy {
    /// The policy's default action.
    Default,
    /// Rule `index` of the policy of `generation`.
    Rule { index: u16, generation: u16 },
    /// Not known on this node: restored from a state file or copied from a
    /// peer (neither carries the rule).
    Unknown,
}

/// What a connection carried, per direction: [from the originator, from
/// the responder].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets: [u64; 2],
    pub bytes: [u64; 2],
}

impl Conn {
    pub fn new(proto: Proto, originator: Side, log: bool) -> Conn {
        Conn {
            proto,
            expires: 0,
            opened: 0,
            originator,
            flags: if log { F_LOG } else { 0 },
            rule: 0,
            generation: 0,
            packets: [0; 2],
            bytes: [0; 2],
            synced: 0,
        }
    }

    /// Stamps when and by which rule (of policy `generation`) it was admitted.
    pub fn set_admitted(&mut self, now: Timestamp, rule: Option<u16>, generation: u16) {
        self.opened = now.as_secs().min(u64::from(u32::MAX)) as u32;
        // (a policy never has 65,535 rules: the last value means unknown)
        self.rule = rule.map_or(0, |r| r.saturating_add(1).min(RULE_UNKNOWN - 1));
        self.generation = generation;
    }

    /// Second of the engine's clock it was opened at.
    pub fn opened_at_secs(&self) -> u32 {
        self.opened
    }

    /// What admitted it: the default action, a rule (by its index in the
    /// policy of its generation), or unknown here.
    pub fn admitted_by(&self) -> AdmittedBy {
        match self.rule {
            0 => AdmittedBy::Default,
            RULE_UNKNOWN => AdmittedBy::Unknown,
            r => AdmittedBy::Rule {
                index: r - 1,
                generation: self.generation,
            },
        }
    }

    /// Admitted elsewhere: restored from a state file, copied from a peer.
    pub fn set_admitted_unknown(&mut self) {
        self.rule = RULE_UNKNOWN;
    }

    /// The role of the endpoint on `side` of the key.
    #[inline]
    pub fn role_of(&self, side: Side) -> Role {
        if side == self.originator {
            Role::Originator
        } else {
            Role::Responder
        }
    }

    /// Counts one accepted packet of `len` bytes, sent by the endpoint in role `from`.
    #[inline]
    pub fn count(&mut self, from: Role, len: u32) {
        let d = from.index();
        self.packets[d] = self.packets[d].saturating_add(1);
        self.bytes[d] = self.bytes[d].saturating_add(u64::from(len));
    }

    pub fn traffic(&self) -> Traffic {
        Traffic {
            packets: self.packets.map(u64::from),
            bytes: self.bytes,
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

    /// A RST was accepted on it.
    pub fn set_reset(&mut self) {
        self.flags |= F_RESET;
    }

    /// Counted by the table's source tracker (see [`Table::sources`]).
    pub fn set_source_counted(&mut self) {
        self.flags |= F_SOURCE;
    }

    /// A copy of a connection that a peer gateway forwards: it is not
    /// charged to this node's source limits, not published again, and
    /// expires unless the peer refreshes it. Its first packet on this node
    /// makes it local ([`Conn::make_local`]).
    pub fn peer(&self) -> bool {
        self.flags & F_PEER != 0
    }

    /// Opened by the SYN proxy: its packets are translated (see
    /// [`Table::proxied`]).
    pub fn proxied(&self) -> bool {
        self.flags & F_PROXIED != 0
    }

    pub fn set_proxied(&mut self) {
        self.flags |= F_PROXIED;
    }

    pub fn clear_proxied(&mut self) {
        self.flags &= !F_PROXIED;
    }

    /// Marks a connection applied from a peer's record.
    pub fn set_peer(&mut self) {
        self.flags |= F_PEER;
    }

    /// This node forwards it now: from here on it is published and judged
    /// as any other (its windows re-anchor once, as after a restart).
    pub fn make_local(&mut self) {
        self.flags &= !F_PEER;
    }

    /// Takes a peer's record's state (protocol state, expiry, originator,
    /// flags) and keeps this node's own accounting: age, rule, counters,
    /// half-open and source bookkeeping.
    pub fn take_state_of(&mut self, record: &Conn) {
        const KEPT: u8 = F_HALF_OPEN | F_SOURCE;
        self.proto = record.proto;
        self.expires = record.expires;
        self.originator = record.originator;
        self.flags = (self.flags & KEPT) | (record.flags & !KEPT);
    }

    /// Whether `every_ms` milliseconds have passed since the cluster was
    /// last told of this connection's progress, and if so, stamps `now`.
    /// The stamp wraps every 65.5 s: a connection idle for a multiple of
    /// that may wait one interval more, which only delays a window update.
    #[inline]
    pub fn progress_due(&mut self, now: Timestamp, every_ms: u16) -> bool {
        let ms = (now.as_nanos() / 1_000_000) as u16;
        if ms.wrapping_sub(self.synced) < every_ms {
            return false;
        }
        self.synced = ms;
        true
    }

    /// Bytes of a connection in a state file, at most.
    pub const RECORD: usize = 1 + TcpConn::RECORD + 4 + 1 + 1;

    /// The connection as a state file keeps it: kind, TCP state, seconds
    /// left at `now`, originator, flags. The table's own bookkeeping flags
    /// (half-open, counted by a source) are recomputed when it is restored.
    pub fn encode(&self, now: Timestamp, out: &mut Vec<u8>) {
        let kind = match self.proto {
            Proto::Tcp(_) => 0u8,
            Proto::Udp => 1,
            Proto::Icmp => 2,
            Proto::Other => 3,
        };
        out.push(kind);
        if let Proto::Tcp(t) = self.proto {
            t.encode(out);
        }
        let left = u64::from(self.expires).saturating_sub(now.as_secs());
        out.extend_from_slice(&(left.min(u64::from(u32::MAX)) as u32).to_le_bytes());
        out.push(match self.originator {
            Side::Lo => 0,
            Side::Hi => 1,
        });
        out.push(self.flags & (F_REPLIED | F_ASSURED | F_LOG | F_PEER | F_PROXIED));
    }

    /// A connection from the front of `b`, expiring relative to `now`; with
    /// the bytes it used. `None` if they are not a valid connection.
    pub fn decode(b: &[u8], now: Timestamp) -> Option<(Conn, usize)> {
        let (&kind, rest) = b.split_first()?;
        let (proto, rest) = match kind {
            0 => {
                let (t, rest) = rest.split_at_checked(TcpConn::RECORD)?;
                (Proto::Tcp(TcpConn::decode(t.try_into().ok()?)?), rest)
            }
            1 => (Proto::Udp, rest),
            2 => (Proto::Icmp, rest),
            3 => (Proto::Other, rest),
            _ => return None,
        };
        let (tail, _) = rest.split_at_checked(6)?;
        let left = u32::from_le_bytes([tail[0], tail[1], tail[2], tail[3]]);
        let originator = match tail[4] {
            0 => Side::Lo,
            1 => Side::Hi,
            _ => return None,
        };
        let flags = tail[5];
        if flags & !(F_REPLIED | F_ASSURED | F_LOG | F_PEER | F_PROXIED) != 0 {
            return None;
        }
        let mut conn = Conn::new(proto, originator, false);
        conn.flags = flags;
        conn.set_timeout(now, left);
        // Age and counters are not kept in the file: they start again; the
        // rule is not known here.
        conn.set_admitted(now, None, 0);
        conn.set_admitted_unknown();
        let used = b.len() - rest.len() + 6;
        Some((conn, used))
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

/// Why a connection left the table (the cause an event's DESTROY names).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Removal {
    /// Timed out while open (no packet for its state's timeout).
    Timeout,
    /// Timed out after a FIN teardown (TIME_WAIT and the other closing states).
    Fin,
    /// Reset: timed out in CLOSE after a RST, or forgotten at a RST before any reply.
    Reset,
    /// Evicted for a newcomer (early drop: it was unassured).
    Evicted,
    /// Removed by an operator (`kill`, `flush`).
    Killed,
    /// Replaced by a new connection on the same tuple (a SYN in TIME_WAIT).
    Reopened,
    /// Removed because the peer gateway that forwards it removed it.
    Peer,
    /// Refused at handshake completion by a per-source limit.
    Refused,
}

impl Removal {
    pub fn name(self) -> &'static str {
        match self {
            Removal::Timeout => "timeout",
            Removal::Fin => "fin",
            Removal::Reset => "rst",
            Removal::Evicted => "evicted",
            Removal::Killed => "killed",
            Removal::Reopened => "reopened",
            Removal::Peer => "peer",
            Removal::Refused => "refused",
        }
    }

    /// The cause of an expiry: a RST seen, else the state it was left in.
    pub fn of_expiry(conn: &Conn) -> Removal {
        use EndpointState::*;
        match conn.proto {
            Proto::Tcp(_) if conn.flags & F_RESET != 0 => Removal::Reset,
            Proto::Tcp(t) => {
                let (o, r) = t.states();
                let closing = |s: EndpointState| {
                    matches!(
                        s,
                        FinWait1 | FinWait2 | Closing | TimeWait | CloseWait | LastAck | Closed
                    )
                };
                if closing(o) || closing(r) {
                    Removal::Fin
                } else {
                    Removal::Timeout
                }
            }
            _ => Removal::Timeout,
        }
    }
}

/// What happened to a connection, for whoever listens (`conntrackd events`,
/// the cluster).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    New,
    /// Its state changed (the connection now holds the new one).
    Update {
        before: ConnState,
    },
    /// Its windows moved on, in the same state (told at most every
    /// [`Table::set_progress_every`] milliseconds per connection, and only
    /// while that is set).
    Progress,
    /// A peer's connection took its first packet here: it is local now.
    Adopted,
    Destroy(Removal),
}

/// Told of every connection's life in the table, on the packet path: it
/// must neither block nor allocate (the daemon's queues events into a
/// bounded channel and counts what does not fit).
pub trait Observer: Send + Sync {
    /// Whether anyone listens now; when not, nothing else is called.
    fn active(&self) -> bool;
    fn observe(&self, change: Change, key: &FlowKey, conn: &Conn);
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

    /// Shards for `cores` threads and a table of `max_connections`: a power
    /// of two well above the core count keeps writers apart, and at most
    /// about `SHARD_ENTRIES` entries per shard bound how long expiry (which
    /// walks one shard at a time under its write lock) keeps a worker
    /// waiting on one shard.
    pub fn for_table(cores: usize, max_connections: usize, seed: u64) -> Layout {
        let for_cores = (cores.max(1) * 16).next_power_of_two().max(16);
        let for_size = max_connections.div_ceil(SHARD_ENTRIES).next_power_of_two();
        Layout {
            shards: for_cores.max(for_size).min(MAX_SHARDS),
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

/// Keys of unassured entries, oldest first (see the module doc): a ring
/// allocated once, under a mutex held for a few instructions per push or
/// pop and never with another lock of the table.
///
/// Every new unassured entry pushes its key, and keys leave only by
/// eviction, so on a running gateway the ring is full: a push then takes the
/// oldest key's place in one write.
struct Fifo {
    ring: Mutex<Ring>,
}

struct Ring {
    keys: Box<[FlowKey]>,
    /// Index of the oldest key.
    head: usize,
    len: usize,
}

impl Fifo {
    fn new(capacity: usize) -> Fifo {
        let keys = vec![FlowKey::V4(Key4::default()); capacity.max(1)];
        Fifo {
            ring: Mutex::new(Ring {
                keys: keys.into_boxed_slice(),
                head: 0,
                len: 0,
            }),
        }
    }

    fn ring(&self) -> std::sync::MutexGuard<'_, Ring> {
        // Nothing panics while holding it: the ring is consistent anyway.
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds a key; when full, it takes the oldest key's place (that entry,
    /// if still unassured, is left to its timeout).
    #[inline]
    fn push(&self, key: FlowKey) {
        let mut r = self.ring();
        let cap = r.keys.len();
        let at = wrap(r.head + r.len, cap);
        r.keys[at] = key;
        if r.len == cap {
            r.head = wrap(r.head + 1, cap);
        } else {
            r.len += 1;
        }
    }

    fn pop(&self) -> Option<FlowKey> {
        let mut r = self.ring();
        if r.len == 0 {
            return None;
        }
        let key = r.keys[r.head];
        r.head = wrap(r.head + 1, r.keys.len());
        r.len -= 1;
        Some(key)
    }
}

/// `i` modulo `cap`, for `i < 2 * cap`.
#[inline]
fn wrap(i: usize, cap: usize) -> usize {
    if i >= cap {
        i - cap
    } else {
        i
    }
}

/// Evictions so far, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Evictions {
    /// Half-open TCP connections (a handshake never completed).
    pub half_open: u64,
    /// Other unassured entries (UDP, ICMP, other protocols never replied to,
    /// TCP picked up mid-stream and not yet answered).
    pub unreplied: u64,
}

/// A connection's kind of state, for counting the table by state (see
/// [`Table::census`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateClass {
    /// TCP in its handshake (counted against `max_half_open`).
    TcpHandshake,
    /// TCP, both endpoints ESTABLISHED.
    TcpEstablished,
    /// TCP in its teardown: a FIN or RST seen, TIME_WAIT, CLOSE.
    TcpClosing,
    Udp,
    Icmp,
    Other,
}

impl StateClass {
    pub const ALL: [StateClass; 6] = [
        StateClass::TcpHandshake,
        StateClass::TcpEstablished,
        StateClass::TcpClosing,
        StateClass::Udp,
        StateClass::Icmp,
        StateClass::Other,
    ];

    /// Stable snake_case name (a metrics label value).
    pub const fn name(self) -> &'static str {
        match self {
            StateClass::TcpHandshake => "tcp_handshake",
            StateClass::TcpEstablished => "tcp_established",
            StateClass::TcpClosing => "tcp_closing",
            StateClass::Udp => "udp",
            StateClass::Icmp => "icmp",
            StateClass::Other => "other",
        }
    }

    pub fn of(conn: &Conn) -> StateClass {
        match &conn.proto {
            Proto::Tcp(t) if t.is_half_open() => StateClass::TcpHandshake,
            Proto::Tcp(t) => match t.states() {
                (EndpointState::Established, EndpointState::Established) => {
                    StateClass::TcpEstablished
                }
                _ => StateClass::TcpClosing,
            },
            Proto::Udp => StateClass::Udp,
            Proto::Icmp => StateClass::Icmp,
            Proto::Other => StateClass::Other,
        }
    }
}

/// Entries by [`StateClass`] (indexed by `class as usize`).
pub type Census = [usize; StateClass::ALL.len()];

/// IPv4 and IPv6 connections live in two maps: an IPv4 entry is 96 bytes
/// (16-byte key), an IPv6 one 120.
pub struct Table {
    v4: Map<Key4>,
    v6: Map<Key6>,
    len: AtomicUsize,
    half_open: AtomicUsize,
    limits: Limits,
    /// Early-drop candidates: half-open TCP, and the other unassured entries.
    young_half_open: Fifo,
    young_other: Fifo,
    evicted_half_open: AtomicU64,
    evicted_unreplied: AtomicU64,
    /// Per-source counts and rates, made when a policy first limits sources.
    sources: std::sync::OnceLock<Sources>,
    seed: u64,
    observer: std::sync::OnceLock<std::sync::Arc<dyn Observer>>,
    /// The SYN proxy's state of the connections it opened (flag
    /// `F_PROXIED`), removed with their entries. Beside the table rather
    /// than in each entry: it would grow every connection for the few the
    /// proxy opens.
    pub proxied: DashMap<FlowKey, crate::synproxy::Proxied, ahash::RandomState>,
    /// Entries by state class, as the last expiry walk counted them.
    census: [AtomicUsize; StateClass::ALL.len()],
    /// How often a connection's progress is told ([`Change::Progress`]),
    /// in milliseconds; 0: never (no cluster).
    progress_every: std::sync::atomic::AtomicU16,
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
            young_half_open: Fifo::new(limits.max_half_open.min(limits.max_connections)),
            young_other: Fifo::new(limits.max_half_open.min(limits.max_connections)),
            evicted_half_open: AtomicU64::new(0),
            evicted_unreplied: AtomicU64::new(0),
            sources: std::sync::OnceLock::new(),
            seed: layout.seed,
            observer: std::sync::OnceLock::new(),
            proxied: DashMap::with_hasher_and_shard_amount(layout.hasher(0x5e), shards),
            census: Default::default(),
            progress_every: std::sync::atomic::AtomicU16::new(0),
        }
    }

    /// Sets who is told of each connection's changes (once; later calls
    /// are ignored).
    pub fn set_observer(&self, observer: std::sync::Arc<dyn Observer>) {
        let _ = self.observer.set(observer);
    }

    /// Tells the observer, if one listens.
    #[inline]
    pub fn notify(&self, change: Change, key: &FlowKey, conn: &Conn) {
        if let Some(o) = self.observer.get() {
            if o.active() {
                o.observe(change, key, conn);
            }
        }
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Tells the observer of each connection's progress at most every `ms`
    /// milliseconds (0: never).
    pub fn set_progress_every(&self, ms: u16) {
        self.progress_every.store(ms, Ordering::Relaxed);
    }

    #[inline]
    pub fn progress_every(&self) -> u16 {
        self.progress_every.load(Ordering::Relaxed)
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

    /// Checks room for a new connection, evicting the oldest unassured entry
    /// when the half-open cap (for a half-open newcomer) or the table is full.
    /// Call without holding any entry of the table.
    pub fn make_room(&self, half_open: bool) -> Result<(), Full> {
        if half_open
            && self.half_open() >= self.limits.max_half_open
            && !self.evict_from(&self.young_half_open, true)
        {
            return Err(Full::HalfOpen);
        }
        if self.len() < self.limits.max_connections {
            return Ok(());
        }
        // The newcomer's own kind first: a SYN flood evicts its own kind.
        let (first, second) = if half_open {
            (&self.young_half_open, &self.young_other)
        } else {
            (&self.young_other, &self.young_half_open)
        };
        if self.evict_from(first, false) || self.evict_from(second, false) {
            Ok(())
        } else {
            Err(Full::Table)
        }
    }

    /// The per-source tracker, made on first use with room for twice the
    /// table's connections (see `sources`: fewer than 1 % of sources go
    /// untracked then, even if every connection has its own source).
    pub fn sources(&self) -> &Sources {
        self.sources.get_or_init(|| {
            Sources::new(
                self.limits.max_connections.saturating_mul(2).max(1024),
                self.seed.rotate_left(17),
            )
        })
    }

    /// The per-source tracker, if a policy with source limits made it.
    pub fn sources_made(&self) -> Option<&Sources> {
        self.sources.get()
    }

    /// Evictions so far, by kind.
    pub fn evictions(&self) -> Evictions {
        Evictions {
            half_open: self.evicted_half_open.load(Ordering::Relaxed),
            unreplied: self.evicted_unreplied.load(Ordering::Relaxed),
        }
    }

    /// Pops keys from `fifo` until one names an entry that is still
    /// unassured (and half-open, when `half_open_only`), and removes it.
    fn evict_from(&self, fifo: &Fifo, half_open_only: bool) -> bool {
        for _ in 0..EVICTION_TRIES {
            let Some(key) = fifo.pop() else {
                return false;
            };
            let victim = |c: &Conn| !c.assured() && (!half_open_only || c.counted_half_open());
            if let Some(conn) = self.remove_if(&key, Removal::Evicted, victim) {
                let counter = if conn.counted_half_open() {
                    &self.evicted_half_open
                } else {
                    &self.evicted_unreplied
                };
                counter.fetch_add(1, Ordering::Relaxed);
                return true;
            }
        }
        false
    }

    /// Inserts a new connection (the caller checked `make_room`). If another
    /// thread inserted the same key meanwhile, that entry wins and is returned.
    pub fn insert_new(&self, key: FlowKey, mut conn: Conn) -> Result<(), Conn> {
        match key {
            FlowKey::V4(k) => self.insert_in(&self.v4, k, &mut conn)?,
            FlowKey::V6(k) => self.insert_in(&self.v6, k, &mut conn)?,
        }
        self.notify(Change::New, &key, &conn);
        if !conn.assured() {
            if conn.counted_half_open() {
                self.young_half_open.push(key);
            } else {
                self.young_other.push(key);
            }
        }
        Ok(())
    }

    /// Inserts `conn` (counted as half-open if it is) unless `key` is taken.
    #[inline]
    fn insert_in<K: Hash + Eq>(&self, map: &Map<K>, key: K, conn: &mut Conn) -> Result<(), Conn> {
        use dashmap::mapref::entry::Entry;
        match map.entry(key) {
            Entry::Occupied(o) => Err(*o.get()),
            Entry::Vacant(v) => {
                self.account_half_open(conn);
                v.insert(*conn);
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

    fn account_removed(&self, key: &FlowKey, conn: &Conn, why: Removal) {
        self.notify(Change::Destroy(why), key, conn);
        if conn.proxied() {
            self.proxied.remove(key);
        }
        self.len.fetch_sub(1, Ordering::Relaxed);
        if conn.counted_half_open() {
            self.half_open.fetch_sub(1, Ordering::Relaxed);
        }
        if conn.flags & F_SOURCE != 0 {
            if let Some(sources) = self.sources.get() {
                sources.release(key.endpoint(conn.originator).0);
            }
        }
    }

    /// Removes an entry if `pred` holds for it; `why` is told to the observer.
    pub fn remove_if(
        &self,
        key: &FlowKey,
        why: Removal,
        pred: impl FnOnce(&Conn) -> bool,
    ) -> Option<Conn> {
        let conn = match key {
            FlowKey::V4(k) => self.v4.remove_if(k, |_, c| pred(c))?.1,
            FlowKey::V6(k) => self.v6.remove_if(k, |_, c| pred(c))?.1,
        };
        self.account_removed(key, &conn, why);
        Some(conn)
    }

    /// Removes every expired entry; returns how many. The same walk counts
    /// the entries left by state class (see [`Table::census`]).
    pub fn expire(&self, now: Timestamp) -> usize {
        let mut census = Census::default();
        let removed = self.expire_in(&self.v4, now, |k| FlowKey::V4(*k), &mut census)
            + self.expire_in(&self.v6, now, |k| FlowKey::V6(*k), &mut census);
        for (slot, n) in self.census.iter().zip(census) {
            slot.store(n, Ordering::Relaxed);
        }
        removed
    }

    fn expire_in<K: Hash + Eq>(
        &self,
        map: &Map<K>,
        now: Timestamp,
        flow: impl Fn(&K) -> FlowKey,
        census: &mut Census,
    ) -> usize {
        let mut removed = 0;
        map.retain(|key, conn| {
            if conn.expired(now) {
                self.account_removed(&flow(key), conn, Removal::of_expiry(conn));
                removed += 1;
                false
            } else {
                census[StateClass::of(conn) as usize] += 1;
                true
            }
        });
        removed
    }

    /// Calls `f` for every entry, holding one shard's read lock at a time.
    pub fn for_each(&self, mut f: impl FnMut(&FlowKey, &Conn)) {
        for e in self.v4.iter() {
            f(&FlowKey::V4(*e.key()), e.value());
        }
        for e in self.v6.iter() {
            f(&FlowKey::V6(*e.key()), e.value());
        }
    }

    /// Entries by state class as the last [`Table::expire`] counted them (a
    /// walk the table has anyway, so counting costs no walk of its own):
    /// all zero before the first, and as old as it is (the daemon expires
    /// once a second).
    pub fn census(&self) -> Census {
        let mut out = Census::default();
        for (n, slot) in out.iter_mut().zip(&self.census) {
            *n = slot.load(Ordering::Relaxed);
        }
        out
    }

    /// A snapshot of every connection (for listings and replay summaries).
    /// The translation of a connection the SYN proxy opened, once both its
    /// handshakes are done.
    pub fn translation(&self, key: &FlowKey) -> Option<crate::synproxy::Translation> {
        match *self.proxied.get(key)? {
            crate::synproxy::Proxied::Open(t) => Some(t),
            crate::synproxy::Proxied::Opening { .. } => None,
        }
    }

    pub fn snapshot(&self) -> Vec<(FlowKey, Conn)> {
        let v4 = self.v4.iter().map(|e| (FlowKey::V4(*e.key()), *e.value()));
        let v6 = self.v6.iter().map(|e| (FlowKey::V6(*e.key()), *e.value()));
        v4.chain(v6).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u32) -> FlowKey {
        let (key, _) = FlowKey::new(6, [10, 0, 0, 1].into(), 1, [10, 0, 0, 2].into(), i as u16);
        key
    }

    #[test]
    fn a_full_fifo_forgets_its_oldest_keys_and_keeps_the_order() {
        let fifo = Fifo::new(3);
        assert_eq!(fifo.pop(), None);
        for i in 1..=5 {
            fifo.push(key(i));
        }
        // 1 and 2 made room for 4 and 5.
        assert_eq!(fifo.pop(), Some(key(3)));
        fifo.push(key(6));
        for i in 4..=6 {
            assert_eq!(fifo.pop(), Some(key(i)));
        }
        assert_eq!(fifo.pop(), None);
        // Empty again, across the wrap.
        fifo.push(key(7));
        assert_eq!((fifo.pop(), fifo.pop()), (Some(key(7)), None));
    }
}
