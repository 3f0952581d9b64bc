//! UDP, ICMP, other protocols, the policy, table limits and malformed input,
//! on the sans-IO engine with a virtual clock.

mod engine_support;

use conntrackd::engine::Context;
use conntrackd::policy::Interfaces;
use conntrackd::wire::build;
use conntrackd::wire::{Checksums, Framing};
use conntrackd::{EngineSettings, Reason, Verdict};
use engine_support::*;
use std::net::{IpAddr, SocketAddr};

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}
fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

// ---- UDP --------------------------------------------------------------------

#[test]
fn udp_flow_new_then_replied_with_its_timeouts() {
    let mut t = Harness::allow_all();
    let (c, s) = (sa("198.18.0.2:5353"), sa("198.19.0.2:53"));
    let d = t.send(build::udp(c, s, b"query"));
    assert_eq!(
        (d.reason, d.after.to_string().as_str()),
        (Reason::NewByDefault, "UDP_UNREPLIED")
    );
    let d = t.send(build::udp(s, c, b"answer"));
    assert_eq!(
        (d.reason, show(&d).as_str()),
        (Reason::Tracked, "UDP_UNREPLIED -> UDP_REPLIED")
    );
    // A single query and its answer is not yet a stream: 30 s, and an
    // early-drop candidate (as the kernel's UDP_CT_UNREPLIED until a stream).
    t.now_secs += 29;
    assert_eq!(t.engine.expire(t.now()), 0);
    t.now_secs += 2;
    assert_eq!(t.engine.expire(t.now()), 1);
    // A flow that goes on after its answer is assured: 120 s without traffic.
    t.send(build::udp(c, s, b"query"));
    t.send(build::udp(s, c, b"answer"));
    let d = t.send(build::udp(c, s, b"more"));
    assert_eq!(d.after.to_string(), "UDP_REPLIED");
    t.now_secs += 119;
    assert_eq!(t.engine.expire(t.now()), 0);
    t.now_secs += 2;
    assert_eq!(t.engine.expire(t.now()), 1);
}

#[test]
fn unreplied_udp_expires_after_30s_and_a_late_reply_is_a_new_flow() {
    let mut t = Harness::from_toml(
        r#"
        [policy]
        default = "drop"
        [[rule]]
        name = "dns-out"
        action = "accept"
        proto = "udp"
        src = "198.18.0.0/24"
        dst_ports = 53
        "#,
    );
    let (c, s) = (sa("198.18.0.2:5353"), sa("198.19.0.2:53"));
    assert_eq!(t.send(build::udp(c, s, b"q")).reason, Reason::NewByRule);
    t.now_secs += 31;
    // The reply arrives after the flow expired: it is a new flow from outside, refused.
    assert_eq!(t.send(build::udp(s, c, b"a")).reason, Reason::DropByDefault);
}

// ---- ICMP -------------------------------------------------------------------

#[test]
fn icmp_echo_is_tracked_by_id() {
    let mut t = Harness::allow_all();
    let (c, s) = (ip("198.18.0.2"), ip("198.19.0.2"));
    assert_eq!(
        t.send(build::icmp_echo(c, s, 7, 1, true)).reason,
        Reason::NewByDefault
    );
    assert_eq!(
        t.send(build::icmp_echo(s, c, 7, 1, false)).reason,
        Reason::Tracked
    );
    // A reply with another id matches no request.
    assert_eq!(
        t.send(build::icmp_echo(s, c, 8, 1, false)).reason,
        Reason::NoConnection
    );
    // So does a reply to nobody.
    assert_eq!(
        t.send(build::icmp_echo(ip("198.19.0.9"), c, 7, 1, false))
            .reason,
        Reason::NoConnection
    );
}

#[test]
fn icmpv6_echo_is_tracked_by_id() {
    let mut t = Harness::allow_all();
    let (c, s) = (ip("2001:db8:1::2"), ip("2001:db8:2::2"));
    assert_eq!(
        t.send(build::icmp_echo(c, s, 9, 1, true)).reason,
        Reason::NewByDefault
    );
    let d = t.send(build::icmp_echo(s, c, 9, 1, false));
    assert_eq!(
        (d.reason, d.after.to_string().as_str()),
        (Reason::Tracked, "ICMP_REPLIED")
    );
}

#[test]
fn icmp_errors_are_related_only_to_tracked_flows() {
    let mut t = Harness::allow_all();
    let mut f = Flow::v4();
    let syn = f.syn_builder().build();
    t.send(syn.clone());
    let router = ip("198.19.0.1");
    // Unreachable from a router back to the client, quoting the client's SYN: related.
    let d = t.send(build::icmp_unreachable(router, f.c.ip(), &syn));
    assert_eq!(d.reason, Reason::Related);
    // The same error sent to the server instead of the flow's sender: unrelated.
    let d = t.send(build::icmp_unreachable(router, f.s.ip(), &syn));
    assert_eq!(d.reason, Reason::IcmpErrorUnrelated);
    // An error quoting a connection nobody opened: unrelated.
    f.c = sa("198.18.0.2:40001");
    let other = f.syn_builder().build();
    let d = t.send(build::icmp_unreachable(router, f.c.ip(), &other));
    assert_eq!(d.reason, Reason::IcmpErrorUnrelated);
    // UDP, over IPv6.
    let (c, s) = (sa("[2001:db8:1::2]:5000"), sa("[2001:db8:2::2]:53"));
    let q = build::udp(c, s, b"q");
    t.send(q.clone());
    let d = t.send(build::icmp_unreachable(s.ip(), c.ip(), &q));
    assert_eq!(d.reason, Reason::Related);
}

// ---- other protocols --------------------------------------------------------

#[test]
fn other_protocols_are_tracked_by_address_pair() {
    let mut t = Harness::allow_all();
    let (a, b) = (ip("198.18.0.2"), ip("198.19.0.2"));
    let d = t.send(build::other(a, b, 47, b"gre"));
    assert_eq!(
        (d.reason, d.after.to_string().as_str()),
        (Reason::NewByDefault, "OTHER_UNREPLIED")
    );
    let d = t.send(build::other(b, a, 47, b"gre"));
    assert_eq!(
        (d.reason, d.after.to_string().as_str()),
        (Reason::Tracked, "OTHER_REPLIED")
    );
}

// ---- policy -----------------------------------------------------------------

const GATEWAY: &str = r#"
[policy]
default = "drop"

[[rule]]
name = "no-telnet"
action = "drop"
proto = "tcp"
dst_ports = 23
log = true

[[rule]]
name = "lan-out"
action = "accept"
src = ["198.18.0.0/24", "2001:db8:1::/64"]
in_iface = "veth-c+"

[[rule]]
name = "web-in"
action = "accept"
proto = "tcp"
dst = "198.18.0.10"
dst_ports = [80, "8000-8080"]
"#;

#[test]
fn first_matching_rule_decides_new_connections() {
    let mut t = Harness::from_toml(GATEWAY);
    t.ctx = Context {
        ifaces: Interfaces {
            input: Some("veth-c0"),
            output: Some("veth-s0"),
        },
        ..Context::default()
    };
    let syn = |from: &str, to: &str| build::tcp(sa(from), sa(to)).flags(SYN).seq(1).build();
    let d = t.send(syn("198.18.0.2:40000", "198.19.0.2:23"));
    assert_eq!(
        (d.reason, d.rule, d.log),
        (Reason::DropByRule, Some(0), true)
    );
    let d = t.send(syn("198.18.0.2:40000", "198.19.0.2:22"));
    assert_eq!(
        (d.reason, d.rule, d.log),
        (Reason::NewByRule, Some(1), false)
    );
    let d = t.send(syn("198.19.0.2:40000", "198.18.0.10:8080"));
    assert_eq!((d.reason, d.rule), (Reason::NewByRule, Some(2)));
    let d = t.send(syn("198.19.0.2:40000", "198.18.0.10:8081"));
    assert_eq!((d.reason, d.rule), (Reason::DropByDefault, None));
    // Input interface must match the prefix.
    t.ctx.ifaces.input = Some("eth0");
    let d = t.send(syn("198.18.0.2:40001", "198.19.0.2:22"));
    assert_eq!(d.reason, Reason::DropByDefault);
    t.ctx.ifaces.input = None;
    let d = t.send(syn("[2001:db8:1::2]:40001", "[2001:db8:2::2]:22"));
    assert_eq!(
        d.reason,
        Reason::DropByDefault,
        "no input interface known: in_iface cannot match"
    );
}

#[test]
fn rules_decide_only_new_connections_and_reload_keeps_state() {
    let mut t = Harness::from_toml(
        r#"
        [policy]
        default = "accept"
        "#,
    );
    let mut f = Flow::established(&mut t);
    // New policy refuses everything: the tracked connection keeps going.
    let strict = conntrackd::Config::parse(
        "[policy]\ndefault = \"drop\"\n",
        std::path::Path::new("x.toml"),
    )
    .unwrap();
    t.engine.set_policy(strict.policy);
    assert_eq!(
        f.client(&mut t, ACK | PSH, b"still here").reason,
        Reason::Tracked
    );
    let mut g = Flow::v4_port(41000);
    assert_eq!(g.client(&mut t, SYN, b"").reason, Reason::DropByDefault);
}

// ---- table limits -----------------------------------------------------------

fn established_on(t: &mut Harness, port: u16) {
    let mut f = Flow::v4_port(port);
    f.client(t, SYN, b"");
    f.server(t, SYN | ACK, b"");
    assert_eq!(f.client(t, ACK, b"").reason, Reason::Tracked);
}

/// An ACK on an established fixture connection: still tracked?
fn still_tracked(t: &mut Harness, port: u16) -> bool {
    let mut f = Flow::v4_port(port);
    f.c_nxt = f.c_nxt.wrapping_add(1);
    f.s_nxt = f.s_nxt.wrapping_add(1);
    f.client(t, ACK, b"").reason == Reason::Tracked
}

#[test]
fn full_table_evicts_unestablished_entries_never_established_ones() {
    let settings = EngineSettings {
        max_connections: 4,
        ..EngineSettings::default()
    };
    let mut t = Harness::with(settings, conntrackd::policy::Policy::allow_all());
    established_on(&mut t, 1000);
    established_on(&mut t, 1001);
    for port in [2000, 2001] {
        Flow::v4_port(port).client(&mut t, SYN, b"");
    }
    assert_eq!(t.engine.table().len(), 4);
    // Each new connection evicts a half-open one, never an established one.
    for port in 3000..3010 {
        let d = Flow::v4_port(port).client(&mut t, SYN, b"");
        assert_eq!(d.reason, Reason::NewByDefault);
        assert_eq!(t.engine.table().len(), 4);
        assert_eq!(t.engine.table().half_open(), 2);
    }
    assert!(still_tracked(&mut t, 1000) && still_tracked(&mut t, 1001));
}

#[test]
fn full_table_of_established_connections_refuses_new_ones() {
    let settings = EngineSettings {
        max_connections: 2,
        ..EngineSettings::default()
    };
    let mut t = Harness::with(settings, conntrackd::policy::Policy::allow_all());
    established_on(&mut t, 1000);
    established_on(&mut t, 1001);
    let d = Flow::v4_port(4000).client(&mut t, SYN, b"");
    assert_eq!(d.reason, Reason::TableFull);
    assert!(still_tracked(&mut t, 1000) && still_tracked(&mut t, 1001));
    // An expired entry makes room once expiry has run (every second in the daemon).
    t.now_secs += 432_001;
    t.engine.expire(t.now());
    let d = Flow::v4_port(4001).client(&mut t, SYN, b"");
    assert_eq!(d.reason, Reason::NewByDefault);
}

/// A SYN flood fills the half-open cap; each new SYN then evicts the oldest
/// half-open entry instead of being refused (nf_conntrack's early drop), so a
/// real client's SYN always gets in, and a connection that completed its
/// handshake is never evicted for one.
#[test]
fn half_open_cap_evicts_the_oldest_half_open_entry() {
    let settings = EngineSettings {
        max_half_open: 3,
        ..EngineSettings::default()
    };
    let mut t = Harness::with(settings, conntrackd::policy::Policy::allow_all());
    for port in 0..3 {
        assert_eq!(
            Flow::v4_port(10_000 + port).client(&mut t, SYN, b"").reason,
            Reason::NewByDefault
        );
    }
    // The cap is full: the next SYN evicts the oldest (port 10000).
    assert_eq!(
        Flow::v4_port(20_000).client(&mut t, SYN, b"").reason,
        Reason::NewByDefault
    );
    assert_eq!(t.engine.table().half_open(), 3);
    assert_eq!(t.engine.table().evictions().half_open, 1);
    let mut evicted = Flow::v4_port(10_000);
    evicted.c_nxt = evicted.c_nxt.wrapping_add(1);
    assert_eq!(
        evicted.server(&mut t, SYN | ACK, b"").reason,
        Reason::NoConnection
    );
    // Port 10001 completes its handshake: it is no longer a candidate.
    let mut f = Flow::v4_port(10_001);
    f.c_nxt = f.c_nxt.wrapping_add(1);
    f.server(&mut t, SYN | ACK, b"");
    f.client(&mut t, ACK, b"");
    assert_eq!(t.engine.table().half_open(), 2);
    // A flood of 50 more SYNs: each gets in, the established one stays.
    for port in 0..50 {
        let d = Flow::v4_port(30_000 + port).client(&mut t, SYN, b"");
        assert_eq!(d.reason, Reason::NewByDefault, "SYN {port}");
        assert!(t.engine.table().half_open() <= 3);
    }
    assert_eq!(f.client(&mut t, ACK, b"").reason, Reason::Tracked);
    assert_eq!(t.engine.table().evictions().half_open, 1 + 49);
    // UDP is not half-open.
    let d = t.send(build::udp(sa("198.18.0.2:1"), sa("198.19.0.2:2"), b""));
    assert_eq!(d.reason, Reason::NewByDefault);
}

/// With no half-open entry to evict (here: a cap of 0), a SYN is refused
/// (`half_open_limit`) and nothing is inserted.
#[test]
fn a_syn_is_refused_when_no_half_open_entry_can_be_evicted() {
    let settings = EngineSettings {
        max_half_open: 0,
        ..EngineSettings::default()
    };
    let mut t = Harness::with(settings, conntrackd::policy::Policy::allow_all());
    assert_eq!(
        Flow::v4_port(10_000).client(&mut t, SYN, b"").reason,
        Reason::HalfOpenLimit
    );
    assert_eq!(t.engine.table().len(), 0);
}

// ---- malformed packets --------------------------------------------------------

#[test]
fn checksums_are_verified_unless_not_computed() {
    let mut t = Harness::allow_all();
    let mut syn = Flow::v4().syn_builder().build();
    let last = syn.len() - 1;
    syn[last] ^= 0x40; // in the TCP header (options/window area)
    assert_eq!(
        t.engine.decide(&syn, &t.ctx, t.now()).reason,
        Reason::BadChecksum
    );
    let offloaded = Context {
        framing: Framing {
            checksums: Checksums::NotComputed,
            ..Framing::default()
        },
        ..Context::default()
    };
    assert_eq!(
        t.engine.decide(&syn, &offloaded, t.now()).reason,
        Reason::NewByDefault
    );
    let mut udp = build::udp(sa("198.18.0.2:1"), sa("198.19.0.2:2"), b"payload");
    *udp.last_mut().unwrap() ^= 1;
    assert_eq!(t.send(udp).reason, Reason::BadChecksum);
    let mut ping = build::icmp_echo(ip("2001:db8:1::2"), ip("2001:db8:2::2"), 1, 1, true);
    *ping.last_mut().unwrap() ^= 1;
    assert_eq!(t.send(ping).reason, Reason::BadChecksum);
}

#[test]
fn truncated_and_inconsistent_headers_have_their_own_reasons() {
    let t = Harness::allow_all();
    let good = build::tcp(sa("198.18.0.2:1"), sa("198.19.0.2:2"))
        .flags(SYN)
        .payload(b"abcd")
        .build();
    let mut cases: Vec<(Vec<u8>, Reason)> = Vec::new();
    cases.push((vec![], Reason::Truncated));
    cases.push((good[..10].to_vec(), Reason::Truncated));
    cases.push((good[..good.len() - 1].to_vec(), Reason::Truncated));
    let mut v = good.clone();
    v[0] = 0x55; // version 5, IHL 5
    cases.push((v, Reason::BadIpHeader));
    let mut v = good.clone();
    v[0] = 0x44; // IHL 4 words
    cases.push((v, Reason::BadIpHeader));
    let mut v = good.clone();
    v[2..4].copy_from_slice(&18u16.to_be_bytes()); // total length < header
    cases.push((v, Reason::BadIpLength));
    let mut v = good.clone();
    v[2..4].copy_from_slice(&30u16.to_be_bytes()); // total length cuts the TCP header
    cases.push((v, Reason::BadIpLength));
    let mut v = good.clone();
    v[32] = 0x40; // data offset 4 words
    cases.push((v, Reason::BadTcpOffset));
    let mut v = good.clone();
    v[32] = 0xf0; // data offset 60 bytes, past the end of the segment
    cases.push((v, Reason::BadTcpOffset));
    let mut v = good.clone();
    v[6] = 0x20; // more fragments
    cases.push((v, Reason::Fragment));
    for (i, (bytes, reason)) in cases.into_iter().enumerate() {
        let d = t.engine.decide(&bytes, &Context::default(), t.now());
        assert_eq!(d.reason, reason, "case {i}");
        assert_eq!(d.verdict(), Verdict::Drop);
    }
    assert!(t.engine.table().is_empty());
}

#[test]
fn headers_only_copy_uses_the_ip_length() {
    // NFQUEUE with a copy range hands over only the first bytes.
    let t = Harness::allow_all();
    let syn = build::tcp(sa("198.18.0.2:1"), sa("198.19.0.2:2"))
        .flags(SYN)
        .payload(&[9; 1000])
        .build();
    let ctx = Context {
        framing: Framing {
            wire_len: Some(syn.len() as u32),
            checksums: Checksums::Verify,
        },
        ..Context::default()
    };
    let d = t.engine.decide(&syn[..128], &ctx, t.now());
    assert_eq!(d.reason, Reason::NewByDefault);
}

#[test]
fn ipv6_extension_headers_are_walked() {
    // IPv6 + hop-by-hop (8 bytes of padding options) + UDP.
    let udp = build::udp(sa("[2001:db8:1::2]:1000"), sa("[2001:db8:2::2]:53"), b"q");
    let mut v = Vec::new();
    v.extend_from_slice(&udp[..40]);
    v[6] = 0; // next header: hop-by-hop
    let payload_len = u16::from_be_bytes([udp[4], udp[5]]) + 8;
    v[4..6].copy_from_slice(&payload_len.to_be_bytes());
    v.extend_from_slice(&[17, 0, 1, 4, 0, 0, 0, 0]); // next=UDP, len 0, PadN
    v.extend_from_slice(&udp[40..]);
    let mut t = Harness::allow_all();
    let d = t.send(v.clone());
    assert_eq!(d.reason, Reason::NewByDefault);
    // A hop-by-hop header anywhere but first is malformed.
    let mut bad = v.clone();
    bad[40] = 0;
    assert_eq!(t.send(bad).reason, Reason::BadExtensionHeader);
}

#[test]
fn eviction_crosses_address_families() {
    // IPv4 and IPv6 connections live in separate maps; the limit and the
    // early drop cover both.
    let settings = EngineSettings {
        max_connections: 2,
        ..EngineSettings::default()
    };
    let mut t = Harness::with(settings, conntrackd::policy::Policy::allow_all());
    for port in [1, 2] {
        let syn = build::tcp(
            sa(&format!("[2001:db8:1::2]:{port}")),
            sa("[2001:db8:2::2]:80"),
        )
        .flags(SYN)
        .build();
        assert_eq!(t.send(syn).reason, Reason::NewByDefault);
    }
    let d = Flow::v4().client(&mut t, SYN, b"");
    assert_eq!(d.reason, Reason::NewByDefault);
    assert_eq!(t.engine.table().len(), 2);
    let v6_left = t
        .engine
        .connections()
        .iter()
        .filter(|c| c.originator.0.is_ipv6())
        .count();
    assert_eq!(v6_left, 1, "one IPv6 half-open connection was evicted");
}

/// Adaptive timeouts: SYNs opened while the half-open cap fills past
/// `adaptive.start` (0.5) get shorter timeouts, down to the floor (5 s) at
/// `adaptive.end` (0.9); an established connection keeps its own.
#[test]
fn adaptive_timeouts_shorten_unassured_entries_as_the_table_fills() {
    let settings = EngineSettings {
        max_half_open: 10,
        ..EngineSettings::default()
    };
    let mut t = Harness::with(settings, conntrackd::policy::Policy::allow_all());
    established_on(&mut t, 1000);
    let opened = t.now_secs;
    // SYNs opened at half-open fill 0.0 .. 0.9: timeouts 120 (up to 0.5),
    // then 91, 62, 33 and 5 s.
    for port in 0..10 {
        Flow::v4_port(20_000 + port).client(&mut t, SYN, b"");
    }
    let alive_after = |t: &mut Harness, secs: u64| {
        t.now_secs = opened + secs;
        t.engine.expire(t.now());
        t.engine.table().half_open()
    };
    assert_eq!(alive_after(&mut t, 4), 10);
    assert_eq!(alive_after(&mut t, 5), 9, "the floor (5 s) at fill 0.9");
    assert_eq!(alive_after(&mut t, 33), 8);
    assert_eq!(alive_after(&mut t, 62), 7);
    assert_eq!(alive_after(&mut t, 91), 6);
    assert_eq!(alive_after(&mut t, 119), 6);
    assert_eq!(alive_after(&mut t, 120), 0);
    assert!(
        still_tracked(&mut t, 1000),
        "the established connection keeps its timeout"
    );
}

// ---- per-source limits ----------------------------------------------------------

const SOURCE_LIMITS: &str = r#"
[policy]
default = "drop"

[[rule]]
name = "web"
action = "accept"
proto = "tcp"
dst_ports = [80]
max_src_conn = 3

[[rule]]
name = "api"
action = "accept"
proto = "tcp"
dst_ports = [81]
max_src_conn_rate = "2/10"
overload_secs = 30
"#;

fn syn_from(t: &mut Harness, src: &str, sport: u16, dport: u16) -> Reason {
    let src = SocketAddr::new(ip(src), sport);
    let dst = SocketAddr::new(ip("198.19.0.2"), dport);
    t.tcp(src, dst, SYN, 1000, 0, b"").reason
}

/// A whole handshake from `src:sport`; the reason of the last packet (the
/// client's ACK, which is when the connection counts against its source),
/// or of the SYN when it was refused.
fn connect_from(t: &mut Harness, src: &str, sport: u16, dport: u16) -> Reason {
    let c = SocketAddr::new(ip(src), sport);
    let s = SocketAddr::new(ip("198.19.0.2"), dport);
    let syn = t.tcp(c, s, SYN, 1000, 0, b"").reason;
    if syn.verdict() == conntrackd::Verdict::Drop {
        return syn;
    }
    t.tcp(s, c, SYN | ACK, 9000, 1001, b"");
    t.tcp(c, s, ACK, 1001, 9001, b"").reason
}

/// pf's `max-src-conn`: a source holding its rule's limit is refused new
/// connections; other sources are not; a connection that ends frees a slot.
#[test]
fn a_source_over_max_src_conn_is_refused_others_are_not() {
    let mut t = Harness::from_toml(SOURCE_LIMITS);
    for port in 1..=3 {
        assert_eq!(
            connect_from(&mut t, "198.18.0.2", port, 80),
            Reason::Tracked
        );
    }
    // Holding 3: its next SYN is refused; another source is not.
    assert_eq!(
        syn_from(&mut t, "198.18.0.2", 4, 80),
        Reason::SourceConnLimit
    );
    assert_eq!(connect_from(&mut t, "198.18.0.3", 4, 80), Reason::Tracked);
    // One of its connections is reset; once its entry is gone (10 s in
    // CLOSED), a slot is free.
    let (c, s) = (sa("198.18.0.2:1"), sa("198.19.0.2:80"));
    assert_eq!(t.tcp(c, s, RST, 1001, 0, b"").reason, Reason::Tracked);
    t.now_secs += 11;
    t.engine.expire(t.now());
    assert_eq!(connect_from(&mut t, "198.18.0.2", 5, 80), Reason::Tracked);
    assert_eq!(
        syn_from(&mut t, "198.18.0.2", 6, 80),
        Reason::SourceConnLimit
    );
}

/// Spoofed SYNs carrying a victim's address never complete a handshake, so
/// they cannot get it limited or put on the overload list (pf counts
/// established states for the same reason).
#[test]
fn spoofed_syns_cannot_get_a_real_source_limited() {
    let mut t = Harness::from_toml(SOURCE_LIMITS);
    for port in 1..=500 {
        assert_eq!(syn_from(&mut t, "198.18.0.9", port, 81), Reason::NewByRule);
    }
    assert_eq!(
        connect_from(&mut t, "198.18.0.9", 1000, 81),
        Reason::Tracked
    );
}

/// pf's `max-src-conn-rate` with an overload list: a source completing
/// connections faster than the rate is refused (the one over the rate is
/// removed), then refused everything for `overload_secs`, then let in again.
#[test]
fn a_source_over_the_rate_goes_on_the_overload_list_for_a_while() {
    let mut t = Harness::from_toml(SOURCE_LIMITS);
    assert_eq!(connect_from(&mut t, "198.18.0.9", 1, 81), Reason::Tracked);
    assert_eq!(connect_from(&mut t, "198.18.0.9", 2, 81), Reason::Tracked);
    assert_eq!(
        connect_from(&mut t, "198.18.0.9", 3, 81),
        Reason::SourceRateLimit
    );
    // Removed: its next packet finds nothing.
    let (c, s) = (sa("198.18.0.9:3"), sa("198.19.0.2:81"));
    assert_eq!(
        t.tcp(c, s, ACK, 1001, 9001, b"").reason,
        Reason::NoConnection
    );
    // Overloaded: refused on every rule with source limits, for 30 s.
    t.now_secs += 20;
    assert_eq!(
        syn_from(&mut t, "198.18.0.9", 4, 81),
        Reason::SourceOverloaded
    );
    assert_eq!(
        syn_from(&mut t, "198.18.0.9", 5, 80),
        Reason::SourceOverloaded
    );
    // Others are not.
    assert_eq!(connect_from(&mut t, "198.18.0.10", 1, 81), Reason::Tracked);
    t.now_secs += 11;
    assert_eq!(connect_from(&mut t, "198.18.0.9", 6, 81), Reason::Tracked);
}

#[test]
fn a_bad_rate_is_refused_with_its_rule() {
    for bad in ["0/10", "5", "5/0", "x/y"] {
        let text = format!(
            "[policy]\ndefault = \"drop\"\n[[rule]]\nname = \"r\"\naction = \"accept\"\nmax_src_conn_rate = \"{bad}\"\n"
        );
        let e = conntrackd::Config::parse(&text, std::path::Path::new("r.toml")).unwrap_err();
        assert!(e.to_string().contains("max_src_conn_rate"), "{bad}: {e}");
        assert!(e.to_string().starts_with("r.toml:"), "{e}");
    }
}

/// A full table evicts the oldest flow never replied to for a new one, and
/// counts it by kind; a flow that went on after its reply is kept.
#[test]
fn a_full_table_evicts_an_unreplied_flow_and_counts_it() {
    let settings = EngineSettings {
        max_connections: 3,
        ..EngineSettings::default()
    };
    let mut t = Harness::with(settings, conntrackd::policy::Policy::allow_all());
    let (c, s) = (sa("198.18.0.2:5000"), sa("198.19.0.2:53"));
    // A stream: query, answer, more: assured.
    for (from, to) in [(c, s), (s, c), (c, s)] {
        t.send(build::udp(from, to, b"x"));
    }
    for port in [5001, 5002] {
        t.send(build::udp(sa(&format!("198.18.0.2:{port}")), s, b"q"));
    }
    assert_eq!(t.engine.table().len(), 3);
    let d = t.send(build::udp(sa("198.18.0.2:5003"), s, b"q"));
    assert_eq!(d.reason, Reason::NewByDefault);
    assert_eq!(t.engine.table().evictions().unreplied, 1);
    assert_eq!(t.engine.table().evictions().half_open, 0);
    // The oldest unreplied (5001) went; the stream stays.
    assert_eq!(t.send(build::udp(s, c, b"y")).reason, Reason::Tracked);
    let d = t.send(build::udp(s, sa("198.18.0.2:5001"), b"late"));
    assert_eq!(
        d.reason,
        Reason::NewByDefault,
        "5001 was evicted: a new flow"
    );
}

/// A state file from a table larger than this one's `max_connections` loads
/// as many as fit and counts the rest.
#[test]
fn a_state_file_larger_than_the_table_loads_what_fits() {
    let mut big = Harness::allow_all();
    for port in 0..10 {
        Flow::v4_port(30_000 + port).client(&mut big, SYN, b"");
    }
    let file = big.engine.save_state(big.now(), true, 1_800_000_000);
    let small = Harness::with(
        EngineSettings {
            max_connections: 4,
            ..EngineSettings::default()
        },
        conntrackd::policy::Policy::allow_all(),
    );
    let r = small
        .engine
        .restore_state(&file, small.now(), 1_800_000_000)
        .unwrap();
    assert_eq!((r.restored, r.over_limit), (4, 6));
    assert_eq!(small.engine.table().len(), 4);
    assert_eq!(small.engine.table().half_open(), 4);
    // The file does not carry the rule: not known here, rather than the
    // default action that no rule of this policy says it was.
    for c in small.engine.connections() {
        assert_eq!(c.rule, conntrackd::engine::RuleName::Unknown);
    }
}

/// Every change of a connection's life reaches the observer once, with the
/// cause of its end: a FIN teardown, a RST, an operator's kill.
#[test]
fn the_observer_sees_each_connection_born_changed_and_destroyed_with_its_cause() {
    let mut t = Harness::allow_all();
    let seen = recorder(&t);
    let mut fin = Flow::v4_port(40001).open(&mut t);
    fin.client(&mut t, 0x11, b""); // FIN+ACK
    fin.server(&mut t, 0x11, b"");
    fin.client(&mut t, 0x10, b"");
    let mut rst = Flow::v4_port(40002).open(&mut t);
    assert_eq!(rst.client(&mut t, 0x04, b"").verdict(), Verdict::Accept);
    Flow::v4_port(40003).open(&mut t);
    assert_eq!(
        t.engine
            .remove_connections(|c| c.originator.1 == 40003, t.now()),
        1
    );
    t.now_secs += 10_000;
    assert_eq!(t.engine.expire(t.now()), 2);
    let seen = seen.0.lock().unwrap().clone();
    let of = |port: &str| -> Vec<String> {
        seen.iter()
            .filter(|l| l.starts_with(port))
            .map(|l| l[6..].to_string())
            .collect()
    };
    assert_eq!(
        of("40001"),
        [
            "NEW -> SYN_SENT:LISTEN",
            "UPDATE from SYN_SENT:LISTEN -> SYN_SENT:SYN_RECV",
            "UPDATE from SYN_SENT:SYN_RECV -> ESTABLISHED:ESTABLISHED",
            "UPDATE from ESTABLISHED:ESTABLISHED -> FIN_WAIT_1:CLOSE_WAIT",
            "UPDATE from FIN_WAIT_1:CLOSE_WAIT -> TIME_WAIT:LAST_ACK",
            "UPDATE from TIME_WAIT:LAST_ACK -> TIME_WAIT:CLOSED",
            "DESTROY fin -> TIME_WAIT:CLOSED",
        ]
    );
    assert_eq!(of("40002").last().unwrap(), "DESTROY rst -> CLOSED:CLOSED");
    assert_eq!(
        of("40003").last().unwrap(),
        "DESTROY killed -> ESTABLISHED:ESTABLISHED"
    );
}

/// Per-connection counters add each accepted packet's wire length to its
/// direction; the age and the admitting rule are kept.
#[test]
fn a_connection_counts_its_packets_and_bytes_per_direction() {
    let mut t = Harness::from_toml(
        r#"
[policy]
default = "drop"
[[rule]]
name = "other"
action = "accept"
proto = "tcp"
dst_ports = [81]
[[rule]]
name = "web"
action = "accept"
proto = "tcp"
dst_ports = [80]
"#,
    );
    let mut f = Flow::v4().open(&mut t);
    t.now_secs += 5;
    f.client(&mut t, 0x18, &[7; 100]);
    f.server(&mut t, 0x18, &[7; 1000]);
    f.server(&mut t, 0x18, &[7; 1000]);
    let c = t
        .engine
        .lookup(6, (f.s.ip(), f.s.port()), (f.c.ip(), f.c.port()))
        .unwrap();
    assert_eq!(c.originator, (f.c.ip(), f.c.port()));
    // SYN 40 + ACK 40 + 140; SYN+ACK 40 + 1040 twice.
    assert_eq!(c.traffic.packets, [3, 3]);
    assert_eq!(c.traffic.bytes, [40 + 40 + 140, 40 + 2 * 1040]);
    assert_eq!(c.rule.name(), Some("web"));
    assert_eq!(t.now().as_secs() - u64::from(c.opened_at_secs), 5);
    // A dropped packet (out of window) counts nothing.
    let bad = build::tcp(f.c, f.s)
        .seq(f.c_nxt.wrapping_add(1 << 30))
        .payload(&[1; 10])
        .build();
    assert_eq!(t.send(bad).verdict(), Verdict::Drop);
    let c2 = t
        .engine
        .lookup(6, (f.c.ip(), f.c.port()), (f.s.ip(), f.s.port()))
        .unwrap();
    assert_eq!(c2.traffic, c.traffic);
    // After reloads (the rule renumbered, then gone) it is still the
    // rule that admitted it.
    let rule = |t: &Harness| {
        t.engine
            .lookup(6, (f.c.ip(), f.c.port()), (f.s.ip(), f.s.port()))
            .unwrap()
            .rule
    };
    let reordered = r#"
[policy]
default = "drop"

[[rule]]
name = "ssh"
action = "accept"
proto = "tcp"
dst_ports = [22]

[[rule]]
name = "web"
action = "accept"
proto = "tcp"
dst_ports = [80]
"#;
    let policy = |text: &str| {
        conntrackd::Config::parse(text, std::path::Path::new("t.toml"))
            .unwrap()
            .policy
    };
    t.engine.set_policy(policy(reordered));
    assert_eq!(rule(&t).name(), Some("web"));
    t.engine.set_policy(conntrackd::policy::Policy::allow_all());
    assert_eq!(rule(&t).name(), Some("web"));
    // ... for as many reloads as the engine keeps rule names.
    for _ in 1..conntrackd::engine::RULE_NAMES_KEPT {
        t.engine.set_policy(conntrackd::policy::Policy::allow_all());
    }
    assert_eq!(rule(&t), conntrackd::engine::RuleName::Unknown);
    // A connection admitted by the default action says so.
    let mut g = Flow::v4_port(40001).open(&mut t);
    g.client(&mut t, 0x18, b"x");
    let d = t
        .engine
        .lookup(6, (g.c.ip(), g.c.port()), (g.s.ip(), g.s.port()))
        .unwrap();
    assert_eq!(d.rule, conntrackd::engine::RuleName::Default);
}

/// A connection an operator killed stays killed while connections are
/// picked up mid-stream (the window after a crash restart, or
/// `loose_pickup`): its next packets are `no_connection` for
/// `KILLED_KEPT_SECS`, while a connection never killed is picked up.
#[test]
fn a_killed_connection_is_not_picked_up_again() {
    use conntrackd::Timestamp;
    let mut t = Harness::allow_all();
    t.engine
        .allow_pickup_until(Timestamp::from_secs(t.now_secs + 30));
    let mut killed = Flow::v4_port(40001).open(&mut t);
    let port = |p: u16| move |c: &conntrackd::engine::ConnInfo| c.originator.1 == p;
    assert_eq!(t.engine.remove_connections(port(40001), t.now()), 1);
    for _ in 0..2 {
        let d = killed.client(&mut t, ACK | PSH, b"still talking");
        assert_eq!(d.reason, Reason::NoConnection);
    }
    // One never killed is picked up in the same window.
    let mut unknown = Flow::v4_port(40003);
    let d = unknown.client(&mut t, ACK | PSH, b"mid-stream");
    assert_eq!(d.verdict(), Verdict::Accept, "{:?}", d.reason);
    // Once the kill is old enough, the engine forgets it.
    t.now_secs += conntrackd::engine::KILLED_KEPT_SECS;
    t.engine.expire(t.now());
    t.engine
        .allow_pickup_until(Timestamp::from_secs(t.now_secs + 30));
    let d = killed.client(&mut t, ACK | PSH, b"again");
    assert_eq!(d.verdict(), Verdict::Accept, "{:?}", d.reason);
}
