//! Logging: the tracing subscriber, and the logging thread the workers feed.
//!
//! A worker never formats or writes a log line on its hot path: it copies the
//! first bytes of a dropped (or rule-logged) packet into an [`Notice`] and
//! `try_send`s it over a bounded crossbeam channel. When the channel is full
//! the event is counted as lost and the worker carries on. The logging thread
//! parses the bytes for addresses and ports, resolves interface names and rule
//! names, rate-limits the warnings, and writes through tracing.

use super::super::shared::notice::{Notice, PacketNotice};
use super::super::shared::rate::RateLimit;
use crate::kernel::ifnames::IfNames;
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

/// `daemon.log_format`: lines for people, or JSON objects for a collector.
#[derive(Clone, Copy, Debug, Default, serde::Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Installs the global tracing subscriber, writing to stderr (journald under systemd).
pub fn init(format: LogFormat, filter: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .map_err(|e| anyhow::anyhow!("bad log level {filter:?}: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(true)
        // A line that cannot be written is lost, and that is all: by
        // default the subscriber reports it with `eprintln!`, which panics
        // when stderr itself is gone (a closed pipe, journald restarting)
        // and would take the daemon down with it.
        .log_internal_errors(false);
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

/// `addr:port`, `[v6]:port`, the address alone, or `?`.
fn endpoint(addr: Option<IpAddr>, port: Option<u16>) -> String {
    match (addr, port) {
        (Some(a), Some(p)) => SocketAddr::new(a, p).to_string(),
        (Some(a), None) => a.to_string(),
        (None, _) => "?".into(),
    }
}

/// Log lines of one kind under a rate limit, and how many it refused since
/// they were last reported.
struct Limited {
    limit: RateLimit,
    suppressed: u64,
}

impl Limited {
    fn new(per_second: u32, burst: u32) -> Limited {
        Limited {
            limit: RateLimit::new(per_second, burst),
            suppressed: 0,
        }
    }

    /// Whether a line may be written at `now` (ns); counts it as suppressed if not.
    fn allow(&mut self, now: u64) -> bool {
        let allowed = self.limit.allow(now);
        if !allowed {
            self.suppressed += 1;
        }
        allowed
    }

    /// Takes the suppressed count if a line may be written about it.
    fn take_suppressed(&mut self, now: u64) -> Option<u64> {
        if self.suppressed == 0 || !self.limit.allow(now) {
            return None;
        }
        Some(std::mem::take(&mut self.suppressed))
    }
}

fn errno_text(errno: i32) -> String {
    std::io::Error::from_raw_os_error(errno).to_string()
}

/// Starts the logging thread. It ends when every sender is gone.
pub fn spawn(rx: Receiver<Notice>, engine: Arc<Engine>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("ctd-log".into())
        .spawn(move || Logger::new(engine).run(rx))
}

struct Logger {
    engine: Arc<Engine>,
    ifnames: IfNames,
    /// The logging thread's clock starts here (the rate limits' nanoseconds).
    start: Instant,
    rule_lines: Limited,
    error_lines: Limited,
}

impl Logger {
    fn new(engine: Arc<Engine>) -> Logger {
        Logger {
            engine,
            ifnames: IfNames::default(),
            start: Instant::now(),
            rule_lines: Limited::new(10, 20),
            error_lines: Limited::new(1, 5),
        }
    }

    fn run(mut self, rx: Receiver<Notice>) {
        loop {
            match rx.recv_timeout(Duration::from_secs(1)) {
                Ok(event) => self.handle(event),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break,
            }
            self.report_suppressed(self.nanos(Instant::now()));
        }
        // At the end, whatever the limit: the last count is reported.
        self.report_suppressed(self.nanos(Instant::now() + Duration::from_secs(3600)));
    }

    fn report_suppressed(&mut self, now: u64) {
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

    /// Nanoseconds of the logging thread's clock at `at`.
    fn nanos(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.start).as_nanos() as u64
    }

    fn handle(&mut self, event: Notice) {
        let now = self.nanos(Instant::now());
        match event {
            Notice::Packet(p) => self.packet(&p, now),
            Notice::RecvError { queue, errno } => {
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
            Notice::VerdictError { queue, errno } => {
                if self.error_lines.allow(now) {
                    error!(
                        queue,
                        errno,
                        "queue {queue}: the kernel refused a verdict: {}",
                        errno_text(errno)
                    );
                }
            }
            Notice::VerdictSendFailed {
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

    fn packet(&mut self, p: &PacketNotice, now: u64) {
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
    fn suppressed_lines_are_counted_and_reported_once_a_line_may_be_written() {
        const SECOND: u64 = 1_000_000_000;
        let mut lines = Limited::new(1, 2);
        assert!(lines.allow(0));
        assert!(lines.allow(0));
        assert!(!lines.allow(0));
        assert_eq!(lines.suppressed, 1);
        assert_eq!(
            lines.take_suppressed(0),
            None,
            "no token for the report yet"
        );
        assert_eq!(lines.take_suppressed(2 * SECOND), Some(1));
        assert_eq!(lines.take_suppressed(10 * SECOND), None, "reported once");
        assert!(lines.allow(10 * SECOND));
    }
}
