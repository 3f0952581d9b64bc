//! What replay shows of a packet: addresses, ports, flags. Read leniently, so
//! that a packet the engine drops as malformed (bad checksum, bad flags, cut
//! short) still shows who sent it.

use crate::wire::{self, Checksums, Embedded, Framing, IcmpKind, TcpFlags, Transport};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpView {
    pub flags: TcpFlags,
    pub seq: u32,
    pub ack: u32,
    /// Payload length, when the headers could be parsed.
    pub len: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmpView {
    pub v6: bool,
    pub icmp_type: u8,
    pub code: u8,
    /// Echo identifier.
    pub id: Option<u16>,
    /// The flow an ICMP error quotes.
    pub quoted: Option<Embedded>,
}

/// The facts shown for one IP packet; fields are `None` where the bytes did
/// not say.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketView {
    pub src: Option<IpAddr>,
    pub dst: Option<IpAddr>,
    pub protocol: Option<u8>,
    pub ports: Option<(u16, u16)>,
    pub tcp: Option<TcpView>,
    pub icmp: Option<IcmpView>,
}

impl PacketView {
    /// Reads `ip` (bytes from the IP header on) for display.
    pub fn of(ip: &[u8], wire_len: Option<u32>) -> PacketView {
        // Checksums are the engine's business; here they must not hide the headers.
        let framing = Framing {
            wire_len,
            checksums: Checksums::NotComputed,
        };
        match wire::parse(ip, framing) {
            Ok(p) => {
                let mut v = PacketView {
                    src: Some(p.src),
                    dst: Some(p.dst),
                    protocol: Some(p.protocol),
                    ports: p.ports(),
                    ..PacketView::default()
                };
                match p.transport {
                    Transport::Tcp(t) => {
                        v.tcp = Some(TcpView {
                            flags: t.flags,
                            seq: t.seq.0,
                            ack: t.ack.0,
                            len: Some(t.payload_len),
                        })
                    }
                    Transport::Icmp(i) => {
                        let (id, quoted) = match i.kind {
                            IcmpKind::EchoRequest { id } | IcmpKind::EchoReply { id } => {
                                (Some(id), None)
                            }
                            IcmpKind::Error(e) => (None, Some(e)),
                            IcmpKind::Other => (None, None),
                        };
                        v.icmp = Some(IcmpView {
                            v6: i.v6,
                            icmp_type: i.icmp_type,
                            code: i.code,
                            id,
                            quoted,
                        });
                    }
                    Transport::Udp { .. } | Transport::Other => {}
                }
                v
            }
            Err(_) => PacketView::lax(ip),
        }
    }

    /// Whatever the first bytes say, without validation.
    fn lax(b: &[u8]) -> PacketView {
        let h = wire::lax::headers(b);
        PacketView {
            src: h.src,
            dst: h.dst,
            protocol: h.protocol,
            ports: h.ports,
            tcp: h.tcp.map(|t| TcpView {
                flags: t.flags,
                seq: t.seq,
                ack: t.ack,
                len: None,
            }),
            icmp: match (h.icmp_type, h.icmp_code) {
                (Some(icmp_type), Some(code)) => Some(IcmpView {
                    v6: h.protocol == Some(wire::PROTO_ICMPV6),
                    icmp_type,
                    code,
                    id: None,
                    quoted: None,
                }),
                _ => None,
            },
        }
    }

    /// `tcp`, `udp`, `icmp`, `icmpv6` or the protocol number.
    pub fn proto_name(&self) -> Option<String> {
        self.protocol.map(|p| wire::protocol_name(p).into_owned())
    }

    /// `ICMP echo-request id=7`, `ICMPv6 unreachable code=4 quoting ...`.
    fn icmp_text(&self, i: &IcmpView) -> String {
        let name = icmp_type_name(i.v6, i.icmp_type);
        let mut s = format!("{} ", if i.v6 { "ICMPv6" } else { "ICMP" });
        match name {
            Some(n) => s.push_str(n),
            None => s.push_str(&format!("type={}", i.icmp_type)),
        }
        if i.code != 0 || i.quoted.is_some() {
            s.push_str(&format!(" code={}", i.code));
        }
        if let Some(id) = i.id {
            s.push_str(&format!(" id={id}"));
        }
        if let Some(q) = i.quoted {
            let quoted = if matches!(q.protocol, wire::PROTO_TCP | wire::PROTO_UDP) {
                format!(
                    "{} > {}",
                    SocketAddr::new(q.src, q.src_port),
                    SocketAddr::new(q.dst, q.dst_port)
                )
            } else {
                format!("{} > {}", q.src, q.dst)
            };
            s.push_str(&format!(
                " quoting {} {quoted}",
                wire::protocol_name(q.protocol).to_uppercase()
            ));
        }
        s
    }
}

pub fn icmp_type_name(v6: bool, t: u8) -> Option<&'static str> {
    Some(match (v6, t) {
        (false, 0) | (true, 129) => "echo-reply",
        (false, 8) | (true, 128) => "echo-request",
        (false, 3) | (true, 1) => "unreachable",
        (false, 11) | (true, 3) => "time-exceeded",
        (false, 12) | (true, 4) => "parameter-problem",
        (false, 5) => "redirect",
        (false, 13) => "timestamp-request",
        (false, 14) => "timestamp-reply",
        (true, 2) => "packet-too-big",
        (true, 133) => "router-solicitation",
        (true, 134) => "router-advertisement",
        (true, 135) => "neighbor-solicitation",
        (true, 136) => "neighbor-advertisement",
        (true, 137) => "redirect",
        _ => return None,
    })
}

impl fmt::Display for PacketView {
    /// `10.0.0.1:40000 > 192.0.2.1:80 TCP [S] seq=1 ack=0 len=0`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (Some(src), Some(dst)) = (self.src, self.dst) else {
            return f.write_str("(no IP header)");
        };
        match self.ports {
            Some((sp, dp)) => write!(
                f,
                "{} > {}",
                SocketAddr::new(src, sp),
                SocketAddr::new(dst, dp)
            )?,
            None => write!(f, "{src} > {dst}")?,
        }
        if let Some(i) = &self.icmp {
            return write!(f, " {}", self.icmp_text(i));
        }
        match self.protocol {
            Some(p @ (wire::PROTO_TCP | wire::PROTO_UDP)) => {
                write!(f, " {}", wire::protocol_name(p).to_uppercase())?
            }
            Some(p) => write!(f, " proto {}", wire::protocol_name(p))?,
            None => {}
        }
        if let Some(t) = &self.tcp {
            write!(f, " [{}] seq={} ack={}", t.flags, t.seq, t.ack)?;
            if let Some(len) = t.len {
                write!(f, " len={len}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::build;

    #[test]
    fn shows_tcp_even_with_a_bad_checksum_or_bad_flags() {
        let mut p = build::tcp(
            "10.0.0.1:40000".parse().unwrap(),
            "192.0.2.1:80".parse().unwrap(),
        )
        .flags(TcpFlags::SYN | TcpFlags::FIN)
        .seq(5)
        .build();
        let at = p.len() - 4; // the TCP checksum (no options, no payload)
        p[at] ^= 0xff;
        assert_eq!(
            PacketView::of(&p, None).to_string(),
            "10.0.0.1:40000 > 192.0.2.1:80 TCP [SF] seq=5 ack=0"
        );
    }

    #[test]
    fn shows_what_it_can_of_garbage() {
        assert_eq!(
            PacketView::of(&[0x45, 0, 0], None).to_string(),
            "(no IP header)"
        );
        assert_eq!(PacketView::of(&[], None), PacketView::default());
    }
}
