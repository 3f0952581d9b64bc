//! A small capture generator: IP packets from `conntrackd::wire::build`
//! (etherparse), wrapped in a link layer (Ethernet, 802.1Q, QinQ, raw IP,
//! Linux cooked SLL/SLL2, BSD loopback) and written as pcap or pcapng with
//! pcap-file. Output is byte-for-byte deterministic.
#![allow(dead_code)]

use conntrackd::wire::build;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketBlock;
use pcap_file::pcapng::blocks::interface_description::{
    InterfaceDescriptionBlock, InterfaceDescriptionOption,
};
use pcap_file::pcapng::PcapNgWriter;
use pcap_file::{DataLink, Endianness, TsResolution};
use std::borrow::Cow;
use std::net::SocketAddr;
use std::time::Duration;

/// Every generated capture starts at this Unix time (2023-11-14 22:13:20 UTC).
pub const T0_SECS: u64 = 1_700_000_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    Ethernet,
    /// One 802.1Q tag with this VLAN id.
    Vlan(u16),
    /// 802.1ad outer tag, 802.1Q inner tag.
    QinQ(u16, u16),
    /// LINKTYPE_RAW (101).
    Raw,
    /// LINKTYPE_IPV4 (228): IPv4 packets only.
    Ipv4,
    /// LINKTYPE_IPV6 (229): IPv6 packets only.
    Ipv6,
    Sll,
    Sll2,
    /// BSD loopback, little-endian family.
    Null,
    /// A link type replay does not support, given by number (e.g. 105, 802.11).
    Other(u32),
}

impl Link {
    pub fn datalink(self) -> DataLink {
        match self {
            Link::Ethernet | Link::Vlan(_) | Link::QinQ(..) => DataLink::ETHERNET,
            Link::Raw => DataLink::RAW,
            Link::Ipv4 => DataLink::IPV4,
            Link::Ipv6 => DataLink::IPV6,
            Link::Sll => DataLink::LINUX_SLL,
            Link::Sll2 => DataLink::LINUX_SLL2,
            Link::Null => DataLink::NULL,
            Link::Other(n) => DataLink::from(n),
        }
    }

    /// The frame carrying `payload` of `ethertype`.
    pub fn wrap(self, ethertype: u16, payload: &[u8]) -> Vec<u8> {
        let mut f = Vec::with_capacity(payload.len() + 24);
        let eth_addrs = |f: &mut Vec<u8>| {
            f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
            f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
        };
        match self {
            Link::Ethernet => {
                eth_addrs(&mut f);
                f.extend_from_slice(&ethertype.to_be_bytes());
            }
            Link::Vlan(id) => {
                eth_addrs(&mut f);
                f.extend_from_slice(&0x8100u16.to_be_bytes());
                f.extend_from_slice(&id.to_be_bytes());
                f.extend_from_slice(&ethertype.to_be_bytes());
            }
            Link::QinQ(outer, inner) => {
                eth_addrs(&mut f);
                f.extend_from_slice(&0x88a8u16.to_be_bytes());
                f.extend_from_slice(&outer.to_be_bytes());
                f.extend_from_slice(&0x8100u16.to_be_bytes());
                f.extend_from_slice(&inner.to_be_bytes());
                f.extend_from_slice(&ethertype.to_be_bytes());
            }
            Link::Raw | Link::Ipv4 | Link::Ipv6 | Link::Other(_) => {}
            Link::Sll => {
                f.extend_from_slice(&0u16.to_be_bytes()); // packet type: to us
                f.extend_from_slice(&1u16.to_be_bytes()); // ARPHRD_ETHER
                f.extend_from_slice(&6u16.to_be_bytes());
                f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 0, 0]);
                f.extend_from_slice(&ethertype.to_be_bytes());
            }
            Link::Sll2 => {
                f.extend_from_slice(&ethertype.to_be_bytes());
                f.extend_from_slice(&[0, 0]);
                f.extend_from_slice(&2u32.to_be_bytes()); // ifindex
                f.extend_from_slice(&1u16.to_be_bytes()); // ARPHRD_ETHER
                f.push(0); // packet type
                f.push(6);
                f.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 0, 0]);
            }
            Link::Null => {
                let family: u32 = if ethertype == 0x86dd { 30 } else { 2 };
                f.extend_from_slice(&family.to_le_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Classic pcap, little-endian; microsecond or nanosecond timestamps.
    Pcap { nanos: bool },
    /// pcapng; `tsresol`: the interface's if_tsresol (None: the default, microseconds).
    PcapNg { tsresol: Option<u8> },
}

struct Record {
    ts_ns: u64,
    frame: Vec<u8>,
    orig_len: u32,
    /// The IP packet, for records made with `ip`.
    ip: Option<Vec<u8>>,
}

/// A capture being built.
pub struct CaptureBuilder {
    pub link: Link,
    pub format: Format,
    /// Bytes kept of each frame (the capture's snap length).
    pub snaplen: u32,
    records: Vec<Record>,
}

/// Nanoseconds since the epoch of `ms` milliseconds after `T0_SECS`.
pub fn at_ms(ms: u64) -> u64 {
    T0_SECS * 1_000_000_000 + ms * 1_000_000
}

impl CaptureBuilder {
    pub fn new(link: Link, format: Format) -> CaptureBuilder {
        CaptureBuilder {
            link,
            format,
            snaplen: 262_144,
            records: Vec::new(),
        }
    }

    pub fn snaplen(mut self, n: u32) -> CaptureBuilder {
        self.snaplen = n;
        self
    }

    /// A raw frame (link layer included).
    pub fn frame(&mut self, ts_ns: u64, frame: Vec<u8>) {
        let orig_len = frame.len() as u32;
        let mut frame = frame;
        frame.truncate(self.snaplen as usize);
        self.records.push(Record {
            ts_ns,
            frame,
            orig_len,
            ip: None,
        });
    }

    /// An IP packet at `ms` milliseconds after T0, wrapped in the link layer.
    pub fn ip(&mut self, ms: u64, ip: Vec<u8>) {
        self.ip_ns(at_ms(ms), ip);
    }

    pub fn ip_ns(&mut self, ts_ns: u64, ip: Vec<u8>) {
        let ethertype = if ip.first().map(|b| b >> 4) == Some(6) {
            0x86dd
        } else {
            0x0800
        };
        let frame = self.link.wrap(ethertype, &ip);
        self.frame(ts_ns, frame);
        self.records.last_mut().unwrap().ip = Some(ip);
    }

    /// The same IP packets at the same times in another link layer and
    /// format (other frames are left out).
    pub fn relink(&self, link: Link, format: Format) -> CaptureBuilder {
        let mut b = CaptureBuilder::new(link, format).snaplen(self.snaplen);
        for r in &self.records {
            if let Some(ip) = &r.ip {
                b.ip_ns(r.ts_ns, ip.clone());
            }
        }
        b
    }

    /// An ARP request (who has 10.0.0.1? tell 10.0.0.2).
    pub fn arp(&mut self, ms: u64) {
        let mut arp = vec![0, 1, 0x08, 0x00, 6, 4, 0, 1];
        arp.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01, 10, 0, 0, 2]);
        arp.extend_from_slice(&[0, 0, 0, 0, 0, 0, 10, 0, 0, 1]);
        let frame = self.link.wrap(0x0806, &arp);
        self.frame(at_ms(ms), frame);
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn bytes(&self) -> Vec<u8> {
        match self.format {
            Format::Pcap { nanos } => {
                let header = PcapHeader {
                    version_major: 2,
                    version_minor: 4,
                    ts_correction: 0,
                    ts_accuracy: 0,
                    snaplen: self.snaplen,
                    datalink: self.link.datalink(),
                    ts_resolution: if nanos {
                        TsResolution::NanoSecond
                    } else {
                        TsResolution::MicroSecond
                    },
                    endianness: Endianness::Little,
                };
                let mut w = PcapWriter::with_header(Vec::new(), header).unwrap();
                for r in &self.records {
                    w.write_packet(&PcapPacket::new(
                        Duration::from_nanos(r.ts_ns),
                        r.orig_len,
                        &r.frame,
                    ))
                    .unwrap();
                }
                w.into_writer()
            }
            Format::PcapNg { tsresol } => {
                let mut w = PcapNgWriter::with_endianness(Vec::new(), Endianness::Little).unwrap();
                let mut options = Vec::new();
                if let Some(r) = tsresol {
                    options.push(InterfaceDescriptionOption::IfTsResol(r));
                }
                w.write_pcapng_block(InterfaceDescriptionBlock {
                    linktype: self.link.datalink(),
                    snaplen: self.snaplen,
                    options,
                })
                .unwrap();
                let res = tsresol.unwrap_or(6);
                assert!(res <= 9, "decimal resolutions up to nanoseconds only");
                let per_unit = 10u64.pow(9 - res as u32);
                for r in &self.records {
                    w.write_pcapng_block(EnhancedPacketBlock {
                        interface_id: 0,
                        // pcap-file writes the Duration's nanoseconds as raw units.
                        timestamp: Duration::from_nanos(r.ts_ns / per_unit),
                        original_len: r.orig_len,
                        data: Cow::Borrowed(&r.frame),
                        options: vec![],
                    })
                    .unwrap();
                }
                w.into_inner()
            }
        }
    }
}

/// One TCP conversation seen from the gateway, tracking both sides' next
/// sequence numbers so that segments are in order unless asked otherwise.
pub struct Conv {
    pub c: SocketAddr,
    pub s: SocketAddr,
    pub c_nxt: u32,
    pub s_nxt: u32,
}

pub const SYN: u8 = 0x02;
pub const FIN: u8 = 0x01;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;
pub const URG: u8 = 0x20;

fn seq_len(flags: u8, payload: &[u8]) -> u32 {
    payload.len() as u32 + (flags & SYN != 0) as u32 + (flags & FIN != 0) as u32
}

impl Conv {
    /// Client `c` and server `s` with their initial sequence numbers.
    pub fn new(c: &str, s: &str, c_isn: u32, s_isn: u32) -> Conv {
        Conv {
            c: c.parse().unwrap(),
            s: s.parse().unwrap(),
            c_nxt: c_isn,
            s_nxt: s_isn,
        }
    }

    /// A segment with explicit numbers; nothing advances.
    pub fn raw(&self, from_client: bool, flags: u8, seq: u32, ack: u32, payload: &[u8]) -> Vec<u8> {
        let (src, dst) = if from_client {
            (self.c, self.s)
        } else {
            (self.s, self.c)
        };
        build::tcp(src, dst)
            .flags(flags)
            .seq(seq)
            .ack(ack)
            .payload(payload)
            .build()
    }

    /// From the client, in order: seq = next, ack = server's next (with ACK).
    pub fn c(&mut self, flags: u8, payload: &[u8]) -> Vec<u8> {
        let ack = if flags & ACK != 0 { self.s_nxt } else { 0 };
        let p = self.raw(true, flags, self.c_nxt, ack, payload);
        self.c_nxt = self.c_nxt.wrapping_add(seq_len(flags, payload));
        p
    }

    /// From the server, in order.
    pub fn s(&mut self, flags: u8, payload: &[u8]) -> Vec<u8> {
        let ack = if flags & ACK != 0 { self.c_nxt } else { 0 };
        let p = self.raw(false, flags, self.s_nxt, ack, payload);
        self.s_nxt = self.s_nxt.wrapping_add(seq_len(flags, payload));
        p
    }
}

/// Where the transport header of `ip` starts and its protocol (packets as
/// `build` makes them: no IPv6 extension headers).
fn transport(ip: &[u8]) -> (usize, u8) {
    if ip[0] >> 4 == 4 {
        ((ip[0] & 0x0f) as usize * 4, ip[9])
    } else {
        (40, ip[6])
    }
}

/// Offset of the TCP or UDP checksum field in `ip`.
fn checksum_at(ip: &[u8]) -> usize {
    let (l4, protocol) = transport(ip);
    match protocol {
        6 => l4 + 16,
        17 => l4 + 6,
        p => panic!("protocol {p} has no checksum offload"),
    }
}

/// The TCP or UDP checksum field of `ip`.
pub fn l4_checksum(ip: &[u8]) -> u16 {
    let at = checksum_at(ip);
    u16::from_be_bytes([ip[at], ip[at + 1]])
}

/// Sets the TCP or UDP checksum field of `ip`.
pub fn set_l4_checksum(ip: &mut [u8], value: u16) {
    let at = checksum_at(ip);
    ip[at..at + 2].copy_from_slice(&value.to_be_bytes());
}

/// The folded pseudo-header sum of `ip` (RFC 793 3.1, RFC 8200 8.1:
/// addresses, protocol, transport length), not complemented.
pub fn pseudo_header_sum(ip: &[u8]) -> u16 {
    let (l4, protocol) = transport(ip);
    let len = ip.len() - l4;
    let mut words: Vec<u8> = Vec::new();
    if ip[0] >> 4 == 4 {
        words.extend_from_slice(&ip[12..20]);
        words.extend_from_slice(&[0, protocol]);
        words.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        words.extend_from_slice(&ip[8..40]);
        words.extend_from_slice(&(len as u32).to_be_bytes());
        words.extend_from_slice(&[0, 0, 0, protocol]);
    }
    let mut sum: u32 = words
        .chunks(2)
        .map(|w| u16::from_be_bytes([w[0], w[1]]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

/// `ip` as a capture on its sending host shows it when the NIC computes
/// checksums: the TCP/UDP checksum field holds only the pseudo-header sum,
/// which Linux stores for a CHECKSUM_PARTIAL packet
/// (`th->check = ~tcp_v4_check(len, saddr, daddr, 0)`) for the NIC to finish.
pub fn offloaded(mut ip: Vec<u8>) -> Vec<u8> {
    let sum = pseudo_header_sum(&ip);
    set_l4_checksum(&mut ip, sum);
    ip
}
