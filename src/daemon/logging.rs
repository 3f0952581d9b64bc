//! Logging: the tracing subscriber, and the logging thread the workers feed.
//!
//! A worker never formats or writes a log line on its hot path: it copies the
//! first bytes of a dropped (or rule-logged) packet into an [`Event`] and
//! `try_send`s it over a bounded crossbeam channel. When the channel is full
//! the event is counted as lost and the worker carries on. The logging thread
//! parses the bytes for addresses and ports, resolves interface names and rule
//! names, rate-limits the warnings, and writes through tracing.

use crate::config::LogFormat;
use crate::kernel::ifnames::IfNames;
use crate::reason::Reason;
use crate::wire;
use crate::Engine;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tracing::{debug, error, info, warn};

/// Target of the per-packet drop lines (`--log-level conntrackd::drop=debug`).
pub const DROP_TARGET: &str = "conntrackd::drop";
/// Target of the lines for rules marked `log = true`.
pub const RULE_TARGET: &str = "conntrackd::rule";

/// Capacity of the worker → logging thread channel.
pub const CHANNEL_CAPACITY: usize = 4096;
/// Packet bytes copied into an event: the IP header (with IPv6 extension
/// headers, mostly) and the transport header's first bytes.
pub const HEAD_LEN: usize = 96;

/// Installs the global tracing subscriber, writing to stderr (journald under systemd).
pub fn init(format: LogFormat, filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| anyhow::anyhow!("bad log level {filter:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(true);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))
}

/// What a worker tells the logging thread.
#[derive(Clone, Debug)]
pub enum Event {
    Packet(PacketEvent),
    /// `recv` on a queue socket failed (ENOBUFS: the socket buffer overflowed
    /// and the kernel dropped or, fail-open, accepted packets meanwhile).
    RecvError {
        queue: u16,
        errno: i32,
    },
    /// The kernel refused a verdict.
    VerdictError {
        queue: u16,
        errno: i32,
    },
    /// Sending verdicts failed: they are kept and sent again; `collapsed`:
    /// the backlog had grown past its bound and became one batch drop.
    VerdictSendFailed {
        queue: u16,
        errno: i32,
        collapsed: bool,
    },
}

/// A packet worth a log line: dropped (debug level), or decided by a rule
/// with `log = true`.
#[derive(Clone, Debug)]
pub struct PacketEvent {
    pub queue: u16,
    pub reason: Reason,
    pub rule: Option<u16>,
    /// Decided by a rule marked `log = true`.
    pub log: bool,
    pub in_ifindex: u32,
    pub out_ifindex: u32,
    pub wire_len: u32,
    pub head_len: u8,
    pub head: [u8; HEAD_LEN],
}

impl PacketEvent {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        queue: u16,
        reason: Reason,
        rule: Option<u16>,
        log: bool,
        in_ifindex: u32,
        out_ifindex: u32,
        wire_len: u32,
        bytes: &[u8],
    ) -> PacketEvent {
        let n = bytes.len().min(HEAD_LEN);
        let mut head = [0u8; HEAD_LEN];
        head[..n].copy_from_slice(&bytes[..n]);
        PacketEvent {
            queue,
            reason,
            rule,
            log,
            in_ifindex,
            out_ifindex,
            wire_len,
            head_len: n as u8,
            head,
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.head[..self.head_len as usize]
    }
}

/// `addr:port`, `[v6]:port`, the address alone, or `?`.
fn endpoint(addr: Option<IpAddr>, port: Option<u16>) -> String {
    match (addr, port) {
        (Some(a), Some(p)) => SocketAddr::new(a, p).to_string(),
        (Some(a), None) => a.to_string(),
        (None, _) => "?".into(),
    }
}

/// A token bucket: `rate` lines per second, bursts up to `burst`.
#[derive(Debug)]
pub struct RateLimit {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
    /// Lines refused since the last report.
    pub suppressed: u64,
}

impl RateLimit {
    pub fn new(rate: f64, burst: f64, now: Instant) -> RateLimit {
        RateLimit {
            rate,
            burst,
            tokens: burst,
            last: now,
            suppressed: 0,
        }
    }

    /// Whether a line may be written now; counts it as suppressed if not.
    pub fn allow(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    /// Takes the suppressed count if a line may be written about it.
    pub fn take_suppressed(&mut self, now: Instant) -> Option<u64> {
        if self.suppressed == 0 {
            return None;
        }
        let n = self.suppressed;
        if self.allow(now) {
            self.suppressed = 0;
            Some(n)
        } else {
            // `allow` counted the report itself as suppressed: undo that.
            self.suppressed = n;
            None
        }
    }
}

fn errno_text(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno).to_string()
}

/// Starts the logging thread. It ends when every sender is gone.
pub fn spawn(rx: Receiver<Event>, engine: Arc<Engine>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("ctd-log".into())
        .spawn(move || Logger::new(engine).run(rx))
}

struct Logger {
    engine: Arc<Engine>,
    ifnames: IfNames,
    rule_lines: RateLimit,
    error_lines: RateLimit,
}

impl Logger {
    fn new(engine: Arc<Engine>) -> Logger {
        let now = Instant::now();
        Logger {
            engine,
            ifnames: IfNames::default(),
            rule_lines: RateLimit::new(10.0, 20.0, now),
            error_lines: RateLimit::new(1.0, 5.0, now),
        }
    }

    fn run(mut self, rx: Receiver<Event>) {
        loop {
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(event) => self.handle(event),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.report_suppressed(Instant::now());
        }
        self.report_suppressed(Instant::now() + Duration::from_secs(3600));
    }

    fn report_suppressed(&mut self, now: Instant) {
        if let Some(n) = self.rule_lines.take_suppressed(now) {
            warn!(
                target: RULE_TARGET,
                suppressed = n,
                "rate limit: {n} log lines of rules with log = true were suppressed"
            );
        }
        if let Some(n) = self.error_lines.take_suppressed(now) {
            warn!(
                suppressed = n,
                "rate limit: {n} socket error lines were suppressed"
            );
        }
    }

    fn handle(&mut self, event: Event) {
        let now = Instant::now();
        match event {
            Event::Packet(p) => self.packet(&p, now),
            Event::RecvError { queue, errno } => {
                if self.error_lines.allow(now) {
                    if errno == libc::ENOBUFS {
                        warn!(
                            queue,
                            errno,
                            "queue {queue}: socket receive buffer overflowed (ENOBUFS): \
                             packets were lost to conntrackd meanwhile (accepted if fail-open, \
                             else dropped); raise socket_rcvbuf or add queues"
                        );
                    } else {
                        warn!(
                            queue,
                            errno,
                            "queue {queue}: recv failed: {}",
                            errno_text(errno)
                        );
                    }
                }
            }
            Event::VerdictError { queue, errno } => {
                if self.error_lines.allow(now) {
                    error!(
                        queue,
                        errno,
                        "queue {queue}: the kernel refused a verdict: {}",
                        errno_text(errno)
                    );
                }
            }
            Event::VerdictSendFailed {
                queue,
                errno,
                collapsed,
            } => {
                if self.error_lines.allow(now) {
                    if collapsed {
                        error!(
                            queue,
                            errno,
                            "queue {queue}: sending verdicts failed for too long ({}): \
                             every packet still waiting was dropped in one batch verdict",
                            errno_text(errno)
                        );
                    } else {
                        warn!(
                            queue,
                            errno,
                            "queue {queue}: sending verdicts failed ({}): they are kept \
                             and sent again, in order",
                            errno_text(errno)
                        );
                    }
                }
            }
        }
    }

    fn packet(&mut self, p: &PacketEvent, now: Instant) {
        // The packet may be malformed (that can be why it was dropped): read leniently.
        let flow = wire::lax::headers(p.bytes());
        self.ifnames.ensure(p.in_ifindex);
        self.ifnames.ensure(p.out_ifindex);
        let in_iface = self.ifnames.get(p.in_ifindex).unwrap_or("-");
        let out_iface = self.ifnames.get(p.out_ifindex).unwrap_or("-");
        let policy = self.engine.policy();
        let rule = p.rule.map(|i| policy.rule_name(i).unwrap_or("?"));
        let verdict = p.reason.verdict();
        let proto = flow.protocol.map_or("?".into(), wire::protocol_name);
        let (src_port, dst_port) = flow.ports.unzip();
        let src = endpoint(flow.src, src_port);
        let dst = endpoint(flow.dst, dst_port);
        let flags = flow.tcp.map(|t| t.flags.to_string());
        let flags = flags.as_deref();
        let icmp_type = flow.icmp_type;
        if verdict == crate::Verdict::Drop {
            debug!(
                target: DROP_TARGET,
                reason = p.reason.name(),
                proto = &*proto,
                src = src.as_str(),
                dst = dst.as_str(),
                flags,
                icmp_type,
                rule,
                in_iface,
                out_iface,
                len = p.wire_len,
                queue = p.queue,
                "drop"
            );
        }
        if p.log && self.rule_lines.allow(now) {
            let rule = rule.unwrap_or("?");
            if verdict == crate::Verdict::Drop {
                warn!(
                    target: RULE_TARGET,
                    rule,
                    reason = p.reason.name(),
                    proto = &*proto,
                    src = src.as_str(),
                    dst = dst.as_str(),
                    flags,
                    icmp_type,
                    in_iface,
                    out_iface,
                    "rule {rule} {} a new connection",
                    if p.reason.is_reject() { "rejected" } else { "dropped" }
                );
            } else {
                info!(
                    target: RULE_TARGET,
                    rule,
                    reason = p.reason.name(),
                    proto = &*proto,
                    src = src.as_str(),
                    dst = dst.as_str(),
                    flags,
                    icmp_type,
                    in_iface,
                    out_iface,
                    "rule {rule} accepted a new connection"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_as_in_log_lines() {
        let v4: IpAddr = "198.18.0.2".parse().unwrap();
        let v6: IpAddr = "2001:db8:1::2".parse().unwrap();
        assert_eq!(endpoint(Some(v4), Some(40000)), "198.18.0.2:40000");
        assert_eq!(endpoint(Some(v6), Some(5000)), "[2001:db8:1::2]:5000");
        assert_eq!(endpoint(Some(v4), None), "198.18.0.2");
        assert_eq!(endpoint(None, Some(1)), "?");
    }

    #[test]
    fn rate_limit_refills() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(1.0, 2.0, t0);
        assert!(r.allow(t0));
        assert!(r.allow(t0));
        assert!(!r.allow(t0));
        assert_eq!(r.suppressed, 1);
        assert_eq!(r.take_suppressed(t0), None);
        assert_eq!(r.take_suppressed(t0 + Duration::from_secs(2)), Some(1));
        assert!(r.allow(t0 + Duration::from_secs(2)));
    }
}
