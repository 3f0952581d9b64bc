//! What comes in from the peers, without NATS: a message's bytes are read
//! and checked (refused and counted, never applied, when they do not add up
//! or come from a node that is not a configured peer), the peer's table is
//! kept (last heard, lag, missed messages, digest), and records are applied
//! to the engine.

use super::super::shared::cluster::{Applied, ClusterState, Refusal};
use crate::cluster::{self, Body, Hello, Kind, MessageError, Op};
use crate::conntrack::{Conn, FlowKey};
use crate::engine;
use crate::synproxy::Translation;
use crate::time::Timestamp;
use crate::Engine;
use tracing::{info, warn};

/// A message from a configured peer, checked.
#[derive(Debug)]
pub enum Incoming {
    /// Changes, or a chunk of a bulk copy (`last`: its last).
    Records {
        peer: String,
        bulk: bool,
        last: bool,
        records: Vec<(Op, FlowKey, Conn, Option<Translation>)>,
    },
    Hello {
        peer: String,
        hello: Hello,
    },
    BulkRequest {
        peer: String,
    },
}

/// Reads one message received at engine time `now` and wall clock
/// `unix_ms`: `None` when refused (counted by reason in `state`).
/// `subject_node`: the node the subject names (`{subject}.changes.NODE`,
/// `{subject}.hello.NODE`); `None` for the bulk request subject and reply
/// inboxes, which name none.
pub fn read(
    state: &ClusterState,
    bytes: &[u8],
    subject_node: Option<&str>,
    now: Timestamp,
    unix_ms: u64,
) -> Option<Incoming> {
    let message = match cluster::decode(bytes, now) {
        Ok(m) => m,
        Err(e) => {
            state.refuse(match e {
                MessageError::Version(_) => Refusal::Version,
                _ => Refusal::Malformed,
            });
            return None;
        }
    };
    let header = message.header;
    if header.node == state.node {
        state.refuse(Refusal::OwnNode);
        return None;
    }
    if subject_node.is_some_and(|n| n != header.node) {
        state.refuse(Refusal::Subject);
        return None;
    }
    let records = match &message.body {
        Body::Records(r) => r.len() as u64,
        _ => 0,
    };
    let known = state.with_peer(&header.node, |p| {
        p.last_heard_unix_ms = Some(unix_ms);
        p.lag(unix_ms as i64 - header.sent_ms as i64);
        p.messages += 1;
        p.records_received += records;
        if header.kind == Kind::Changes {
            // A sequence that goes back is the peer's restart, not a loss.
            if let Some(last) = p.last_sequence.filter(|&l| header.sequence > l) {
                p.missed += header.sequence - last - 1;
            }
            p.last_sequence = Some(header.sequence);
        }
    });
    if known.is_none() {
        state.refuse(Refusal::UnknownNode);
        return None;
    }
    let peer = header.node;
    Some(match message.body {
        Body::Records(records) => Incoming::Records {
            peer,
            bulk: header.kind == Kind::BulkChunk,
            last: header.last,
            records,
        },
        Body::Hello(hello) => Incoming::Hello { peer, hello },
        Body::BulkRequest => Incoming::BulkRequest { peer },
    })
}

/// Applies a peer's records at engine time `now`; counts them on the peer.
/// An upsert already expired on arrival is not applied (the peer's copy
/// would only wait for the next expiry walk).
pub fn apply(
    engine: &Engine,
    state: &ClusterState,
    peer: &str,
    records: Vec<(Op, FlowKey, Conn, Option<Translation>)>,
    now: Timestamp,
) -> Applied {
    let mut counts = Applied::default();
    for (op, key, conn, translation) in records {
        if op == Op::Upsert && conn.expired(now) {
            counts.expired += 1;
            continue;
        }
        let slot = match engine.apply_peer(key, conn, translation, op == Op::Remove, now) {
            engine::Applied::Inserted => &mut counts.inserted,
            engine::Applied::Updated => &mut counts.updated,
            engine::Applied::Removed => &mut counts.removed,
            engine::Applied::Stale => &mut counts.stale,
            engine::Applied::Absent => &mut counts.absent,
            engine::Applied::Full => &mut counts.full,
        };
        *slot += 1;
    }
    state.with_peer(peer, |p| p.applied.add(&counts));
    counts
}

/// Takes a peer's hello: its readiness, table size and digest, compared
/// with this node's (`ours`). A change of agreement is logged once.
pub fn hello(state: &ClusterState, peer: &str, hello: &Hello, ours: &[u8; 32]) {
    let agrees = hello.digest == *ours;
    let before = state.with_peer(peer, |p| {
        let before = p.digest_agrees;
        p.digest = Some(hello.digest);
        p.digest_agrees = Some(agrees);
        p.ready = hello.ready;
        p.connections = hello.connections;
        before
    });
    match (before.flatten(), agrees) {
        (Some(true) | None, false) => warn!(
            peer,
            "cluster: peer {peer} judges packets by other rules or engine settings than this \
             node (policy digest {} here, {} there): a connection it hands over may be \
             judged otherwise here",
            short(ours),
            short(&hello.digest)
        ),
        (Some(false), true) => info!(peer, "cluster: peer {peer} has the same policy again"),
        _ => {}
    }
}

/// The first bytes of a digest, in hex.
pub fn short(digest: &[u8; 32]) -> String {
    digest[..6].iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Writer;
    use crate::wire::{build, TcpFlags};
    use crate::{Config, Context};
    use std::path::Path;

    fn engine() -> Engine {
        let c = Config::parse("[policy]\ndefault = \"accept\"\n", Path::new("r.toml")).unwrap();
        Engine::new(c.engine, c.policy)
    }

    fn state() -> ClusterState {
        ClusterState::new("gw-b", &[], "ctd", &["gw-a".into()])
    }

    /// A SYN 198.18.0.2:`port` → 198.19.0.2:80 on `e` at second 1.
    fn open(e: &Engine, port: u16) {
        let syn = build::tcp(
            format!("198.18.0.2:{port}").parse().unwrap(),
            "198.19.0.2:80".parse().unwrap(),
        )
        .flags(TcpFlags::SYN)
        .build();
        let d = e.decide(&syn, &Context::default(), Timestamp::from_secs(1));
        assert_eq!(d.verdict(), crate::Verdict::Accept);
    }

    fn changes(node: &str, sequence: u64, e: &Engine, now: Timestamp) -> Vec<u8> {
        let mut w = Writer::new(Kind::Changes, node, sequence, 1_000);
        for (key, conn) in e.table().snapshot() {
            w.push(Op::Upsert, &key, &conn, None, now);
        }
        w.finish(false)
    }

    #[test]
    fn a_peers_changes_are_applied_as_peer_entries_and_counted() {
        let (a, b, st) = (engine(), engine(), state());
        open(&a, 40000);
        open(&a, 40001);
        let now = Timestamp::from_secs(2);
        let bytes = changes("gw-a", 1, &a, now);
        let Some(Incoming::Records {
            peer,
            bulk,
            records,
            ..
        }) = read(&st, &bytes, None, now, 1_250)
        else {
            panic!("records");
        };
        assert_eq!((peer.as_str(), bulk, records.len()), ("gw-a", false, 2));
        let applied = apply(&b, &st, &peer, records, now);
        assert_eq!(applied.inserted, 2);
        assert_eq!(b.table().len(), 2);
        assert!(b.table().snapshot().iter().all(|(_, c)| c.peer()));
        // The same again: nothing newer.
        let Some(Incoming::Records { records, .. }) =
            read(&st, &changes("gw-a", 3, &a, now), None, now, 1_300)
        else {
            panic!("records");
        };
        let again = apply(&b, &st, "gw-a", records, now);
        assert_eq!(again.inserted, 0);
        let p = &st.peers()[0];
        assert_eq!((p.messages, p.records_received, p.missed), (2, 4, 1));
        assert_eq!((p.lag_last_ms, p.lag_max_ms), (300, 300));
        assert_eq!(p.applied.total(), 4);
        assert_eq!(p.last_heard_unix_ms, Some(1_300));
        // Expired on arrival: not applied.
        let late = Timestamp::from_secs(1_000_000);
        let Some(Incoming::Records { records, .. }) =
            read(&st, &changes("gw-a", 4, &a, now), None, late, 1)
        else {
            panic!("records");
        };
        let expired = apply(
            &engine(),
            &st,
            "gw-a",
            records,
            late + std::time::Duration::from_secs(1_000_000),
        );
        assert_eq!(expired.expired, 2);
    }

    #[test]
    fn strangers_itself_and_damaged_messages_are_refused_and_counted_never_applied() {
        let (a, st) = (engine(), state());
        open(&a, 40000);
        let now = Timestamp::from_secs(2);
        assert!(read(&st, &changes("gw-x", 1, &a, now), None, now, 0).is_none());
        assert!(read(&st, &changes("gw-b", 1, &a, now), None, now, 0).is_none());
        let mut damaged = changes("gw-a", 1, &a, now);
        let mid = damaged.len() / 2;
        damaged[mid] ^= 0xff;
        assert!(read(&st, &damaged, None, now, 0).is_none());
        assert!(read(&st, b"hello", None, now, 0).is_none());
        let mut other_version = changes("gw-a", 1, &a, now);
        other_version[4] = 99;
        assert!(read(&st, &other_version, None, now, 0).is_none());
        // gw-a's message on gw-b's subject... and on its own.
        let from_a = changes("gw-a", 1, &a, now);
        assert!(read(&st, &from_a, Some("gw-b"), now, 0).is_none());
        assert!(read(&st, &from_a, Some("gw-a"), now, 0).is_some());
        let counts: Vec<u64> = Refusal::ALL.iter().map(|&r| st.refused(r)).collect();
        // malformed, version, unknown node, own node, subject
        assert_eq!(counts, [2, 1, 1, 1, 1]);
        assert_eq!(
            st.peers()[0].messages,
            1,
            "nothing taken from a refused message"
        );
    }

    #[test]
    fn hellos_tell_readiness_and_whether_the_policies_agree() {
        let st = state();
        let ours = cluster::digest("ours");
        let theirs = cluster::digest("theirs");
        let now = Timestamp::from_secs(1);
        for (digest, agrees) in [(theirs, false), (theirs, false), (ours, true)] {
            let bytes = cluster::hello(
                "gw-a",
                1,
                5,
                &Hello {
                    digest,
                    connections: 7,
                    ready: true,
                },
            );
            let Some(Incoming::Hello { peer, hello: h }) = read(&st, &bytes, None, now, 10) else {
                panic!("a hello");
            };
            hello(&st, &peer, &h, &ours);
            let p = &st.peers()[0];
            assert_eq!(
                (p.digest_agrees, p.ready, p.connections),
                (Some(agrees), true, 7)
            );
        }
        let req = cluster::bulk_request("gw-a", 1, 5);
        assert!(matches!(
            read(&st, &req, None, now, 10),
            Some(Incoming::BulkRequest { .. })
        ));
    }
}
