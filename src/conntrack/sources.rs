//! Per-source limits: pf's `max-src-conn N`, `max-src-conn-rate N/S` and
//! `overload <table>`, in fixed memory that a flood of spoofed sources can
//! neither grow nor empty of the sources that matter.
//!
//! # Use
//!
//! [`Sources::admit`] is asked before a new connection from a source is
//! created, with the limits of the rule that admits it. It refuses
//! ([`SourceRefusal`]) a source on the overload list, one that holds
//! `max_conn` connections, or one that opens connections faster than its
//! rate; a refusal for a limit puts the source on the overload list for
//! `overload_secs` seconds when that is not 0 (the caller then flushes the
//! source's connections if it wants pf's `overload <t> flush`). On success the
//! answer says whether the connection was [`Admission::Counted`]: the caller
//! calls [`Sources::release`] once for each counted connection when it ends
//! (expired, closed, evicted, killed, or never inserted after all), and never
//! for the others. A source's connection count is the sum over every rule
//! with limits; each admission is judged against the limits of its own rule.
//! A rule with every limit off ([`SourceLimits::is_off`]) touches nothing: its
//! connections are neither counted nor refused, the overload list included.
//! IPv4 sources are kept as their IPv4-mapped IPv6 addresses
//! (`::ffff:a.b.c.d` is the same source as `a.b.c.d`); an IPv6 source is one
//! address, as in pf (a host free to pick addresses in its /64 is many
//! sources: a caller wanting per-prefix limits masks the address first).
//!
//! # Memory: fixed, and a flood cannot push real sources out
//!
//! The tracker is an array of buckets of [`WAYS`] slots, allocated once by
//! [`Sources::new`]; no call allocates after that. A source's bucket is picked
//! by a seeded `ahash` of its address: the daemon passes a random seed, so an
//! attacker choosing addresses cannot aim them at a bucket, and spoofed sources
//! spread evenly over all of them. A source not yet tracked may take only an
//! empty slot of its bucket, or the slot of a source that holds no connection
//! and is not overloaded (whose only state is its rate history): first one
//! with no rate debt, then the least recently active. A source that holds
//! connections, or is on the overload list, is never displaced by a newcomer:
//! a flood cannot reset the count of a real source (and so let it open more)
//! or take it off the overload list. When no slot of the bucket can be taken,
//! the newcomer is admitted untracked ([`Admission::Untracked`], counted in
//! [`Sources::untracked`]): no per-source limit applies to it, and the
//! table's own caps (half-open limit, early drop) still bound what it can
//! create. Refusing it instead would hand the attacker the lockout the limits
//! exist to prevent: spoofed sources each holding one half-open connection
//! would fill every bucket and then every new real source would be refused
//! for as long as the flood lasts (the failure issue 11 reports for the
//! half-open cap). Sources holding connections or overloaded keep their
//! slot and their limits throughout (an idle one may lose its rate history);
//! what a flood buys is that a new source landing in a full bucket goes
//! unlimited until a slot frees (the table drops the spoofed entries and the
//! caller releases them). Sources holding connections are at most the table's
//! entries, so a capacity of twice the table's `max_connections` keeps every
//! bucket's load at 4 of 8 on average even when each entry has its own
//! source: about 2% of buckets then overflow, and under 1% of such sources go
//! untracked (Poisson); at a capacity equal to `max_connections`, 14%.
//!
//! # Rate: a token bucket (GCRA), not a sliding window
//!
//! `Rate { count, seconds }` is a token bucket of `count` tokens refilled at
//! `count / seconds`, kept as the Generic Cell Rate Algorithm's one number
//! per source: the theoretical arrival time (`tat`, nanoseconds). A source
//! may open `count` connections back to back, then one per interval
//! `T = ceil(seconds / count)`; after `seconds` of silence its full burst is
//! back. Over any long stretch it opens at most `count` per `seconds`, and in
//! any one window of `seconds` at most `2 * count - 1` (a full bucket plus
//! the refill). An exact sliding window would have to remember the times of
//! the last `count` connections of every source: memory set by the
//! configuration, not the capacity. The two-counter approximation of a
//! sliding window errs both ways, and pf's own decaying counter is an
//! approximation too; GCRA is 8 bytes, O(1), exact integer arithmetic, and
//! takes whatever rate each rule passes. A refused attempt takes no token: a
//! source over its rate gets exactly its rate, and a refused connection's
//! retransmitted SYNs do not lengthen its refusal (the overload list is the
//! tool for punishing persistence).
//!
//! # Threads: a small lock per bucket
//!
//! Each bucket is its own `Mutex` (8 bytes beside its 8 slots): a call locks
//! exactly one bucket, scans 8 slots and updates one, without allocating or
//! calling anything. Two workers wait for each other only when they admit or
//! release sources of the same bucket at the same instant, one chance in
//! thousands at 65,536 slots, for tens of nanoseconds. Atomics alone cannot
//! update a slot's count, rate and overload together, nor pick a victim and
//! claim it in one step; a sharded hash map would allocate and grow on
//! insert. The shared counters ([`Sources::len`], [`Sources::displaced`],
//! [`Sources::untracked`]) are relaxed atomics changed only when a slot is
//! claimed, freed or taken over, or a newcomer finds no room: at most once
//! per new connection, as the table's own entry count is.
//!
//! # Time
//!
//! Time is passed in and state expires lazily: an overload ends, and a rate
//! bucket refills, when a later call looks at the slot. Overloads count whole
//! seconds of the engine's clock, as connection timeouts do.

use crate::time::Timestamp;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Slots per bucket: the sources that compete for one bucket's room.
pub const WAYS: usize = 8;

/// Slots at most (a larger capacity is cut to this): 2^28 slots are 11 GiB.
const MAX_SLOTS: usize = 1 << 28;

const NANOS_PER_SEC: u64 = 1_000_000_000;

/// `max-src-conn-rate count/seconds`: at most `count` new connections back to
/// back, refilled at `count` per `seconds`. A `count` of 0 refuses every new
/// connection; `seconds` of 0 is no limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Rate {
    pub count: u32,
    pub seconds: u32,
}

impl Rate {
    /// The source's theoretical arrival time after one more connection at
    /// `now`, or `None` if that connection is over the rate.
    fn charge(self, tat: u64, now: Timestamp) -> Option<u64> {
        if self.seconds == 0 {
            return Some(tat);
        }
        if self.count == 0 {
            return None;
        }
        let count = u64::from(self.count);
        let window = u64::from(self.seconds) * NANOS_PER_SEC;
        // Rounded up: the long-run rate never exceeds count per window.
        let interval = window.div_ceil(count);
        // `count` back to back, whatever the rounding.
        let tolerance = interval * (count - 1);
        let now = now.as_nanos();
        if tat > now.saturating_add(tolerance) {
            None
        } else {
            Some(tat.max(now).saturating_add(interval))
        }
    }
}

/// The limits of the rule admitting a connection. The default is every limit
/// off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SourceLimits {
    /// `max-src-conn`: connections a source may hold (0 refuses every one).
    pub max_conn: Option<u32>,
    /// `max-src-conn-rate`.
    pub rate: Option<Rate>,
    /// `overload`: seconds a source that exceeds a limit stays on the overload
    /// list, refused every new connection by every rule with limits (0: not
    /// listed, only the exceeding connection is refused).
    pub overload_secs: u32,
}

impl SourceLimits {
    /// Every limit off.
    pub const OFF: SourceLimits = SourceLimits {
        max_conn: None,
        rate: None,
        overload_secs: 0,
    };

    /// No limit and no overload list: [`Sources::admit`] answers at once.
    pub fn is_off(&self) -> bool {
        self.max_conn.is_none() && self.rate.is_none() && self.overload_secs == 0
    }
}

/// Why a source may not open a new connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SourceRefusal {
    /// On the overload list (`source_overloaded`).
    Overloaded,
    /// Holds `max_conn` connections (`source_conn_limit`). With
    /// `overload_secs > 0` it has just been put on the overload list.
    ConnLimit,
    /// Over its rate (`source_rate_limit`). With `overload_secs > 0` it has
    /// just been put on the overload list.
    RateLimit,
}

impl SourceRefusal {
    /// The reason's name in counters and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceRefusal::Overloaded => "source_overloaded",
            SourceRefusal::ConnLimit => "source_conn_limit",
            SourceRefusal::RateLimit => "source_rate_limit",
        }
    }
}

/// How a new connection was admitted, and so whether it is released.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Admission {
    /// Counted against its source: call [`Sources::release`] when it ends.
    Counted,
    /// Every limit of the rule is off: nothing counted, nothing to release.
    Unlimited,
    /// The source has no slot and none could be taken without displacing a
    /// source with connections or on the overload list: admitted without
    /// limits, nothing counted, nothing to release.
    Untracked,
}

impl Admission {
    /// The connection must be released when it ends.
    pub fn counted(self) -> bool {
        self == Admission::Counted
    }
}

/// One tracked source (40 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    /// GCRA theoretical arrival time, nanoseconds; 0 (or any time past) is a
    /// full bucket.
    tat: u64,
    /// The source as an IPv6 address (IPv4 mapped).
    addr: [u8; 16],
    /// Counted connections it holds.
    conns: u32,
    /// Last admission asked for, whole seconds.
    last: u32,
    /// End of its overload, whole seconds; 0 is not overloaded.
    overload_until: u32,
    used: bool,
}

impl Slot {
    const EMPTY: Slot = Slot {
        tat: 0,
        addr: [0; 16],
        conns: 0,
        last: 0,
        overload_until: 0,
        used: false,
    };

    fn fresh(addr: [u8; 16]) -> Slot {
        Slot {
            addr,
            used: true,
            ..Slot::EMPTY
        }
    }

    fn overloaded(&self, secs: u32) -> bool {
        secs < self.overload_until
    }

    /// Judges one new connection against `limits` and records it (admitted:
    /// counted and charged; refused for a limit: overloaded if asked).
    fn judge(&mut self, limits: &SourceLimits, now: Timestamp) -> Result<(), SourceRefusal> {
        let secs = secs(now);
        self.last = secs;
        if self.overload_until != 0 {
            if self.overloaded(secs) {
                return Err(SourceRefusal::Overloaded);
            }
            self.overload_until = 0;
        }
        if self.tat <= now.as_nanos() {
            self.tat = 0;
        }
        if limits.max_conn.is_some_and(|max| self.conns >= max) {
            return Err(self.refuse(SourceRefusal::ConnLimit, limits, secs));
        }
        if let Some(rate) = limits.rate {
            match rate.charge(self.tat, now) {
                Some(tat) => self.tat = tat,
                None => return Err(self.refuse(SourceRefusal::RateLimit, limits, secs)),
            }
        }
        self.conns = self.conns.saturating_add(1);
        Ok(())
    }

    fn refuse(&mut self, why: SourceRefusal, limits: &SourceLimits, secs: u32) -> SourceRefusal {
        if limits.overload_secs > 0 {
            self.overload_until = secs.saturating_add(limits.overload_secs);
        }
        why
    }
}

type Bucket = [Slot; WAYS];

/// Whole seconds of the engine's clock, as the table keeps them.
fn secs(now: Timestamp) -> u32 {
    now.as_secs().min(u64::from(u32::MAX)) as u32
}

fn addr_key(src: IpAddr) -> [u8; 16] {
    match src {
        IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
        IpAddr::V6(a) => a.octets(),
    }
}

/// The slot a newcomer may take in a full-of-sources bucket: an empty one,
/// else the source with no connection and no overload that has no rate debt,
/// then the least recently active; `None` if every source holds connections
/// or is overloaded.
fn victim(bucket: &Bucket, now: Timestamp) -> Option<usize> {
    if let Some(i) = bucket.iter().position(|s| !s.used) {
        return Some(i);
    }
    let secs = secs(now);
    bucket
        .iter()
        .enumerate()
        .filter(|(_, s)| s.conns == 0 && !s.overloaded(secs))
        .min_by_key(|(_, s)| (s.tat > now.as_nanos(), s.last))
        .map(|(i, _)| i)
}

/// Buckets for room for `capacity` sources: a power of two, at least one.
fn buckets_for(capacity: usize) -> usize {
    capacity
        .min(MAX_SLOTS)
        .div_ceil(WAYS)
        .max(1)
        .next_power_of_two()
}

/// The per-source tracker: fixed memory, one small lock per bucket.
pub struct Sources {
    buckets: Box<[Mutex<Bucket>]>,
    mask: usize,
    hasher: ahash::RandomState,
    len: AtomicUsize,
    displaced: AtomicU64,
    untracked: AtomicU64,
}

impl Sources {
    /// Room for `capacity` sources, rounded up to a power of two of buckets
    /// of [`WAYS`] slots (at least one bucket, at most 2^28 slots), allocated
    /// now and never again. `seed` places sources in buckets: random in the
    /// daemon (an attacker must not aim at a bucket), fixed in replay and
    /// tests.
    pub fn new(capacity: usize, seed: u64) -> Sources {
        let buckets = buckets_for(capacity);
        Sources {
            buckets: (0..buckets)
                .map(|_| Mutex::new([Slot::EMPTY; WAYS]))
                .collect(),
            mask: buckets - 1,
            hasher: ahash::RandomState::with_seeds(
                seed,
                seed.rotate_left(32) ^ 0x5ce5_0c0f_5ce5_0c0f,
                0x243f_6a88_85a3_08d3,
                0x1319_8a2e_0370_7344,
            ),
            len: AtomicUsize::new(0),
            displaced: AtomicU64::new(0),
            untracked: AtomicU64::new(0),
        }
    }

    fn index(&self, addr: &[u8; 16]) -> usize {
        (self.hasher.hash_one(addr) as usize) & self.mask
    }

    fn lock(&self, addr: &[u8; 16]) -> MutexGuard<'_, Bucket> {
        // A slot is plain data written in one piece: a panic elsewhere while
        // a bucket was locked leaves it consistent.
        self.buckets[self.index(addr)]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Judges a new connection from `src` under its rule's `limits` at `now`:
    /// refused if `src` is overloaded, holds `max_conn` connections or is over
    /// its rate (a refusal for a limit puts it on the overload list for
    /// `overload_secs`); admitted and counted otherwise. See [`Admission`]
    /// for which admissions are released.
    pub fn admit(
        &self,
        src: IpAddr,
        limits: &SourceLimits,
        now: Timestamp,
    ) -> Result<Admission, SourceRefusal> {
        if limits.is_off() {
            return Ok(Admission::Unlimited);
        }
        let addr = addr_key(src);
        let mut bucket = self.lock(&addr);
        if let Some(slot) = bucket.iter_mut().find(|s| s.used && s.addr == addr) {
            return slot.judge(limits, now).map(|()| Admission::Counted);
        }
        // Not tracked: judged from nothing (no connection, a full rate bucket),
        // and given a slot only if there is something to remember.
        let mut slot = Slot::fresh(addr);
        let verdict = slot.judge(limits, now);
        if let Err(why) = verdict {
            if slot.overload_until == 0 {
                return Err(why);
            }
        }
        match victim(&bucket, now) {
            Some(i) => {
                if bucket[i].used {
                    self.displaced.fetch_add(1, Ordering::Relaxed);
                } else {
                    self.len.fetch_add(1, Ordering::Relaxed);
                }
                bucket[i] = slot;
                verdict.map(|()| Admission::Counted)
            }
            None => verdict.map(|()| {
                self.untracked.fetch_add(1, Ordering::Relaxed);
                Admission::Untracked
            }),
        }
    }

    /// A counted connection from `src` ended. Saturating: a release for a
    /// source not tracked, or holding nothing, changes nothing.
    pub fn release(&self, src: IpAddr) {
        let addr = addr_key(src);
        let mut bucket = self.lock(&addr);
        if let Some(slot) = bucket.iter_mut().find(|s| s.used && s.addr == addr) {
            slot.conns = slot.conns.saturating_sub(1);
            // Nothing left to remember (no connection, no rate debt seen, no
            // overload): the slot is free again.
            if slot.conns == 0 && slot.tat == 0 && slot.overload_until == 0 {
                *slot = Slot::EMPTY;
                self.len.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Counted connections `src` holds.
    pub fn connections(&self, src: IpAddr) -> u32 {
        let addr = addr_key(src);
        let bucket = self.lock(&addr);
        bucket
            .iter()
            .find(|s| s.used && s.addr == addr)
            .map_or(0, |s| s.conns)
    }

    /// `src` is on the overload list at `now`.
    pub fn is_overloaded(&self, src: IpAddr, now: Timestamp) -> bool {
        let addr = addr_key(src);
        let bucket = self.lock(&addr);
        bucket
            .iter()
            .any(|s| s.used && s.addr == addr && s.overloaded(secs(now)))
    }

    /// Sources in slots: those holding connections, overloaded, or
    /// remembered for their rate until their slot is needed.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Slots in all (the capacity asked for, rounded up).
    pub fn capacity(&self) -> usize {
        self.buckets.len() * WAYS
    }

    /// Bytes the tracker holds, all allocated by [`Sources::new`].
    pub fn memory_bytes(&self) -> usize {
        std::mem::size_of::<Sources>() + std::mem::size_of_val(&*self.buckets)
    }

    /// Sources dropped from their slot to make room for a newcomer (each held
    /// no connection and was not overloaded: only its rate history was lost).
    pub fn displaced(&self) -> u64 {
        self.displaced.load(Ordering::Relaxed)
    }

    /// Connections admitted untracked, their source's bucket full of sources
    /// with connections or overloaded.
    pub fn untracked(&self) -> u64 {
        self.untracked.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const SEED: u64 = 0x5eed_c0de_0fc7_d0d0;

    fn t(secs: u64) -> Timestamp {
        Timestamp::from_secs(secs)
    }

    fn ns(nanos: u64) -> Timestamp {
        Timestamp::from_nanos(nanos)
    }

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn max_conn(n: u32) -> SourceLimits {
        SourceLimits {
            max_conn: Some(n),
            ..SourceLimits::OFF
        }
    }

    fn rate(count: u32, seconds: u32) -> SourceLimits {
        SourceLimits {
            rate: Some(Rate { count, seconds }),
            ..SourceLimits::OFF
        }
    }

    /// splitmix64: the tests' random sources.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        /// Alternately IPv4 and IPv6, random.
        fn source(&mut self) -> IpAddr {
            let x = self.next();
            if x & 1 == 0 {
                IpAddr::V4(Ipv4Addr::from((x >> 32) as u32))
            } else {
                IpAddr::V6(Ipv6Addr::from(
                    (u128::from(x) << 64) | u128::from(self.next()),
                ))
            }
        }
    }

    /// Sources that land in the same bucket as `near`.
    fn same_bucket(s: &Sources, near: IpAddr, n: usize) -> Vec<IpAddr> {
        let want = s.index(&addr_key(near));
        (1..=u32::MAX)
            .map(|i| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)))
            .filter(|a| *a != near && s.index(&addr_key(*a)) == want)
            .take(n)
            .collect()
    }

    #[test]
    fn slot_and_bucket_sizes() {
        assert_eq!(std::mem::size_of::<Slot>(), 40);
        assert!(std::mem::size_of::<Mutex<Bucket>>() <= 8 + WAYS * 40);
        let s = Sources::new(65_536, SEED);
        assert_eq!(s.capacity(), 65_536);
        assert!(s.memory_bytes() <= 65_536 / WAYS * (8 + WAYS * 40) + 256);
    }

    #[test]
    fn capacity_rounds_up_to_whole_buckets() {
        assert_eq!(Sources::new(0, SEED).capacity(), WAYS);
        assert_eq!(Sources::new(1, SEED).capacity(), WAYS);
        assert_eq!(Sources::new(65_537, SEED).capacity(), 131_072);
        assert_eq!(buckets_for(usize::MAX), MAX_SLOTS / WAYS);
    }

    #[test]
    fn conn_limit_admits_the_nth_refuses_the_next_and_release_frees() {
        let s = Sources::new(1024, SEED);
        let (a, b) = (v4(192, 0, 2, 1), v4(192, 0, 2, 2));
        let lim = max_conn(3);
        for _ in 0..3 {
            assert_eq!(s.admit(a, &lim, t(1)), Ok(Admission::Counted));
        }
        assert_eq!(s.connections(a), 3);
        assert_eq!(s.admit(a, &lim, t(1)), Err(SourceRefusal::ConnLimit));
        assert_eq!(s.admit(a, &lim, t(500)), Err(SourceRefusal::ConnLimit));
        assert_eq!(s.connections(a), 3, "a refusal is not counted");
        // Another source has its own count.
        assert_eq!(s.admit(b, &lim, t(1)), Ok(Admission::Counted));
        s.release(a);
        assert_eq!(s.admit(a, &lim, t(2)), Ok(Admission::Counted));
        assert_eq!(s.admit(a, &lim, t(2)), Err(SourceRefusal::ConnLimit));
        // A rule with a higher limit admits more from the same source.
        assert_eq!(s.admit(a, &max_conn(4), t(2)), Ok(Admission::Counted));
        assert_eq!(s.connections(a), 4);
        for _ in 0..4 {
            s.release(a);
        }
        assert_eq!(s.connections(a), 0);
        // Only a max_conn was used: nothing left to remember, the slot is free.
        assert_eq!(s.len(), 1);
        s.release(b);
        assert!(s.is_empty());
    }

    #[test]
    fn zero_limits_refuse_from_the_first_and_zero_seconds_is_no_rate() {
        let s = Sources::new(64, SEED);
        let a = v4(192, 0, 2, 1);
        assert_eq!(
            s.admit(a, &max_conn(0), t(1)),
            Err(SourceRefusal::ConnLimit)
        );
        assert_eq!(
            s.admit(a, &rate(0, 10), t(1)),
            Err(SourceRefusal::RateLimit)
        );
        assert!(s.is_empty(), "a refusal without overload stores nothing");
        for _ in 0..1000 {
            assert_eq!(s.admit(a, &rate(1, 0), t(1)), Ok(Admission::Counted));
        }
    }

    #[test]
    fn rate_burst_then_one_per_interval_at_the_edges() {
        // 5 per 10 s: a burst of 5, then one every 2 s.
        let s = Sources::new(64, SEED);
        let a = v4(198, 51, 100, 7);
        let lim = rate(5, 10);
        for _ in 0..5 {
            assert_eq!(s.admit(a, &lim, t(100)), Ok(Admission::Counted));
        }
        assert_eq!(s.admit(a, &lim, t(100)), Err(SourceRefusal::RateLimit));
        assert_eq!(
            s.admit(a, &lim, ns(102 * NANOS_PER_SEC - 1)),
            Err(SourceRefusal::RateLimit)
        );
        assert_eq!(s.admit(a, &lim, t(102)), Ok(Admission::Counted));
        assert_eq!(s.admit(a, &lim, t(102)), Err(SourceRefusal::RateLimit));
        // Bucket full again `seconds` after the last token was due: t = 112 s.
        // One nanosecond early, only 4 of the burst are back.
        let s2 = Sources::new(64, SEED);
        for _ in 0..5 {
            assert!(s2.admit(a, &lim, t(100)).is_ok());
        }
        assert!(s2.admit(a, &lim, t(102)).is_ok());
        let early = ns(112 * NANOS_PER_SEC - 1);
        for _ in 0..4 {
            assert_eq!(s2.admit(a, &lim, early), Ok(Admission::Counted));
        }
        assert_eq!(s2.admit(a, &lim, early), Err(SourceRefusal::RateLimit));
        for _ in 0..5 {
            assert_eq!(s.admit(a, &lim, t(112)), Ok(Admission::Counted));
        }
        assert_eq!(s.admit(a, &lim, t(112)), Err(SourceRefusal::RateLimit));
        // Rate state outlives the connections: releasing does not refill.
        for _ in 0..11 {
            s.release(a);
        }
        assert_eq!(s.admit(a, &lim, t(112)), Err(SourceRefusal::RateLimit));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn rate_long_run_never_exceeds_count_per_window() {
        // 3 per second (the interval rounds up to 333,333,334 ns), asked for
        // every millisecond for 100 s: the burst of 3, then the rate.
        let s = Sources::new(64, SEED);
        let a = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1));
        let lim = rate(3, 1);
        let mut admitted = Vec::new();
        for ms in 0..100_000u64 {
            let now = ns(ms * 1_000_000);
            if s.admit(a, &lim, now).is_ok() {
                admitted.push(ms);
            }
        }
        // The 4th token is due at T = 333,333,334 ns: at 334 ms.
        assert_eq!(admitted[..4], [0, 1, 2, 334]);
        assert!(
            admitted.len() <= 3 + 300 && admitted.len() >= 300,
            "{}",
            admitted.len()
        );
        // Any 1 s window: at most 2 * count - 1.
        for (i, &start) in admitted.iter().enumerate() {
            let within = admitted[i..]
                .iter()
                .take_while(|&&m| m < start + 1000)
                .count();
            assert!(within <= 5, "{within} in the second from {start} ms");
        }
    }

    #[test]
    fn rate_refusals_take_no_token() {
        let s = Sources::new(64, SEED);
        let a = v4(203, 0, 113, 9);
        let lim = rate(2, 10);
        assert!(s.admit(a, &lim, t(0)).is_ok());
        assert!(s.admit(a, &lim, t(0)).is_ok());
        for ms in 0..4999 {
            let now = ns(ms * 1_000_000);
            assert_eq!(s.admit(a, &lim, now), Err(SourceRefusal::RateLimit));
        }
        // The next token is due at 5 s however often it was asked for.
        assert_eq!(s.admit(a, &lim, t(5)), Ok(Admission::Counted));
    }

    #[test]
    fn overload_on_conn_limit_until_expiry() {
        let s = Sources::new(64, SEED);
        let (a, b) = (v4(192, 0, 2, 1), v4(192, 0, 2, 2));
        let lim = SourceLimits {
            max_conn: Some(1),
            overload_secs: 30,
            ..SourceLimits::OFF
        };
        assert_eq!(s.admit(a, &lim, t(10)), Ok(Admission::Counted));
        assert_eq!(s.admit(a, &lim, t(10)), Err(SourceRefusal::ConnLimit));
        assert!(s.is_overloaded(a, t(10)));
        s.release(a);
        assert_eq!(s.connections(a), 0);
        // Overloaded though it holds nothing now, for 30 s.
        assert_eq!(s.admit(a, &lim, t(10)), Err(SourceRefusal::Overloaded));
        assert_eq!(
            s.admit(a, &lim, ns(40 * NANOS_PER_SEC - 1)),
            Err(SourceRefusal::Overloaded)
        );
        // Every rule with a limit honours the list; a rule with none does not look.
        assert_eq!(
            s.admit(a, &max_conn(100), t(20)),
            Err(SourceRefusal::Overloaded)
        );
        assert_eq!(
            s.admit(a, &rate(100, 1), t(20)),
            Err(SourceRefusal::Overloaded)
        );
        assert_eq!(
            s.admit(a, &SourceLimits::OFF, t(20)),
            Ok(Admission::Unlimited)
        );
        assert_eq!(
            s.admit(b, &lim, t(20)),
            Ok(Admission::Counted),
            "only a is listed"
        );
        assert!(!s.is_overloaded(a, t(40)));
        assert_eq!(s.admit(a, &lim, t(40)), Ok(Admission::Counted));
        assert_eq!(s.connections(a), 1);
    }

    #[test]
    fn overload_on_rate_limit_and_none_without_overload_secs() {
        let s = Sources::new(64, SEED);
        let a = v4(192, 0, 2, 1);
        let lim = SourceLimits {
            rate: Some(Rate {
                count: 2,
                seconds: 1,
            }),
            overload_secs: 5,
            ..SourceLimits::OFF
        };
        assert!(s.admit(a, &lim, t(0)).is_ok());
        assert!(s.admit(a, &lim, t(0)).is_ok());
        assert_eq!(s.admit(a, &lim, t(0)), Err(SourceRefusal::RateLimit));
        // The rate has refilled after 1 s; the overload lasts 5.
        assert_eq!(s.admit(a, &lim, t(4)), Err(SourceRefusal::Overloaded));
        assert!(s.admit(a, &lim, t(5)).is_ok());

        let plain = rate(2, 1);
        let b = v4(192, 0, 2, 2);
        assert!(s.admit(b, &plain, t(0)).is_ok());
        assert!(s.admit(b, &plain, t(0)).is_ok());
        assert_eq!(s.admit(b, &plain, t(0)), Err(SourceRefusal::RateLimit));
        assert!(!s.is_overloaded(b, t(0)));
        assert!(s.admit(b, &plain, ns(NANOS_PER_SEC / 2)).is_ok());
    }

    #[test]
    fn overload_of_an_untracked_source_is_stored() {
        // A source refused at its first connection (max_conn 0) is listed.
        let s = Sources::new(64, SEED);
        let a = v4(192, 0, 2, 1);
        let lim = SourceLimits {
            max_conn: Some(0),
            overload_secs: 60,
            ..SourceLimits::OFF
        };
        assert_eq!(s.admit(a, &lim, t(1)), Err(SourceRefusal::ConnLimit));
        assert_eq!(s.len(), 1);
        assert_eq!(
            s.admit(a, &max_conn(5), t(2)),
            Err(SourceRefusal::Overloaded)
        );
    }

    #[test]
    fn limits_off_is_a_fast_path_touching_nothing() {
        let s = Sources::new(64, SEED);
        let a = v4(192, 0, 2, 1);
        assert!(SourceLimits::default().is_off());
        assert!(!max_conn(1).is_off());
        for _ in 0..10_000 {
            assert_eq!(
                s.admit(a, &SourceLimits::default(), t(1)),
                Ok(Admission::Unlimited)
            );
        }
        assert!(s.is_empty());
        assert_eq!(s.connections(a), 0);
        assert_eq!((s.displaced(), s.untracked()), (0, 0));
        assert!(s
            .buckets
            .iter()
            .all(|b| *b.lock().unwrap() == [Slot::EMPTY; WAYS]));
    }

    #[test]
    fn release_of_an_unknown_or_idle_source_is_harmless() {
        let s = Sources::new(64, SEED);
        let a = v4(192, 0, 2, 1);
        s.release(a);
        s.release(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        assert!(s.is_empty());
        assert!(s.admit(a, &rate(10, 10), t(1)).is_ok());
        for _ in 0..5 {
            s.release(a);
        }
        assert_eq!(s.connections(a), 0);
        assert_eq!(s.len(), 1, "kept for its rate debt");
        assert_eq!(s.admit(a, &max_conn(1), t(1)), Ok(Admission::Counted));
        assert_eq!(
            s.admit(a, &max_conn(1), t(1)),
            Err(SourceRefusal::ConnLimit)
        );
    }

    #[test]
    fn ipv4_mapped_is_the_same_source_and_families_are_apart() {
        let s = Sources::new(64, SEED);
        let a = v4(192, 0, 2, 1);
        let mapped = IpAddr::V6(Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped());
        let compat = IpAddr::V6(Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0xc000, 0x0201));
        assert!(s.admit(a, &max_conn(1), t(1)).is_ok());
        assert_eq!(
            s.admit(mapped, &max_conn(1), t(1)),
            Err(SourceRefusal::ConnLimit)
        );
        assert_eq!(s.admit(compat, &max_conn(1), t(1)), Ok(Admission::Counted));
    }

    #[test]
    fn idle_sources_are_displaced_no_rate_debt_first_then_least_recent() {
        let s = Sources::new(64, SEED);
        let anchor = v4(192, 0, 2, 1);
        let peers = same_bucket(&s, anchor, WAYS + 2);
        let in_bucket = |a: &IpAddr| s.connections(*a) > 0 || s.is_overloaded(*a, t(0));
        // Fill the bucket: peers[0] holds a connection, peers[1] is overloaded,
        // peers[2..8] hold none; peers[2] has rate debt, peers[3] is the oldest.
        let lim = SourceLimits {
            max_conn: Some(1),
            overload_secs: 1000,
            ..SourceLimits::OFF
        };
        assert!(s.admit(peers[0], &lim, t(10)).is_ok());
        assert!(s.admit(peers[1], &lim, t(10)).is_ok());
        assert!(s.admit(peers[1], &lim, t(10)).is_err());
        s.release(peers[1]);
        assert!(s.admit(peers[2], &rate(1, 1000), t(1)).is_ok());
        s.release(peers[2]);
        for (i, p) in peers[3..WAYS].iter().enumerate() {
            assert!(s.admit(*p, &rate(1, 1), t(2 + i as u64)).is_ok());
            s.release(*p);
        }
        assert_eq!(s.len(), WAYS);
        // At t = 100 the rate debts of peers[3..] are paid, peers[2]'s is not:
        // peers[3] (oldest without debt) goes first, then 4, 5, 6, 7, then 2.
        let newcomers = &peers[WAYS..];
        assert_eq!(
            s.admit(newcomers[0], &max_conn(5), t(100)),
            Ok(Admission::Counted)
        );
        assert_eq!(s.displaced(), 1);
        let tracked = |a: IpAddr| {
            let addr = addr_key(a);
            s.lock(&addr).iter().any(|x| x.used && x.addr == addr)
        };
        assert!(!tracked(peers[3]));
        assert!(tracked(peers[2]) && tracked(peers[4]));
        assert!(in_bucket(&peers[0]) && in_bucket(&peers[1]));
        assert_eq!(
            s.admit(newcomers[1], &max_conn(5), t(100)),
            Ok(Admission::Counted)
        );
        assert!(!tracked(peers[4]) && tracked(peers[2]));
        // Taking the bucket for more newcomers displaces 5, 6, 7 and then 2;
        // 0 (holding) and 1 (overloaded) stay, and then there is no room.
        let more = same_bucket(&s, newcomers[1], 40);
        let more: Vec<_> = more
            .into_iter()
            .filter(|a| !peers.contains(a))
            .take(5)
            .collect();
        for a in &more[..4] {
            assert_eq!(s.admit(*a, &max_conn(5), t(100)), Ok(Admission::Counted));
        }
        assert!(!tracked(peers[2]));
        assert_eq!(s.displaced(), 6);
        assert_eq!(
            s.admit(more[4], &max_conn(5), t(100)),
            Ok(Admission::Untracked)
        );
        assert_eq!(s.untracked(), 1);
        assert!(tracked(peers[0]) && tracked(peers[1]));
        assert_eq!(
            s.admit(peers[0], &lim, t(100)),
            Err(SourceRefusal::ConnLimit)
        );
        assert_eq!(
            s.admit(peers[1], &lim, t(100)),
            Err(SourceRefusal::Overloaded)
        );
        assert_eq!(s.len(), WAYS);
    }

    #[test]
    fn capacity_bound_under_a_million_spoofed_sources() {
        let s = Sources::new(4096, SEED);
        let before = (s.buckets.as_ptr(), s.buckets.len(), s.memory_bytes());
        let mut rng = Rng(1);
        let lim = SourceLimits {
            max_conn: Some(10),
            rate: Some(Rate {
                count: 5,
                seconds: 1,
            }),
            overload_secs: 60,
        };
        let mut untracked = 0u64;
        for i in 0..1_000_000u64 {
            let now = ns(i * 10_000); // 100,000 new sources a second
            let src = rng.source();
            match s.admit(src, &lim, now) {
                Ok(Admission::Counted) => {
                    // Half of the spoofed connections are dropped by the
                    // table early, the rest stay half-open.
                    if i % 2 == 0 {
                        s.release(src);
                    }
                }
                Ok(Admission::Untracked) => untracked += 1,
                other => panic!("spoofed source refused: {other:?}"),
            }
            assert!(s.len() <= s.capacity());
        }
        assert_eq!(s.len(), s.capacity());
        assert_eq!(s.untracked(), untracked);
        assert!(untracked > 0 && s.displaced() > 0);
        assert_eq!(
            (s.buckets.as_ptr(), s.buckets.len(), s.memory_bytes()),
            before
        );
    }

    #[test]
    fn real_sources_keep_their_slots_and_limits_under_a_million_spoofed_sources() {
        let s = Sources::new(65_536, SEED);
        let holder = v4(192, 0, 2, 10);
        let listed = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1));
        let lim = SourceLimits {
            max_conn: Some(5),
            rate: Some(Rate {
                count: 100,
                seconds: 1,
            }),
            overload_secs: 3600,
        };
        for _ in 0..5 {
            assert!(s.admit(holder, &lim, t(0)).is_ok());
        }
        assert_eq!(s.admit(holder, &lim, t(0)), Err(SourceRefusal::ConnLimit));
        s.release(holder);
        for _ in 0..6 {
            let _ = s.admit(listed, &lim, t(0));
        }
        assert!(s.is_overloaded(listed, t(0)));
        // `listed` holds nothing: only its overload keeps its slot.
        for _ in 0..5 {
            s.release(listed);
        }
        assert_eq!(s.connections(listed), 0);
        // Overloaded holder too: it exceeded max_conn with overload_secs set.
        assert!(s.is_overloaded(holder, t(0)));
        let spoof = SourceLimits {
            overload_secs: 0,
            ..lim
        };
        let mut rng = Rng(2);
        for i in 0..1_000_000u64 {
            let now = ns(i * 10_000);
            let src = rng.source();
            if s.admit(src, &spoof, now) == Ok(Admission::Counted) && i % 3 != 0 {
                s.release(src);
            }
            if i % 50_000 == 0 {
                assert_eq!(s.admit(holder, &lim, now), Err(SourceRefusal::Overloaded));
                assert_eq!(s.admit(listed, &lim, now), Err(SourceRefusal::Overloaded));
            }
        }
        assert!(s.displaced() > 0);
        assert_eq!(s.connections(holder), 4);
        // After the overload the count still holds: one more, then the limit.
        let later = t(3600);
        assert_eq!(s.admit(holder, &spoof, later), Ok(Admission::Counted));
        assert_eq!(
            s.admit(holder, &spoof, later),
            Err(SourceRefusal::ConnLimit)
        );
        assert!(!s.is_overloaded(listed, later));
        assert_eq!(s.admit(listed, &spoof, later), Ok(Admission::Counted));
    }

    #[test]
    fn a_source_holding_connections_is_never_displaced_by_newcomers() {
        // A tiny tracker (one bucket): every slot taken by a holder, a million
        // newcomers pass untracked and no holder loses its count.
        let s = Sources::new(WAYS, SEED);
        let holders: Vec<IpAddr> = (0..WAYS as u8).map(|i| v4(192, 0, 2, i)).collect();
        for h in &holders {
            assert!(s.admit(*h, &max_conn(2), t(0)).is_ok());
        }
        let mut rng = Rng(3);
        for i in 0..1_000_000u64 {
            let r = s.admit(rng.source(), &max_conn(2), ns(i));
            assert_eq!(r, Ok(Admission::Untracked));
        }
        assert_eq!((s.untracked(), s.displaced()), (1_000_000, 0));
        for h in &holders {
            assert_eq!(s.connections(*h), 1);
            assert!(s.admit(*h, &max_conn(2), t(9)).is_ok());
            assert_eq!(
                s.admit(*h, &max_conn(2), t(9)),
                Err(SourceRefusal::ConnLimit)
            );
        }
    }

    #[test]
    #[allow(clippy::disallowed_methods)]
    fn concurrent_admit_and_release_from_two_threads() {
        let s = Sources::new(1024, SEED);
        let shared = v4(192, 0, 2, 1);
        // Each thread holds at most 501 of `shared` at once.
        let lim = max_conn(1002);
        std::thread::scope(|scope| {
            for n in 0..2u8 {
                let s = &s;
                scope.spawn(move || {
                    for i in 0..20_000u32 {
                        assert!(s.admit(shared, &lim, t(1)).is_ok());
                        let own = v4(10, n, (i >> 8) as u8, i as u8);
                        assert!(s.admit(own, &lim, t(1)).is_ok());
                        s.release(own);
                        if i >= 500 {
                            s.release(shared);
                        }
                    }
                });
            }
        });
        assert_eq!(s.connections(shared), 1000);
        assert!(s.admit(shared, &lim, t(2)).is_ok());
        assert!(s.admit(shared, &lim, t(2)).is_ok());
        assert_eq!(s.admit(shared, &lim, t(2)), Err(SourceRefusal::ConnLimit));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn refusal_names() {
        assert_eq!(SourceRefusal::Overloaded.as_str(), "source_overloaded");
        assert_eq!(SourceRefusal::ConnLimit.as_str(), "source_conn_limit");
        assert_eq!(SourceRefusal::RateLimit.as_str(), "source_rate_limit");
        assert!(Admission::Counted.counted());
        assert!(!Admission::Untracked.counted() && !Admission::Unlimited.counted());
    }
}
