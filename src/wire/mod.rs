//! Bytes to a compact packet view.
//!
//! The input starts at the IP header, as NFQUEUE hands it over. Headers are
//! parsed with etherparse's header slices, which need only the header bytes:
//! NFQUEUE copies just the first bytes of a packet (the copy range), so lengths
//! come from the IP header and the true packet length, not from the buffer.
//! After [`parse`] succeeds every field is validated; no input panics.

pub mod build;
mod checksum;
mod flags;
pub mod lax;
pub mod reject;
pub mod seq;

pub use checksum::offloaded_checksum;
pub use flags::TcpFlags;

use crate::reason::Reason;
use etherparse::err::{ipv4, ipv6, ipv6_exts, tcp, Layer, LenError};
use etherparse::LenSource;
use etherparse::{Ipv4HeaderSlice, Ipv6ExtensionsSlice, Ipv6HeaderSlice, TcpHeaderSlice};
pub use seq::SeqNum;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// How checksums are treated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Checksums {
    /// Verify TCP/UDP/ICMP checksums when the whole packet is present.
    #[default]
    Verify,
    /// The checksum is not computed yet (offloaded or GSO packets): skip it.
    NotComputed,
}

/// What the caller knows about the bytes beyond their content.
#[derive(Clone, Copy, Debug, Default)]
pub struct Framing {
    /// The packet's real length when the buffer holds only its first bytes
    /// (NFQUEUE copy range). `None`: the buffer is the whole packet.
    pub wire_len: Option<u32>,
    pub checksums: Checksums,
}

/// TCP options that tracking needs, read from SYN segments only.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynOptions {
    pub window_scale: Option<u8>,
    pub mss: Option<u16>,
    pub sack_permitted: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSegment {
    pub src_port: u16,
    pub dst_port: u16,
    pub flags: TcpFlags,
    pub seq: SeqNum,
    pub ack: SeqNum,
    pub window: u16,
    /// Payload bytes (from the IP length, not the captured buffer).
    pub payload_len: u32,
    pub options: SynOptions,
}

impl TcpSegment {
    /// Sequence space the segment occupies: payload plus one for SYN and FIN.
    #[inline]
    pub fn seq_len(&self) -> u32 {
        self.payload_len + self.flags.syn() as u32 + self.flags.fin() as u32
    }
}

/// The header an ICMP error carries of the packet that caused it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Embedded {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub protocol: u8,
    /// Ports, or (id, id) for an embedded ICMP echo.
    pub src_port: u16,
    pub dst_port: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IcmpKind {
    EchoRequest {
        id: u16,
    },
    EchoReply {
        id: u16,
    },
    /// Destination unreachable, time exceeded, parameter problem, packet too big.
    Error(Embedded),
    /// Anything else (router advertisement, timestamp, ...).
    Other,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Icmp {
    pub v6: bool,
    pub icmp_type: u8,
    pub code: u8,
    pub kind: IcmpKind,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Tcp(TcpSegment),
    Udp { src_port: u16, dst_port: u16 },
    Icmp(Icmp),
    Other,
}

/// A validated packet: the facts conntrackd decides on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number (after IPv6 extension headers).
    pub protocol: u8,
    pub transport: Transport,
    /// Bytes of the whole IP packet on the wire (what per-connection byte
    /// counters add up), even when only its headers were copied.
    pub len: u32,
}

impl Packet {
    pub fn tcp(&self) -> Option<&TcpSegment> {
        match &self.transport {
            Transport::Tcp(t) => Some(t),
            _ => None,
        }
    }

    /// (source port, destination port) for TCP and UDP.
    pub fn ports(&self) -> Option<(u16, u16)> {
        match self.transport {
            Transport::Tcp(t) => Some((t.src_port, t.dst_port)),
            Transport::Udp { src_port, dst_port } => Some((src_port, dst_port)),
            _ => None,
        }
    }
}

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// `tcp`, `udp`, `icmp`, `icmpv6`, or the protocol number.
pub fn protocol_name(p: u8) -> std::borrow::Cow<'static, str> {
    match p {
        PROTO_TCP => "tcp".into(),
        PROTO_UDP => "udp".into(),
        PROTO_ICMP => "icmp".into(),
        PROTO_ICMPV6 => "icmpv6".into(),
        other => other.to_string().into(),
    }
}

/// Parses one IP packet. Malformed input is an `Err` with the reason to drop it.
pub fn parse(bytes: &[u8], framing: Framing) -> Result<Packet, Reason> {
    // A buffer longer than the length it claims is a caller bug: trust the buffer.
    let wire_len = framing
        .wire_len
        .map_or(bytes.len(), |n| (n as usize).max(bytes.len()));
    parse_inner(bytes, wire_len, framing.checksums)
}

struct Network<'a> {
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    /// Transport header and payload, as far as captured.
    l4: &'a [u8],
    /// Transport length according to the IP header.
    l4_len: usize,
    pseudo: checksum::Pseudo,
}

fn parse_inner(bytes: &[u8], wire_len: usize, checksums: Checksums) -> Result<Packet, Reason> {
    let net = match bytes.first().map(|b| b >> 4) {
        Some(4) => ipv4_layer(bytes, wire_len)?,
        Some(6) => ipv6_layer(bytes, wire_len)?,
        Some(_) => return Err(Reason::BadIpHeader),
        None => return Err(Reason::Truncated),
    };
    // Checksums can only be checked over the whole segment.
    let verify = checksums == Checksums::Verify && net.l4.len() == net.l4_len;
    let transport = match net.protocol {
        PROTO_TCP => Transport::Tcp(tcp_layer(&net, verify)?),
        PROTO_UDP => udp_layer(&net, verify)?,
        PROTO_ICMP if !net.pseudo.v6 => Transport::Icmp(icmp_layer(&net, verify, false)?),
        PROTO_ICMPV6 if net.pseudo.v6 => Transport::Icmp(icmp_layer(&net, verify, true)?),
        _ => Transport::Other,
    };
    Ok(Packet {
        src: net.src,
        dst: net.dst,
        protocol: net.protocol,
        transport,
        len: wire_len.min(u32::MAX as usize) as u32,
    })
}

fn len_reason(e: &LenError) -> Reason {
    match e.len_source {
        LenSource::Slice => Reason::Truncated,
        _ => Reason::BadIpLength,
    }
}

// Inlined: the IPv4 path is the hot one (instruction counts, examples/decide_loop).
#[inline]
fn ipv4_layer(bytes: &[u8], wire_len: usize) -> Result<Network<'_>, Reason> {
    let header = Ipv4HeaderSlice::from_slice(bytes).map_err(|e| match e {
        ipv4::HeaderSliceError::Len(l) => len_reason(&l),
        ipv4::HeaderSliceError::Content(_) => Reason::BadIpHeader,
    })?;
    let header_len = header.slice().len();
    let total = header.total_len() as usize;
    if total < header_len {
        return Err(Reason::BadIpLength);
    }
    if total > wire_len {
        return Err(Reason::Truncated);
    }
    if header.is_fragmenting_payload() {
        return Err(Reason::Fragment);
    }
    let captured_end = total.min(bytes.len());
    let src = header.source();
    let dst = header.destination();
    let protocol = header.protocol().0;
    Ok(Network {
        src: IpAddr::V4(Ipv4Addr::from(src)),
        dst: IpAddr::V4(Ipv4Addr::from(dst)),
        protocol,
        l4: &bytes[header_len..captured_end],
        l4_len: total - header_len,
        pseudo: checksum::Pseudo::v4(src, dst, protocol),
    })
}

fn ipv6_layer(bytes: &[u8], wire_len: usize) -> Result<Network<'_>, Reason> {
    let header = Ipv6HeaderSlice::from_slice(bytes).map_err(|e| match e {
        ipv6::HeaderSliceError::Len(l) => len_reason(&l),
        ipv6::HeaderSliceError::Content(_) => Reason::BadIpHeader,
    })?;
    let total = 40 + header.payload_length() as usize;
    if total > wire_len {
        return Err(Reason::Truncated);
    }
    let captured = &bytes[40..total.min(bytes.len())];
    let (exts, next, rest) = Ipv6ExtensionsSlice::from_slice(header.next_header(), captured)
        .map_err(|e| match e {
            ipv6_exts::HeaderSliceError::Len(l) if l.len_source == LenSource::Slice => {
                // Ran off the captured bytes: the IP length or the capture is short.
                if captured.len() < total - 40 {
                    Reason::Truncated
                } else {
                    Reason::BadIpLength
                }
            }
            _ => Reason::BadExtensionHeader,
        })?;
    if exts.is_fragmenting_payload() {
        return Err(Reason::Fragment);
    }
    let ext_len = captured.len() - rest.len();
    let src = header.source();
    let dst = header.destination();
    Ok(Network {
        src: IpAddr::V6(Ipv6Addr::from(src)),
        dst: IpAddr::V6(Ipv6Addr::from(dst)),
        protocol: next.0,
        l4: rest,
        l4_len: total - 40 - ext_len,
        pseudo: checksum::Pseudo::v6(src, dst, next.0),
    })
}

fn tcp_layer(net: &Network<'_>, verify: bool) -> Result<TcpSegment, Reason> {
    let header = TcpHeaderSlice::from_slice(net.l4).map_err(|e| match e {
        tcp::HeaderSliceError::Len(l) => {
            // The data offset points past the end: of the segment (malformed)
            // or only of the captured bytes (the copy range is too short).
            if l.layer == Layer::TcpHeader && l.required_len <= net.l4_len && l.required_len > 20 {
                Reason::Truncated
            } else if l.layer == Layer::TcpHeader && l.required_len > 20 {
                Reason::BadTcpOffset
            } else if net.l4_len < 20 {
                Reason::BadIpLength
            } else {
                Reason::Truncated
            }
        }
        tcp::HeaderSliceError::Content(tcp::HeaderError::DataOffsetTooSmall { .. }) => {
            Reason::BadTcpOffset
        }
    })?;
    let header_len = header.slice().len();
    if header_len > net.l4_len {
        return Err(Reason::BadTcpOffset);
    }
    if verify && !net.pseudo.verify(net.l4) {
        return Err(Reason::BadChecksum);
    }
    let flags = TcpFlags(header.slice()[13]);
    flags.validate()?;
    let mut options = SynOptions::default();
    if flags.syn() {
        for option in header.options_iterator() {
            use etherparse::TcpOptionElement::*;
            match option {
                Ok(WindowScale(s)) => options.window_scale = Some(s),
                Ok(MaximumSegmentSize(m)) => options.mss = Some(m),
                Ok(SelectiveAcknowledgementPermitted) => options.sack_permitted = true,
                Ok(_) => {}
                // A malformed option ends the list; the kernel ignores the rest too.
                Err(_) => break,
            }
        }
    }
    Ok(TcpSegment {
        src_port: header.source_port(),
        dst_port: header.destination_port(),
        flags,
        seq: SeqNum(header.sequence_number()),
        ack: SeqNum(header.acknowledgment_number()),
        window: header.window_size(),
        payload_len: (net.l4_len - header_len) as u32,
        options,
    })
}

fn udp_layer(net: &Network<'_>, verify: bool) -> Result<Transport, Reason> {
    if net.l4_len < 8 {
        return Err(Reason::BadIpLength);
    }
    let h = net.l4.get(..8).ok_or(Reason::Truncated)?;
    let udp_len = u16::from_be_bytes([h[4], h[5]]) as usize;
    // UDP length 0 is legal only for IPv6 jumbograms; anything else must fit.
    if udp_len < 8 || udp_len > net.l4_len {
        return Err(Reason::BadUdpLength);
    }
    let checksum = u16::from_be_bytes([h[6], h[7]]);
    let has_checksum = checksum != 0 || net.pseudo.v6;
    if verify && has_checksum && !net.pseudo.verify(&net.l4[..udp_len]) {
        return Err(Reason::BadChecksum);
    }
    Ok(Transport::Udp {
        src_port: u16::from_be_bytes([h[0], h[1]]),
        dst_port: u16::from_be_bytes([h[2], h[3]]),
    })
}

fn icmp_layer(net: &Network<'_>, verify: bool, v6: bool) -> Result<Icmp, Reason> {
    if net.l4_len < 8 {
        return Err(Reason::BadIpLength);
    }
    let h = net.l4.get(..8).ok_or(Reason::Truncated)?;
    if verify {
        let ok = if v6 {
            net.pseudo.verify(net.l4)
        } else {
            checksum::verify_plain(net.l4)
        };
        if !ok {
            return Err(Reason::BadChecksum);
        }
    }
    let (icmp_type, code) = (h[0], h[1]);
    let id = u16::from_be_bytes([h[4], h[5]]);
    let kind = match (v6, icmp_type) {
        (false, 8) | (true, 128) => IcmpKind::EchoRequest { id },
        (false, 0) | (true, 129) => IcmpKind::EchoReply { id },
        // v4: unreachable, time exceeded, parameter problem (source quench is obsolete);
        // v6: unreachable, packet too big, time exceeded, parameter problem.
        (false, 3 | 11 | 12) | (true, 1..=4) => match embedded(&net.l4[8..]) {
            Some(e) => IcmpKind::Error(e),
            None => return Err(Reason::Truncated),
        },
        _ => IcmpKind::Other,
    };
    Ok(Icmp {
        v6,
        icmp_type,
        code,
        kind,
    })
}

/// Reads the IP header and first 8 transport bytes an ICMP error quotes.
/// Quoted packets are usually cut short, so lengths are not checked.
fn embedded(bytes: &[u8]) -> Option<Embedded> {
    let (src, dst, protocol, rest) = match bytes.first()? >> 4 {
        4 => {
            let h = Ipv4HeaderSlice::from_slice(bytes).ok()?;
            let rest = &bytes[h.slice().len()..];
            (
                IpAddr::V4(h.source_addr()),
                IpAddr::V4(h.destination_addr()),
                h.protocol().0,
                rest,
            )
        }
        6 => {
            let h = Ipv6HeaderSlice::from_slice(bytes).ok()?;
            let (_, next, rest, _) =
                Ipv6ExtensionsSlice::from_slice_lax(h.next_header(), &bytes[40..]);
            (
                IpAddr::V6(h.source_addr()),
                IpAddr::V6(h.destination_addr()),
                next.0,
                rest,
            )
        }
        _ => return None,
    };
    let (src_port, dst_port) = match protocol {
        PROTO_TCP | PROTO_UDP => {
            let p = rest.get(..4)?;
            (
                u16::from_be_bytes([p[0], p[1]]),
                u16::from_be_bytes([p[2], p[3]]),
            )
        }
        PROTO_ICMP | PROTO_ICMPV6 => {
            let p = rest.get(..6)?;
            let is_echo = matches!(p[0], 8 | 0 | 128 | 129);
            if !is_echo {
                return None;
            }
            let id = u16::from_be_bytes([p[4], p[5]]);
            (id, id)
        }
        _ => (0, 0),
    };
    Some(Embedded {
        src,
        dst,
        protocol,
        src_port,
        dst_port,
    })
}

#[cfg(test)]
mod tests;
