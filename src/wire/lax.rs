//! Lenient header reading, for showing a packet rather than judging it.
//!
//! [`super::parse`] refuses what is malformed; this reads whatever the first
//! bytes say, without validating anything, so that a packet the engine drops
//! as malformed (bad checksum, bad flags, cut short) still shows who sent it.
//! Log lines (which see only a packet's first bytes) and replay's display
//! use it. It never panics, whatever the bytes.
//!
//! Hand-written, after weighing etherparse 0.16's `LaxSlicedPacket::from_ip`
//! (December 2026): its laxness is about lengths (an IP payload cut short, a
//! total length that disagrees with the slice), not about the headers
//! themselves, and the packets shown here are the ones whose headers are
//! wrong or cut. It gives no addresses for an IPv4 header with IHL < 5 or cut
//! inside its options, no ports or flags for a TCP header with a data offset
//! below 5, nor for one cut before its options end (a SYN with options
//! behind IPv4 options, in a drop record's 96 bytes), nor for a first
//! fragment; no ICMP type before 8 bytes. This reads all of those
//! (`reads_what_a_strict_header_parser_would_not` below). It is not on the
//! verdict path: drop records are read when asked for, log lines on the
//! logging thread, replay's display only for packets its parse refused.

use super::{TcpFlags, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// TCP header fields, when the bytes reach the flags.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaxTcp {
    pub flags: TcpFlags,
    pub seq: u32,
    pub ack: u32,
}

/// What the bytes say; `None` where they did not say it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Headers {
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    /// The transport protocol (after IPv6 extension headers).
    pub protocol: Option<u8>,
    /// TCP and UDP.
    pub ports: Option<(u16, u16)>,
    pub tcp: Option<LaxTcp>,
    pub icmp_type: Option<u8>,
    pub icmp_code: Option<u8>,
}

/// Reads `b` (bytes from the IP header on).
pub fn headers(b: &[u8]) -> Headers {
    let mut h = Headers::default();
    let (protocol, l4) = match b.first().map(|v| v >> 4) {
        Some(4) if b.len() >= 20 => {
            h.src = Some(IpAddr::V4(Ipv4Addr::new(b[12], b[13], b[14], b[15])));
            h.dst = Some(IpAddr::V4(Ipv4Addr::new(b[16], b[17], b[18], b[19])));
            let ihl = (b[0] & 0x0f) as usize * 4;
            // Only a first fragment starts with the transport header.
            let fragment_offset = u16::from_be_bytes([b[6], b[7]]) & 0x1fff;
            let l4 = if ihl >= 20 && fragment_offset == 0 {
                b.get(ihl..)
            } else {
                None
            };
            (b[9], l4)
        }
        Some(6) if b.len() >= 40 => {
            let addr = |at: usize| {
                let mut a = [0u8; 16];
                a.copy_from_slice(&b[at..at + 16]);
                IpAddr::V6(Ipv6Addr::from(a))
            };
            h.src = Some(addr(8));
            h.dst = Some(addr(24));
            ipv6_transport(b)
        }
        _ => return h,
    };
    h.protocol = Some(protocol);
    let Some(l4) = l4 else { return h };
    let be16 = |at: usize| l4.get(at..at + 2).map(|s| u16::from_be_bytes([s[0], s[1]]));
    let be32 = |at: usize| {
        l4.get(at..at + 4)
            .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    };
    match protocol {
        PROTO_TCP | PROTO_UDP => {
            if let (Some(s), Some(d)) = (be16(0), be16(2)) {
                h.ports = Some((s, d));
            }
            if protocol == PROTO_TCP {
                if let (Some(seq), Some(ack), Some(&flags)) = (be32(4), be32(8), l4.get(13)) {
                    h.tcp = Some(LaxTcp {
                        flags: TcpFlags(flags),
                        seq,
                        ack,
                    });
                }
            }
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            h.icmp_type = l4.first().copied();
            h.icmp_code = l4.get(1).copied();
        }
        _ => {}
    }
    h
}

/// The transport protocol of an IPv6 packet and where its header starts:
/// hop-by-hop, routing and destination options are skipped (at most 8); a
/// fragment header names the protocol, but the transport header is there only
/// in the first fragment, which is not told apart here: no header then.
fn ipv6_transport(b: &[u8]) -> (u8, Option<&[u8]>) {
    let mut next = b[6];
    let mut off = 40;
    for _ in 0..8 {
        match next {
            0 | 43 | 60 => match b.get(off..off + 2) {
                Some(x) => {
                    next = x[0];
                    off += (x[1] as usize + 1) * 8;
                }
                None => return (next, None),
            },
            44 => return (b.get(off).copied().unwrap_or(next), None),
            _ => return (next, b.get(off..)),
        }
    }
    (next, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::build;
    use std::net::SocketAddr;

    #[test]
    fn reads_tcp_v4_and_udp_v6() {
        let a: SocketAddr = "198.18.0.2:40000".parse().unwrap();
        let b: SocketAddr = "198.19.0.2:80".parse().unwrap();
        let pkt = build::tcp(a, b)
            .flags(TcpFlags::SYN | TcpFlags::FIN)
            .seq(7)
            .build();
        let h = headers(&pkt);
        assert_eq!((h.src, h.dst), (Some(a.ip()), Some(b.ip())));
        assert_eq!(h.ports, Some((40000, 80)));
        assert_eq!(h.protocol, Some(PROTO_TCP));
        let tcp = h.tcp.unwrap();
        assert_eq!(
            (tcp.flags, tcp.seq),
            (TcpFlags(TcpFlags::SYN | TcpFlags::FIN), 7)
        );

        let a: SocketAddr = "[2001:db8:1::2]:5000".parse().unwrap();
        let b: SocketAddr = "[2001:db8:2::2]:53".parse().unwrap();
        let h = headers(&build::udp(a, b, b"x"));
        assert_eq!(h.src, Some(a.ip()));
        assert_eq!(h.protocol, Some(PROTO_UDP));
        assert_eq!(h.ports, Some((5000, 53)));
        assert_eq!(h.tcp, None);
    }

    #[test]
    fn skips_ipv6_extension_headers() {
        let a: SocketAddr = "[2001:db8:1::2]:5000".parse().unwrap();
        let b: SocketAddr = "[2001:db8:2::2]:53".parse().unwrap();
        let udp = build::udp(a, b, b"x");
        // Insert an 8-byte destination-options header (60) before UDP.
        let mut pkt = udp[..40].to_vec();
        pkt[6] = 60;
        pkt.extend_from_slice(&[PROTO_UDP, 0, 1, 4, 0, 0, 0, 0]);
        pkt.extend_from_slice(&udp[40..]);
        let h = headers(&pkt);
        assert_eq!(h.protocol, Some(PROTO_UDP));
        assert_eq!(h.ports, Some((5000, 53)));
    }

    /// Headers malformed or cut in the ways a dropped packet's are: who
    /// sent it is still shown.
    #[test]
    fn reads_what_a_strict_header_parser_would_not() {
        let a: SocketAddr = "198.18.0.2:40000".parse().unwrap();
        let b: SocketAddr = "198.19.0.2:80".parse().unwrap();
        let syn = build::tcp(a, b).flags(TcpFlags::SYN).seq(7).build();
        let syn_flags = TcpFlags(TcpFlags::SYN);
        let flags = Some(syn_flags);

        // IHL 4 (< 5): the addresses, not the transport header.
        let mut p = syn.clone();
        p[0] = 0x44;
        let h = headers(&p);
        assert_eq!((h.src, h.dst), (Some(a.ip()), Some(b.ip())));
        assert_eq!((h.protocol, h.ports), (Some(PROTO_TCP), None));

        // IHL 6 with the header cut inside its options: the addresses.
        let mut p = syn.clone();
        p[0] = 0x46;
        let h = headers(&p[..22]);
        assert_eq!((h.src, h.dst), (Some(a.ip()), Some(b.ip())));

        // TCP data offset 4 (< 5): ports and flags.
        let mut p = syn.clone();
        p[20 + 12] = 0x40;
        let h = headers(&p);
        assert_eq!(h.ports, Some((40000, 80)));
        assert_eq!(h.tcp.map(|t| t.flags), flags);

        // TCP cut right after its flags: ports and flags.
        let h = headers(&syn[..20 + 14]);
        assert_eq!(h.ports, Some((40000, 80)));
        assert_eq!(h.tcp.map(|t| (t.flags, t.seq)), Some((syn_flags, 7)));

        // 40 bytes of IPv4 options and 40 of TCP options, cut to a drop
        // record's 96 bytes: ports and flags.
        let mut p = syn[..20].to_vec();
        p[0] = 0x4f;
        p.extend_from_slice(&[1; 40]); // NOP options
        p.extend_from_slice(&syn[20..]);
        p[60 + 12] = 0xf0; // data offset 15
        p.extend_from_slice(&[1; 40]);
        let total = p.len() as u16;
        p[2..4].copy_from_slice(&total.to_be_bytes());
        let h = headers(&p[..96]);
        assert_eq!(h.ports, Some((40000, 80)));
        assert_eq!(h.tcp.map(|t| t.flags), flags);

        // A first fragment (more fragments, offset 0) starts with its ports.
        let mut p = syn.clone();
        p[6] = 0x20;
        assert_eq!(headers(&p).ports, Some((40000, 80)));

        // ICMP cut after its type and code.
        let mut p = syn[..22].to_vec();
        p[9] = PROTO_ICMP;
        p[20..22].copy_from_slice(&[3, 1]);
        let h = headers(&p);
        assert_eq!((h.icmp_type, h.icmp_code), (Some(3), Some(1)));
    }

    #[test]
    fn never_panics_on_garbage() {
        for len in 0..64 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 0x45) as u8).collect();
            let _ = headers(&bytes);
            let mut v6 = bytes.clone();
            if let Some(b) = v6.first_mut() {
                *b = 0x60;
            }
            let _ = headers(&v6);
        }
        assert_eq!(headers(&[0x45, 0, 0]), Headers::default());
    }
}
