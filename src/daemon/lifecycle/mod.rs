//! The daemon's lifecycle: settings (the rules file's `[daemon]` table, and
//! the command line over it), start, reload and stop, the state file and
//! housekeeping.
//!
//! Threads: one worker per queue (recv → decide → verdict), a housekeeping
//! thread (expiry once a second, periodic statistics), a logging thread fed
//! by the workers over a bounded channel, with a `[cluster]` the cluster
//! thread, and the main thread, which waits for signals: SIGHUP reloads the
//! rules, SIGINT/SIGTERM stop gracefully.
//!
//! Start-up order matters: signals first (a SIGTERM during start-up still
//! stops cleanly), the engine, every queue bound, only then the iptables
//! hooks (no packet is queued to a queue nobody serves), then the threads.
//! Stopping runs the other way: hooks removed, queues answered and unbound,
//! threads joined.

pub mod daemon_table;
mod housekeeping;
pub mod settings;
mod state;

use super::cluster::{self, ClusterSettings};
use super::operations::{control, events, logging, metrics};
use super::packet::reject;
use super::packet::worker::{Handoff, Worker};
use super::shared::cluster::{ClusterState, Observers};
use super::shared::notice::Notice;
use super::shared::{Shared, StopSwitch, WorkerStats};
use daemon_table::{DaemonSettings, Overflow};
use settings::{resolve_rules, DaemonArgs, Settings, StateFileOrigin};

use crate::config::Config;
use crate::engine::Layout;
use crate::kernel::iptables::{self, Installed};
use crate::kernel::nfqueue::{self, BoundQueue, QueueConfig};
use crate::rules_file;
use crate::Engine;
use anyhow::Context as _;
use housekeeping::{log_stats, Housekeeping, KeepHandedOff};
use sd_notify::NotifyState;
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::hash::BuildHasher;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use tracing::{error, info, warn};

/// Runs the daemon until SIGINT or SIGTERM.
pub fn run(args: DaemonArgs) -> ExitCode {
    let path = match resolve_rules(args.rules.clone()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("conntrackd: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let (config, daemon, cluster) =
        match rules_file::load_shell::<DaemonSettings, ClusterSettings>(&path) {
            Ok(c) => c,
            Err(e) => {
                for line in e.lines() {
                    eprintln!("conntrackd: error: {line}");
                }
                return ExitCode::FAILURE;
            }
        };
    let rewrites = config.engine.synproxy != crate::engine::settings::SynproxyMode::Off
        || config.policy.uses_synproxy();
    let settings = match Settings::merge(&daemon, &args) {
        Ok(s) => s.for_rewriting(rewrites),
        Err(e) => {
            eprintln!("conntrackd: {}: {e:#}", path.display());
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = logging::init(settings.log_format, &settings.log_level) {
        eprintln!("conntrackd: {e:#}");
        return ExitCode::FAILURE;
    }
    for w in &config.warnings {
        warn!("{w}");
    }
    if args.old_handoff {
        warn!(
            "--bypass is deprecated, use --handoff (\"bypass\" now means only the kernel's \
             --queue-bypass)"
        );
    }
    match Daemon::start(config, daemon, cluster, settings) {
        Ok(daemon) => {
            // systemd (Type=notify): ready once the table is loaded, the
            // queues are bound and, in a cluster, the peers' tables copied
            // (or given up on). A no-op without $NOTIFY_SOCKET.
            daemon.wait_for_cluster();
            let status = format!("{} connections tracked", daemon.engine.table().len());
            let _ = sd_notify::notify(false, &[NotifyState::Ready, NotifyState::Status(&status)]);
            daemon.serve()
        }
        Err(e) => {
            error!("cannot start: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `conntrackd uninstall-iptables`: removes the chain the rules file's
/// `[daemon]` names (or `chain`), with its jumps and hand-off's mangle rules.
pub fn uninstall_iptables(rules: Option<PathBuf>, chain: Option<String>) -> ExitCode {
    // The chain and mark from the rules file, when it can be read: a broken
    // file must not keep a firewall's hook in place, so fall back to the
    // defaults (or --chain) with a warning.
    let defaults = DaemonSettings::default();
    let daemon = match resolve_rules(rules).map(|p| (rules_file::load_with(&p), p)) {
        Ok((Ok((_, daemon)), _)) => daemon,
        Ok((Err(e), path)) => {
            eprintln!(
                "conntrackd: warning: {} not read ({}); using the default chain name",
                path.display(),
                e.lines().first().map_or("", String::as_str)
            );
            defaults
        }
        Err(e) => {
            eprintln!("conntrackd: warning: {e:#}; using the default chain name");
            defaults
        }
    };
    let chain = chain.unwrap_or(daemon.iptables_chain);
    let mark = daemon.handoff.then_some(daemon.handoff_mark);
    match iptables::uninstall(&chain, mark) {
        Ok(found) if found.is_empty() => {
            println!("no chain {chain}: nothing to remove");
            ExitCode::SUCCESS
        }
        Ok(found) => {
            let names: Vec<&str> = found.iter().map(|f| f.command()).collect();
            println!("removed chain {chain} and its jumps ({})", names.join(", "));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("conntrackd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Reloads the rules (SIGHUP, or `conntrackd reload`); shared by the main
/// thread and the control thread.
struct Rules {
    path: PathBuf,
    /// The configuration in force.
    config: std::sync::Mutex<Config>,
    /// The `[daemon]` table the daemon started with (a reload cannot change it).
    daemon: DaemonSettings,
    /// And its `[cluster]` table (neither).
    cluster: Option<ClusterSettings>,
    engine: Arc<Engine>,
    shared: Arc<Shared>,
    /// Rejected packets cannot be answered (no raw socket, or reject_rate = 0).
    rejects_unanswered: bool,
    /// conntrackd's hook queues OUTPUT (reject answers would be queued back).
    output_hooked: bool,
    reloads: Arc<metrics::Reloads>,
    /// Started with the SYN proxy (queues copy whole packets).
    rewrites: bool,
}

impl Rules {
    /// Loads the rules file anew (counted); the summary, or why not (old rules kept).
    fn reload(&self) -> Result<String, String> {
        let result = self.load_anew();
        self.reloads.count(&result);
        result
    }

    fn load_anew(&self) -> Result<String, String> {
        // Interface indices may have changed too.
        self.shared
            .ifnames_generation
            .fetch_add(1, Ordering::Relaxed);
        let loaded = rules_file::load_shell::<DaemonSettings, ClusterSettings>(&self.path);
        let (new, daemon, cluster) = loaded.map_err(|e| {
            // One line, for the log and the control socket's answer.
            format!(
                "reload failed, keeping the rules in force: {}",
                e.lines().join("; ")
            )
        })?;
        if new.policy.uses_synproxy() && !self.rewrites {
            return Err(
                "reload failed, keeping the rules in force: a rule asks for \
                        synproxy = true, but conntrackd started without the SYN proxy (its \
                        queues copy packet headers only, and a proxied connection's packets \
                        are rewritten whole): restart conntrackd with these rules"
                    .into(),
            );
        }
        for w in &new.warnings {
            warn!("reload: {w}");
        }
        let mut config = self.config.lock().unwrap_or_else(|e| e.into_inner());
        if new.engine != config.engine {
            warn!("reload: [engine] settings changed; they take effect at the next restart");
        }
        if daemon != self.daemon {
            warn!("reload: [daemon] settings changed; they take effect at the next restart");
        }
        if cluster != self.cluster {
            warn!("reload: [cluster] settings changed; they take effect at the next restart");
        }
        let diff = new.policy.diff(&config.policy);
        let summary = format!(
            "{} rules, default {} ({diff})",
            new.policy.rules.len(),
            new.policy.default
        );
        let rejects_now = new.policy.uses_reject() && !config.policy.uses_reject();
        if rejects_now && self.output_hooked {
            warn!("reload: {OUTPUT_HOOKED}");
        }
        if self.rejects_unanswered && rejects_now {
            warn!(
                "reload: the rules reject, but rejected packets are dropped unanswered \
                 (reject_rate = 0, or no raw socket: see the start-up log)"
            );
        }
        self.engine.set_policy(new.policy.clone());
        config.policy = new.policy;
        info!(
            rules_file = %self.path.display(),
            "rules reloaded: {summary}; tracked connections keep their state"
        );
        Ok(summary)
    }
}

struct Daemon {
    rules: Arc<Rules>,
    settings: Settings,
    engine: Arc<Engine>,
    shared: Arc<Shared>,
    signals: Option<Signals>,
    /// The one way to stop: every thread below holds a view of it.
    stop: StopSwitch,
    workers: Vec<JoinHandle<WorkerStats>>,
    housekeeping: Option<JoinHandle<()>>,
    /// The control socket's, the event stream's and the metrics endpoint's.
    operations: Vec<JoinHandle<()>>,
    /// The logging thread ends when its channel does: after the workers,
    /// whose last notices it writes.
    notices: Option<crossbeam_channel::Sender<Notice>>,
    logger: Option<JoinHandle<()>>,
    installed: Option<Installed>,
    /// With a `[cluster]`: its state, and how long READY may wait for it.
    cluster: Option<(Arc<ClusterState>, Duration)>,
}

impl Daemon {
    fn start(
        config: Config,
        daemon: DaemonSettings,
        cluster: Option<ClusterSettings>,
        settings: Settings,
    ) -> anyhow::Result<Daemon> {
        let signals =
            Signals::new([SIGINT, SIGTERM, SIGHUP]).context("installing signal handlers")?;
        let stop = StopSwitch::default();
        let mut operations = Vec::new();
        let engine = Arc::new(new_engine(&config, settings.queues.len()));
        let shared = Arc::new(Shared::new(Instant::now(), settings.queues.as_slice()));
        let cluster_state = cluster.as_ref().map(cluster::state_for);
        // The table takes one observer: the hub alone without a cluster.
        match &cluster_state {
            Some(state) => {
                let _ = shared.cluster.set(state.clone());
                engine.table().set_observer(Arc::new(Observers {
                    hub: shared.hub.clone(),
                    cluster: Some(state.clone()),
                }));
            }
            None => engine.table().set_observer(shared.hub.clone()),
        }
        // The table before the queues: no packet waits while it loads.
        let loaded = match &settings.state_file {
            Some(path) => {
                match settings.state_file_origin {
                    StateFileOrigin::Default => info!(
                        state_file = %path.display(),
                        "state file {} (the default when run as root: tracked connections \
                         survive a restart; daemon.state_file = \"\" turns it off)",
                        path.display()
                    ),
                    _ => info!(state_file = %path.display(), "state file {}", path.display()),
                }
                Some(state::load(
                    path,
                    &engine,
                    shared.now(),
                    settings.crash_pickup,
                ))
            }
            None => {
                info!(
                    "no state file (daemon.state_file): tracked connections do not survive a \
                     restart"
                );
                None
            }
        };
        // The peers' copies come while the rest starts.
        let cluster_wait = cluster
            .as_ref()
            .map(|c| Duration::from_millis(c.bulk_timeout_ms) + CLUSTER_READY_MARGIN);
        if let (Some(c), Some(state)) = (cluster.clone(), &cluster_state) {
            operations.push(cluster::start(
                c,
                state.clone(),
                engine.clone(),
                shared.clone(),
                stop.stop(),
            )?);
        }
        // Before the queues: an address that cannot be listened on stops the
        // start before anything changed.
        let reloads = Arc::new(metrics::Reloads::default());
        let bad_requests = Arc::new(std::sync::atomic::AtomicU64::new(0));
        operations.extend(start_metrics(
            &settings,
            &engine,
            &shared,
            &reloads,
            &bad_requests,
            &stop,
        )?);
        let queues = bind_queues(&settings)?;
        let rcvbuf = queues.first().map_or(0, |q| q.rcvbuf);
        let installed = install_hooks(&settings)?;
        let (notices, logger) = start_logger(&engine)?;
        let handoff = settings
            .handoff
            .map(|mark| handoff_mode(mark, &config, &settings, installed.as_ref()));
        let rejecter = Arc::new(open_rejecter(&settings, &engine.policy()));
        let rejects_unanswered = !rejecter.can_answer();
        let proxy_socket = settings
            .rewrites
            .then(|| Arc::new(open_proxy_socket(&settings)));
        if settings.rewrites {
            engine.set_cookie_keys(random_key()?);
        }
        let workers = start_workers(
            queues,
            &engine,
            &shared,
            &notices,
            handoff,
            &rejecter,
            proxy_socket.as_ref(),
            &signals,
            &stop,
        )?;
        let housekeeping =
            start_housekeeping(&engine, &shared, &settings, &installed, handoff, &stop)?;

        let (max_connections, half_open_max) =
            (config.engine.max_connections, config.engine.max_half_open);
        let rules = Arc::new(Rules {
            path: config.path.clone(),
            config: std::sync::Mutex::new(config),
            daemon,
            cluster,
            engine: engine.clone(),
            shared: shared.clone(),
            rejects_unanswered,
            output_hooked: hooks_output(&settings),
            rewrites: settings.rewrites,
            reloads,
        });
        operations.extend(start_control(
            &settings,
            &rules,
            &engine,
            &shared,
            max_connections,
            bad_requests,
            &stop,
        )?);
        if let (Some(path), Some(loaded)) = (&settings.state_file, loaded) {
            state::mark_running(path, &engine, shared.now(), loaded);
        }
        let policy = engine.policy();
        info!(
            version = env!("CARGO_PKG_VERSION"),
            rules_file = %rules.path.display(),
            rules = policy.rules.len(),
            default = %policy.default,
            queues = %settings.queues,
            workers = settings.queues.len(),
            queue_bypass = settings.queue_bypass,
            queue_overflow = %settings.queue_overflow,
            hooks_installed = installed.is_some(),
            table_max = max_connections,
            half_open_max = half_open_max,
            copy_range = settings.copy_range,
            queue_maxlen = settings.queue_maxlen,
            socket_rcvbuf = rcvbuf,
            cluster_node = cluster_state.as_ref().map(|c| c.node.as_str()),
            "conntrackd started"
        );

        Ok(Daemon {
            rules,
            settings,
            engine,
            shared,
            signals: Some(signals),
            stop,
            workers,
            housekeeping: Some(housekeeping),
            operations,
            notices: Some(notices),
            logger: Some(logger),
            installed,
            cluster: cluster_state.zip(cluster_wait),
        })
    }

    /// In a cluster: waits until the first bulk copy is done (the cluster
    /// thread gives up on silent peers after `bulk_timeout_ms`).
    fn wait_for_cluster(&self) {
        let Some((state, wait)) = &self.cluster else {
            return;
        };
        let until = Instant::now() + *wait;
        while !state.ready() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !state.ready() {
            warn!("cluster: still syncing; reporting ready all the same");
        }
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
        if let Err(e) = self.rules.reload() {
            error!("{e}");
        }
    }

    fn stop(mut self) -> ExitCode {
        let _ = sd_notify::notify(false, &[NotifyState::Stopping]);
        let mut ok = true;
        // 1. No new packets are queued to us (fail-closed: none are
        // forwarded either: the chain stays, and with no program bound and no
        // --queue-bypass the kernel drops what it queues)...
        if let Some(installed) = self.installed.take() {
            if !self.settings.queue_bypass {
                installed.keep();
                info!(
                    chain = self.settings.iptables_chain.as_str(),
                    "fail-closed: left iptables chain {} in place, so nothing is forwarded \
                     until conntrackd is back (`conntrackd uninstall-iptables` removes it)",
                    self.settings.iptables_chain
                );
            } else {
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
        }
        // 2. Every thread is told at once. The workers answer what is
        // queued, unbind and return; a client of the control socket or the
        // metrics endpoint is left at once, whatever it was sending.
        self.stop.trip();
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
        if let Some(handle) = self.housekeeping.take() {
            let _ = handle.join();
        }
        // 3. Nothing is delivered any more: the table is complete.
        if let Some(path) = &self.settings.state_file {
            let started = Instant::now();
            match state::save(path, &self.engine, self.shared.now(), true) {
                Ok((connections, bytes)) => info!(
                    state_file = %path.display(),
                    connections,
                    bytes,
                    ms = started.elapsed().as_secs_f64() * 1e3,
                    "saved the table"
                ),
                Err(e) => {
                    error!("{e:#}");
                    ok = false;
                }
            }
        }
        // 4. The operations (they may have been answering a client), and the
        // cluster thread (it sends the workers' last changes, briefly).
        for handle in self.operations.drain(..) {
            if handle.join().is_err() {
                error!("an operations thread panicked");
            }
        }
        log_stats("stopped", &total, &self.engine, None);
        self.notices.take();
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

/// How much longer than `bulk_timeout_ms` READY waits for the cluster
/// thread (which gives up on its peers by itself).
const CLUSTER_READY_MARGIN: Duration = Duration::from_secs(2);

/// The engine, its table laid out for this machine's cores with a random
/// hash seed (an attacker who cannot predict the seed cannot aim entries at
/// one bucket or shard).
fn new_engine(config: &Config, workers: usize) -> Engine {
    let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
    let seed = std::collections::hash_map::RandomState::new().hash_one(workers);
    Engine::with_layout(
        config.engine,
        config.policy.clone(),
        Layout::for_table(cores.max(workers), config.engine.max_connections, seed),
    )
}

/// Opens, binds and configures every queue.
fn bind_queues(settings: &Settings) -> anyhow::Result<Vec<BoundQueue>> {
    let mut queues = Vec::new();
    for &num in settings.queues.as_slice() {
        let q = nfqueue::open(&QueueConfig {
            num,
            copy_range: settings.copy_range,
            maxlen: settings.queue_maxlen,
            rcvbuf: settings.socket_rcvbuf,
            accept_on_overflow: settings.queue_overflow == Overflow::Accept,
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
    Ok(queues)
}

/// With `install_iptables`: conntrackd's own chain and the jumps to it.
fn install_hooks(settings: &Settings) -> anyhow::Result<Option<Installed>> {
    if !settings.install_iptables {
        return Ok(None);
    }
    let mut spec = iptables::Spec::new(
        &settings.iptables_chain,
        &settings.hooks,
        settings.queues.as_slice(),
        settings.queue_bypass,
    )?;
    spec.handoff_mark = settings.handoff;
    spec.synproxy_hooks = settings.handoff.is_some() && settings.rewrites;
    let target = spec.target();
    let installed = Installed::install(spec)?;
    info!(
        chain = settings.iptables_chain.as_str(),
        hooks = settings.hooks.join(",").as_str(),
        target = target.as_str(),
        families = ?installed.families(),
        "installed iptables chain"
    );
    Ok(Some(installed))
}

/// Whether conntrackd's own hook queues OUTPUT, where reject answers go.
fn hooks_output(settings: &Settings) -> bool {
    settings.install_iptables
        && settings
            .hooks
            .iter()
            .any(|h| h.trim().eq_ignore_ascii_case("OUTPUT"))
}

const OUTPUT_HOOKED: &str = "the rules reject and the OUTPUT hook is installed: the answers, \
     sent by this host, are queued too and dropped as packets of no connection (hook FORWARD \
     and INPUT only to answer)";

/// The raw socket that answers rejected packets, opened at start whatever the
/// policy (a reload may add reject rules). Without CAP_NET_RAW rejected
/// packets are still dropped, unanswered.
fn open_rejecter(settings: &Settings, policy: &crate::policy::Policy) -> reject::Rejecter {
    let rejects = policy.uses_reject();
    if settings.reject_rate == 0 {
        if rejects {
            info!("reject_rate = 0: rejected packets are dropped unanswered");
        }
        return reject::Rejecter::new(None, 0);
    }
    let socket = match crate::kernel::reject::RawSocket::open() {
        Ok(s) => {
            if let Err(e) = s.set_send_buffer(ANSWER_SEND_BUFFER) {
                warn!(
                    "the reject answers' send buffer stays at net.core.wmem_default ({e}): \
                     under a flood of spoofed local sources they may fail (rejects_failed)"
                );
            }
            if !s.has_ipv6() {
                info!("IPv6 is off: rejected IPv6 packets are dropped unanswered");
            }
            Some(s)
        }
        Err(e) => {
            let why = format!(
                "cannot open a raw socket for the answers to rejected packets ({e}; it \
                 needs CAP_NET_RAW): rejected packets are dropped unanswered, counted as \
                 rejects_failed"
            );
            if rejects {
                warn!("{why}");
            } else {
                info!("{why}");
            }
            None
        }
    };
    if rejects && hooks_output(settings) {
        warn!("{OUTPUT_HOOKED}");
    }
    reject::Rejecter::new(socket, settings.reject_rate)
}

/// The answer sockets' send buffer (the SYN proxy's, the rejects'): room for
/// the answers that wait for unresolved neighbours under a flood of spoofed
/// local sources (see `RawSocket::set_send_buffer`). The kernel doubles it
/// for its bookkeeping: about 80,000 small answers per socket.
const ANSWER_SEND_BUFFER: usize = 32 << 20;

/// The SYN proxy's raw socket (as the reject answers'; none without
/// CAP_NET_RAW: then the proxy cannot answer, and says so).
fn open_proxy_socket(settings: &Settings) -> Option<crate::kernel::reject::RawSocket> {
    match crate::kernel::reject::RawSocket::open() {
        Ok(s) => {
            if let Err(e) = s.set_send_buffer(ANSWER_SEND_BUFFER) {
                warn!(
                    "the SYN proxy's send buffer stays at net.core.wmem_default ({e}): under a \
                     flood of spoofed local sources its answers may fail \
                     (synproxy_send_failures)"
                );
            }
            info!(
                copy_range = settings.copy_range,
                "SYN proxy on: the queues copy whole packets (its connections' packets are \
                 rewritten)"
            );
            if hooks_output(settings) {
                warn!(
                    "the SYN proxy's packets leave through OUTPUT, which conntrackd's own \
                     hook queues (hooks include OUTPUT): they would be judged as the \
                     client's and the server's; hook FORWARD only"
                );
            }
            Some(s)
        }
        Err(e) => {
            error!(
                "cannot open a raw socket for the SYN proxy ({e}; it needs CAP_NET_RAW): \
                 connections behind it cannot be opened (their SYNs are dropped, counted \
                 as synproxy_send_failures)"
            );
            None
        }
    }
}

/// 32 bytes from the kernel's random source (getrandom(2)): the SYN
/// proxy's cookie keys.
pub(crate) fn random_key() -> anyhow::Result<[u8; 32]> {
    let mut key = [0u8; 32];
    let mut filled = 0;
    while filled < key.len() {
        // SAFETY: the pointer and length describe the unfilled rest of `key`.
        let n = unsafe {
            libc::getrandom(
                key[filled..].as_mut_ptr() as *mut libc::c_void,
                key.len() - filled,
                0,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(anyhow::Error::new(e).context("getrandom for the SYN cookie keys"));
        }
        filled += n as usize;
    }
    Ok(key)
}

/// The logging thread, and the channel the workers feed it through.
fn start_logger(
    engine: &Arc<Engine>,
) -> anyhow::Result<(crossbeam_channel::Sender<Notice>, JoinHandle<()>)> {
    let (tx, rx) = crossbeam_channel::bounded(logging::CHANNEL_CAPACITY);
    let logger = logging::spawn(rx, engine.clone()).context("starting the log thread")?;
    Ok((tx, logger))
}

/// Hand-off mode's parameters, with warnings for settings that cannot work.
fn handoff_mode(
    mark: u32,
    config: &Config,
    settings: &Settings,
    installed: Option<&Installed>,
) -> Handoff {
    // The kernel translates a proxied connection's timestamps only with the
    // SYN proxy hooks, which conntrackd registers only with its own rules.
    let timestamps = installed.is_some_and(Installed::synproxy_hooks);
    let handoff = Handoff {
        mark,
        timeout: handoff_timeout(config),
        proxied: settings.rewrites.then_some(timestamps),
    };
    if settings.rewrites {
        info!(
            timestamps,
            "hand-off mode with the SYN proxy: proxied connections are handed to the kernel \
             with their translation (sequence adjustment{})",
            if timestamps {
                ", and timestamps through the kernel's SYN proxy hooks"
            } else {
                "; those that use timestamps stay here: the kernel's SYN proxy hooks are \
                 registered only with --install-iptables"
            }
        );
    }
    if installed.is_none() {
        warn!(
            mark = format!("{mark:#x}").as_str(),
            "hand-off mode without --install-iptables: the rules that save the mark to \
             the connmark and accept marked connections must be in place (see README), \
             or the engine stops checking windows of established connections for nothing"
        );
    }
    let refresh = settings.handoff_refresh.as_secs();
    // Room for the housekeeping tick (1 s), the dump itself and whole-second expiry.
    if refresh == 0 || refresh + 2 > u64::from(handoff.timeout) {
        warn!(
            handoff_refresh = refresh,
            timeout = handoff.timeout,
            "hand-off mode: the kernel's conntrack is not read often enough \
             (daemon.handoff_refresh) to keep handed-off connections: one that lives \
             longer than {} s after its hand-off is forgotten and its FIN refused",
            handoff.timeout
        );
    }
    info!(
        mark = format!("{mark:#x}").as_str(),
        timeout = handoff.timeout,
        handoff_refresh = refresh,
        "hand-off mode: established TCP connections are handed to the kernel"
    );
    handoff
}

/// Hand-off mode: how long a handed-off connection lives in the engine without
/// queued packets. Its traffic flows in the kernel, which refreshes only its
/// own conntrack entry: at least the kernel's established timeout, so that the
/// engine does not forget a connection (and then refuse its FIN) the kernel
/// still passes.
fn handoff_timeout(config: &Config) -> u32 {
    let kernel =
        std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_established")
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .unwrap_or(432_000);
    kernel.max(config.engine.timeouts.established)
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

/// One worker thread per queue.
#[allow(clippy::too_many_arguments)] // each is a part every worker gets
fn start_workers(
    queues: Vec<BoundQueue>,
    engine: &Arc<Engine>,
    shared: &Arc<Shared>,
    notices: &crossbeam_channel::Sender<Notice>,
    handoff: Option<Handoff>,
    rejecter: &Arc<reject::Rejecter>,
    proxy_socket: Option<&Arc<Option<crate::kernel::reject::RawSocket>>>,
    signals: &Signals,
    stop: &StopSwitch,
) -> anyhow::Result<Vec<JoinHandle<WorkerStats>>> {
    let log_drops = tracing::enabled!(target: logging::DROP_TARGET, tracing::Level::DEBUG);
    let mut workers = Vec::new();
    for (index, queue) in queues.into_iter().enumerate() {
        let num = queue.num;
        let worker = Worker {
            queue,
            index,
            engine: engine.clone(),
            shared: shared.clone(),
            stop: stop.stop(),
            notices: notices.clone(),
            log_drops,
            handoff,
            replies: reject::Replies::new(rejecter.clone()),
            proxying: proxy_socket.map(|s| {
                let handover = handoff.and_then(|h| h.proxied).and_then(|_| {
                    crate::kernel::handover::HandOver::open()
                        .inspect_err(|e| {
                            warn!(
                                "queue {num}: no ctnetlink socket ({e}): proxied connections \
                                 stay here"
                            )
                        })
                        .ok()
                });
                crate::daemon::packet::proxy::Proxying::new(s.clone(), handover)
            }),
            dropped: std::cell::RefCell::new(Vec::with_capacity(
                crate::kernel::nfqueue::codec::BATCH,
            )),
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
    Ok(workers)
}

/// The control socket's thread, when there is a socket.
fn start_control(
    settings: &Settings,
    rules: &Arc<Rules>,
    engine: &Arc<Engine>,
    shared: &Arc<Shared>,
    max_connections: usize,
    bad_requests: Arc<std::sync::atomic::AtomicU64>,
    stop: &StopSwitch,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let Some(path) = settings.control_socket.clone() else {
        return Ok(Vec::new());
    };
    let listener = match control::bind(&path, settings.control_socket_group.as_deref()) {
        Ok(l) => l,
        Err(e) => {
            warn!(
                control_socket = %path.display(),
                "cannot open the control socket ({e}): conntrackd runs without it"
            );
            return Ok(Vec::new());
        }
    };
    let rules = rules.clone();
    let (joins, joined) = crossbeam_channel::bounded(events::MAX_SUBSCRIBERS);
    let c = control::Control {
        engine: engine.clone(),
        shared: shared.clone(),
        reload: Box::new(move || rules.reload()),
        started: Instant::now(),
        max_connections,
        bad_requests,
        joins,
        last_stats: std::sync::Mutex::new(None),
    };
    info!(control_socket = %path.display(), "control socket open");
    let flag = stop.stop();
    let control = std::thread::Builder::new()
        .name("ctd-control".into())
        .spawn(move || control::serve(listener, path, c, flag))
        .context("starting the control thread")?;
    let (hub, flag) = (shared.hub.clone(), stop.stop());
    let events = std::thread::Builder::new()
        .name("ctd-events".into())
        .spawn(move || events::run(hub, joined, flag))
        .context("starting the event thread")?;
    Ok(vec![control, events])
}

/// The metrics endpoint's thread, when `metrics_listen` names an address.
fn start_metrics(
    settings: &Settings,
    engine: &Arc<Engine>,
    shared: &Arc<Shared>,
    reloads: &Arc<metrics::Reloads>,
    bad_requests: &Arc<std::sync::atomic::AtomicU64>,
    stop: &StopSwitch,
) -> anyhow::Result<Option<JoinHandle<()>>> {
    let Some(addr) = settings.metrics_listen else {
        return Ok(None);
    };
    let inputs = metrics::Inputs {
        engine: engine.clone(),
        shared: shared.clone(),
        // Worker i serves the i-th queue (see start_workers).
        queues: settings.queues.as_slice().to_vec(),
        reloads: reloads.clone(),
        bad_requests: bad_requests.clone(),
    };
    metrics::start(addr, inputs, stop.stop()).map(Some)
}

/// The housekeeping thread, and the channel that stops it.
fn start_housekeeping(
    engine: &Arc<Engine>,
    shared: &Arc<Shared>,
    settings: &Settings,
    installed: &Option<Installed>,
    handoff: Option<Handoff>,
    stop: &StopSwitch,
) -> anyhow::Result<JoinHandle<()>> {
    let hk = Housekeeping {
        engine: engine.clone(),
        shared: shared.clone(),
        stats_interval: settings.stats_interval,
        // With its own hooks installed, conntrackd knows packets are sent.
        idle_warning: if installed.is_none() {
            settings.idle_warning
        } else {
            Duration::ZERO
        },
        queues: settings.queues.clone(),
        handoff: handoff.map(|h| KeepHandedOff::new(h.mark, h.timeout, settings.handoff_refresh)),
        snapshots: settings
            .state_file
            .clone()
            .filter(|_| !settings.snapshot_interval.is_zero())
            .map(|path| (path, settings.snapshot_interval)),
    };
    let stop = stop.stop();
    std::thread::Builder::new()
        .name("ctd-housekeeping".into())
        .spawn(move || hk.run(stop))
        .context("starting the housekeeping thread")
}
