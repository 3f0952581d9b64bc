//! Hand-off mode in the lab (tests/common/lab/): established TCP connections
//! handed to the kernel by connmark, their FIN and RST still queued.
//!
//! Needs root, so the tests are `#[ignore]`d: run them as root with
//! `CI=true cargo test --all-targets -- --include-ignored` (without root they
//! print why they skip, and fail under `CI=true`).

#![allow(clippy::disallowed_methods)] // not the core: tests, benchmarks and tools read clocks and start threads

mod common;

use common::lab::{self, Lab, TcpEcho};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Hand-off rules for the lab's client networks, with these engine timeouts
/// and extra `[daemon]` lines.
fn handoff_rules(timeouts: &str, daemon: &str) -> String {
    format!(
        r#"
[engine.timeouts]
{timeouts}

[policy]
default = "drop"

[[rule]]
name = "lan-out"
action = "accept"
src = ["198.18.0.0/15", "2001:db8:1::/48"]

[daemon]
handoff = true
stats_interval = 1
{daemon}
"#
    )
}

fn v4(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(lab::SERVER4), port)
}

fn v6(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(lab::SERVER6), port)
}

/// `name=value` from the last log line containing `needle`.
fn field(log: &str, needle: &str, name: &str) -> Option<u64> {
    let line = log.lines().rev().find(|l| l.contains(needle))?;
    let at = line.find(&format!(" {name}="))? + name.len() + 2;
    line[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Packets counted by the first rule of the CONNTRACKD chain (the hand-off accept).
fn handoff_rule_packets(lab: &Lab) -> u64 {
    let out = lab
        .gw
        .sh(&["iptables", "-w", "5", "-L", "CONNTRACKD", "-v", "-x", "-n"]);
    let line = out
        .lines()
        .find(|l| l.contains("ACCEPT") && l.contains("connmark"))
        .unwrap_or_else(|| panic!("no hand-off rule in\n{out}"));
    line.split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
#[ignore = "needs root: network namespaces, NFQUEUE, iptables"]
fn handoff_hands_bulk_data_to_the_kernel_and_still_tracks_teardown() {
    let Some(lab) = Lab::new("handoff") else {
        return;
    };
    let before4 = lab.gw.ruleset(false);
    let before6 = lab.gw.ruleset(true);
    // Short closing timeouts: a tracked teardown leaves the table quickly.
    let timeouts = "time_wait = 1\nclose = 1\nfin_wait = 1\nclose_wait = 1\nlast_ack = 1";
    let rules = lab.write_rules("rules.toml", &handoff_rules(timeouts, ""));
    let mut d = lab.start_daemon(&[
        "--rules",
        rules.to_str().unwrap(),
        "--install-iptables",
        "--log-level",
        "info",
    ]);
    for v6 in [false, true] {
        let now = lab.gw.ruleset(v6);
        assert!(
            now.contains(
                "-A CONNTRACKD -p tcp -m tcp --tcp-flags FIN,SYN,RST NONE \
                 -m connmark --mark 0x20000000/0x20000000 -j ACCEPT"
            ),
            "{now}"
        );
        assert!(
            now.contains("-A POSTROUTING -m mark --mark 0x20000000/0x20000000 -j CONNMARK"),
            "{now}"
        );
    }
    let _echo = TcpEcho::start(&lab.server, v4(8080));

    // A bulk exchange (16 MB each way), then a clean close (FIN both ways).
    const BULK: usize = 16 << 20;
    let s = lab::connect(&lab.client, v4(8080), Duration::from_secs(5)).expect("connect");
    lab::exchange(&s, BULK, 0x11).expect("bulk exchange through the hand-off gateway");
    lab::close(s).expect("clean close: both FINs crossed the gateway");

    // A second connection aborted with a RST (SO_LINGER 0).
    let s = lab::connect(&lab.client, v4(8080), Duration::from_secs(5)).expect("connect");
    lab::exchange(&s, 1 << 20, 0x22).expect("exchange");
    lab::abort(s);

    let handed_off = handoff_rule_packets(&lab);
    // Teardown tracked: the FIN-closed connection went through the closing
    // states to TIME_WAIT (1 s here) and expired; untracked, it would stay
    // ESTABLISHED for the hand-off timeout (days). The RST-aborted one closes
    // too: a handed-off connection's windows are liberal, so its in-window
    // RST ends it although the engine's view of the sequence is stale.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut connections = u64::MAX;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
        connections = field(&d.log(), "stats", "connections").unwrap_or(u64::MAX);
        if connections == 0 {
            break;
        }
    }
    assert!(d.stop().success(), "log:\n{}", d.log());
    let log = d.log();
    assert!(
        connections == 0,
        "a closed connection is still in the table ({connections}):\n{log}"
    );
    let packets = field(&log, "stopped", "packets").expect("final stats");
    let marked = field(&log, "stopped", "handoff_marked").expect("final stats");
    assert!(marked >= 2, "no connection was handed off:\n{log}");
    // Far fewer packets than were transferred: the kernel passed the bulk.
    assert!(
        handed_off > 10 * packets,
        "the daemon saw {packets} packets, the hand-off rule passed only {handed_off}:\n{log}"
    );
    // The teardown packets reached the engine and none was refused.
    let reasons = log
        .lines()
        .rev()
        .find(|l| l.contains("stopped"))
        .unwrap()
        .to_string();
    assert!(
        !reasons.contains("out_of_window") && !reasons.contains("above"),
        "{reasons}"
    );
    assert_eq!(field(&log, "stopped", "dropped"), Some(0), "{reasons}");

    // Everything installed is removed again.
    let (after4, after6) = (lab.gw.ruleset(false), lab.gw.ruleset(true));
    for after in [&after4, &after6] {
        assert!(
            !after.contains("CONNTRACKD") && !after.contains("CONNMARK"),
            "{after}"
        );
    }
    if lab::have_nft() {
        assert_eq!(after4, before4, "IPv4 ruleset changed");
        assert_eq!(after6, before6, "IPv6 ruleset changed");
    }
}

/// Handed-off connections (IPv4 and IPv6) that carry data for longer than
/// the engine's timeout: the engine sees none of it, and keeps them only
/// because it reads the kernel's marked conntrack entries (ctnetlink, one
/// dump per family). With that off (the control) it forgets them.
#[test]
#[ignore = "needs root: network namespaces, NFQUEUE, iptables"]
fn handed_off_connections_outlive_the_engine_timeout_while_the_kernel_carries_them() {
    let Some(lab) = Lab::new("handoffkeep") else {
        return;
    };
    // The kernel's own established timeout is what conntrackd also waits at
    // least (see daemon::handoff_timeout): short here, in this namespace only.
    lab.gw.sh(&[
        "sysctl",
        "-qw",
        "net.netfilter.nf_conntrack_tcp_timeout_established=3",
    ]);
    let _echo = TcpEcho::start(&lab.server, v4(8081));
    let _echo6 = TcpEcho::start(&lab.server, v6(8081));
    for refresh in [1, 0] {
        // The engine forgets an established connection after 3 s without queued packets.
        let rules = lab.write_rules(
            "rules.toml",
            &handoff_rules(
                "established = 3\ntime_wait = 1",
                &format!("handoff_refresh = {refresh}"),
            ),
        );
        let mut d = lab.start_daemon(&[
            "--rules",
            rules.to_str().unwrap(),
            "--install-iptables",
            "--log-level",
            "info,conntrackd::daemon=debug",
        ]);
        let s = lab::connect(&lab.client, v4(8081), Duration::from_secs(5)).expect("connect");
        let s6 = lab::connect(&lab.client, v6(8081), Duration::from_secs(5)).expect("connect v6");
        // 8 s of traffic, each piece through the kernel once handed off.
        for i in 0..8 {
            lab::exchange(&s, 64 << 10, i).expect("exchange through the hand-off gateway");
            lab::exchange(&s6, 64 << 10, i).expect("IPv6 exchange through the hand-off gateway");
            std::thread::sleep(Duration::from_secs(1));
        }
        std::thread::sleep(Duration::from_millis(1500)); // a fresh stats line
        let log = d.log();
        let tracked = field(&log, "stats", "connections");
        if refresh > 0 {
            assert_eq!(
                tracked,
                Some(2),
                "the engine forgot a live connection:\n{log}"
            );
            let kept = field(&log, "kept handed-off connections", "kept");
            assert_eq!(kept, Some(2), "the kernel's entries were not read:\n{log}");
            lab::close(s).expect("clean close: both FINs known to the engine and passed");
            lab::close(s6).expect("IPv6 clean close");
            assert!(d.stop().success(), "log:\n{}", d.log());
            let log = d.log();
            assert_eq!(field(&log, "stopped", "dropped"), Some(0), "{log}");
        } else {
            assert_eq!(
                tracked,
                Some(0),
                "without reading the kernel's table the engine should forget it:\n{log}"
            );
            assert!(log.contains("not read often enough"), "no warning:\n{log}");
            drop((s, s6));
            assert!(d.stop().success(), "log:\n{}", d.log());
        }
    }
}
