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
    self, Failover, NatsClient, Ns, Pair, PairConfig, Side, TcpEcho, NATS_NODE_PASSWORD,
    NATS_PASSWORD, NATS_USER,
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
            ..PairConfig::default()
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
            ..PairConfig::default()
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
            ..PairConfig::default()
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

// ---- conntrackd on both gateways, sharing their tables over NATS ----------

/// A drop-by-default policy: only the echo port may be opened, so a
/// connection a gateway does not know is dropped there (`no_connection`).
const RULES: &str = r#"
[policy]
default = "drop"

[[rule]]
name = "echo"
action = "accept"
proto = "tcp"
dst_ports = [8080, 8081]
"#;

/// The rules of one gateway: [`RULES`], and a `[cluster]` table naming its
/// own nats-server first and the other's over the sync link second.
fn gateway_rules(pair: &Pair, side: Side, cluster: bool) -> std::path::PathBuf {
    let me = side.letter();
    let other = side.other().letter();
    let mut text = RULES.to_string();
    if cluster {
        text += &format!(
            r#"
[cluster]
servers = ["nats://127.0.0.1:4222", "nats://{peer}:4222"]
node = "gw-{me}"
peers = ["gw-{other}"]
user = "gw-{me}"
password = "{NATS_NODE_PASSWORD}"
"#,
            peer = side.other().sync4(),
        );
    }
    pair.write_file(&format!("rules-{me}.toml"), &text)
}

/// Starts conntrackd on a gateway, every forwarded packet queued to it.
fn start_gateway(pair: &Pair, side: Side, cluster: bool) -> lab::Daemon {
    let gw = pair.gw(side);
    if !gw.ruleset(false).contains("NFQUEUE") {
        for v6 in [false, true] {
            gw.iptables(v6, "-I FORWARD -j NFQUEUE --queue-num 0");
        }
    }
    let rules = gateway_rules(pair, side, cluster);
    pair.start_daemon(side, &["--rules", rules.to_str().expect("a UTF-8 path")])
}

/// `conntrackd flows --json` on a gateway: one object per connection.
fn flows(pair: &Pair, side: Side) -> Vec<serde_json::Value> {
    let (ok, out) = lab::ctl(&pair.control_socket(side), &["flows", "--json"]);
    assert!(ok, "flows on {side:?}: {out}");
    lab::json_lines(&out)
        .into_iter()
        .filter(|v| v.get("state").is_some())
        .collect()
}

/// Waits until `side` holds `n` peer copies of connections to `port`; bounded.
fn wait_copies(pair: &Pair, side: Side, port: u16, n: usize, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let copies = flows(pair, side)
            .iter()
            .filter(|f| f["peer"] == true && f["dport"] == port)
            .count();
        if copies >= n {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "{side:?} holds {copies} of {n} copies to port {port} after {timeout:?}: {:#?}",
            flows(pair, side)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `conntrackd cluster --json` on a gateway.
fn cluster_state(pair: &Pair, side: Side) -> serde_json::Value {
    let (ok, out) = lab::ctl(&pair.control_socket(side), &["cluster", "--json"]);
    assert!(ok, "cluster on {side:?}: {out}");
    lab::json_lines(&out).pop().expect("an answer")
}

/// Echo servers on the server, IPv4 and IPv6, on [`PORT`].
fn echoes(pair: &Pair) -> [TcpEcho; 2] {
    [v4(PORT), v6(PORT)].map(|at| TcpEcho::start(&pair.server, at))
}

/// conntrackd on both gateways (with `[cluster]` or without), once A holds
/// the virtual addresses (keepalived tracks conntrackd).
fn gateways(pair: &Pair, cluster: bool) -> [lab::Daemon; 2] {
    let a = start_gateway(pair, Side::A, cluster);
    let b = start_gateway(pair, Side::B, cluster);
    pair.wait_master(Side::A, Duration::from_secs(15));
    [a, b]
}

fn tracked_pair(test: &str) -> Option<Pair> {
    Pair::with(
        test,
        PairConfig {
            track_conntrackd: true,
            ..PairConfig::default()
        },
    )
}

/// The failover the way operators run it: keepalived moves the virtual
/// addresses on both sides when A fails (its conntrackd SIGKILLed, its
/// links down). Connections established through A, with data both ways,
/// go on through B, whose policy drops any connection it does not know;
/// new connections open through B; when A comes back it copies B's table
/// (keepalived's track script waits for that: `conntrackd status`) and
/// takes the connections back. IPv4 and IPv6.
#[test]
#[ignore = "needs root: network namespaces, keepalived, nats-server, iptables"]
fn connections_survive_a_failover_and_the_way_back() {
    let test = "connections_survive_a_failover_and_the_way_back";
    let Some(pair) = tracked_pair(test) else {
        return;
    };
    let _echo = echoes(&pair);
    let [mut a, _b] = gateways(&pair, true);

    let conns = connections(&pair);
    exchange_through(&pair, Side::A, &conns, 0x10);
    let copied = wait_copies(&pair, Side::B, PORT, 2, Duration::from_secs(5));
    eprintln!("{test}: B held copies of both connections {copied:?} after the exchange");

    let failed_at = Instant::now();
    a.kill9();
    pair.fail(Side::A);
    let moved = pair.wait_master(Side::B, FAILOVER_LIMIT);
    let carried = exchange_after_failover(&conns, failed_at, 0x20);
    eprintln!(
        "{test}: B took over {moved:?} after A failed, connections carried data after {carried:?}"
    );
    exchange_through(&pair, Side::B, &conns, 0x30);
    let adopted = flows(&pair, Side::B)
        .iter()
        .filter(|f| f["dport"] == PORT && f["peer"] != true)
        .count();
    assert_eq!(
        adopted,
        2,
        "B adopted both connections: {:#?}",
        flows(&pair, Side::B)
    );
    for to in [v4(PORT), v6(PORT)] {
        lab::tcp_session(&pair.client, to, N)
            .unwrap_or_else(|e| panic!("a new connection to {to} through B: {e}"));
    }

    // A comes back: a fresh conntrackd copies B's table before it reports
    // ready, and only then does keepalived give it the addresses back.
    pair.recover(Side::A);
    let _a = start_gateway(&pair, Side::A, true);
    let back = pair.wait_master(Side::A, Duration::from_secs(15));
    let carried = exchange_after_failover(&conns, Instant::now(), 0x40);
    eprintln!("{test}: A master again {back:?} after its restart; connections carried data after {carried:?}");
    exchange_through(&pair, Side::A, &conns, 0x50);
    let bulk = &cluster_state(&pair, Side::A)["last_bulk_copy"];
    assert!(
        bulk["records"].as_u64().unwrap_or(0) >= 2,
        "A's bulk copy from B: {bulk}"
    );
    for s in conns {
        lab::close(s).expect("a clean close after both failovers");
    }
}

/// The control: the same failover without `[cluster]` cuts the
/// connections, since B's policy drops what it does not know.
#[test]
#[ignore = "needs root: network namespaces, keepalived, iptables"]
fn without_a_cluster_the_failover_cuts_the_connections() {
    let test = "without_a_cluster_the_failover_cuts_the_connections";
    let Some(pair) = Pair::with(
        test,
        PairConfig {
            nats: false,
            track_conntrackd: true,
            ..PairConfig::default()
        },
    ) else {
        return;
    };
    let _echo = echoes(&pair);
    let [mut a, _b] = gateways(&pair, false);
    let conns = connections(&pair);
    exchange_through(&pair, Side::A, &conns, 0x10);
    a.kill9();
    pair.fail(Side::A);
    pair.wait_master(Side::B, FAILOVER_LIMIT);
    for (i, s) in conns.iter().enumerate() {
        let r = lab::exchange_within(s, N, 0x20 ^ i as u8, Duration::from_secs(5));
        assert!(
            r.is_err(),
            "connection {i} went on through B without a copy"
        );
    }
    let (_, why) = lab::ctl(&pair.control_socket(Side::B), &["drops", "--json"]);
    assert!(why.contains("no_connection"), "B's drops: {why}");
    for to in [v4(PORT), v6(PORT)] {
        lab::tcp_session(&pair.client, to, N)
            .unwrap_or_else(|e| panic!("a new connection to {to} through B: {e}"));
    }
}

/// B starts after the connections were made: its bulk copy brings them
/// before it reports ready, and the failover after that keeps them.
#[test]
#[ignore = "needs root: network namespaces, keepalived, nats-server, iptables"]
fn a_gateway_started_later_copies_the_table_then_takes_over() {
    let test = "a_gateway_started_later_copies_the_table_then_takes_over";
    let Some(pair) = tracked_pair(test) else {
        return;
    };
    let _echo = echoes(&pair);
    let mut a = start_gateway(&pair, Side::A, true);
    pair.wait_master(Side::A, Duration::from_secs(15));
    let conns = connections(&pair);
    exchange_through(&pair, Side::A, &conns, 0x10);

    let _b = start_gateway(&pair, Side::B, true);
    // Ready means the copy is done: the copies are there at once.
    let (ready, status) = lab::ctl(&pair.control_socket(Side::B), &["status"]);
    let waited = Instant::now();
    let mut ready = ready;
    while !ready && waited.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        ready = lab::ctl(&pair.control_socket(Side::B), &["status"]).0;
    }
    assert!(ready, "B never ready: {status}");
    wait_copies(&pair, Side::B, PORT, 2, Duration::ZERO);
    let bulk = &cluster_state(&pair, Side::B)["last_bulk_copy"];
    assert!(
        bulk["records"].as_u64().unwrap_or(0) >= 2,
        "B's bulk copy: {bulk}"
    );

    let failed_at = Instant::now();
    a.kill9();
    pair.fail(Side::A);
    pair.wait_master(Side::B, FAILOVER_LIMIT);
    exchange_after_failover(&conns, failed_at, 0x20);
    exchange_through(&pair, Side::B, &conns, 0x30);
}

/// NATS down for 10 s while traffic flows: A keeps forwarding and opens
/// new connections; once NATS is back they reach B, and survive a
/// failover after that.
#[test]
#[ignore = "needs root: network namespaces, keepalived, nats-server, iptables"]
fn a_nats_outage_loses_nothing() {
    let test = "a_nats_outage_loses_nothing";
    let Some(pair) = tracked_pair(test) else {
        return;
    };
    let _echo = echoes(&pair);
    let [mut a, _b] = gateways(&pair, true);
    let before = connections(&pair);
    exchange_through(&pair, Side::A, &before, 0x10);
    wait_copies(&pair, Side::B, PORT, 2, Duration::from_secs(5));

    for side in Side::BOTH {
        pair.stop_nats(side);
    }
    let outage = Instant::now();
    let mut during = Vec::new();
    let mut rounds = 0u8;
    while outage.elapsed() < Duration::from_secs(10) {
        exchange_through(&pair, Side::A, &before, 0x20 ^ rounds);
        if during.len() < 4 {
            during.extend(connections(&pair));
        }
        rounds = rounds.wrapping_add(1);
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(
        during.len(),
        4,
        "connections opened through A during the outage"
    );
    for side in Side::BOTH {
        pair.start_nats(side);
    }
    pair.wait_nats_cluster(Duration::from_secs(20));
    let healed = wait_copies(&pair, Side::B, PORT, 6, Duration::from_secs(20));
    eprintln!("{test}: B held all 6 connections {healed:?} after NATS came back");

    let failed_at = Instant::now();
    a.kill9();
    pair.fail(Side::A);
    pair.wait_master(Side::B, FAILOVER_LIMIT);
    for (i, two) in [&before[..], &during[..2], &during[2..]]
        .into_iter()
        .enumerate()
    {
        let conns: &[TcpStream; 2] = two.try_into().expect("two connections");
        let since = if i == 0 { failed_at } else { Instant::now() };
        exchange_after_failover(conns, since, 0x30);
    }
}

/// A message as a forger on the NATS link would send it: `node` claims to
/// have sent it, with one record of a UDP flow 198.18.0.99:7 ->
/// 198.19.0.2:8081 that no one opened.
fn forged(node: &str) -> Vec<u8> {
    use conntrackd::cluster::{Kind, Op, Writer};
    use conntrackd::conntrack::{table::Proto, Conn, FlowKey};
    let (key, side) = FlowKey::new(
        17,
        "198.18.0.99".parse().unwrap(),
        7,
        lab::SERVER4.into(),
        8081,
    );
    let mut conn = Conn::new(Proto::Udp, side, false);
    conn.set_timeout(conntrackd::Timestamp::ZERO, 3600);
    let mut w = Writer::new(Kind::Changes, node, 1, 0);
    w.push(Op::Upsert, &key, &conn, None, conntrackd::Timestamp::ZERO);
    w.finish(false)
}

/// With the checksum made again over `bytes` changed by `edit` (a forger
/// who knows the format).
fn resealed(mut bytes: Vec<u8>, edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    bytes.truncate(bytes.len() - 4);
    edit(&mut bytes);
    let crc = crc32fast::hash(&bytes);
    bytes.extend_from_slice(&crc.to_le_bytes());
    bytes
}

/// Whatever a forger publishes on the cluster's subjects is refused and
/// counted by reason, never applied: garbage, a cut message, another format
/// version, a node that is not a configured peer, the receiver's own name,
/// a peer's name on another node's subject.
/// B's table is unchanged throughout, and the real peer's records still pass.
#[test]
#[ignore = "needs root: network namespaces, nats-server, iptables"]
fn forged_messages_are_refused_and_counted() {
    let test = "forged_messages_are_refused_and_counted";
    let Some(pair) = Pair::with(
        test,
        PairConfig {
            failover: Failover::Manual,
            ..PairConfig::default()
        },
    ) else {
        return;
    };
    let _echo4 = TcpEcho::start(&pair.server, v4(PORT));
    let _a = start_gateway(&pair, Side::A, true);
    let _b = start_gateway(&pair, Side::B, true);
    let conn = lab::connect(&pair.client, v4(PORT), Duration::from_secs(5)).expect("connect");
    lab::exchange(&conn, 1024, 1).expect("exchange through A");
    wait_copies(&pair, Side::B, PORT, 1, Duration::from_secs(5));
    let table = |pair: &Pair| {
        let mut f: Vec<String> = flows(pair, Side::B)
            .iter()
            .map(|f| format!("{} {} {}", f["src"], f["dst"], f["dport"]))
            .collect();
        f.sort();
        f
    };
    let before = table(&pair);

    let good = forged("gw-a");
    let cut = good[..good.len() / 2].to_vec();
    let other_version = resealed(good.clone(), |b| b[4] = 2);
    let mut nats = pair
        .nats_client(Side::A, Side::A, NATS_USER, NATS_PASSWORD)
        .expect("a NATS login on A's server");
    let sends: [(&str, Vec<u8>, &str); 6] = [
        (
            "conntrackd.changes.gw-a",
            b"GARBAGE, NOT A MESSAGE".to_vec(),
            "malformed",
        ),
        ("conntrackd.changes.gw-a", cut, "malformed"),
        ("conntrackd.changes.gw-a", other_version, "version"),
        ("conntrackd.changes.gw-x", forged("gw-x"), "unknown_node"),
        ("conntrackd.changes.gw-b", forged("gw-b"), "own_node"),
        // A's name on another node's subject: what per-node publish
        // permissions leave a forger holding another node's credentials.
        ("conntrackd.changes.gw-c", forged("gw-a"), "subject"),
    ];
    let refused = |pair: &Pair, reason: &str| -> u64 {
        cluster_state(pair, Side::B)["refused"][reason]
            .as_u64()
            .unwrap_or(0)
    };
    for (subject, bytes, reason) in sends {
        let was = refused(&pair, reason);
        nats.publish(subject, &bytes).expect("PUB");
        nats.flush(Duration::from_secs(2)).expect("flush");
        let start = Instant::now();
        while refused(&pair, reason) == was {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{reason}: not counted after 5 s: {}",
                cluster_state(&pair, Side::B)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            table(&pair),
            before,
            "B's table changed after a {reason} message"
        );
    }
    // With the per-node logins of the README's NATS configuration, gw-a's
    // credentials cannot even publish on gw-b's subject: the server refuses.
    let mut as_a = pair
        .nats_client(Side::A, Side::A, "gw-a", NATS_NODE_PASSWORD)
        .expect("gw-a's NATS login");
    as_a.publish("conntrackd.changes.gw-b", &forged("gw-b"))
        .expect("PUB");
    let refused = as_a.flush(Duration::from_secs(2));
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("Permissions Violation")),
        "the server took gw-a's publication on gw-b's subject: {refused:?}"
    );
    // The real peer still gets through.
    let second = lab::connect(&pair.client, v4(PORT), Duration::from_secs(5)).expect("connect");
    lab::exchange(&second, 1024, 2).expect("exchange through A");
    wait_copies(&pair, Side::B, PORT, 2, Duration::from_secs(5));
}
