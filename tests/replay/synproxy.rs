//! The SYN proxy in replay: the packets it would send are lines of their
//! own under the packet that made them (text), and an `answers` list (JSON).

use crate::gen::{CaptureBuilder, Conv, Format, Link, SYN};
use crate::{conntrackd, path_str, text, tmp};

/// The engine tests' proxied `web` rule.
const RULES: &str = include_str!("../engine_support/proxied-web.toml");

#[test]
fn replay_shows_the_cookie_syn_ack_the_proxy_would_send() {
    let dir = tmp();
    let rules = dir.path().join("rules.toml");
    std::fs::write(&rules, RULES).unwrap();
    let mut web = Conv::new("198.18.0.2:40002", "198.19.0.2:80", 300, 9000);
    let mut cap = CaptureBuilder::new(Link::Raw, Format::Pcap { nanos: false });
    cap.ip(0, web.c(SYN, b""));
    let pcap = dir.path().join("synproxy.pcap");
    std::fs::write(&pcap, cap.bytes()).unwrap();
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
    let syn = lines
        .iter()
        .position(|l| l.contains("syn_cookie_sent"))
        .unwrap_or_else(|| panic!("no cookie:\n{out}"));
    let answer = lines[syn + 1];
    assert!(answer.contains("sent by the SYN proxy"), "{out}");
    assert!(
        answer.contains("198.19.0.2:80") && answer.contains("198.18.0.2:40002"),
        "the SYN+ACK goes from the server's address to the client: {answer}"
    );
    assert!(
        answer.contains("[S.]") && answer.contains("ack=301"),
        "{answer}"
    );
    let json = run("jsonl");
    let row: serde_json::Value = serde_json::from_str(json.lines().next().unwrap()).unwrap();
    assert_eq!(row["reason"], "syn_cookie_sent");
    assert_eq!(row["answers"].as_array().map(Vec::len), Some(1), "{row}");
}
