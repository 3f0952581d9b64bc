//! Two gateways in failover (tests/common/lab/pair.rs): the lab itself, for
//! now. A TCP connection through gateway A survives A's failure with plain
//! forwarding and is cut by a strict kernel conntrack (the control that
//! shows a failover is a real test of state sharing); the two nats-servers
//! form a cluster with logins over the sync link.
//!
//! Needs root, keepalived and nats-server, so the tests are `#[ignore]`d: run
//! them as root with `CI=true cargo test --test cluster -- --include-ignored`
//! (without root they print why they skip, and fail under `CI=true`).

#![allow(clippy::disallowed_methods)] // not the core: tests, benchmarks and tools read clocks and start threads

mod common;

use common::lab::{
    self, Failover, NatsClient, Ns, Pair, PairConfig, Side, TcpEcho, NATS_PASSWORD, NATS_USER,
};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

fn v4(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(lab::SERVER4), port)
}

fn v6(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(lab::SERVER6), port)
}

const PORT: u16 = 8080;
/// Bytes each way per exchange.
const N: usize = 256 * 1024;
/// How long a failover may take, from the failure to the first exchange
/// through the other gateway.
const FAILOVER_LIMIT: Duration = Duration::from_secs(3);

/// Connections to the echo servers, v4 and v6, through whichever gateway
/// holds the virtual addresses.
fn connections(pair: &Pair) -> [TcpStream; 2] {
    [v4(PORT), v6(PORT)].map(|to| {
        lab::connect(&pair.client, to, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to {to}: {e}"))
    })
}

/// Exchanges on both connections until one round went through `side` alone
/// (it forwarded, the other gateway forwarded nothing meanwhile); a bounded
/// number of rounds. Panics when the exchanges fail or never do.
fn exchange_through(pair: &Pair, side: Side, conns: &[TcpStream; 2], salt: u8) {
    for round in 0..20u8 {
        let before = [pair.forwarded(side), pair.forwarded(side.other())];
        for (i, s) in conns.iter().enumerate() {
            lab::exchange_within(s, N, salt ^ round ^ i as u8, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("exchange {i} (round {round}) through {side:?}: {e}"));
        }
        let after = [pair.forwarded(side), pair.forwarded(side.other())];
        if after[0] > before[0] && after[1] == before[1] {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("20 rounds of exchanges, none through gateway {side:?} alone");
}

/// Exchanges on both connections at once after a failure, each within
/// `FAILOVER_LIMIT` of `failed_at`; how long since `failed_at` both took.
fn exchange_after_failover(conns: &[TcpStream; 2], failed_at: Instant, salt: u8) -> Duration {
    let left = FAILOVER_LIMIT.saturating_sub(failed_at.elapsed());
    std::thread::scope(|scope| {
        let runs: Vec<_> = conns
            .iter()
            .enumerate()
            .map(|(i, s)| {
                scope.spawn(move || {
                    lab::exchange_within(s, N, salt ^ i as u8, left).map_err(|e| (i, e))
                })
            })
            .collect();
        for run in runs {
            if let Err((i, e)) = run.join().expect("exchange thread") {
                panic!(
                    "connection {i} did not carry data within {FAILOVER_LIMIT:?} of the failure: {e}"
                );
            }
        }
    });
    failed_at.elapsed()
}

fn fails_over(test: &str, failover: Failover) {
    let Some(pair) = Pair::with(
        test,
        PairConfig {
            failover,
            nats: false,
        },
    ) else {
        return;
    };
    let _echo4 = TcpEcho::start(&pair.server, v4(PORT));
    let _echo6 = TcpEcho::start(&pair.server, v6(PORT));
    let conns = connections(&pair);
    exchange_through(&pair, Side::A, &conns, 0x10);

    let failed_at = Instant::now();
    pair.fail(Side::A);
    let moved = pair.wait_master(Side::B, FAILOVER_LIMIT);
    let carried = exchange_after_failover(&conns, failed_at, 0x20);
    eprintln!(
        "{test}: B held the virtual addresses {moved:?} after A failed; \
         both connections carried data again after {carried:?}"
    );
    exchange_through(&pair, Side::B, &conns, 0x30);
    for to in [v4(PORT), v6(PORT)] {
        lab::tcp_session(&pair.client, to, N)
            .unwrap_or_else(|e| panic!("a new connection to {to} through B: {e}"));
    }

    let recovered_at = Instant::now();
    pair.recover(Side::A);
    let back = pair.wait_master(Side::A, FAILOVER_LIMIT);
    let carried = exchange_after_failover(&conns, recovered_at, 0x40);
    eprintln!(
        "{test}: A took the virtual addresses back {back:?} after it recovered; \
         both connections carried data after {carried:?}"
    );
    exchange_through(&pair, Side::A, &conns, 0x50);
    for s in conns {
        lab::close(s).expect("a clean close after both failovers");
    }
}

#[test]
#[ignore = "needs root: network namespaces, keepalived"]
fn the_pair_lab_fails_over_with_plain_forwarding() {
    fails_over(
        "the_pair_lab_fails_over_with_plain_forwarding",
        Failover::Keepalived,
    );
}

#[test]
#[ignore = "needs root: network namespaces"]
fn the_pair_lab_fails_over_by_hand_without_keepalived() {
    fails_over(
        "the_pair_lab_fails_over_by_hand_without_keepalived",
        Failover::Manual,
    );
}

/// The kernel's conntrack as strict as it gets: only SYNs open connections,
/// packets of connections it does not know are dropped.
fn strict_kernel_conntrack(gw: &Ns) {
    for v6 in [false, true] {
        for rule in [
            "-P FORWARD DROP",
            "-A FORWARD -m conntrack --ctstate INVALID -j DROP",
            "-A FORWARD -p tcp ! --syn -m conntrack --ctstate NEW -j DROP",
            "-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
            "-A FORWARD -m conntrack --ctstate NEW -j ACCEPT",
        ] {
            gw.iptables(v6, rule);
        }
    }
    // The conntrack rules loaded nf_conntrack: its sysctls exist now.
    gw.sysctl("net.netfilter.nf_conntrack_tcp_loose", "0");
    gw.sysctl("net.netfilter.nf_conntrack_tcp_be_liberal", "0");
}

#[test]
#[ignore = "needs root: network namespaces, keepalived, iptables"]
fn kernel_strict_conntrack_cuts_the_connection_at_failover() {
    let test = "kernel_strict_conntrack_cuts_the_connection_at_failover";
    let Some(pair) = Pair::with(
        test,
        PairConfig {
            failover: Failover::Keepalived,
            nats: false,
        },
    ) else {
        return;
    };
    for side in Side::BOTH {
        strict_kernel_conntrack(pair.gw(side));
    }
    let _echo4 = TcpEcho::start(&pair.server, v4(PORT));
    let _echo6 = TcpEcho::start(&pair.server, v6(PORT));
    let conns = connections(&pair);
    exchange_through(&pair, Side::A, &conns, 0x10);

    pair.fail(Side::A);
    pair.wait_master(Side::B, FAILOVER_LIMIT);
    // B's conntrack never saw these connections: their packets are INVALID
    // there (no SYN, nf_conntrack_tcp_loose=0) and dropped. Bounded: well
    // past the time plain forwarding needed to carry them again.
    for (i, s) in conns.iter().enumerate() {
        let started = Instant::now();
        let r = lab::exchange_within(s, N, 0x20 ^ i as u8, Duration::from_secs(5));
        assert!(
            r.is_err(),
            "connection {i} established through A still carried data through B"
        );
        eprintln!(
            "{test}: connection {i} cut at failover ({} after {:?})",
            r.unwrap_err(),
            started.elapsed()
        );
    }
    // New connections through B: their SYNs open them in B's conntrack.
    for to in [v4(PORT), v6(PORT)] {
        lab::tcp_session(&pair.client, to, N)
            .unwrap_or_else(|e| panic!("a new connection to {to} through B: {e}"));
    }
}

/// Publishes on `from` until `to`, subscribed to `subject`, receives it (the
/// cluster propagates a subscription's interest asynchronously); bounded.
/// How long it took.
fn relay(from: &mut NatsClient, to: &mut NatsClient, subject: &str, tag: &str) -> Duration {
    let start = Instant::now();
    for attempt in 0..50 {
        let payload = format!("{tag} #{attempt}");
        from.publish(subject, payload.as_bytes()).expect("PUB");
        from.flush(Duration::from_secs(2)).expect("PING after PUB");
        // Messages of earlier attempts may arrive late: any of this tag counts.
        let deadline = Instant::now() + Duration::from_millis(200);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match to.next_msg(left).expect("reading MSG") {
                Some(m) if m.subject == subject && m.payload.starts_with(tag.as_bytes()) => {
                    return start.elapsed();
                }
                Some(_) => continue,
                None => break,
            }
        }
    }
    panic!("{tag}: no message on {subject} after 50 publications");
}

#[test]
#[ignore = "needs root: network namespaces, nats-server"]
fn the_pair_labs_nats_servers_cluster_with_passwords() {
    let test = "the_pair_labs_nats_servers_cluster_with_passwords";
    let Some(pair) = Pair::with(
        test,
        PairConfig {
            failover: Failover::Manual,
            nats: true,
        },
    ) else {
        return;
    };
    assert_eq!(pair.nats_routes(Side::A), Some(1));
    assert_eq!(pair.nats_routes(Side::B), Some(1));
    assert_eq!(
        pair.nats_url(Side::A),
        format!("nats://{NATS_USER}:{NATS_PASSWORD}@127.0.0.1:4222")
    );

    let login = |from: Side, server: Side| {
        pair.nats_client(from, server, NATS_USER, NATS_PASSWORD)
            .unwrap_or_else(|e| panic!("login from {from:?} to {server:?}'s nats-server: {e}"))
    };
    // Each gateway's own server on 127.0.0.1; A also reaches B's over the sync link.
    let mut on_a = login(Side::A, Side::A);
    let mut on_b = login(Side::B, Side::B);
    let mut a_to_b = login(Side::A, Side::B);
    assert_eq!(on_a.info["server_name"], "gw-a", "{}", on_a.info);
    assert_eq!(a_to_b.info["server_name"], "gw-b", "{}", a_to_b.info);
    on_a.subscribe("ctd.lab.a", 1).unwrap();
    on_a.flush(Duration::from_secs(2)).unwrap();
    on_b.subscribe("ctd.lab.b", 2).unwrap();
    on_b.flush(Duration::from_secs(2)).unwrap();
    let t = relay(&mut on_b, &mut on_a, "ctd.lab.a", "B to A");
    eprintln!("{test}: B's server to A's subscriber in {t:?}");
    relay(&mut on_a, &mut on_b, "ctd.lab.b", "A to B");
    relay(
        &mut a_to_b,
        &mut on_a,
        "ctd.lab.a",
        "A over the sync link to B, back to A",
    );

    // A wrong password is refused, on 127.0.0.1 and on the sync link.
    for (from, server) in [(Side::A, Side::A), (Side::B, Side::A), (Side::A, Side::B)] {
        match pair.nats_client(from, server, NATS_USER, "not the password") {
            Ok(_) => panic!("{server:?}'s nats-server took a wrong password"),
            Err(e) => assert!(
                e.to_string().contains("Authorization Violation"),
                "{from:?} to {server:?}: {e}"
            ),
        }
    }

    // An outage of B's server: A loses its route; B back, the cluster re-forms.
    drop((on_b, a_to_b));
    pair.stop_nats(Side::B);
    pair.wait_nats_routes(Side::A, 0, Duration::from_secs(10));
    assert_eq!(pair.nats_routes(Side::B), None, "B's server is down");
    let down_at = Instant::now();
    pair.start_nats(Side::B);
    let formed = pair.wait_nats_cluster(Duration::from_secs(20));
    eprintln!(
        "{test}: cluster re-formed {formed:?} after B's server was started ({:?} in all)",
        down_at.elapsed()
    );
    let mut on_b = login(Side::B, Side::B);
    on_b.subscribe("ctd.lab.b", 3).unwrap();
    on_b.flush(Duration::from_secs(2)).unwrap();
    relay(&mut on_b, &mut on_a, "ctd.lab.a", "B to A again");
    relay(&mut on_a, &mut on_b, "ctd.lab.b", "A to B again");
}
