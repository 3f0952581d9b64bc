//! The built `conntrackd` filtering a real gateway: client, gateway and
//! server network namespaces (tests/common/lab/), an iptables NFQUEUE rule
//! in the gateway, real sockets and crafted packets.
//!
//! The namespace tests need root, so they are `#[ignore]`d: a plain `cargo
//! test` lists them as ignored. Run them as root with
//! `CI=true cargo test --all-targets -- --include-ignored`; run without root,
//! each prints why it skips, and under `CI=true` fails instead. The two tests
//! at the end need no namespace and always run. The tests are independent
//! (each has its own namespaces) and run in parallel.

#![allow(clippy::disallowed_methods)] // not the core: tests, benchmarks and tools read clocks and start threads

mod common;

use common::lab::{self, Lab, Ns, RawSender, Sniffer, TcpEcho, UdpEcho};
use conntrackd::wire::build;
use conntrackd::wire::TcpFlags as F;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const SHORT: Duration = Duration::from_millis(700);

fn v4(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(lab::SERVER4), port)
}

fn v6(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(lab::SERVER6), port)
}

fn client_v4(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(lab::CLIENT4), port)
}

fn client_v6(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V6(lab::CLIENT6), port)
}

/// Connecting must fail (the SYN is dropped: the connect times out).
fn assert_blocked(ns: &Ns, to: SocketAddr, what: &str) {
    match lab::connect(ns, to, SHORT) {
        Ok(_) => panic!("{what}: connection to {to} succeeded, expected it blocked"),
        Err(e) => assert_eq!(
            e.kind(),
            std::io::ErrorKind::TimedOut,
            "{what}: connection to {to} failed, but not by a timeout: {e}"
        ),
    }
}

fn assert_session(ns: &Ns, to: SocketAddr, n: usize, what: &str) {
    if let Err(e) = lab::tcp_session(ns, to, n) {
        panic!("{what}: TCP session to {to} ({n} bytes each way) failed: {e}");
    }
}

/// Only new connections from the client side; 8081 denied (and logged).
const CLIENT_OUT_RULES: &str = r#"
[policy]
default = "drop"

[[rule]]
name = "deny-8081"
action = "drop"
proto = "tcp"
dst_ports = [8081]
log = true

[[rule]]
name = "client-out"
action = "accept"
in_iface = "cli"
out_iface = "srv"
src = ["198.18.0.0/24", "2001:db8:1::/64"]

[daemon]
stats_interval = 1
"#;

#[test]
#[ignore = "needs root: network namespaces, NFQUEUE, iptables"]
fn real_tcp_udp_and_ping_pass_over_ipv4_and_ipv6_with_two_queues() {
    let Some(lab) = Lab::new("real_traffic") else {
        return;
    };
    lab.add_nfqueue_rule("0:1", true);
    let rules = lab.write_rules("rules.toml", CLIENT_OUT_RULES);
    let mut d = lab.start_daemon(&[
        "--rules",
        rules.to_str().unwrap(),
        "--queue",
        "0-1",
        "--log-level",
        "info,conntrackd::drop=debug",
    ]);
    let _e4 = TcpEcho::start(&lab.server, v4(8080));
    let _e6 = TcpEcho::start(&lab.server, v6(8080));
    let _u4 = UdpEcho::start(&lab.server, v4(5353));
    let _u6 = UdpEcho::start(&lab.server, v6(5353));
    let _back = TcpEcho::start(&lab.client, client_v4(9090));
    let _back6 = TcpEcho::start(&lab.client, client_v6(9090));

    // Bulk both ways at once (GSO super-packets, window growth), then close.
    assert_session(&lab.client, v4(8080), 4 << 20, "IPv4 bulk");
    assert_session(&lab.client, v6(8080), 4 << 20, "IPv6 bulk");
    // Many short connections: open, 4 bytes each way, close.
    for i in 0..30 {
        let to = if i % 2 == 0 { v4(8080) } else { v6(8080) };
        assert_session(&lab.client, to, 4, "short connection");
    }
    assert!(
        lab::udp_roundtrip(&lab.client, v4(5353), Duration::from_secs(3)),
        "UDP over IPv4"
    );
    assert!(
        lab::udp_roundtrip(&lab.client, v6(5353), Duration::from_secs(3)),
        "UDP over IPv6"
    );
    assert!(
        lab::ping(
            &lab.client,
            IpAddr::V4(lab::SERVER4),
            Duration::from_secs(3)
        ),
        "ping"
    );
    assert!(
        lab::ping(
            &lab.client,
            IpAddr::V6(lab::SERVER6),
            Duration::from_secs(3)
        ),
        "ping6"
    );
    // Refusals travel back: a RST for a closed TCP port, an ICMP port
    // unreachable (related to the UDP flow) for a closed UDP port.
    for to in [v4(8099), v6(8099)] {
        match lab::connect(&lab.client, to, Duration::from_secs(3)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
            other => panic!("closed port {to}: expected connection refused, got {other:?}"),
        }
    }
    for to in [v4(5399), v6(5399)] {
        assert!(
            lab::udp_refused(&lab.client, to, Duration::from_secs(3)),
            "closed UDP port {to}: no ICMP port unreachable came back"
        );
    }
    // The policy: nothing new from the server side, and 8081 denied.
    assert_blocked(
        &lab.server,
        client_v4(9090),
        "server-initiated (default drop)",
    );
    assert_blocked(
        &lab.server,
        client_v6(9090),
        "server-initiated IPv6 (default drop)",
    );
    let _e8081 = TcpEcho::start(&lab.server, v4(8081));
    assert_blocked(&lab.client, v4(8081), "denied port");
    // ...while the allowed traffic still flows.
    assert_session(&lab.client, v4(8080), 64 << 10, "after the refused ones");

    d.wait_log("stats", Duration::from_secs(5));
    assert!(d.stop().success(), "exit status; log:\n{}", d.log());
    let log = d.log();
    // Every dropped packet is one the policy refused: nothing of the valid
    // connections was dropped on the way (no retransmission was needed).
    let drops = d.log_lines("drop reason=");
    assert!(!drops.is_empty(), "no drop line; log:\n{log}");
    for line in &drops {
        assert!(
            line.contains("drop_by_default") || line.contains("drop_by_rule"),
            "unexpected drop of valid traffic: {line}\nlog:\n{log}"
        );
    }
    let stopped = d.wait_log("stopped", Duration::from_secs(1));
    assert!(stopped.contains("verdict_errors=0"), "{stopped}");
}

/// Accepts every new connection: only tracking decides.
const ALLOW_ALL: &str = r#"
[policy]
default = "accept"
"#;

/// (source port, destination port, flags, seq, ack, payload) of a TCP packet.
type TcpFields<'a> = (u16, u16, u8, u32, u32, &'a [u8]);

fn tcp_fields(p: &[u8]) -> Option<TcpFields<'_>> {
    let (proto, l4) = match p.first()? >> 4 {
        4 => {
            let ihl = (p[0] & 0x0f) as usize * 4;
            let total = u16::from_be_bytes([*p.get(2)?, *p.get(3)?]) as usize;
            (p[9], p.get(ihl..total.min(p.len()))?)
        }
        6 => (*p.get(6)?, p.get(40..)?),
        _ => return None,
    };
    if proto != 6 || l4.len() < 20 {
        return None;
    }
    let be16 = |i: usize| u16::from_be_bytes([l4[i], l4[i + 1]]);
    let be32 = |i: usize| u32::from_be_bytes([l4[i], l4[i + 1], l4[i + 2], l4[i + 3]]);
    let off = (l4[12] >> 4) as usize * 4;
    Some((be16(0), be16(2), l4[13], be32(4), be32(8), l4.get(off..)?))
}

fn from_port(port: u16) -> impl Fn(&[u8]) -> bool {
    move |p| tcp_fields(p).is_some_and(|t| t.0 == port)
}

#[test]
#[ignore = "needs root: network namespaces, NFQUEUE, iptables"]
fn crafted_invalid_packets_never_reach_the_server() {
    let Some(lab) = Lab::new("crafted") else {
        return;
    };
    lab.add_nfqueue_rule("0", false);
    lab.drop_crafted_at_hosts();
    let rules = lab.write_rules("rules.toml", ALLOW_ALL);
    let mut d = lab.start_daemon(&[
        "--rules",
        rules.to_str().unwrap(),
        "--fail-closed",
        "--log-level",
        "info,conntrackd::drop=debug",
    ]);
    let _echo = TcpEcho::start(&lab.server, v4(8080));
    let real = lab::connect(&lab.client, v4(8080), Duration::from_secs(3)).expect("connect");
    lab::exchange(&real, 100_000, 1).expect("real connection before");

    let at_server = Sniffer::new(&lab.server, lab::HOST_IF);
    let at_client = Sniffer::new(&lab.client, lab::HOST_IF);
    let from_client = RawSender::new(&lab.client);
    let from_server = RawSender::new(&lab.server);
    let c = |port: u16| client_v4(port);
    let s = |port: u16| v4(port);

    // 1. Flag combinations no correct stack sends, and an ACK out of nowhere.
    let invalid = [
        ("SYN+FIN", F::SYN | F::FIN, 40001u16),
        ("NULL", 0, 40002),
        ("FIN without ACK", F::FIN, 40003),
        ("XMAS", F::FIN | F::PSH | F::URG, 40004),
        ("ACK without connection", F::ACK, 40005),
        ("SYN+RST", F::SYN | F::RST, 40006),
    ];
    for (_, flags, port) in invalid {
        from_client.send(
            &build::tcp(c(port), s(port - 33000))
                .flags(flags)
                .seq(777)
                .ack(if flags & F::ACK != 0 { 999 } else { 0 })
                .build(),
        );
    }
    let xmas6 = build::tcp(client_v6(40007), v6(7007))
        .flags(F::FIN | F::PSH | F::URG)
        .seq(1)
        .build();
    from_client.send(&xmas6);
    // A valid SYN after them, through the same queue: once it arrived, the
    // invalid ones would have too.
    from_client.send(&build::tcp(c(40010), s(7010)).flags(F::SYN).seq(1).build());
    from_client.send(
        &build::tcp(client_v6(40011), v6(7011))
            .flags(F::SYN)
            .seq(1)
            .build(),
    );
    assert!(
        at_server.wait_for(Duration::from_secs(3), from_port(40010)),
        "marker SYN"
    );
    assert!(
        at_server.wait_for(Duration::from_secs(3), from_port(40011)),
        "marker SYN v6"
    );
    for (what, _, port) in invalid {
        assert!(!at_server.saw(from_port(port)), "{what} reached the server");
    }
    assert!(
        !at_server.saw(from_port(40007)),
        "IPv6 XMAS reached the server"
    );

    // 2. A handshake whose final ACK acknowledges the wrong number.
    let (cp, sp) = (40020, 7020);
    let (cisn, sisn) = (1000u32, 5000u32);
    from_client.send(&build::tcp(c(cp), s(sp)).flags(F::SYN).seq(cisn).build());
    assert!(
        at_server.wait_for(Duration::from_secs(3), from_port(cp)),
        "SYN"
    );
    from_server.send(
        &build::tcp(s(sp), c(cp))
            .flags(F::SYN | F::ACK)
            .seq(sisn)
            .ack(cisn + 1)
            .build(),
    );
    assert!(
        at_client.wait_for(Duration::from_secs(3), from_port(sp)),
        "SYN+ACK"
    );
    let ack = |a: u32| build::tcp(c(cp), s(sp)).seq(cisn + 1).ack(a).build();
    from_client.send(&ack(sisn + 4242));
    from_client.send(&ack(sisn + 1));
    let acked = |a: u32| move |p: &[u8]| tcp_fields(p).is_some_and(|t| t.0 == cp && t.4 == a);
    assert!(
        at_server.wait_for(Duration::from_secs(3), acked(sisn + 1)),
        "right ACK"
    );
    assert!(
        !at_server.saw(acked(sisn + 4242)),
        "handshake ACK with the wrong ack number reached the server"
    );

    // 3. Data far beyond the receiver's window, then in-window data.
    let data = |seq: u32, payload: &[u8]| {
        build::tcp(c(cp), s(sp))
            .flags(F::ACK | F::PSH)
            .seq(seq)
            .ack(sisn + 1)
            .payload(payload)
            .build()
    };
    from_client.send(&data(cisn + 1 + 10_000_000, b"FAR!"));
    from_client.send(&data(cisn + 1, b"GOOD"));
    let carrying = |m: &'static [u8]| move |p: &[u8]| tcp_fields(p).is_some_and(|t| t.5 == m);
    assert!(
        at_server.wait_for(Duration::from_secs(3), carrying(b"GOOD")),
        "in-window data"
    );
    assert!(
        !at_server.saw(carrying(b"FAR!")),
        "out-of-window data reached the server"
    );

    // The real connection around all that kept working, and closes cleanly.
    lab::exchange(&real, 100_000, 2).expect("real connection after");
    lab::close(real).expect("close");
    assert!(d.stop().success());
    let log = d.log();
    for reason in [
        "syn_fin",
        "null_flags",
        "fin_without_ack",
        "xmas",
        "no_connection",
        "syn_rst",
        "handshake_bad_ack",
        "seq_above_window",
    ] {
        assert!(
            log.contains(&format!("reason=\"{reason}\""))
                || log.contains(&format!("reason={reason}")),
            "no drop line with reason {reason}; log:\n{log}"
        );
    }
}

const DENY_8081: &str = r#"
[policy]
default = "accept"

[[rule]]
name = "deny-8081"
action = "drop"
proto = "tcp"
dst_ports = [8081]
log = true
"#;

const DENY_8080: &str = r#"
[policy]
default = "accept"

[[rule]]
name = "deny-8080"
action = "drop"
proto = "tcp"
dst_ports = [8080]
"#;

#[test]
#[ignore = "needs root: network namespaces, NFQUEUE, iptables"]
fn sighup_reloads_rules_keeps_connections_and_refuses_broken_files() {
    let Some(lab) = Lab::new("reload") else {
        return;
    };
    lab.add_nfqueue_rule("0", true);
    let rules = lab.write_rules("rules.toml", DENY_8081);
    let d = lab.start_daemon(&["--rules", rules.to_str().unwrap()]);
    let _e0 = TcpEcho::start(&lab.server, v4(8080));
    let _e1 = TcpEcho::start(&lab.server, v4(8081));

    assert_blocked(&lab.client, v4(8081), "denied port");
    d.wait_log(
        "rule deny-8081 dropped a new connection",
        Duration::from_secs(3),
    );
    let open = lab::connect(&lab.client, v4(8080), Duration::from_secs(3)).expect("8080");
    lab::exchange(&open, 50_000, 3).expect("open connection");

    // Now 8080 is denied and 8081 allowed.
    lab::replace_file(&rules, DENY_8080);
    d.signal(libc::SIGHUP);
    d.wait_log("rules reloaded", Duration::from_secs(3));
    assert_session(&lab.client, v4(8081), 10_000, "allowed after reload");
    assert_blocked(&lab.client, v4(8080), "denied after reload");
    lab::exchange(&open, 50_000, 4).expect("the open connection survives the reload");

    // A broken file is refused, with each of its problems; the rules in force stay.
    lab::replace_file(
        &rules,
        "[policy]\ndefault = \"accept\"\n\n[[rule]]\nname = \"x\"\naction = \"maybe\"\n\n\
         [[rule]]\nname = \"y\"\naction = \"drop\"\ndst_port = 22\n",
    );
    d.signal(libc::SIGHUP);
    let err = d.wait_log("reload failed", Duration::from_secs(3));
    assert!(
        err.contains("rules.toml:6:") && err.contains("rules.toml:11:1: unknown field `dst_port`"),
        "error names file:line:column of each problem: {err}"
    );
    assert_session(
        &lab.client,
        v4(8081),
        10_000,
        "still allowed after a failed reload",
    );
    assert_blocked(&lab.client, v4(8080), "still denied after a failed reload");
    lab::exchange(&open, 50_000, 5).expect("the open connection survives everything");
    lab::close(open).expect("close");
    let mut d = d;
    assert!(d.stop().success());
}

/// Rules an administrator had before conntrackd came.
fn preexisting_rules(gw: &Ns) {
    for v6 in [false, true] {
        gw.iptables(v6, "-N ADMIN");
        gw.iptables(v6, "-A ADMIN -p udp --dport 9 -j DROP");
        gw.iptables(v6, "-A FORWARD -j ADMIN");
        gw.iptables(v6, "-A INPUT -p tcp --dport 22 -j ACCEPT");
    }
}

#[test]
#[ignore = "needs root: network namespaces, NFQUEUE, iptables"]
fn install_iptables_filters_and_leaves_the_ruleset_as_it_found_it() {
    let Some(lab) = Lab::new("install") else {
        return;
    };
    preexisting_rules(&lab.gw);
    let before4 = lab.gw.ruleset(false);
    let before6 = lab.gw.ruleset(true);
    let rules = lab.write_rules("rules.toml", DENY_8081);
    let mut d = lab.start_daemon(&[
        "--rules",
        rules.to_str().unwrap(),
        "--install-iptables",
        "--queue",
        "0-1",
    ]);
    for v6 in [false, true] {
        let now = lab.gw.ruleset(v6);
        assert!(
            now.contains("-A CONNTRACKD -j NFQUEUE --queue-balance 0:1 --queue-bypass"),
            "{now}"
        );
        let first_forward = now.lines().find(|l| l.starts_with("-A FORWARD"));
        assert_eq!(first_forward, Some("-A FORWARD -j CONNTRACKD"), "{now}");
    }
    let _e4 = TcpEcho::start(&lab.server, v4(8080));
    let _e6 = TcpEcho::start(&lab.server, v6(8080));
    let _d4 = TcpEcho::start(&lab.server, v4(8081));
    let _d6 = TcpEcho::start(&lab.server, v6(8081));
    assert_session(
        &lab.client,
        v4(8080),
        100_000,
        "IPv4 through the installed hook",
    );
    assert_session(
        &lab.client,
        v6(8080),
        100_000,
        "IPv6 through the installed hook",
    );
    assert_blocked(&lab.client, v4(8081), "IPv4 denied port");
    assert_blocked(&lab.client, v6(8081), "IPv6 denied port");

    assert!(d.stop().success(), "log:\n{}", d.log());
    d.wait_log("removed iptables chain", Duration::from_secs(1));
    assert_eq!(lab.gw.ruleset(false), before4, "IPv4 ruleset changed");
    assert_eq!(lab.gw.ruleset(true), before6, "IPv6 ruleset changed");
    // Without conntrackd and its chain, the kernel forwards everything again.
    assert_session(&lab.client, v4(8081), 1000, "after removal");
}

/// One way to stop: a control client that connects and says nothing (it
/// would hold the control thread for its 30 s deadline) delays neither the
/// hooks' removal nor the table's save at SIGTERM.
#[test]
#[ignore = "needs root: network namespaces, NFQUEUE, iptables"]
fn a_silent_control_client_does_not_delay_the_stop() {
    let Some(lab) = Lab::new("silent_client") else {
        return;
    };
    let rules = lab.write_rules("rules.toml", ALLOW_ALL);
    let mut d = lab.start_daemon(&["--rules", rules.to_str().unwrap(), "--install-iptables"]);
    assert!(lab.gw.ruleset(false).contains("CONNTRACKD"));
    let silent = std::os::unix::net::UnixStream::connect(lab.control_socket())
        .expect("connecting to the control socket");
    // Long enough for the control thread to take it and start waiting.
    std::thread::sleep(Duration::from_millis(300));
    let sent = Instant::now();
    d.signal(libc::SIGTERM);
    let removed = loop {
        if !lab.gw.ruleset(false).contains("CONNTRACKD") {
            break sent.elapsed();
        }
        assert!(
            sent.elapsed() < Duration::from_secs(10),
            "the hooks are still in place 10 s after SIGTERM; log:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        removed < Duration::from_secs(1),
        "the hooks came off {removed:?} after SIGTERM; log:\n{}",
        d.log()
    );
    assert!(
        d.wait_exit(Duration::from_secs(5)).success(),
        "log:\n{}",
        d.log()
    );
    d.wait_log("saved the table", Duration::from_secs(1));
    // The client was let go: it reads the end of the stream.
    silent
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(std::io::Read::read(&mut &silent, &mut buf).unwrap_or(0), 0);
}

#[test]
#[ignore = "needs root: network namespaces, NFQUEUE, iptables"]
fn install_iptables_in_a_namespace_without_rules_leaves_nothing_behind() {
    let Some(lab) = Lab::new("install_pristine") else {
        return;
    };
    // No iptables rule ever: with iptables-nft there is no filter table yet.
    let before4 = lab.gw.ruleset(false);
    let before6 = lab.gw.ruleset(true);
    let rules = lab.write_rules("rules.toml", ALLOW_ALL);
    let mut d = lab.start_daemon(&["--rules", rules.to_str().unwrap(), "--install-iptables"]);
    let _echo = TcpEcho::start(&lab.server, v4(8080));
    assert_session(&lab.client, v4(8080), 10_000, "through the installed hook");
    assert!(d.stop().success(), "log:\n{}", d.log());
    let (after4, after6) = (lab.gw.ruleset(false), lab.gw.ruleset(true));
    assert!(!after4.contains("CONNTRACKD") && !after6.contains("CONNTRACKD"));
    // The empty filter table iptables-nft created is deleted with `nft`.
    if lab::have_nft() {
        assert_eq!(after4, before4, "IPv4 ruleset changed");
        assert_eq!(after6, before6, "IPv6 ruleset changed");
    }
}

#[test]
#[ignore = "needs root: network namespaces, NFQUEUE, iptables"]
fn killed_daemon_fail_open_lets_traffic_pass() {
    let Some(lab) = Lab::new("fail_open") else {
        return;
    };
    lab.add_nfqueue_rule("0", true);
    let rules = lab.write_rules("rules.toml", DENY_8081);
    let mut d = lab.start_daemon(&["--rules", rules.to_str().unwrap(), "--fail-open"]);
    let _e0 = TcpEcho::start(&lab.server, v4(8080));
    let _e1 = TcpEcho::start(&lab.server, v4(8081));
    assert_session(&lab.client, v4(8080), 10_000, "with the daemon");
    assert_blocked(&lab.client, v4(8081), "denied with the daemon");
    d.kill9();
    // --queue-bypass: with nobody bound to the queue, the kernel accepts.
    assert_session(&lab.client, v4(8080), 10_000, "daemon killed, fail-open");
    assert_session(
        &lab.client,
        v4(8081),
        10_000,
        "daemon killed, fail-open, no rules",
    );
    assert!(lab::ping(
        &lab.client,
        IpAddr::V4(lab::SERVER4),
        Duration::from_secs(3)
    ));
}

#[test]
#[ignore = "needs root: network namespaces, NFQUEUE, iptables"]
fn killed_daemon_fail_closed_blocks_traffic_until_restarted() {
    let Some(lab) = Lab::new("fail_closed") else {
        return;
    };
    let (rules, before4, before6) = fail_closed_lab(&lab, ALLOW_ALL);
    let args = fail_closed_args(&rules);
    let mut d = lab.start_daemon(&args);
    assert!(lab
        .gw
        .ruleset(false)
        .contains("-A CONNTRACKD -j NFQUEUE --queue-num 0\n"));
    let _e0 = TcpEcho::start(&lab.server, v4(8080));
    let _e6 = TcpEcho::start(&lab.server, v6(8080));
    assert_session(&lab.client, v4(8080), 10_000, "with the daemon");
    d.kill9();
    // No --queue-bypass: with nobody bound to the queue, the kernel drops.
    assert_blocked(&lab.client, v4(8080), "daemon killed, fail-closed");
    assert_blocked(&lab.client, v6(8080), "daemon killed, fail-closed, IPv6");
    assert!(!lab::ping(&lab.client, IpAddr::V4(lab::SERVER4), SHORT));

    // A new instance takes over the chain the killed one left, and works.
    let mut d2 = lab.start_daemon(&args);
    d2.wait_log("left by an earlier run", Duration::from_secs(1));
    assert_session(&lab.client, v4(8080), 10_000, "restarted");
    assert_session(&lab.client, v6(8080), 10_000, "restarted, IPv6");
    assert!(d2.stop().success());
    // Fail-closed: the chain stays after a stop too, until removed.
    uninstall_iptables(&lab, &rules);
    assert_eq!(lab.gw.ruleset(false), before4);
    assert_eq!(lab.gw.ruleset(true), before6);
}

/// The administrator's rules in the gateway, `policy` as the rules file;
/// (rules file, IPv4 ruleset, IPv6 ruleset) before conntrackd.
fn fail_closed_lab(lab: &Lab, policy: &str) -> (PathBuf, String, String) {
    preexisting_rules(&lab.gw);
    let rules = lab.write_rules("rules.toml", policy);
    (rules, lab.gw.ruleset(false), lab.gw.ruleset(true))
}

/// conntrackd with its own chain, fail-closed.
fn fail_closed_args(rules: &Path) -> [&str; 4] {
    [
        "--rules",
        rules.to_str().unwrap(),
        "--install-iptables",
        "--fail-closed",
    ]
}

/// `conntrackd uninstall-iptables --rules RULES` in the gateway: it says it
/// removed the chain.
fn uninstall_iptables(lab: &Lab, rules: &Path) {
    let out = lab.gw.output(&[
        env!("CARGO_BIN_EXE_conntrackd"),
        "uninstall-iptables",
        "--rules",
        rules.to_str().unwrap(),
    ]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(said.contains("removed chain CONNTRACKD"), "{said}");
}

/// Fail-closed means closed across a graceful stop too (what `systemctl
/// restart` does): the chain stays when conntrackd stops, so with no program
/// bound to the queue (and no --queue-bypass) the kernel drops what it
/// would queue. A port the policy drops never connects, not during the
/// restart, not while no daemon runs; what the policy passes waits for the
/// next start. The next start takes the chain over; `conntrackd
/// uninstall-iptables` removes it, and the ruleset is as it was.
#[test]
#[ignore = "needs root: network namespaces, NFQUEUE, iptables"]
fn a_fail_closed_stop_forwards_nothing_until_the_next_start() {
    let Some(lab) = Lab::new("closed_stop") else {
        return;
    };
    let (rules, before4, before6) = fail_closed_lab(&lab, DENY_8081);
    let args = fail_closed_args(&rules);
    let mut d = lab.start_daemon(&args);
    let _e0 = TcpEcho::start(&lab.server, v4(8080));
    let _e1 = TcpEcho::start(&lab.server, v4(8081));
    let _e6 = TcpEcho::start(&lab.server, v6(8081));
    assert_session(&lab.client, v4(8080), 10_000, "with the daemon");
    assert_blocked(&lab.client, v4(8081), "denied with the daemon");

    // A client keeps trying the denied port through the stop, the gap and
    // the next start (bounded: 200 tries, each at most 300 ms).
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        let prober = scope.spawn(|| {
            let mut tries = 0;
            let mut connected = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Relaxed) && tries < 200 {
                tries += 1;
                for to in [v4(8081), v6(8081)] {
                    if lab::connect(&lab.client, to, Duration::from_millis(300)).is_ok() {
                        connected.push(to);
                    }
                }
            }
            (tries, connected)
        });
        assert!(d.stop().success(), "{}", d.log());
        d.wait_log(
            "left iptables chain CONNTRACKD in place",
            Duration::from_secs(1),
        );
        for v6 in [false, true] {
            assert!(lab.gw.ruleset(v6).contains("-A FORWARD -j CONNTRACKD"));
        }
        // Nothing is forwarded while no conntrackd runs.
        assert_blocked(&lab.client, v4(8080), "stopped, fail-closed");
        assert!(!lab::ping(&lab.client, IpAddr::V4(lab::SERVER4), SHORT));
        let mut d2 = lab.start_daemon(&args);
        d2.wait_log("took over chain CONNTRACKD", Duration::from_secs(1));
        assert_session(&lab.client, v4(8080), 10_000, "after the next start");
        assert_blocked(&lab.client, v4(8081), "denied after the next start");
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let (tries, connected) = prober.join().unwrap();
        assert!(tries >= 3, "the prober tried only {tries} times");
        assert!(
            connected.is_empty(),
            "the denied port connected: {connected:?}"
        );
        // The hook once, not twice, after the take-over.
        let now = lab.gw.ruleset(false);
        assert_eq!(now.matches("-A FORWARD -j CONNTRACKD").count(), 1, "{now}");
        assert!(d2.stop().success(), "{}", d2.log());
    });
    assert_blocked(&lab.client, v4(8080), "stopped again");
    uninstall_iptables(&lab, &rules);
    assert_eq!(lab.gw.ruleset(false), before4);
    assert_eq!(lab.gw.ruleset(true), before6);
    // Without the chain, the kernel forwards everything again.
    assert_session(&lab.client, v4(8081), 1000, "after uninstall-iptables");
}

#[test]
#[ignore = "needs root: network namespaces, NFQUEUE, iptables"]
fn warns_in_json_when_no_packet_arrives() {
    let Some(lab) = Lab::new("idle") else {
        return;
    };
    // No NFQUEUE rule at all: the administrator forgot it.
    let rules = lab.write_rules(
        "rules.toml",
        &format!("{ALLOW_ALL}\n[daemon]\nidle_warning = 1\n"),
    );
    let mut d = lab.start_daemon(&["--rules", rules.to_str().unwrap(), "--log-format", "json"]);
    let line = d.wait_log("NFQUEUE rule seems missing", Duration::from_secs(5));
    let v: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(v["level"], "WARN", "{line}");
    assert!(d.stop().success());
    for line in d.log().lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["message"].is_string(), "{line}");
    }
}

// ---- no namespace needed ----

fn conntrackd(args: &[&str]) -> std::process::Output {
    lab::run_timeout(
        std::process::Command::new(env!("CARGO_BIN_EXE_conntrackd")).args(args),
        Duration::from_secs(10),
    )
}

#[test]
fn refuses_to_start_with_a_broken_rules_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.toml");
    std::fs::write(
        &path,
        "[policy]\ndefault = \"accept\"\n\n[[rule]]\nname = \"x\"\nactoin = \"drop\"\n",
    )
    .unwrap();
    let out = conntrackd(&["--rules", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broken.toml:"), "{err}");
    assert!(
        err.contains(":4:") || err.contains(":6:"),
        "file:line:column: {err}"
    );

    let out = conntrackd(&["--rules", "/nonexistent/rules.toml"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/rules.toml"));

    let out = conntrackd(&["--rules", "rules/default.toml", "--queue", "5-1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("queue"));
}

/// `check` and the daemon's start name every problem of a rules file, each
/// with file:line:column, not only the first.
#[test]
fn check_and_start_report_every_problem_of_a_rules_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("two.toml");
    std::fs::write(
        &path,
        "[policy]\ndefault = \"accept\"\n\n[[rule]]\nname = \"x\"\nactoin = \"drop\"\naction = \"drop\"\n\n\
         [[rule]]\nname = \"y\"\naction = \"drop\"\ndst = \"198.18.0.0/33\"\n",
    )
    .unwrap();
    let file = path.to_str().unwrap();
    for (args, prefix) in [
        (vec!["check", "--rules", file], "error: "),
        (vec!["--rules", file], "conntrackd: error: "),
    ] {
        let out = conntrackd(&args);
        assert!(!out.status.success(), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 2, "{args:?}: {err}");
        assert!(
            lines[0].starts_with(&format!("{prefix}{file}:6:1: unknown field `actoin`")),
            "{err}"
        );
        assert!(
            lines[1].starts_with(&format!("{prefix}{file}:12:7: ")) && lines[1].contains("/33"),
            "{err}"
        );
    }
}

/// Without --rules, every command reads /etc/conntrackd/rules.toml and never
/// rules/default.toml of the directory it was started in (the test runs in
/// the checkout, where that file exists).
#[test]
fn without_rules_every_command_reads_the_system_file_not_the_current_directory() {
    let checkout = env!("CARGO_MANIFEST_DIR");
    let run = |args: &[&str]| {
        lab::run_timeout(
            std::process::Command::new(env!("CARGO_BIN_EXE_conntrackd"))
                .args(args)
                .current_dir(checkout),
            Duration::from_secs(10),
        )
    };
    assert!(Path::new(checkout).join("rules/default.toml").exists());
    if Path::new("/etc/conntrackd/rules.toml").exists() {
        // A machine with the package installed: check reads the system file.
        let out = run(&["check"]);
        let shown = String::from_utf8_lossy(&out.stdout);
        assert!(
            shown.contains("rules file: /etc/conntrackd/rules.toml"),
            "{shown}"
        );
        return;
    }
    for args in [
        &["check"][..],
        &["replay", "tests/captures/example.pcap"],
        // A bad log level: were the rules found, the daemon would stop there.
        &["--log-level", "info["],
    ] {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}: {err}");
        assert!(
            err.contains("/etc/conntrackd/rules.toml does not exist")
                && err.contains("pass --rules FILE")
                && err.contains("--rules rules/default.toml"),
            "{args:?}: {err}"
        );
    }
    // The same commands with --rules work from anywhere.
    let rules = Path::new(checkout).join("rules/default.toml");
    let out = conntrackd(&["check", "--rules", rules.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
}

/// The README's warning under its run command says what that command
/// installs and enforces: checked against the iptables script conntrackd
/// makes for rules/default.toml, and against that file's policy.
#[test]
fn the_readme_warning_says_what_the_run_command_installs() {
    use conntrackd::kernel::iptables::Spec;
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let command = "cargo run --release -- --rules rules/default.toml --install-iptables";
    let at = readme.find(command).expect("README has the run command");
    let after = &readme[at..];
    let end = after
        .find("Run the whole test suite")
        .expect("the next paragraph");
    // The warning's text, its blockquote marks and line breaks taken out.
    let warning = after[..end]
        .lines()
        .map(|l| l.trim_start_matches('>').trim())
        .collect::<Vec<_>>()
        .join(" ");
    let (config, d) = conntrackd::rules_file::load_with::<conntrackd::daemon::DaemonSettings>(
        &root.join("rules/default.toml"),
    )
    .unwrap();
    let spec = Spec::new(
        &d.iptables_chain,
        &d.hooks,
        d.queues.as_slice(),
        d.queue_bypass,
    )
    .unwrap();
    let script = spec.install_script();
    let mut says = vec![
        format!("chain `{}`", spec.chain),
        format!("`-j {}`", spec.target()),
        "`install_iptables = false`".to_string(),
        "everything else is dropped".to_string(),
        "no mid-stream pickup".to_string(),
        "INPUT and OUTPUT".to_string(),
    ];
    for hook in &spec.hooks {
        assert!(script.contains(&format!("-I {hook} 1 -j {}", spec.chain)));
        says.push(format!("first rule of `{hook}`"));
    }
    assert_eq!(spec.hooks, ["FORWARD"], "the warning names FORWARD only");
    assert!(!d.install_iptables);
    assert_eq!(config.policy.default, conntrackd::policy::Action::Drop);
    assert!(!config.engine.loose_pickup);
    let lan_out = config
        .policy
        .rules
        .iter()
        .find(|r| r.name == "lan-out")
        .expect("rules/default.toml has lan-out")
        .to_string();
    let sources = lan_out
        .split("src=")
        .nth(1)
        .unwrap()
        .split(' ')
        .next()
        .unwrap();
    says.extend(sources.split(',').map(String::from));
    for s in says {
        assert!(
            warning.contains(&s),
            "the README warning lacks {s:?}: {warning}"
        );
    }
}

#[test]
fn help_and_version() {
    let out = conntrackd(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for opt in [
        "--rules",
        "--queue",
        "--install-iptables",
        "--fail-open",
        "--fail-closed",
        "--log-format",
        "--log-level",
        "check",
    ] {
        assert!(help.contains(opt), "--help lacks {opt}:\n{help}");
    }
    let out = conntrackd(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

/// A client reconnects from the same port to a server that still holds the
/// old connection, after conntrackd has forgotten it (its timeout passed):
/// the client forgot its socket without a RST reaching anyone (a reboot, a
/// NAT mapping reused). The server answers the new SYN with a challenge ACK,
/// the client answers that with a RST, the server drops its old connection,
/// and the client's SYN, sent again (Linux does at once), connects. A
/// firewall that drops the challenge ACK or that RST keeps the client out
/// until the server's old connection dies.
#[test]
#[ignore = "needs root: network namespaces, NFQUEUE, iptables"]
fn a_client_reconnects_to_a_server_that_still_holds_the_old_connection() {
    let Some(lab) = Lab::new("reconnect") else {
        return;
    };
    lab.add_nfqueue_rule("0", true);
    let rules = lab.write_rules(
        "rules.toml",
        "[engine.timeouts]\nestablished = 2\n\n[policy]\ndefault = \"accept\"\n",
    );
    let d = lab.start_daemon(&["--rules", rules.to_str().unwrap()]);
    let _echo = TcpEcho::start(&lab.server, v4(8080));
    let local = SocketAddr::new(IpAddr::V4(lab::CLIENT4), 41_234);
    let open_from = |port_addr: SocketAddr, timeout: Duration| {
        lab.client
            .enter(move || -> std::io::Result<std::net::TcpStream> {
                let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
                s.set_reuse_address(true)?;
                s.bind(&port_addr.into())?;
                s.connect_timeout(&v4(8080).into(), timeout)?;
                let s: std::net::TcpStream = s.into();
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                Ok(s)
            })
    };
    let old = open_from(local, Duration::from_secs(3)).expect("first connection");
    lab::exchange(&old, 1000, 1).expect("first connection carries data");
    // The client forgets its socket: its RST never leaves the client.
    lab.client
        .iptables(false, "-A OUTPUT -p tcp --tcp-flags RST RST -j DROP");
    lab::abort(old);
    std::thread::sleep(Duration::from_millis(200));
    lab.client
        .iptables(false, "-D OUTPUT -p tcp --tcp-flags RST RST -j DROP");
    // conntrackd forgets the connection (established = 2 s, expiry every second).
    std::thread::sleep(Duration::from_millis(3500));
    let held = lab
        .server
        .sh(&["ss", "-tnH", "state", "established", "sport", "= :8080"]);
    assert!(
        held.contains("198.18.0.2:41234"),
        "the server should still hold the old connection: {held:?}"
    );
    let started = std::time::Instant::now();
    let new = open_from(local, Duration::from_secs(8)).unwrap_or_else(|e| {
        panic!(
            "the reconnect failed after {:?}: {e}\n{}\n{}",
            started.elapsed(),
            d.log(),
            lab.diagnostics()
        )
    });
    let took = started.elapsed();
    lab::exchange(&new, 1000, 2).expect("the new connection carries data");
    assert!(
        took < Duration::from_secs(5),
        "the reconnect took {took:?} (expected one more SYN, at most about 1 s later)"
    );
    let mut d = d;
    d.stop();
    let stopped = d.wait_log("stopped", Duration::from_secs(3));
    for reason in ["challenge_ack=", "challenge_ack_rst="] {
        assert!(
            stopped.contains(reason),
            "the reconnect went another way (no {reason}): {stopped}"
        );
    }
    eprintln!("reconnected in {took:?}: {stopped}");
}

/// A spoofed SYN flood fills a small half-open cap many times over while a
/// real client opens connections: early drop lets every real SYN in (each
/// evicts the oldest half-open entry), so all of them complete, and new ones
/// work right after. Counts, not timings.
#[test]
#[ignore = "needs root: network namespaces, NFQUEUE, iptables"]
fn legitimate_connections_complete_during_a_spoofed_syn_flood() {
    const FLOOD: u32 = 20_000;
    const LEGIT: usize = 50;
    let Some(lab) = Lab::new("synflood") else {
        return;
    };
    // Spoofed sources from a /17 of the client network's /15: the gateway
    // accepts them from the client side (no reverse-path filter) and
    // blackholes what comes back to them, so the replies never reach the queue.
    for key in ["net.ipv4.conf.all.rp_filter", "net.ipv4.conf.cli.rp_filter"] {
        lab.gw.sysctl(key, "0");
    }
    lab.gw
        .sh(&["ip", "route", "add", "blackhole", "198.18.128.0/17"]);
    lab.add_nfqueue_rule("0", true);
    let rules = lab.write_rules(
        "rules.toml",
        "[engine]\nmax_half_open = 2000\n\n[policy]\ndefault = \"accept\"\n",
    );
    let mut d = lab.start_daemon(&["--rules", rules.to_str().unwrap()]);
    let _echo = TcpEcho::start(&lab.server, v4(8080));
    let tx = RawSender::new(&lab.client);
    let sent = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let progress = sent.clone();
    let flood = std::thread::spawn(move || {
        // About 10,000 a second: what the debug build answers without the
        // queue overflowing; bounded in count.
        let mut x = 0x2545_f491u32;
        for i in 0..FLOOD {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let src = std::net::Ipv4Addr::new(198, 18, 128 | (x >> 25) as u8, (x >> 8) as u8);
            let syn = build::tcp(
                SocketAddr::new(IpAddr::V4(src), 1024 + (x % 60_000) as u16),
                SocketAddr::new(IpAddr::V4(lab::SERVER4), 7001),
            )
            .flags(F::SYN)
            .seq(x)
            .build();
            tx.send(&syn);
            progress.store(i + 1, std::sync::atomic::Ordering::Relaxed);
            if i % 20 == 19 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    });
    // The real client starts once the flood has filled the cap twice over.
    let sent_now = || sent.load(std::sync::atomic::Ordering::Relaxed);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while sent_now() < 4_000 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let (mut completed, mut during) = (0, 0);
    let mut failures = Vec::new();
    for i in 0..LEGIT {
        match lab::tcp_session(&lab.client, v4(8080), 1000) {
            Ok(()) => completed += 1,
            Err(e) => failures.push(format!("connection {i}: {e}")),
        }
        if sent_now() < FLOOD {
            during += 1;
        }
    }
    flood.join().expect("flood thread");
    assert_eq!(
        completed,
        LEGIT,
        "during the flood: {failures:?}\n{}",
        d.log()
    );
    assert!(
        during >= 10,
        "only {during} connections ran while the flood did"
    );
    for i in 0..5 {
        lab::tcp_session(&lab.client, v4(8080), 1000)
            .unwrap_or_else(|e| panic!("connection {i} right after the flood: {e}"));
    }
    d.stop();
    let stopped = d.wait_log("stopped", Duration::from_secs(3));
    let evicted = lab::Daemon::counter(&stopped, "evicted_half_open");
    // The flood did fill the cap, many times over: not a vacuous pass.
    assert!(evicted > 10_000, "evicted_half_open = {evicted}: {stopped}");
    assert!(!stopped.contains("half_open_limit"), "{stopped}");
    eprintln!("{stopped}");
}

/// Writes `rules` (which must end inside its `[daemon]` table) with a
/// state file in the lab's directory and `daemon` keys; (state file, rules).
fn with_state_file(lab: &Lab, rules: &str, daemon: &str) -> (PathBuf, PathBuf) {
    let state = lab.dir.path().join("table");
    let text = format!(
        "{rules}state_file = {:?}\n{daemon}",
        state.display().to_string()
    );
    (state.clone(), lab.write_rules("rules.toml", &text))
}

/// Connections survive a restart and a crash. Long-lived TCP connections,
/// IPv4 and IPv6, with data both ways: SIGTERM saves the table, the new
/// process loads it before binding its queue; SIGKILL leaves the last
/// periodic snapshot, and a connection opened while no daemon ran (passed by
/// --queue-bypass) is picked up after the crash. The policy drops what it
/// does not know (only the client may open connections), so a packet from
/// the server passes only if the connection was restored. Each connection
/// still closes through its teardown.
#[test]
#[ignore = "needs root: network namespaces, NFQUEUE, iptables"]
fn connections_survive_a_restart_and_a_crash() {
    let Some(lab) = Lab::new("restart") else {
        return;
    };
    lab.add_nfqueue_rule("0", true);
    let (_, rules) = with_state_file(&lab, CLIENT_OUT_RULES, "snapshot_interval = 1\n");
    let args = ["--rules", rules.to_str().unwrap()];
    let mut d = lab.start_daemon(&args);
    d.wait_log("no state file yet", Duration::from_secs(1));
    let _e4 = TcpEcho::start(&lab.server, v4(8080));
    let _e6 = TcpEcho::start(&lab.server, v6(8080));
    let s4 = lab::connect(&lab.client, v4(8080), Duration::from_secs(3)).expect("v4");
    let s6 = lab::connect(&lab.client, v6(8080), Duration::from_secs(3)).expect("v6");
    lab::exchange(&s4, 100_000, 1).expect("v4 before");
    lab::exchange(&s6, 100_000, 2).expect("v6 before");

    // (a) SIGTERM and a new process.
    assert!(d.stop().success(), "{}", d.log());
    d.wait_log("saved the table", Duration::from_secs(1));
    lab::exchange(&s4, 10_000, 3).expect("v4 in the gap (queue-bypass)");
    let mut d2 = lab.start_daemon(&args);
    d2.wait_log("restored 2 connections", Duration::from_secs(1));
    lab::exchange(&s4, 100_000, 4).expect("v4 after the restart");
    lab::exchange(&s6, 100_000, 5).expect("v6 after the restart");

    // (b) SIGKILL after a snapshot; a connection opens while no daemon runs.
    std::thread::sleep(Duration::from_millis(1500));
    d2.kill9();
    let late = lab::connect(&lab.client, v4(8080), Duration::from_secs(3)).expect("in the gap");
    let mut d3 = lab.start_daemon(&args);
    d3.wait_log(
        "restored 2 connections from a periodic snapshot",
        Duration::from_secs(1),
    );
    d3.wait_log("picked up mid-stream", Duration::from_secs(1));
    lab::exchange(&s4, 100_000, 6).expect("v4 after the crash");
    lab::exchange(&s6, 100_000, 7).expect("v6 after the crash");
    lab::exchange(&late, 10_000, 8).expect("the connection opened during the gap");
    for s in [s4, s6, late] {
        lab::close(s).expect("teardown after the restarts");
    }
    assert!(d3.stop().success(), "{}", d3.log());
}

/// A crash right after a fresh start keeps its connections: the first
/// start writes a state file at once (an empty snapshot: "running, not
/// stopped gracefully"), so a SIGKILL before the first periodic snapshot is
/// told from a first start, and the connection it missed is picked up.
/// The exact order: first start, a connection, SIGKILL 1.5 s later (the
/// first periodic snapshot is 30 s away), restart, data both ways.
#[test]
#[ignore = "needs root: network namespaces, NFQUEUE, iptables"]
fn a_crash_before_the_first_snapshot_keeps_connections() {
    let Some(lab) = Lab::new("early_crash") else {
        return;
    };
    lab.add_nfqueue_rule("0", true);
    let (state, rules) = with_state_file(&lab, CLIENT_OUT_RULES, "snapshot_interval = 30\n");
    let args = ["--rules", rules.to_str().unwrap()];
    let mut d = lab.start_daemon(&args);
    d.wait_log("no state file yet", Duration::from_secs(1));
    d.wait_log("wrote a first snapshot", Duration::from_secs(1));
    assert!(state.exists());
    let _e4 = TcpEcho::start(&lab.server, v4(8080));
    let s4 = lab::connect(&lab.client, v4(8080), Duration::from_secs(3)).expect("v4");
    lab::exchange(&s4, 100_000, 1).expect("before the crash");
    std::thread::sleep(Duration::from_millis(1500));
    d.kill9();
    let mut d2 = lab.start_daemon(&args);
    d2.wait_log(
        "restored 0 connections from a periodic snapshot",
        Duration::from_secs(1),
    );
    d2.wait_log("picked up mid-stream", Duration::from_secs(1));
    lab::exchange(&s4, 100_000, 2).expect("data both ways after the crash");
    lab::close(s4).expect("teardown after the crash");
    assert!(d2.stop().success(), "{}", d2.log());
    assert_eq!(d2.count_log("no_connection"), 0, "{}", d2.log());
}

/// Run as root with no state file set, the table survives a restart: the
/// default /var/lib/conntrackd/table (the lab mounts its own directory over
/// /var/lib), named in the start-up log; `--state-file ""` turns it off.
#[test]
#[ignore = "needs root: network namespaces, NFQUEUE, iptables"]
fn run_as_root_the_table_survives_a_restart_by_default() {
    let Some(lab) = Lab::new("default_state") else {
        return;
    };
    lab.add_nfqueue_rule("0", true);
    let rules = lab.write_rules("rules.toml", CLIENT_OUT_RULES);
    let args = ["--rules", rules.to_str().unwrap()];
    let mut d = lab.start_daemon(&args);
    let line = d.wait_log("the default when run as root", Duration::from_secs(1));
    assert!(line.contains("/var/lib/conntrackd/table"), "{line}");
    let table = lab.var_lib().join("conntrackd/table");
    assert!(table.exists(), "{} missing", table.display());
    let _e4 = TcpEcho::start(&lab.server, v4(8080));
    let s4 = lab::connect(&lab.client, v4(8080), Duration::from_secs(3)).expect("v4");
    lab::exchange(&s4, 10_000, 1).expect("before the restart");
    assert!(d.stop().success(), "{}", d.log());
    d.wait_log("saved the table", Duration::from_secs(1));
    let mut d2 = lab.start_daemon(&args);
    d2.wait_log("restored 1 connections", Duration::from_secs(1));
    lab::exchange(&s4, 10_000, 2).expect("after the restart");
    assert!(d2.stop().success(), "{}", d2.log());

    // Turned off: nothing is restored, the connection is cut.
    let mut d3 = lab.start_daemon(&["--rules", rules.to_str().unwrap(), "--state-file", ""]);
    d3.wait_log("no state file (daemon.state_file)", Duration::from_secs(1));
    assert!(
        lab::exchange(&s4, 10_000, 3).is_err(),
        "a connection the table lost passed"
    );
    assert!(d3.stop().success(), "{}", d3.log());
}

/// A state file that does not check out (here: truncated, then garbage) is
/// named in one warning and ignored; the daemon starts with an empty table
/// and serves.
#[test]
#[ignore = "needs root: network namespaces, NFQUEUE, iptables"]
fn a_bad_state_file_is_ignored_with_one_warning() {
    let Some(lab) = Lab::new("badstate") else {
        return;
    };
    lab.add_nfqueue_rule("0", true);
    let (state, rules) = with_state_file(&lab, &format!("{ALLOW_ALL}\n[daemon]\n"), "");
    let _echo = TcpEcho::start(&lab.server, v4(8080));
    for (bytes, why) in [
        (b"CTDTABLE\x01\x00".to_vec(), "truncated"),
        (vec![0x5a; 4096], "bad magic"),
    ] {
        std::fs::write(&state, &bytes).unwrap();
        let mut d = lab.start_daemon(&["--rules", rules.to_str().unwrap()]);
        let line = d.wait_log("state file not used", Duration::from_secs(1));
        assert!(line.contains(why), "{line}");
        assert_eq!(d.count_log("state file not used"), 1);
        assert_session(&lab.client, v4(8080), 10_000, "with an empty table");
        assert!(d.stop().success());
    }
}

/// One source (not spoofed) completing connections far faster than its
/// rule's `max_src_conn_rate` is refused beyond the rate (the connection
/// over the rate is removed when its handshake completes, as pf does),
/// while another client on the same rule opens all of its connections.
#[test]
#[ignore = "needs root: network namespaces, NFQUEUE, iptables"]
fn a_flooding_source_is_limited_and_other_clients_are_not() {
    let Some(lab) = Lab::new("srclimit") else {
        return;
    };
    lab.client
        .sh(&["ip", "addr", "add", "198.18.0.3/24", "dev", lab::HOST_IF]);
    lab.add_nfqueue_rule("0", true);
    let rules = lab.write_rules(
        "rules.toml",
        "[policy]\ndefault = \"drop\"\n\n[[rule]]\nname = \"web\"\naction = \"accept\"\n\
         proto = \"tcp\"\ndst_ports = [8080]\nmax_src_conn_rate = \"50/10\"\n",
    );
    let mut d = lab.start_daemon(&["--rules", rules.to_str().unwrap()]);
    let _echo = TcpEcho::start(&lab.server, v4(8080));
    // 200 connections from 198.18.0.3, as fast as they complete.
    let flooder = SocketAddr::new(IpAddr::V4([198, 18, 0, 3].into()), 0);
    let opened = lab.client.enter(move || {
        let mut opened = 0;
        for _ in 0..200 {
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
                .expect("socket");
            s.bind(&flooder.into()).expect("bind 198.18.0.3");
            if s.connect_timeout(&v4(8080).into(), Duration::from_secs(1))
                .is_ok()
            {
                opened += 1;
            }
            // Closed at once: abort (RST), leaving nothing to time out.
            let _ = s.set_linger(Some(Duration::ZERO));
        }
        opened
    });
    assert!(opened > 50, "only {opened} handshakes got through");
    // The other client (198.18.0.2), on the same rule, right after.
    for i in 0..20 {
        lab::tcp_session(&lab.client, v4(8080), 1000)
            .unwrap_or_else(|e| panic!("connection {i} of the other client: {e}"));
    }
    // The tracker shows in `conntrackd stats`: both sources.
    let socket = lab.control_socket();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_conntrackd"))
        .args(["stats", "--json", "--socket", socket.to_str().unwrap()])
        .output()
        .expect("conntrackd stats");
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stats as JSON");
    assert_eq!(stats["sources"]["tracked"], 2, "{stats}");
    d.stop();
    let stopped = d.wait_log("stopped", Duration::from_secs(3));
    let refused = lab::Daemon::counter(&stopped, "source_rate_limit");
    // 50 in the first 10 s (a few more as tokens refill), the rest refused.
    assert!(refused >= 140, "source_rate_limit = {refused}: {stopped}");
}

/// A UDP flow survives a restart: after it, the server speaks first on the
/// flow, which a policy that drops what it does not know passes only if the
/// flow was restored.
#[test]
#[ignore = "needs root: network namespaces, NFQUEUE, iptables"]
fn udp_flows_survive_a_restart() {
    let Some(lab) = Lab::new("udprestart") else {
        return;
    };
    lab.add_nfqueue_rule("0", false);
    let (_, rules) = with_state_file(&lab, CLIENT_OUT_RULES, "");
    let args = ["--rules", rules.to_str().unwrap()];
    let client_at = SocketAddr::new(IpAddr::V4(lab::CLIENT4), 5_000);
    let server_at = v4(5_354);
    let bind = |ns: &Ns, at: SocketAddr| {
        let s = ns.enter(move || std::net::UdpSocket::bind(at).expect("bind"));
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        s
    };
    let (client, server) = (bind(&lab.client, client_at), bind(&lab.server, server_at));
    let mut buf = [0u8; 64];
    let mut d = lab.start_daemon(&args);
    client.send_to(b"hello", server_at).unwrap();
    let (n, from) = server.recv_from(&mut buf).expect("the client's datagram");
    assert_eq!((&buf[..n], from), (&b"hello"[..], client_at));
    server.send_to(b"reply", client_at).unwrap();
    assert_eq!(client.recv(&mut buf).expect("the reply"), 5);
    assert!(d.stop().success());

    let mut d2 = lab.start_daemon(&args);
    d2.wait_log("restored 1 connections", Duration::from_secs(1));
    server.send_to(b"server first", client_at).unwrap();
    let n = client.recv(&mut buf).unwrap_or_else(|e| {
        panic!(
            "the server's datagram on the restored flow: {e}\n{}",
            d2.log()
        )
    });
    assert_eq!(&buf[..n], b"server first");
    assert!(d2.stop().success());
}

/// The control socket, through the `conntrackd` client: a real connection is
/// listed with both states; `kill` removes it and its next packet is
/// dropped; `stats` counts; `reload` of a broken file answers the error and
/// keeps the old rules; a garbage request gets an error and the daemon
/// keeps serving.
#[test]
#[ignore = "needs root: network namespaces, NFQUEUE, iptables"]
fn the_control_socket_lists_kills_counts_and_reloads() {
    let Some(lab) = Lab::new("control") else {
        return;
    };
    lab.add_nfqueue_rule("0", false);
    let rules = lab.write_rules("rules.toml", ALLOW_ALL);
    let socket = lab.control_socket();
    let d = lab.start_daemon(&["--rules", rules.to_str().unwrap()]);
    let ctl = |args: &[&str]| lab::ctl(&socket, args);
    let _echo = TcpEcho::start(&lab.server, v4(8080));
    let s = lab::connect(&lab.client, v4(8080), Duration::from_secs(3)).expect("connect");
    lab::exchange(&s, 10_000, 1).expect("exchange");

    let (ok, out) = ctl(&["flows", "--port", "8080"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("ESTABLISHED:ESTABLISHED") && out.contains("198.19.0.2:8080"),
        "{out}"
    );
    assert!(out.contains("1 shown, 1 matched"), "{out}");
    // Workers publish their counters once a second.
    std::thread::sleep(Duration::from_millis(1500));
    let (ok, out) = ctl(&["stats", "--json"]);
    assert!(ok, "{out}");
    let stats: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(stats["connections"], 1, "{out}");
    assert!(stats["reasons"]["tracked"].as_u64().unwrap() >= 5, "{out}");

    // A garbage request: an error, counted, and the daemon goes on.
    let mut raw = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    std::io::Write::write_all(&mut raw, b"{\"cmd\":\"format c:\"}\n").unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut raw, &mut answer).unwrap();
    assert!(
        answer.contains("\"ok\":false") && answer.contains("bad request"),
        "{answer}"
    );

    let (ok, out) = ctl(&["kill", "--dst", "198.19.0.2", "--port", "8080"]);
    assert!(ok && out.contains("1 connections removed"), "{out}");
    assert!(
        lab::exchange(&s, 1000, 2).is_err(),
        "a killed connection's packets are no_connection"
    );

    // A broken rules file: the error, and the old rules kept.
    lab::replace_file(&rules, "[policy]\ndefault = \"maybe\"\n");
    let (ok, out) = ctl(&["reload"]);
    assert!(
        !ok && out.contains("rules.toml:2:") && out.contains("old rules kept"),
        "{out}"
    );
    assert_session(&lab.client, v4(8080), 1000, "the old rules still in force");
    lab::replace_file(&rules, ALLOW_ALL);
    let (ok, out) = ctl(&["reload"]);
    assert!(ok && out.contains("rules reloaded"), "{out}");
    let (ok, out) = ctl(&["stats", "--json"]);
    assert!(ok && out.contains("\"bad_requests\":1"), "{out}");
    drop(d);
}

/// The daemon's stderr closed under it (a closed pipe, journald
/// restarting): its lines are lost, and that is all. It goes on judging
/// packets, answers on its control socket and stops cleanly; before, the
/// log subscriber's report of the failed write panicked the daemon.
#[test]
#[ignore = "needs root: network namespaces, NFQUEUE, iptables"]
fn a_closed_stderr_does_not_take_the_daemon_down() {
    let Some(lab) = Lab::new("closed_stderr") else {
        return;
    };
    let rules = lab.write_rules("rules.toml", ALLOW_ALL);
    let socket = lab.control_socket();
    let mut child = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.gw.name,
            env!("CARGO_BIN_EXE_conntrackd"),
        ])
        .args(["--rules", rules.to_str().unwrap(), "--install-iptables"])
        .args(["--state-file", "", "--control-socket"])
        .arg(&socket)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawning conntrackd");
    // Closed before its first line.
    drop(child.stderr.take());
    let started = Instant::now();
    while !lab::ctl(&socket, &["status"]).0 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no healthy status within 20 s: {:?}",
            child.try_wait()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let _echo = TcpEcho::start(&lab.server, v4(8080));
    lab::tcp_session(&lab.client, v4(8080), 64 * 1024).expect("a connection through the gateway");
    assert!(lab.gw.ruleset(false).contains("CONNTRACKD"));
    assert!(child.try_wait().unwrap().is_none(), "the daemon died");
    // Judged: the connection is in the table.
    let (_, flows) = lab::ctl(&socket, &["flows", "--json"]);
    assert!(flows.contains("\"dport\":8080"), "flows: {flows}");
    // SAFETY: a signal to our own child, which has not been reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no exit 10 s after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert!(
        !lab.gw.ruleset(false).contains("CONNTRACKD"),
        "hooks left behind"
    );
}

/// `stats` right after traffic counts it: the workers publish their
/// counters when asked, not only once a second.
#[test]
#[ignore = "needs root: network namespaces, NFQUEUE, iptables"]
fn stats_right_after_traffic_counts_it() {
    let Some(lab) = Lab::new("fresh_stats") else {
        return;
    };
    let rules = lab.write_rules("rules.toml", ALLOW_ALL);
    let _d = lab.start_daemon(&["--rules", rules.to_str().unwrap(), "--install-iptables"]);
    let _echo = TcpEcho::start(&lab.server, v4(8080));
    let socket = lab.control_socket();
    let mut seen = lab::stats(&socket)["accepted"].as_u64().unwrap();
    for round in 0..3 {
        lab::tcp_session(&lab.client, v4(8080), 1024).expect("a connection through the gateway");
        let now = lab::stats(&socket)["accepted"].as_u64().unwrap();
        // A handshake, a request and its answer, a teardown: more than 6.
        assert!(
            now >= seen + 6,
            "round {round}: accepted {seen} -> {now} right after a connection"
        );
        seen = now;
    }
}
