//! What the packet path and the operations share: the workers' counters
//! and heartbeats (health), the engine's clock, the drops ring and the event
//! hub the workers write and the control socket reads, and the stop. Neither
//! side reaches into the other; both reach here, and nothing here reaches
//! out of this room.

pub mod cluster;
pub mod drops;
pub mod hub;
pub mod notice;
pub mod rate;
pub mod stats;
pub mod stop;

pub use drops::{DropRecord, Drops};
pub use hub::Hub;
pub use stats::WorkerStats;
pub use stop::{Stop, StopSwitch};

use crate::time::Timestamp;
use crossbeam_utils::CachePadded;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// A worker whose loop has not come round for this long is stuck (its loop
/// wakes at least every receive timeout, 100 ms, packets or not).
pub const STUCK_AFTER: Duration = Duration::from_secs(5);

/// Bytes of a packet kept for a later look (drops ring, log lines): an IPv4
/// header with the most options (60) and a TCP header's ports and flags, or
/// an IPv6 header (40) with up to 48 bytes of extension headers before them.
pub const HEAD: usize = 96;

/// State shared by the daemon and its workers.
#[derive(Debug)]
pub struct Shared {
    pub start: Instant,
    /// The wall clock at `start`, milliseconds since the Unix epoch (drop
    /// records are stamped from the engine's clock plus this: no second
    /// clock reading per packet).
    pub start_unix_ms: u64,
    /// Bumped to make workers forget cached interface names (SIGHUP).
    pub ifnames_generation: AtomicU64,
    /// One slot per worker, refreshed about once a second.
    pub stats: Vec<CachePadded<Mutex<WorkerStats>>>,
    /// Per worker: its queue number, and the engine-clock millisecond its loop
    /// last came round (at least every receive timeout, packets or not).
    /// Each on cache lines of its own: a worker's beat does not invalidate
    /// the line another worker writes.
    pub heartbeats: Vec<CachePadded<(u16, AtomicU64)>>,
    pub drops: Drops,
    pub hub: Arc<Hub>,
    /// With a `[cluster]`: its state (set once, at start).
    pub cluster: std::sync::OnceLock<Arc<cluster::ClusterState>>,
    /// Bumped by a reader that wants the counters as they are now
    /// ([`Shared::fresh_totals`]); each worker publishes at its next turn
    /// round its loop and stores the request it answered in its slot here.
    pub publish_request: AtomicU64,
    pub published: Vec<CachePadded<AtomicU64>>,
}

impl Shared {
    /// `queues`: each worker's queue number.
    pub fn new(start: Instant, queues: &[u16]) -> Shared {
        Shared {
            start,
            start_unix_ms: wall_clock_ms(),
            ifnames_generation: AtomicU64::new(0),
            stats: queues
                .iter()
                .map(|_| CachePadded::new(Mutex::new(WorkerStats::default())))
                .collect(),
            heartbeats: queues
                .iter()
                .map(|&q| CachePadded::new((q, AtomicU64::new(0))))
                .collect(),
            drops: Drops::new(queues.len()),
            hub: Arc::new(Hub::default()),
            cluster: std::sync::OnceLock::new(),
            publish_request: AtomicU64::new(0),
            published: queues
                .iter()
                .map(|_| CachePadded::new(AtomicU64::new(0)))
                .collect(),
        }
    }

    /// Each worker's queue and how long ago its loop last came round (ms);
    /// `None` for one that never did.
    pub fn heartbeat_ages(&self) -> impl Iterator<Item = (u16, Option<u64>)> + '_ {
        let now_ms = self.now().as_nanos() / 1_000_000;
        self.heartbeats.iter().map(move |b| {
            let (queue, beat) = &**b;
            let at = beat.load(Ordering::Relaxed);
            (*queue, (at != 0).then(|| now_ms.saturating_sub(at)))
        })
    }

    /// Why the daemon is unhealthy: the workers whose loop has not come
    /// round within `stuck_after` (the loop wakes at least every receive
    /// timeout, packets or not, so a silent network is no reason).
    pub fn unhealthy(&self, stuck_after: Duration) -> Option<String> {
        let stuck: Vec<String> = self
            .heartbeat_ages()
            .filter(|(_, age)| age.map_or(true, |a| a >= stuck_after.as_millis() as u64))
            .map(|(queue, age)| match age {
                Some(a) => format!(
                    "worker of queue {queue}: no progress for {:.1} s",
                    a as f64 / 1e3
                ),
                None => format!("worker of queue {queue}: never started"),
            })
            .collect();
        (!stuck.is_empty()).then(|| stuck.join("; "))
    }

    /// Milliseconds since the Unix epoch at engine time `at`.
    pub fn unix_ms(&self, at: Timestamp) -> u64 {
        self.start_unix_ms + at.as_nanos() / 1_000_000
    }

    /// The engine's clock: monotonic, since the daemon started.
    #[inline]
    pub fn now(&self) -> Timestamp {
        self.timestamp(Instant::now())
    }

    /// The engine's time at `at`.
    pub fn timestamp(&self, at: Instant) -> Timestamp {
        Timestamp::from_nanos(at.saturating_duration_since(self.start).as_nanos() as u64)
    }

    /// Every worker's last published counters, merged.
    /// The counters as they are now: asks every worker to publish, and
    /// waits at most `wait` for them (a worker's loop comes round at least
    /// every receive timeout, 100 ms; a stuck one is not waited for longer).
    pub fn fresh_totals(&self, wait: Duration) -> WorkerStats {
        let request = self.publish_request.fetch_add(1, Ordering::Relaxed) + 1;
        let deadline = Instant::now() + wait;
        while self
            .published
            .iter()
            .any(|p| p.load(Ordering::Acquire) < request)
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.totals()
    }

    pub fn totals(&self) -> WorkerStats {
        let mut total = WorkerStats::default();
        for slot in &self.stats {
            total.merge(&slot.lock().unwrap_or_else(|e| e.into_inner()));
        }
        total
    }
}

/// The wall clock: milliseconds since the Unix epoch.
pub fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
