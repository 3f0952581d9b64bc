//! The Prometheus metrics endpoint (`[daemon] metrics_listen`,
//! `--metrics-listen`): `GET /metrics` answers the Prometheus text format,
//! or OpenMetrics when the scraper asks for it (`Accept:
//! application/openmetrics-text`); anything else is 404.
//!
//! Every value is computed at scrape time from what the daemon keeps anyway:
//! the counters each worker publishes about once a second
//! ([`Shared::stats`]), the table's atomic counts and limits, the state
//! census of the last expiry walk ([`Table::census`]), the reload counters
//! ([`Reloads`]) and the control socket's bad requests. A scrape never walks
//! the table, and workers never wait for it: it locks a worker's slot only to
//! copy it, at most once a second whatever the scrape rate (a scrape within
//! [`MIN_INTERVAL`] of the last gets the same text).
//!
//! The endpoint runs on a thread of its own and serves one client at a
//! time, each in at most 5 s and 8 KiB of request (see [`serve`]): a client
//! that hangs delays other scrapes by that much, never the workers. Bind it
//! to loopback or a management address all the same.
//!
//! Labels are bounded: reason names ([`Reason::ALL`]), verdicts, queue
//! numbers, state classes, eviction kinds, reload results, the configured
//! cluster peers and refusal reasons; never addresses.
//!
//! [`Table::census`]: crate::conntrack::Table::census

use super::super::shared::cluster::{ClusterState, Link, Refusal};
use super::super::shared::{Shared, Stop, WorkerStats};
use super::deadline::Deadline;
use crate::conntrack::table::{Census, Evictions, StateClass};
use crate::reason::{Reason, Verdict};
use crate::Engine;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeGaugeValue, EncodeLabelValue, EncodeMetric,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use std::collections::BTreeSet;
use std::fmt;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};
use tracing::{debug, info, warn};

/// Scrapes closer together than this get the text of the first: workers
/// publish once a second, so nothing newer is to be had, and a client
/// scraping in a loop costs one copy of the counters a second.
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// How often the endpoint's thread looks at its stop flag.
const POLL: Duration = Duration::from_millis(200);

const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Rules reloads (SIGHUP and the control socket's `reload`), by result.
#[derive(Debug, Default)]
pub struct Reloads {
    ok: AtomicU64,
    failed: AtomicU64,
}

impl Reloads {
    pub fn count<T, E>(&self, result: &Result<T, E>) {
        let counter = if result.is_ok() {
            &self.ok
        } else {
            &self.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// One scrape's values: plain numbers, read from the daemon in one go.
#[derive(Clone, Debug, Default)]
pub struct Reading {
    /// Every worker's counters, merged.
    pub totals: WorkerStats,
    /// Each worker's counters with its queue number.
    pub queues: Vec<(u16, WorkerStats)>,
    pub connections: u64,
    pub connections_limit: u64,
    pub half_open: u64,
    pub half_open_limit: u64,
    /// `[engine] synproxy = "adaptive"` proxies every connection now.
    pub synproxy_adaptive_on: bool,
    pub evictions: Evictions,
    pub census: Census,
    pub sources_tracked: u64,
    pub sources_capacity: u64,
    pub sources_displaced: u64,
    pub sources_untracked: u64,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    pub control_bad_requests: u64,
    /// Per rule of the policy in force: (name, packets it decided, new
    /// connections it admitted); a reload starts them afresh.
    pub rules: Vec<(String, u64, u64)>,
    /// Event-stream events lost because the event thread lagged, and drops
    /// the recent-drops ring missed because a reader held it.
    pub stream_events_lost: u64,
    pub drops_unrecorded: u64,
    /// Unix time the daemon started, in seconds.
    pub start_time_seconds: f64,
    /// With a `[cluster]`.
    pub cluster: Option<ClusterReading>,
}

/// The cluster's counters, at a scrape.
#[derive(Clone, Debug, Default)]
pub struct ClusterReading {
    pub ready: bool,
    pub connected: bool,
    pub records_sent: u64,
    pub records_dropped: u64,
    pub publish_errors: u64,
    /// By refusal reason ([`Refusal::ALL`]).
    pub refused: Vec<(&'static str, u64)>,
    pub peers: Vec<PeerReading>,
}

/// One configured peer, at a scrape.
#[derive(Clone, Debug, Default)]
pub struct PeerReading {
    pub name: String,
    /// Heard from within [`PEER_UP_WITHIN_MS`].
    pub up: bool,
    pub records_received: u64,
    pub missed_messages: u64,
    /// Its last message's lag, in seconds.
    pub lag_seconds: f64,
    pub policy_mismatch: bool,
}

/// A peer heard from within this long is up (it sends a hello every second).
pub const PEER_UP_WITHIN_MS: u64 = 3_000;

impl ClusterReading {
    pub fn of(state: &ClusterState, unix_ms: u64) -> ClusterReading {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ClusterReading {
            ready: state.ready(),
            connected: state.link() == Link::Connected,
            records_sent: load(&state.records_sent),
            records_dropped: load(&state.dropped),
            publish_errors: load(&state.publish_errors),
            refused: Refusal::ALL
                .iter()
                .map(|&r| (r.name(), state.refused(r)))
                .collect(),
            peers: state
                .peers()
                .into_iter()
                .map(|p| PeerReading {
                    up: p
                        .last_heard_unix_ms
                        .is_some_and(|t| unix_ms.saturating_sub(t) <= PEER_UP_WITHIN_MS),
                    records_received: p.records_received,
                    missed_messages: p.missed,
                    lag_seconds: p.lag_last_ms as f64 / 1e3,
                    policy_mismatch: p.digest_agrees == Some(false),
                    name: p.name,
                })
                .collect(),
        }
    }

    fn encode(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        use MetricType::{Counter, Gauge};
        let peers = |f: fn(&PeerReading) -> u64| {
            self.peers
                .iter()
                .map(move |p| (p.name.as_str(), f(p)))
                .collect::<Vec<_>>()
        };
        gauge(
            e,
            "conntrackd_cluster_ready",
            "1 once the first bulk copy of the peers' tables is done (or timed out).",
            None,
            u64::from(self.ready),
        )?;
        gauge(
            e,
            "conntrackd_cluster_connected",
            "1 while connected to a NATS server.",
            None,
            u64::from(self.connected),
        )?;
        counter(
            e,
            "conntrackd_cluster_records_sent",
            "Connection records published to the peers (changes, refreshes, bulk copies).",
            self.records_sent,
        )?;
        counter(
            e,
            "conntrackd_cluster_records_dropped",
            "Changes not published: the outbox was full (NATS unreachable), or NATS did not take them.",
            self.records_dropped,
        )?;
        counter(
            e,
            "conntrackd_cluster_publish_errors",
            "Messages NATS did not take (error or timeout).",
            self.publish_errors,
        )?;
        labelled(
            e,
            Counter,
            "conntrackd_cluster_messages_refused",
            "Messages refused, never applied, by reason.",
            "reason",
            self.refused.iter().copied(),
        )?;
        labelled(
            e,
            Counter,
            "conntrackd_cluster_records_received",
            "Connection records received from each peer.",
            "peer",
            peers(|p| p.records_received),
        )?;
        labelled(
            e,
            Counter,
            "conntrackd_cluster_messages_missed",
            "Messages of changes a peer sent that never arrived (sequence gaps).",
            "peer",
            peers(|p| p.missed_messages),
        )?;
        labelled(
            e,
            Gauge,
            "conntrackd_cluster_peer_up",
            "1 when the peer was heard from within 3 s (it says hello every second).",
            "peer",
            peers(|p| u64::from(p.up)),
        )?;
        labelled(
            e,
            Gauge,
            "conntrackd_cluster_policy_mismatch",
            "1 when the peer's policy digest differs from this node's.",
            "peer",
            peers(|p| u64::from(p.policy_mismatch)),
        )?;
        let mut m = e.encode_descriptor(
            "conntrackd_cluster_peer_lag",
            "The lag of the peer's last message: received less sent (two wall clocks).",
            Some(&Unit::Seconds),
            Gauge,
        )?;
        for p in &self.peers {
            ConstGauge::new(p.lag_seconds)
                .encode(m.encode_family(&[("peer", p.name.as_str())])?)?;
        }
        Ok(())
    }
}

fn verdict_name(v: Verdict) -> &'static str {
    match v {
        Verdict::Accept => "accept",
        Verdict::Drop => "drop",
    }
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> fmt::Result {
    ConstCounter::new(v).encode(e.encode_descriptor(name, help, None, MetricType::Counter)?)
}

fn gauge<N: EncodeGaugeValue + fmt::Debug>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    v: N,
) -> fmt::Result {
    ConstGauge::new(v).encode(e.encode_descriptor(name, help, unit, MetricType::Gauge)?)
}

/// A metric with one label: one sample per `(label value, value)`.
fn labelled<V: EncodeLabelValue>(
    e: &mut DescriptorEncoder,
    kind: MetricType,
    name: &str,
    help: &str,
    label: &str,
    rows: impl IntoIterator<Item = (V, u64)>,
) -> fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, kind)?;
    for (value, n) in rows {
        let labels = [(label, value)];
        let sample = m.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(n).encode(sample)?,
            _ => ConstGauge::new(n).encode(sample)?,
        }
    }
    Ok(())
}

impl Collector for Reading {
    fn encode(&self, mut e: DescriptorEncoder) -> fmt::Result {
        use MetricType::{Counter, Gauge};
        let t = &self.totals;
        Info::new([("version", env!("CARGO_PKG_VERSION"))]).encode(e.encode_descriptor(
            "conntrackd_build",
            "The running conntrackd's version (always 1).",
            None,
            MetricType::Info,
        )?)?;
        gauge(
            &mut e,
            "conntrackd_start_time",
            "When the daemon started, Unix time.",
            Some(&Unit::Seconds),
            self.start_time_seconds,
        )?;

        // Packets. Every reason, zero or not, so that rates exist from the start.
        let mut m = e.encode_descriptor(
            "conntrackd_packets",
            "Packets decided, by verdict and reason (README: How it decides).",
            None,
            Counter,
        )?;
        for r in Reason::ALL {
            let labels = [("verdict", verdict_name(r.verdict())), ("reason", r.name())];
            ConstCounter::new(t.counters.get(*r)).encode(m.encode_family(&labels)?)?;
        }
        counter(
            &mut e,
            "conntrackd_overload_drops",
            "New connections refused because their source is on a rule's overload list \
             (the same count as packets_total with reason source_overloaded).",
            t.counters.get(Reason::SourceOverloaded),
        )?;

        // The table.
        gauge(
            &mut e,
            "conntrackd_connections",
            "Connections in the table.",
            None,
            self.connections,
        )?;
        gauge(
            &mut e,
            "conntrackd_connections_limit",
            "The table's limit (engine.max_connections).",
            None,
            self.connections_limit,
        )?;
        gauge(
            &mut e,
            "conntrackd_half_open_connections",
            "TCP connections in their handshake (SYN_SENT/SYN_RECV).",
            None,
            self.half_open,
        )?;
        gauge(
            &mut e,
            "conntrackd_half_open_connections_limit",
            "The half-open limit (engine.max_half_open).",
            None,
            self.half_open_limit,
        )?;
        gauge(
            &mut e,
            "conntrackd_synproxy_adaptive_on",
            "1 while the adaptive SYN proxy (engine.synproxy) proxies every accepted TCP \
             connection (half-open connections above synproxy_adaptive.start of the limit).",
            None,
            u64::from(self.synproxy_adaptive_on),
        )?;
        labelled(
            &mut e,
            Gauge,
            "conntrackd_connections_by_state",
            "Connections by kind of state, as the last expiry walk (once a second) counted them.",
            "state",
            StateClass::ALL.map(|c| (c.name(), self.census[c as usize] as u64)),
        )?;
        labelled(
            &mut e,
            Counter,
            "conntrackd_evictions",
            "Unassured entries evicted to make room for new connections (early drop), by kind.",
            "kind",
            [
                ("half_open", self.evictions.half_open),
                ("unreplied", self.evictions.unreplied),
            ],
        )?;
        gauge(
            &mut e,
            "conntrackd_sources_tracked",
            "Sources the per-source limits track (0 until a policy with limits is loaded).",
            None,
            self.sources_tracked,
        )?;
        gauge(
            &mut e,
            "conntrackd_sources_capacity",
            "Slots of the per-source tracker (0 until a policy with limits is loaded).",
            None,
            self.sources_capacity,
        )?;
        counter(
            &mut e,
            "conntrackd_sources_displaced",
            "Idle tracked sources pushed out of the per-source tracker by new ones.",
            self.sources_displaced,
        )?;
        counter(
            &mut e,
            "conntrackd_sources_untracked",
            "Connections let in untracked because the per-source tracker had no free slot.",
            self.sources_untracked,
        )?;

        // The queues and the workers.
        let per_queue = |f: fn(&WorkerStats) -> u64| {
            self.queues
                .iter()
                .map(move |(num, s)| (*num, f(s)))
                .collect::<Vec<_>>()
        };
        labelled(
            &mut e,
            Counter,
            "conntrackd_queue_packets",
            "Packets decided by each queue's worker.",
            "queue",
            per_queue(WorkerStats::packets),
        )?;
        labelled(
            &mut e,
            Counter,
            "conntrackd_queue_reads",
            "Receive system calls that returned packets, by queue.",
            "queue",
            per_queue(|s| s.reads),
        )?;
        labelled(
            &mut e,
            Counter,
            "conntrackd_queue_enobufs",
            "Socket receive buffer overruns (ENOBUFS: conntrackd fell behind), by queue.",
            "queue",
            per_queue(|s| s.enobufs),
        )?;
        counter(
            &mut e,
            "conntrackd_recv_errors",
            "Receive errors other than timeouts, ENOBUFS included.",
            t.recv_errors,
        )?;
        counter(
            &mut e,
            "conntrackd_verdict_errors",
            "Verdicts the kernel refused or that could not be sent.",
            t.verdict_errors,
        )?;
        counter(
            &mut e,
            "conntrackd_verdict_send_failures",
            "Verdict sends that failed; their verdicts were kept and sent again.",
            t.verdict_send_failures,
        )?;
        counter(
            &mut e,
            "conntrackd_verdict_backlogs_dropped",
            "Backlogs of unsendable verdicts replaced by one batch drop of their packets.",
            t.verdict_backlogs_dropped,
        )?;
        counter(
            &mut e,
            "conntrackd_verdict_messages",
            "Verdict messages sent (a batch verdict answers several packets).",
            t.verdict_messages,
        )?;
        counter(
            &mut e,
            "conntrackd_engine_panics",
            "Packets whose decision panicked (a bug): dropped.",
            t.engine_panics,
        )?;
        counter(
            &mut e,
            "conntrackd_checksum_partial_packets",
            "Packets the kernel marked with an unfinished checksum (GSO, offload): not verified.",
            t.csum_not_ready,
        )?;
        counter(
            &mut e,
            "conntrackd_headers_only_packets",
            "Packets longer than the copy range (only their headers were copied).",
            t.truncated_copies,
        )?;
        counter(
            &mut e,
            "conntrackd_handoff_packets",
            "Hand-off mode: verdicts that carried the hand-off mark.",
            t.handoff_marked,
        )?;
        counter(
            &mut e,
            "conntrackd_log_events_lost",
            "Log lines skipped because the logging thread lagged behind.",
            t.events_lost,
        )?;

        // Rules (names are the rules file's: bounded by it).
        let mut m = e.encode_descriptor(
            "conntrackd_rule_packets",
            "Packets a rule decided (a new connection's first packet, or a packet no \
             connection tracks), by rule; a reload starts afresh.",
            None,
            Counter,
        )?;
        for (name, packets, _) in &self.rules {
            ConstCounter::new(*packets).encode(m.encode_family(&[("rule", name.as_str())])?)?;
        }
        let mut m = e.encode_descriptor(
            "conntrackd_rule_connections",
            "New connections a rule admitted, by rule; a reload starts afresh.",
            None,
            Counter,
        )?;
        for (name, _, connections) in &self.rules {
            ConstCounter::new(*connections).encode(m.encode_family(&[("rule", name.as_str())])?)?;
        }
        labelled(
            &mut e,
            Counter,
            "conntrackd_rejects",
            "Answers (RST, ICMP unreachable) to packets a reject rule or default refused, by \
             outcome (rate_limited: over reject_rate, or reject_rate = 0).",
            "outcome",
            [
                ("sent", t.rejects_sent),
                ("rate_limited", t.rejects_rate_limited),
                ("failed", t.rejects_failed),
            ],
        )?;
        labelled(
            &mut e,
            Counter,
            "conntrackd_synproxy_packets",
            "The SYN proxy's own packets (cookie SYN+ACKs, SYNs and ACKs to servers, window \
             updates and RSTs to clients), by outcome; and proxied connections' packets \
             rewritten, or dropped because they could not be; in hand-off mode, proxied \
             connections handed to the kernel, or left here because it could not take them.",
            "outcome",
            [
                ("sent", t.synproxy_sent),
                ("send_failed", t.synproxy_send_failures),
                ("rewritten", t.synproxy_rewritten),
                ("rewrite_failed", t.synproxy_rewrite_failures),
                ("handed_off", t.synproxy_handed_off),
                ("handoff_failed", t.synproxy_handoff_failures),
                ("left_to_kernel", t.synproxy_left_to_kernel),
            ],
        )?;
        counter(
            &mut e,
            "conntrackd_stream_events_lost",
            "Events the event stream (conntrackd events) lost because its thread lagged.",
            self.stream_events_lost,
        )?;
        counter(
            &mut e,
            "conntrackd_drops_unrecorded",
            "Drops the recent-drops ring (conntrackd why, drops) missed while a reader held it.",
            self.drops_unrecorded,
        )?;

        // Operations.
        labelled(
            &mut e,
            Counter,
            "conntrackd_reloads",
            "Rules reloads (SIGHUP, conntrackd reload), by result: a failed one keeps the rules in force.",
            "result",
            [("ok", self.reloads_ok), ("failed", self.reloads_failed)],
        )?;
        counter(
            &mut e,
            "conntrackd_control_bad_requests",
            "Control socket requests that were malformed or named no command.",
            self.control_bad_requests,
        )?;
        if let Some(cluster) = &self.cluster {
            cluster.encode(&mut e)?;
        }
        Ok(())
    }
}

/// The two text formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// The Prometheus text format, version 0.0.4 (what curl gets).
    Prometheus,
    /// OpenMetrics 1.0 text, for scrapers that ask for it.
    OpenMetrics,
}

impl Format {
    /// The format an `Accept` header asks for.
    pub fn from_accept(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Prometheus,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }
}

/// `reading` as text.
pub fn encode(reading: Reading, format: Format) -> Result<String, fmt::Error> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(reading));
    let mut out = String::new();
    match format {
        Format::Prometheus => {
            prometheus_client::encoding::prometheus_text::encode(&mut out, &registry)?
        }
        Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut out, &registry)?,
    }
    Ok(out)
}

/// What the daemon exports, with every value at zero, one queue (0), one
/// rule (`example`) and a cluster of one peer (`example`): the Prometheus
/// text the names and labels of the dashboard are checked against.
pub fn default_exposition() -> String {
    let cluster = ClusterReading::of(
        &ClusterState::new("node", &[], "conntrackd", &["example".into()]),
        0,
    );
    let reading = Reading {
        queues: vec![(0, WorkerStats::default())],
        rules: vec![("example".into(), 0, 0)],
        cluster: Some(cluster),
        ..Reading::default()
    };
    encode(reading, Format::Prometheus).unwrap_or_default()
}

/// The names of the samples the daemon exports (`conntrackd_packets_total`,
/// ...), from [`default_exposition`].
pub fn exported_names() -> BTreeSet<String> {
    default_exposition()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// What a scrape reads.
pub struct Inputs {
    pub engine: Arc<Engine>,
    pub shared: Arc<Shared>,
    /// The queue number of each worker slot of `shared.stats`, in order.
    pub queues: Vec<u16>,
    pub reloads: Arc<Reloads>,
    pub bad_requests: Arc<AtomicU64>,
}

impl Inputs {
    fn read(&self, start_time_seconds: f64) -> Reading {
        let mut totals = WorkerStats::default();
        let mut queues = Vec::with_capacity(self.queues.len());
        for (slot, &num) in self.shared.stats.iter().zip(&self.queues) {
            // Held for a copy only.
            let stats = slot.lock().unwrap_or_else(|e| e.into_inner()).clone();
            totals.merge(&stats);
            queues.push((num, stats));
        }
        let table = self.engine.table();
        let limits = table.limits();
        let sources = table.sources_made();
        // One read of the policy: its rules' names and generation together.
        let policy = self.engine.policy();
        let current = totals.rules_generation == policy.generation;
        let rules = policy
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let h = totals
                    .rule_hits
                    .get(i)
                    .filter(|_| current)
                    .copied()
                    .unwrap_or([0; 2]);
                (r.name.clone(), h[0], h[1])
            })
            .collect();
        Reading {
            rules,
            stream_events_lost: self.shared.hub.lost(),
            drops_unrecorded: self.shared.drops.unrecorded(),
            totals,
            queues,
            connections: table.len() as u64,
            connections_limit: limits.max_connections as u64,
            half_open: table.half_open() as u64,
            half_open_limit: limits.max_half_open as u64,
            synproxy_adaptive_on: self.engine.synproxy_adaptive_on(),
            evictions: table.evictions(),
            census: table.census(),
            sources_tracked: sources.map_or(0, |s| s.len() as u64),
            sources_capacity: sources.map_or(0, |s| s.capacity() as u64),
            sources_displaced: sources.map_or(0, |s| s.displaced()),
            sources_untracked: sources.map_or(0, |s| s.untracked()),
            reloads_ok: self.reloads.ok.load(Ordering::Relaxed),
            reloads_failed: self.reloads.failed.load(Ordering::Relaxed),
            control_bad_requests: self.bad_requests.load(Ordering::Relaxed),
            start_time_seconds,
            cluster: self
                .shared
                .cluster
                .get()
                .map(|c| ClusterReading::of(c, super::super::shared::wall_clock_ms())),
        }
    }
}

/// The endpoint's listening socket. With IP_FREEBIND: the daemon starts
/// before the network is configured (systemd: before network-pre.target), so
/// a management address may not exist yet; it is served once it does.
/// SO_REUSEADDR: a restart binds again while the last scrapes' connections
/// are in TIME_WAIT.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv4() {
        socket.set_freebind(true)?;
    } else {
        socket.set_freebind_ipv6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(16)?;
    let listener: TcpListener = socket.into();
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Listens on `addr` and serves scrapes on a thread of its own. An address
/// that cannot be listened on (in use, a privileged port) is an error: the
/// daemon refuses to start.
pub fn start(addr: SocketAddr, inputs: Inputs, stop: Stop) -> anyhow::Result<JoinHandle<()>> {
    let listener = listen(addr).map_err(|e| {
        anyhow::anyhow!("cannot listen for metrics on {addr} (daemon.metrics_listen): {e}")
    })?;
    let start_time = SystemTime::now()
        .checked_sub(inputs.shared.start.elapsed())
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0.0, |d| d.as_secs_f64());
    let thread = std::thread::Builder::new()
        .name("ctd-metrics".into())
        .spawn(move || serve(&listener, &inputs, start_time, &stop))
        .map_err(|e| anyhow::anyhow!("starting the metrics thread: {e}"))?;
    info!(metrics_listen = %addr, "metrics endpoint open: GET http://{addr}/metrics");
    Ok(thread)
}

/// The last answer in each format, kept for [`MIN_INTERVAL`]: two
/// scrapers asking for different formats still cost one reading a second
/// each, not one per scrape.
#[derive(Default)]
struct Cache {
    prometheus: Option<(Instant, String)>,
    openmetrics: Option<(Instant, String)>,
}

impl Cache {
    fn slot(&mut self, format: Format) -> &mut Option<(Instant, String)> {
        match format {
            Format::Prometheus => &mut self.prometheus,
            Format::OpenMetrics => &mut self.openmetrics,
        }
    }
}

/// Longest request head (request line and headers) read.
const MAX_REQUEST: usize = 8 * 1024;
/// Most request headers parsed.
const MAX_HEADERS: usize = 32;
/// A client's whole exchange may take this long.
const CLIENT_DEADLINE: Duration = Duration::from_secs(5);

/// Serves one client at a time, each within `CLIENT_DEADLINE`, one request
/// per connection. The request head is parsed by `httparse`; the serving
/// loop is our own rather than an HTTP server crate's: what a scrape needs
/// is one GET, and the small synchronous servers (tiny_http 0.12) start a
/// thread per open connection and read request heads without a length
/// limit or a timeout, which a client of this port could turn into
/// unbounded threads and memory in the firewall's process. Here a hostile
/// client costs one thread's time for at most 5 s (less at a stop) and 8 KiB.
fn serve(listener: &TcpListener, inputs: &Inputs, start_time: f64, stop: &Stop) {
    let mut cache = Cache::default();
    while !stop.is_set() {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = client(stream, inputs, start_time, &mut cache, stop) {
                    debug!("metrics client: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                stop.wait(POLL);
            }
            Err(e) => {
                // Out of file descriptors, say: try again shortly.
                debug!("metrics endpoint: accepting: {e}");
                stop.wait(POLL);
            }
        }
    }
}

/// Reads one request head, answers it, closes.
fn client(
    stream: TcpStream,
    inputs: &Inputs,
    start_time: f64,
    cache: &mut Cache,
    stop: &Stop,
) -> std::io::Result<()> {
    use std::io::Read;
    stream.set_nonblocking(false)?;
    let mut io = Deadline {
        stream: &stream,
        until: Instant::now() + CLIENT_DEADLINE,
        stop,
    };
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let (get_metrics, accept) = loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        match request.parse(&head) {
            Ok(httparse::Status::Complete(_)) => {
                let path = request.path.unwrap_or_default();
                let path = path.split('?').next().unwrap_or_default();
                let accept = request
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("accept"))
                    .map(|h| String::from_utf8_lossy(h.value).into_owned());
                break (request.method == Some("GET") && path == "/metrics", accept);
            }
            Ok(httparse::Status::Partial) => {}
            Err(httparse::Error::TooManyHeaders) => {
                return respond(&mut io, 431, "text/plain", "too many request headers\n");
            }
            Err(e) => {
                return respond(&mut io, 400, "text/plain", &format!("bad request: {e}\n"));
            }
        }
        if head.len() >= MAX_REQUEST {
            return respond(&mut io, 431, "text/plain", "request head too large\n");
        }
        let n = io.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n.min(MAX_REQUEST - head.len())]);
    };
    if !get_metrics {
        let body = "not found: conntrackd serves GET /metrics\n";
        return respond(&mut io, 404, "text/plain", body);
    }
    let format = Format::from_accept(accept.as_deref());
    let slot = cache.slot(format);
    if !slot
        .as_ref()
        .is_some_and(|(at, _)| at.elapsed() < MIN_INTERVAL)
    {
        *slot = match encode(inputs.read(start_time), format) {
            Ok(body) => Some((Instant::now(), body)),
            Err(e) => {
                warn!("metrics endpoint: encoding failed: {e}");
                None
            }
        };
    }
    match slot {
        Some((_, body)) => respond(&mut io, 200, format.content_type(), body),
        None => respond(&mut io, 500, "text/plain", "encoding failed\n"),
    }
}

fn respond(
    out: &mut impl std::io::Write,
    status: u16,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        431 => "Request Header Fields Too Large",
        _ => "Internal Server Error",
    };
    let head = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    out.write_all(head.as_bytes())?;
    out.write_all(body.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::super::super::shared::StopSwitch;
    use super::*;
    use crate::wire::build;
    use crate::{Config, Context, Timestamp};
    use std::net::{IpAddr, Ipv4Addr};

    /// `name{labels} value` lines of an exposition, labels as written.
    fn samples(text: &str) -> Vec<(String, String)> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').unwrap();
                (series.to_string(), value.to_string())
            })
            .collect()
    }

    fn value(text: &str, series: &str) -> String {
        samples(text)
            .into_iter()
            .find(|(s, _)| s == series)
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
            .1
    }

    #[test]
    fn a_reading_is_encoded_with_its_values_and_bounded_labels() {
        let mut totals = WorkerStats::default();
        totals.counters.record(Reason::Tracked);
        totals.counters.record(Reason::SynFin);
        totals.counters.record(Reason::SynFin);
        totals.enobufs = 3;
        let q1 = WorkerStats {
            reads: 7,
            enobufs: 3,
            ..WorkerStats::default()
        };
        let reading = Reading {
            totals,
            queues: vec![(0, WorkerStats::default()), (1, q1)],
            connections: 5,
            connections_limit: 100,
            reloads_ok: 2,
            reloads_failed: 1,
            start_time_seconds: 1.5e9,
            ..Reading::default()
        };
        let text = encode(reading.clone(), Format::Prometheus).unwrap();
        let v = |s: &str| value(&text, s);
        assert_eq!(
            v(r#"conntrackd_packets_total{verdict="drop",reason="syn_fin"}"#),
            "2"
        );
        assert_eq!(
            v(r#"conntrackd_packets_total{verdict="accept",reason="tracked"}"#),
            "1"
        );
        // Every reason is there, zero or not.
        let packets = samples(&text)
            .into_iter()
            .filter(|(s, _)| s.starts_with("conntrackd_packets_total{"))
            .count();
        assert_eq!(packets, Reason::COUNT);
        assert_eq!(v(r#"conntrackd_queue_reads_total{queue="1"}"#), "7");
        assert_eq!(v(r#"conntrackd_queue_enobufs_total{queue="1"}"#), "3");
        assert_eq!(v(r#"conntrackd_queue_enobufs_total{queue="0"}"#), "0");
        assert_eq!(v("conntrackd_connections"), "5");
        assert_eq!(v("conntrackd_connections_limit"), "100");
        assert_eq!(v(r#"conntrackd_reloads_total{result="ok"}"#), "2");
        assert_eq!(v(r#"conntrackd_reloads_total{result="failed"}"#), "1");
        assert_eq!(
            v(&format!(
                "conntrackd_build_info{{version=\"{}\"}}",
                env!("CARGO_PKG_VERSION")
            )),
            "1"
        );
        assert_eq!(
            v("conntrackd_start_time_seconds").parse::<f64>().unwrap(),
            1.5e9
        );
        assert!(
            text.contains("# TYPE conntrackd_packets_total counter"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE conntrackd_connections gauge"),
            "{text}"
        );

        // OpenMetrics: the same samples, the metadata its way, and # EOF.
        let om = encode(reading, Format::OpenMetrics).unwrap();
        assert!(om.ends_with("# EOF\n"), "{om}");
        assert!(om.contains("# TYPE conntrackd_packets counter"), "{om}");
        assert!(
            om.contains("# UNIT conntrackd_start_time_seconds seconds"),
            "{om}"
        );
        let names =
            |t: &str| -> BTreeSet<String> { samples(t).into_iter().map(|(s, _)| s).collect() };
        assert_eq!(names(&om), names(&text));
    }

    #[test]
    fn the_cluster_is_exported_per_peer_and_reason_only_with_a_cluster() {
        let plain = encode(Reading::default(), Format::Prometheus).unwrap();
        assert!(
            !plain.contains("conntrackd_cluster_"),
            "no [cluster], no series"
        );
        let state = ClusterState::new("gw-a", &[], "conntrackd", &["gw-b".into()]);
        state.records_sent.store(9, Ordering::Relaxed);
        state.refuse(Refusal::UnknownNode);
        state.with_peer("gw-b", |p| {
            p.last_heard_unix_ms = Some(10_000);
            p.lag(250);
            p.records_received = 4;
            p.digest_agrees = Some(false);
        });
        let reading = Reading {
            cluster: Some(ClusterReading::of(&state, 11_000)),
            ..Reading::default()
        };
        let text = encode(reading, Format::Prometheus).unwrap();
        let v = |s: &str| value(&text, s);
        assert_eq!(v("conntrackd_cluster_records_sent_total"), "9");
        assert_eq!(
            v(r#"conntrackd_cluster_messages_refused_total{reason="unknown_node"}"#),
            "1"
        );
        assert_eq!(
            v(r#"conntrackd_cluster_records_received_total{peer="gw-b"}"#),
            "4"
        );
        assert_eq!(
            v(r#"conntrackd_cluster_peer_lag_seconds{peer="gw-b"}"#),
            "0.25"
        );
        assert_eq!(v(r#"conntrackd_cluster_policy_mismatch{peer="gw-b"}"#), "1");
        assert_eq!(v(r#"conntrackd_cluster_peer_up{peer="gw-b"}"#), "1");
        assert_eq!(v("conntrackd_cluster_ready"), "0");
    }

    #[test]
    fn exported_names_follow_the_conventions() {
        let names = exported_names();
        for required in [
            "conntrackd_packets_total",
            "conntrackd_connections",
            "conntrackd_connections_limit",
            "conntrackd_half_open_connections",
            "conntrackd_synproxy_adaptive_on",
            "conntrackd_connections_by_state",
            "conntrackd_evictions_total",
            "conntrackd_queue_reads_total",
            "conntrackd_queue_enobufs_total",
            "conntrackd_recv_errors_total",
            "conntrackd_overload_drops_total",
            "conntrackd_reloads_total",
            "conntrackd_build_info",
            "conntrackd_start_time_seconds",
        ] {
            assert!(names.contains(required), "{required} missing: {names:?}");
        }
        let text = default_exposition();
        for name in &names {
            assert!(name.starts_with("conntrackd_"), "{name}");
            let counter = text.contains(&format!("# TYPE {name} counter"));
            assert_eq!(
                counter,
                name.ends_with("_total"),
                "{name}: _total on counters only"
            );
        }
        // OpenMetrics allows neither quotes nor backslashes in HELP text unescaped.
        for help in text.lines().filter(|l| l.starts_with("# HELP")) {
            assert!(!help.contains(['"', '\\']), "{help}");
        }
        // No label but the bounded ones (rule names are the rules file's).
        let allowed = [
            "verdict", "reason", "state", "kind", "queue", "result", "version", "rule", "outcome",
            "peer",
        ];
        for (series, _) in samples(&text) {
            if let Some((_, labels)) = series.split_once('{') {
                for pair in labels.trim_end_matches('}').split(',') {
                    let key = pair.split('=').next().unwrap();
                    assert!(allowed.contains(&key), "{series}");
                }
            }
        }
    }

    /// Over a real TCP socket: a GET gets the text, a request head that
    /// never ends is cut at 8 KiB with 431 and the connection closed, other
    /// paths get 404; one thread throughout.
    #[test]
    fn the_endpoint_answers_scrapes_and_refuses_oversized_heads() {
        use std::io::{Read, Write};
        let inputs = Inputs {
            engine: Arc::new(crate::Engine::new(
                crate::EngineSettings::default(),
                crate::policy::Policy::allow_all(),
            )),
            shared: Arc::new(Shared::new(Instant::now(), &[0])),
            queues: vec![0],
            reloads: Arc::new(Reloads::default()),
            bad_requests: Arc::new(AtomicU64::new(0)),
        };
        let listener = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let switch = StopSwitch::default();
        let stop = switch.stop();
        let thread = std::thread::spawn(move || serve(&listener, &inputs, 0.0, &stop));
        let ask = |request: &[u8]| {
            let mut c = TcpStream::connect(addr).unwrap();
            c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            let _ = c.write_all(request);
            let mut answer = String::new();
            let _ = c.read_to_string(&mut answer);
            answer
        };
        let ok = ask(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("\nconntrackd_connections 0\n"), "{ok}");
        let (head, body) = ok.split_once("\r\n\r\n").unwrap();
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{head}"
        );
        // Exactly the limit, never ended (more would be unread at the close,
        // and the client could see a reset before the answer).
        let huge = [b'a'; MAX_REQUEST];
        assert!(ask(&huge).starts_with("HTTP/1.1 431 "));
        assert!(ask(b"GET / HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
        assert!(ask(b"POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404 "));
        assert!(ask(b"GET /metrics\x01 HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 400 "));
        switch.trip();
        thread.join().unwrap();
    }

    #[test]
    fn accept_header_chooses_the_format() {
        assert_eq!(Format::from_accept(None), Format::Prometheus);
        assert_eq!(Format::from_accept(Some("*/*")), Format::Prometheus);
        let prometheus = "application/openmetrics-text;version=1.0.0;q=0.5,\
                          text/plain;version=0.0.4;q=0.4,*/*;q=0.1";
        assert_eq!(Format::from_accept(Some(prometheus)), Format::OpenMetrics);
    }

    #[test]
    fn the_census_counts_the_table_by_state_at_expiry() {
        let config = Config::parse(
            "[policy]\ndefault = \"accept\"\n",
            std::path::Path::new("r.toml"),
        )
        .unwrap();
        let engine = Engine::new(config.engine, config.policy);
        let ctx = Context::default();
        let t = Timestamp::from_secs(1);
        let (c, s) = (
            IpAddr::V4(Ipv4Addr::new(198, 18, 0, 2)),
            IpAddr::V4(Ipv4Addr::new(198, 19, 0, 2)),
        );
        let at = |ip: IpAddr, port: u16| SocketAddr::new(ip, port);
        use crate::wire::TcpFlags as F;
        let pass = |p: Vec<u8>| assert_eq!(engine.decide(&p, &ctx, t).verdict(), Verdict::Accept);
        // Three connections: one still in its handshake, one established,
        // one closing; then a UDP flow and a ping.
        for port in [50000, 50001, 50002] {
            let (out, back) = (at(c, port), at(s, 80));
            pass(build::tcp(out, back).flags(F::SYN).seq(1).build());
            if port == 50000 {
                continue;
            }
            pass(
                build::tcp(back, out)
                    .flags(F::SYN | F::ACK)
                    .seq(100)
                    .ack(2)
                    .build(),
            );
            pass(build::tcp(out, back).flags(F::ACK).seq(2).ack(101).build());
            if port == 50002 {
                pass(
                    build::tcp(out, back)
                        .flags(F::FIN | F::ACK)
                        .seq(2)
                        .ack(101)
                        .build(),
                );
            }
        }
        pass(build::udp(at(c, 50003), at(s, 53), b"q"));
        pass(build::icmp_echo(c, s, 7, 1, true));
        let table = engine.table();
        assert_eq!(
            table.census(),
            Census::default(),
            "nothing counted before expiry"
        );
        assert_eq!(engine.expire(t), 0);
        let census = table.census();
        let n = |c: StateClass| census[c as usize];
        assert_eq!(n(StateClass::TcpHandshake), 1);
        assert_eq!(n(StateClass::TcpEstablished), 1);
        assert_eq!(n(StateClass::TcpClosing), 1);
        assert_eq!(n(StateClass::Udp), 1);
        assert_eq!(n(StateClass::Icmp), 1);
        assert_eq!(n(StateClass::Other), 0);
        assert_eq!(census.iter().sum::<usize>(), table.len());
        // Expired entries are not counted.
        engine.expire(Timestamp::from_secs(1_000_000));
        assert_eq!(table.census(), Census::default());
    }
}
