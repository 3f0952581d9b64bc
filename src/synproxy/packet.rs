//! Finding the TCP header in an IP packet, and the Internet checksum, for
//! the proxy's readers, builders and rewriters.
//!
//! Hand-written rather than etherparse's slices: translation runs on every
//! packet of a proxied connection and needs only two offsets, not a parsed
//! view. Every index is checked; no input panics.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub(crate) const PROTO_TCP: u8 = 6;
pub(crate) const IPV4_HEADER: usize = 20;
pub(crate) const IPV6_HEADER: usize = 40;
pub(crate) const TCP_HEADER: usize = 20;

/// Why a packet could not be read or rewritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PacketError {
    /// Shorter than its headers say, or than an IP and TCP header.
    Truncated,
    /// A header field that cannot be right (IP version, header length,
    /// TCP data offset, an IPv6 extension header chain too long).
    Malformed,
    /// Not TCP (after any IPv6 extension headers).
    NotTcp,
    /// A fragment: the TCP header may not be in it.
    Fragment,
}

impl fmt::Display for PacketError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PacketError::Truncated => "truncated packet",
            PacketError::Malformed => "malformed header",
            PacketError::NotTcp => "not TCP",
            PacketError::Fragment => "IP fragment",
        })
    }
}

impl std::error::Error for PacketError {}

/// Where the TCP header of a packet is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct TcpAt {
    pub v6: bool,
    /// Offset of the TCP header.
    pub start: usize,
    /// Its length, options included (the data offset, in bytes).
    pub header_len: usize,
    /// The TCP segment's length (header and data) according to the IP header.
    pub segment_len: usize,
}

/// IPv6 extension headers followed before giving up: more is an attack, not a
/// packet a TCP stack sends.
const MAX_EXTENSION_HEADERS: usize = 8;

/// Finds the TCP header of `packet` (IP header first). The whole TCP header,
/// options included, must be in the buffer; the data need not be.
pub(crate) fn locate_tcp(packet: &[u8]) -> Result<TcpAt, PacketError> {
    let (v6, start, segment_len) = match packet.first().map(|b| b >> 4) {
        Some(4) => {
            let h = packet.get(..IPV4_HEADER).ok_or(PacketError::Truncated)?;
            let ihl = (h[0] & 0x0f) as usize * 4;
            let total = u16::from_be_bytes([h[2], h[3]]) as usize;
            if ihl < IPV4_HEADER || total < ihl {
                return Err(PacketError::Malformed);
            }
            // More fragments, or an offset: not the first or only piece.
            if u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0 {
                return Err(PacketError::Fragment);
            }
            if h[9] != PROTO_TCP {
                return Err(PacketError::NotTcp);
            }
            (false, ihl, total - ihl)
        }
        Some(6) => {
            let h = packet.get(..IPV6_HEADER).ok_or(PacketError::Truncated)?;
            let payload = u16::from_be_bytes([h[4], h[5]]) as usize;
            let end = IPV6_HEADER + payload;
            let mut next = h[6];
            let mut at = IPV6_HEADER;
            let mut followed = 0;
            loop {
                match next {
                    PROTO_TCP => break,
                    44 => return Err(PacketError::Fragment),
                    // Hop-by-hop, routing, destination options: (len + 1) * 8.
                    // Authentication header: (len + 2) * 4.
                    0 | 43 | 60 | 51 => {
                        followed += 1;
                        if followed > MAX_EXTENSION_HEADERS {
                            return Err(PacketError::Malformed);
                        }
                        let e = packet.get(at..at + 2).ok_or(PacketError::Truncated)?;
                        let len = if next == 51 {
                            (e[1] as usize + 2) * 4
                        } else {
                            (e[1] as usize + 1) * 8
                        };
                        next = e[0];
                        at += len;
                        if at > end {
                            return Err(PacketError::Malformed);
                        }
                    }
                    _ => return Err(PacketError::NotTcp),
                }
            }
            (true, at, end - at)
        }
        Some(_) => return Err(PacketError::Malformed),
        None => return Err(PacketError::Truncated),
    };
    let fixed = packet
        .get(start..start + TCP_HEADER)
        .ok_or(PacketError::Truncated)?;
    if segment_len < TCP_HEADER {
        return Err(PacketError::Malformed);
    }
    let header_len = (fixed[12] >> 4) as usize * 4;
    if header_len < TCP_HEADER || header_len > segment_len {
        return Err(PacketError::Malformed);
    }
    if packet.len() < start + header_len {
        return Err(PacketError::Truncated);
    }
    Ok(TcpAt {
        v6,
        start,
        header_len,
        segment_len,
    })
}

/// The source and destination addresses of a packet `locate_tcp` accepted.
pub(crate) fn addresses(packet: &[u8], v6: bool) -> (IpAddr, IpAddr) {
    let word = |at: usize| -> [u8; 4] {
        let mut w = [0; 4];
        w.copy_from_slice(&packet[at..at + 4]);
        w
    };
    let wide = |at: usize| -> [u8; 16] {
        let mut w = [0; 16];
        w.copy_from_slice(&packet[at..at + 16]);
        w
    };
    if v6 {
        (
            IpAddr::V6(Ipv6Addr::from(wide(8))),
            IpAddr::V6(Ipv6Addr::from(wide(24))),
        )
    } else {
        (
            IpAddr::V4(Ipv4Addr::from(word(12))),
            IpAddr::V4(Ipv4Addr::from(word(16))),
        )
    }
}

#[inline]
pub(crate) fn read_u16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

#[inline]
pub(crate) fn read_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// The ones'-complement sum of `bytes` as 16-bit big-endian words, added to
/// `acc` (not folded).
pub(crate) fn sum_words(mut acc: u64, bytes: &[u8]) -> u64 {
    let mut pairs = bytes.chunks_exact(2);
    for p in &mut pairs {
        acc += u16::from_be_bytes([p[0], p[1]]) as u64;
    }
    if let [last] = pairs.remainder() {
        acc += (*last as u64) << 8;
    }
    acc
}

pub(crate) fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The sum of the TCP pseudo-header (RFC 9293 3.1, RFC 8200 8.1).
pub(crate) fn pseudo_header_sum(src: IpAddr, dst: IpAddr, tcp_len: usize) -> u64 {
    let acc = PROTO_TCP as u64 + tcp_len as u64;
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => sum_words(sum_words(acc, &s.octets()), &d.octets()),
        (IpAddr::V6(s), IpAddr::V6(d)) => sum_words(sum_words(acc, &s.octets()), &d.octets()),
        // Mixed families: callers check before; any sum is as good as another.
        _ => acc,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garbage_is_refused_without_panicking() {
        for bytes in [
            &[][..],
            &[0x45][..],
            &[0x45; 20][..],
            &[0x60; 40][..],
            &[0x4f; 60][..],
            &[0x70; 60][..],
        ] {
            assert!(locate_tcp(bytes).is_err());
        }
        // An IPv6 chain of hop-by-hop headers pointing at each other.
        let mut v6 = vec![0u8; 40 + 8 * 12];
        v6[0] = 0x60;
        v6[4..6].copy_from_slice(&((8 * 12) as u16).to_be_bytes());
        v6[6] = 0;
        assert_eq!(locate_tcp(&v6), Err(PacketError::Malformed));
    }
}
