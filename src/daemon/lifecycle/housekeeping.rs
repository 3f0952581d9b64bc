//! Housekeeping, once a second off the packet path: expiry, the periodic
//! statistics line, the warning when no packet arrives, and (hand-off mode)
//! keeping handed-off connections the kernel still carries.

use super::super::shared::{Shared, Stop, WorkerStats, STUCK_AFTER};
use super::daemon_table::QueueSpec;
use crate::kernel::ctnetlink::Conntrack;
use crate::reason::Verdict;
use crate::time::Timestamp;
use crate::wire::PROTO_TCP;
use crate::Engine;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// `reason=count` for the non-zero reasons (the `top` largest, or all).
fn reasons(s: &WorkerStats, top: Option<usize>) -> String {
    let mut reasons: Vec<_> = s.counters.iter().collect();
    if let Some(n) = top {
        reasons.sort_by_key(|r| std::cmp::Reverse(r.1));
        reasons.truncate(n);
    }
    let mut out = String::new();
    for (r, n) in reasons {
        if !out.is_empty() {
            out.push(' ');
        }
        let _ = write!(out, "{}={n}", r.name());
    }
    out
}

/// One log line of counters (periodic, and the final summary).
pub(super) fn log_stats(message: &str, s: &WorkerStats, engine: &Engine, top: Option<usize>) {
    info!(
        packets = s.packets(),
        accepted = s.counters.total(Verdict::Accept),
        dropped = s.counters.total(Verdict::Drop),
        connections = engine.table().len(),
        half_open = engine.table().half_open(),
        evicted_half_open = engine.table().evictions().half_open,
        evicted_unreplied = engine.table().evictions().unreplied,
        recv_errors = s.recv_errors,
        enobufs = s.enobufs,
        verdict_errors = s.verdict_errors,
        log_events_lost = s.events_lost,
        csum_not_ready = s.csum_not_ready,
        headers_only = s.truncated_copies,
        engine_panics = s.engine_panics,
        reads = s.reads,
        verdict_messages = s.verdict_messages,
        handoff_marked = s.handoff_marked,
        rejects_sent = s.rejects_sent,
        rejects_rate_limited = s.rejects_rate_limited,
        rejects_failed = s.rejects_failed,
        synproxy_sent = s.synproxy_sent,
        synproxy_send_failures = s.synproxy_send_failures,
        reasons = reasons(s, top).as_str(),
        "{message}"
    );
}

pub(super) struct Housekeeping {
    pub engine: Arc<Engine>,
    pub shared: Arc<Shared>,
    pub stats_interval: Duration,
    /// Zero: no warning.
    pub idle_warning: Duration,
    pub queues: QueueSpec,
    pub handoff: Option<KeepHandedOff>,
    /// Periodic snapshots of the table for a restart after a crash: the
    /// state file and how often.
    pub snapshots: Option<(std::path::PathBuf, Duration)>,
}

/// Hand-off mode: keeps the engine's handed-off connections alive while the
/// kernel's conntrack still carries them (see [`crate::kernel::ctnetlink`]).
pub(super) struct KeepHandedOff {
    mark: u32,
    timeout: u32,
    /// Zero: never.
    every: Duration,
    conntrack: Option<Conntrack>,
    warned: bool,
}

impl KeepHandedOff {
    pub(super) fn new(mark: u32, timeout: u32, every: Duration) -> KeepHandedOff {
        KeepHandedOff {
            mark,
            timeout,
            every,
            conntrack: None,
            warned: false,
        }
    }

    fn run(&mut self, engine: &Engine, now: Timestamp) {
        let result = (|| -> anyhow::Result<(usize, usize)> {
            if self.conntrack.is_none() {
                self.conntrack = Some(Conntrack::open()?);
            }
            let ct = self.conntrack.as_mut().expect("opened above");
            let (mut marked, mut kept) = (0, 0);
            for family in [libc::AF_INET, libc::AF_INET6] {
                for e in ct.dump_marked(family, self.mark)? {
                    marked += 1;
                    if e.protocol == PROTO_TCP
                        && engine.keep_handed_off(e.src, e.dst, now, self.timeout)
                    {
                        kept += 1;
                    }
                }
            }
            Ok((marked, kept))
        })();
        match result {
            Ok((marked, kept)) => {
                if std::mem::replace(&mut self.warned, false) {
                    info!("hand-off mode: reading the kernel's conntrack table works again");
                }
                tracing::debug!(
                    marked,
                    kept,
                    "kept handed-off connections the kernel carries"
                )
            }
            Err(e) => {
                // A broken socket is reopened next time.
                self.conntrack = None;
                tracing::debug!("reading the kernel's conntrack table: {e:#}");
                if !std::mem::replace(&mut self.warned, true) {
                    warn!(
                        "hand-off mode: cannot read the kernel's conntrack table ({e:#}); \
                         handed-off connections live {} s in the engine without queued \
                         packets, then their FIN or RST is refused",
                        self.timeout
                    );
                }
            }
        }
    }
}

/// How often the SYN cookie keys change (at least the two minutes a cookie
/// is good for, so that every cookie still checks: with the keys it was
/// made with, or the ones before them).
const COOKIE_ROTATION: Duration = Duration::from_secs(300);

impl Housekeeping {
    /// Runs until the stop, a round a second.
    pub(super) fn run(mut self, stop: Stop) {
        let mut last_stats = Instant::now();
        let mut last_snapshot = Instant::now();
        let mut last_status = Instant::now();
        let mut snapshot_failed = false;
        let mut last_keep = Instant::now();
        let mut last_rotation = Instant::now();
        let mut idle_warned = self.idle_warning.is_zero();
        while !stop.wait(Duration::from_secs(1)) {
            // The SYN cookie keys, every COOKIE_ROTATION: a cookie is good
            // for two minutes and checks with the keys before too.
            if self.engine.synproxy_configured() && last_rotation.elapsed() >= COOKIE_ROTATION {
                last_rotation = Instant::now();
                match super::random_key() {
                    Ok(key) => self.engine.set_cookie_keys(key),
                    Err(e) => warn!("{e:#}: the SYN cookie keys were not rotated"),
                }
            }
            if let Some(keep) = self.handoff.as_mut() {
                if !keep.every.is_zero() && last_keep.elapsed() >= keep.every {
                    last_keep = Instant::now();
                    keep.run(&self.engine, self.shared.now());
                }
            }
            if let Some((path, every)) = &self.snapshots {
                if last_snapshot.elapsed() >= *every {
                    last_snapshot = Instant::now();
                    match super::state::save(path, &self.engine, self.shared.now(), false) {
                        Ok((connections, bytes)) => {
                            snapshot_failed = false;
                            tracing::debug!(connections, bytes, "snapshot of the table written");
                        }
                        Err(e) if !std::mem::replace(&mut snapshot_failed, true) => {
                            warn!("{e:#}: a restart after a crash will not find the table")
                        }
                        Err(_) => {}
                    }
                }
            }
            let expired = self.engine.expire(self.shared.now());
            if expired > 0 {
                tracing::trace!(expired, "expired connections");
            }
            if !idle_warned && self.shared.start.elapsed() >= self.idle_warning {
                idle_warned = true;
                if self.shared.totals().packets() == 0 {
                    warn!(
                        queues = %self.queues,
                        "no packet received on queue(s) {} in {} s: the NFQUEUE rule seems \
                         missing. Add one, e.g. `iptables -I FORWARD -j NFQUEUE --queue-num {} \
                         --queue-bypass` (and the same with ip6tables), or run with \
                         --install-iptables",
                        self.queues,
                        self.idle_warning.as_secs(),
                        self.queues.first()
                    );
                }
            }
            // The systemd watchdog (WatchdogSec=) is fed only while every
            // worker makes progress: a stuck worker gets the service restarted.
            if self.shared.unhealthy(STUCK_AFTER).is_none() {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Watchdog]);
            }
            if last_status.elapsed() >= Duration::from_secs(5) {
                last_status = Instant::now();
                let table = self.engine.table();
                let status = format!(
                    "{} connections tracked, {} half-open",
                    table.len(),
                    table.half_open()
                );
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(&status)]);
            }
            if !self.stats_interval.is_zero() && last_stats.elapsed() >= self.stats_interval {
                last_stats = Instant::now();
                log_stats("stats", &self.shared.totals(), &self.engine, Some(8));
            }
        }
    }
}
