//! conntrackd on a NAT gateway (tests/common/lab/): the kernel NATs with
//! the shipped rules (packaging/iptables/nat.rules.v4|v6, interfaces renamed
//! to the lab's), conntrackd judges every forwarded packet.
//!
//! The lab's client side (cli, 198.18.0.0/24) is the LAN, the server side
//! (srv, 198.19.0.0/24) upstream: LAN clients are masqueraded to the
//! gateway's 198.19.0.1, and the port forward sends 198.19.0.1:8080 to the
//! LAN server 198.18.0.2:80 (the client namespace listens there). In the
//! masquerade tests the server has no route back to the LAN: a packet that
//! was not masqueraded gets no answer.
//!
//! The last tests run a NAT pair in the failover lab (tests/common/lab/
//! pair.rs: keepalived, the NATS cluster), without and with conntrack-tools
//! replicating the kernel's table beside conntrackd.
//!
//! Needs root, so the tests are `#[ignore]`d: run them as root with
//! `CI=true cargo test --test daemon_nat -- --include-ignored`.

#![allow(clippy::disallowed_methods)] // not the core: tests, benchmarks and tools read clocks and start threads

mod common;

use common::lab::{
    self, ctl, json_lines, Lab, Ns, Pair, PairConfig, RawSender, Side, Sniffer, TcpEcho,
    NATS_NODE_PASSWORD, VIP_SERVER4, VIP_SERVER6,
};
use conntrackd::wire::build;
use conntrackd::wire::TcpFlags as F;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The gateway's upstream addresses: what masqueraded packets come from.
const GW_UP4: Ipv4Addr = lab::GW_SERVER4;
const GW_UP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);
/// The port forward of the shipped example: the public port and the LAN
/// server's.
const PUBLIC_PORT: u16 = 8080;
const LAN_SERVER_PORT: u16 = 80;

fn sa(ip: impl Into<IpAddr>, port: u16) -> SocketAddr {
    SocketAddr::new(ip.into(), port)
}

/// Loads the shipped NAT rules into the gateway: lan0/wan0 renamed to the
/// lab's cli/srv, the example LAN server to the client namespace's address,
/// the port forward uncommented when `dnat`, the NFQUEUE line left out when
/// `queue` is false (hand-off: --install-iptables queues instead). Also
/// sets the sysctl the rules ask for (nf_conntrack_tcp_be_liberal).
fn load_nat_rules(lab: &Lab, dnat: bool, queue: bool) {
    for v6 in [false, true] {
        let name = if v6 { "nat.rules.v6" } else { "nat.rules.v4" };
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("packaging/iptables")
            .join(name);
        let shipped = std::fs::read_to_string(&path).expect("the shipped NAT rules");
        let forward = "#-A PREROUTING -i wan0 -p tcp --dport 8080 -j DNAT";
        assert!(shipped.contains(forward), "{name} lost its port forward");
        assert!(shipped.contains("-A POSTROUTING -o wan0 -j MASQUERADE"));
        assert!(shipped.contains("-A POSTROUTING -o wan0 -m conntrack --ctstate INVALID -j DROP"));
        let mut text = String::new();
        for line in shipped.lines() {
            if !queue && line.starts_with("-A FORWARD -j NFQUEUE") {
                continue;
            }
            let line = match line.strip_prefix('#') {
                Some(rule) if dnat && line.starts_with(forward) => rule,
                _ => line,
            };
            text.push_str(
                &line
                    .replace("wan0", lab::GW_SERVER_IF)
                    .replace("lan0", lab::GW_CLIENT_IF)
                    .replace("192.168.1.10", "198.18.0.2")
                    .replace("2001:db8:1::10", "2001:db8:1::2"),
            );
            text.push('\n');
        }
        let file = lab.write_rules(name, &text);
        let tool = if v6 {
            "ip6tables-restore"
        } else {
            "iptables-restore"
        };
        lab.gw.sh(&[tool, "-w", "5", file.to_str().unwrap()]);
    }
    lab.gw
        .sysctl("net.netfilter.nf_conntrack_tcp_be_liberal", "1");
}

/// The server loses its routes back to the LAN: only masqueraded packets
/// (from the gateway's on-link address) can be answered.
fn server_without_lan_routes(lab: &Lab) {
    lab.server.sh(&["ip", "route", "del", "default"]);
    lab.server.sh(&["ip", "-6", "route", "del", "default"]);
}

/// A TCP echo server that records each connection's peer address (what the
/// server sees as the client). Stops when dropped.
struct PeerEcho {
    stop: Arc<AtomicBool>,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    streams: Arc<Mutex<Vec<TcpStream>>>,
    handle: Option<JoinHandle<()>>,
}

impl PeerEcho {
    fn start(ns: &Ns, addr: SocketAddr) -> PeerEcho {
        let listener = ns.enter(move || TcpListener::bind(addr).expect("bind"));
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let streams = Arc::new(Mutex::new(Vec::new()));
        let (flag, sink, kept) = (stop.clone(), peers.clone(), streams.clone());
        let handle = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((conn, peer)) => {
                        sink.lock().unwrap().push(peer);
                        if let Ok(c) = conn.try_clone() {
                            kept.lock().unwrap().push(c);
                        }
                        std::thread::spawn(move || lab::echo(conn, Duration::from_secs(30)));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        PeerEcho {
            stop,
            peers,
            streams,
            handle: Some(handle),
        }
    }

    fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().unwrap().clone()
    }

    /// The server's end of the connection from `peer` (writes go to the
    /// client beside the echo).
    fn stream(&self, peer: SocketAddr) -> TcpStream {
        let streams = self.streams.lock().unwrap();
        let s = streams
            .iter()
            .find(|s| s.peer_addr().ok() == Some(peer))
            .unwrap_or_else(|| panic!("no connection from {peer}"));
        s.try_clone().unwrap()
    }
}

impl Drop for PeerEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// `conntrackd flows --json -v` with these filter arguments (the summary
/// line left out).
fn flows(socket: &Path, filter: &[&str]) -> Vec<Value> {
    let mut args = vec!["flows", "--json", "-v"];
    args.extend_from_slice(filter);
    let (ok, out) = ctl(socket, &args);
    assert!(ok, "{out}");
    let mut lines = json_lines(&out);
    lines.pop();
    lines
}

/// The `--json` answer of `conntrackd why SRC DST`.
fn why(socket: &Path, src: &str, dst: &str) -> Value {
    let (ok, out) = ctl(socket, &["why", src, dst, "--json"]);
    assert!(ok, "{out}");
    json_lines(&out).pop().expect("an answer")
}

/// The kernel's conntrack entries in the gateway namespace (`conntrack -L`
/// with these filter arguments), one line each.
fn kernel_entries(lab: &Lab, family6: bool, filter: &[&str]) -> Vec<String> {
    let mut args = vec![
        "conntrack",
        "-L",
        "-f",
        if family6 { "ipv6" } else { "ipv4" },
    ];
    args.extend_from_slice(filter);
    let out = lab.gw.output(&args);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// `conntrack` (conntrack-tools) is needed to read and flush the kernel's table.
const CONNTRACK_TOOL: (&str, &str, &str) = ("conntrack", "--version", "conntrack");

/// LAN clients masqueraded to an upstream server, IPv4 and IPv6: the
/// server sees the gateway's address; conntrackd's `flows` shows the LAN
/// client's own address and the server (the addresses at its hook, before
/// SNAT), and the kernel's entry holds the mapping. A port the policy does
/// not admit is dropped by conntrackd with NAT in place, and `drops`/`why`
/// name the LAN client.
#[test]
#[ignore = "needs root: network namespaces, NFQUEUE, iptables"]
fn masqueraded_lan_clients_reach_upstream_and_conntrackd_sees_their_own_addresses() {
    if lab::skip_without("nat-masquerade", &[CONNTRACK_TOOL]) {
        return;
    }
    let Some(lab) = Lab::new("nat-masquerade") else {
        return;
    };
    load_nat_rules(&lab, false, true);
    server_without_lan_routes(&lab);
    let rules = lab.write_rules(
        "rules.toml",
        r#"
[policy]
default = "drop"

[[rule]]
name = "lan-out"
action = "accept"
proto = "tcp"
in_iface = "cli"
out_iface = "srv"
src = ["198.18.0.0/24", "2001:db8:1::/64"]
dst_ports = [8080]

[[rule]]
name = "refused"
action = "reject"
proto = "tcp"
dst_ports = [9091]
"#,
    );
    let socket = lab.control_socket();
    let d = lab.start_daemon(&["--rules", rules.to_str().unwrap()]);
    let e4 = PeerEcho::start(&lab.server, sa(lab::SERVER4, 8080));
    let e6 = PeerEcho::start(&lab.server, sa(lab::SERVER6, 8080));
    // Listening, so that only the policy can keep a connection from opening.
    let _denied4 = TcpEcho::start(&lab.server, sa(lab::SERVER4, 9090));

    for (to, gw_up, echo) in [
        (sa(lab::SERVER4, 8080), IpAddr::from(GW_UP4), &e4),
        (sa(lab::SERVER6, 8080), IpAddr::from(GW_UP6), &e6),
    ] {
        let s = lab::connect(&lab.client, to, Duration::from_secs(5)).expect("connect");
        let local = s.local_addr().unwrap();
        lab::exchange(&s, 1 << 20, 0x31).expect("data both ways through the NAT");
        let peers = echo.peers();
        assert_eq!(peers.len(), 1, "{peers:?}");
        assert_eq!(peers[0].ip(), gw_up, "the server saw {peers:?}");

        let port = local.port().to_string();
        let listed = flows(&socket, &["--port", &port]);
        assert_eq!(listed.len(), 1, "{listed:#?}");
        let f = &listed[0];
        assert_eq!(f["src"], local.ip().to_string(), "{f}");
        assert_eq!(f["sport"], local.port(), "{f}");
        assert_eq!(f["dst"], to.ip().to_string(), "{f}");
        assert_eq!(f["dport"], 8080, "{f}");
        assert_eq!(f["state"], "ESTABLISHED:ESTABLISHED", "{f}");
        assert_eq!(f["rule"], "lan-out", "{f}");
        assert!(f["bytes"][1].as_u64().unwrap() >= 1 << 20, "{f}");

        // The kernel's entry: original direction as sent, reply direction
        // to the gateway's address (the mapping conntrackd does not hold).
        let entries = kernel_entries(&lab, to.is_ipv6(), &["-p", "tcp", "--dport", "8080"]);
        assert_eq!(entries.len(), 1, "{entries:?}");
        assert!(
            entries[0].contains(&format!("src={}", local.ip()))
                && entries[0].contains(&format!("dst={gw_up}"))
                && entries[0].contains("[ASSURED]"),
            "{entries:?}"
        );
        lab::close(s).expect("clean close through the NAT");
    }

    // The policy still decides, NAT or not: 9090 is admitted by no rule.
    let denied = lab::connect(&lab.client, sa(lab::SERVER4, 9090), Duration::from_secs(2));
    assert!(denied.is_err(), "a port no rule admits connected");
    let (ok, out) = ctl(&socket, &["drops", "--json", "--port", "9090"]);
    assert!(ok, "{out}");
    let drops = json_lines(&out);
    assert!(drops.len() >= 2, "a drop and the summary: {out}");
    assert_eq!(drops[0]["reason"], "drop_by_default", "{out}");
    assert_eq!(
        drops[0]["src"], "198.18.0.2",
        "the LAN client's own address: {out}"
    );
    let w = why(&socket, "198.18.0.2", "198.19.0.2:9090");
    assert_eq!(w["new_connection"]["action"], "drop", "{w}");
    assert_eq!(w["drops"][0]["reason"], "drop_by_default", "{w}");
    // A reject's answer reaches the LAN client (it leaves through OUTPUT,
    // untracked by the kernel, towards the LAN: the mangle rule, which
    // names wan0 only, lets it be).
    for to in [sa(lab::SERVER4, 9091), sa(lab::SERVER6, 9091)] {
        let refused = lab::connect(&lab.client, to, Duration::from_secs(3));
        assert_eq!(
            refused.map(|_| ()).map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionRefused),
            "{to}"
        );
    }
    drop(d);
}

/// A port forward: an upstream client reaches the LAN server through the
/// gateway's public address and port. conntrackd sees the LAN server's own
/// address and port (after DNAT) and the upstream client's address: the
/// rule that names those admits the connection; a forward to a port no rule
/// admits is dropped; one a rule rejects is dropped silently (its answer
/// cannot be NATed, and is not let out); after a reload to a rule naming the public address
/// and port instead, a new connection is dropped (that rule never matches).
#[test]
#[ignore = "needs root: network namespaces, NFQUEUE, iptables"]
fn a_port_forward_is_admitted_by_a_rule_naming_the_lan_server_not_the_public_address() {
    let Some(lab) = Lab::new("nat-dnat") else {
        return;
    };
    load_nat_rules(&lab, true, true);
    // A second forward, to a port no rule admits.
    lab.gw.iptables(
        false,
        "-t nat -A PREROUTING -i srv -p tcp --dport 8081 -j DNAT --to-destination 198.18.0.2:81",
    );
    let lan_rule = r#"
[policy]
default = "drop"

[[rule]]
name = "port-forward"
action = "accept"
proto = "tcp"
in_iface = "srv"
dst = ["198.18.0.2"]
dst_ports = [80]

[[rule]]
name = "refused-forward"
action = "reject"
proto = "tcp"
dst_ports = [82]
"#;
    let public_rule = r#"
[policy]
default = "drop"

[[rule]]
name = "public-address"
action = "accept"
proto = "tcp"
dst = ["198.19.0.1"]
dst_ports = [8080]
"#;
    lab.gw.iptables(
        false,
        "-t nat -A PREROUTING -i srv -p tcp --dport 8082 -j DNAT --to-destination 198.18.0.2:82",
    );
    let rules = lab.write_rules("rules.toml", lan_rule);
    let socket = lab.control_socket();
    let d = lab.start_daemon(&["--rules", rules.to_str().unwrap()]);
    let lan_server = PeerEcho::start(&lab.client, sa(lab::CLIENT4, LAN_SERVER_PORT));
    let _other = TcpEcho::start(&lab.client, sa(lab::CLIENT4, 81));
    let public = sa(GW_UP4, PUBLIC_PORT);

    let s = lab::connect(&lab.server, public, Duration::from_secs(5)).expect("through the forward");
    let upstream = s.local_addr().unwrap();
    lab::exchange(&s, 1 << 20, 0x41).expect("data both ways through the forward");
    assert_eq!(
        lan_server.peers(),
        vec![upstream],
        "the LAN server sees the upstream client itself"
    );
    let listed = flows(&socket, &["--port", "80"]);
    assert_eq!(listed.len(), 1, "{listed:#?}");
    let f = &listed[0];
    assert_eq!(f["src"], upstream.ip().to_string(), "{f}");
    assert_eq!(f["sport"], upstream.port(), "{f}");
    assert_eq!(f["dst"], "198.18.0.2", "after DNAT: {f}");
    assert_eq!(f["dport"], LAN_SERVER_PORT, "after DNAT: {f}");
    assert_eq!(f["rule"], "port-forward", "{f}");
    // Nothing is listed under the public address.
    assert!(flows(&socket, &["--dst", "198.19.0.1"]).is_empty());

    // The forward to :81: NATed by the kernel, dropped by conntrackd.
    let denied = lab::connect(&lab.server, sa(GW_UP4, 8081), Duration::from_secs(2));
    assert!(denied.is_err(), "a forward no rule admits connected");
    let w = why(&socket, &upstream.ip().to_string(), "198.18.0.2:81");
    assert_eq!(w["drops"][0]["reason"], "drop_by_default", "{w}");
    assert_eq!(w["new_connection"]["action"], "drop", "{w}");

    // A reject of a forwarded connection is silent: its answer would carry
    // the LAN server's address (the kernel cannot NAT a packet it does not
    // track), and the shipped mangle rule keeps it from leaving upstream.
    let silent = lab::connect(&lab.server, sa(GW_UP4, 8082), Duration::from_secs(2));
    assert_eq!(
        silent.map(|_| ()).map_err(|e| e.kind()),
        Err(std::io::ErrorKind::TimedOut)
    );
    let w = why(&socket, &upstream.ip().to_string(), "198.18.0.2:82");
    assert_eq!(w["drops"][0]["reason"], "reject_by_rule", "{w}");

    // A rule naming the public address: conntrackd never sees it.
    lab::replace_file(&rules, public_rule);
    d.signal(libc::SIGHUP);
    d.wait_log("rules reloaded", Duration::from_secs(10));
    let refused = lab::connect(&lab.server, public, Duration::from_secs(2));
    assert!(
        refused.is_err(),
        "a rule naming the public address admitted a forwarded connection"
    );
    let w = why(&socket, &upstream.ip().to_string(), "198.18.0.2:80");
    let reasons: Vec<&Value> = w["drops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| &d["reason"])
        .collect();
    assert!(reasons.contains(&&Value::from("drop_by_default")), "{w}");
    // The tracked connection keeps its state across the reload.
    lab::exchange(&s, 100_000, 0x42).expect("the admitted connection after the reload");
    lab::close(s).expect("clean close");
}

/// LAN clients may open anything upstream; the rest is dropped.
const LAN_OUT: &str = r#"
[policy]
default = "drop"

[[rule]]
name = "lan-out"
action = "accept"
src = ["198.18.0.0/24"]
"#;

/// A masquerading gateway (the shipped NAT rules, no port forward) whose
/// conntrackd runs [`LAN_OUT`], the server with no route back to the LAN;
/// `None` when the test must be skipped.
fn masquerading(test: &str) -> Option<(Lab, lab::Daemon)> {
    let lab = Lab::new(test)?;
    load_nat_rules(&lab, false, true);
    server_without_lan_routes(&lab);
    let rules = lab.write_rules("rules.toml", LAN_OUT);
    let d = lab.start_daemon(&["--rules", rules.to_str().unwrap()]);
    Some((lab, d))
}

/// Crafted packets on a masqueraded connection (the kernel's conntrack
/// liberal about windows, as the shipped sysctl file sets it): a segment
/// far above the window and a SYN+FIN with the connection's own tuple are
/// dropped by conntrackd (its `why` lists them) and never reach the server,
/// NATed or not; the connection goes on.
#[test]
#[ignore = "needs root: network namespaces, NFQUEUE, iptables"]
fn invalid_packets_on_a_masqueraded_connection_are_dropped_by_conntrackd() {
    let Some((lab, _d)) = masquerading("nat-invalid") else {
        return;
    };
    let socket = lab.control_socket();
    let _echo = TcpEcho::start(&lab.server, sa(lab::SERVER4, 8080));
    let sniffer = Sniffer::new(&lab.server, lab::HOST_IF);
    let s =
        lab::connect(&lab.client, sa(lab::SERVER4, 8080), Duration::from_secs(5)).expect("connect");
    let local = s.local_addr().unwrap();
    lab::exchange(&s, 100_000, 0x51).expect("exchange");
    let listed = flows(&socket, &["--port", &local.port().to_string()]);
    let w = &listed[0]["windows"];
    let end = |i: usize| w[i]["end"].as_u64().unwrap() as u32;
    let raw = RawSender::new(&lab.client);
    const MARK: &[u8] = b"conntrackd-nat-crafted";
    // 1 GiB past what the client has sent: above any window.
    raw.send(
        &build::tcp(local, sa(lab::SERVER4, 8080))
            .flags(F::ACK | F::PSH)
            .seq(end(0).wrapping_add(1 << 30))
            .ack(end(1))
            .payload(MARK)
            .build(),
    );
    raw.send(
        &build::tcp(local, sa(lab::SERVER4, 8080))
            .flags(F::SYN | F::FIN)
            .seq(end(0))
            .payload(MARK)
            .build(),
    );
    let mark_in = |p: &[u8]| p.windows(MARK.len()).any(|x| x == MARK);
    let deadline = Instant::now() + Duration::from_secs(5);
    let reasons = loop {
        let w = why(&socket, &local.to_string(), "198.19.0.2:8080");
        let reasons: Vec<String> = w["drops"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["reason"].as_str().unwrap().to_string())
            .collect();
        if reasons.len() >= 2 || Instant::now() > deadline {
            break reasons;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        reasons.iter().any(|r| r == "seq_above_window"),
        "{reasons:?}"
    );
    assert!(reasons.iter().any(|r| r == "syn_fin"), "{reasons:?}");
    assert!(
        !sniffer.wait_for(Duration::from_millis(500), mark_in),
        "a crafted packet reached the server"
    );
    lab::exchange(&s, 100_000, 0x52).expect("the connection goes on");
    lab::close(s).expect("clean close");
}

/// The kernel's conntrack table and conntrackd's are separate, and only
/// conntrackd's decides: a connection removed from conntrackd's table
/// (`conntrackd kill`) is dropped although the kernel still holds its NAT
/// entry; a connection whose kernel entry is flushed (`conntrack -F`) is
/// still tracked by conntrackd, and goes on: the LAN client's next packet
/// makes the kernel pick it up again and masquerade it to the same port.
#[test]
#[ignore = "needs root: network namespaces, NFQUEUE, iptables"]
fn the_kernel_conntrack_table_does_not_decide_conntrackds_verdicts() {
    if lab::skip_without("nat-kernel-table", &[CONNTRACK_TOOL]) {
        return;
    }
    let Some((lab, _d)) = masquerading("nat-kernel-table") else {
        return;
    };
    let socket = lab.control_socket();
    let _e1 = TcpEcho::start(&lab.server, sa(lab::SERVER4, 8080));
    let e2 = PeerEcho::start(&lab.server, sa(lab::SERVER4, 8081));
    let killed =
        lab::connect(&lab.client, sa(lab::SERVER4, 8080), Duration::from_secs(5)).expect("connect");
    let kept =
        lab::connect(&lab.client, sa(lab::SERVER4, 8081), Duration::from_secs(5)).expect("connect");
    lab::exchange(&killed, 10_000, 1).expect("exchange");
    lab::exchange(&kept, 10_000, 2).expect("exchange");

    // (a) Out of conntrackd's table, still in the kernel's: dropped.
    let (ok, out) = ctl(&socket, &["kill", "--port", "8080"]);
    assert!(ok && out.contains("1 connections removed"), "{out}");
    assert_eq!(
        kernel_entries(&lab, false, &["-p", "tcp", "--dport", "8080"]).len(),
        1,
        "the kernel's entry stays"
    );
    let err = lab::exchange_within(&killed, 1000, 3, Duration::from_secs(2));
    assert!(err.is_err(), "a connection conntrackd forgot carried data");
    let port = killed.local_addr().unwrap().port();
    let w = why(&socket, &format!("198.18.0.2:{port}"), "198.19.0.2:8080");
    assert_eq!(w["tracked"].as_array().unwrap().len(), 0, "{w}");
    assert_eq!(w["drops"][0]["reason"], "no_connection", "{w}");
    lab::abort(killed);

    // (b) Out of the kernel's table, still in conntrackd's: goes on. Idle
    // first (the delayed ACKs are out), so that the LAN side speaks first.
    std::thread::sleep(Duration::from_secs(1));
    lab.gw.sh(&["conntrack", "-F"]);
    assert!(
        kernel_entries(&lab, false, &["-p", "tcp", "--dport", "8081"]).is_empty(),
        "flushed"
    );
    let local = kept.local_addr().unwrap();
    let before = flows(&socket, &["--port", &local.port().to_string()]);
    assert_eq!(before.len(), 1, "conntrackd still tracks it: {before:#?}");
    lab::exchange(&kept, 100_000, 4).expect("the connection after the kernel's flush");
    let after = flows(&socket, &["--port", &local.port().to_string()]);
    assert_eq!(after[0]["state"], "ESTABLISHED:ESTABLISHED", "{after:#?}");
    assert_eq!(after[0]["rule"], "lan-out", "the same entry: {after:#?}");
    assert!(
        after[0]["bytes"][1].as_u64() > before[0]["bytes"][1].as_u64(),
        "{before:#?}\n{after:#?}"
    );
    // The kernel masqueraded it afresh, to the same port (it was free).
    let entries = kernel_entries(&lab, false, &["-p", "tcp", "--dport", "8081"]);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!(
        e2.peers(),
        vec![sa(GW_UP4, local.port())],
        "the server saw one client port"
    );
    lab::close(kept).expect("clean close");
}

/// Rules for the restart and hand-off tests: LAN clients out, the port
/// forward in; everything else dropped.
const NAT_RULES: &str = r#"
[policy]
default = "drop"

[[rule]]
name = "lan-out"
action = "accept"
proto = "tcp"
in_iface = "cli"
out_iface = "srv"
src = ["198.18.0.0/24"]

[[rule]]
name = "port-forward"
action = "accept"
proto = "tcp"
in_iface = "srv"
dst = ["198.18.0.2"]
dst_ports = [80]
"#;

/// A masqueraded and a port-forwarded connection carry data both ways
/// across a conntrackd restart (SIGTERM, state file): the kernel keeps the
/// NAT mappings, conntrackd its table (restored: the policy would drop the
/// connections' packets otherwise, as `no_connection`).
#[test]
#[ignore = "needs root: network namespaces, NFQUEUE, iptables"]
fn natted_connections_survive_a_conntrackd_restart() {
    let Some(lab) = Lab::new("nat-restart") else {
        return;
    };
    load_nat_rules(&lab, true, true);
    server_without_lan_routes(&lab);
    let state = lab.dir.path().join("table");
    let rules = lab.write_rules(
        "rules.toml",
        &format!(
            "{NAT_RULES}\n[daemon]\nstate_file = {:?}\n",
            state.display().to_string()
        ),
    );
    let socket = lab.control_socket();
    let args = ["--rules", rules.to_str().unwrap()];
    let mut d = lab.start_daemon(&args);
    let _up = TcpEcho::start(&lab.server, sa(lab::SERVER4, 8080));
    let _lan = TcpEcho::start(&lab.client, sa(lab::CLIENT4, LAN_SERVER_PORT));
    let out = lab::connect(&lab.client, sa(lab::SERVER4, 8080), Duration::from_secs(5))
        .expect("masqueraded");
    let fwd = lab::connect(&lab.server, sa(GW_UP4, PUBLIC_PORT), Duration::from_secs(5))
        .expect("port-forwarded");
    lab::exchange(&out, 100_000, 1).expect("masqueraded, before");
    lab::exchange(&fwd, 100_000, 2).expect("forwarded, before");

    assert!(d.stop().success(), "{}", d.log());
    d.wait_log("saved the table", Duration::from_secs(1));
    let d2 = lab.start_daemon(&args);
    d2.wait_log("restored 2 connections", Duration::from_secs(1));
    let restored = flows(&socket, &[]);
    assert_eq!(restored.len(), 2, "{restored:#?}");
    lab::exchange(&out, 100_000, 3).expect("masqueraded, after the restart");
    lab::exchange(&fwd, 100_000, 4).expect("forwarded, after the restart");
    // conntrackd judged them (they are its own again, counted).
    for f in flows(&socket, &[]) {
        assert!(f["bytes"][0].as_u64().unwrap() >= 100_000, "{f}");
        assert_eq!(f["state"], "ESTABLISHED:ESTABLISHED", "{f}");
    }
    lab::close(out).expect("masqueraded teardown");
    lab::close(fwd).expect("forwarded teardown");
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

/// Hand-off with NAT: a masqueraded and a port-forwarded connection are
/// handed to the kernel (connmark), carry data past the engine's timeout
/// while conntrackd keeps them by reading the kernel's marked entries (its
/// match by the addresses at the forward hook: the port forward's entry has
/// the public port in its original tuple, the LAN server's in its reply
/// tuple), and close cleanly with their FINs judged by conntrackd.
#[test]
#[ignore = "needs root: network namespaces, NFQUEUE, iptables"]
fn handoff_works_with_masquerade_and_a_port_forward() {
    let Some(lab) = Lab::new("nat-handoff") else {
        return;
    };
    // The NFQUEUE line left out: --install-iptables queues and adds the
    // hand-off rules, as nat.rules.v4 says.
    load_nat_rules(&lab, true, false);
    server_without_lan_routes(&lab);
    lab.gw.sh(&[
        "sysctl",
        "-qw",
        "net.netfilter.nf_conntrack_tcp_timeout_established=3",
    ]);
    let rules = lab.write_rules(
        "rules.toml",
        &format!(
            "{NAT_RULES}\n[engine.timeouts]\nestablished = 3\ntime_wait = 1\n\n\
             [daemon]\nhandoff = true\nhandoff_refresh = 1\nstats_interval = 1\n"
        ),
    );
    let mut d = lab.start_daemon(&[
        "--rules",
        rules.to_str().unwrap(),
        "--install-iptables",
        "--log-level",
        "info,conntrackd::daemon=debug",
    ]);
    let _up = TcpEcho::start(&lab.server, sa(lab::SERVER4, 8080));
    let _lan = TcpEcho::start(&lab.client, sa(lab::CLIENT4, LAN_SERVER_PORT));
    let out = lab::connect(&lab.client, sa(lab::SERVER4, 8080), Duration::from_secs(5))
        .expect("masqueraded");
    let fwd = lab::connect(&lab.server, sa(GW_UP4, PUBLIC_PORT), Duration::from_secs(5))
        .expect("port-forwarded");
    // 8 s of traffic: past the engine's 3 s, through the kernel once handed off.
    for i in 0..8 {
        lab::exchange(&out, 256 << 10, i).expect("masqueraded, handed off");
        lab::exchange(&fwd, 256 << 10, i).expect("forwarded, handed off");
        std::thread::sleep(Duration::from_secs(1));
    }
    std::thread::sleep(Duration::from_millis(1500)); // a fresh stats line
    let log = d.log();
    assert_eq!(
        field(&log, "stats", "connections"),
        Some(2),
        "the engine forgot a live connection:\n{log}"
    );
    assert_eq!(
        field(&log, "kept handed-off connections", "kept"),
        Some(2),
        "the kernel's NATed entries were not matched:\n{log}"
    );
    lab::close(out).expect("masqueraded: both FINs passed");
    lab::close(fwd).expect("forwarded: both FINs passed");
    assert!(d.stop().success(), "log:\n{}", d.log());
    let log = d.log();
    assert!(
        field(&log, "stopped", "handoff_marked").unwrap_or(0) >= 2,
        "nothing was handed off:\n{log}"
    );
    assert_eq!(field(&log, "stopped", "dropped"), Some(0), "{log}");
}

/// Whether `p` is an IPv4 TCP packet from `src` with RST set.
fn rst_from(p: &[u8], src: Ipv4Addr) -> bool {
    if p.len() < 20 || p[0] >> 4 != 4 || p[9] != 6 {
        return false;
    }
    let ihl = usize::from(p[0] & 0x0f) * 4;
    p.len() >= ihl + 14 && p[12..16] == src.octets() && p[ihl + 13] & F::RST != 0
}

/// What the mangle rule of nat.rules.v4 is for: a packet conntrackd accepts
/// but the kernel's conntrack cannot track is not NATed. After the kernel's
/// entry is flushed, the LAN client's RST (in conntrackd's window, so
/// accepted) is INVALID to the kernel (a RST opens nothing): with the rule
/// it goes nowhere; without it (the control) it leaves upstream with the
/// LAN client's own address.
#[test]
#[ignore = "needs root: network namespaces, NFQUEUE, iptables"]
fn a_packet_the_kernel_cannot_nat_never_leaves_with_the_lan_address() {
    if lab::skip_without("nat-leak", &[CONNTRACK_TOOL]) {
        return;
    }
    let Some((lab, _d)) = masquerading("nat-leak") else {
        return;
    };
    let socket = lab.control_socket();
    let _echo = TcpEcho::start(&lab.server, sa(lab::SERVER4, 8080));
    for with_rule in [true, false] {
        if !with_rule {
            lab.gw.iptables(
                false,
                "-t mangle -D POSTROUTING -o srv -m conntrack --ctstate INVALID -j DROP",
            );
        }
        let sniffer = Sniffer::new(&lab.server, lab::HOST_IF);
        let s = lab::connect(&lab.client, sa(lab::SERVER4, 8080), Duration::from_secs(5))
            .expect("connect");
        let port = s.local_addr().unwrap().port().to_string();
        lab::exchange(&s, 10_000, 1).expect("exchange");
        std::thread::sleep(Duration::from_secs(1)); // idle: the delayed ACKs are out
        lab.gw.sh(&["conntrack", "-F"]);
        lab::abort(s);
        // conntrackd judged the RST (in its window): the connection is closed.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let listed = flows(&socket, &["--port", &port]);
            if listed.is_empty() || listed[0]["state"] != "ESTABLISHED:ESTABLISHED" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the RST never reached conntrackd"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let leaked = sniffer.wait_for(Duration::from_secs(1), |p| rst_from(p, lab::CLIENT4));
        assert_eq!(
            leaked, !with_rule,
            "with the mangle rule {with_rule}: a RST from the LAN address upstream {leaked}"
        );
    }
}

// ---- a NAT gateway pair (tests/common/lab/pair.rs) -------------------------

/// One gateway of a NAT pair: the LAN SNATed to the upstream virtual
/// address (the same mapping on either gateway; restricted to the LAN's
/// sources, or the gateway's own VRRP adverts would carry the VIP), the
/// port forward on that address, the INVALID rule of nat.rules.v4, every
/// forwarded packet to conntrackd, which shares its table over NATS. No
/// conntrack-tools: the kernel's entries are not copied.
fn start_nat_gateway(pair: &Pair, side: Side) -> lab::Daemon {
    let gw = pair.gw(side);
    for (v6, lan, vip) in [
        (false, "198.18.0.0/24", VIP_SERVER4.to_string()),
        (true, "2001:db8:1::/64", VIP_SERVER6.to_string()),
    ] {
        gw.iptables(
            v6,
            &format!("-t nat -A POSTROUTING -s {lan} -o srv -j SNAT --to-source {vip}"),
        );
        gw.iptables(
            v6,
            "-t mangle -A POSTROUTING -o srv -m conntrack --ctstate INVALID -j DROP",
        );
        gw.iptables(v6, "-A FORWARD -j NFQUEUE --queue-num 0");
        // As nat.rules.v4's INPUT policy: an upstream packet of a connection
        // the kernel has no entry for is addressed to the gateway itself,
        // which must not answer it with a RST.
        gw.iptables(v6, "-A INPUT -i srv -p tcp -j DROP");
    }
    gw.iptables(
        false,
        &format!(
            "-t nat -A PREROUTING -i srv -d {VIP_SERVER4} -p tcp --dport 8080 \
             -j DNAT --to-destination 198.18.0.2:80"
        ),
    );
    gw.sysctl("net.netfilter.nf_conntrack_tcp_be_liberal", "1");
    let (me, other) = (side.letter(), side.other().letter());
    let rules = pair.write_file(
        &format!("rules-{me}.toml"),
        &format!(
            r#"
[policy]
default = "drop"

[[rule]]
name = "lan-out"
action = "accept"
proto = "tcp"
out_iface = "srv"
src = ["198.18.0.0/24", "2001:db8:1::/64"]

[[rule]]
name = "port-forward"
action = "accept"
proto = "tcp"
in_iface = "srv"
dst = ["198.18.0.2"]
dst_ports = [80]

[cluster]
servers = ["nats://127.0.0.1:4222", "nats://{peer}:4222"]
node = "gw-{me}"
peers = ["gw-{other}"]
user = "gw-{me}"
password = "{NATS_NODE_PASSWORD}"
"#,
            peer = side.other().sync4(),
        ),
    );
    pair.start_daemon(side, &["--rules", rules.to_str().unwrap()])
}

/// A NAT pair without conntrack-tools: conntrackd's cluster carries its
/// table, not the kernel's NAT mappings, and B's kernel has none of A's.
/// What survives the failover anyway: masqueraded connections (IPv4, IPv6)
/// whose LAN client sends next, and a port forward whose upstream client
/// sends next. B's kernel picks them up mid-stream and maps them afresh:
/// SNAT to the same virtual address and port (free on B), DNAT by the
/// forward rule; B's conntrackd judges them with the copies it holds (its
/// policy drops what it does not know). The server sees one client
/// address and port per connection throughout.
#[test]
#[ignore = "needs root: network namespaces, keepalived, nats-server, iptables"]
fn a_nat_pair_without_kernel_sync_keeps_connections_whose_inside_speaks_first() {
    if lab::skip_without("nat-pair", &[CONNTRACK_TOOL]) {
        return;
    }
    let Some(pair) = Pair::with(
        "nat-pair",
        PairConfig {
            track_conntrackd: true,
            ..PairConfig::default()
        },
    ) else {
        return;
    };
    pair.server.sh(&["ip", "route", "del", "default"]);
    pair.server.sh(&["ip", "-6", "route", "del", "default"]);
    let e4 = PeerEcho::start(&pair.server, sa(lab::SERVER4, 8080));
    let e6 = PeerEcho::start(&pair.server, sa(lab::SERVER6, 8080));
    let lan_server = PeerEcho::start(&pair.client, sa(lab::CLIENT4, LAN_SERVER_PORT));
    let mut a = start_nat_gateway(&pair, Side::A);
    let _b = start_nat_gateway(&pair, Side::B);
    pair.wait_master(Side::A, Duration::from_secs(15));

    let conns = [
        lab::connect(&pair.client, sa(lab::SERVER4, 8080), Duration::from_secs(5))
            .expect("masqueraded v4"),
        lab::connect(&pair.client, sa(lab::SERVER6, 8080), Duration::from_secs(5))
            .expect("masqueraded v6"),
        lab::connect(
            &pair.server,
            sa(VIP_SERVER4, PUBLIC_PORT),
            Duration::from_secs(5),
        )
        .expect("port-forwarded"),
    ];
    for (i, s) in conns.iter().enumerate() {
        lab::exchange(s, 100_000, 0x60 ^ i as u8).expect("through A");
    }
    let seen = (e4.peers(), e6.peers(), lan_server.peers());
    assert_eq!(seen.0.len(), 1, "{seen:?}");
    assert_eq!(seen.0[0].ip(), IpAddr::from(VIP_SERVER4), "{seen:?}");
    assert_eq!(seen.1[0].ip(), IpAddr::from(VIP_SERVER6), "{seen:?}");
    assert_eq!(seen.2, vec![conns[2].local_addr().unwrap()], "{seen:?}");
    // B's conntrackd holds copies of all three; B's kernel knows none.
    let b_socket = pair.control_socket(Side::B);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let copies = flows(&b_socket, &[])
            .iter()
            .filter(|f| f["peer"] == true)
            .count();
        if copies == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "B holds {copies} copies");
        std::thread::sleep(Duration::from_millis(100));
    }
    let on_b = |v6| {
        let out = pair.gw(Side::B).output(&[
            "conntrack",
            "-L",
            "-f",
            if v6 { "ipv6" } else { "ipv4" },
            "-p",
            "tcp",
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    assert!(
        !on_b(false).contains("dport=8080") && !on_b(true).contains("dport=8080"),
        "B's kernel already knows them:\n{}{}",
        on_b(false),
        on_b(true)
    );

    a.kill9();
    pair.fail(Side::A);
    pair.wait_master(Side::B, Duration::from_secs(3));
    for (i, s) in conns.iter().enumerate() {
        lab::exchange_within(s, 100_000, 0x70 ^ i as u8, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connection {i} through B: {e}"));
    }
    // Picked up by B's kernel, mapped as on A: no new client port upstream,
    // the same upstream client at the LAN server.
    assert_eq!(
        e4.peers(),
        seen.0,
        "the server saw another IPv4 client port"
    );
    assert_eq!(
        e6.peers(),
        seen.1,
        "the server saw another IPv6 client port"
    );
    assert_eq!(lan_server.peers(), seen.2);
    let v4 = on_b(false);
    assert!(
        v4.contains(&format!(
            "dst={VIP_SERVER4} sport=8080 dport={}",
            seen.0[0].port()
        )) && v4.contains("src=198.18.0.2 dst=198.19.0.2 sport=80"),
        "B's kernel entries:\n{v4}"
    );
    let adopted = flows(&b_socket, &[])
        .iter()
        .filter(|f| f["peer"] != true && f["state"] == "ESTABLISHED:ESTABLISHED")
        .count();
    assert_eq!(adopted, 3, "{:#?}", flows(&b_socket, &[]));
    for s in conns {
        lab::close(s).expect("a clean close through B");
    }
}

/// Whether `to` reads exactly `want` within `timeout`.
fn reads(mut to: &TcpStream, want: &[u8], timeout: Duration) -> bool {
    let saved = to.read_timeout().unwrap();
    to.set_read_timeout(Some(timeout)).unwrap();
    let mut got = vec![0u8; want.len()];
    let ok = to.read_exact(&mut got).is_ok() && got == want;
    to.set_read_timeout(saved).unwrap();
    ok
}

/// conntrack-tools' conntrackd (Debian's `conntrackd` package, not this
/// project's) replicating the kernel's table between the gateways over the
/// sync link: FTFW over UDP, each entry written into the other kernel as it
/// arrives (DisableExternalCache), the sync link's and loopback's own
/// connections left out. Its files in the lab's directory.
fn start_conntrack_tools(pair: &Pair, side: Side) -> lab::Background {
    let me = side.letter();
    let dir = pair.dir.path();
    let conf = pair.write_file(
        &format!("ctt-{me}.conf"),
        &format!(
            r#"
Sync {{
    Mode FTFW {{
        DisableExternalCache on
    }}
    UDP {{
        IPv4_address {mine}
        IPv4_Destination_Address {peer}
        Port 3780
        Interface sync
        Checksum on
    }}
}}
General {{
    HashSize 8192
    HashLimit 65535
    LogFile {log}
    Syslog off
    LockFile {lock}
    UNIX {{
        Path {ctl}
    }}
    NetlinkBufferSize 2097152
    NetlinkBufferSizeMaxGrowth 8388608
    Filter From Userspace {{
        Protocol Accept {{
            TCP
        }}
        Address Ignore {{
            IPv4_address 127.0.0.1
            IPv6_address ::1
            IPv4_address {mine}
            IPv4_address {peer}
        }}
    }}
}}
"#,
            mine = side.sync4(),
            peer = side.other().sync4(),
            log = dir.join(format!("ctt-{me}.log")).display(),
            lock = dir.join(format!("ctt-{me}.lock")).display(),
            ctl = dir.join(format!("ctt-{me}.ctl")).display(),
        ),
    );
    let out = dir.join(format!("ctt-{me}.out"));
    let bg = lab::Background::spawn(
        pair.gw(side),
        &[CONNTRACK_TOOLS_DAEMON, "-C", conf.to_str().unwrap()],
        &out,
    );
    let ctl = dir.join(format!("ctt-{me}.ctl"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ctl.exists() {
        assert!(
            Instant::now() < deadline,
            "conntrack-tools' conntrackd did not start on {side:?}: {}",
            bg.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    bg
}

/// conntrack-tools' daemon, from Debian's `conntrackd` package.
const CONNTRACK_TOOLS_DAEMON: &str = "/usr/sbin/conntrackd";

/// A NAT pair with conntrack-tools beside conntrackd: B's kernel holds A's
/// NAT mappings before the failover (conntrack-tools), B's conntrackd
/// copies of A's connections (its cluster). After A fails, the outside
/// speaks first and is answered: the upstream server writes to the
/// masqueraded LAN client (IPv4; its packet is addressed to the upstream
/// VIP) and the LAN server to the upstream client of the port forward (its
/// reply needs the public port back). Then data both ways. The control,
/// the same failover without conntrack-tools, where neither arrives,
/// follows in the same test.
#[test]
#[ignore = "needs root: network namespaces, keepalived, nats-server, iptables, conntrack-tools"]
fn a_nat_pair_with_conntrack_tools_keeps_connections_whoever_speaks_first() {
    if lab::skip_without(
        "nat-pair-ctt",
        &[CONNTRACK_TOOL, (CONNTRACK_TOOLS_DAEMON, "-v", "conntrackd")],
    ) {
        return;
    }
    let version = lab::sh(&[CONNTRACK_TOOLS_DAEMON, "-v"]);
    assert!(
        version.contains("Connection tracking userspace daemon"),
        "{CONNTRACK_TOOLS_DAEMON} is not conntrack-tools' daemon: {version}"
    );
    for sync in [true, false] {
        let Some(pair) = Pair::with(
            "nat-pair-ctt",
            PairConfig {
                track_conntrackd: true,
                ..PairConfig::default()
            },
        ) else {
            return;
        };
        pair.server.sh(&["ip", "route", "del", "default"]);
        pair.server.sh(&["ip", "-6", "route", "del", "default"]);
        let upstream = PeerEcho::start(&pair.server, sa(lab::SERVER4, 8080));
        let lan_server = PeerEcho::start(&pair.client, sa(lab::CLIENT4, LAN_SERVER_PORT));
        let _ctt = sync.then(|| Side::BOTH.map(|side| start_conntrack_tools(&pair, side)));
        let mut a = start_nat_gateway(&pair, Side::A);
        let _b = start_nat_gateway(&pair, Side::B);
        pair.wait_master(Side::A, Duration::from_secs(15));
        let masq = lab::connect(&pair.client, sa(lab::SERVER4, 8080), Duration::from_secs(5))
            .expect("masqueraded");
        let fwd = lab::connect(
            &pair.server,
            sa(VIP_SERVER4, PUBLIC_PORT),
            Duration::from_secs(5),
        )
        .expect("port-forwarded");
        lab::exchange(&masq, 100_000, 1).expect("masqueraded, through A");
        lab::exchange(&fwd, 100_000, 2).expect("forwarded, through A");
        let masq_up = upstream.stream(sa(VIP_SERVER4, masq.local_addr().unwrap().port()));
        let fwd_lan = lan_server.stream(fwd.local_addr().unwrap());

        // B's kernel: the mappings (conntrack-tools) or nothing.
        let on_b = || {
            let out = pair
                .gw(Side::B)
                .output(&["conntrack", "-L", "-f", "ipv4", "-p", "tcp"]);
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let masq_mapping = format!(
            "dst={VIP_SERVER4} sport=8080 dport={}",
            masq.local_addr().unwrap().port()
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let table = on_b();
            let has = table.contains(&masq_mapping) && table.contains("sport=80 ");
            if has == sync {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "B's kernel (conntrack-tools {sync}):\n{table}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // B's conntrackd: copies of both, either way.
        let b_socket = pair.control_socket(Side::B);
        let deadline = Instant::now() + Duration::from_secs(10);
        while flows(&b_socket, &[])
            .iter()
            .filter(|f| f["peer"] == true)
            .count()
            < 2
        {
            assert!(Instant::now() < deadline, "B's conntrackd holds no copies");
            std::thread::sleep(Duration::from_millis(100));
        }

        a.kill9();
        pair.fail(Side::A);
        pair.wait_master(Side::B, Duration::from_secs(3));
        (&masq_up).write_all(b"upstream first").unwrap();
        (&fwd_lan).write_all(b"lan server first").unwrap();
        let got_masq = reads(&masq, b"upstream first", Duration::from_secs(3));
        let got_fwd = reads(&fwd, b"lan server first", Duration::from_secs(3));
        assert_eq!(
            (got_masq, got_fwd),
            (sync, sync),
            "conntrack-tools {sync}: the outside's first data arrived (masqueraded, forwarded)"
        );
        if sync {
            lab::exchange_within(&masq, 100_000, 3, Duration::from_secs(5))
                .expect("masqueraded, through B");
            lab::exchange_within(&fwd, 100_000, 4, Duration::from_secs(5))
                .expect("forwarded, through B");
            lab::close(masq).expect("masqueraded, closed through B");
            lab::close(fwd).expect("forwarded, closed through B");
        } else {
            // The masqueraded connection recovers once the LAN client
            // speaks (B's kernel picks it up): the server's data then
            // arrives, before the echo of the client's byte.
            (&masq).write_all(b"x").unwrap();
            assert!(
                reads(&masq, b"upstream firstx", Duration::from_secs(5)),
                "the masqueraded connection after the LAN client spoke"
            );
        }
    }
}
