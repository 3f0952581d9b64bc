//! Two cluster threads over a real nats-server (no root needed): a
//! connection decided on one node appears on the other as a peer entry, a
//! node started later gets the table by a bulk copy, a forged or broken
//! message published raw on the subjects is refused and counted, the
//! refresh repairs what a peer lost, a removal reaches the peer, a
//! connection adopted by the peer (a failover) becomes the peer's here, and
//! after a NATS outage what was decided meanwhile arrives and the tables are
//! copied again.
//!
//! Needs nats-server (`NATS_SERVER`, else /usr/bin or /usr/sbin, where
//! Debian puts it): skipped with a message without it, and a failure under
//! `CI=true`.

#![allow(clippy::disallowed_methods)] // not the core: tests, benchmarks and tools read clocks and start threads

use conntrackd::daemon::cluster::{self, ClusterSettings};
use conntrackd::daemon::shared::cluster::{ClusterState, Observers, Refusal};
use conntrackd::daemon::shared::{Shared, StopSwitch};
use conntrackd::wire::{build, TcpFlags};
use conntrackd::{Config, Context, Engine, Verdict};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[path = "common/local_nats.rs"]
mod local_nats;
use local_nats::{free_port, start_server, PASSWORD, USER};

/// nats-server, or `None` with the reason printed (a failure under `CI=true`).
fn nats_server() -> Option<std::path::PathBuf> {
    match local_nats::nats_server() {
        Ok(p) => Some(p),
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "{e}: CI=true needs it"
            );
            eprintln!("SKIPPED: {e}");
            None
        }
    }
}

/// One gateway without its queues: an engine, its shared state and its
/// cluster thread.
struct Gateway {
    engine: Arc<Engine>,
    shared: Arc<Shared>,
    state: Arc<ClusterState>,
    stop: StopSwitch,
    thread: Option<JoinHandle<()>>,
}

impl Gateway {
    fn start(node: &str, peer: &str, port: u16) -> Gateway {
        let rules = format!(
            "[policy]\ndefault = \"accept\"\n[cluster]\nservers = \"nats://127.0.0.1:{port}\"\n\
             node = \"{node}\"\npeers = \"{peer}\"\nsubject = \"ctd-test\"\nuser = \"{USER}\"\n\
             password = \"{PASSWORD}\"\nbulk_timeout_ms = 1500\nrefresh_secs = 1\n"
        );
        let (config, _, settings) = Config::parse_shell::<serde::de::IgnoredAny, ClusterSettings>(
            &rules,
            Path::new("r.toml"),
        )
        .unwrap();
        let settings = settings.unwrap();
        let engine = Arc::new(Engine::new(config.engine, config.policy));
        let shared = Arc::new(Shared::new(Instant::now(), &[0]));
        let state = cluster::state_for(&settings);
        let _ = shared.cluster.set(state.clone());
        engine.table().set_observer(Arc::new(Observers {
            hub: shared.hub.clone(),
            cluster: Some(state.clone()),
        }));
        let stop = StopSwitch::default();
        let thread = cluster::start(
            settings,
            state.clone(),
            engine.clone(),
            shared.clone(),
            stop.stop(),
        )
        .unwrap();
        Gateway {
            engine,
            shared,
            state,
            stop,
            thread: Some(thread),
        }
    }

    /// A whole TCP handshake from 198.18.0.2:`port` to 198.19.0.2:443.
    fn handshake(&self, port: u16) {
        let (c, s): (SocketAddr, SocketAddr) = (
            format!("198.18.0.2:{port}").parse().unwrap(),
            "198.19.0.2:443".parse().unwrap(),
        );
        for packet in [
            build::tcp(c, s).flags(TcpFlags::SYN).seq(1000).build(),
            build::tcp(s, c)
                .flags(TcpFlags::SYN | TcpFlags::ACK)
                .seq(5000)
                .ack(1001)
                .build(),
            build::tcp(c, s)
                .flags(TcpFlags::ACK)
                .seq(1001)
                .ack(5001)
                .build(),
        ] {
            let d = self
                .engine
                .decide(&packet, &Context::default(), self.shared.now());
            assert_eq!(d.verdict(), Verdict::Accept, "{d:?}");
        }
    }

    /// The state of the connection from `port`, and whether it is a peer's copy.
    fn has(&self, port: u16) -> Option<(String, bool)> {
        self.engine
            .lookup(
                6,
                ("198.18.0.2".parse().unwrap(), port),
                ("198.19.0.2".parse().unwrap(), 443),
            )
            .map(|i| (i.state.to_string(), i.peer))
    }

    fn stop(mut self) {
        self.stop.trip();
        let thread = self.thread.take().unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        while !thread.is_finished() {
            assert!(Instant::now() < until, "the cluster thread did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
        thread.join().unwrap();
    }
}

/// Waits up to 10 s for `what`.
fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < until, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Publishes raw bytes on a subject of the server, as a stranger would.
fn publish_raw(port: u16, subject: &str, payload: Vec<u8>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = async_nats::ConnectOptions::new()
            .user_and_password(USER.into(), PASSWORD.into())
            .connect(format!("nats://127.0.0.1:{port}"))
            .await
            .unwrap();
        client
            .publish(subject.to_string(), payload.into())
            .await
            .unwrap();
        client.flush().await.unwrap();
    });
}

#[test]
fn two_gateways_share_their_table_over_nats() {
    let Some(binary) = nats_server() else {
        return;
    };
    let port = free_port();
    let server = start_server(&binary, port, None);

    // A starts alone: no peer answers, so it is ready after the bulk timeout.
    let a = Gateway::start("gw-a", "gw-b", port);
    eventually("A is connected", || {
        a.state.link() == conntrackd::daemon::shared::cluster::Link::Connected
    });
    a.handshake(40000);
    assert!(!a.has(40000).unwrap().1, "A's own connection");

    // B starts later: the bulk copy brings A's table.
    let b = Gateway::start("gw-b", "gw-a", port);
    eventually("B has A's connection from the bulk copy", || {
        b.has(40000).is_some_and(|(_, peer)| peer)
    });
    eventually("B's bulk copy is done", || b.state.ready());
    let copy = b.state.last_bulk.lock().unwrap().clone().unwrap();
    assert_eq!(copy.answered, ["gw-a"], "{copy:?}");
    assert!(copy.missing.is_empty() && copy.records >= 1, "{copy:?}");
    assert_eq!(
        b.has(40000).unwrap().0,
        a.has(40000).unwrap().0,
        "the same state on both"
    );

    // A handshake decided on A now appears on B within a bounded time.
    let started = Instant::now();
    a.handshake(40001);
    eventually("B has A's new connection", || {
        b.has(40001)
            .is_some_and(|(state, peer)| peer && state == a.has(40001).unwrap().0)
    });
    eprintln!("a handshake on A reached B in {:?}", started.elapsed());
    // B does not publish its peer entries back to A as its own.
    assert!(!a.has(40001).unwrap().1);

    // Hellos: the same policy on both.
    eventually("B heard A's hello", || {
        b.state.peers()[0].digest_agrees == Some(true) && b.state.peers()[0].ready
    });

    // Forged: a sealed message from a node that is not a peer, and noise.
    let forged_engine = Engine::new(
        conntrackd::EngineSettings::default(),
        conntrackd::policy::Policy::allow_all(),
    );
    let syn = build::tcp(
        "198.18.0.9:40009".parse().unwrap(),
        "198.19.0.2:443".parse().unwrap(),
    )
    .flags(TcpFlags::SYN)
    .build();
    let now = conntrackd::Timestamp::from_secs(1);
    let _ = forged_engine.decide(&syn, &Context::default(), now);
    let mut w = conntrackd::cluster::Writer::new(conntrackd::cluster::Kind::Changes, "gw-x", 1, 0);
    for (key, conn) in forged_engine.table().snapshot() {
        w.push(conntrackd::cluster::Op::Upsert, &key, &conn, None, now);
    }
    publish_raw(port, "ctd-test.changes.gw-x", w.finish(false));
    publish_raw(
        port,
        "ctd-test.changes.gw-a",
        b"not a cluster message".to_vec(),
    );
    eventually("B refused both", || {
        b.state.refused(Refusal::UnknownNode) >= 1 && b.state.refused(Refusal::Malformed) >= 1
    });
    assert!(
        b.engine
            .lookup(
                6,
                ("198.18.0.9".parse().unwrap(), 40009),
                ("198.19.0.2".parse().unwrap(), 443)
            )
            .is_none(),
        "nothing of a refused message is applied"
    );
    let peer = &b.state.peers()[0];
    assert!(peer.records_received >= 2, "{peer:?}");
    assert!(
        b.state
            .records_sent
            .load(std::sync::atomic::Ordering::Relaxed)
            == 0,
        "B forwards nothing of its own"
    );
    assert!(
        a.state
            .records_sent
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 2
    );

    // The refresh repairs what a peer lost: B forgets, A's next refresh
    // (every second here) brings it back.
    let lost = b.engine.remove_connections(|i| i.peer, b.shared.now());
    assert_eq!(lost, 2);
    eventually("A's refresh brought the connections back to B", || {
        b.has(40000).is_some() && b.has(40001).is_some()
    });

    // A connection A removes is removed on B.
    let killed = a
        .engine
        .remove_connections(|i| i.originator.1 == 40001, a.shared.now());
    assert_eq!(killed, 1);
    eventually("B removed it too", || b.has(40001).is_none());
    assert!(b.has(40000).is_some());

    // Failover: B forwards a packet of A's connection, adopts it, and tells
    // A, whose copy becomes the peer's.
    let ack = build::tcp(
        "198.18.0.2:40000".parse().unwrap(),
        "198.19.0.2:443".parse().unwrap(),
    )
    .flags(TcpFlags::ACK)
    .seq(1001)
    .ack(5001)
    .payload(b"after the failover")
    .build();
    let d = b.engine.decide(&ack, &Context::default(), b.shared.now());
    assert_eq!(d.verdict(), Verdict::Accept, "{d:?}");
    assert!(!b.has(40000).unwrap().1, "B's own now");
    eventually("A's copy is B's now", || {
        a.has(40000).is_some_and(|(_, peer)| peer)
    });

    // An outage: what A decides meanwhile waits in its outbox, and after the
    // reconnect each node asks for the other's table again.
    drop(server);
    let link = conntrackd::daemon::shared::cluster::Link::Connected;
    eventually("both see the outage", || {
        a.state.link() != link && b.state.link() != link
    });
    let before = b
        .state
        .last_bulk
        .lock()
        .unwrap()
        .clone()
        .unwrap()
        .started_unix_ms;
    a.handshake(40002);
    let _server = start_server(&binary, port, None);
    eventually("B has what A decided during the outage", || {
        b.has(40002).is_some_and(|(_, peer)| peer)
    });
    eventually("B copied A's table again after the reconnect", || {
        b.state
            .last_bulk
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|c| c.started_unix_ms > before && c.answered == ["gw-a"])
    });
    assert_eq!(
        a.state.dropped.load(std::sync::atomic::Ordering::Relaxed),
        0
    );

    a.stop();
    b.stop();
}
