//! The live path and the replay agree: one crafted packet sequence goes
//! through conntrackd on NFQUEUE in the network-namespace lab, and the same
//! packets, written to a capture as they were sent, are replayed offline with
//! the same rules. Every packet's live fate (did it reach the other host?)
//! must equal the replay's verdict.
//!
//! Needs root, so the test is `#[ignore]`d: run it as root with
//! `CI=true cargo test --all-targets -- --include-ignored` (without root it
//! prints why it skips, and fails under `CI=true`).

#![allow(clippy::disallowed_methods)] // not the core: tests, benchmarks and tools read clocks and start threads

mod common;

use common::lab::{self, Lab, RawSender, Sniffer};
use conntrackd::replay::replay_capture;
use conntrackd::wire::build;
use conntrackd::wire::{Checksums, TcpFlags as F};
use conntrackd::{Config, Engine, Verdict};
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::DataLink;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const RULES: &str = r#"
[policy]
default = "accept"

[[rule]]
name = "deny-7001"
action = "drop"
proto = "tcp"
dst_ports = 7001
"#;

#[derive(Clone, Copy, PartialEq, Eq)]
enum From {
    Client,
    Server,
}

struct Step {
    what: &'static str,
    from: From,
    packet: Vec<u8>,
}

fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// The transport header bytes that identify a crafted packet end to end
/// (ports, seq, ack, offset and flags for TCP; the gateway changes only TTL).
fn identity(p: &[u8]) -> Option<(u8, &[u8])> {
    let (proto, l4) = match p.first()? >> 4 {
        4 => (*p.get(9)?, ((p[0] & 0x0f) as usize) * 4),
        6 => (*p.get(6)?, 40),
        _ => return None,
    };
    Some((proto, p.get(l4..l4 + 14)?))
}

fn steps() -> Vec<Step> {
    let (c4, s4) = (IpAddr::V4(lab::CLIENT4), IpAddr::V4(lab::SERVER4));
    let (c6, s6) = (IpAddr::V6(lab::CLIENT6), IpAddr::V6(lab::SERVER6));
    let mut v = Vec::new();
    let mut add = |what, from, b: build::Tcp| {
        v.push(Step {
            what,
            from,
            packet: b.build(),
        })
    };
    let (c, s) = (sa(c4, 40100), sa(s4, 7000));
    let t = |from: SocketAddr, to: SocketAddr, flags: u8, seq: u32, ack: u32| {
        build::tcp(from, to).flags(flags).seq(seq).ack(ack)
    };
    let (ci, si) = (u32::MAX - 20, 77_000u32);
    let (c1, s1) = (ci.wrapping_add(1), si + 1);
    add("SYN", From::Client, t(c, s, F::SYN, ci, 0).window_scale(2));
    add(
        "SYN+ACK",
        From::Server,
        t(s, c, F::SYN | F::ACK, si, c1).window_scale(2),
    );
    add("handshake ACK", From::Client, t(c, s, F::ACK, c1, s1));
    add(
        "data",
        From::Client,
        t(c, s, F::ACK | F::PSH, c1, s1).payload(&[1; 200]),
    );
    let c2 = c1.wrapping_add(200);
    add("SYN+FIN", From::Client, t(c, s, F::SYN | F::FIN, c2, 0));
    add("NULL", From::Client, t(c, s, 0, c2, 0));
    add(
        "XMAS",
        From::Client,
        t(c, s, F::FIN | F::PSH | F::URG, c2, 0),
    );
    add(
        "data far above the window",
        From::Client,
        t(c, s, F::ACK | F::PSH, c2.wrapping_add(1 << 28), s1).payload(b"x"),
    );
    add(
        "server data",
        From::Server,
        t(s, c, F::ACK | F::PSH, s1, c2).payload(&[2; 300]),
    );
    add(
        "ACK of data never sent",
        From::Client,
        t(c, s, F::ACK, c2, s1 + 10_000),
    );
    add("client ACK", From::Client, t(c, s, F::ACK, c2, s1 + 300));
    add(
        "ACK without a connection",
        From::Client,
        t(sa(c4, 40101), s, F::ACK, 5, 5),
    );
    add(
        "SYN denied by rule",
        From::Client,
        t(sa(c4, 40102), sa(s4, 7001), F::SYN, 9, 0),
    );
    add(
        "client FIN",
        From::Client,
        t(c, s, F::FIN | F::ACK, c2, s1 + 300),
    );
    add(
        "data after FIN",
        From::Client,
        t(c, s, F::ACK | F::PSH, c2.wrapping_add(1), s1 + 300).payload(b"late"),
    );
    add(
        "server FIN",
        From::Server,
        t(s, c, F::FIN | F::ACK, s1 + 300, c2.wrapping_add(1)),
    );
    add(
        "last ACK",
        From::Client,
        t(c, s, F::ACK, c2.wrapping_add(1), s1 + 301),
    );
    // A second connection with a wrong handshake ACK first.
    let (c, s) = (sa(c4, 40103), sa(s4, 7002));
    add("SYN 2", From::Client, t(c, s, F::SYN, 1000, 0));
    add(
        "SYN+ACK 2",
        From::Server,
        t(s, c, F::SYN | F::ACK, 5000, 1001),
    );
    add(
        "handshake ACK with the wrong ack",
        From::Client,
        t(c, s, F::ACK, 1001, 5002),
    );
    add("handshake ACK 2", From::Client, t(c, s, F::ACK, 1001, 5001));
    add(
        "RST far out of window",
        From::Server,
        t(s, c, F::RST, 5001 + (1 << 30), 0),
    );
    add(
        "RST in window",
        From::Server,
        t(s, c, F::RST | F::ACK, 5001, 1001),
    );
    // (PSH and data: its header must differ from the earlier handshake ACK's.)
    add(
        "data after RST",
        From::Client,
        t(c, s, F::ACK | F::PSH, 1001, 5001).payload(b"x"),
    );
    // IPv6.
    let (c, s) = (sa(c6, 40104), sa(s6, 7003));
    add("SYN v6", From::Client, t(c, s, F::SYN, 1, 0));
    add("SYN+ACK v6", From::Server, t(s, c, F::SYN | F::ACK, 900, 2));
    add(
        "wrong SYN+ACK v6",
        From::Server,
        t(s, c, F::SYN | F::ACK, 900, 3),
    );
    add("handshake ACK v6", From::Client, t(c, s, F::ACK, 2, 901));
    v
}

#[test]
#[ignore = "needs root: network namespaces, NFQUEUE, iptables"]
fn live_verdicts_equal_replayed_verdicts() {
    let Some(lab) = Lab::new("live_verdicts_equal_replayed_verdicts") else {
        return;
    };
    lab.drop_crafted_at_hosts();
    lab.add_nfqueue_rule("0", false);
    let rules = lab.write_rules("rules.toml", RULES);
    let mut daemon = lab.start_daemon(&["--rules", rules.to_str().unwrap(), "--queue", "0"]);

    let client_tx = RawSender::new(&lab.client);
    let server_tx = RawSender::new(&lab.server);
    let at_client = Sniffer::new(&lab.client, lab::HOST_IF);
    let at_server = Sniffer::new(&lab.server, lab::HOST_IF);

    let capture_path = lab.dir.path().join("live.pcap");
    let file = std::fs::File::create(&capture_path).unwrap();
    let header = PcapHeader {
        datalink: DataLink::RAW,
        ..PcapHeader::default()
    };
    let mut capture = PcapWriter::with_header(file, header).unwrap();

    let steps = steps();
    let mut live = Vec::new();
    for step in &steps {
        let (tx, rx) = match step.from {
            From::Client => (&client_tx, &at_server),
            From::Server => (&server_tx, &at_client),
        };
        let sent_at = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        tx.send(&step.packet);
        capture
            .write_packet(&PcapPacket::new(
                sent_at,
                step.packet.len() as u32,
                &step.packet,
            ))
            .unwrap();
        let want = identity(&step.packet).unwrap();
        let arrived = rx.wait_for(Duration::from_millis(400), |p| identity(p) == Some(want));
        live.push(arrived);
    }
    drop(capture);
    daemon.stop();

    let config = Config::parse(RULES, std::path::Path::new("rules.toml")).unwrap();
    let engine = Engine::new(config.engine, config.policy.clone());
    let rows = replay_capture(&engine, &capture_path, Checksums::Verify).expect("replay");
    assert_eq!(rows.len(), steps.len());

    let mut table = String::new();
    for ((step, arrived), row) in steps.iter().zip(&live).zip(&rows) {
        let d = row.decision().expect("an IP packet");
        table.push_str(&format!(
            "{:<36} live={:<6} replay={} {}\n",
            step.what,
            if *arrived { "pass" } else { "drop" },
            d.verdict(),
            d.reason
        ));
    }
    eprintln!("{table}");
    for ((step, arrived), row) in steps.iter().zip(&live).zip(&rows) {
        let replayed = row.verdict() == Some(Verdict::Accept);
        assert_eq!(
            *arrived, replayed,
            "{}: live and replay disagree\n{table}",
            step.what
        );
    }
    // Not vacuous: both verdicts occur, many times.
    assert!(live.iter().filter(|a| **a).count() >= 10, "{table}");
    assert!(live.iter().filter(|a| !**a).count() >= 10, "{table}");
}
