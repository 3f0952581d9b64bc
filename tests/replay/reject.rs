//! `action = "reject"` in replay: its own verdict, `reject`, in the text and
//! JSON lines, the summary and the library's rows, while the engine counts it
//! a drop (the packet is dropped; the daemon also answers it).

use crate::gen::{CaptureBuilder, Conv, Format, Link, ACK, SYN};
use crate::{conntrackd, path_str, text, tmp};
use conntrackd::replay::replay_packets;
use conntrackd::wire::build;
use conntrackd::{Config, Engine, Reason, Timestamp, Verdict};
use std::path::Path;

const RULES: &str = r#"
[policy]
default = "reject"

[[rule]]
name = "no-ssh"
action = "reject"
proto = "tcp"
dst_ports = [22]

[[rule]]
name = "no-telnet"
action = "drop"
proto = "tcp"
dst_ports = [23]

[[rule]]
name = "web"
action = "accept"
proto = "tcp"
dst_ports = [80]
"#;

/// A SYN to each of 22 (rejected by rule), 23 (dropped), 80 (accepted, and
/// its handshake), and a UDP datagram no rule matches (rejected by default).
fn packets() -> Vec<Vec<u8>> {
    let mut ssh = Conv::new("198.18.0.2:40000", "198.19.0.2:22", 100, 0);
    let mut telnet = Conv::new("198.18.0.2:40001", "198.19.0.2:23", 200, 0);
    let mut web = Conv::new("198.18.0.2:40002", "198.19.0.2:80", 300, 9000);
    vec![
        ssh.c(SYN, b""),
        telnet.c(SYN, b""),
        web.c(SYN, b""),
        web.s(SYN | ACK, b""),
        build::udp(
            "198.18.0.2:53000".parse().unwrap(),
            "198.19.0.2:53".parse().unwrap(),
            b"query",
        ),
    ]
}

fn capture(dir: &Path) -> std::path::PathBuf {
    let mut cap = CaptureBuilder::new(Link::Raw, Format::Pcap { nanos: false });
    for (i, p) in packets().into_iter().enumerate() {
        cap.ip(i as u64 * 10, p);
    }
    let path = dir.join("reject.pcap");
    std::fs::write(&path, cap.bytes()).unwrap();
    path
}

#[test]
fn replay_shows_reject_as_its_own_verdict() {
    let dir = tmp();
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, RULES).unwrap();
    let pcap = capture(dir.path());
    let run = |format: &str| {
        let out = conntrackd(&[
            "replay",
            "--rules",
            path_str(&rules),
            "--format",
            format,
            path_str(&pcap),
        ]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };

    let out = run("text");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].contains(":22 TCP [S]")
            && lines[0].contains("  reject reject_by_rule rule=no-ssh  NONE"),
        "{out}"
    );
    assert!(
        lines[1].contains("  drop drop_by_rule rule=no-telnet  NONE"),
        "{out}"
    );
    assert!(
        lines[2].contains("  accept new_by_rule rule=web  "),
        "{out}"
    );
    assert!(
        lines[4].contains(" UDP  reject reject_by_default  NONE"),
        "{out}"
    );
    assert!(
        out.contains(
            "summary: 5 packets in 0.040000 s: 2 accepted, 3 dropped (2 rejected), 0 skipped"
        ),
        "{out}"
    );
    assert!(out.contains("  reject  reject_by_rule "), "{out}");
    assert!(out.contains("  reject  reject_by_default "), "{out}");
    assert!(out.contains("  drop    drop_by_rule "), "{out}");

    let out = run("jsonl");
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let verdicts: Vec<&str> = rows[..5]
        .iter()
        .map(|r| r["verdict"].as_str().unwrap())
        .collect();
    assert_eq!(verdicts, ["reject", "drop", "accept", "accept", "reject"]);
    assert_eq!(rows[0]["reason"], "reject_by_rule");
    assert_eq!(rows[0]["rule"], "no-ssh");
    let summary = &rows[5]["summary"];
    assert_eq!(summary["dropped"], 3, "{summary}");
    assert_eq!(summary["rejected"], 2, "{summary}");
    assert_eq!(summary["reasons"]["reject_by_default"], 1, "{summary}");
}

#[test]
fn a_rejected_packet_is_a_drop_that_opens_no_connection() {
    let config = Config::parse(RULES, Path::new("rules.toml")).unwrap();
    let engine = Engine::new(config.engine, config.policy);
    let packets = packets();
    let rows = replay_packets(
        &engine,
        packets
            .iter()
            .enumerate()
            .map(|(i, p)| (Timestamp::from_secs(1 + i as u64), p.as_slice())),
    );
    let reasons: Vec<Reason> = rows.iter().map(|r| r.decision().unwrap().reason).collect();
    assert_eq!(
        reasons,
        [
            Reason::RejectByRule,
            Reason::DropByRule,
            Reason::NewByRule,
            Reason::Tracked,
            Reason::RejectByDefault
        ]
    );
    assert_eq!(
        rows[0].verdict(),
        Some(Verdict::Drop),
        "the kernel hears a drop"
    );
    assert!(reasons[0].is_reject() && !reasons[1].is_reject());
    assert_eq!(engine.connections().len(), 1, "only the web connection");
}
