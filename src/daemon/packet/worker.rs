//! The worker loop: recv → decide → verdict, one thread per queue.
//!
//! Each worker owns one queue ([`crate::kernel::nfqueue`]); all workers share
//! the engine (one connection table). A worker reads a batch of packets per
//! `recvmmsg`, reads the clock once per batch, and sends the batch's verdicts
//! coalesced into batch verdicts with one `send`.

use super::super::shared::hub::Record;
use super::super::shared::notice::{Notice, PacketNotice};
use super::super::shared::{DropRecord, Shared, Stop, WorkerStats};
use super::reject::Replies;
use crate::conntrack::ConnState;
use crate::engine::Context;
use crate::kernel::ifnames::IfNames;
use crate::kernel::nfqueue::codec::{self, Item, QueuedPacket, Receiver, Verdicts};
use crate::kernel::nfqueue::BoundQueue;
use crate::policy::Interfaces;
use crate::reason::Verdict;
use crate::time::Timestamp;
use crate::wire::{Checksums, Framing};
use crate::Engine;
use crossbeam_channel::{Sender, TrySendError};
use std::os::fd::BorrowedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often a worker publishes its counters and refreshes its interface names.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);
const IFNAMES_TTL: Duration = Duration::from_secs(30);

/// Hand-off mode (see README "Hand-off mode"): established TCP connections are
/// handed to the kernel by marking their packets' verdicts.
#[derive(Clone, Copy, Debug)]
pub struct Handoff {
    /// The mark bit(s) OR-ed into the packet mark; iptables saves them to the connmark.
    pub mark: u32,
    /// Seconds a handed-off connection lives in the engine without
    /// queued packets (at least the kernel's established timeout).
    pub timeout: u32,
    /// With the SYN proxy: proxied connections are handed off too, their
    /// translation given to the kernel's conntrack
    /// ([`crate::kernel::handover::HandOver`]);
    /// `Some(true)` when the kernel's SYN proxy hooks are registered (they
    /// translate timestamps).
    pub proxied: Option<bool>,
}

impl Handoff {
    /// What the kernel's entry of a proxied connection handed over gets.
    pub fn entry(&self) -> super::proxy::KernelEntry {
        super::proxy::KernelEntry {
            mark: self.mark,
            timeout: self.timeout,
        }
    }
}

pub struct Worker {
    pub queue: BoundQueue,
    pub index: usize,
    pub engine: Arc<Engine>,
    pub shared: Arc<Shared>,
    pub stop: Stop,
    /// To the logging thread.
    pub notices: Sender<Notice>,
    /// Send an event for every dropped packet (drop lines are enabled).
    pub log_drops: bool,
    pub handoff: Option<Handoff>,
    /// Answers to rejected packets, sent after each batch's verdicts.
    pub replies: Replies,
    /// The SYN proxy's sending, rewriting and (hand-off mode) handing over,
    /// when it is configured.
    pub proxying: Option<super::proxy::Proxying>,
    /// The batch's drops, recorded in the drops ring once per batch (the
    /// worker's thread only: the cell is never contended).
    pub dropped: std::cell::RefCell<Vec<DropRecord>>,
}

impl Worker {
    /// Runs until the stop; then answers what is still queued, unbinds
    /// and returns the final counters.
    pub fn run(mut self) -> WorkerStats {
        let mut stats = WorkerStats::default();
        let mut ifnames = IfNames::default();
        let mut generation = self.shared.ifnames_generation.load(Ordering::Relaxed);
        let mut last_publish = Instant::now();
        let mut last_ifnames_clear = last_publish;
        let mut consecutive_errors = 0u32;
        let mut answered = 0u64;
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
            if self.stop.is_set() {
                break;
            }
            // Once a second, or at once when a reader asks (`stats`).
            let request = self.shared.publish_request.load(Ordering::Relaxed);
            if request != answered {
                answered = request;
                self.publish(&mut stats);
                self.shared.published[self.index].store(request, Ordering::Release);
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
                match &self.proxying {
                    Some(proxy) if verdict == Verdict::Accept => {
                        proxy.hand_back(tx, &p, mark, stats)
                    }
                    _ => tx.push(p.id, verdict, mark),
                }
            }
            Item::Error(errno) => self.verdict_error(errno, stats),
        });
        if let Some(proxy) = &self.proxying {
            proxy.send(stats);
        }
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
            let event = Notice::VerdictSendFailed {
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
        self.send(Notice::VerdictError { queue, errno }, stats);
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
            Notice::RecvError {
                queue: self.queue.num,
                errno,
            },
            stats,
        );
    }

    #[inline]
    fn send(&self, event: Notice, stats: &mut WorkerStats) {
        match self.notices.try_send(event) {
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
            kernel_translates: self
                .proxying
                .as_ref()
                .filter(|p| p.can_hand_over())
                .and(self.handoff.and_then(|h| h.proxied)),
        };
        // A panic in the engine (a bug) must not take the firewall down with
        // it, or a packet that triggers it would switch filtering off (or, fail-
        // closed, cut the network) at will: that packet is dropped and counted,
        // the panic message is on stderr, and the worker carries on.
        let decided =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &self.proxying {
                Some(proxy) => proxy.decide(&self.engine, payload, &ctx, now, stats),
                None => self.engine.decide(payload, &ctx, now),
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
            let event = PacketNotice::new(
                self.queue.num,
                d.reason,
                d.rule,
                d.log,
                in_idx,
                out_idx,
                len,
                payload,
            );
            self.send(Notice::Packet(event), stats);
        }
        if d.reason.is_reject() {
            self.replies.prepare(payload, framing, now, stats);
        }
        if let (Verdict::Accept, Some(proxy), Some(handoff)) =
            (verdict, &self.proxying, &self.handoff)
        {
            proxy.reset_in_kernel(payload, handoff.entry(), stats);
        }
        match verdict {
            Verdict::Drop => (Verdict::Drop, None),
            Verdict::Accept => match &self.handoff {
                // Handed off by the decision itself (`Context::hand_off`);
                // a proxied connection's translation goes to the kernel first.
                Some(b)
                    if d.handed_off
                        && self.proxying.as_ref().map_or(true, |proxy| {
                            proxy.hand_over(&self.engine, payload, framing, b.entry(), stats)
                        }) =>
                {
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
