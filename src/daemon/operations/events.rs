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

use super::super::shared::hub::{Hub, Record, CHANNEL};
use super::super::shared::Stop;
use crate::conntrack::table::Change;
use crate::conntrack::ConnState;
use crossbeam_channel::{Receiver, Sender};
use serde_json::{json, Value};
use std::io::{ErrorKind, Write};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes of events a subscriber may have unread before it loses some.
const SUBSCRIBER_BUFFER: usize = 1 << 20;
/// Most subscribers at once.
pub const MAX_SUBSCRIBERS: usize = 16;

/// An event as a JSON line's object.
pub fn record_json(record: &Record) -> Value {
    match record {
        Record::Drop(d) => {
            let mut v = d.to_json();
            v["event"] = json!("DROP");
            v
        }
        Record::Conn(e) => {
            let mut v = flow_fields(e.protocol, e.originator, e.responder, e.state);
            v["time_ms"] = json!(e.unix_ms);
            if e.peer {
                // A copy of a connection a peer gateway forwards.
                v["peer"] = json!(true);
            }
            if e.proxied {
                v["proxied"] = json!(true);
            }
            match e.change {
                Change::New => v["event"] = json!("NEW"),
                Change::Update { before } => {
                    v["event"] = json!("UPDATE");
                    v["before"] = json!(before.to_string());
                }
                // Never queued: the hub leaves progress to the cluster.
                Change::Progress => v["event"] = json!("PROGRESS"),
                Change::Adopted => v["event"] = json!("ADOPTED"),
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

/// A subscriber's filter.
pub type Select = Arc<dyn Fn(&Record) -> bool + Send + Sync>;

/// A connection's protocol, ends and state as every answer shows them
/// (`flows`, `why`, events).
pub fn flow_fields(
    protocol: u8,
    originator: (IpAddr, u16),
    responder: (IpAddr, u16),
    state: ConnState,
) -> Value {
    json!({
        "proto": crate::wire::protocol_name(protocol),
        "src": originator.0.to_string(),
        "sport": originator.1,
        "dst": responder.0.to_string(),
        "dport": responder.1,
        "state": state.to_string(),
    })
}

/// What a subscriber wants.
#[derive(Clone, Default)]
pub struct Interest {
    /// Only DROP events.
    pub drops_only: bool,
    /// The rest must match this (addresses, port, protocol, state).
    pub select: Option<Select>,
}

struct Subscriber {
    stream: UnixStream,
    interest: Interest,
    pending: Vec<u8>,
    /// Events lost for this subscriber since its last `{"lost":N}` notice.
    lost: u64,
    /// Since when its buffer has been full (it does not read).
    stalled_since: Option<Instant>,
    gone: bool,
}

impl Subscriber {
    fn wants(&self, r: &Record) -> bool {
        if self.interest.drops_only && !matches!(r, Record::Drop(_)) {
            return false;
        }
        self.interest.select.as_ref().map_or(true, |f| f(r))
    }

    /// Queues one event line, behind a `{"lost":N}` notice when events were
    /// lost since the last one; what does not fit is lost too, and counted.
    fn queue(&mut self, line: &[u8]) {
        let notice = (self.lost > 0).then(|| format!("{{\"lost\":{}}}\n", self.lost));
        let need = line.len() + notice.as_ref().map_or(0, |n| n.len());
        if self.pending.len() + need > SUBSCRIBER_BUFFER {
            self.lost += 1;
            self.stalled_since.get_or_insert_with(Instant::now);
            return;
        }
        if let Some(n) = notice {
            self.pending.extend_from_slice(n.as_bytes());
            self.lost = 0;
        }
        self.pending.extend_from_slice(line);
    }

    /// Writes what the socket takes now; marks it gone on a write error.
    fn flush(&mut self) {
        while !self.pending.is_empty() && !self.gone {
            match self.stream.write(&self.pending) {
                Ok(0) => self.gone = true,
                Ok(n) => {
                    self.pending.drain(..n);
                    self.stalled_since = None;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => self.gone = true,
            }
        }
    }

    /// The client closed the connection (a half-close after its request is
    /// allowed: only a hang-up or an error counts), or has not read for
    /// `STALLED` while events were lost for it.
    fn finished(&self) -> bool {
        if self.gone || self.stalled_since.is_some_and(|t| t.elapsed() >= STALLED) {
            return true;
        }
        let mut fd = libc::pollfd {
            fd: self.stream.as_raw_fd(),
            events: 0,
            revents: 0,
        };
        // SAFETY: one valid pollfd for a socket we own, timeout 0.
        let n = unsafe { libc::poll(&mut fd, 1, 0) };
        n > 0 && fd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
    }
}

/// A subscriber that reads nothing for this long, while its events are
/// lost, is disconnected (it holds one of the `MAX_SUBSCRIBERS` slots).
const STALLED: Duration = Duration::from_secs(30);
/// A subscriber's buffer is written out as soon as it holds this much.
const WRITE_AT: usize = 64 * 1024;

/// A request to stream to a client.
pub struct Subscription {
    pub stream: UnixStream,
    pub interest: Interest,
    /// Written first, before any event: the backlog and the acknowledgement.
    pub first: Vec<u8>,
}

/// The hub thread: takes new subscribers from `joins` and events from the
/// hub until `stop`.
pub fn run(hub: Arc<Hub>, joins: Receiver<Subscription>, stop: Stop) {
    let mut subs: Vec<Subscriber> = Vec::new();
    let tick = Duration::from_millis(100);
    let mut line = Vec::with_capacity(512);
    let mut lost_seen = hub.lost();
    while !stop.is_set() {
        let received = hub.receiver().recv_timeout(tick);
        // New readers before the events: a reader is registered before its
        // acknowledgement, so the events that follow it are its own.
        while let Ok(s) = joins.try_recv() {
            let drops_only = s.interest.drops_only;
            if s.stream.set_nonblocking(true).is_ok() {
                subs.push(Subscriber {
                    stream: s.stream,
                    interest: s.interest,
                    pending: s.first,
                    lost: 0,
                    stalled_since: None,
                    gone: false,
                });
            } else {
                hub.count(drops_only).fetch_sub(1, Ordering::Relaxed);
            }
        }
        if let Ok(first) = received {
            // This event and whatever else is waiting, at most a channel's worth.
            for record in std::iter::once(first).chain(hub.receiver().try_iter().take(CHANNEL)) {
                line.clear();
                for s in subs.iter_mut().filter(|s| s.wants(&record)) {
                    if line.is_empty() {
                        let _ = serde_json::to_writer(&mut line, &record_json(&record));
                        line.push(b'\n');
                    }
                    s.queue(&line);
                    if s.pending.len() >= WRITE_AT {
                        s.flush();
                    }
                }
            }
        }
        // Events the channel could not take were lost for every subscriber.
        let lost = hub.lost();
        if lost != lost_seen {
            for s in &mut subs {
                s.lost += lost - lost_seen;
            }
            lost_seen = lost;
        }
        for s in &mut subs {
            s.flush();
        }
        subs.retain(|s| {
            let done = s.finished();
            if done {
                hub.count(s.interest.drops_only)
                    .fetch_sub(1, Ordering::Relaxed);
            }
            !done
        });
    }
    for s in &subs {
        hub.count(s.interest.drops_only)
            .fetch_sub(1, Ordering::Relaxed);
    }
}

/// Registers a subscriber: counted at once, so producers start sending
/// before the hub thread picks it up. An error when there are too many.
pub fn join(hub: &Hub, joins: &Sender<Subscription>, s: Subscription) -> Result<(), String> {
    let counter = hub.count(s.interest.drops_only);
    counter.fetch_add(1, Ordering::Relaxed);
    if hub.subscribers() > MAX_SUBSCRIBERS {
        counter.fetch_sub(1, Ordering::Relaxed);
        return Err(format!("{MAX_SUBSCRIBERS} event streams are open already"));
    }
    if joins.send(s).is_err() {
        counter.fetch_sub(1, Ordering::Relaxed);
        return Err("the event stream is shutting down".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::super::shared::{DropRecord, StopSwitch};
    use super::*;
    use crate::conntrack::table::Observer;
    use crate::reason::Reason;
    use std::io::{BufRead, BufReader};

    fn drop_record(ms: u64) -> Record {
        let pkt = crate::wire::build::tcp(
            "198.18.0.2:40000".parse().unwrap(),
            "198.19.0.2:80".parse().unwrap(),
        )
        .flags(crate::wire::TcpFlags::SYN | crate::wire::TcpFlags::FIN)
        .build();
        Record::Drop(DropRecord::new(
            ms,
            0,
            Reason::SynFin,
            ConnState::None,
            &pkt,
            40,
        ))
    }

    #[test]
    fn a_lost_event_is_reported_before_the_next_one_that_fits() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut s = Subscriber {
            stream: a,
            interest: Interest::default(),
            pending: vec![b'x'; SUBSCRIBER_BUFFER - 10],
            lost: 0,
            stalled_since: None,
            gone: false,
        };
        s.queue(b"{\"event\":\"A\"}\n");
        s.queue(b"{\"event\":\"B\"}\n");
        assert_eq!(s.lost, 2);
        assert!(s.stalled_since.is_some());
        s.pending.clear();
        s.queue(b"{\"event\":\"C\"}\n");
        assert_eq!(s.pending, b"{\"lost\":2}\n{\"event\":\"C\"}\n");
        assert_eq!(s.lost, 0);
    }

    /// Through the hub thread: the first bytes, then the events the filter
    /// selects, in order; a drops-only reader makes no connection events
    /// wanted; a reader that hangs up is forgotten (the count goes back to 0).
    #[test]
    fn the_hub_streams_in_order_and_forgets_a_reader_that_hangs_up() {
        let hub = Arc::new(Hub::default());
        let (joins_tx, joins_rx) = crossbeam_channel::bounded(MAX_SUBSCRIBERS);
        let switch = StopSwitch::default();
        let thread = {
            let (hub, stop) = (hub.clone(), switch.stop());
            std::thread::spawn(move || run(hub, joins_rx, stop))
        };
        let (ours, theirs) = UnixStream::pair().unwrap();
        let interest = Interest {
            drops_only: true,
            select: Some(Arc::new(
                |r: &Record| matches!(r, Record::Drop(d) if d.unix_ms % 2 == 0),
            )),
        };
        let first = b"{\"ok\":true,\"following\":true}\n".to_vec();
        join(
            &hub,
            &joins_tx,
            Subscription {
                stream: theirs,
                interest,
                first,
            },
        )
        .unwrap();
        assert!(hub.wants_drops());
        assert!(!hub.active(), "no reader wants connection events");
        for ms in 0..10 {
            hub.send(drop_record(ms));
        }
        ours.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut lines = BufReader::new(&ours).lines();
        assert_eq!(
            lines.next().unwrap().unwrap(),
            "{\"ok\":true,\"following\":true}"
        );
        let times: Vec<u64> = (0..5)
            .map(|_| {
                let v: Value = serde_json::from_str(&lines.next().unwrap().unwrap()).unwrap();
                assert_eq!(v["event"], "DROP");
                v["time_ms"].as_u64().unwrap()
            })
            .collect();
        assert_eq!(times, [0, 2, 4, 6, 8]);
        drop(lines);
        drop(ours);
        let deadline = Instant::now() + Duration::from_secs(5);
        while hub.subscribers() != 0 {
            assert!(
                Instant::now() < deadline,
                "the reader that hung up is still counted"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        switch.trip();
        thread.join().unwrap();
    }

    #[test]
    fn no_more_than_max_subscribers() {
        let hub = Hub::default();
        let (tx, _rx) = crossbeam_channel::bounded(2 * MAX_SUBSCRIBERS);
        let mut keep = Vec::new();
        for i in 0..MAX_SUBSCRIBERS + 1 {
            let (a, b) = UnixStream::pair().unwrap();
            keep.push(a);
            let s = Subscription {
                stream: b,
                interest: Interest::default(),
                first: Vec::new(),
            };
            let r = join(&hub, &tx, s);
            assert_eq!(r.is_ok(), i < MAX_SUBSCRIBERS, "{i}: {r:?}");
        }
        assert_eq!(hub.subscribers(), MAX_SUBSCRIBERS);
        assert!(hub.active());
    }
}
