//! The captures: the engine's TCP scenarios and more, each on its own link
//! layer and file format so that every reader path is exercised too.

use crate::gen::{CaptureBuilder, Conv, Format, Link, ACK, FIN, PSH, RST, SYN, URG};
use conntrackd::wire::build;
use std::net::IpAddr;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// The README example (rules/default.toml): DNS, a web fetch from the LAN
/// with its close, ping, and what the outside tries.
pub fn example() -> CaptureBuilder {
    let mut cap = CaptureBuilder::new(Link::Ethernet, Format::Pcap { nanos: false });
    cap.arp(0);
    let (c, dns) = (
        "10.0.0.2:53000".parse().unwrap(),
        "198.51.100.53:53".parse().unwrap(),
    );
    cap.ip(10, build::udp(c, dns, b"query example.org"));
    cap.ip(31, build::udp(dns, c, b"answer example.org 203.0.113.5"));
    let mut w = Conv::new(
        "10.0.0.2:40000",
        "203.0.113.5:443",
        0xffff_ff00,
        0x1000_0000,
    );
    cap.ip(40, w.c(SYN, b""));
    cap.ip(62, w.s(SYN | ACK, b""));
    cap.ip(63, w.c(ACK, b""));
    cap.ip(64, w.c(ACK | PSH, &[0x16; 300]));
    cap.ip(88, w.s(ACK | PSH, &[0x17; 1200]));
    cap.ip(89, w.c(ACK, b""));
    cap.ip(95, w.c(FIN | ACK, b""));
    cap.ip(117, w.s(FIN | ACK, b""));
    cap.ip(118, w.c(ACK, b""));
    cap.ip(
        500,
        build::icmp_echo(ip("10.0.0.2"), ip("198.51.100.1"), 7, 1, true),
    );
    cap.ip(
        512,
        build::icmp_echo(ip("198.51.100.1"), ip("10.0.0.2"), 7, 1, false),
    );
    // The outside: a SYN to ssh, a stray ACK, a SYN+FIN scan.
    let mut x = Conv::new("198.51.100.7:51000", "10.0.0.2:22", 4242, 0);
    cap.ip(900, x.c(SYN, b""));
    let y = Conv::new("198.51.100.7:51001", "10.0.0.2:80", 99, 1234);
    cap.ip(910, y.raw(true, ACK, 99, 1234, b""));
    cap.ip(920, y.raw(true, SYN | FIN, 100, 0, b""));
    cap
}

/// Handshake, data both ways, half close from the client, close (Ethernet, pcap).
pub fn tcp_client_close() -> CaptureBuilder {
    let mut cap = CaptureBuilder::new(Link::Ethernet, Format::Pcap { nanos: false });
    let mut f = Conv::new("10.0.0.2:40000", "203.0.113.5:80", 0xffff_ff00, 0xffff_fff0);
    cap.ip(0, f.c(SYN, b""));
    cap.ip(20, f.s(SYN | ACK, b""));
    cap.ip(21, f.c(ACK, b""));
    cap.ip(22, f.c(ACK | PSH, &[b'a'; 1000]));
    cap.ip(40, f.s(ACK, b""));
    cap.ip(41, f.s(ACK | PSH, &[b'b'; 500]));
    cap.ip(42, f.c(ACK, b""));
    cap.ip(50, f.c(FIN | ACK, b""));
    cap.ip(70, f.s(ACK, b""));
    // Half close: the server may still send.
    cap.ip(71, f.s(ACK | PSH, &[b'c'; 100]));
    cap.ip(72, f.c(ACK, b""));
    cap.ip(80, f.s(FIN | ACK, b""));
    cap.ip(81, f.c(ACK, b""));
    // The last ACK again (the server's FIN was retransmitted beyond the gateway).
    cap.ip(300, f.raw(true, ACK, f.c_nxt, f.s_nxt, b""));
    cap
}

/// The server closes first, its peer answers with FIN+ACK in one segment
/// (802.1Q Ethernet, pcapng with nanosecond timestamps).
pub fn tcp_server_close() -> CaptureBuilder {
    let mut cap = CaptureBuilder::new(Link::Vlan(10), Format::PcapNg { tsresol: Some(9) });
    let mut f = Conv::new("198.51.100.7:51000", "192.0.2.10:80", 1_000_000, 2_000_000);
    cap.ip_ns(crate::gen::at_ms(0) + 123, f.c(SYN, b""));
    cap.ip_ns(crate::gen::at_ms(15) + 456, f.s(SYN | ACK, b""));
    cap.ip_ns(crate::gen::at_ms(30) + 789, f.c(ACK, b""));
    cap.ip(31, f.c(ACK | PSH, b"GET / HTTP/1.1\r\n\r\n"));
    cap.ip(45, f.s(ACK | PSH, &[b'x'; 1400]));
    cap.ip(46, f.s(FIN | ACK, b""));
    cap.ip(60, f.c(FIN | ACK, b""));
    cap.ip(75, f.s(ACK, b""));
    // Too late for anything new from the client.
    cap.ip(76, f.c(ACK | PSH, b"more"));
    cap
}

/// Simultaneous open: both SYNs cross, then both SYN+ACKs (raw IP, pcap ns).
pub fn simultaneous_open() -> CaptureBuilder {
    let mut cap = CaptureBuilder::new(Link::Raw, Format::Pcap { nanos: true });
    let mut f = Conv::new("10.0.0.2:5000", "10.1.0.3:6000", 0xffff_fff0, 0x8000_0000);
    cap.ip(0, f.c(SYN, b""));
    cap.ip(1, f.s(SYN, b""));
    cap.ip(
        2,
        f.raw(true, SYN | ACK, f.c_nxt.wrapping_sub(1), f.s_nxt, b""),
    );
    cap.ip(
        3,
        f.raw(false, SYN | ACK, f.s_nxt.wrapping_sub(1), f.c_nxt, b""),
    );
    cap.ip(4, f.c(ACK | PSH, b"hello"));
    cap.ip(5, f.s(ACK | PSH, b"world"));
    cap
}

/// Simultaneous close through CLOSING (802.1ad + 802.1Q, pcap).
pub fn simultaneous_close() -> CaptureBuilder {
    let mut cap = CaptureBuilder::new(Link::QinQ(100, 10), Format::Pcap { nanos: false });
    let mut f = Conv::new("10.0.0.2:40001", "203.0.113.5:80", 77, 0xffff_0000);
    cap.ip(0, f.c(SYN, b""));
    cap.ip(10, f.s(SYN | ACK, b""));
    cap.ip(11, f.c(ACK, b""));
    let (c_fin, s_fin) = (f.c_nxt, f.s_nxt);
    cap.ip(20, f.raw(true, FIN | ACK, c_fin, s_fin, b""));
    cap.ip(21, f.raw(false, FIN | ACK, s_fin, c_fin, b""));
    cap.ip(
        30,
        f.raw(true, ACK, c_fin.wrapping_add(1), s_fin.wrapping_add(1), b""),
    );
    cap.ip(
        31,
        f.raw(
            false,
            ACK,
            s_fin.wrapping_add(1),
            c_fin.wrapping_add(1),
            b"",
        ),
    );
    cap
}

/// RSTs: out of window (dropped), inexact in window (challenged), exact
/// (closes); then a refused connection (Linux cooked SLL, pcap).
pub fn rst() -> CaptureBuilder {
    let mut cap = CaptureBuilder::new(Link::Sll, Format::Pcap { nanos: false });
    let mut f = Conv::new("10.0.0.2:40002", "203.0.113.5:80", 0xffff_ff00, 500);
    cap.ip(0, f.c(SYN, b""));
    cap.ip(10, f.s(SYN | ACK, b""));
    cap.ip(11, f.c(ACK, b""));
    cap.ip(20, f.raw(false, RST, f.s_nxt.wrapping_add(100_000), 0, b""));
    cap.ip(21, f.raw(false, RST, f.s_nxt.wrapping_add(1000), 0, b""));
    cap.ip(22, f.c(ACK, b""));
    cap.ip(30, f.s(RST | ACK, b""));
    cap.ip(31, f.c(ACK, b""));
    // A port that refuses: the first RST+ACK acknowledges the wrong number.
    let mut g = Conv::new("10.0.0.2:40003", "203.0.113.5:81", 9000, 0);
    cap.ip(40, g.c(SYN, b""));
    cap.ip(50, g.raw(false, RST | ACK, 0, g.c_nxt.wrapping_add(7), b""));
    cap.ip(51, g.raw(false, RST | ACK, 0, g.c_nxt, b""));
    cap
}

/// Bad handshakes: an ACK before the SYN+ACK, a SYN+ACK acknowledging the
/// wrong number, a final ACK acknowledging the wrong number (SLL2, pcapng).
pub fn bad_handshake() -> CaptureBuilder {
    let mut cap = CaptureBuilder::new(Link::Sll2, Format::PcapNg { tsresol: None });
    let mut f = Conv::new("10.0.0.2:40004", "203.0.113.5:80", 0xffff_fffe, 300);
    cap.ip(0, f.c(SYN, b""));
    cap.ip(1, f.raw(true, ACK, f.c_nxt, 300, b""));
    cap.ip(
        10,
        f.raw(false, SYN | ACK, 300, f.c_nxt.wrapping_add(1), b""),
    );
    cap.ip(11, f.s(SYN | ACK, b""));
    cap.ip(12, f.raw(true, ACK, f.c_nxt, f.s_nxt.wrapping_add(5), b""));
    cap.ip(13, f.c(ACK, b""));
    cap
}

/// Window checks: data past the receiver's window, an ACK of data never
/// sent, new data after a FIN (Ethernet, pcap).
pub fn out_of_window() -> CaptureBuilder {
    let mut cap = CaptureBuilder::new(Link::Ethernet, Format::Pcap { nanos: false });
    let mut f = Conv::new("10.0.0.2:40005", "203.0.113.5:80", 0xffff_0000, 0xffff_f000);
    cap.ip(0, f.c(SYN, b""));
    cap.ip(10, f.s(SYN | ACK, b""));
    cap.ip(11, f.c(ACK, b""));
    // The server advertised 65535 bytes (no scaling): this starts past that
    // edge by more than the server's largest window (a little past, it would
    // pass as window_overshoot).
    cap.ip(
        20,
        f.raw(
            true,
            ACK | PSH,
            f.c_nxt.wrapping_add(140_000),
            f.s_nxt,
            b"far",
        ),
    );
    // Still inside the window, ahead of a gap (the gap's segments went another way).
    cap.ip(
        21,
        f.raw(
            true,
            ACK | PSH,
            f.c_nxt.wrapping_add(60_000),
            f.s_nxt,
            b"near",
        ),
    );
    f.c_nxt = f.c_nxt.wrapping_add(60_004);
    cap.ip(
        30,
        f.raw(true, ACK, f.c_nxt, f.s_nxt.wrapping_add(5000), b""),
    );
    cap.ip(40, f.c(FIN | ACK, b""));
    cap.ip(41, f.raw(true, ACK | PSH, f.c_nxt, f.s_nxt, b"after fin"));
    cap.ip(50, f.s(ACK, b""));
    cap
}

/// Packets without a connection and flag combinations no stack sends
/// (LINKTYPE_IPV4, pcap).
pub fn no_connection_and_flags() -> CaptureBuilder {
    let mut cap = CaptureBuilder::new(Link::Ipv4, Format::Pcap { nanos: false });
    let mut f = Conv::new("10.0.0.2:40006", "203.0.113.5:80", 1000, 5000);
    cap.ip(0, f.raw(true, ACK, 1000, 5000, b""));
    cap.ip(1, f.raw(true, FIN | ACK, 1000, 5000, b""));
    cap.ip(2, f.raw(true, RST, 1000, 0, b""));
    cap.ip(3, f.raw(false, SYN | ACK, 5000, 1001, b""));
    for (i, flags) in [
        SYN | FIN,
        SYN | RST,
        FIN | RST | ACK,
        FIN | PSH | URG,
        0,
        FIN,
        URG,
        PSH,
        SYN | ACK | URG,
    ]
    .into_iter()
    .enumerate()
    {
        cap.ip(10 + i as u64, f.raw(true, flags, 1000, 0, b""));
    }
    // The same on an established connection: still dropped, state kept.
    cap.ip(100, f.c(SYN, b""));
    cap.ip(110, f.s(SYN | ACK, b""));
    cap.ip(111, f.c(ACK, b""));
    cap.ip(112, f.raw(true, SYN | FIN | ACK, f.c_nxt, f.s_nxt, b""));
    cap.ip(113, f.raw(true, FIN | PSH | URG, f.c_nxt, 0, b""));
    cap
}

/// TIME_WAIT: a SYN reopens it at once; after 2MSL the entry expires and a
/// later SYN opens a fresh connection (Ethernet, pcap).
pub fn time_wait_reopen() -> CaptureBuilder {
    let mut cap = CaptureBuilder::new(Link::Ethernet, Format::Pcap { nanos: false });
    let close = |cap: &mut CaptureBuilder, f: &mut Conv, t: u64| {
        cap.ip(t, f.c(SYN, b""));
        cap.ip(t + 10, f.s(SYN | ACK, b""));
        cap.ip(t + 11, f.c(ACK, b""));
        cap.ip(t + 20, f.c(FIN | ACK, b""));
        cap.ip(t + 30, f.s(FIN | ACK, b""));
        cap.ip(t + 31, f.c(ACK, b""));
    };
    let mut f = Conv::new("10.0.0.2:40007", "203.0.113.5:80", 10_000, 90_000);
    close(&mut cap, &mut f, 0);
    // Reopened within TIME_WAIT with a higher ISN.
    f.c_nxt = f.c_nxt.wrapping_add(100_000);
    f.s_nxt = f.s_nxt.wrapping_add(100_000);
    close(&mut cap, &mut f, 5_000);
    // The last ACK retransmitted just inside 2MSL (120 s) still belongs to it.
    cap.ip(124_000, f.raw(true, ACK, f.c_nxt, f.s_nxt, b""));
    // 2MSL after that: gone. A stray ACK finds nothing; a new SYN opens afresh.
    cap.ip(250_000, f.raw(true, ACK, f.c_nxt, f.s_nxt, b""));
    f.c_nxt = f.c_nxt.wrapping_add(100_000);
    f.s_nxt = f.s_nxt.wrapping_add(100_000);
    cap.ip(251_000, f.c(SYN, b""));
    cap.ip(251_010, f.s(SYN | ACK, b""));
    cap.ip(251_011, f.c(ACK, b""));
    cap
}

/// UDP and ICMP: flows, replies, related errors, unrelated errors, expiry
/// (pcapng, microsecond default resolution).
pub fn udp_icmp() -> CaptureBuilder {
    let mut cap = CaptureBuilder::new(Link::Ethernet, Format::PcapNg { tsresol: None });
    let (c, dns) = (
        "10.0.0.2:53000".parse().unwrap(),
        "198.51.100.53:53".parse().unwrap(),
    );
    let query = build::udp(c, dns, b"query");
    cap.ip(0, query.clone());
    cap.ip(20, build::udp(dns, c, b"answer"));
    cap.ip(21, build::udp(c, dns, b"query 2"));
    // From outside to a closed port: refused by the policy.
    let (x, inside) = (
        "198.51.100.7:4000".parse().unwrap(),
        "10.0.0.2:161".parse().unwrap(),
    );
    cap.ip(30, build::udp(x, inside, b"public"));
    // Ping and its reply; a reply nobody asked for.
    let (a, b) = (ip("10.0.0.2"), ip("198.51.100.1"));
    cap.ip(40, build::icmp_echo(a, b, 99, 1, true));
    cap.ip(50, build::icmp_echo(b, a, 99, 1, false));
    cap.ip(60, build::icmp_echo(b, a, 1234, 1, false));
    // A port unreachable quoting our query: related. One quoting a flow
    // nobody opened: unrelated.
    let (q2c, q2s) = (
        "10.0.0.2:53001".parse().unwrap(),
        "198.51.100.54:53".parse().unwrap(),
    );
    let q2 = build::udp(q2c, q2s, b"query");
    cap.ip(70, build::udp(q2c, q2s, b"query"));
    cap.ip(80, build::icmp_unreachable(ip("198.51.100.54"), a, &q2));
    let stray = build::udp(
        "10.0.0.9:1".parse().unwrap(),
        "198.51.100.9:2".parse().unwrap(),
        b"x",
    );
    cap.ip(
        90,
        build::icmp_unreachable(ip("198.51.100.9"), ip("10.0.0.9"), &stray),
    );
    // Another protocol (GRE) from the inside.
    cap.ip(100, build::other(a, ip("198.51.100.2"), 47, b"gre"));
    // 40 s later the unreplied UDP flow (30 s) is gone, the replied one (120 s) is not.
    cap.ip(40_100, build::udp(q2s, q2c, b"late answer"));
    cap.ip(40_200, build::udp(dns, c, b"answer 2"));
    cap
}

/// IPv6: TCP lifecycle, ICMPv6 echo and a related error (Ethernet, pcap ns).
pub fn ipv6() -> CaptureBuilder {
    let mut cap = CaptureBuilder::new(Link::Ethernet, Format::Pcap { nanos: true });
    let mut f = Conv::new("[fd00::2]:40000", "[2001:db8:2::2]:443", u32::MAX - 10, 7);
    cap.ip(0, f.c(SYN, b""));
    cap.ip(10, f.s(SYN | ACK, b""));
    cap.ip(11, f.c(ACK, b""));
    cap.ip(12, f.c(ACK | PSH, b"hello"));
    cap.ip(20, f.s(ACK | PSH, b"world"));
    cap.ip(21, f.c(FIN | ACK, b""));
    cap.ip(22, f.raw(true, ACK | PSH, f.c_nxt, f.s_nxt, b"late"));
    cap.ip(30, f.s(FIN | ACK, b""));
    cap.ip(31, f.c(ACK, b""));
    let (a, b) = (ip("fd00::2"), ip("2001:db8:2::2"));
    cap.ip(40, build::icmp_echo(a, b, 5, 1, true));
    cap.ip(41, build::icmp_echo(b, a, 5, 1, false));
    // From outside: the web rule admits port 80 on 2001:db8::10 only.
    let mut w = Conv::new("[2001:db8:9::9]:50000", "[2001:db8::10]:80", 1, 1);
    cap.ip(50, w.c(SYN, b""));
    let mut s = Conv::new("[2001:db8:9::9]:50001", "[2001:db8::10]:22", 1, 1);
    let syn = s.c(SYN, b"");
    cap.ip(51, syn.clone());
    // The web server's host says port 22 is unreachable, quoting that SYN:
    // the SYN was dropped, so nothing is tracked and the error is unrelated.
    cap.ip(
        52,
        build::icmp_unreachable(ip("2001:db8::10"), ip("2001:db8:9::9"), &syn),
    );
    // A router's error about the web SYN, back to its sender: related.
    let web_syn = w.raw(true, SYN, 1, 0, b"");
    cap.ip(
        53,
        build::icmp_unreachable(ip("fd00::1"), ip("2001:db8:9::9"), &web_syn),
    );
    cap
}

/// Broken packets: bad checksum, cut short, garbage, fragments, non-IP
/// frames, a frame shorter than its Ethernet header (Ethernet, pcap).
pub fn malformed() -> CaptureBuilder {
    let mut cap = CaptureBuilder::new(Link::Ethernet, Format::Pcap { nanos: false });
    cap.arp(0);
    // LLDP.
    let frame = Link::Ethernet.wrap(0x88cc, &[0x02, 0x07, 0x04, 0, 0, 0, 0, 0, 1]);
    cap.frame(crate::gen::at_ms(1), frame);
    cap.frame(crate::gen::at_ms(2), vec![0xff; 10]);
    let mut f = Conv::new("10.0.0.2:40008", "203.0.113.5:80", 1000, 5000);
    let mut bad = f.c(SYN, b"");
    let at = bad.len() - 4; // TCP checksum
    bad[at] ^= 0x55;
    cap.ip(10, bad);
    // The IP header says 60 bytes, the frame has 40.
    let mut short = f.raw(true, SYN, 999, 0, b"");
    short[3] = 60;
    short[10] = 0;
    short[11] = 0;
    fix_ipv4_checksum(&mut short);
    cap.ip(11, short);
    // Version 5.
    let mut garbage = f.raw(true, SYN, 999, 0, b"");
    garbage[0] = 0x55;
    cap.ip(12, garbage);
    // A first fragment (MF set).
    let mut frag = build::udp(
        "10.0.0.2:7000".parse().unwrap(),
        "203.0.113.5:7000".parse().unwrap(),
        &[0; 64],
    );
    frag[6] = 0x20;
    fix_ipv4_checksum(&mut frag);
    cap.ip(13, frag);
    // IHL of 4 words.
    let mut ihl = f.raw(true, SYN, 999, 0, b"");
    ihl[0] = 0x44;
    cap.ip(14, ihl);
    // A TCP data offset pointing past the segment.
    let mut off = f.raw(true, SYN, 999, 0, b"");
    off[20 + 12] = 0xf0;
    cap.ip(15, off);
    // A good SYN after all that.
    cap.ip(20, f.c(SYN, b""));
    cap
}

/// A capture that kept only the first 64 bytes of each frame (tcpdump -s 64):
/// the headers are there, the lengths come from the IP header (Ethernet, pcap).
pub fn snaplen() -> CaptureBuilder {
    let mut cap = CaptureBuilder::new(Link::Ethernet, Format::Pcap { nanos: false }).snaplen(64);
    let mut f = Conv::new("10.0.0.2:40009", "203.0.113.5:80", 0xffff_fff0, 1);
    cap.ip(0, f.c(SYN, b""));
    cap.ip(10, f.s(SYN | ACK, b""));
    cap.ip(11, f.c(ACK, b""));
    cap.ip(12, f.c(ACK | PSH, &[b'd'; 1400]));
    cap.ip(20, f.s(ACK | PSH, &[b'e'; 1400]));
    // Past the window (by more than the largest window), though only 64
    // bytes were kept.
    cap.ip(
        21,
        f.raw(
            true,
            ACK | PSH,
            f.c_nxt.wrapping_add(140_000),
            f.s_nxt,
            &[b'f'; 1400],
        ),
    );
    cap.ip(22, f.c(ACK, b""));
    cap
}

/// BSD loopback with both families, and a timestamp going backwards.
pub fn loopback_out_of_order() -> CaptureBuilder {
    let mut cap = CaptureBuilder::new(Link::Null, Format::Pcap { nanos: false });
    let mut f = Conv::new("10.0.0.2:40010", "10.0.0.3:8080", 1, 1);
    cap.ip(1000, f.c(SYN, b""));
    cap.ip(1010, f.s(SYN | ACK, b""));
    // Captured later, stamped earlier.
    cap.ip(900, f.c(ACK, b""));
    cap.ip(1020, f.c(ACK | PSH, b"ping"));
    let mut g = Conv::new("[fd00::2]:40011", "[fd00::3]:8080", 1, 1);
    cap.ip(1030, g.c(SYN, b""));
    cap.ip(1040, g.s(SYN | ACK, b""));
    cap
}

fn fix_ipv4_checksum(p: &mut [u8]) {
    let ihl = ((p[0] & 0x0f) as usize * 4).max(20);
    p[10] = 0;
    p[11] = 0;
    let mut sum: u32 = 0;
    for c in p[..ihl].chunks(2) {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let c = !(sum as u16);
    p[10..12].copy_from_slice(&c.to_be_bytes());
}

pub type Scenario = (&'static str, fn() -> CaptureBuilder);

/// Every scenario, by name.
pub fn all() -> Vec<Scenario> {
    vec![
        ("example", example),
        ("tcp_client_close", tcp_client_close),
        ("tcp_server_close", tcp_server_close),
        ("simultaneous_open", simultaneous_open),
        ("simultaneous_close", simultaneous_close),
        ("rst", rst),
        ("bad_handshake", bad_handshake),
        ("out_of_window", out_of_window),
        ("no_connection_and_flags", no_connection_and_flags),
        ("time_wait_reopen", time_wait_reopen),
        ("udp_icmp", udp_icmp),
        ("ipv6", ipv6),
        ("malformed", malformed),
        ("snaplen", snaplen),
        ("loopback_out_of_order", loopback_out_of_order),
    ]
}
