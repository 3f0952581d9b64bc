//! The rules file's `[daemon]` table: how the NFQUEUE daemon runs.
//!
//! The core's parser ([`crate::config`]) reads the rest of the file and hands
//! this table over whole ([`Config::parse_with`]); what serde cannot check
//! here (the deprecated keys, read under their new names with a warning) is
//! checked in [`ShellTable::check`], and reported with every other problem
//! of the file, each at its `file:line:column`. Command-line options
//! override these settings ([`super::settings::Settings::merge`]).
//!
//! [`Config::parse_with`]: crate::config::Config::parse_with

use super::super::operations::logging::LogFormat;
use crate::config::{line_column, ShellTable};
use serde::Deserialize;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

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

impl ShellTable for DaemonSettings {
    fn check(
        &mut self,
        text: &str,
        name: &str,
        warnings: &mut Vec<String>,
        problems: &mut Vec<(usize, String)>,
    ) {
        rename_old_keys(self, text, name, warnings, problems);
    }

    fn summary(&self) -> Option<String> {
        Some(format!(
            "daemon: queues={} queue_bypass={} queue_overflow={} install_iptables={} hooks={} handoff={}",
            self.queues,
            self.queue_bypass,
            self.queue_overflow,
            self.install_iptables,
            self.hooks.join(","),
            self.handoff
        ))
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ConfigError, Problem};
    use std::path::Path;

    fn parse(text: &str) -> Result<(Config, DaemonSettings), ConfigError> {
        Config::parse_with::<DaemonSettings>(text, Path::new("r.toml"))
    }

    /// The one problem of a refused file.
    fn only_problem(parsed: Result<(Config, DaemonSettings), ConfigError>) -> Problem {
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
        } = only_problem(parse(text));
        assert_eq!((line, column), (2, 10), "{message}");
        assert!(message.contains("bad queue spec"), "{message}");
        let e = parse("[policy]\ndefault = \"drop\"\n[daemon]\nqueues = \"3-1\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bad queue spec") && e.starts_with("r.toml:4:"),
            "{e}"
        );
    }

    /// `[daemon]`'s problems are reported with the rest of the file's, in
    /// file order.
    #[test]
    fn daemon_problems_are_among_the_files_others() {
        let text = "[engine]\nmax_conns = 5\n\n[daemon]\nqueues = \"3-1\"\nqueue_maxlenn = 1\n\n\
                    [policy]\ndefault = \"drop\"\n\n[[rule]]\nname = \"bad-cidr\"\n\
                    action = \"accept\"\nsrc = \"10.0.0.0/33\"\n";
        let lines = parse(text).unwrap_err().lines();
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert!(lines[0].starts_with("r.toml:2:1: unknown field `max_conns`"));
        assert!(lines[1].starts_with("r.toml:5:10: ") && lines[1].contains("bad queue spec"));
        assert!(lines[2].starts_with("r.toml:6:1: unknown field `queue_maxlenn`"));
        assert!(lines[3].starts_with("r.toml:14:7: ") && lines[3].contains("prefix length"));
    }

    #[test]
    fn metrics_listen_is_an_address_and_port_or_nothing() {
        let parse = |v: &str| {
            let text =
                format!("[daemon]\nmetrics_listen = {v:?}\n[policy]\ndefault = \"accept\"\n");
            parse(&text)
        };
        let addr = |v: &str| parse(v).unwrap().1.metrics_listen.0;
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
        let (c, d) = parse(text).unwrap();
        assert!(d.handoff);
        assert_eq!(d.handoff_mark, 0x10);
        assert_eq!(d.handoff_refresh, 5);
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
        let (n, nd) = parse(new).unwrap();
        assert_eq!(nd, d);
        assert!(n.warnings.is_empty());
        let both = "[daemon]\nhandoff = true\nbypass = true\n[policy]\ndefault = \"accept\"\n";
        let Problem { line, message, .. } = only_problem(parse(both));
        assert_eq!(line, 3, "{message}");
        assert!(message.contains("give only daemon.handoff"), "{message}");
    }

    #[test]
    fn fail_open_is_read_as_both_new_keys_with_a_warning() {
        let d = parse("[policy]\ndefault = \"drop\"\n").unwrap().1;
        assert!(d.queue_bypass);
        assert_eq!(d.queue_overflow, Overflow::Drop);
        let (c, d) = parse("[daemon]\nfail_open = true\n[policy]\ndefault = \"drop\"\n").unwrap();
        assert!(d.queue_bypass);
        assert_eq!(d.queue_overflow, Overflow::Accept);
        assert!(
            c.warnings[0].starts_with("r.toml:2:13: daemon.fail_open is deprecated"),
            "{:?}",
            c.warnings
        );
        let d = parse("[daemon]\nfail_open = false\n[policy]\ndefault = \"drop\"\n")
            .unwrap()
            .1;
        assert!(!d.queue_bypass);
        assert_eq!(d.queue_overflow, Overflow::Drop);
        let both =
            "[daemon]\nfail_open = true\nqueue_overflow = \"drop\"\n[policy]\ndefault = \"drop\"\n";
        assert!(parse(both)
            .unwrap_err()
            .to_string()
            .contains("give only those"));
        let new = "[daemon]\nqueue_bypass = false\nqueue_overflow = \"accept\"\n[policy]\ndefault = \"drop\"\n";
        let (c, d) = parse(new).unwrap();
        assert!(!d.queue_bypass && d.queue_overflow == Overflow::Accept);
        assert!(c.warnings.is_empty());
    }

    /// Every key whose value is a list takes one value or a list, alike.
    #[test]
    fn every_list_key_takes_one_value_or_a_list() {
        let daemon = |line: &str| {
            let text = format!("[daemon]\n{line}\n[policy]\ndefault = \"drop\"\n");
            parse(&text).unwrap_or_else(|e| panic!("{line}: {e}")).1
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
            let p = only_problem(parse(&text));
            assert_eq!(p.line, 2, "{bad}: {}", p.message);
        }
    }

    /// `conntrackd check`'s summary: the daemon's line after the engine's.
    #[test]
    fn the_summary_has_the_daemons_line() {
        let (c, d) = parse(
            "[daemon]\nqueues = \"0-1\"\nhooks = [\"INPUT\", \"OUTPUT\"]\n\
                            [policy]\ndefault = \"drop\"\n",
        )
        .unwrap();
        let shown = c.summary(&d);
        assert_eq!(
            shown.lines().nth(2),
            Some(
                "daemon: queues=0,1 queue_bypass=true queue_overflow=drop \
                 install_iptables=false hooks=INPUT,OUTPUT handoff=false"
            ),
            "{shown}"
        );
    }

    #[test]
    fn shipped_rules_files_have_the_default_daemon_table_and_no_deprecated_key() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules");
        let mut files = vec![root.join("default.toml")];
        for entry in std::fs::read_dir(root.join("examples")).unwrap() {
            files.push(entry.unwrap().path());
        }
        assert!(files.len() >= 3, "default plus a few examples");
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            let (c, _) =
                Config::parse_with::<DaemonSettings>(&text, &f).unwrap_or_else(|e| panic!("{e}"));
            assert!(c.warnings.is_empty(), "{}: {:?}", f.display(), c.warnings);
        }
        // The default file's [daemon] is the defaults it says it shows.
        let default = root.join("default.toml");
        let text = std::fs::read_to_string(&default).unwrap();
        let (_, d) = Config::parse_with::<DaemonSettings>(&text, &default).unwrap();
        assert_eq!(d, DaemonSettings::default());
    }
}
