//! `action = "reject"` through the real gateway (tests/common/lab/): a real
//! client's TCP connect() is refused at once by the gateway's RST and its
//! connected UDP socket hears the gateway's ICMP port unreachable, over IPv4
//! and IPv6, while `drop` leaves the client to its timeout; the answers
//! leave the gateway without being queued back to conntrackd; and they are
//! held to `reject_rate`.
//!
//! The namespace tests need root, so they are `#[ignore]`d; see tests/daemon.rs.

#![allow(clippy::disallowed_methods)] // not the core: tests read clocks and start threads

mod common;

use common::lab::{self, Lab, RawSender, Sniffer, TcpEcho, UdpEcho};
use conntrackd::wire::{self, build, Framing, TcpFlags as F};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

const REJECT_TCP: u16 = 8101;
const DROP_TCP: u16 = 8102;
const REJECT_UDP: u16 = 8103;
const DROP_UDP: u16 = 8104;

fn v4(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(lab::SERVER4), port)
}

fn v6(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(lab::SERVER6), port)
}

fn rules(rate: u32) -> String {
    format!(
        r#"
[policy]
default = "drop"

[[rule]]
name = "reject-tcp"
action = "reject"
proto = "tcp"
dst_ports = [{REJECT_TCP}]

[[rule]]
name = "drop-tcp"
action = "drop"
proto = "tcp"
dst_ports = [{DROP_TCP}]

[[rule]]
name = "reject-udp"
action = "reject"
proto = "udp"
dst_ports = [{REJECT_UDP}]

[daemon]
reject_rate = {rate}
stats_interval = 1
"#
    )
}

/// `conntrackd stats --json` of the lab's daemon.
fn stats(lab: &Lab) -> serde_json::Value {
    lab::stats(&lab.control_socket())
}

fn count(stats: &serde_json::Value, key: &str) -> u64 {
    stats[key].as_u64().unwrap_or(0)
}

/// Polls the stats (workers publish about once a second) until `done` holds.
fn stats_until(
    lab: &Lab,
    timeout: Duration,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        let s = stats(lab);
        if done(&s) || Instant::now() > deadline {
            return s;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[ignore = "needs root: network namespaces, NFQUEUE, iptables"]
fn reject_refuses_tcp_and_udp_at_once_over_ipv4_and_ipv6_where_drop_times_out() {
    let Some(lab) = Lab::new("reject") else {
        return;
    };
    let rules = lab.write_rules("rules.toml", &rules(100));
    // conntrackd's own hooks (FORWARD only): the answers, sent from the
    // gateway itself, go through OUTPUT and are not queued back.
    let mut d = lab.start_daemon(&["--rules", rules.to_str().unwrap(), "--install-iptables"]);
    assert!(
        d.log_lines("raw socket").is_empty(),
        "the raw socket opened:\n{}",
        d.log()
    );
    // Listeners behind every port: a refusal can only be the gateway's,
    // and what passed would be answered.
    let mut servers = Vec::new();
    for to in [v4(REJECT_TCP), v6(REJECT_TCP), v4(DROP_TCP), v6(DROP_TCP)] {
        servers.push(TcpEcho::start(&lab.server, to));
    }
    let _udp = [
        UdpEcho::start(&lab.server, v4(REJECT_UDP)),
        UdpEcho::start(&lab.server, v6(REJECT_UDP)),
        UdpEcho::start(&lab.server, v4(DROP_UDP)),
        UdpEcho::start(&lab.server, v6(DROP_UDP)),
    ];

    for (family, to, dropped) in [
        ("IPv4", v4(REJECT_TCP), v4(DROP_TCP)),
        ("IPv6", v6(REJECT_TCP), v6(DROP_TCP)),
    ] {
        let started = Instant::now();
        let refused = lab::connect(&lab.client, to, Duration::from_secs(10));
        let took = started.elapsed();
        match refused {
            Ok(_) => panic!("{family}: connected to the rejected port {to}"),
            Err(e) => assert_eq!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused,
                "{family}: {to}: {e}"
            ),
        }
        assert!(
            took < Duration::from_secs(2),
            "{family}: refused after {took:?}, not at once"
        );
        // The control: a dropped SYN leaves the client to its timeout.
        let started = Instant::now();
        match lab::connect(&lab.client, dropped, Duration::from_secs(1)) {
            Ok(_) => panic!("{family}: connected to the dropped port {dropped}"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{family}: {e}"),
        }
        assert!(started.elapsed() >= Duration::from_millis(900));
    }
    for (family, to, dropped) in [
        ("IPv4", v4(REJECT_UDP), v4(DROP_UDP)),
        ("IPv6", v6(REJECT_UDP), v6(DROP_UDP)),
    ] {
        assert!(
            lab::udp_refused(&lab.client, to, Duration::from_secs(3)),
            "{family}: the connected UDP socket got no ECONNREFUSED from {to}"
        );
        assert!(
            !lab::udp_refused(&lab.client, dropped, Duration::from_secs(1)),
            "{family}: a dropped datagram was refused"
        );
    }

    let s = stats_until(&lab, Duration::from_secs(5), |s| {
        count(s, "rejects_sent") >= 4
    });
    assert!(count(&s, "rejects_sent") >= 4, "{s}");
    assert_eq!(count(&s, "rejects_failed"), 0, "{s}");
    assert_eq!(count(&s, "rejects_rate_limited"), 0, "{s}");
    let reasons = &s["reasons"];
    assert!(count(reasons, "reject_by_rule") >= 4, "{s}");
    assert!(count(reasons, "drop_by_rule") >= 2, "{s}");
    // Had the answers been queued to conntrackd, they would have been judged:
    // a RST and ICMP errors belonging to no connection.
    for reason in ["no_connection", "icmp_error_unrelated"] {
        assert_eq!(count(reasons, reason), 0, "{reason}: {s}");
    }
    assert!(d.stop().success(), "{}", d.log());
    let stopped = d.wait_log("stopped", Duration::from_secs(1));
    assert!(
        lab::Daemon::counter(&stopped, "rejects_sent") >= 4,
        "{stopped}"
    );
}

#[test]
#[ignore = "needs root: network namespaces, NFQUEUE, iptables"]
fn reject_answers_are_held_to_the_rate_and_acknowledge_the_syn() {
    let Some(lab) = Lab::new("reject_rate") else {
        return;
    };
    lab.add_nfqueue_rule("0", true);
    lab.drop_crafted_at_hosts();
    // One a second: a burst of two, then one a second.
    let rules = lab.write_rules("rules.toml", &rules(1));
    let _d = lab.start_daemon(&["--rules", rules.to_str().unwrap()]);
    let at_client = Sniffer::new(&lab.client, lab::HOST_IF);
    let from_client = RawSender::new(&lab.client);
    let client = |port: u16| SocketAddr::new(IpAddr::V4(lab::CLIENT4), port);
    const SYNS: u16 = 20;
    for i in 0..SYNS {
        let syn = build::tcp(client(40100 + i), v4(REJECT_TCP))
            .flags(F::SYN)
            .seq(1000 + u32::from(i))
            .build();
        from_client.send(&syn);
    }
    let resets = |p: &[u8]| {
        let Ok(p) = wire::parse(p, Framing::default()) else {
            return false;
        };
        p.src == IpAddr::V4(lab::SERVER4)
            && p.tcp()
                .is_some_and(|t| t.src_port == REJECT_TCP && t.flags.rst())
    };
    assert!(
        at_client.wait_for(Duration::from_secs(3), resets),
        "no RST reached the client"
    );
    let s = stats_until(&lab, Duration::from_secs(5), |s| {
        count(s, "rejects_sent") + count(s, "rejects_rate_limited") >= u64::from(SYNS)
    });
    let (sent, limited) = (count(&s, "rejects_sent"), count(&s, "rejects_rate_limited"));
    assert_eq!(sent + limited, u64::from(SYNS), "{s}");
    // The burst, and at most what a second or two refills meanwhile.
    assert!((2..=4).contains(&sent), "{s}");
    // Each RST on the wire answers one SYN: RST|ACK, sequence 0,
    // acknowledging that SYN's ISN + 1. The first SYNs took the burst.
    let answers = |p: &[u8]| {
        let Ok(p) = wire::parse(p, Framing::default()) else {
            return None;
        };
        let t = p.tcp().copied()?;
        let i = t.dst_port.checked_sub(40100).filter(|i| *i < SYNS)?;
        let right = p.src == IpAddr::V4(lab::SERVER4)
            && t.src_port == REJECT_TCP
            && t.flags.0 == F::RST | F::ACK
            && t.seq.0 == 0
            && t.ack.0 == 1001 + u32::from(i);
        right.then_some(i)
    };
    assert_eq!(
        at_client.count(resets),
        sent as usize,
        "RSTs on the wire: {s}"
    );
    assert_eq!(
        at_client.count(|p| answers(p).is_some()),
        sent as usize,
        "well-formed RSTs: {s}"
    );
    for first in [0, 1] {
        assert!(
            at_client.saw(|p| answers(p) == Some(first)),
            "SYN {first} got no RST"
        );
    }
}
