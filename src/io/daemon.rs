//! The NFQUEUE daemon: configuration, start-up, workers, housekeeping,
//! signals, shutdown.
//!
//! Threads: one worker per queue (recv → decide → verdict), a housekeeping
//! thread (expiry once a second, periodic statistics), a logging thread fed
//! by the workers over a bounded channel, and the main thread, which waits
//! for signals: SIGHUP reloads the rules, SIGINT/SIGTERM stop gracefully.

use crate::config::{Config, DaemonSettings, LogFormat};
use crate::io::ctnetlink::Conntrack;
use crate::io::iptables::{self, Installed};
use crate::io::logging;
use crate::io::nfqueue::{self, Bypass, QueueConfig, Shared, Worker, WorkerStats};
use crate::io_support::parse_queue_spec;
use crate::reason::Verdict;
use crate::time::Timestamp;
use crate::wire::PROTO_TCP;
use crate::Engine;
use anyhow::{bail, Context as _};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// Where the rules are looked for when `--rules` is not given.
pub const DEFAULT_RULES: &[&str] = &["rules/default.toml", "/etc/conntrackd/rules.toml"];
/// Smallest copy range that holds an IPv4 header and a TCP header, both with
/// maximal options.
const MIN_COPY_RANGE: u16 = 128;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}

/// Options of the daemon (no subcommand). Each overrides its `[daemon]` key.
#[derive(Debug, Default, clap::Args)]
pub struct DaemonArgs {
    /// Rules file [default: rules/default.toml, else /etc/conntrackd/rules.toml].
    #[arg(long, value_name = "FILE")]
    pub rules: Option<PathBuf>,
    /// Queues to serve, one worker thread each: 0, 0-3 or 0,2 [daemon.queues].
    #[arg(long, value_name = "SPEC")]
    pub queue: Option<String>,
    /// Install conntrackd's own iptables and ip6tables chain (jumped to from
    /// FORWARD) and remove it on exit [daemon.install_iptables].
    #[arg(long)]
    pub install_iptables: bool,
    /// Built-in chains that jump to conntrackd's chain with --install-iptables:
    /// FORWARD, INPUT, OUTPUT, comma-separated [daemon.hooks].
    #[arg(long, value_name = "CHAINS", value_delimiter = ',')]
    pub hooks: Option<Vec<String>>,
    /// Accept packets when a queue overflows (and, with --install-iptables,
    /// when conntrackd is not running) [daemon.fail_open = true].
    #[arg(long, conflicts_with = "fail_closed")]
    pub fail_open: bool,
    /// Drop packets when a queue overflows or conntrackd is not running
    /// [daemon.fail_open = false].
    #[arg(long)]
    pub fail_closed: bool,
    /// Log format [daemon.log_format].
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormatArg>,
    /// Log filter: error, warn, info, debug (one line per dropped packet),
    /// or tracing directives such as info,conntrackd::drop=debug [daemon.log_level].
    #[arg(long, value_name = "LEVEL")]
    pub log_level: Option<String>,
    /// Bypass mode: hand established TCP connections to the kernel by
    /// connmark; their SYN, FIN and RST packets are still queued [daemon.bypass].
    #[arg(long)]
    pub bypass: bool,
}

/// The daemon's settings after merging the rules file's `[daemon]` table
/// with the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub queues: Vec<u16>,
    pub fail_open: bool,
    pub install_iptables: bool,
    pub hooks: Vec<String>,
    pub queue_maxlen: u32,
    pub copy_range: u16,
    pub socket_rcvbuf: usize,
    pub log_format: LogFormat,
    pub log_level: String,
    pub iptables_chain: String,
    pub stats_interval: Duration,
    /// Zero: never warn.
    pub idle_warning: Duration,
    /// Bypass mode's mark bit(s), when it is on.
    pub bypass: Option<u32>,
    /// Bypass mode: how often the kernel's marked connections are read (zero: never).
    pub bypass_refresh: Duration,
}

impl Settings {
    pub fn merge(file: &DaemonSettings, args: &DaemonArgs) -> anyhow::Result<Settings> {
        let spec = args.queue.as_deref().unwrap_or(&file.queues);
        let queues = parse_queue_spec(spec).map_err(|e| anyhow::anyhow!(e))?;
        let fail_open = if args.fail_open {
            true
        } else if args.fail_closed {
            false
        } else {
            file.fail_open
        };
        let s = Settings {
            queues,
            fail_open,
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
            idle_warning: Duration::from_secs(file.idle_warning),
            bypass: (args.bypass || file.bypass).then_some(file.bypass_mark),
            bypass_refresh: Duration::from_secs(file.bypass_refresh),
        };
        if s.bypass == Some(0) {
            bail!("daemon.bypass_mark must have at least one bit set");
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

    /// The NFQUEUE spec in iptables terms (`--queue-num 0`, `--queue-balance 0:3`).
    fn queue_list(&self) -> String {
        let mut s = String::new();
        for (i, q) in self.queues.iter().enumerate() {
            if i > 0 {
                s.push(',');
            }
            let _ = write!(s, "{q}");
        }
        s
    }
}

/// Bypass mode: how long a handed-off connection lives in the engine without
/// queued packets. Its traffic flows in the kernel, which refreshes only its
/// own conntrack entry: at least the kernel's established timeout, so that the
/// engine does not forget a connection (and then refuse its FIN) the kernel
/// still passes.
fn bypass_timeout(config: &Config) -> u32 {
    let kernel =
        std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established")
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .unwrap_or(432_000);
    kernel.max(config.engine.timeouts.established)
}

fn resolve_rules(arg: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = arg {
        return Ok(p);
    }
    for candidate in DEFAULT_RULES {
        if Path::new(candidate).exists() {
            return Ok(PathBuf::from(candidate));
        }
    }
    bail!(
        "no rules file: pass --rules FILE (looked for {})",
        DEFAULT_RULES.join(" and ")
    )
}

/// Runs the daemon until SIGINT or SIGTERM.
pub fn run(args: DaemonArgs) -> ExitCode {
    let path = match resolve_rules(args.rules.clone()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("conntrackd: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("conntrackd: error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let settings = match Settings::merge(&config.daemon, &args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("conntrackd: {}: {e:#}", path.display());
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = logging::init(settings.log_format, &settings.log_level) {
        eprintln!("conntrackd: {e:#}");
        return ExitCode::FAILURE;
    }
    match Daemon::start(config, settings) {
        Ok(daemon) => daemon.serve(),
        Err(e) => {
            error!("cannot start: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Ends the signal loop (and so the daemon, with a failure status, for
/// systemd to restart it) when the worker thread holding it panics.
struct StopOnPanic(signal_hook::iterator::Handle);

impl Drop for StopOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.close();
        }
    }
}

struct Daemon {
    path: PathBuf,
    config: Config,
    settings: Settings,
    engine: Arc<Engine>,
    shared: Arc<Shared>,
    signals: Option<Signals>,
    workers: Vec<JoinHandle<WorkerStats>>,
    events: Option<crossbeam_channel::Sender<logging::Event>>,
    logger: Option<JoinHandle<()>>,
    housekeeping: Option<(crossbeam_channel::Sender<()>, JoinHandle<()>)>,
    installed: Option<Installed>,
}

impl Daemon {
    fn start(config: Config, settings: Settings) -> anyhow::Result<Daemon> {
        // Signals first: a SIGTERM during start-up still stops us cleanly
        // (and the signal pipe is opened before the queue sockets are looked for).
        let signals =
            Signals::new([SIGINT, SIGTERM, SIGHUP]).context("installing signal handlers")?;
        let start = Instant::now();
        let engine = Arc::new(Engine::from_config(&config));
        let shared = Arc::new(Shared::new(start, settings.queues.len()));

        // Bind every queue before installing hooks, so that no packet is
        // queued to a queue nobody serves.
        let mut queues = Vec::new();
        for &num in &settings.queues {
            let q = nfqueue::open(&QueueConfig {
                num,
                copy_range: settings.copy_range,
                maxlen: settings.queue_maxlen,
                rcvbuf: settings.socket_rcvbuf,
                fail_open: settings.fail_open,
            })?;
            if !q.gso {
                warn!(
                    queue = num,
                    "the kernel refused NFQA_CFG_F_GSO: it segments large packets before \
                     queueing them (slower)"
                );
            }
            queues.push(q);
        }
        let rcvbuf = queues.first().map_or(0, |q| q.rcvbuf);

        let installed = if settings.install_iptables {
            let mut spec = iptables::Spec::new(
                &settings.iptables_chain,
                &settings.hooks,
                &settings.queues,
                settings.fail_open,
            )?;
            spec.connmark_bypass = settings.bypass;
            let target = spec.target();
            let installed = Installed::install(spec)?;
            info!(
                chain = settings.iptables_chain.as_str(),
                hooks = settings.hooks.join(",").as_str(),
                target = target.as_str(),
                families = ?installed.families(),
                "installed iptables chain"
            );
            Some(installed)
        } else {
            None
        };

        let (tx, rx) = crossbeam_channel::bounded(logging::CHANNEL_CAPACITY);
        let logger = logging::spawn(rx, engine.clone()).context("starting the log thread")?;
        let log_drops = tracing::enabled!(target: logging::DROP_TARGET, tracing::Level::DEBUG);

        let bypass = settings.bypass.map(|mark| {
            let b = Bypass {
                mark,
                timeout: bypass_timeout(&config),
            };
            if installed.is_none() {
                warn!(
                    mark = format!("{mark:#x}").as_str(),
                    "bypass mode without --install-iptables: the rules that save the mark to \
                     the connmark and accept marked connections must be in place (see README), \
                     or the engine stops checking windows of established connections for nothing"
                );
            }
            let refresh = settings.bypass_refresh.as_secs();
            // Room for the housekeeping tick (1 s), the dump itself and whole-second expiry.
            if refresh == 0 || refresh + 2 > u64::from(b.timeout) {
                warn!(
                    bypass_refresh = refresh,
                    timeout = b.timeout,
                    "bypass mode: the kernel's conntrack is not read often enough \
                     (daemon.bypass_refresh) to keep handed-off connections: one that lives \
                     longer than {} s after its hand-off is forgotten and its FIN refused",
                    b.timeout
                );
            }
            info!(
                mark = format!("{mark:#x}").as_str(),
                timeout = b.timeout,
                bypass_refresh = refresh,
                "bypass mode: established TCP connections are handed to the kernel"
            );
            b
        });
        let mut workers = Vec::new();
        for (index, queue) in queues.into_iter().enumerate() {
            let num = queue.num;
            let worker = Worker {
                queue,
                index,
                engine: engine.clone(),
                shared: shared.clone(),
                events: tx.clone(),
                log_drops,
                bypass,
            };
            let guard = StopOnPanic(signals.handle());
            let handle = std::thread::Builder::new()
                .name(format!("ctd-q{num}"))
                .spawn(move || {
                    let _guard = guard;
                    worker.run()
                })
                .context("starting a worker thread")?;
            workers.push(handle);
        }

        let (hk_tx, hk_rx) = crossbeam_channel::bounded::<()>(1);
        let hk = Housekeeping {
            engine: engine.clone(),
            shared: shared.clone(),
            stats_interval: settings.stats_interval,
            idle_warning: if installed.is_none() {
                settings.idle_warning
            } else {
                Duration::ZERO
            },
            queues: settings.queue_list(),
            bypass: bypass.map(|b| KeepHandedOff {
                mark: b.mark,
                timeout: b.timeout,
                every: settings.bypass_refresh,
                conntrack: None,
                warned: false,
            }),
        };
        let hk_handle = std::thread::Builder::new()
            .name("ctd-housekeeping".into())
            .spawn(move || hk.run(hk_rx))
            .context("starting the housekeeping thread")?;

        let policy = engine.policy();
        info!(
            version = env!("CARGO_PKG_VERSION"),
            rules_file = %config.path.display(),
            rules = policy.rules.len(),
            default = %policy.default,
            queues = settings.queue_list().as_str(),
            workers = settings.queues.len(),
            fail_open = settings.fail_open,
            hooks_installed = installed.is_some(),
            table_max = config.engine.max_connections,
            half_open_max = config.engine.max_half_open,
            copy_range = settings.copy_range,
            queue_maxlen = settings.queue_maxlen,
            socket_rcvbuf = rcvbuf,
            "conntrackd started"
        );
        Ok(Daemon {
            path: config.path.clone(),
            config,
            settings,
            engine,
            shared,
            signals: Some(signals),
            workers,
            events: Some(tx),
            logger: Some(logger),
            housekeeping: Some((hk_tx, hk_handle)),
            installed,
        })
    }

    /// Waits for signals, then stops.
    fn serve(mut self) -> ExitCode {
        let mut stop_signal = None;
        let mut signals = self.signals.take().expect("signals are set at start");
        for sig in signals.forever() {
            match sig {
                SIGHUP => self.reload(),
                _ => {
                    stop_signal = Some(sig);
                    break;
                }
            }
        }
        match stop_signal {
            Some(SIGINT) => info!("SIGINT received: stopping"),
            Some(SIGTERM) => info!("SIGTERM received: stopping"),
            _ => error!("a worker thread died: stopping"),
        }
        let ok = stop_signal.is_some();
        match self.stop() {
            code if ok => code,
            _ => ExitCode::FAILURE,
        }
    }

    fn reload(&mut self) {
        // Interface indices may have changed too.
        self.shared
            .ifnames_generation
            .fetch_add(1, Ordering::Relaxed);
        match Config::load(&self.path) {
            Ok(new) => {
                let rules = new.policy.rules.len();
                let default = new.policy.default;
                if new.engine != self.config.engine {
                    warn!(
                        "reload: [engine] settings changed; they take effect at the next restart"
                    );
                }
                if new.daemon != self.config.daemon {
                    warn!(
                        "reload: [daemon] settings changed; they take effect at the next restart"
                    );
                }
                self.engine.set_policy(new.policy.clone());
                self.config.policy = new.policy;
                info!(
                    rules_file = %self.path.display(),
                    rules,
                    default = %default,
                    "rules reloaded; tracked connections keep their state"
                );
            }
            Err(e) => {
                error!("reload failed, keeping the rules in force: {e}");
            }
        }
    }

    fn stop(mut self) -> ExitCode {
        let mut ok = true;
        // 1. No new packets are queued to us...
        if let Some(installed) = self.installed.take() {
            match installed.remove() {
                Ok(()) => info!(
                    chain = self.settings.iptables_chain.as_str(),
                    "removed iptables chain {}", self.settings.iptables_chain
                ),
                Err(e) => {
                    error!("{e:#}");
                    ok = false;
                }
            }
        }
        // 2. ...the workers answer what is queued, unbind and return.
        self.shared.stop.store(true, Ordering::Relaxed);
        let mut total = WorkerStats::default();
        for handle in self.workers.drain(..) {
            match handle.join() {
                Ok(stats) => total.merge(&stats),
                Err(_) => {
                    error!("a worker thread panicked");
                    ok = false;
                }
            }
        }
        if let Some((tx, handle)) = self.housekeeping.take() {
            let _ = tx.send(());
            let _ = handle.join();
        }
        log_stats("stopped", &total, &self.engine, None);
        self.events.take();
        if let Some(logger) = self.logger.take() {
            let _ = logger.join();
        }
        if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}

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
fn log_stats(message: &str, s: &WorkerStats, engine: &Engine, top: Option<usize>) {
    info!(
        packets = s.packets(),
        accepted = s.counters.total(Verdict::Accept),
        dropped = s.counters.total(Verdict::Drop),
        connections = engine.table().len(),
        half_open = engine.table().half_open(),
        recv_errors = s.recv_errors,
        enobufs = s.enobufs,
        verdict_errors = s.verdict_errors,
        log_events_lost = s.events_lost,
        csum_not_ready = s.csum_not_ready,
        headers_only = s.truncated_copies,
        engine_panics = s.engine_panics,
        reads = s.reads,
        verdict_messages = s.verdict_messages,
        bypass_marked = s.bypass_marked,
        reasons = reasons(s, top).as_str(),
        "{message}"
    );
}

struct Housekeeping {
    engine: Arc<Engine>,
    shared: Arc<Shared>,
    stats_interval: Duration,
    /// Zero: no warning.
    idle_warning: Duration,
    queues: String,
    bypass: Option<KeepHandedOff>,
}

/// Bypass mode: keeps the engine's handed-off connections alive while the
/// kernel's conntrack still carries them (see `io::ctnetlink`).
struct KeepHandedOff {
    mark: u32,
    timeout: u32,
    /// Zero: never.
    every: Duration,
    conntrack: Option<Conntrack>,
    warned: bool,
}

impl KeepHandedOff {
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
                    info!("bypass mode: reading the kernel's conntrack table works again");
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
                        "bypass mode: cannot read the kernel's conntrack table ({e:#}); \
                         handed-off connections live {} s in the engine without queued \
                         packets, then their FIN or RST is refused",
                        self.timeout
                    );
                }
            }
        }
    }
}

impl Housekeeping {
    fn run(mut self, stop: crossbeam_channel::Receiver<()>) {
        let mut last_stats = Instant::now();
        let mut last_keep = Instant::now();
        let mut idle_warned = self.idle_warning.is_zero();
        // Runs until the daemon sends the stop message (or goes away).
        while let Err(crossbeam_channel::RecvTimeoutError::Timeout) =
            stop.recv_timeout(Duration::from_secs(1))
        {
            if let Some(keep) = self.bypass.as_mut() {
                if !keep.every.is_zero() && last_keep.elapsed() >= keep.every {
                    last_keep = Instant::now();
                    keep.run(&self.engine, self.shared.now());
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
                        queues = self.queues.as_str(),
                        "no packet received on queue(s) {} in {} s: the NFQUEUE rule seems \
                         missing. Add one, e.g. `iptables -I FORWARD -j NFQUEUE --queue-num {} \
                         --queue-bypass` (and the same with ip6tables), or run with \
                         --install-iptables",
                        self.queues,
                        self.idle_warning.as_secs(),
                        self.queues.split(',').next().unwrap_or("0")
                    );
                }
            }
            if !self.stats_interval.is_zero() && last_stats.elapsed() >= self.stats_interval {
                last_stats = Instant::now();
                log_stats("stats", &self.shared.totals(), &self.engine, Some(8));
            }
        }
    }
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
    fn command_line_overrides_the_file() {
        let file = DaemonSettings::default();
        let s = Settings::merge(&file, &args(&[])).unwrap();
        assert_eq!(s.queues, vec![0]);
        assert!(s.fail_open);
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
        assert_eq!(s.queues, vec![0, 1, 2, 3]);
        assert!(!s.fail_open);
        assert!(s.install_iptables);
        assert_eq!(s.hooks, vec!["FORWARD", "INPUT"]);
        assert_eq!(s.log_format, LogFormat::Json);
        assert_eq!(s.log_level, "debug");
        let closed = DaemonSettings {
            fail_open: false,
            ..DaemonSettings::default()
        };
        assert!(
            Settings::merge(&closed, &args(&["--fail-open"]))
                .unwrap()
                .fail_open
        );
        assert!(T::try_parse_from(["c", "--fail-open", "--fail-closed"]).is_err());
        assert!(Settings::merge(&file, &args(&["--queue", "x"])).is_err());
        let tiny = DaemonSettings {
            copy_range: 40,
            ..DaemonSettings::default()
        };
        assert!(Settings::merge(&tiny, &args(&[])).is_err());
    }
}
