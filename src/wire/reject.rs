//! The answer to a rejected packet (`action = "reject"`), built as the
//! kernel's `nf_reject` (iptables `REJECT`) builds it: a TCP RST for TCP,
//! an ICMP port unreachable (type 3 code 3) or ICMPv6 port unreachable
//! (type 1 code 4) for everything else, from the rejected packet's
//! destination back to its source, so that it reads as the destination
//! refusing.
//!
//! Written into a caller's fixed buffer (no allocation): the packet path
//! builds it. No reply at all ([`reject_reply`] returns `None`) to a packet
//! that must never be answered: one that does not parse or whose checksum is
//! wrong (when it can be verified), a fragment, a TCP RST, an ICMP error or
//! redirect, ICMPv6 neighbour discovery, and a packet from or to a broadcast
//! or multicast address (255.255.255.255, 224.0.0.0/4, ff00::/8), or from an
//! address that names no single host (0.0.0.0/8, 127.0.0.0/8, 240.0.0.0/4,
//! ::, ::1). A subnet's directed broadcast address cannot be told from a
//! host's without the interface's prefix: it is not recognised.

use super::checksum::{plain_checksum, Pseudo};
use super::{parse, Framing, IcmpKind, Packet, TcpSegment, Transport, PROTO_ICMP, PROTO_TCP};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The largest reply: an ICMPv6 error fills the IPv6 minimum MTU.
pub const REPLY_MAX: usize = 1280;
/// An ICMPv4 error is at most 576 bytes (RFC 1812 4.3.2.3), as Linux's.
const ICMP4_MAX: usize = 576;
/// An ICMPv6 error is at most the minimum MTU (RFC 4443 2.4 (c)).
const ICMP6_MAX: usize = REPLY_MAX;
/// The replies' TTL / hop limit (the kernel's default).
const HOP_LIMIT: u8 = 64;
const IPV4_HEADER: usize = 20;
const IPV6_HEADER: usize = 40;
const TCP_HEADER: usize = 20;
const ICMP_HEADER: usize = 8;
const PROTO_ICMPV6: u8 = super::PROTO_ICMPV6;

/// Writes into `out` the reply to `packet` (IP header first, as NFQUEUE
/// hands it over: possibly only its first bytes, with its real length in
/// `framing`) and returns the reply's length, or `None` when the packet must
/// not be answered (see the module documentation). Checksums are correct;
/// the reply is whole, ready for a raw socket with the header included.
pub fn reject_reply(packet: &[u8], framing: Framing, out: &mut [u8; REPLY_MAX]) -> Option<usize> {
    let p = parse(packet, framing).ok()?;
    if !answerable(p.src) || !addressable(p.dst) {
        return None;
    }
    let hosts = Hosts::reply_to(&p)?;
    match p.transport {
        Transport::Tcp(seg) if seg.flags.rst() => None,
        Transport::Tcp(seg) => Some(tcp_reset(hosts, &seg, out)),
        Transport::Icmp(icmp) if never_answered(icmp.v6, icmp.icmp_type, icmp.kind) => None,
        Transport::Icmp(_) | Transport::Udp { .. } | Transport::Other => {
            Some(port_unreachable(hosts, packet, out))
        }
    }
}

/// Errors are never answered with errors (RFC 1122 3.2.2, RFC 4443 2.4 (e));
/// nor redirects, nor neighbour discovery (link-local business).
fn never_answered(v6: bool, icmp_type: u8, kind: IcmpKind) -> bool {
    if matches!(kind, IcmpKind::Error(_)) {
        return true;
    }
    if v6 {
        // 0..=127 are the error messages; 133..=137 router and neighbour
        // solicitation and advertisement, and redirect.
        icmp_type < 128 || (133..=137).contains(&icmp_type)
    } else {
        // Unreachable, source quench, redirect, time exceeded, parameter problem.
        matches!(icmp_type, 3 | 4 | 5 | 11 | 12)
    }
}

/// A destination that is one host: not broadcast, multicast or unspecified.
fn addressable(a: IpAddr) -> bool {
    match a {
        IpAddr::V4(a) => !(a.is_broadcast() || a.is_multicast() || a.is_unspecified()),
        IpAddr::V6(a) => !(a.is_multicast() || a.is_unspecified()),
    }
}

/// A source that names one host the reply could reach (RFC 1122 3.2.2:
/// no error to a source that is broadcast, multicast, "this network",
/// loopback or class E).
fn answerable(a: IpAddr) -> bool {
    addressable(a)
        && match a {
            IpAddr::V4(a) => {
                let first = a.octets()[0];
                first != 0 && first != 127 && first < 240
            }
            IpAddr::V6(a) => a != Ipv6Addr::LOCALHOST,
        }
}

/// The reply's addresses: the rejected packet's, swapped.
#[derive(Clone, Copy)]
enum Hosts {
    V4 { src: Ipv4Addr, dst: Ipv4Addr },
    V6 { src: Ipv6Addr, dst: Ipv6Addr },
}

impl Hosts {
    fn reply_to(p: &Packet) -> Option<Hosts> {
        match (p.dst, p.src) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => Some(Hosts::V4 { src, dst }),
            (IpAddr::V6(src), IpAddr::V6(dst)) => Some(Hosts::V6 { src, dst }),
            _ => None,
        }
    }

    fn pseudo(self, protocol: u8) -> Pseudo {
        match self {
            Hosts::V4 { src, dst } => Pseudo::v4(src.octets(), dst.octets(), protocol),
            Hosts::V6 { src, dst } => Pseudo::v6(src.octets(), dst.octets(), protocol),
        }
    }

    /// The IP header of a reply carrying `payload_len` bytes of `protocol`,
    /// at the start of `out`; returns its length.
    fn write_header(self, protocol: u8, payload_len: usize, out: &mut [u8]) -> usize {
        match self {
            Hosts::V4 { src, dst } => {
                let h = &mut out[..IPV4_HEADER];
                h.fill(0);
                h[0] = 0x45;
                // An ICMP error goes with precedence "internetwork control"
                // and may be fragmented; the RST has DF set, as the kernel's.
                let icmp = protocol == PROTO_ICMP;
                h[1] = if icmp { 0xc0 } else { 0 };
                h[2..4].copy_from_slice(&((IPV4_HEADER + payload_len) as u16).to_be_bytes());
                if !icmp {
                    h[6] = 0x40;
                }
                h[8] = HOP_LIMIT;
                h[9] = protocol;
                h[12..16].copy_from_slice(&src.octets());
                h[16..20].copy_from_slice(&dst.octets());
                let sum = plain_checksum(h);
                h[10..12].copy_from_slice(&sum.to_be_bytes());
                IPV4_HEADER
            }
            Hosts::V6 { src, dst } => {
                let h = &mut out[..IPV6_HEADER];
                h.fill(0);
                h[0] = 0x60;
                h[4..6].copy_from_slice(&(payload_len as u16).to_be_bytes());
                h[6] = protocol;
                h[7] = HOP_LIMIT;
                h[8..24].copy_from_slice(&src.octets());
                h[24..40].copy_from_slice(&dst.octets());
                IPV6_HEADER
            }
        }
    }
}

/// RFC 9293 3.10.7.1 (RFC 793's reset generation), as `nf_reject`: if the
/// segment has ACK, the RST takes its sequence number from that ACK (and
/// carries no ACK); otherwise sequence 0 and RST|ACK acknowledging all the
/// segment occupied (its data, SYN and FIN). No options, window 0.
fn tcp_reset(hosts: Hosts, seg: &TcpSegment, out: &mut [u8; REPLY_MAX]) -> usize {
    let at = hosts.write_header(PROTO_TCP, TCP_HEADER, out);
    let (seq, ack, flags) = if seg.flags.ack() {
        (seg.ack.0, 0, super::TcpFlags::RST)
    } else {
        (
            0,
            seg.seq.0.wrapping_add(seg.seq_len()),
            super::TcpFlags::RST | super::TcpFlags::ACK,
        )
    };
    let t = &mut out[at..at + TCP_HEADER];
    t.fill(0);
    t[0..2].copy_from_slice(&seg.dst_port.to_be_bytes());
    t[2..4].copy_from_slice(&seg.src_port.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = ((TCP_HEADER / 4) as u8) << 4;
    t[13] = flags;
    let sum = hosts.pseudo(PROTO_TCP).checksum(t);
    t[16..18].copy_from_slice(&sum.to_be_bytes());
    at + TCP_HEADER
}

/// Port unreachable, quoting as much of the packet as the error may carry
/// (and as was captured, and as the IP length says is the packet).
fn port_unreachable(hosts: Hosts, packet: &[u8], out: &mut [u8; REPLY_MAX]) -> usize {
    let v6 = matches!(hosts, Hosts::V6 { .. });
    let (protocol, header, max, icmp_type, code) = if v6 {
        (PROTO_ICMPV6, IPV6_HEADER, ICMP6_MAX, 1, 4)
    } else {
        (PROTO_ICMP, IPV4_HEADER, ICMP4_MAX, 3, 3)
    };
    let ip_len = if v6 {
        IPV6_HEADER + u16::from_be_bytes([packet[4], packet[5]]) as usize
    } else {
        u16::from_be_bytes([packet[2], packet[3]]) as usize
    };
    let quote = packet.len().min(ip_len).min(max - header - ICMP_HEADER);
    let icmp_len = ICMP_HEADER + quote;
    let at = hosts.write_header(protocol, icmp_len, out);
    let m = &mut out[at..at + icmp_len];
    m[..ICMP_HEADER].fill(0);
    m[0] = icmp_type;
    m[1] = code;
    m[ICMP_HEADER..].copy_from_slice(&packet[..quote]);
    let sum = if v6 {
        hosts.pseudo(PROTO_ICMPV6).checksum(m)
    } else {
        plain_checksum(m)
    };
    m[2..4].copy_from_slice(&sum.to_be_bytes());
    at + icmp_len
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{build, checksum::verify_plain, Checksums, Embedded, Icmp, TcpFlags};
    use std::net::SocketAddr;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn reply(packet: &[u8]) -> Option<Vec<u8>> {
        reply_framed(packet, Framing::default())
    }

    fn reply_framed(packet: &[u8], framing: Framing) -> Option<Vec<u8>> {
        let mut out = [0xaa; REPLY_MAX];
        reject_reply(packet, framing, &mut out).map(|n| out[..n].to_vec())
    }

    /// Parses a reply with every checksum verified (the IPv4 header's too).
    fn parsed(bytes: &[u8]) -> Packet {
        if bytes[0] >> 4 == 4 {
            assert!(verify_plain(&bytes[..20]), "IPv4 header checksum");
            assert_eq!(
                u16::from_be_bytes([bytes[2], bytes[3]]) as usize,
                bytes.len()
            );
        } else {
            assert_eq!(
                u16::from_be_bytes([bytes[4], bytes[5]]) as usize + 40,
                bytes.len()
            );
        }
        parse(bytes, Framing::default()).expect("the reply parses, checksums verified")
    }

    fn rst(bytes: &[u8]) -> TcpSegment {
        *parsed(bytes).tcp().expect("a TCP reply")
    }

    const CLIENT: &str = "198.18.0.2:40000";
    const SERVER: &str = "198.19.0.2:22";
    const CLIENT6: &str = "[2001:db8:1::2]:40000";
    const SERVER6: &str = "[2001:db8:2::2]:22";

    #[test]
    fn a_syn_gets_rst_ack_acknowledging_the_syn_from_the_destination() {
        for (c, s) in [(CLIENT, SERVER), (CLIENT6, SERVER6)] {
            let syn = build::tcp(sa(c), sa(s))
                .flags(TcpFlags::SYN)
                .seq(0xffff_ffff)
                .mss(1460)
                .build();
            let r = reply(&syn).expect("a RST");
            let p = parsed(&r);
            assert_eq!((p.src, p.dst), (sa(s).ip(), sa(c).ip()));
            let t = rst(&r);
            assert_eq!((t.src_port, t.dst_port), (22, 40000));
            assert_eq!(t.flags.0, TcpFlags::RST | TcpFlags::ACK);
            assert_eq!(t.seq.0, 0);
            // The SYN's sequence number plus one, wrapping.
            assert_eq!(t.ack.0, 0);
            assert_eq!(t.window, 0);
            assert_eq!(t.payload_len, 0);
            assert_eq!(r.len(), if c == CLIENT { 40 } else { 60 });
            if c == CLIENT {
                assert_eq!(r[8], HOP_LIMIT);
                assert_eq!(r[6] & 0x40, 0x40, "DF, as the kernel's RST");
            } else {
                assert_eq!(r[7], HOP_LIMIT);
            }
        }
    }

    #[test]
    fn the_rst_acknowledges_data_syn_and_fin_of_a_segment_without_ack() {
        // A SYN with data (TCP Fast Open): ISN + 1 + 5.
        let syn = build::tcp(sa(CLIENT), sa(SERVER))
            .flags(TcpFlags::SYN)
            .seq(1000)
            .payload(b"hello")
            .build();
        assert_eq!(rst(&reply(&syn).unwrap()).ack.0, 1006);
        // Only the headers were copied (NFQUEUE copy range): the length
        // comes from the IP header, not from the bytes at hand.
        let big = build::tcp(sa(CLIENT), sa(SERVER))
            .flags(TcpFlags::SYN)
            .seq(7)
            .payload(&[1; 1000])
            .build();
        let framing = Framing {
            wire_len: Some(big.len() as u32),
            checksums: Checksums::Verify,
        };
        let t = rst(&reply_framed(&big[..120], framing).unwrap());
        assert_eq!((t.seq.0, t.ack.0), (0, 1008));
    }

    #[test]
    fn a_segment_with_ack_gets_a_plain_rst_at_its_ack_number() {
        for (c, s) in [(CLIENT, SERVER), (CLIENT6, SERVER6)] {
            let data = build::tcp(sa(c), sa(s))
                .flags(TcpFlags::ACK | TcpFlags::PSH)
                .seq(5000)
                .ack(0x8000_0001)
                .payload(b"data")
                .build();
            let t = rst(&reply(&data).unwrap());
            assert_eq!(t.flags.0, TcpFlags::RST, "no ACK flag");
            assert_eq!((t.seq.0, t.ack.0), (0x8000_0001, 0));
            let fin = build::tcp(sa(c), sa(s))
                .flags(TcpFlags::FIN | TcpFlags::ACK)
                .seq(1)
                .ack(77)
                .build();
            let t = rst(&reply(&fin).unwrap());
            assert_eq!((t.seq.0, t.flags.0), (77, TcpFlags::RST));
        }
    }

    /// The ICMP error a reply is, with what it quotes.
    fn unreachable(bytes: &[u8]) -> (Packet, Icmp, Embedded) {
        let p = parsed(bytes);
        let Transport::Icmp(icmp) = p.transport else {
            panic!("not ICMP: {p:?}");
        };
        let IcmpKind::Error(e) = icmp.kind else {
            panic!("not an ICMP error: {icmp:?}");
        };
        (p, icmp, e)
    }

    #[test]
    fn udp_gets_port_unreachable_quoting_the_whole_small_datagram() {
        let dgram = build::udp(sa("198.18.0.2:53000"), sa("198.19.0.2:53"), b"query");
        let r = reply(&dgram).unwrap();
        let (p, icmp, e) = unreachable(&r);
        assert_eq!((p.src, p.dst), (ip("198.19.0.2"), ip("198.18.0.2")));
        assert_eq!((icmp.icmp_type, icmp.code), (3, 3));
        assert_eq!(
            (e.src, e.dst, e.src_port, e.dst_port),
            (ip("198.18.0.2"), ip("198.19.0.2"), 53000, 53)
        );
        assert_eq!(&r[28..], &dgram[..], "the whole datagram quoted");
        assert_eq!(r[1], 0xc0, "precedence internetwork control");
        assert_eq!(r[6] & 0x40, 0, "an ICMP error may be fragmented");
    }

    #[test]
    fn the_icmp_quote_stops_at_576_bytes_for_ipv4_and_1280_for_ipv6() {
        let big4 = build::udp(sa("198.18.0.2:53000"), sa("198.19.0.2:53"), &[7; 1400]);
        let r = reply(&big4).unwrap();
        assert_eq!(r.len(), 576);
        assert_eq!(&r[28..], &big4[..548]);
        unreachable(&r);
        let big6 = build::udp(
            sa("[2001:db8:1::2]:53000"),
            sa("[2001:db8:2::2]:53"),
            &[7; 1400],
        );
        let r = reply(&big6).unwrap();
        assert_eq!(r.len(), 1280);
        assert_eq!(&r[48..], &big6[..1232]);
        let (p, icmp, e) = unreachable(&r);
        assert_eq!((p.src, p.dst), (ip("2001:db8:2::2"), ip("2001:db8:1::2")));
        assert_eq!((icmp.icmp_type, icmp.code), (1, 4));
        assert_eq!((e.src_port, e.dst_port), (53000, 53));
        // A headers-only copy: what was captured is quoted, at least the
        // IP header and 8 bytes.
        let framing = Framing {
            wire_len: Some(big4.len() as u32),
            checksums: Checksums::Verify,
        };
        let r = reply_framed(&big4[..256], framing).unwrap();
        assert_eq!(r.len(), 28 + 256);
        assert_eq!(&r[28..], &big4[..256]);
        let r = reply_framed(&big4[..28], framing).unwrap();
        assert_eq!(&r[28..], &big4[..28]);
    }

    #[test]
    fn other_protocols_and_echo_requests_get_port_unreachable() {
        let gre = build::other(ip("198.18.0.2"), ip("198.19.0.2"), 47, b"gre payload");
        let (_, icmp, e) = unreachable(&reply(&gre).unwrap());
        assert_eq!((icmp.icmp_type, e.protocol), (3, 47));
        let gre6 = build::other(ip("2001:db8:1::2"), ip("2001:db8:2::2"), 47, b"gre");
        assert_eq!(unreachable(&reply(&gre6).unwrap()).1.icmp_type, 1);
        for (c, s) in [
            ("198.18.0.2", "198.19.0.2"),
            ("2001:db8:1::2", "2001:db8:2::2"),
        ] {
            let echo = build::icmp_echo(ip(c), ip(s), 9, 1, true);
            let (_, _, e) = unreachable(&reply(&echo).unwrap());
            assert_eq!((e.src, e.src_port), (ip(c), 9));
        }
    }

    #[test]
    fn resets_icmp_errors_and_redirects_are_never_answered() {
        for flags in [TcpFlags::RST, TcpFlags::RST | TcpFlags::ACK] {
            for (c, s) in [(CLIENT, SERVER), (CLIENT6, SERVER6)] {
                let r = build::tcp(sa(c), sa(s)).flags(flags).seq(1).ack(2).build();
                assert_eq!(reply(&r), None, "{flags:#x} {c}");
            }
        }
        let dgram = build::udp(sa("198.18.0.2:53000"), sa("198.19.0.2:53"), b"q");
        let error = build::icmp_unreachable(ip("198.18.0.2"), ip("198.19.0.2"), &dgram);
        assert_eq!(reply(&error), None);
        let dgram6 = build::udp(sa("[2001:db8:1::2]:53000"), sa("[2001:db8:2::2]:53"), b"q");
        let error6 = build::icmp_unreachable(ip("2001:db8:1::2"), ip("2001:db8:2::2"), &dgram6);
        assert_eq!(reply(&error6), None);
        // Redirect and source quench (not errors the parser reads), and an
        // ICMPv6 neighbour solicitation.
        for (t, v6) in [(5u8, false), (4, false), (135, true)] {
            let v6_addr = |a: &str| a.parse::<Ipv6Addr>().unwrap().octets();
            let mut out = Vec::new();
            if v6 {
                etherparse::PacketBuilder::ipv6(
                    v6_addr("2001:db8:1::2"),
                    v6_addr("2001:db8:2::2"),
                    255,
                )
                .icmpv6_raw(t, 0, [0; 4])
                .write(&mut out, &dgram6)
            } else {
                etherparse::PacketBuilder::ipv4([198, 18, 0, 2], [198, 19, 0, 2], 64)
                    .icmpv4_raw(t, 0, [0; 4])
                    .write(&mut out, &dgram)
            }
            .unwrap();
            assert!(parse(&out, Framing::default()).is_ok(), "type {t} parses");
            assert_eq!(reply(&out), None, "ICMP type {t}");
        }
    }

    #[test]
    fn broadcast_multicast_and_no_host_addresses_are_never_answered() {
        let syn = |c: &str, s: &str| build::tcp(sa(c), sa(s)).flags(TcpFlags::SYN).build();
        let udp = |c: &str, s: &str| build::udp(sa(c), sa(s), b"x");
        for (c, s) in [
            ("198.18.0.2:5353", "224.0.0.251:5353"),
            ("198.18.0.2:137", "255.255.255.255:137"),
            ("0.0.0.0:68", "255.255.255.255:67"),
            ("0.0.0.0:68", "198.19.0.2:67"),
            ("224.0.0.1:5000", "198.19.0.2:53"),
            ("127.0.0.1:5000", "198.19.0.2:53"),
            ("240.0.0.1:5000", "198.19.0.2:53"),
            ("[2001:db8:1::2]:5353", "[ff02::fb]:5353"),
            ("[ff05::1]:5000", "[2001:db8:2::2]:53"),
            ("[::]:5000", "[2001:db8:2::2]:53"),
            ("[::1]:5000", "[2001:db8:2::2]:53"),
        ] {
            assert_eq!(reply(&udp(c, s)), None, "udp {c} > {s}");
            assert_eq!(reply(&syn(c, s)), None, "syn {c} > {s}");
        }
        // The same ports between single hosts are answered.
        assert!(reply(&udp("198.18.0.2:5353", "198.19.0.2:5353")).is_some());
    }

    #[test]
    fn fragments_bad_checksums_and_garbage_are_never_answered() {
        let dgram = build::udp(sa("198.18.0.2:53000"), sa("198.19.0.2:53"), &[1; 64]);
        let mut first = dgram.clone();
        first[6] |= 0x20; // more fragments
        let mut later = dgram.clone();
        later[7] = 8; // offset 64 bytes
        for frag in [first, later] {
            assert_eq!(reply(&frag), None);
        }
        let mut bad = build::tcp(sa(CLIENT), sa(SERVER))
            .flags(TcpFlags::SYN)
            .build();
        bad[36] ^= 0xff; // the TCP checksum
        assert_eq!(reply(&bad), None);
        // The same, with the checksum known not computed (GSO): answered.
        let offloaded = Framing {
            wire_len: None,
            checksums: Checksums::NotComputed,
        };
        assert!(reply_framed(&bad, offloaded).is_some());
        for garbage in [&[][..], &[0x45][..], &[0x60; 39][..], &[0; 60][..]] {
            assert_eq!(reply(garbage), None);
        }
    }

    #[test]
    fn the_buffer_past_the_reply_is_left_alone() {
        let syn = build::tcp(sa(CLIENT), sa(SERVER))
            .flags(TcpFlags::SYN)
            .build();
        let mut out = [0xaa; REPLY_MAX];
        let n = reject_reply(&syn, Framing::default(), &mut out).unwrap();
        assert!(out[n..].iter().all(|b| *b == 0xaa));
    }
}
