//! The cluster: two (or more) gateways tell each other, over NATS, of the
//! connections they forward, so that a connection survives a failover. One
//! thread, with a current-thread tokio runtime of its own for the NATS
//! client; the workers never wait for it.
//!
//! - Out: the table's observer queues each change of a local connection in
//!   a bounded outbox (`shared::cluster`; full: counted, never waited for).
//!   This thread drains it every millisecond, keeps each connection's last
//!   change, and publishes batches on `{subject}.changes.{node}`. Every
//!   `refresh_secs`, every local entry is published again, a slice of the
//!   table at a time: lost records are repaired, and the peers' copies do
//!   not expire while the connection lives.
//! - In: `{subject}.changes.*`, `{subject}.hello.*` and `{subject}.bulk`.
//!   Messages that do not add up or come from a node not in `peers` are
//!   refused and counted ([`inbox`]); records are applied as peer entries
//!   (`Engine::apply_peer`).
//! - Hello: every second, this node's policy digest, table size and
//!   readiness; a peer whose digest differs is warned of once.
//! - Bulk copy: at start and after every reconnect, this node asks its peers
//!   for their tables (a request on `{subject}.bulk` with a reply inbox);
//!   each answers with chunks of its local entries, the last one flagged.
//!   Until the first copy is done (every peer's last chunk, or
//!   `bulk_timeout_ms`), the node is not ready.

pub mod bulk;
pub mod inbox;
pub mod outbox;
pub mod settings;

pub use settings::ClusterSettings;

use super::shared::cluster::{ClusterState, Link, Outgoing};
use super::shared::{wall_clock_ms, Shared, Stop};
use crate::cluster::{self as message, Hello, Kind};
use crate::Engine;
use anyhow::Context as _;
use async_nats::{Client, ConnectOptions, Event, Subject};
use bulk::BulkWait;
use futures_util::StreamExt;
use inbox::Incoming;
use outbox::Packer;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;
use tracing::{debug, error, info, warn};

/// With no changes, the pause between drains doubles from `batch_ms` up to
/// this (or `batch_ms`, if longer): an idle node does not wake a thousand
/// times a second, and the first change after a quiet spell waits that
/// much at most. While changes come, the outbox is drained every
/// `batch_ms` (`[cluster]`), each drain at least one message
/// (benches/CLUSTER.md measured the choice).
const IDLE_TICK: Duration = Duration::from_millis(4);
/// How often a hello is sent.
const HELLO_EVERY_MS: u64 = 1000;
/// A publish that waits longer (the client's buffer is full) is given up.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(1);
/// Changes taken from the outbox per round, at most.
const DRAIN: usize = 16_384;
/// What a drain of the outbox found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Drained {
    None,
    Some,
    /// `DRAIN` changes, so probably more.
    Full,
}

/// The pause before the next drain, after one that found `drained`
/// following a pause of `pause`: none after a full drain (a backlog goes
/// now, not a tick later), `busy` while changes come, and doubling from
/// `busy` up to `idle` while none do.
fn next_pause(drained: Drained, pause: Duration, busy: Duration, idle: Duration) -> Duration {
    match drained {
        Drained::Full => Duration::ZERO,
        Drained::Some => busy,
        Drained::None => (pause * 2).clamp(busy, idle),
    }
}

/// A bulk request nobody was subscribed to (the peers reconnecting at the
/// same moment) is asked again this much later, until the copy times out.
const REQUEST_AGAIN_MS: u64 = 200;

/// The cluster's shared state, for the table's observer, before the thread
/// starts.
pub fn state_for(s: &ClusterSettings) -> Arc<ClusterState> {
    Arc::new(ClusterState::new(&s.node, &s.servers, &s.subject, &s.peers))
}

/// Starts the cluster thread. The password file is read here: a start
/// without it fails before anything else changed.
pub fn start(
    settings: ClusterSettings,
    state: Arc<ClusterState>,
    engine: Arc<Engine>,
    shared: Arc<Shared>,
    stop: Stop,
) -> anyhow::Result<JoinHandle<()>> {
    let password = match (&settings.password, &settings.password_file) {
        (Some(p), _) => Some(p.0.clone()),
        (None, Some(path)) => Some(read_password(path)?),
        (None, None) => None,
    };
    // Files the client reads later: a start without them fails now.
    for path in [
        &settings.creds_file,
        &settings.tls_ca_file,
        &settings.tls_cert_file,
        &settings.tls_key_file,
    ]
    .into_iter()
    .flatten()
    {
        std::fs::File::open(path).with_context(|| format!("[cluster] {}", path.display()))?;
    }
    engine.table().set_progress_every(settings.progress_ms);
    info!(
        node = settings.node.as_str(),
        peers = settings.peers.join(",").as_str(),
        servers = settings.servers.join(",").as_str(),
        "cluster: starting; not ready until the peers' tables are copied (at most {} ms)",
        settings.bulk_timeout_ms
    );
    std::thread::Builder::new()
        .name("ctd-cluster".into())
        .spawn(move || {
            yield_to_the_packet_path();
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    error!("cluster: cannot start its runtime: {e}");
                    state.set_ready();
                    return;
                }
            };
            let node = Node::new(settings, password, state, engine, shared, stop);
            runtime.block_on(node.run());
        })
        .context("starting the cluster thread")
}

/// The cluster thread's nice value: above the workers' (0).
const NICE: libc::c_int = 10;

/// On a gateway with few cores the cluster's work waits for the workers',
/// not the reverse: a record a few milliseconds late costs nothing, a
/// packet a few milliseconds late is latency on every connection. Linux
/// keeps a nice value per thread.
fn yield_to_the_packet_path() {
    // SAFETY: gettid and setpriority take and return integers only.
    let failed = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, NICE) != 0
    };
    if failed {
        debug!(
            "cluster: cannot lower the thread's priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// A digest of what judges packets: the policy (its rules and default, not
/// its generation, which every reload bumps) and the engine's settings, as
/// this conntrackd renders them.
pub fn policy_digest(engine: &Engine) -> [u8; 32] {
    let policy = engine.policy();
    message::digest(&format!(
        "{:?}{:?}{:?}",
        policy.default,
        policy.rules,
        engine.settings()
    ))
}

/// The first line of a password file; a warning if anyone may read it.
fn read_password(path: &std::path::Path) -> anyhow::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cluster.password_file {}", path.display()))?;
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o004 != 0 {
        warn!(
            password_file = %path.display(),
            "cluster.password_file {} may be read by anyone (mode {:o}): chmod 600 it",
            path.display(),
            mode & 0o777
        );
    }
    let password = text.lines().next().unwrap_or("").to_string();
    if password.is_empty() {
        anyhow::bail!("cluster.password_file {} is empty", path.display());
    }
    Ok(password)
}

/// The cluster thread's own state.
struct Node {
    settings: ClusterSettings,
    password: Option<String>,
    state: Arc<ClusterState>,
    engine: Arc<Engine>,
    shared: Arc<Shared>,
    stop: Stop,
    changes_subject: String,
    hello_subject: String,
    bulk_subject: String,
    /// `{subject}.changes.` and `{subject}.hello.`: what a received
    /// subject's node follows.
    changes_prefix: String,
    hello_prefix: String,
    changes: Packer,
    chunks: Packer,
    hellos: u64,
    requests: u64,
    /// The bulk copy this node waits for, and whether it has been asked for.
    wait: Option<BulkWait>,
    requested: bool,
    /// When to ask again (the last request reached no one).
    request_again_ms: Option<u64>,
    /// The refresh under way: the next slice and the slices of this walk.
    refresh: Option<(u64, u64)>,
    next_refresh_ms: u64,
    next_hello_ms: u64,
    /// This node's digest, and the policy generation it is of.
    digest: Option<(u16, [u8; 32])>,
    batch: Vec<Outgoing>,
}

impl Node {
    fn new(
        settings: ClusterSettings,
        password: Option<String>,
        state: Arc<ClusterState>,
        engine: Arc<Engine>,
        shared: Arc<Shared>,
        stop: Stop,
    ) -> Node {
        let (prefix, node) = (&settings.subject, &settings.node);
        let now_ms = shared.now().as_nanos() / 1_000_000;
        Node {
            changes_subject: format!("{prefix}.changes.{node}"),
            hello_subject: format!("{prefix}.hello.{node}"),
            bulk_subject: format!("{prefix}.bulk"),
            changes_prefix: format!("{prefix}.changes."),
            hello_prefix: format!("{prefix}.hello."),
            changes: Packer::new(node, Kind::Changes),
            chunks: Packer::new(node, Kind::BulkChunk),
            hellos: 0,
            requests: 0,
            wait: Some(BulkWait::new(
                &settings.peers,
                now_ms,
                settings.bulk_timeout_ms,
                wall_clock_ms(),
            )),
            requested: false,
            request_again_ms: None,
            refresh: None,
            next_refresh_ms: now_ms + settings.refresh_secs * 1000,
            next_hello_ms: now_ms,
            digest: None,
            batch: Vec::with_capacity(DRAIN),
            settings,
            password,
            state,
            engine,
            shared,
            stop,
        }
    }

    fn now_ms(&self) -> u64 {
        self.shared.now().as_nanos() / 1_000_000
    }

    async fn options(
        &self,
        events: tokio::sync::mpsc::UnboundedSender<Event>,
    ) -> anyhow::Result<ConnectOptions> {
        let s = &self.settings;
        let mut o = ConnectOptions::new()
            .name(format!("conntrackd {}", s.node))
            // Our own messages are not for us.
            .no_echo()
            // `servers` in the operator's order (the gateway's own server
            // first): the client would shuffle them.
            .retain_servers_order()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(|attempts| {
                Duration::from_millis((attempts as u64 * 100).min(1000))
            })
            .connection_timeout(Duration::from_secs(2))
            .ping_interval(Duration::from_secs(5))
            .subscription_capacity(65_536)
            .event_callback(move |event| {
                let events = events.clone();
                async move {
                    let _ = events.send(event);
                }
            });
        if let (Some(user), Some(password)) = (&s.user, &self.password) {
            o = o.user_and_password(user.clone(), password.clone());
        }
        if let Some(creds) = &s.creds_file {
            o = o
                .credentials_file(creds)
                .await
                .with_context(|| format!("cluster.creds_file {}", creds.display()))?;
        }
        if let Some(ca) = &s.tls_ca_file {
            o = o.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&s.tls_cert_file, &s.tls_key_file) {
            o = o.add_client_certificate(cert.clone(), key.clone());
        }
        if s.tls_required || s.servers.iter().any(|u| u.starts_with("tls://")) {
            o = o.require_tls(true);
        }
        Ok(o)
    }

    async fn run(mut self) {
        let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
        let connected = match self.options(events_tx).await {
            Ok(o) => o
                .connect(self.settings.servers.as_slice())
                .await
                .map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        let client = match connected {
            Ok(c) => c,
            Err(e) => {
                // The node still works alone: it must not stay unready.
                error!("cluster: {e:#}; this node runs alone");
                self.state.set_link(Link::Disconnected);
                self.state.set_ready();
                return;
            }
        };
        // Shown by `conntrackd cluster` before the first hello.
        self.digest();
        let prefix = self.settings.subject.clone();
        let inbox = client.new_inbox();
        let subscribed = async {
            Ok::<_, async_nats::SubscribeError>((
                client.subscribe(format!("{prefix}.changes.*")).await?,
                client.subscribe(format!("{prefix}.hello.*")).await?,
                client.subscribe(self.bulk_subject.clone()).await?,
                client.subscribe(inbox.clone()).await?,
            ))
        }
        .await;
        let (mut changes, mut hellos, mut requests, mut copies) = match subscribed {
            Ok(s) => s,
            Err(e) => {
                error!("cluster: cannot subscribe ({e}); this node runs alone");
                self.state.set_ready();
                return;
            }
        };
        // Set again only when it fires: messages arriving do not put it off.
        let busy_tick = Duration::from_millis(u64::from(self.settings.batch_ms.max(1)));
        let idle_tick = IDLE_TICK.max(busy_tick);
        let tick = tokio::time::sleep(busy_tick);
        tokio::pin!(tick);
        let mut pause = busy_tick;
        loop {
            tokio::select! {
                () = &mut tick => {
                    if self.stop.is_set() {
                        break;
                    }
                    let drained = self.round(&client).await;
                    pause = next_pause(drained, pause, busy_tick, idle_tick);
                    tick.as_mut().reset(tokio::time::Instant::now() + pause);
                }
                Some(m) = changes.next() => self.take(&client, m).await,
                Some(m) = hellos.next() => self.take(&client, m).await,
                Some(m) = requests.next() => self.take(&client, m).await,
                Some(m) = copies.next() => self.take(&client, m).await,
                Some(event) = events.recv() => self.event(&client, &inbox, event).await,
            }
            if self.request_again_ms.is_some_and(|at| self.now_ms() >= at) {
                self.request_again_ms = None;
                if self.wait.is_some() {
                    self.request(&client, &inbox).await;
                }
            }
        }
        // What the workers queued last, then the client's buffer, briefly.
        let last = async {
            self.send_changes(&client).await;
            let _ = client.flush().await;
        };
        let _ = tokio::time::timeout(Duration::from_millis(500), last).await;
        self.state.set_link(Link::Disconnected);
    }

    /// One tick: the outbox, the hello, a slice of the refresh, the bulk
    /// copy's end. How much the outbox held.
    async fn round(&mut self, client: &Client) -> Drained {
        let drained = self.send_changes(client).await;
        let now_ms = self.now_ms();
        if now_ms >= self.next_hello_ms {
            self.next_hello_ms = now_ms + HELLO_EVERY_MS;
            self.hello(client).await;
        }
        self.refresh_step(client, now_ms).await;
        if let Some(wait) = self.wait.as_ref().filter(|w| w.done(now_ms)) {
            let report = wait.report(now_ms);
            let first = !self.state.ready();
            if !self.requested {
                warn!(
                    "cluster: no bulk copy within {} ms: not connected to any NATS server{}",
                    self.settings.bulk_timeout_ms,
                    if first {
                        "; ready without the peers' tables"
                    } else {
                        ""
                    }
                );
            } else if report.missing.is_empty() {
                info!(
                    records = report.records,
                    ms = report.took_ms,
                    "cluster: bulk copy done: {} records from {}",
                    report.records,
                    report.answered.join(", ")
                );
            } else {
                warn!(
                    records = report.records,
                    ms = report.took_ms,
                    "cluster: bulk copy timed out after {} ms: {} records from {}; no answer \
                     from {}",
                    report.took_ms,
                    report.records,
                    if report.answered.is_empty() {
                        "no peer".to_string()
                    } else {
                        report.answered.join(", ")
                    },
                    report.missing.join(", ")
                );
            }
            *self
                .state
                .last_bulk
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(report);
            self.wait = None;
            self.state.syncing.store(false, Ordering::Relaxed);
            self.state.set_ready();
        }
        drained
    }

    /// Publishes what the outbox holds (up to `DRAIN` changes), a
    /// connection's last change each.
    async fn send_changes(&mut self, client: &Client) -> Drained {
        // Not connected: the outbox keeps what it can hold for the
        // reconnect and counts what does not fit; the refreshes repair that
        // (and the peers' bulk copies, when they reconnected too).
        if self.state.link() != Link::Connected {
            return Drained::None;
        }
        let outbox = self.state.outbox();
        while self.batch.len() < DRAIN {
            match outbox.try_recv() {
                Ok(item) => self.batch.push(item),
                Err(_) => break,
            }
        }
        let drained = match self.batch.len() {
            0 => return Drained::None,
            DRAIN => Drained::Full,
            _ => Drained::Some,
        };
        let mut batch = std::mem::take(&mut self.batch);
        outbox::coalesce(&mut batch);
        let messages = self.changes.pack(
            &batch,
            Some(&self.engine),
            self.shared.now(),
            wall_clock_ms(),
            false,
        );
        let mut unsent = batch.len() as u64;
        for (bytes, records) in messages {
            // NATS does not take them now: the rest would only wait too.
            let subject = self.changes_subject.clone();
            if !self.publish(client, subject, bytes, records).await {
                self.state.dropped.fetch_add(unsent, Ordering::Relaxed);
                break;
            }
            unsent -= u64::from(records);
        }
        batch.clear();
        self.batch = batch;
        drained
    }

    /// Whether NATS took the message (counted either way).
    async fn publish(
        &self,
        client: &Client,
        subject: String,
        bytes: Vec<u8>,
        records: u32,
    ) -> bool {
        let size = bytes.len() as u64;
        match tokio::time::timeout(PUBLISH_TIMEOUT, client.publish(subject, bytes.into())).await {
            Ok(Ok(())) => {
                self.state.messages_sent.fetch_add(1, Ordering::Relaxed);
                self.state.bytes_sent.fetch_add(size, Ordering::Relaxed);
                self.state
                    .records_sent
                    .fetch_add(u64::from(records), Ordering::Relaxed);
                true
            }
            Ok(Err(e)) => {
                debug!("cluster: publish: {e}");
                self.state.publish_errors.fetch_add(1, Ordering::Relaxed);
                false
            }
            Err(_) => {
                self.state.publish_errors.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// This node's digest (see [`policy_digest`]), made again only when a
    /// reload changed the policy.
    fn digest(&mut self) -> [u8; 32] {
        let generation = self.engine.policy().generation;
        match self.digest {
            Some((made_for, d)) if made_for == generation => d,
            _ => {
                let d = policy_digest(&self.engine);
                self.digest = Some((generation, d));
                *self.state.digest.lock().unwrap_or_else(|e| e.into_inner()) = d;
                d
            }
        }
    }

    async fn hello(&mut self, client: &Client) {
        if self.state.link() != Link::Connected {
            return;
        }
        self.hellos += 1;
        let hello = Hello {
            digest: self.digest(),
            connections: self.engine.table().len() as u64,
            ready: self.state.ready(),
        };
        let bytes = message::hello(&self.settings.node, self.hellos, wall_clock_ms(), &hello);
        self.publish(client, self.hello_subject.clone(), bytes, 0)
            .await;
    }

    /// Publishes the next slice of the refresh under way, or starts one.
    async fn refresh_step(&mut self, client: &Client, now_ms: u64) {
        if self.settings.refresh_secs == 0 || self.state.link() != Link::Connected {
            return;
        }
        let (slice, slices) = match self.refresh {
            Some(r) => r,
            None if now_ms >= self.next_refresh_ms => {
                self.next_refresh_ms = now_ms + self.settings.refresh_secs * 1000;
                (0, outbox::slices_for(self.engine.table().len()))
            }
            None => return,
        };
        let now = self.shared.now();
        let mut items = Vec::new();
        outbox::local_slice(&self.engine, slice, slices, false, now, &mut items);
        self.refresh = (slice + 1 < slices).then_some((slice + 1, slices));
        let messages = self
            .changes
            .pack(&items, Some(&self.engine), now, wall_clock_ms(), false);
        for (bytes, records) in messages {
            let subject = self.changes_subject.clone();
            if !self.publish(client, subject, bytes, records).await {
                // NATS does not take them now: the next refresh repairs this one.
                self.refresh = None;
                return;
            }
        }
    }

    /// Takes one received message.
    async fn take(&mut self, client: &Client, m: async_nats::Message) {
        // The server's word, not a peer's: 503 "no responders" to a bulk
        // request nobody was subscribed to yet.
        if let Some(status) = m.status {
            debug!("cluster: NATS status {status} on {}", m.subject);
            if status == async_nats::StatusCode::NO_RESPONDERS && self.wait.is_some() {
                self.request_again_ms = Some(self.now_ms() + REQUEST_AGAIN_MS);
            }
            return;
        }
        let now = self.shared.now();
        let reply = m.reply;
        // The node a changes or hello subject names (its last token).
        let subject_node = [&self.changes_prefix, &self.hello_prefix]
            .into_iter()
            .find_map(|p| m.subject.as_str().strip_prefix(p.as_str()));
        match inbox::read(&self.state, &m.payload, subject_node, now, wall_clock_ms()) {
            None => {}
            Some(Incoming::Records {
                peer,
                bulk,
                last,
                records,
            }) => {
                let count = records.len();
                inbox::apply(&self.engine, &self.state, &peer, records, now);
                if let (true, Some(wait)) = (bulk, &mut self.wait) {
                    wait.chunk(&peer, count, last);
                }
            }
            Some(Incoming::Hello { peer, hello }) => {
                let ours = self.digest();
                inbox::hello(&self.state, &peer, &hello, &ours);
            }
            Some(Incoming::BulkRequest { peer }) => match reply {
                Some(reply) => self.answer(client, &peer, reply).await,
                None => debug!("cluster: a bulk request from {peer} without a reply subject"),
            },
        }
    }

    /// Sends `peer` a copy of every local entry, a slice at a time.
    async fn answer(&mut self, client: &Client, peer: &str, reply: Subject) {
        let slices = outbox::slices_for(self.engine.table().len());
        let mut records = 0u64;
        let mut items = Vec::new();
        for slice in 0..slices {
            let now = self.shared.now();
            items.clear();
            outbox::local_slice(&self.engine, slice, slices, true, now, &mut items);
            let last = slice + 1 == slices;
            let chunks = self
                .chunks
                .pack(&items, Some(&self.engine), now, wall_clock_ms(), last);
            for (bytes, n) in chunks {
                if self.stop.is_set() || !self.publish(client, reply.to_string(), bytes, n).await {
                    // The asker gives up at its timeout, and asks again after
                    // its next reconnect.
                    warn!(
                        peer,
                        "cluster: the copy for {peer} was cut short after {records} records"
                    );
                    return;
                }
                records += u64::from(n);
            }
            // The changes keep flowing between slices.
            self.send_changes(client).await;
        }
        self.state.bulk_answered.fetch_add(1, Ordering::Relaxed);
        info!(
            peer,
            records, "cluster: sent {peer} a copy of this node's table: {records} records"
        );
    }

    /// Asks the peers for their tables, answers to `inbox`.
    async fn request(&mut self, client: &Client, inbox: &str) {
        self.requests += 1;
        let request = message::bulk_request(&self.settings.node, self.requests, wall_clock_ms());
        let sent = tokio::time::timeout(
            PUBLISH_TIMEOUT,
            client.publish_with_reply(self.bulk_subject.clone(), inbox.to_string(), request.into()),
        )
        .await;
        self.requested |= matches!(sent, Ok(Ok(())));
    }

    /// The connection came or went: after every (re)connect, a bulk copy.
    async fn event(&mut self, client: &Client, inbox: &str, event: Event) {
        match event {
            Event::Connected => {
                info!("cluster: connected to NATS");
                self.state.set_link(Link::Connected);
                let now_ms = self.now_ms();
                if self.wait.is_none() {
                    self.requested = false;
                    self.wait = Some(BulkWait::new(
                        &self.settings.peers,
                        now_ms,
                        self.settings.bulk_timeout_ms,
                        wall_clock_ms(),
                    ));
                }
                self.state.syncing.store(true, Ordering::Relaxed);
                // The subscriptions are in place at the server before anyone answers.
                let _ = tokio::time::timeout(PUBLISH_TIMEOUT, client.flush()).await;
                self.request(client, inbox).await;
                // A hello now: the peers learn at once that this node is back.
                self.next_hello_ms = now_ms;
            }
            Event::Disconnected => {
                warn!("cluster: disconnected from NATS; reconnecting");
                self.state.set_link(Link::Disconnected);
            }
            other => debug!("cluster: NATS: {other}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Config;
    use std::path::Path;

    fn engine(rules: &str) -> Engine {
        let c = Config::parse(rules, Path::new("r.toml")).unwrap();
        Engine::new(c.engine, c.policy)
    }

    const WEB: &str = "[policy]\ndefault = \"drop\"\n[[rule]]\nname = \"web\"\n\
                       action = \"accept\"\nproto = \"tcp\"\ndst_ports = [443]\n";

    #[test]
    fn a_backlog_goes_at_once_changes_every_batch_and_a_quiet_node_slows_down() {
        let ms = Duration::from_millis;
        let (busy, idle) = (ms(5), IDLE_TICK.max(ms(5)));
        assert_eq!(next_pause(Drained::Full, busy, busy, idle), Duration::ZERO);
        assert_eq!(next_pause(Drained::Some, Duration::ZERO, busy, idle), busy);
        assert_eq!(next_pause(Drained::Some, idle, busy, idle), busy);
        // Quiet: from the batch interval (never less, even after a backlog)
        // up to the idle tick.
        assert_eq!(next_pause(Drained::None, Duration::ZERO, busy, idle), busy);
        let (busy, idle) = (ms(1), IDLE_TICK);
        let mut pause = busy;
        let mut seen = Vec::new();
        for _ in 0..4 {
            pause = next_pause(Drained::None, pause, busy, idle);
            seen.push(pause);
        }
        assert_eq!(seen, [ms(2), ms(4), ms(4), ms(4)]);
    }

    #[test]
    fn the_digest_follows_the_rules_and_settings_not_the_reloads() {
        let a = engine(WEB);
        let d = policy_digest(&a);
        assert_eq!(d, policy_digest(&engine(WEB)), "two nodes alike");
        // A reload of the same rules bumps the generation only.
        a.set_policy(engine(WEB).policy().as_ref().clone());
        assert_ne!(a.policy().generation, engine(WEB).policy().generation);
        assert_eq!(policy_digest(&a), d);
        let other = WEB.replace("443", "8443");
        a.set_policy(engine(&other).policy().as_ref().clone());
        assert_ne!(policy_digest(&a), d, "another port");
        let settings = format!("{WEB}[engine]\nloose_pickup = true\n");
        assert_ne!(
            policy_digest(&engine(&settings)),
            d,
            "other engine settings"
        );
    }

    #[test]
    fn a_password_file_gives_its_first_line() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("password");
        std::fs::write(&file, "s3cret\nignored\n").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_password(&file).unwrap(), "s3cret");
        std::fs::write(&file, "\n").unwrap();
        let e = read_password(&file).unwrap_err().to_string();
        assert!(e.contains("is empty"), "{e}");
        let e = read_password(&dir.path().join("none")).unwrap_err();
        assert!(format!("{e:#}").contains("cluster.password_file"), "{e:#}");
    }
}
