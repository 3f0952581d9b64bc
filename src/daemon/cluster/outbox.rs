//! What goes out to the peers, without NATS: changes batched into
//! messages of at most `cluster::MAX_MESSAGE` bytes (one record per
//! connection per batch: the last change wins), and the table read in
//! bounded slices for the refresh and the bulk copies.

use super::super::shared::cluster::Outgoing;
use crate::cluster::{Kind, Op, Writer};
use crate::conntrack::table::StateClass;
use crate::conntrack::{Conn, FlowKey};
use crate::time::Timestamp;
use crate::Engine;
use std::collections::HashSet;

/// Numbers the messages of one kind a node sends.
pub struct Packer {
    node: String,
    kind: Kind,
    sequence: u64,
}

impl Packer {
    pub fn new(node: &str, kind: Kind) -> Packer {
        Packer {
            node: node.to_string(),
            kind,
            sequence: 0,
        }
    }

    /// `items` as messages, each with its count of records, sent at wall
    /// clock `sent_ms`, expiries counted from engine time `now`. `last`
    /// flags the last message (a bulk copy's end: sent even with no record,
    /// so that the asker knows). A proxied connection's record carries the
    /// translation `engine` holds for it (none: it goes as a plain one).
    pub fn pack(
        &mut self,
        items: &[Outgoing],
        engine: Option<&Engine>,
        now: Timestamp,
        sent_ms: u64,
        last: bool,
    ) -> Vec<(Vec<u8>, u32)> {
        let mut out = Vec::new();
        let mut writer: Option<Writer> = None;
        for (op, key, conn) in items {
            let w = match &mut writer {
                Some(w) if w.has_room() => w,
                _ => {
                    if let Some(full) = writer.take() {
                        let count = full.count();
                        out.push((full.finish(false), count));
                    }
                    self.sequence += 1;
                    writer.insert(Writer::new(self.kind, &self.node, self.sequence, sent_ms))
                }
            };
            // Who translates is this node's business (its kernel's entry):
            // the peer gets the translation as conntrackd makes it.
            let translation = match engine {
                Some(e) if conn.proxied() => e.table().translation(key).map(|t| t.in_kernel(false)),
                _ => None,
            };
            w.push(*op, key, conn, translation.as_ref(), now);
        }
        match writer {
            Some(w) => {
                let count = w.count();
                out.push((w.finish(last), count));
            }
            None if last => {
                self.sequence += 1;
                let empty = Writer::new(self.kind, &self.node, self.sequence, sent_ms);
                out.push((empty.finish(true), 0));
            }
            None => {}
        }
        out
    }
}

/// Keeps only the last change of each connection, in the order of those
/// last changes: a peer needs only where a connection is now.
pub fn coalesce(items: &mut Vec<Outgoing>) {
    let mut seen = HashSet::with_capacity(items.len());
    let mut kept: Vec<Outgoing> = items
        .iter()
        .rev()
        .filter(|(_, key, _)| seen.insert(*key))
        .copied()
        .collect();
    kept.reverse();
    *items = kept;
}

/// Entries a slice of a table walk aims at: the walk copies at most about
/// this many before they are sent.
pub const SLICE_ENTRIES: usize = 65_536;
/// At most this many slices per walk (each reads the whole table, keeping a
/// slice's share).
pub const MAX_SLICES: u64 = 16;

/// How many slices a walk of a table of `len` entries takes.
pub fn slices_for(len: usize) -> u64 {
    ((len / SLICE_ENTRIES) as u64 + 1)
        .next_power_of_two()
        .min(MAX_SLICES)
}

/// Which slice a connection falls in, of `slices`.
fn slice_of(key: &FlowKey, slices: u64) -> u64 {
    // Fixed seeds: a connection stays in its slice from one walk to the next.
    ahash::RandomState::with_seeds(1, 2, 3, 4).hash_one(key) % slices
}

/// The local connections (not peers' copies, not expired at `now`) of
/// slice `slice` of `slices`, as upserts, appended to `out`. One shard is
/// read-locked at a time, for a copy.
///
/// `closing`: TCP connections after a FIN or RST too (a bulk copy wants
/// everything). A refresh leaves them out: a peer's copy expires when this
/// node's entry does (the record carries the time left), so a refresh
/// only repairs lost records, and a connection that is closing has no
/// failover left to survive. On a gateway of short connections the table
/// is mostly TIME_WAIT: refreshing those would be most of the cluster's
/// traffic.
pub fn local_slice(
    engine: &Engine,
    slice: u64,
    slices: u64,
    closing: bool,
    now: Timestamp,
    out: &mut Vec<Outgoing>,
) {
    engine.table().for_each(|key: &FlowKey, conn: &Conn| {
        if !conn.peer()
            && !conn.expired(now)
            && (closing || StateClass::of(conn) != StateClass::TcpClosing)
            && slice_of(key, slices) == slice
        {
            out.push((Op::Upsert, *key, *conn));
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{decode, Body, MAX_MESSAGE};
    use crate::conntrack::table::Proto;
    use crate::conntrack::Side;

    fn key(port: u16) -> FlowKey {
        FlowKey::new(17, [10, 0, 0, 1].into(), port, [10, 0, 0, 2].into(), 53).0
    }

    fn item(op: Op, port: u16) -> Outgoing {
        (op, key(port), Conn::new(Proto::Udp, Side::Lo, false))
    }

    #[test]
    fn the_last_change_of_each_connection_is_kept_in_order() {
        let mut items = vec![
            item(Op::Upsert, 1),
            item(Op::Upsert, 2),
            item(Op::Upsert, 1),
            item(Op::Remove, 3),
            item(Op::Remove, 2),
        ];
        coalesce(&mut items);
        let got: Vec<(Op, FlowKey)> = items.iter().map(|(op, k, _)| (*op, *k)).collect();
        assert_eq!(
            got,
            [
                (Op::Upsert, key(1)),
                (Op::Remove, key(3)),
                (Op::Remove, key(2))
            ]
        );
    }

    #[test]
    fn batches_fill_messages_and_number_them_and_a_bulk_copy_ends_with_last() {
        let mut p = Packer::new("gw-a", Kind::Changes);
        let now = Timestamp::from_secs(1);
        assert!(
            p.pack(&[], None, now, 5, false).is_empty(),
            "nothing to send"
        );
        let items: Vec<Outgoing> = (0..5000).map(|i| item(Op::Upsert, i)).collect();
        let messages = p.pack(&items, None, now, 5, false);
        assert!(messages.len() > 1, "5000 records do not fit in one message");
        let mut records = 0;
        for (i, (m, count)) in messages.iter().enumerate() {
            assert!(m.len() <= MAX_MESSAGE);
            let d = decode(m, now).unwrap();
            assert_eq!(d.header.sequence, i as u64 + 1);
            assert!(!d.header.last);
            let Body::Records(r) = d.body else { panic!() };
            assert_eq!(r.len(), *count as usize);
            records += r.len();
        }
        assert_eq!(records, 5000);

        let mut bulk = Packer::new("gw-a", Kind::BulkChunk);
        let end = bulk.pack(&[], None, now, 5, true);
        assert_eq!(end.len(), 1, "an empty copy still ends");
        let d = decode(&end[0].0, now).unwrap();
        assert!(d.header.last && d.header.kind == Kind::BulkChunk);
        let two = bulk.pack(&items[..3], None, now, 5, true);
        assert_eq!(two.len(), 1);
        assert!(decode(&two[0].0, now).unwrap().header.last);
    }

    #[test]
    fn the_slices_of_a_walk_cover_every_local_entry_once() {
        let e = crate::Engine::new(
            crate::EngineSettings::default(),
            crate::policy::Policy::allow_all(),
        );
        let now = Timestamp::from_secs(1);
        for port in 0..300 {
            let mut conn = Conn::new(Proto::Udp, Side::Lo, false);
            conn.set_timeout(now, 30);
            if port % 3 == 0 {
                conn.set_peer();
            }
            e.table().insert_new(key(port), conn).unwrap();
        }
        assert_eq!(slices_for(0), 1);
        assert_eq!(slices_for(65_536), 2);
        assert_eq!(slices_for(10_000_000), MAX_SLICES);
        let mut all = Vec::new();
        for s in 0..4 {
            let before = all.len();
            local_slice(&e, s, 4, true, now, &mut all);
            assert!(all.len() > before, "slice {s} is not empty");
        }
        assert_eq!(all.len(), 200, "every local entry, no peer's copy");
        let keys: HashSet<FlowKey> = all.iter().map(|(_, k, _)| *k).collect();
        assert_eq!(keys.len(), 200);
    }

    #[test]
    fn a_refresh_leaves_out_closing_connections_a_bulk_copy_does_not() {
        use crate::wire::{build, TcpFlags as F};
        let e = crate::Engine::new(
            crate::EngineSettings::default(),
            crate::policy::Policy::allow_all(),
        );
        let now = Timestamp::from_secs(1);
        let (c, s) = (
            "198.18.0.2:40000".parse().unwrap(),
            "198.19.0.2:80".parse().unwrap(),
        );
        let send = |from_client: bool, flags: u8, seq: u32, ack: u32| {
            let (a, b) = if from_client { (c, s) } else { (s, c) };
            let bytes = build::tcp(a, b).flags(flags).seq(seq).ack(ack).build();
            let d = e.decide(&bytes, &crate::Context::default(), now);
            assert_eq!(d.verdict(), crate::Verdict::Accept, "{:?}", d.reason);
        };
        let count = |e: &crate::Engine, closing: bool| {
            let mut out = Vec::new();
            local_slice(e, 0, 1, closing, now, &mut out);
            out.len()
        };
        send(true, F::SYN, 1, 0);
        assert_eq!((count(&e, false), count(&e, true)), (1, 1), "a handshake");
        send(false, F::SYN | F::ACK, 100, 2);
        send(true, F::ACK, 2, 101);
        assert_eq!((count(&e, false), count(&e, true)), (1, 1), "established");
        send(true, F::FIN | F::ACK, 2, 101);
        assert_eq!(
            (count(&e, false), count(&e, true)),
            (0, 1),
            "closing: only in a copy"
        );
    }
}
