//! The rules file: engine settings, daemon settings and the policy, in TOML,
//! parsed from text it is given (reading the file is a shell's work: see
//! `crate::rules_file`).
//!
//! Unknown keys are refused, and every error names `file:line:column`; all
//! of a file's errors are reported, not only the first.

pub use crate::engine::settings::{EngineSettings, Timeouts};
use crate::policy::{PolicySpec, RuleSpec};
use serde::Deserialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// NFQUEUE queue numbers, sorted and without duplicates, parsed from `"0"`,
/// `"0-3"`, `"0,2"` or mixes like `"0-1,4"`; at most 64. In a rules file
/// also a number (`queues = 0`) or a list of either (`queues = [0, "2-3"]`),
/// as every list key takes one value or a list.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QueueSpec(Vec<u16>);

impl QueueSpec {
    pub fn as_slice(&self) -> &[u16] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn first(&self) -> u16 {
        self.0[0]
    }
}

impl FromStr for QueueSpec {
    type Err = String;

    fn from_str(spec: &str) -> Result<QueueSpec, String> {
        let bad = || format!("bad queue spec {spec:?}: expected N, N-M or N,M (0..=65535)");
        let mut queues = Vec::new();
        for part in spec.split(',') {
            let part = part.trim();
            if let Some((a, b)) = part.split_once('-') {
                let a: u16 = a.trim().parse().map_err(|_| bad())?;
                let b: u16 = b.trim().parse().map_err(|_| bad())?;
                if a > b {
                    return Err(bad());
                }
                if usize::from(b - a) >= 64 {
                    return Err(format!("queue spec {spec:?} asks for more than 64 queues"));
                }
                queues.extend(a..=b);
            } else {
                queues.push(part.parse().map_err(|_| bad())?);
            }
        }
        QueueSpec::of(queues).map_err(|e| format!("queue spec {spec:?} {e}"))
    }
}

impl QueueSpec {
    fn of(mut queues: Vec<u16>) -> Result<QueueSpec, &'static str> {
        queues.sort_unstable();
        queues.dedup();
        if queues.len() > 64 {
            return Err("asks for more than 64 queues");
        }
        if queues.is_empty() {
            return Err("names no queue");
        }
        Ok(QueueSpec(queues))
    }
}

impl<'de> Deserialize<'de> for QueueSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<QueueSpec, D::Error> {
        d.deserialize_any(QueueVisitor { in_list: false })
    }
}

/// A queue spec, a queue number, or (at the top) a list of either.
struct QueueVisitor {
    in_list: bool,
}

impl<'de> serde::de::Visitor<'de> for QueueVisitor {
    type Value = QueueSpec;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a queue number, a spec such as \"0-3\" or \"0,2\"")?;
        if !self.in_list {
            f.write_str(", or a list of them")?;
        }
        Ok(())
    }

    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<QueueSpec, E> {
        v.parse().map_err(E::custom)
    }

    fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<QueueSpec, E> {
        let queue = u16::try_from(v)
            .map_err(|_| E::custom(format!("queue {v} is not a queue number (0..=65535)")))?;
        Ok(QueueSpec(vec![queue]))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<QueueSpec, A::Error> {
        if self.in_list {
            return Err(serde::de::Error::invalid_type(
                serde::de::Unexpected::Seq,
                &self,
            ));
        }
        struct Element(QueueSpec);
        impl<'de> Deserialize<'de> for Element {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Element, D::Error> {
                d.deserialize_any(QueueVisitor { in_list: true })
                    .map(Element)
            }
        }
        let mut queues = Vec::new();
        while let Some(Element(spec)) = seq.next_element()? {
            queues.extend(spec.0);
        }
        QueueSpec::of(queues)
            .map_err(|e| serde::de::Error::custom(format!("the list of queues {e}")))
    }
}

impl fmt::Display for QueueSpec {
    /// Comma-separated queue numbers: `0,1,2`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, q) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{q}")?;
        }
        Ok(())
    }
}

/// Where the Prometheus metrics endpoint listens (`metrics_listen`): an IP
/// address and port such as `127.0.0.1:9680` or `[::1]:9680`; `""` (the
/// default) for none.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct MetricsListen(pub Option<std::net::SocketAddr>);

impl FromStr for MetricsListen {
    type Err = String;

    fn from_str(s: &str) -> Result<MetricsListen, String> {
        if s.trim().is_empty() {
            return Ok(MetricsListen(None));
        }
        s.trim()
            .parse()
            .map(|a| MetricsListen(Some(a)))
            .map_err(|_| {
                format!(
                    "metrics_listen {s:?} is not an IP address and port, e.g. \"127.0.0.1:9680\" \
                 or \"[::1]:9680\" (\"\" for no metrics endpoint)"
                )
            })
    }
}

impl TryFrom<String> for MetricsListen {
    type Error = String;
    fn try_from(s: String) -> Result<MetricsListen, String> {
        s.parse()
    }
}

/// What the kernel does with packets that do not fit in a full queue.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Overflow {
    #[default]
    Drop,
    Accept,
}

impl fmt::Display for Overflow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Overflow::Drop => "drop",
            Overflow::Accept => "accept",
        })
    }
}

/// `[daemon]`: how the NFQUEUE daemon runs. Command-line options override these.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonSettings {
    /// Queue numbers: `"0"`, `"0-3"` or `"0,2"`; one worker thread per queue.
    pub queues: QueueSpec,
    /// While no conntrackd is bound to the queue (stopped, crashed,
    /// restarting): the kernel accepts the traffic unfiltered (true) or drops
    /// it (false): iptables' `--queue-bypass`, in the rule `install_iptables`
    /// installs (or in the administrator's own).
    pub queue_bypass: bool,
    /// When a queue is full (conntrackd cannot keep up, or a flood fills
    /// it): the kernel drops the packets that do not fit (default, as its own
    /// overload does) or accepts them unfiltered (`accept`, which lets an
    /// attacker who floods the queue through).
    pub queue_overflow: Overflow,
    /// `fail_open`, the old single key for both: still read (true = both
    /// accept), with a warning.
    #[serde(rename = "fail_open")]
    pub(crate) old_fail_open: Option<toml::Spanned<bool>>,
    /// Install conntrackd's own iptables chain, and remove it on exit.
    pub install_iptables: bool,
    /// Built-in chains of the filter table to hook when installing (one
    /// name or a list).
    #[serde(deserialize_with = "crate::policy::one_or_many_strings")]
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
    /// Where the table is saved at a graceful stop (and every
    /// `snapshot_interval` seconds) and read back at start, so that
    /// connections survive a restart. Default: `table` in systemd's
    /// `StateDirectory=` ($STATE_DIRECTORY) when there is one, else none.
    pub state_file: Option<PathBuf>,
    /// Seconds between two snapshots of the table to `state_file`, for a
    /// restart after a crash (0: only at a graceful stop).
    pub snapshot_interval: u64,
    /// After a start from a periodic snapshot (the last stop was not
    /// graceful), seconds during which TCP connections the snapshot missed
    /// are picked up mid-stream (0: never; they are then `no_connection`).
    pub crash_pickup: u64,
    /// The control socket (`conntrackd stats`, `flows`, `kill`, `flush`,
    /// `reload`). Default: `control` in systemd's `RuntimeDirectory=`
    /// ($RUNTIME_DIRECTORY) when there is one, else /run/conntrackd/control;
    /// `""` turns it off.
    pub control_socket: Option<PathBuf>,
    /// The group the control socket belongs to (mode 0660: its members may
    /// use it); absent: the daemon's own group.
    pub control_socket_group: Option<String>,
    /// The Prometheus metrics endpoint (`GET /metrics`): `"127.0.0.1:9680"`
    /// or another address and port; `""` or absent for none.
    pub metrics_listen: MetricsListen,
    /// Without `install_iptables`: warn when no packet arrived this many
    /// seconds after start (the NFQUEUE rule is probably missing; 0: never).
    pub idle_warning: u64,
    /// Hand-off mode: hand established TCP connections to the kernel (their
    /// verdicts carry `handoff_mark`, saved to the connmark; the chain accepts
    /// their packets without SYN, FIN or RST before queueing). See README.
    pub handoff: bool,
    /// The mark bit(s) hand-off mode sets; must not be used by other rules.
    pub handoff_mark: u32,
    /// Hand-off mode: seconds between two reads of the kernel's conntrack
    /// entries that carry `handoff_mark` (over ctnetlink); the engine keeps
    /// those connections, whose data it no longer sees (0: never read).
    pub handoff_refresh: u64,
    /// Most answers to rejected packets (`action = "reject"`: TCP RSTs, ICMP
    /// port unreachables) sent per second, in bursts of up to twice that;
    /// the rejected packets over it are dropped unanswered (counted).
    /// 0: reject answers nothing (drops only).
    pub reject_rate: u32,
    /// The hand-off keys' old names (`bypass`, `bypass_mark`,
    /// `bypass_refresh`), from when "bypass" also meant this mode; still read,
    /// moved to the new keys with a warning. "bypass" now means only the
    /// kernel's `--queue-bypass`.
    #[serde(rename = "bypass")]
    pub(crate) old_handoff: Option<toml::Spanned<bool>>,
    #[serde(rename = "bypass_mark")]
    pub(crate) old_handoff_mark: Option<toml::Spanned<u32>>,
    #[serde(rename = "bypass_refresh")]
    pub(crate) old_handoff_refresh: Option<toml::Spanned<u64>>,
}

impl Default for DaemonSettings {
    fn default() -> Self {
        DaemonSettings {
            queues: QueueSpec(vec![0]),
            queue_bypass: true,
            queue_overflow: Overflow::Drop,
            old_fail_open: None,
            install_iptables: false,
            hooks: vec!["FORWARD".into()],
            queue_maxlen: 8192,
            copy_range: 256,
            socket_rcvbuf: 8 << 20,
            log_format: LogFormat::Text,
            log_level: "info".into(),
            iptables_chain: "CONNTRACKD".into(),
            stats_interval: 60,
            state_file: None,
            snapshot_interval: 30,
            crash_pickup: 30,
            control_socket: None,
            control_socket_group: None,
            metrics_listen: MetricsListen(None),
            idle_warning: 10,
            handoff: false,
            handoff_mark: 0x2000_0000,
            handoff_refresh: 30,
            reject_rate: 100,
            old_handoff: None,
            old_handoff_mark: None,
            old_handoff_refresh: None,
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
    /// What the file should change but that does not stop it from loading
    /// (deprecated keys), each as `file:line:column: message`.
    pub warnings: Vec<String>,
}

/// A rules file that could not be used, with where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Every problem found, in file order (at least one); shown one a line.
    #[error("{}", lines(.path, .problems).join("\n"))]
    Invalid {
        path: String,
        problems: Vec<Problem>,
    },
}

/// One problem of a rules file, and where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

fn lines(path: &str, problems: &[Problem]) -> Vec<String> {
    problems
        .iter()
        .map(|p| format!("{path}:{}:{}: {}", p.line, p.column, p.message))
        .collect()
}

impl ConfigError {
    /// One line per problem, each `file:line:column: message`.
    pub fn lines(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid { path, problems } => lines(path, problems),
        }
    }
}

/// Warns of each rule address written with host bits set (read as its
/// network; see `Cidr::host_bits`), where it is written.
fn host_bits_warnings(text: &str, name: &str, warnings: &mut Vec<String>) {
    let Ok(doc) = text.parse::<toml_edit::ImDocument<String>>() else {
        return;
    };
    let Some(rules) = doc.get("rule").and_then(|r| r.as_array_of_tables()) else {
        return;
    };
    for rule in rules.iter() {
        for key in ["src", "dst"] {
            let values: Vec<&toml_edit::Value> = match rule.get(key).and_then(|i| i.as_value()) {
                Some(toml_edit::Value::Array(a)) => a.iter().collect(),
                Some(v) => vec![v],
                None => Vec::new(),
            };
            for v in values {
                if let (Some(msg), Some(span)) = (
                    v.as_str().and_then(crate::policy::Cidr::host_bits),
                    v.span(),
                ) {
                    let (line, column) = line_column(text, span.start);
                    warnings.push(format!("{name}:{line}:{column}: {msg}"));
                }
            }
        }
    }
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
    /// Parses rules text; `path` is used in messages. Every problem is
    /// reported, not only the first: each `[[rule]]` and each key is checked
    /// on its own (see [`collect`]).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let name = path.display().to_string();
        let collected = collect::deserialize_all::<RulesFile>(text);
        let mut problems = collected.errors;
        let mut warnings = Vec::new();
        let mut config = None;
        if let Some(mut file) = collected.value {
            rename_old_keys(&mut file.daemon, text, &name, &mut warnings, &mut problems);
            host_bits_warnings(text, &name, &mut warnings);
            // A rule that lost a key to an error would only repeat it.
            file.rules
                .retain(|r| !collected.damaged.contains(&r.span()));
            let policy = crate::policy::Policy::compile(&file.policy, &file.rules)
                .map_err(|errors| problems.extend(errors))
                .ok();
            check_engine(&file.engine, text, &mut problems);
            config = policy.map(|policy| Config {
                path: path.to_path_buf(),
                engine: file.engine,
                daemon: file.daemon,
                policy,
                warnings,
            });
        }
        match config {
            Some(config) if problems.is_empty() => Ok(config),
            _ => {
                // In file order; an offset serde could not place comes first.
                problems.sort_by_key(|(offset, _)| *offset);
                problems.dedup();
                Err(ConfigError::Invalid {
                    path: name,
                    problems: problems
                        .into_iter()
                        .map(|(offset, message)| {
                            let (line, column) = line_column(text, offset);
                            Problem {
                                line,
                                column,
                                message,
                            }
                        })
                        .collect(),
                })
            }
        }
    }
}

/// `[engine]`'s limits that serde cannot check.
/// Where `[engine]`'s key `path` (`["max_connections"]`, `["adaptive",
/// "start"]`) is written, or its table, as a byte offset (0: not found).
fn engine_offset(text: &str, path: &[&str]) -> usize {
    let Ok(doc) = text.parse::<toml_edit::ImDocument<String>>() else {
        return 0;
    };
    let mut item = doc.get("engine");
    let mut at = item.and_then(|i| i.span()).map(|s| s.start);
    for key in path {
        item = item.and_then(|i| i.get(key));
        // A dotted key's table has no span of its own; its keys have.
        if let Some(span) = item.and_then(|i| i.span()) {
            at = Some(span.start);
        }
    }
    at.unwrap_or(0)
}

fn check_engine(e: &EngineSettings, text: &str, problems: &mut Vec<(usize, String)>) {
    if e.max_connections == 0 {
        problems.push((
            engine_offset(text, &["max_connections"]),
            "engine.max_connections must be at least 1".into(),
        ));
    }
    let a = &e.adaptive;
    let ordered = a.start.partial_cmp(&a.end) == Some(std::cmp::Ordering::Less);
    if !(0.0..=1.0).contains(&a.start) || !ordered || a.floor == 0 {
        problems.push((
            engine_offset(
                text,
                &["adaptive", if a.floor == 0 { "floor" } else { "start" }],
            ),
            format!(
                "engine.adaptive: need 0 <= start < end and floor >= 1 (start = {}, \
                 end = {}, floor = {})",
                a.start, a.end, a.floor
            ),
        ));
    }
}

/// Moves the deprecated keys of `[daemon]` to their new names (`bypass*` to
/// `handoff*`, `fail_open` to `queue_bypass` and `queue_overflow`), with one
/// warning each; old and new names at once is an error (at the old key).
fn rename_old_keys(
    d: &mut DaemonSettings,
    text: &str,
    path: &str,
    warnings: &mut Vec<String>,
    problems: &mut Vec<(usize, String)>,
) {
    // Which new keys the file sets (serde has filled in defaults for the others).
    let given: Vec<String> = text
        .parse::<toml::Table>()
        .ok()
        .and_then(|t| t.get("daemon").and_then(|d| d.as_table()).cloned())
        .map(|d| d.keys().cloned().collect())
        .unwrap_or_default();
    if let Some(v) = d.old_fail_open.take() {
        let span = v.span();
        if ["queue_bypass", "queue_overflow"]
            .iter()
            .any(|new| given.iter().any(|k| k == new))
        {
            problems.push((
                span.start,
                "daemon.fail_open is the old name of daemon.queue_bypass and \
                 daemon.queue_overflow: give only those"
                    .to_string(),
            ));
        }
        let (line, column) = line_column(text, span.start);
        let open = v.into_inner();
        warnings.push(format!(
            "{path}:{line}:{column}: daemon.fail_open is deprecated; read as queue_bypass = \
             {open} and queue_overflow = \"{}\". Write those instead{}",
            if open { "accept" } else { "drop" },
            if open {
                ": queue_overflow = \"accept\" lets a flood that fills the queue through \
                 unfiltered; \"drop\" is the default"
            } else {
                ""
            }
        ));
        d.queue_bypass = open;
        d.queue_overflow = if open {
            Overflow::Accept
        } else {
            Overflow::Drop
        };
    }
    let mut rename = |old: &str, new: &str, span: std::ops::Range<usize>| {
        if given.iter().any(|k| k == new) {
            problems.push((
                span.start,
                format!("daemon.{old} is the old name of daemon.{new}: give only daemon.{new}"),
            ));
            return;
        }
        let (line, column) = line_column(text, span.start);
        warnings.push(format!(
            "{path}:{line}:{column}: daemon.{old} is deprecated, use daemon.{new} \
             (\"bypass\" now means only the kernel's --queue-bypass)"
        ));
    };
    if let Some(v) = d.old_handoff.take() {
        rename("bypass", "handoff", v.span());
        d.handoff = v.into_inner();
    }
    if let Some(v) = d.old_handoff_mark.take() {
        rename("bypass_mark", "handoff_mark", v.span());
        d.handoff_mark = v.into_inner();
    }
    if let Some(v) = d.old_handoff_refresh.take() {
        rename("bypass_refresh", "handoff_refresh", v.span());
        d.handoff_refresh = v.into_inner();
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
            "daemon: queues={} queue_bypass={} queue_overflow={} install_iptables={} hooks={} handoff={}",
            self.daemon.queues,
            self.daemon.queue_bypass,
            self.daemon.queue_overflow,
            self.daemon.install_iptables,
            self.daemon.hooks.join(","),
            self.daemon.handoff
        )?;
        write!(f, "{}", self.policy)
    }
}

mod collect;

/// The `[policy]` and `[[rule]]` tables as a rules file gives them.
#[cfg(test)]
mod policy_tests;

#[cfg(test)]
mod tests {
    use super::*;

    /// The one problem of a refused file.
    fn only_problem(parsed: Result<Config, ConfigError>) -> Problem {
        match parsed {
            Err(ConfigError::Invalid { mut problems, .. }) if problems.len() == 1 => {
                problems.remove(0)
            }
            other => panic!("expected one problem: {other:?}"),
        }
    }

    #[test]
    fn queue_specs() {
        let q = |s: &str| s.parse::<QueueSpec>().map(|q| q.as_slice().to_vec());
        assert_eq!(q("0").unwrap(), vec![0]);
        assert_eq!(q("0-3").unwrap(), vec![0, 1, 2, 3]);
        assert_eq!(q("0,2").unwrap(), vec![0, 2]);
        assert_eq!(q("2,0-1").unwrap(), vec![0, 1, 2]);
        assert!(q("3-1").is_err());
        assert!(q("x").is_err());
        assert!(q("").is_err());
        assert!(q("0-100").is_err());
        assert!(q("0-65535").is_err());
        assert_eq!("2,0-1".parse::<QueueSpec>().unwrap().to_string(), "0,1,2");
    }

    #[test]
    fn a_bad_queue_spec_is_refused_where_it_is_written() {
        let text = "[daemon]\nqueues = \"0-x\"\n[policy]\ndefault = \"accept\"\n";
        let Problem {
            line,
            column,
            message,
        } = only_problem(Config::parse(text, Path::new("r.toml")));
        assert_eq!((line, column), (2, 10), "{message}");
        assert!(message.contains("bad queue spec"), "{message}");
    }

    #[test]
    fn metrics_listen_is_an_address_and_port_or_nothing() {
        let parse = |v: &str| {
            let text =
                format!("[daemon]\nmetrics_listen = {v:?}\n[policy]\ndefault = \"accept\"\n");
            Config::parse(&text, Path::new("r.toml"))
        };
        let addr = |v: &str| parse(v).unwrap().daemon.metrics_listen.0;
        assert_eq!(addr(""), None);
        assert_eq!(
            addr("127.0.0.1:9680"),
            Some("127.0.0.1:9680".parse().unwrap())
        );
        assert_eq!(addr("[::1]:9680"), Some("[::1]:9680".parse().unwrap()));
        for bad in ["localhost:9680", "127.0.0.1", "127.0.0.1:99999", "9680"] {
            match parse(bad) {
                Err(ConfigError::Invalid { problems, .. }) => {
                    assert_eq!(problems.len(), 1, "{problems:?}");
                    let Problem {
                        line,
                        column,
                        message,
                    } = &problems[0];
                    assert_eq!((*line, *column), (2, 18), "{message}");
                    assert!(
                        message.contains("is not an IP address and port"),
                        "{message}"
                    );
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
    }

    #[test]
    fn old_handoff_keys_are_read_with_a_warning() {
        let text = "[daemon]\nbypass = true\nbypass_mark = 0x10\nbypass_refresh = 5\n\
                    [policy]\ndefault = \"accept\"\n";
        let c = Config::parse(text, Path::new("r.toml")).unwrap();
        assert!(c.daemon.handoff);
        assert_eq!(c.daemon.handoff_mark, 0x10);
        assert_eq!(c.daemon.handoff_refresh, 5);
        assert_eq!(c.warnings.len(), 3, "{:?}", c.warnings);
        assert!(
            c.warnings[0]
                .starts_with("r.toml:2:10: daemon.bypass is deprecated, use daemon.handoff"),
            "{:?}",
            c.warnings
        );
        // The same settings under the new names compare equal (reload).
        let new = "[daemon]\nhandoff = true\nhandoff_mark = 0x10\nhandoff_refresh = 5\n\
                   [policy]\ndefault = \"accept\"\n";
        let n = Config::parse(new, Path::new("r.toml")).unwrap();
        assert_eq!(n.daemon, c.daemon);
        assert!(n.warnings.is_empty());
        let both = "[daemon]\nhandoff = true\nbypass = true\n[policy]\ndefault = \"accept\"\n";
        let Problem { line, message, .. } = only_problem(Config::parse(both, Path::new("r.toml")));
        assert_eq!(line, 3, "{message}");
        assert!(message.contains("give only daemon.handoff"), "{message}");
    }

    #[test]
    fn adaptive_timeouts_are_checked() {
        let ok =
            "[engine.adaptive]\nstart = 0.6\nend = 0.8\nfloor = 3\n[policy]\ndefault = \"drop\"\n";
        let c = Config::parse(ok, Path::new("r.toml")).unwrap();
        assert_eq!((c.engine.adaptive.start, c.engine.adaptive.floor), (0.6, 3));
        for bad in ["start = 0.9\nend = 0.5", "start = -1.0", "floor = 0"] {
            let text = format!("[engine.adaptive]\n{bad}\n[policy]\ndefault = \"drop\"\n");
            let Problem { line, message, .. } =
                only_problem(Config::parse(&text, Path::new("r.toml")));
            // At the key (start, or floor when floor is the trouble).
            assert_eq!(line, 2, "{bad}: {message}");
            assert!(message.contains("engine.adaptive"), "{message}");
        }
    }

    #[test]
    fn fail_open_is_read_as_both_new_keys_with_a_warning() {
        let parse = |t: &str| Config::parse(t, Path::new("r.toml"));
        let d = parse("[policy]\ndefault = \"drop\"\n").unwrap().daemon;
        assert!(d.queue_bypass);
        assert_eq!(d.queue_overflow, Overflow::Drop);
        let c = parse("[daemon]\nfail_open = true\n[policy]\ndefault = \"drop\"\n").unwrap();
        assert!(c.daemon.queue_bypass);
        assert_eq!(c.daemon.queue_overflow, Overflow::Accept);
        assert!(
            c.warnings[0].starts_with("r.toml:2:13: daemon.fail_open is deprecated"),
            "{:?}",
            c.warnings
        );
        let c = parse("[daemon]\nfail_open = false\n[policy]\ndefault = \"drop\"\n").unwrap();
        assert!(!c.daemon.queue_bypass);
        assert_eq!(c.daemon.queue_overflow, Overflow::Drop);
        let both =
            "[daemon]\nfail_open = true\nqueue_overflow = \"drop\"\n[policy]\ndefault = \"drop\"\n";
        assert!(parse(both)
            .unwrap_err()
            .to_string()
            .contains("give only those"));
        let new = "[daemon]\nqueue_bypass = false\nqueue_overflow = \"accept\"\n[policy]\ndefault = \"drop\"\n";
        let c = parse(new).unwrap();
        assert!(!c.daemon.queue_bypass && c.daemon.queue_overflow == Overflow::Accept);
        assert!(c.warnings.is_empty());
    }

    /// Every key whose value is a list takes one value or a list, alike.
    #[test]
    fn every_list_key_takes_one_value_or_a_list() {
        let rule = |line: &str| {
            let text = format!(
                "[policy]\ndefault = \"drop\"\n[[rule]]\nname = \"r\"\naction = \"accept\"\n\
                 proto = \"tcp\"\n{line}\n"
            );
            let c =
                Config::parse(&text, Path::new("r.toml")).unwrap_or_else(|e| panic!("{line}: {e}"));
            c.policy.rules[0].to_string()
        };
        for (key, one, list, shown) in [
            (
                "src",
                "\"198.18.0.0/15\"",
                "[\"198.18.0.0/15\"]",
                "src=198.18.0.0/15",
            ),
            (
                "dst",
                "\"2001:db8::1\"",
                "[\"2001:db8::1\"]",
                "dst=2001:db8::1/128",
            ),
            ("src_ports", "1024", "[1024]", "src_ports=1024"),
            (
                "dst_ports",
                "\"8000-8080\"",
                "[\"8000-8080\"]",
                "dst_ports=8000-8080",
            ),
        ] {
            let (a, b) = (
                rule(&format!("{key} = {one}")),
                rule(&format!("{key} = {list}")),
            );
            assert!(a.contains(shown), "{key} = {one}: {a}");
            assert_eq!(a, b, "{key}");
        }
        let daemon = |line: &str| {
            let text = format!("[daemon]\n{line}\n[policy]\ndefault = \"drop\"\n");
            Config::parse(&text, Path::new("r.toml"))
                .unwrap_or_else(|e| panic!("{line}: {e}"))
                .daemon
        };
        assert_eq!(daemon("hooks = \"INPUT\"").hooks, ["INPUT"]);
        assert_eq!(daemon("hooks = [\"INPUT\"]").hooks, ["INPUT"]);
        assert_eq!(
            daemon("hooks = [\"FORWARD\", \"OUTPUT\"]").hooks,
            ["FORWARD", "OUTPUT"]
        );
        for (one_or_many, queues) in [
            ("2", vec![2]),
            ("\"2\"", vec![2]),
            ("[2]", vec![2]),
            ("\"0-2,5\"", vec![0, 1, 2, 5]),
            ("[\"0-2\", 5, 1]", vec![0, 1, 2, 5]),
        ] {
            let d = daemon(&format!("queues = {one_or_many}"));
            assert_eq!(d.queues.as_slice(), queues, "queues = {one_or_many}");
        }
        for bad in [
            "queues = []",
            "queues = [[1]]",
            "queues = 70000",
            "hooks = 1",
        ] {
            let text = format!("[daemon]\n{bad}\n[policy]\ndefault = \"drop\"\n");
            let p = only_problem(Config::parse(&text, Path::new("r.toml")));
            assert_eq!(p.line, 2, "{bad}: {}", p.message);
        }
    }

    #[test]
    fn line_and_column_are_one_based() {
        let text = "a\nbc\ndef";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 3), (2, 2));
        assert_eq!(line_column(text, 5), (3, 1));
    }
}
