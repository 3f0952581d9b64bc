//! The event hub: where connection changes (the table's observer) and drops
//! (the workers) are queued for the event stream (`conntrackd events`).
//! Producers only `try_send` into one bounded channel, and only while
//! someone subscribes: with no subscriber an event costs one atomic load.
//! The thread that writes to subscribers is an operation
//! (`operations::events`).

use super::drops::DropRecord;
use crate::conntrack::table::{Change, Observer};
use crate::conntrack::{Conn, ConnState, FlowKey, Traffic};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Events in flight between the producers and the event thread.
pub const CHANNEL: usize = 16_384;

/// A connection event as it happened.
#[derive(Clone, Copy, Debug)]
pub struct ConnEvent {
    pub unix_ms: u64,
    pub change: Change,
    pub protocol: u8,
    pub originator: (IpAddr, u16),
    pub responder: (IpAddr, u16),
    pub state: ConnState,
    pub traffic: Traffic,
    /// The connection is a peer gateway's copy (see `Conn::peer`).
    pub peer: bool,
    /// Opened by the SYN proxy (its packets are translated).
    pub proxied: bool,
}

#[derive(Clone, Copy, Debug)]
pub enum Record {
    Conn(ConnEvent),
    Drop(DropRecord),
}

/// The producers' side, shared by the table (as its observer) and the workers.
#[derive(Debug)]
pub struct Hub {
    tx: Sender<Record>,
    rx: Receiver<Record>,
    /// Subscribers of every event, and of drops only: connection events
    /// are made only for the first kind.
    all: AtomicUsize,
    drops_only: AtomicUsize,
    /// Events that did not fit in the channel (the hub thread lagged).
    lost: AtomicU64,
}

impl Default for Hub {
    fn default() -> Hub {
        let (tx, rx) = crossbeam_channel::bounded(CHANNEL);
        Hub {
            tx,
            rx,
            all: AtomicUsize::new(0),
            drops_only: AtomicUsize::new(0),
            lost: AtomicU64::new(0),
        }
    }
}

impl Hub {
    /// Someone wants drops: workers should send them.
    #[inline]
    pub fn wants_drops(&self) -> bool {
        self.all.load(Ordering::Relaxed) + self.drops_only.load(Ordering::Relaxed) > 0
    }

    /// Queues an event for the hub thread; never waits.
    #[inline]
    pub fn send(&self, record: Record) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(record) {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn lost(&self) -> u64 {
        self.lost.load(Ordering::Relaxed)
    }

    /// What the producers sent, for the event thread.
    pub fn receiver(&self) -> &Receiver<Record> {
        &self.rx
    }

    pub fn subscribers(&self) -> usize {
        self.all.load(Ordering::Relaxed) + self.drops_only.load(Ordering::Relaxed)
    }

    /// Subscribers of one kind (the event thread keeps them).
    pub fn count(&self, drops_only: bool) -> &AtomicUsize {
        if drops_only {
            &self.drops_only
        } else {
            &self.all
        }
    }
}

impl Observer for Hub {
    fn active(&self) -> bool {
        self.all.load(Ordering::Relaxed) > 0
    }

    fn observe(&self, change: Change, key: &FlowKey, conn: &Conn) {
        if change == Change::Progress {
            return;
        }
        self.send(Record::Conn(ConnEvent {
            unix_ms: super::wall_clock_ms(),
            change,
            protocol: key.protocol(),
            originator: key.endpoint(conn.originator),
            responder: key.endpoint(conn.originator.other()),
            state: conn.state(),
            traffic: conn.traffic(),
            peer: conn.peer(),
            proxied: conn.proxied(),
        }));
    }
}
