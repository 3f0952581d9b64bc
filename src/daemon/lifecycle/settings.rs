//! The daemon's settings: the command line, merged over the rules file's
//! `[daemon]` table.

use super::super::operations::logging::LogFormat;
use super::daemon_table::{DaemonSettings, MetricsListen, Overflow, QueueSpec};
use anyhow::bail;
use std::path::PathBuf;
use std::time::Duration;

/// Smallest copy range that holds an IPv4 header and a TCP header, both with
/// maximal options.
const MIN_COPY_RANGE: u16 = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum OverflowArg {
    Drop,
    Accept,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}

/// Options of the daemon (no subcommand). Each overrides its `[daemon]` key.
#[derive(Debug, Default, clap::Args)]
pub struct DaemonArgs {
    /// Rules file [default: /etc/conntrackd/rules.toml].
    #[arg(long, value_name = "FILE")]
    pub rules: Option<PathBuf>,
    /// Queues to serve, one worker thread each: 0, 0-3 or 0,2 [daemon.queues].
    #[arg(long, value_name = "SPEC")]
    pub queue: Option<QueueSpec>,
    /// Install conntrackd's own iptables and ip6tables chain (jumped to from
    /// FORWARD) and remove it on exit [daemon.install_iptables].
    #[arg(long)]
    pub install_iptables: bool,
    /// Built-in chains that jump to conntrackd's chain with --install-iptables:
    /// FORWARD, INPUT, OUTPUT, comma-separated [daemon.hooks].
    #[arg(long, value_name = "CHAINS", value_delimiter = ',')]
    pub hooks: Option<Vec<String>>,
    /// While conntrackd is not running, the kernel accepts queued traffic
    /// (iptables --queue-bypass) [daemon.queue_bypass = true].
    #[arg(long, conflicts_with = "fail_closed")]
    pub fail_open: bool,
    /// While conntrackd is not running, the kernel drops queued traffic
    /// [daemon.queue_bypass = false].
    #[arg(long)]
    pub fail_closed: bool,
    /// When a queue is full: drop what does not fit, or accept it unfiltered
    /// (lets a flood that fills the queue through) [daemon.queue_overflow = "drop"].
    #[arg(long, value_enum, value_name = "ACTION")]
    pub queue_overflow: Option<OverflowArg>,
    /// The control socket ("" for none) [daemon.control_socket].
    #[arg(long, value_name = "PATH", value_parser = path_or_none)]
    pub control_socket: Option<PathBuf>,
    /// Serve Prometheus metrics at GET /metrics on this address and port,
    /// e.g. 127.0.0.1:9680 ("" for none) [daemon.metrics_listen].
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<MetricsListen>,
    /// Where the table is kept across restarts ("" for nowhere)
    /// [daemon.state_file; default $STATE_DIRECTORY/table under systemd,
    /// else /var/lib/conntrackd/table when run as root].
    #[arg(long, value_name = "FILE", value_parser = path_or_none)]
    pub state_file: Option<PathBuf>,
    /// Log format [daemon.log_format].
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormatArg>,
    /// Log filter: error, warn, info, debug (one line per dropped packet),
    /// or tracing directives such as info,conntrackd::drop=debug [daemon.log_level].
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Hand-off mode: hand established TCP connections to the kernel by
    /// connmark; their SYN, FIN and RST packets are still queued [daemon.handoff].
    #[arg(long)]
    pub handoff: bool,
    /// The old name of --handoff (deprecated: "bypass" now means only the
    /// kernel's --queue-bypass).
    #[arg(long = "bypass", hide = true)]
    pub old_handoff: bool,
}

/// The daemon's settings after merging the rules file's `[daemon]` table
/// with the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub queues: QueueSpec,
    /// While no conntrackd is bound: accept (iptables --queue-bypass).
    pub queue_bypass: bool,
    pub queue_overflow: Overflow,
    pub install_iptables: bool,
    pub hooks: Vec<String>,
    pub queue_maxlen: u32,
    pub copy_range: u16,
    pub socket_rcvbuf: usize,
    pub log_format: LogFormat,
    pub log_level: String,
    pub iptables_chain: String,
    pub stats_interval: Duration,
    /// None: the table is not saved.
    pub state_file: Option<PathBuf>,
    /// Where `state_file` came from (for the start-up log).
    pub state_file_origin: StateFileOrigin,
    /// Zero: only at a graceful stop.
    pub snapshot_interval: Duration,
    /// Mid-stream pickup after a start from a periodic snapshot (zero: none).
    pub crash_pickup: Duration,
    /// None: no control socket.
    pub control_socket: Option<PathBuf>,
    /// The socket's group (None: the daemon's).
    pub control_socket_group: Option<String>,
    /// None: no metrics endpoint.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Zero: never warn.
    pub idle_warning: Duration,
    /// Hand-off mode's mark bit(s), when it is on.
    pub handoff: Option<u32>,
    /// Hand-off mode: how often the kernel's marked connections are read (zero: never).
    pub handoff_refresh: Duration,
    /// Answers to rejected packets per second (0: none).
    pub reject_rate: u32,
    /// Packets are rewritten (the SYN proxy is configured): the queues copy
    /// whole packets (see [`Settings::for_rewriting`]).
    pub rewrites: bool,
}

impl Settings {
    /// The SYN proxy rewrites its connections' packets, and the kernel
    /// takes a rewritten packet whole (it cuts it at the length given): the
    /// queues copy whole packets (GSO super-packets too: up to 64 KiB).
    pub fn for_rewriting(mut self, rewrites: bool) -> Settings {
        self.rewrites = rewrites;
        if rewrites {
            self.copy_range = u16::MAX;
        }
        self
    }

    pub fn merge(file: &DaemonSettings, args: &DaemonArgs) -> anyhow::Result<Settings> {
        let queues = args.queue.clone().unwrap_or_else(|| file.queues.clone());
        let queue_bypass = if args.fail_open {
            true
        } else if args.fail_closed {
            false
        } else {
            file.queue_bypass
        };
        let (state_file, state_file_origin) = state_file(
            file,
            args,
            std::env::var_os("STATE_DIRECTORY"),
            // SAFETY: geteuid(2) takes nothing and cannot fail.
            unsafe { libc::geteuid() } == 0,
        );
        let s = Settings {
            queues,
            queue_bypass,
            queue_overflow: match args.queue_overflow {
                Some(OverflowArg::Drop) => Overflow::Drop,
                Some(OverflowArg::Accept) => Overflow::Accept,
                None => file.queue_overflow,
            },
            install_iptables: args.install_iptables || file.install_iptables,
            hooks: args.hooks.clone().unwrap_or_else(|| file.hooks.clone()),
            queue_maxlen: file.queue_maxlen,
            copy_range: file.copy_range,
            socket_rcvbuf: file.socket_rcvbuf,
            log_format: match args.log_format {
                Some(LogFormatArg::Text) => LogFormat::Text,
                Some(LogFormatArg::Json) => LogFormat::Json,
                None => file.log_format,
            },
            log_level: args
                .log_level
                .clone()
                .unwrap_or_else(|| file.log_level.clone()),
            iptables_chain: file.iptables_chain.clone(),
            stats_interval: Duration::from_secs(file.stats_interval),
            state_file: state_file.clone().filter(|p| !p.as_os_str().is_empty()),
            state_file_origin,
            snapshot_interval: Duration::from_secs(file.snapshot_interval),
            crash_pickup: Duration::from_secs(file.crash_pickup),
            control_socket: {
                let path = args
                    .control_socket
                    .clone()
                    .or_else(|| file.control_socket.clone())
                    .unwrap_or_else(default_control_socket);
                (!path.as_os_str().is_empty()).then_some(path)
            },
            control_socket_group: file.control_socket_group.clone(),
            metrics_listen: args.metrics_listen.unwrap_or(file.metrics_listen).0,
            idle_warning: Duration::from_secs(file.idle_warning),
            handoff: (args.handoff || args.old_handoff || file.handoff)
                .then_some(file.handoff_mark),
            handoff_refresh: Duration::from_secs(file.handoff_refresh),
            reject_rate: file.reject_rate,
            rewrites: false,
        };
        if s.handoff == Some(0) {
            bail!("daemon.handoff_mark must have at least one bit set");
        }
        if s.copy_range < MIN_COPY_RANGE {
            bail!(
                "daemon.copy_range = {} is too small: at least {MIN_COPY_RANGE} bytes are \
                 needed for the IP and TCP headers",
                s.copy_range
            );
        }
        if s.queue_maxlen == 0 {
            bail!("daemon.queue_maxlen must be at least 1");
        }
        Ok(s)
    }
}

/// Where the state file setting came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StateFileOrigin {
    /// `--state-file` or `daemon.state_file` (`""`: none).
    Set,
    /// `table` in systemd's `StateDirectory=`.
    Systemd,
    /// [`DEFAULT_STATE_FILE`], run as root outside systemd.
    Default,
    /// Not root, not under systemd, none set: no state file.
    None,
}

/// The state file of a daemon started by hand as root: a restart keeps the
/// connections unless told otherwise (`state_file = ""`).
pub const DEFAULT_STATE_FILE: &str = "/var/lib/conntrackd/table";

/// The state file: the command line's, the rules file's, systemd's
/// `StateDirectory=` (the first, if it names several), or, as root,
/// [`DEFAULT_STATE_FILE`]. An empty path means none.
fn state_file(
    file: &DaemonSettings,
    args: &DaemonArgs,
    state_directory: Option<std::ffi::OsString>,
    root: bool,
) -> (Option<PathBuf>, StateFileOrigin) {
    if let Some(p) = args.state_file.clone().or_else(|| file.state_file.clone()) {
        return (Some(p), StateFileOrigin::Set);
    }
    let systemd = state_directory.and_then(|d| {
        let d = d.to_string_lossy().split(':').next()?.to_string();
        (!d.is_empty()).then(|| PathBuf::from(d).join("table"))
    });
    match systemd {
        Some(p) => (Some(p), StateFileOrigin::Systemd),
        None if root => (Some(DEFAULT_STATE_FILE.into()), StateFileOrigin::Default),
        None => (None, StateFileOrigin::None),
    }
}

/// `control` in systemd's RuntimeDirectory=, else /run/conntrackd/control.
/// A path, or `""` (clap's path parser refuses an empty value; here it
/// means "none").
fn path_or_none(s: &str) -> Result<PathBuf, String> {
    Ok(PathBuf::from(s))
}

pub fn default_control_socket() -> PathBuf {
    std::env::var("RUNTIME_DIRECTORY")
        .ok()
        .and_then(|d| {
            d.split(':')
                .next()
                .map(|d| PathBuf::from(d).join("control"))
        })
        .unwrap_or_else(|| PathBuf::from("/run/conntrackd/control"))
}

/// The rules file: `--rules`, else /etc/conntrackd/rules.toml (see
/// [`crate::rules_file::path`]).
pub fn resolve_rules(arg: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    crate::rules_file::path(arg.as_deref()).map_err(anyhow::Error::msg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct T {
        #[command(flatten)]
        d: DaemonArgs,
    }

    fn args(a: &[&str]) -> DaemonArgs {
        T::try_parse_from(std::iter::once("conntrackd").chain(a.iter().copied()))
            .unwrap()
            .d
    }

    #[test]
    fn an_empty_control_socket_turns_it_off() {
        let file = DaemonSettings::default();
        let off = Settings::merge(&file, &args(&["--control-socket", ""])).unwrap();
        assert_eq!(off.control_socket, None);
        let on = Settings::merge(&file, &args(&["--control-socket", "/tmp/x"])).unwrap();
        assert_eq!(on.control_socket, Some(PathBuf::from("/tmp/x")));
    }

    #[test]
    fn command_line_overrides_the_file() {
        let file = DaemonSettings::default();
        let s = Settings::merge(&file, &args(&[])).unwrap();
        assert_eq!(s.queues.as_slice(), [0]);
        assert!(s.queue_bypass);
        assert_eq!(s.queue_overflow, Overflow::Drop);
        assert!(!s.install_iptables);
        let s = Settings::merge(
            &file,
            &args(&[
                "--queue",
                "0-3",
                "--fail-closed",
                "--install-iptables",
                "--hooks",
                "FORWARD,INPUT",
                "--log-format",
                "json",
                "--log-level",
                "debug",
            ]),
        )
        .unwrap();
        assert_eq!(s.queues.as_slice(), [0, 1, 2, 3]);
        assert!(!s.queue_bypass);
        assert!(s.install_iptables);
        assert_eq!(s.hooks, vec!["FORWARD", "INPUT"]);
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.log_level, "debug");
        let closed = DaemonSettings {
            queue_bypass: false,
            ..DaemonSettings::default()
        };
        assert!(
            Settings::merge(&closed, &args(&["--fail-open"]))
                .unwrap()
                .queue_bypass
        );
        let accept = Settings::merge(&file, &args(&["--queue-overflow", "accept"])).unwrap();
        assert_eq!(accept.queue_overflow, Overflow::Accept);
        assert!(T::try_parse_from(["c", "--fail-open", "--fail-closed"]).is_err());
        assert!(T::try_parse_from(["c", "--queue", "x"]).is_err());
        let tiny = DaemonSettings {
            copy_range: 40,
            ..DaemonSettings::default()
        };
        assert!(Settings::merge(&tiny, &args(&[])).is_err());
        // Hand-off mode, under its name and its deprecated one.
        assert_eq!(Settings::merge(&file, &args(&[])).unwrap().handoff, None);
        for flag in ["--handoff", "--bypass"] {
            let s = Settings::merge(&file, &args(&[flag])).unwrap();
            assert_eq!(s.handoff, Some(file.handoff_mark), "{flag}");
        }
    }

    #[test]
    fn the_state_file_is_kept_by_default_and_turned_off_by_an_empty_path() {
        let file = DaemonSettings::default();
        let none = args(&[]);
        let table = |d: &str| Some(PathBuf::from(d).join("table"));
        // Root outside systemd: the default; not root: none.
        assert_eq!(
            state_file(&file, &none, None, true),
            (Some(DEFAULT_STATE_FILE.into()), StateFileOrigin::Default)
        );
        assert_eq!(
            state_file(&file, &none, None, false),
            (None, StateFileOrigin::None)
        );
        // systemd's StateDirectory= (the first of several), root or not.
        for root in [true, false] {
            let (p, origin) = state_file(&file, &none, Some("/var/lib/a:/b".into()), root);
            assert_eq!((p, origin), (table("/var/lib/a"), StateFileOrigin::Systemd));
        }
        // Set in the file or on the command line (which wins); "" is none.
        let set = DaemonSettings {
            state_file: Some("/srv/t".into()),
            ..DaemonSettings::default()
        };
        let (p, origin) = state_file(&set, &none, Some("/x".into()), true);
        assert_eq!(
            (p.unwrap(), origin),
            ("/srv/t".into(), StateFileOrigin::Set)
        );
        let (p, _) = state_file(&set, &args(&["--state-file", "/cli"]), None, true);
        assert_eq!(p.unwrap(), PathBuf::from("/cli"));
        let off = DaemonSettings {
            state_file: Some("".into()),
            ..DaemonSettings::default()
        };
        for (f, a) in [(&off, &none), (&file, &args(&["--state-file", ""]))] {
            let s = Settings::merge(f, a).unwrap();
            assert_eq!(
                (s.state_file, s.state_file_origin),
                (None, StateFileOrigin::Set)
            );
        }
    }

    #[test]
    fn metrics_listen_from_the_file_or_the_command_line() {
        let file = DaemonSettings::default();
        assert_eq!(
            Settings::merge(&file, &args(&[])).unwrap().metrics_listen,
            None
        );
        let on = DaemonSettings {
            metrics_listen: "127.0.0.1:9680".parse().unwrap(),
            ..DaemonSettings::default()
        };
        let s = Settings::merge(&on, &args(&[])).unwrap();
        assert_eq!(s.metrics_listen, Some("127.0.0.1:9680".parse().unwrap()));
        let s = Settings::merge(&on, &args(&["--metrics-listen", "[::1]:9100"])).unwrap();
        assert_eq!(s.metrics_listen, Some("[::1]:9100".parse().unwrap()));
        // "" on the command line turns the file's endpoint off.
        let s = Settings::merge(&on, &args(&["--metrics-listen", ""])).unwrap();
        assert_eq!(s.metrics_listen, None);
        // A bad address is refused with the reason.
        let e = T::try_parse_from(["c", "--metrics-listen", "localhost"])
            .err()
            .expect("refused")
            .to_string();
        assert!(e.contains("is not an IP address and port"), "{e}");
    }
}
