//! The connections a replay saw, from first packet to end: still in the
//! table, expired, or replaced by a new connection on the same addresses and
//! ports (a TIME_WAIT reopen).
//!
//! The engine reports each packet's state before and after; a connection
//! starts when a packet takes the state from `NONE` to something. Expiry is
//! noticed by comparing with the engine's table after `Engine::expire`.

use super::view::PacketView;
use crate::conntrack::{ConnState, FlowKey};
use crate::engine::{Decision, Engine};
use crate::wire;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

/// How a connection's story ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// Still tracked when the replay ended.
    InTable,
    /// Removed by `Engine::expire` when the clock reached this time (ns).
    Expired { at_ns: u64 },
    /// A new connection on the same key started with this packet.
    Replaced { by: u64 },
    /// Gone for another reason (evicted when the table was full, or a
    /// reopening SYN the policy refused).
    Removed,
}

impl End {
    pub fn name(self) -> &'static str {
        match self {
            End::InTable => "in_table",
            End::Expired { .. } => "expired",
            End::Replaced { .. } => "replaced",
            End::Removed => "removed",
        }
    }
}

/// An address and a port (the echo id for ICMP, 0 for other protocols).
pub type Endpoint = (IpAddr, u16);

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnRecord {
    pub protocol: u8,
    pub originator: Endpoint,
    pub responder: Endpoint,
    /// The last state the engine reported.
    pub state: ConnState,
    /// Index of the packet that opened it, and of the last one that touched it.
    pub first: u64,
    pub last: u64,
    pub packets: u64,
    pub end: End,
}

impl ConnRecord {
    /// Whether the protocol has ports (TCP, UDP) rather than an echo id or nothing.
    pub fn has_ports(&self) -> bool {
        matches!(self.protocol, wire::PROTO_TCP | wire::PROTO_UDP)
    }
}

#[derive(Debug, Default)]
pub struct ConnBook {
    records: Vec<ConnRecord>,
    live: HashMap<FlowKey, usize>,
}

/// The engine's key for a packet, and its (source, destination) endpoints, as
/// `Engine::decide_packet` forms them; `None` for packets that never belong
/// to a connection of their own (ICMP errors and untracked ICMP).
fn key_of(v: &PacketView) -> Option<(FlowKey, Endpoint, Endpoint)> {
    let (src, dst, protocol) = (v.src?, v.dst?, v.protocol?);
    let (sp, dp) = match (v.ports, &v.icmp) {
        (Some(ports), _) => ports,
        (None, Some(icmp)) => {
            let id = icmp.id?;
            (id, id)
        }
        (None, None) => (0, 0),
    };
    let (key, _) = FlowKey::new(protocol, src, sp, dst, dp);
    Some((key, (src, sp), (dst, dp)))
}

impl ConnBook {
    pub fn records(&self) -> &[ConnRecord] {
        &self.records
    }

    /// Notes one decided packet.
    pub fn packet(&mut self, index: u64, view: &PacketView, d: &Decision) {
        if d.after == ConnState::None {
            return;
        }
        let Some((key, src, dst)) = key_of(view) else {
            return;
        };
        if d.before == ConnState::None {
            if let Some(old) = self.live.remove(&key) {
                self.records[old].end = End::Replaced { by: index };
            }
            self.live.insert(key, self.records.len());
            self.records.push(ConnRecord {
                protocol: view.protocol.unwrap_or_default(),
                originator: src,
                responder: dst,
                state: d.after,
                first: index,
                last: index,
                packets: 1,
                end: End::InTable,
            });
        } else if let Some(&i) = self.live.get(&key) {
            let r = &mut self.records[i];
            r.state = d.after;
            r.last = index;
            r.packets += 1;
        }
    }

    fn table_keys(engine: &Engine) -> HashSet<FlowKey> {
        engine
            .connections()
            .into_iter()
            .map(|c| {
                FlowKey::new(
                    c.protocol,
                    c.originator.0,
                    c.originator.1,
                    c.responder.0,
                    c.responder.1,
                )
                .0
            })
            .collect()
    }

    /// Marks the connections no longer in the engine's table; returns them in
    /// the order they were opened.
    fn sweep(&mut self, engine: &Engine, end: End) -> Vec<usize> {
        let table = Self::table_keys(engine);
        let mut gone: Vec<usize> = self
            .live
            .iter()
            .filter(|(k, _)| !table.contains(k))
            .map(|(_, &i)| i)
            .collect();
        gone.sort_unstable();
        for &i in &gone {
            self.records[i].end = end;
        }
        self.live.retain(|k, _| table.contains(k));
        gone
    }

    /// After `Engine::expire` removed something at `at_ns`.
    pub fn expired(&mut self, engine: &Engine, at_ns: u64) -> Vec<usize> {
        self.sweep(engine, End::Expired { at_ns })
    }

    /// At the end of the replay: what is left is in the table, what is not was removed.
    pub fn finish(&mut self, engine: &Engine) {
        self.sweep(engine, End::Removed);
    }

    pub fn get(&self, i: usize) -> &ConnRecord {
        &self.records[i]
    }
}
