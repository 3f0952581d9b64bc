//! The rules file: engine settings, daemon settings and the policy, in TOML.
//!
//! Unknown keys are refused, and every error names `file:line:column`.

use crate::policy::{PolicySpec, RuleSpec};
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};

/// Seconds each connection state lives without traffic. Defaults are
/// nf_conntrack's.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    pub syn_sent: u32,
    pub syn_recv: u32,
    pub established: u32,
    pub fin_wait: u32,
    pub close_wait: u32,
    pub last_ack: u32,
    /// 2MSL.
    pub time_wait: u32,
    pub close: u32,
    /// Cap while data is in flight unacknowledged (nf_conntrack's "unacknowledged").
    pub unacknowledged: u32,
    pub udp_unreplied: u32,
    pub udp_replied: u32,
    pub icmp: u32,
    pub other: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            syn_sent: 120,
            syn_recv: 60,
            established: 432_000,
            fin_wait: 120,
            close_wait: 60,
            last_ack: 30,
            time_wait: 120,
            close: 10,
            unacknowledged: 300,
            udp_unreplied: 30,
            udp_replied: 120,
            icmp: 30,
            other: 600,
        }
    }
}

/// `[engine]`: the connection tracker's limits and behaviour.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSettings {
    /// Most connections tracked at once (nf_conntrack_max).
    pub max_connections: usize,
    /// Most connections still in the handshake (SYN-flood cap).
    pub max_half_open: usize,
    /// Pick up TCP connections mid-stream from a non-SYN packet (nf_conntrack_tcp_loose).
    pub loose_pickup: bool,
    pub timeouts: Timeouts,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            max_connections: 262_144,
            max_half_open: 65_536,
            loose_pickup: false,
            timeouts: Timeouts::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `[daemon]`: how the NFQUEUE daemon runs. Command-line options override these.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonSettings {
    /// Queue numbers: `"0"`, `"0-3"` or `"0,2"`; one worker thread per queue.
    pub queues: String,
    /// When a queue overflows (or conntrackd is not running, with
    /// `--queue-bypass`): accept (true) or drop (false).
    pub fail_open: bool,
    /// Install conntrackd's own iptables chain, and remove it on exit.
    pub install_iptables: bool,
    /// Built-in chains of the filter table to hook when installing.
    pub hooks: Vec<String>,
    /// Packets the kernel may hold per queue awaiting a verdict.
    pub queue_maxlen: u32,
    /// Bytes of each packet copied to userspace (headers only).
    pub copy_range: u16,
    /// Netlink socket receive buffer in bytes.
    pub socket_rcvbuf: usize,
    pub log_format: LogFormat,
    /// tracing filter, e.g. `info` or `conntrackd=debug`.
    pub log_level: String,
    /// Name of the chain `install_iptables` creates (one per running instance).
    pub iptables_chain: String,
    /// Seconds between two statistics lines in the log (0: only at exit).
    pub stats_interval: u64,
    /// Without `install_iptables`: warn when no packet arrived this many
    /// seconds after start (the NFQUEUE rule is probably missing; 0: never).
    pub idle_warning: u64,
    /// Bypass mode: hand established TCP connections to the kernel (their
    /// verdicts carry `bypass_mark`, saved to the connmark; the chain accepts
    /// their packets without SYN, FIN or RST before queueing). See README.
    pub bypass: bool,
    /// The mark bit(s) bypass mode sets; must not be used by other rules.
    pub bypass_mark: u32,
    /// Bypass mode: seconds between two reads of the kernel's conntrack
    /// entries that carry `bypass_mark` (over ctnetlink); the engine keeps
    /// those connections, whose data it no longer sees (0: never read).
    pub bypass_refresh: u64,
}

impl Default for DaemonSettings {
    fn default() -> Self {
        DaemonSettings {
            queues: "0".into(),
            fail_open: true,
            install_iptables: false,
            hooks: vec!["FORWARD".into()],
            queue_maxlen: 8192,
            copy_range: 256,
            socket_rcvbuf: 8 << 20,
            log_format: LogFormat::Text,
            log_level: "info".into(),
            iptables_chain: "CONNTRACKD".into(),
            stats_interval: 60,
            idle_warning: 10,
            bypass: false,
            bypass_mark: 0x2000_0000,
            bypass_refresh: 30,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    #[serde(default)]
    engine: EngineSettings,
    #[serde(default)]
    daemon: DaemonSettings,
    policy: PolicySpec,
    #[serde(default, rename = "rule")]
    rules: Vec<toml::Spanned<RuleSpec>>,
}

/// A loaded, validated rules file.
#[derive(Clone, Debug)]
pub struct Config {
    pub path: PathBuf,
    pub engine: EngineSettings,
    pub daemon: DaemonSettings,
    pub policy: crate::policy::Policy,
}

/// A rules file that could not be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: String,
        line: usize,
        column: usize,
        message: String,
    },
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = text[line_start..offset].chars().count() + 1;
    (line, column)
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses rules text; `path` is used in messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let invalid = |offset: usize, message: String| {
            let (line, column) = line_column(text, offset);
            ConfigError::Invalid {
                path: name.clone(),
                line,
                column,
                message,
            }
        };
        let file: RulesFile = toml::from_str(text).map_err(|e| {
            let offset = e.span().map_or(0, |s| s.start);
            invalid(offset, e.message().trim().to_string())
        })?;
        let policy = crate::policy::Policy::compile(&file.policy, &file.rules)
            .map_err(|(offset, message)| invalid(offset, message))?;
        let e = &file.engine;
        if e.max_connections == 0 {
            return Err(invalid(
                text.find("max_connections").unwrap_or(0),
                "engine.max_connections must be at least 1".into(),
            ));
        }
        crate::io_support::parse_queue_spec(&file.daemon.queues)
            .map_err(|m| invalid(text.find("queues").unwrap_or(0), m))?;
        Ok(Config {
            path: path.to_path_buf(),
            engine: file.engine,
            daemon: file.daemon,
            policy,
        })
    }
}

impl fmt::Display for Config {
    /// A one-screen summary (used by `conntrackd check` and at start-up).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "rules file: {}", self.path.display())?;
        writeln!(
            f,
            "engine: max_connections={} max_half_open={} loose_pickup={} time_wait={}s established={}s",
            self.engine.max_connections,
            self.engine.max_half_open,
            self.engine.loose_pickup,
            self.engine.timeouts.time_wait,
            self.engine.timeouts.established
        )?;
        writeln!(
            f,
            "daemon: queues={} fail_open={} install_iptables={} hooks={}",
            self.daemon.queues,
            self.daemon.fail_open,
            self.daemon.install_iptables,
            self.daemon.hooks.join(",")
        )?;
        write!(f, "{}", self.policy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        let text = "a\nbc\ndef";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 3), (2, 2));
        assert_eq!(line_column(text, 5), (3, 1));
    }
}
