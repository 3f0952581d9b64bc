//! Crafting packets (IP header first) for tests, benchmarks, capture
//! generators and the network lab. Built with etherparse, checksums correct.

use super::TcpFlags;
use etherparse::{IpHeaders, PacketBuilder, PacketBuilderStep, TcpHeader, TcpOptionElement};
use std::net::{IpAddr, SocketAddr};

fn ip(src: IpAddr, dst: IpAddr) -> PacketBuilderStep<IpHeaders> {
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => PacketBuilder::ipv4(s.octets(), d.octets(), 64),
        (IpAddr::V6(s), IpAddr::V6(d)) => PacketBuilder::ipv6(s.octets(), d.octets(), 64),
        _ => panic!("mixed address families: {src} -> {dst}"),
    }
}

/// A TCP segment under construction. Defaults: ACK flag, window 65535.
#[derive(Clone, Debug)]
pub struct Tcp {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub flags: u8,
    pub seq: u32,
    pub ack: u32,
    pub window: u16,
    pub payload: Vec<u8>,
    pub window_scale: Option<u8>,
    pub mss: Option<u16>,
    pub sack_permitted: bool,
}

pub fn tcp(src: SocketAddr, dst: SocketAddr) -> Tcp {
    Tcp {
        src,
        dst,
        flags: TcpFlags::ACK,
        seq: 0,
        ack: 0,
        window: 65535,
        payload: Vec::new(),
        window_scale: None,
        mss: None,
        sack_permitted: false,
    }
}

impl Tcp {
    pub fn flags(mut self, flags: u8) -> Self {
        self.flags = flags;
        self
    }
    pub fn seq(mut self, seq: u32) -> Self {
        self.seq = seq;
        self
    }
    pub fn ack(mut self, ack: u32) -> Self {
        self.ack = ack;
        self
    }
    pub fn window(mut self, window: u16) -> Self {
        self.window = window;
        self
    }
    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }
    pub fn window_scale(mut self, shift: u8) -> Self {
        self.window_scale = Some(shift);
        self
    }
    pub fn mss(mut self, mss: u16) -> Self {
        self.mss = Some(mss);
        self
    }
    pub fn sack_permitted(mut self) -> Self {
        self.sack_permitted = true;
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let mut h = TcpHeader::new(self.src.port(), self.dst.port(), self.seq, self.window);
        let f = TcpFlags(self.flags);
        h.fin = f.fin();
        h.syn = f.syn();
        h.rst = f.rst();
        h.psh = f.has(TcpFlags::PSH);
        h.ack = f.ack();
        h.urg = f.has(TcpFlags::URG);
        h.ece = f.has(TcpFlags::ECE);
        h.cwr = f.has(TcpFlags::CWR);
        h.acknowledgment_number = self.ack;
        let mut options = Vec::new();
        if let Some(m) = self.mss {
            options.push(TcpOptionElement::MaximumSegmentSize(m));
        }
        if self.sack_permitted {
            options.push(TcpOptionElement::SelectiveAcknowledgementPermitted);
        }
        if let Some(s) = self.window_scale {
            options.push(TcpOptionElement::Noop);
            options.push(TcpOptionElement::WindowScale(s));
        }
        h.set_options(&options).expect("options fit in 40 bytes");
        let mut out = Vec::with_capacity(60 + h.header_len() + self.payload.len());
        ip(self.src.ip(), self.dst.ip())
            .tcp_header(h)
            .write(&mut out, &self.payload)
            .expect("writing to a Vec cannot fail");
        out
    }
}

pub fn udp(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    ip(src.ip(), dst.ip())
        .udp(src.port(), dst.port())
        .write(&mut out, payload)
        .expect("writing to a Vec cannot fail");
    out
}

/// An ICMP (or ICMPv6) echo request or reply.
pub fn icmp_echo(src: IpAddr, dst: IpAddr, id: u16, seq: u16, request: bool) -> Vec<u8> {
    let mut out = Vec::new();
    let b = ip(src, dst);
    let payload = b"conntrackd-echo";
    match (src.is_ipv4(), request) {
        (true, true) => b.icmpv4_echo_request(id, seq).write(&mut out, payload),
        (true, false) => b.icmpv4_echo_reply(id, seq).write(&mut out, payload),
        (false, true) => b.icmpv6_echo_request(id, seq).write(&mut out, payload),
        (false, false) => b.icmpv6_echo_reply(id, seq).write(&mut out, payload),
    }
    .expect("writing to a Vec cannot fail");
    out
}

/// A destination-unreachable (port unreachable) error from `src` to `dst`
/// quoting the start of `offending` (an IP packet).
pub fn icmp_unreachable(src: IpAddr, dst: IpAddr, offending: &[u8]) -> Vec<u8> {
    let quoted = &offending[..offending.len().min(if src.is_ipv4() { 28 } else { 48 })];
    let mut out = Vec::new();
    let b = ip(src, dst);
    if src.is_ipv4() {
        b.icmpv4_raw(3, 3, [0; 4]).write(&mut out, quoted)
    } else {
        b.icmpv6_raw(1, 4, [0; 4]).write(&mut out, quoted)
    }
    .expect("writing to a Vec cannot fail");
    out
}

/// A raw IP packet of another protocol (e.g. 47, GRE) with a payload.
pub fn other(src: IpAddr, dst: IpAddr, protocol: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut udp_like = Vec::new();
    // Build a UDP packet and patch the protocol: the IP layer is what matters.
    ip(src, dst)
        .udp(0, 0)
        .write(&mut udp_like, payload)
        .expect("writing to a Vec cannot fail");
    out.extend_from_slice(&udp_like);
    if src.is_ipv4() {
        out[9] = protocol;
        out[10] = 0;
        out[11] = 0;
        let mut sum: u32 = 0;
        for c in out[..20].chunks(2) {
            sum += u16::from_be_bytes([c[0], c[1]]) as u32;
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        let csum = !(sum as u16);
        out[10..12].copy_from_slice(&csum.to_be_bytes());
    } else {
        out[6] = protocol;
    }
    out
}
