//! What the cluster thread shares with the rest of the daemon: the outbox
//! the table's observer fills (on the packet path: one `try_send`, never a
//! wait), and the counters and peer table that `conntrackd status`,
//! `cluster` and the metrics read. The thread itself is the `cluster` room's.

use super::hub::Hub;
use crate::cluster::Op;
use crate::conntrack::table::{Change, Observer};
use crate::conntrack::{Conn, FlowKey};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

/// Changes in flight between the workers and the cluster thread.
pub const OUTBOX: usize = 65_536;
/// Lag samples kept per peer, for its percentiles.
const LAG_SAMPLES: usize = 1024;

/// One change of a local connection, as the cluster thread publishes it.
pub type Outgoing = (Op, FlowKey, Conn);

/// Why a message was refused (never applied).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not a cluster message, or damaged (length, checksum, a record).
    Malformed,
    /// Another format version.
    Version,
    /// From a node not in `peers`.
    UnknownNode,
    /// From this node's own name (a second node configured alike, or an echo).
    OwnNode,
    /// Published on another node's subject than the node it names: with
    /// per-node publish permissions on the NATS server, one node's
    /// credentials cannot speak for another.
    Subject,
}

impl Refusal {
    pub const ALL: [Refusal; 5] = [
        Refusal::Malformed,
        Refusal::Version,
        Refusal::UnknownNode,
        Refusal::OwnNode,
        Refusal::Subject,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Refusal::Malformed => "malformed",
            Refusal::Version => "version",
            Refusal::UnknownNode => "unknown_node",
            Refusal::OwnNode => "own_node",
            Refusal::Subject => "subject",
        }
    }
}

/// The connection to the NATS servers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    Connecting = 0,
    Connected = 1,
    Disconnected = 2,
}

/// What became of the records a peer sent, by outcome of `Engine::apply_peer`
/// (and `expired`: upserts already expired on arrival, not applied).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    pub inserted: u64,
    pub updated: u64,
    pub removed: u64,
    pub stale: u64,
    pub absent: u64,
    pub full: u64,
    pub expired: u64,
}

impl Applied {
    pub fn add(&mut self, other: &Applied) {
        self.inserted += other.inserted;
        self.updated += other.updated;
        self.removed += other.removed;
        self.stale += other.stale;
        self.absent += other.absent;
        self.full += other.full;
        self.expired += other.expired;
    }

    pub fn total(&self) -> u64 {
        self.inserted
            + self.updated
            + self.removed
            + self.stale
            + self.absent
            + self.full
            + self.expired
    }
}

/// What this node knows of one configured peer.
#[derive(Clone, Debug, Default)]
pub struct Peer {
    pub name: String,
    /// Wall clock of its last message, Unix ms.
    pub last_heard_unix_ms: Option<u64>,
    /// Receive time less its `sent_ms`, of its last message, and the most seen.
    pub lag_last_ms: i64,
    pub lag_max_ms: i64,
    /// The last lags, for percentiles.
    pub lags: VecDeque<i64>,
    pub messages: u64,
    pub records_received: u64,
    pub applied: Applied,
    /// Messages of changes it sent that never arrived (sequence gaps).
    pub missed: u64,
    /// Its last changes message's sequence.
    pub last_sequence: Option<u64>,
    /// From its last hello.
    pub digest: Option<[u8; 32]>,
    pub digest_agrees: Option<bool>,
    pub ready: bool,
    pub connections: u64,
}

impl Peer {
    pub fn lag(&mut self, ms: i64) {
        self.lag_last_ms = ms;
        self.lag_max_ms = self.lag_max_ms.max(ms);
        if self.lags.len() == LAG_SAMPLES {
            self.lags.pop_front();
        }
        self.lags.push_back(ms);
    }

    /// The `q` quantile (0..=1) of the recent lags, in ms.
    pub fn lag_quantile(&self, q: f64) -> Option<i64> {
        if self.lags.is_empty() {
            return None;
        }
        let mut sorted: Vec<i64> = self.lags.iter().copied().collect();
        sorted.sort_unstable();
        let at = ((sorted.len() - 1) as f64 * q).round() as usize;
        Some(sorted[at])
    }
}

/// The last bulk copy this node asked for.
#[derive(Clone, Debug, Default)]
pub struct BulkCopy {
    /// When it was asked for, Unix ms.
    pub started_unix_ms: u64,
    pub took_ms: u64,
    /// The peers whose copy came whole, and those that did not answer in time.
    pub answered: Vec<String>,
    pub missing: Vec<String>,
    pub records: u64,
}

/// The cluster's state, as the rest of the daemon reads it.
#[derive(Debug)]
pub struct ClusterState {
    pub node: String,
    pub servers: Vec<String>,
    pub subject: String,
    tx: Sender<Outgoing>,
    rx: Receiver<Outgoing>,
    /// Changes not published: the outbox was full (NATS unreachable, or
    /// the thread lagged), or NATS did not take them.
    pub dropped: AtomicU64,
    link: AtomicU8,
    /// The first bulk copy is done (or timed out): the node holds the table.
    ready: AtomicBool,
    /// A bulk copy is under way.
    pub syncing: AtomicBool,
    pub records_sent: AtomicU64,
    pub messages_sent: AtomicU64,
    /// Payload bytes of the messages NATS took (changes, refreshes, hellos,
    /// bulk chunks; without NATS's own framing).
    pub bytes_sent: AtomicU64,
    pub publish_errors: AtomicU64,
    /// Bulk copies this node sent to a peer that asked.
    pub bulk_answered: AtomicU64,
    refused: [AtomicU64; Refusal::ALL.len()],
    /// One per configured peer, in the configured order.
    pub peers: Mutex<Vec<Peer>>,
    pub last_bulk: Mutex<Option<BulkCopy>>,
    /// This node's policy digest, as its hellos say it.
    pub digest: Mutex<[u8; 32]>,
}

impl ClusterState {
    pub fn new(node: &str, servers: &[String], subject: &str, peers: &[String]) -> ClusterState {
        let (tx, rx) = crossbeam_channel::bounded(OUTBOX);
        ClusterState {
            node: node.to_string(),
            servers: servers.to_vec(),
            subject: subject.to_string(),
            tx,
            rx,
            dropped: AtomicU64::new(0),
            link: AtomicU8::new(Link::Connecting as u8),
            ready: AtomicBool::new(false),
            syncing: AtomicBool::new(true),
            records_sent: AtomicU64::new(0),
            messages_sent: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            publish_errors: AtomicU64::new(0),
            bulk_answered: AtomicU64::new(0),
            refused: Default::default(),
            peers: Mutex::new(
                peers
                    .iter()
                    .map(|p| Peer {
                        name: p.clone(),
                        ..Peer::default()
                    })
                    .collect(),
            ),
            last_bulk: Mutex::new(None),
            digest: Mutex::new([0; 32]),
        }
    }

    /// Queues a change for the cluster thread; never waits (full: counted).
    #[inline]
    pub fn send(&self, item: Outgoing) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(item) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// What the observer queued, for the cluster thread.
    pub fn outbox(&self) -> &Receiver<Outgoing> {
        &self.rx
    }

    pub fn link(&self) -> Link {
        match self.link.load(Ordering::Relaxed) {
            1 => Link::Connected,
            2 => Link::Disconnected,
            _ => Link::Connecting,
        }
    }

    pub fn set_link(&self, link: Link) {
        self.link.store(link as u8, Ordering::Relaxed);
    }

    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::Relaxed);
    }

    pub fn refuse(&self, why: Refusal) {
        self.refused[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn refused(&self, why: Refusal) -> u64 {
        self.refused[why as usize].load(Ordering::Relaxed)
    }

    /// `syncing` until the first bulk copy is done, then `ready`, or
    /// `disconnected` while the servers cannot be reached.
    pub fn state_name(&self) -> &'static str {
        if !self.ready() || self.syncing.load(Ordering::Relaxed) && self.link() == Link::Connected {
            "syncing"
        } else if self.link() != Link::Connected {
            "disconnected"
        } else {
            "ready"
        }
    }

    /// Runs `f` on the peer named `name`, if it is configured.
    pub fn with_peer<T>(&self, name: &str, f: impl FnOnce(&mut Peer) -> T) -> Option<T> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.iter_mut().find(|p| p.name == name).map(f)
    }

    /// A copy of the peer table.
    pub fn peers(&self) -> Vec<Peer> {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn is_peer(&self, name: &str) -> bool {
        self.with_peer(name, |_| ()).is_some()
    }
}

/// The table's one observer: the event hub, and the cluster's outbox when
/// there is a cluster. Each is asked whether it listens first (an atomic
/// load): without subscribers and cluster, an event costs two loads.
pub struct Observers {
    pub hub: Arc<Hub>,
    pub cluster: Option<Arc<ClusterState>>,
}

impl Observer for Observers {
    #[inline]
    fn active(&self) -> bool {
        self.cluster.is_some() || self.hub.active()
    }

    fn observe(&self, change: Change, key: &FlowKey, conn: &Conn) {
        if self.hub.active() {
            self.hub.observe(change, key, conn);
        }
        // Peer entries are the peers' to publish.
        if let (Some(cluster), false) = (&self.cluster, conn.peer()) {
            let op = match change {
                Change::Destroy(_) => Op::Remove,
                _ => Op::Upsert,
            };
            cluster.send((op, *key, *conn));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::table::{Proto, Removal};
    use crate::conntrack::Side;

    fn key(port: u16) -> FlowKey {
        FlowKey::new(17, [10, 0, 0, 1].into(), port, [10, 0, 0, 2].into(), 53).0
    }

    fn conn() -> Conn {
        Conn::new(Proto::Udp, Side::Lo, false)
    }

    #[test]
    fn local_changes_are_queued_peer_entries_are_not_and_a_full_outbox_counts() {
        let cluster = Arc::new(ClusterState::new("a", &[], "ctd", &["b".into()]));
        let o = Observers {
            hub: Arc::new(Hub::default()),
            cluster: Some(cluster.clone()),
        };
        assert!(o.active());
        o.observe(Change::New, &key(1), &conn());
        o.observe(Change::Destroy(Removal::Timeout), &key(1), &conn());
        let mut peer = conn();
        peer.set_peer();
        o.observe(
            Change::Update {
                before: peer.state(),
            },
            &key(2),
            &peer,
        );
        let got: Vec<(Op, FlowKey)> = cluster
            .outbox()
            .try_iter()
            .map(|(op, k, _)| (op, k))
            .collect();
        assert_eq!(got, [(Op::Upsert, key(1)), (Op::Remove, key(1))]);
        for i in 0..OUTBOX + 3 {
            o.observe(Change::Progress, &key(i as u16), &conn());
        }
        assert_eq!(cluster.dropped.load(Ordering::Relaxed), 3);
        assert_eq!(cluster.outbox().len(), OUTBOX);

        let alone = Observers {
            hub: Arc::new(Hub::default()),
            cluster: None,
        };
        assert!(
            !alone.active(),
            "no subscriber, no cluster: nothing is made"
        );
    }

    #[test]
    fn lag_quantiles_and_state_names() {
        let mut p = Peer::default();
        assert_eq!(p.lag_quantile(0.5), None);
        for ms in 1..=100 {
            p.lag(ms);
        }
        assert_eq!(p.lag_quantile(0.5), Some(51));
        assert_eq!(p.lag_quantile(0.99), Some(99));
        assert_eq!((p.lag_last_ms, p.lag_max_ms), (100, 100));
        let c = ClusterState::new("a", &[], "ctd", &["b".into()]);
        assert_eq!(c.state_name(), "syncing");
        c.set_link(Link::Connected);
        c.set_ready();
        c.syncing.store(false, Ordering::Relaxed);
        assert_eq!(c.state_name(), "ready");
        c.set_link(Link::Disconnected);
        assert_eq!(c.state_name(), "disconnected");
        assert!(c.is_peer("b") && !c.is_peer("a"));
    }
}
