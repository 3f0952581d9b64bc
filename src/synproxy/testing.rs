//! Test helpers: packets built and checked with etherparse, independently
//! of the proxy's own reading and writing.

use etherparse::{
    NetSlice, PacketBuilder, SlicedPacket, TcpHeader, TcpOptionElement, TransportSlice,
};
use std::net::{IpAddr, SocketAddr};

pub fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A TCP packet, IP header first, checksums correct (etherparse's).
#[allow(clippy::too_many_arguments)]
pub fn tcp(
    src: SocketAddr,
    dst: SocketAddr,
    flags: u8,
    seq: u32,
    ack: u32,
    window: u16,
    options: &[TcpOptionElement],
    payload: &[u8],
) -> Vec<u8> {
    let mut h = TcpHeader::new(src.port(), dst.port(), seq, window);
    h.fin = flags & 0x01 != 0;
    h.syn = flags & 0x02 != 0;
    h.rst = flags & 0x04 != 0;
    h.psh = flags & 0x08 != 0;
    h.ack = flags & 0x10 != 0;
    h.urg = flags & 0x20 != 0;
    h.ece = flags & 0x40 != 0;
    h.cwr = flags & 0x80 != 0;
    h.acknowledgment_number = ack;
    h.set_options(options).expect("options fit");
    let builder = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed families"),
    };
    let mut out = Vec::new();
    builder.tcp_header(h).write(&mut out, payload).unwrap();
    out
}

/// The TCP checksum etherparse computes for `packet` (the field ignored),
/// and the one in the field; for IPv4 also the header's, computed and
/// stored.
pub struct Checksums {
    pub tcp_computed: u16,
    pub tcp_stored: u16,
    pub ip_computed: Option<u16>,
    pub ip_stored: Option<u16>,
}

impl Checksums {
    pub fn correct(&self) -> bool {
        self.tcp_computed == self.tcp_stored && self.ip_computed == self.ip_stored
    }
}

pub fn checksums(packet: &[u8]) -> Checksums {
    let sliced = SlicedPacket::from_ip(packet).expect("etherparse reads it");
    let Some(TransportSlice::Tcp(tcp)) = sliced.transport else {
        panic!("not TCP");
    };
    match sliced.net {
        Some(NetSlice::Ipv4(ip)) => {
            let h = ip.header();
            Checksums {
                tcp_computed: tcp.calc_checksum_ipv4(h.source(), h.destination()).unwrap(),
                tcp_stored: tcp.checksum(),
                ip_computed: Some(h.to_header().calc_header_checksum()),
                ip_stored: Some(h.header_checksum()),
            }
        }
        Some(NetSlice::Ipv6(ip)) => {
            let h = ip.header();
            Checksums {
                tcp_computed: tcp.calc_checksum_ipv6(h.source(), h.destination()).unwrap(),
                tcp_stored: tcp.checksum(),
                ip_computed: None,
                ip_stored: None,
            }
        }
        None => panic!("no IP layer"),
    }
}
