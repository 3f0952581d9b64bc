//! The Internet checksum (RFC 1071) over a pseudo-header and a segment.
//! Hand-written: it is on the hot path and trivially small.

#[derive(Clone, Copy, Debug)]
pub(super) struct Pseudo {
    pub v6: bool,
    /// Sum of the pseudo-header without the length.
    partial: u64,
}

fn sum_bytes(mut acc: u64, bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        // Add the two 32-bit halves separately so the 64-bit accumulator never overflows.
        acc += v >> 32;
        acc += v & 0xffff_ffff;
    }
    let mut rest = chunks.remainder();
    while rest.len() >= 2 {
        acc += u16::from_be_bytes([rest[0], rest[1]]) as u64;
        rest = &rest[2..];
    }
    if let [last] = rest {
        acc += (*last as u64) << 8;
    }
    acc
}

fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

impl Pseudo {
    pub fn v4(src: [u8; 4], dst: [u8; 4], protocol: u8) -> Self {
        let partial = sum_bytes(sum_bytes(protocol as u64, &src), &dst);
        Pseudo { v6: false, partial }
    }

    pub fn v6(src: [u8; 16], dst: [u8; 16], next_header: u8) -> Self {
        let partial = sum_bytes(sum_bytes(next_header as u64, &src), &dst);
        Pseudo { v6: true, partial }
    }

    /// The folded pseudo-header sum for a segment of `len` bytes (never 0:
    /// the protocol number alone makes the sum non-zero).
    pub fn sum(&self, len: usize) -> u16 {
        fold(self.partial + len as u64)
    }

    /// The checksum to write into `segment`, whose checksum field is zero.
    pub fn checksum(&self, segment: &[u8]) -> u16 {
        !fold(sum_bytes(self.partial + segment.len() as u64, segment))
    }

    /// True when the segment (with its checksum field) sums to all ones.
    #[inline]
    pub fn verify(&self, segment: &[u8]) -> bool {
        fold(sum_bytes(self.partial + segment.len() as u64, segment)) == 0xffff
    }
}

/// ICMPv4: no pseudo-header.
pub(super) fn verify_plain(bytes: &[u8]) -> bool {
    fold(sum_bytes(0, bytes)) == 0xffff
}

/// The checksum to write into `bytes` (an IPv4 header or an ICMPv4 message)
/// whose checksum field is zero.
pub(super) fn plain_checksum(bytes: &[u8]) -> u16 {
    !fold(sum_bytes(0, bytes))
}

/// True when a packet's TCP or UDP checksum is unfinished: the field holds the
/// folded pseudo-header sum that a sending host with checksum offload leaves
/// for its NIC to complete, and the segment, as captured, does not verify.
///
/// Linux stores exactly that for a `CHECKSUM_PARTIAL` skb:
/// `th->check = ~tcp_v4_check(skb->len, saddr, daddr, 0)` in
/// `__tcp_v4_send_check` (net/ipv4/tcp_ipv4.c), `~tcp_v6_check(...)` in
/// `__tcp_v6_send_check` (include/net/ip6_checksum.h),
/// `uh->check = ~csum_tcpudp_magic(src, dst, len, IPPROTO_UDP, 0)` in
/// `udp4_hwcsum` (net/ipv4/udp.c) and `~csum_ipv6_magic(saddr, daddr, len,
/// IPPROTO_UDP, 0)` in `udp6_hwcsum_outgoing` (net/ipv6/udp.c). The magic
/// functions end in `csum_fold`, which complements the folded sum, and the
/// leading `~` undoes it: the field is the folded, uncomplemented sum of the
/// pseudo-header (addresses, protocol, transport length), with `len` the
/// transport length (TCP header and data; the UDP length). The complement of
/// that sum is not accepted: no stack stores it.
///
/// `false` for anything else: a correct checksum, any other wrong value, a
/// UDP/IPv4 datagram without a checksum (0), a segment cut short by the
/// capture (not verifiable anyway), other protocols, fragments and packets
/// that do not parse. `wire_len` as in [`super::Framing`]. A corrupted
/// checksum passes for an unfinished one only when it happens to equal the
/// pseudo-header sum (1 in 65536 for a random value).
pub fn offloaded_checksum(bytes: &[u8], wire_len: Option<u32>) -> bool {
    let wire_len = wire_len.map_or(bytes.len(), |n| (n as usize).max(bytes.len()));
    let net = match bytes.first().map(|b| b >> 4) {
        Some(4) => super::ipv4_layer(bytes, wire_len),
        Some(6) => super::ipv6_layer(bytes, wire_len),
        _ => return false,
    };
    let Ok(net) = net else { return false };
    if net.l4.len() != net.l4_len {
        return false;
    }
    // The segment the checksum covers, and where its checksum field is.
    let (segment, at) = match net.protocol {
        super::PROTO_TCP if net.l4.len() >= 20 => (net.l4, 16),
        super::PROTO_UDP if net.l4.len() >= 8 => {
            let udp_len = u16::from_be_bytes([net.l4[4], net.l4[5]]) as usize;
            if udp_len < 8 || udp_len > net.l4.len() {
                return false;
            }
            (&net.l4[..udp_len], 6)
        }
        _ => return false,
    };
    let field = u16::from_be_bytes([segment[at], segment[at + 1]]);
    field == net.pseudo.sum(segment.len()) && !net.pseudo.verify(segment)
}

#[cfg(test)]
mod tests {
    use super::offloaded_checksum;
    use crate::wire::build;
    use std::net::{IpAddr, SocketAddr};

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// The pseudo-header sum written out from RFC 793 / RFC 8200 (3.1 / 8.1),
    /// independently of `Pseudo`: 16-bit words summed, carries folded back.
    fn reference_sum(src: IpAddr, dst: IpAddr, protocol: u8, len: usize) -> u16 {
        let mut header = Vec::new();
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                header.extend_from_slice(&s.octets());
                header.extend_from_slice(&d.octets());
                header.extend_from_slice(&[0, protocol]);
                header.extend_from_slice(&(len as u16).to_be_bytes());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                header.extend_from_slice(&s.octets());
                header.extend_from_slice(&d.octets());
                header.extend_from_slice(&(len as u32).to_be_bytes());
                header.extend_from_slice(&[0, 0, 0, protocol]);
            }
            _ => unreachable!(),
        }
        let mut sum: u32 = header
            .chunks(2)
            .map(|w| u16::from_be_bytes([w[0], w[1]]) as u32)
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        sum as u16
    }

    /// Byte offset of the IP payload in a packet built without extension headers.
    fn l4_at(ip: &[u8]) -> usize {
        if ip[0] >> 4 == 4 {
            (ip[0] & 0x0f) as usize * 4
        } else {
            40
        }
    }

    fn set_field(ip: &mut [u8], protocol: u8, value: u16) {
        let at = l4_at(ip) + if protocol == 6 { 16 } else { 6 };
        ip[at..at + 2].copy_from_slice(&value.to_be_bytes());
    }

    /// TCP and UDP packets, IPv4 and IPv6, with their (correct) checksums.
    fn packets() -> Vec<(Vec<u8>, u8, SocketAddr, SocketAddr)> {
        let mut v = Vec::new();
        for (c, s) in [
            ("10.0.0.2:40000", "203.0.113.5:80"),
            ("[2001:db8:1::2]:40000", "[2001:db8:2::5]:80"),
        ] {
            let (c, s) = (sa(c), sa(s));
            let syn = build::tcp(c, s).flags(0x02).seq(7).build();
            let data = build::tcp(c, s)
                .seq(8)
                .ack(9)
                .payload(b"GET / HTTP/1.0\r\n\r\n");
            let odd = build::tcp(s, c).seq(9).ack(27).payload(&[0xab; 333]);
            v.push((syn, 6, c, s));
            v.push((data.build(), 6, c, s));
            v.push((odd.build(), 6, s, c));
            v.push((build::udp(c, s, b"query"), 17, c, s));
            v.push((build::udp(s, c, &[0x5a; 101]), 17, s, c));
        }
        v
    }

    /// What Linux leaves in the field: the uncomplemented pseudo-header sum.
    fn offload(ip: &mut [u8], protocol: u8, src: SocketAddr, dst: SocketAddr) {
        let len = ip.len() - l4_at(ip);
        let sum = reference_sum(src.ip(), dst.ip(), protocol, len);
        set_field(ip, protocol, sum);
    }

    #[test]
    fn the_pseudo_header_sum_is_recognised_v4_and_v6_tcp_and_udp() {
        for (mut ip, protocol, src, dst) in packets() {
            assert!(!offloaded_checksum(&ip, None), "a correct checksum");
            offload(&mut ip, protocol, src, dst);
            assert!(
                offloaded_checksum(&ip, None),
                "{src} > {dst} proto {protocol}"
            );
            // The engine, verifying, would drop it: that is what auto mode saves.
            let strict = crate::wire::parse(&ip, crate::wire::Framing::default());
            assert_eq!(strict, Err(crate::reason::Reason::BadChecksum));
        }
    }

    #[test]
    fn other_wrong_checksums_are_not_offloaded() {
        for (ip, protocol, src, dst) in packets() {
            let len = ip.len() - l4_at(&ip);
            let sum = reference_sum(src.ip(), dst.ip(), protocol, len);
            let at = l4_at(&ip) + if protocol == 6 { 16 } else { 6 };
            let correct = u16::from_be_bytes([ip[at], ip[at + 1]]);
            // Its complement (no stack stores it), off by one, the sum for a
            // wrong length, and a spread of values.
            let mut wrong = vec![
                !sum,
                sum.wrapping_add(1),
                sum.wrapping_sub(1),
                reference_sum(src.ip(), dst.ip(), protocol, len + 1),
                reference_sum(src.ip(), dst.ip(), 6 + 17 - protocol, len),
                0xffff,
                0x0001,
            ];
            wrong.extend((0..64u32).map(|i| (i.wrapping_mul(0x9e37_79b9) >> 16) as u16));
            for w in wrong {
                if w == sum || w == correct || (protocol == 17 && w == 0) {
                    continue;
                }
                let mut bad = ip.clone();
                set_field(&mut bad, protocol, w);
                assert!(
                    !offloaded_checksum(&bad, None),
                    "{w:#06x} for sum {sum:#06x}"
                );
            }
        }
    }

    #[test]
    fn udp_v4_without_a_checksum_is_not_offloaded() {
        let mut ip = build::udp(sa("10.0.0.2:53000"), sa("198.51.100.53:53"), b"q");
        set_field(&mut ip, 17, 0);
        assert!(!offloaded_checksum(&ip, None));
    }

    #[test]
    fn a_segment_cut_short_by_the_capture_is_not_judged() {
        let (c, s) = (sa("10.0.0.2:40000"), sa("203.0.113.5:80"));
        let mut ip = build::tcp(c, s).payload(&[1; 500]).build();
        offload(&mut ip, 6, c, s);
        assert!(offloaded_checksum(&ip, None));
        let wire_len = Some(ip.len() as u32);
        assert!(!offloaded_checksum(&ip[..100], wire_len));
        // Without the true length it is a truncated packet: not judged either.
        assert!(!offloaded_checksum(&ip[..100], None));
    }

    #[test]
    fn other_protocols_fragments_and_garbage_are_not_offloaded() {
        let echo = build::icmp_echo(
            "10.0.0.2".parse().unwrap(),
            "198.51.100.1".parse().unwrap(),
            7,
            1,
            true,
        );
        assert!(!offloaded_checksum(&echo, None));
        let (c, s) = (sa("10.0.0.2:40000"), sa("203.0.113.5:80"));
        let mut frag = build::tcp(c, s).payload(&[1; 40]).build();
        offload(&mut frag, 6, c, s);
        frag[6] |= 0x20; // more fragments
        assert!(!offloaded_checksum(&frag, None));
        for garbage in [&[][..], &[0x45][..], &[0x60; 39][..], &[0x00; 60][..]] {
            assert!(!offloaded_checksum(garbage, None));
        }
    }
}
