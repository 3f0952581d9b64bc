//! The event stream (`conntrackd events`, `conntrackd drops --follow`):
//! NEW, UPDATE (a state change), DESTROY (with its cause) and DROP, as JSON
//! lines to every subscriber, like `conntrack -E`.
//!
//! Producers (the table's observer on the packet path, the workers for
//! drops) only `try_send` into one bounded channel, and only while someone
//! subscribes: with no subscriber an event costs one atomic load. The hub
//! thread formats each event once and writes it to every subscriber whose
//! filter selects it, without blocking: each subscriber has a bounded
//! buffer, and an event that does not fit is lost for that subscriber
//! only, counted, and reported to it (`{"lost":N}`) once it reads again.
//! A slow reader never slows the workers, nor the other readers.

use super::drops::DropRecord;
use crate::conntrack::table::{Change, Observer};
use crate::conntrack::{Conn, ConnState, FlowKey, Side, Traffic};
use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde_json::{json, Value};
use std::io::{ErrorKind, Read, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Events in flight between the producers and the hub thread.
const CHANNEL: usize = 16_384;
/// Bytes of events a subscriber may have unread before it loses some.
const SUBSCRIBER_BUFFER: usize = 1 << 20;
/// Most subscribers at once.
pub const MAX_SUBSCRIBERS: usize = 16;

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
}

#[derive(Clone, Copy, Debug)]
pub enum Record {
    Conn(ConnEvent),
    Drop(DropRecord),
}

impl Record {
    pub fn to_json(&self) -> Value {
        match self {
            Record::Drop(d) => {
                let mut v = d.to_json();
                v["event"] = json!("DROP");
                v
            }
            Record::Conn(e) => {
                let mut v = json!({
                    "time_ms": e.unix_ms,
                    "proto": crate::wire::protocol_name(e.protocol),
                    "src": e.originator.0.to_string(),
                    "sport": e.originator.1,
                    "dst": e.responder.0.to_string(),
                    "dport": e.responder.1,
                    "state": e.state.to_string(),
                });
                match e.change {
                    Change::New => v["event"] = json!("NEW"),
                    Change::Update { before } => {
                        v["event"] = json!("UPDATE");
                        v["before"] = json!(before.to_string());
                    }
                    Change::Destroy(why) => {
                        v["event"] = json!("DESTROY");
                        v["cause"] = json!(why.name());
                        v["packets"] = json!(e.traffic.packets);
                        v["bytes"] = json!(e.traffic.bytes);
                    }
                }
                v
            }
        }
    }
}

/// A subscriber's filter.
pub type Select = Arc<dyn Fn(&Record) -> bool + Send + Sync>;

/// What a subscriber wants.
#[derive(Clone, Default)]
pub struct Interest {
    /// Only DROP events.
    pub drops_only: bool,
    /// The rest must match this (addresses, port, protocol, state).
    pub select: Option<Select>,
}

/// The producers' side, shared by the table (as its observer) and the workers.
#[derive(Debug)]
pub struct Hub {
    tx: Sender<Record>,
    rx: Receiver<Record>,
    subscribers: AtomicUsize,
    /// Events that did not fit in the channel (the hub thread lagged).
    lost: AtomicU64,
}

impl Default for Hub {
    fn default() -> Hub {
        let (tx, rx) = crossbeam_channel::bounded(CHANNEL);
        Hub {
            tx,
            rx,
            subscribers: AtomicUsize::new(0),
            lost: AtomicU64::new(0),
        }
    }
}

pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Hub {
    /// Someone subscribes: producers should send.
    #[inline]
    pub fn listening(&self) -> bool {
        self.subscribers.load(Ordering::Relaxed) > 0
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

    pub fn subscribers(&self) -> usize {
        self.subscribers.load(Ordering::Relaxed)
    }
}

impl Observer for Hub {
    fn active(&self) -> bool {
        self.listening()
    }

    fn observe(&self, change: Change, key: &FlowKey, conn: &Conn) {
        let other = match conn.originator {
            Side::Lo => Side::Hi,
            Side::Hi => Side::Lo,
        };
        self.send(Record::Conn(ConnEvent {
            unix_ms: unix_ms(),
            change,
            protocol: key.protocol(),
            originator: key.endpoint(conn.originator),
            responder: key.endpoint(other),
            state: conn.state(),
            traffic: conn.traffic(),
        }));
    }
}

struct Subscriber {
    stream: UnixStream,
    interest: Interest,
    pending: Vec<u8>,
    lost: u64,
}

impl Subscriber {
    fn wants(&self, r: &Record) -> bool {
        if self.interest.drops_only && !matches!(r, Record::Drop(_)) {
            return false;
        }
        self.interest.select.as_ref().map_or(true, |f| f(r))
    }

    /// Writes what it can; false when the subscriber is gone.
    fn flush(&mut self) -> bool {
        if self.pending.is_empty() && self.lost > 0 {
            let notice = json!({"lost": self.lost});
            self.lost = 0;
            self.pending
                .extend_from_slice(notice.to_string().as_bytes());
            self.pending.push(b'\n');
        }
        while !self.pending.is_empty() {
            match self.stream.write(&self.pending) {
                Ok(0) => return false,
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }

    /// The client closed its end (or sent something: it has no business to).
    fn hung_up(&mut self) -> bool {
        let mut b = [0u8; 64];
        match self.stream.read(&mut b) {
            Ok(0) => true,
            // Bytes from a client that should only read: it is not one of ours.
            Ok(_) => true,
            Err(e) => e.kind() != ErrorKind::WouldBlock && e.kind() != ErrorKind::Interrupted,
        }
    }
}

/// A request to stream to a client.
pub struct Subscription {
    pub stream: UnixStream,
    pub interest: Interest,
}

/// The hub thread: takes new subscribers from `joins` and events from the
/// hub until `stop`.
pub fn run(hub: Arc<Hub>, joins: Receiver<Subscription>, stop: Arc<AtomicBool>) {
    let mut subs: Vec<Subscriber> = Vec::new();
    let tick = Duration::from_millis(100);
    let mut line = Vec::with_capacity(512);
    while !stop.load(Ordering::Relaxed) {
        while let Ok(s) = joins.try_recv() {
            if s.stream.set_nonblocking(true).is_ok() {
                subs.push(Subscriber {
                    stream: s.stream,
                    interest: s.interest,
                    pending: Vec::new(),
                    lost: 0,
                });
            } else {
                hub.subscribers.fetch_sub(1, Ordering::Relaxed);
            }
        }
        if let Ok(first) = hub.rx.recv_timeout(tick) {
            // This event and whatever else is waiting, at most a channel's worth.
            for record in std::iter::once(first).chain(hub.rx.try_iter().take(CHANNEL)) {
                line.clear();
                let mut formatted = false;
                for s in subs.iter_mut().filter(|s| s.wants(&record)) {
                    if !formatted {
                        let _ = serde_json::to_writer(&mut line, &record.to_json());
                        line.push(b'\n');
                        formatted = true;
                    }
                    if s.pending.len() + line.len() > SUBSCRIBER_BUFFER {
                        s.lost += 1;
                    } else {
                        s.pending.extend_from_slice(&line);
                    }
                }
            }
        }
        let before = subs.len();
        subs.retain_mut(|s| s.flush() && !s.hung_up());
        hub.subscribers
            .fetch_sub(before - subs.len(), Ordering::Relaxed);
    }
    hub.subscribers.fetch_sub(subs.len(), Ordering::Relaxed);
}

/// Registers a subscriber: counted at once, so producers start sending
/// before the hub thread picks it up. `None` when there are too many.
pub fn join(hub: &Hub, joins: &Sender<Subscription>, s: Subscription) -> Result<(), String> {
    let n = hub.subscribers.fetch_add(1, Ordering::Relaxed);
    if n >= MAX_SUBSCRIBERS {
        hub.subscribers.fetch_sub(1, Ordering::Relaxed);
        return Err(format!("{MAX_SUBSCRIBERS} event streams are open already"));
    }
    if joins.send(s).is_err() {
        hub.subscribers.fetch_sub(1, Ordering::Relaxed);
        return Err("the event stream is shutting down".into());
    }
    Ok(())
}
