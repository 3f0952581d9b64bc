//! The worker loop: recv → decide → verdict, one thread per queue.
//!
//! Each worker owns one queue ([`crate::kernel::nfqueue`]); all workers share
//! the engine (one connection table). A worker reads a batch of packets per
//! `recvmmsg`, reads the clock once per batch, and sends the batch's verdicts
//! coalesced into batch verdicts with one `send`.

use crate::conntrack::ConnState;
use crate::daemon::drops::{DropRecord, Drops};
use crate::daemon::events::{Hub, Record};
use crate::daemon::logging::{Event, PacketEvent};
use crate::engine::Context;
use crate::kernel::ifnames::IfNames;
use crate::kernel::nfqueue::codec::{self, Item, QueuedPacket, Receiver, Verdicts};
use crate::kernel::nfqueue::BoundQueue;
use crate::policy::Interfaces;
use crate::reason::{Counters, Verdict};
use crate::time::Timestamp;
use crate::wire::{Checksums, Framing};
use crate::Engine;
use crossbeam_channel::{Sender, TrySendError};
use crossbeam_utils::CachePadded;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How often a worker publishes its counters and refreshes its interface names.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);
const IFNAMES_TTL: Duration = Duration::from_secs(30);

/// What a worker counts besides verdict reasons.
#[derive(Clone, Debug, Default)]
pub struct WorkerStats {
    pub counters: Counters,
    /// recv failures other than timeouts (ENOBUFS included).
    pub recv_errors: u64,
    /// Of those, socket buffer overruns.
    pub enobufs: u64,
    pub verdict_errors: u64,
    /// Verdict sends that failed: their verdicts were kept and sent again
    /// (never lost, see `codec::Verdicts`).
    pub verdict_send_failures: u64,
    /// Backlogs of unsendable verdicts replaced by one batch drop.
    pub verdict_backlogs_dropped: u64,
    /// Log events dropped because the logging thread lagged behind.
    pub events_lost: u64,
    /// Packets whose checksum was not computed yet (GSO or offload).
    pub csum_not_ready: u64,
    /// Packets longer than the copy range (only their headers were copied).
    pub truncated_copies: u64,
    /// Packets whose decision panicked (an engine bug): dropped.
    pub engine_panics: u64,
    /// Receive system calls that returned packets.
    pub reads: u64,
    /// Verdict messages sent (a batch verdict answers several packets).
    pub verdict_messages: u64,
    /// Hand-off mode: packets whose verdict carried the hand-off mark (their
    /// connection was handed to the kernel).
    pub handoff_marked: u64,
    /// Per rule of the policy of `rules_generation` (by index): [packets the
    /// rule decided, new connections it admitted]. A reload starts afresh.
    pub rule_hits: Vec<[u64; 2]>,
    pub rules_generation: u16,
    /// `rules_generation` has been set (a fresh total has none yet, and
    /// takes its first merge's).
    pub rules_set: bool,
    /// Answers to rejected packets sent, over `reject_rate` (not sent), and
    /// failed (no raw socket, or the send failed). See `daemon::reject`.
    pub rejects_sent: u64,
    pub rejects_rate_limited: u64,
    pub rejects_failed: u64,
}

impl WorkerStats {
    pub fn merge(&mut self, o: &WorkerStats) {
        self.counters.merge(&o.counters);
        self.recv_errors += o.recv_errors;
        self.enobufs += o.enobufs;
        self.verdict_errors += o.verdict_errors;
        self.verdict_send_failures += o.verdict_send_failures;
        self.verdict_backlogs_dropped += o.verdict_backlogs_dropped;
        self.events_lost += o.events_lost;
        self.csum_not_ready += o.csum_not_ready;
        self.truncated_copies += o.truncated_copies;
        self.engine_panics += o.engine_panics;
        self.reads += o.reads;
        self.verdict_messages += o.verdict_messages;
        self.handoff_marked += o.handoff_marked;
        self.merge_rule_hits(o);
        self.rejects_sent += o.rejects_sent;
        self.rejects_rate_limited += o.rejects_rate_limited;
        self.rejects_failed += o.rejects_failed;
    }

    /// Rule hits add up only within one policy generation: the newer one
    /// (by wrapping distance) wins, so a worker that has not published since
    /// a reload cannot hold the totals back at the old policy.
    fn merge_rule_hits(&mut self, o: &WorkerStats) {
        let newer = o.rules_generation.wrapping_sub(self.rules_generation);
        if !self.rules_set || (newer != 0 && newer < u16::MAX / 2) {
            self.reset_rules(o.rules_generation);
        } else if newer != 0 {
            return;
        }
        if self.rule_hits.len() < o.rule_hits.len() {
            self.rule_hits.resize(o.rule_hits.len(), [0; 2]);
        }
        for (mine, theirs) in self.rule_hits.iter_mut().zip(&o.rule_hits) {
            mine[0] += theirs[0];
            mine[1] += theirs[1];
        }
    }

    /// Starts the rule hits afresh for the policy of `generation` (a reload
    /// renumbers rules); nothing when they are of it already.
    fn reset_rules(&mut self, generation: u16) {
        if self.rules_generation != generation || !self.rules_set {
            self.rules_generation = generation;
            self.rules_set = true;
            self.rule_hits.clear();
        }
    }

    pub fn packets(&self) -> u64 {
        self.counters.total(Verdict::Accept) + self.counters.total(Verdict::Drop)
    }
}

/// State shared by the daemon and its workers.
#[derive(Debug)]
pub struct Shared {
    pub start: Instant,
    /// The wall clock at `start`, milliseconds since the Unix epoch (drop
    /// records are stamped from the engine's clock plus this: no second
    /// clock reading per packet).
    pub start_unix_ms: u64,
    pub stop: AtomicBool,
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
}

impl Shared {
    /// `queues`: each worker's queue number.
    pub fn new(start: Instant, queues: &[u16]) -> Shared {
        Shared {
            start,
            start_unix_ms: crate::daemon::events::unix_ms(),
            stop: AtomicBool::new(false),
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
    pub fn totals(&self) -> WorkerStats {
        let mut total = WorkerStats::default();
        for slot in &self.stats {
            total.merge(&slot.lock().unwrap_or_else(|e| e.into_inner()));
        }
        total
    }
}

/// Hand-off mode (see README "Hand-off mode"): established TCP connections are
/// handed to the kernel by marking their packets' verdicts.
#[derive(Clone, Copy, Debug)]
pub struct Handoff {
    /// The mark bit(s) OR-ed into the packet mark; iptables saves them to the connmark.
    pub mark: u32,
    /// Seconds a handed-off connection lives in the engine without
    /// queued packets (at least the kernel's established timeout).
    pub timeout: u32,
}

pub struct Worker {
    pub queue: BoundQueue,
    pub index: usize,
    pub engine: Arc<Engine>,
    pub shared: Arc<Shared>,
    pub events: Sender<Event>,
    /// Send an event for every dropped packet (drop lines are enabled).
    pub log_drops: bool,
    pub handoff: Option<Handoff>,
    /// Answers to rejected packets, sent after each batch's verdicts.
    pub replies: super::reject::Replies,
    /// The batch's drops, recorded in the drops ring once per batch (the
    /// worker's thread only: the cell is never contended).
    pub dropped: std::cell::RefCell<Vec<DropRecord>>,
}

impl Worker {
    /// Runs until `shared.stop`; then answers what is still queued, unbinds
    /// and returns the final counters.
    pub fn run(mut self) -> WorkerStats {
        let mut stats = WorkerStats::default();
        let mut ifnames = IfNames::default();
        let mut generation = self.shared.ifnames_generation.load(Ordering::Relaxed);
        let mut last_publish = Instant::now();
        let mut last_ifnames_clear = last_publish;
        let mut consecutive_errors = 0u32;
        let mut rx = Receiver::new(self.queue.fd(), self.queue.copy_range);
        self.beat(Instant::now());
        let mut tx = Verdicts::new(self.queue.fd(), self.queue.num);
        loop {
            let received = rx.recv(false);
            // One clock reading per read, for the engine and for the publishing below.
            let now = Instant::now();
            self.beat(now);
            match received {
                Ok(_) => {
                    consecutive_errors = 0;
                    let at = self.shared.timestamp(now);
                    self.process(&rx, &mut tx, &mut stats, &mut ifnames, at);
                }
                Err(e) => match e.kind() {
                    std::io::ErrorKind::WouldBlock
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::Interrupted => {
                        // Verdicts a failed send left behind go again now,
                        // not only with the next packet's.
                        if tx.pending() {
                            self.flush(&mut tx, &mut stats);
                        }
                    }
                    _ => {
                        self.recv_error(&e, &mut stats);
                        consecutive_errors += 1;
                        if consecutive_errors > 100 {
                            // A persistent error: do not spin.
                            std::thread::sleep(Duration::from_millis(10));
                        }
                    }
                },
            }
            if self.shared.stop.load(Ordering::Relaxed) {
                break;
            }
            if now.duration_since(last_publish) >= PUBLISH_EVERY {
                last_publish = now;
                self.publish(&mut stats);
                let g = self.shared.ifnames_generation.load(Ordering::Relaxed);
                if g != generation || now.duration_since(last_ifnames_clear) >= IFNAMES_TTL {
                    generation = g;
                    last_ifnames_clear = now;
                    ifnames.clear();
                }
            }
        }
        self.drain(&mut rx, &mut tx, &mut stats, &mut ifnames);
        // Verdicts still unsent go before the queue is unbound (unbinding
        // drops every packet still waiting, the accepted ones too).
        for _ in 0..10 {
            if !tx.pending() {
                break;
            }
            self.flush(&mut tx, &mut stats);
            if tx.pending() {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        drop((rx, tx));
        if let Err(e) = self.queue.unbind() {
            tracing::debug!(queue = self.queue.num, "unbinding: {e}");
        }
        self.publish(&mut stats);
        stats
    }

    /// Answers every packet already queued to us (shutdown), without waiting.
    fn drain(
        &self,
        rx: &mut Receiver,
        tx: &mut Verdicts<BorrowedFd<'_>>,
        stats: &mut WorkerStats,
        ifnames: &mut IfNames,
    ) {
        // Bounded: with the administrator's own rule packets keep coming.
        for _ in 0..(2 * 65_536 / codec::BATCH) {
            match rx.recv(true) {
                Ok(_) => self.process(rx, tx, stats, ifnames, self.shared.now()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.recv_error(&e, stats);
                    break;
                }
            }
        }
    }

    /// Decides every packet of the batch just read at `now` (one clock
    /// reading per batch: the engine's timeouts are in seconds), then sends
    /// the verdicts.
    fn process(
        &self,
        rx: &Receiver,
        tx: &mut Verdicts<BorrowedFd<'_>>,
        stats: &mut WorkerStats,
        ifnames: &mut IfNames,
        now: Timestamp,
    ) {
        stats.reads += 1;
        rx.for_each(|item| match item {
            Item::Packet(p) => {
                let (verdict, mark) = self.handle(&p, now, stats, ifnames);
                tx.push(p.id, verdict, mark);
            }
            Item::Error(errno) => self.verdict_error(errno, stats),
        });
        self.flush(tx, stats);
        let mut dropped = self.dropped.borrow_mut();
        self.shared.drops.record_all(self.index, &dropped);
        dropped.clear();
        drop(dropped);
        self.replies.send(stats);
    }

    /// Sends the verdicts decided so far; a failed send is counted and
    /// logged, and its verdicts stay queued for the next flush.
    fn flush(&self, tx: &mut Verdicts<BorrowedFd<'_>>, stats: &mut WorkerStats) {
        let (messages, collapsed) = (tx.messages, tx.collapsed);
        if let Err(e) = tx.flush() {
            stats.verdict_send_failures += 1;
            stats.verdict_errors += 1;
            let event = Event::VerdictSendFailed {
                queue: self.queue.num,
                errno: e.raw_os_error().unwrap_or(0),
                collapsed: tx.collapsed != collapsed,
            };
            self.send(event, stats);
        }
        stats.verdict_messages += tx.messages - messages;
        stats.verdict_backlogs_dropped += tx.collapsed - collapsed;
    }

    /// Tells `status` and the watchdog that the loop came round at `now`.
    fn beat(&self, now: Instant) {
        // 0 means "never came round".
        let ms = now.saturating_duration_since(self.shared.start).as_millis() as u64;
        self.shared.heartbeats[self.index]
            .1
            .store(ms.max(1), Ordering::Relaxed);
    }

    fn verdict_error(&self, errno: i32, stats: &mut WorkerStats) {
        stats.verdict_errors += 1;
        let queue = self.queue.num;
        self.send(Event::VerdictError { queue, errno }, stats);
    }

    fn publish(&self, stats: &mut WorkerStats) {
        // Hits of rules since reloaded are not this policy's: start afresh,
        // even if no rule decided anything since.
        stats.reset_rules(self.engine.generation());
        let mut slot = self.shared.stats[self.index]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        slot.clone_from(stats);
    }

    fn recv_error(&self, e: &std::io::Error, stats: &mut WorkerStats) {
        let errno = e.raw_os_error().unwrap_or(0);
        stats.recv_errors += 1;
        if errno == libc::ENOBUFS {
            stats.enobufs += 1;
        }
        self.send(
            Event::RecvError {
                queue: self.queue.num,
                errno,
            },
            stats,
        );
    }

    #[inline]
    fn send(&self, event: Event, stats: &mut WorkerStats) {
        match self.events.try_send(event) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                stats.events_lost += 1
            }
        }
    }

    /// Decides one packet: its verdict, and the mark to set with it.
    #[inline]
    fn handle(
        &self,
        p: &QueuedPacket<'_>,
        now: Timestamp,
        stats: &mut WorkerStats,
        ifnames: &mut IfNames,
    ) -> (Verdict, Option<u32>) {
        let (in_idx, out_idx) = (p.indev, p.outdev);
        ifnames.ensure(in_idx);
        ifnames.ensure(out_idx);
        let payload = p.payload;
        let wire_len = p.wire_len;
        if wire_len > payload.len() {
            stats.truncated_copies += 1;
        }
        // NFQA_SKB_INFO (sent because the queue has NFQA_CFG_F_GSO) marks
        // packets whose checksum is partial (CHECKSUM_PARTIAL: GSO or
        // offloaded). Their checksum field is not final: never validate it.
        let checksums = if p.checksum_ready {
            Checksums::Verify
        } else {
            stats.csum_not_ready += 1;
            Checksums::NotComputed
        };
        let len = wire_len.min(u32::MAX as usize) as u32;
        let framing = Framing {
            wire_len: Some(len),
            checksums,
        };
        let ctx = Context {
            ifaces: Interfaces {
                input: ifnames.get(in_idx),
                output: ifnames.get(out_idx),
            },
            framing,
            hand_off: self.handoff.map(|h| h.timeout),
        };
        // A panic in the engine (a bug) must not take the firewall down with
        // it, or a packet that triggers it would switch filtering off (or, fail-
        // closed, cut the network) at will: that packet is dropped and counted,
        // the panic message is on stderr, and the worker carries on.
        let decided = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.engine.decide(payload, &ctx, now)
        }));
        let d = match decided {
            Ok(d) => d,
            Err(_) => {
                stats.engine_panics += 1;
                return (Verdict::Drop, None);
            }
        };
        let verdict = d.verdict();
        stats.counters.record(d.reason);
        if let Some(rule) = d.rule {
            self.count_rule(rule, &d, stats);
        }
        if verdict == Verdict::Drop {
            let record = DropRecord::new(
                self.shared.unix_ms(now),
                self.queue.num,
                d.reason,
                d.before,
                payload,
                len,
            );
            self.dropped.borrow_mut().push(record);
            if self.shared.hub.wants_drops() {
                self.shared.hub.send(Record::Drop(record));
            }
        }
        if d.log || (verdict == Verdict::Drop && self.log_drops) {
            let event = PacketEvent::new(
                self.queue.num,
                d.reason,
                d.rule,
                d.log,
                in_idx,
                out_idx,
                len,
                payload,
            );
            self.send(Event::Packet(event), stats);
        }
        if d.reason.is_reject() {
            self.replies.prepare(payload, framing, now, stats);
        }
        match verdict {
            Verdict::Drop => (Verdict::Drop, None),
            Verdict::Accept => match &self.handoff {
                // Handed off by the decision itself (`Context::hand_off`).
                Some(b) if d.handed_off => {
                    stats.handoff_marked += 1;
                    (Verdict::Accept, Some(p.mark | b.mark))
                }
                _ => (Verdict::Accept, None),
            },
        }
    }

    /// Counts a packet a rule decided. The vector grows the first time a
    /// rule is hit after a reload (once per rule), never otherwise.
    fn count_rule(&self, rule: u16, d: &crate::engine::Decision, stats: &mut WorkerStats) {
        stats.reset_rules(d.generation);
        let i = usize::from(rule);
        if i >= stats.rule_hits.len() {
            stats.rule_hits.resize(i + 1, [0; 2]);
        }
        stats.rule_hits[i][0] += 1;
        if d.before == ConnState::None && d.after != ConnState::None {
            stats.rule_hits[i][1] += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits(generation: u16, hits: &[[u64; 2]]) -> WorkerStats {
        WorkerStats {
            rules_generation: generation,
            rules_set: true,
            rule_hits: hits.to_vec(),
            ..WorkerStats::default()
        }
    }

    /// After a reload, a worker that has published under the new policy
    /// (even with no hits yet) wins over one still at the old policy,
    /// whatever the order they are merged in.
    #[test]
    fn rule_hits_add_up_within_the_newest_policy_only() {
        let fresh = hits(3, &[]);
        let stale = hits(2, &[[7, 7]]);
        let current = hits(3, &[[1, 0], [2, 1]]);
        for order in [[&fresh, &stale, &current], [&stale, &current, &fresh]] {
            let mut total = WorkerStats::default();
            for w in order {
                total.merge(w);
            }
            assert_eq!(total.rules_generation, 3);
            assert_eq!(total.rule_hits, [[1, 0], [2, 1]]);
        }
        // A fresh total takes any first generation, however large.
        let mut total = WorkerStats::default();
        total.merge(&hits(40_000, &[[4, 4]]));
        assert_eq!((total.rules_generation, total.rule_hits.len()), (40_000, 1));
        // Across the wrap: 0 is newer than u16::MAX.
        let mut total = hits(u16::MAX, &[[5, 5]]);
        total.merge(&hits(0, &[[1, 1]]));
        assert_eq!((total.rules_generation, total.rule_hits), (0, vec![[1, 1]]));
    }
}
