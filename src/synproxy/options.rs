//! The TCP options of a handshake, read and written, and the four packets
//! the proxy sends to open a connection.
//!
//! 1. To the client, for its SYN: the cookie SYN+ACK
//!    ([`Segment::cookie_syn_ack`]).
//! 2. To the server, once the client's ACK brought a valid cookie: a SYN
//!    with the client's ISN and options ([`Segment::server_syn`]).
//! 3. To the server, for its SYN+ACK: the ACK that completes its handshake
//!    ([`Segment::server_ack`]).
//! 4. To the client at the same time: a window update with the server's
//!    window ([`Segment::client_window_update`]); the cookie SYN+ACK offered
//!    window 0, so the client sends no data before the server is there.
//!
//! Packets are written whole (IP header first, checksums correct) into a
//! caller's buffer of [`SEGMENT_MAX`] bytes: no allocation.

use super::cookie::{decode_timestamp, encode_timestamp, CookieData, TimestampOptions, Tuple};
use super::learned::LearnedOptions;
use super::packet::{
    addresses, fold, locate_tcp, pseudo_header_sum, read_u16, read_u32, sum_words, PacketError,
    IPV4_HEADER, IPV6_HEADER, PROTO_TCP, TCP_HEADER,
};
use super::translate::Translation;
use crate::time::Timestamp;
use crate::wire::{SeqNum, TcpFlags};
use std::net::IpAddr;

/// The timestamp option's two values (RFC 7323 3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timestamps {
    /// TSval: the sender's clock.
    pub value: u32,
    /// TSecr: the TSval it last received.
    pub echo: u32,
}

/// The options of a SYN or SYN+ACK that the proxy reads, remembers or sends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TcpOptions {
    pub mss: Option<u16>,
    /// The shift (0..=14; larger values are taken as 14, RFC 7323 2.3).
    pub window_scale: Option<u8>,
    pub sack_permitted: bool,
    pub timestamps: Option<Timestamps>,
}

pub(crate) const OPT_END: u8 = 0;
pub(crate) const OPT_NOP: u8 = 1;
pub(crate) const OPT_MSS: u8 = 2;
pub(crate) const OPT_WSCALE: u8 = 3;
pub(crate) const OPT_SACK_PERMITTED: u8 = 4;
pub(crate) const OPT_SACK: u8 = 5;
pub(crate) const OPT_TIMESTAMP: u8 = 8;
const MAX_WINDOW_SCALE: u8 = 14;

/// The option at or after offset `at` of `options` (the bytes after a TCP
/// header's fixed 20), as Linux's `tcp_parse_options` delimits them: END
/// stops, NOPs are skipped, a length below 2 or past the end stops (the
/// rest cannot be delimited). Returns (kind, offset of the kind byte,
/// length); the next option starts at offset + length. Options of the
/// wrong length for their kind are for the caller to skip.
#[inline]
pub(crate) fn next_option(options: &[u8], mut at: usize) -> Option<(u8, usize, usize)> {
    loop {
        let &kind = options.get(at)?;
        match kind {
            OPT_END => return None,
            OPT_NOP => at += 1,
            _ => {
                let len = *options.get(at + 1)? as usize;
                if len < 2 || at + len > options.len() {
                    return None;
                }
                return Some((kind, at, len));
            }
        }
    }
}

/// The options in `options` (the bytes after a TCP header's fixed 20).
/// Hand-written: every SYN of a flood is read, and never panics on any
/// bytes (the fuzzing property of the tests).
pub fn parse_options(options: &[u8]) -> TcpOptions {
    let mut o = TcpOptions::default();
    let mut next = 0;
    while let Some((kind, at, len)) = next_option(options, next) {
        next = at + len;
        let v = &options[at + 2..at + len];
        match (kind, len) {
            (OPT_MSS, 4) => o.mss = Some(read_u16(v, 0)),
            (OPT_WSCALE, 3) => o.window_scale = Some(v[0].min(MAX_WINDOW_SCALE)),
            (OPT_SACK_PERMITTED, 2) => o.sack_permitted = true,
            (OPT_TIMESTAMP, 10) => {
                o.timestamps = Some(Timestamps {
                    value: read_u32(v, 0),
                    echo: read_u32(v, 4),
                })
            }
            _ => {}
        }
    }
    o
}

/// What the proxy reads of a TCP packet. The checksum is not verified here:
/// the engine's parse (`wire::parse`) did before.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentView {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: SeqNum,
    pub ack: SeqNum,
    pub flags: TcpFlags,
    /// The window field as sent (not scaled).
    pub window: u16,
    pub options: TcpOptions,
    /// Payload bytes, from the IP length.
    pub payload_len: u32,
}

impl SegmentView {
    /// The connection as the client's packets name it: this packet's
    /// source is the client.
    pub fn tuple_from_client(&self) -> Tuple {
        Tuple {
            client: self.src,
            client_port: self.src_port,
            server: self.dst,
            server_port: self.dst_port,
        }
    }

    /// A SYN asks for ECN with ECE and CWR (RFC 3168 6.1.1); a SYN+ACK
    /// agrees with ECE alone.
    pub fn ecn_setup(&self) -> bool {
        let f = self.flags;
        match (f.syn(), f.ack()) {
            (true, false) => f.has(TcpFlags::ECE | TcpFlags::CWR),
            (true, true) => f.has(TcpFlags::ECE) && !f.has(TcpFlags::CWR),
            _ => false,
        }
    }
}

/// Reads a TCP packet (IP header first; the TCP header must be whole).
pub fn read_segment(packet: &[u8]) -> Result<SegmentView, PacketError> {
    let at = locate_tcp(packet)?;
    let (src, dst) = addresses(packet, at.v6);
    let t = &packet[at.start..at.start + at.header_len];
    Ok(SegmentView {
        src,
        dst,
        src_port: read_u16(t, 0),
        dst_port: read_u16(t, 2),
        seq: SeqNum(read_u32(t, 4)),
        ack: SeqNum(read_u32(t, 8)),
        flags: TcpFlags(t[13]),
        window: read_u16(t, 14),
        options: parse_options(&t[TCP_HEADER..]),
        payload_len: (at.segment_len - at.header_len) as u32,
    })
}

/// The largest packet the proxy writes: IPv6 header, TCP header, and MSS,
/// SACK-permitted, timestamps and window scale (4 + 12 + 4 bytes).
pub const SEGMENT_MAX: usize = IPV6_HEADER + TCP_HEADER + 20;
/// Hop limit of the proxy's packets, the kernel's default.
const HOP_LIMIT: u8 = 64;

/// Why a packet could not be written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BuildError {
    /// The buffer is smaller than the packet.
    BufferTooSmall,
    /// An IPv4 source with an IPv6 destination, or the reverse.
    MixedFamilies,
}

impl std::fmt::Display for BuildError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BuildError::BufferTooSmall => "buffer too small for the packet",
            BuildError::MixedFamilies => "source and destination of different families",
        })
    }
}

impl std::error::Error for BuildError {}

/// A TCP segment without data, to be written by [`Segment::write`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_port: u16,
    pub dst_port: u16,
    pub seq: SeqNum,
    pub ack: SeqNum,
    pub flags: TcpFlags,
    pub window: u16,
    pub options: TcpOptions,
}

/// Writes `o` at the start of `out` (at least 20 bytes) and returns the
/// length, a multiple of 4, laid out as Linux's `tcp_options_write`: MSS,
/// then SACK-permitted folded into the timestamp's padding, then window
/// scale behind a NOP.
fn write_options(o: &TcpOptions, out: &mut [u8]) -> usize {
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        out[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    if let Some(mss) = o.mss {
        let m = mss.to_be_bytes();
        put(&[OPT_MSS, 4, m[0], m[1]]);
    }
    match (o.timestamps, o.sack_permitted) {
        (Some(ts), sack) => {
            let lead = if sack {
                [OPT_SACK_PERMITTED, 2]
            } else {
                [OPT_NOP, OPT_NOP]
            };
            put(&[lead[0], lead[1], OPT_TIMESTAMP, 10]);
            put(&ts.value.to_be_bytes());
            put(&ts.echo.to_be_bytes());
        }
        (None, true) => put(&[OPT_NOP, OPT_NOP, OPT_SACK_PERMITTED, 2]),
        (None, false) => {}
    }
    if let Some(shift) = o.window_scale {
        put(&[OPT_NOP, OPT_WSCALE, 3, shift.min(MAX_WINDOW_SCALE)]);
    }
    at
}

impl Segment {
    /// Writes the packet, IP header first, into `out` and returns its
    /// length. Checksums (IPv4 header, TCP) are computed in full: four
    /// packets per connection, not a per-packet path.
    pub fn write(&self, out: &mut [u8]) -> Result<usize, BuildError> {
        let ip_len = match (self.src, self.dst) {
            (IpAddr::V4(_), IpAddr::V4(_)) => IPV4_HEADER,
            (IpAddr::V6(_), IpAddr::V6(_)) => IPV6_HEADER,
            _ => return Err(BuildError::MixedFamilies),
        };
        let mut opts = [0u8; 20];
        let opts_len = write_options(&self.options, &mut opts);
        let tcp_len = TCP_HEADER + opts_len;
        let total = ip_len + tcp_len;
        let out = out.get_mut(..total).ok_or(BuildError::BufferTooSmall)?;
        out.fill(0);
        let (ip, tcp) = out.split_at_mut(ip_len);
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                ip[0] = 0x45;
                ip[2..4].copy_from_slice(&(total as u16).to_be_bytes());
                ip[6] = 0x40; // don't fragment, as the kernel's TCP
                ip[8] = HOP_LIMIT;
                ip[9] = PROTO_TCP;
                ip[12..16].copy_from_slice(&s.octets());
                ip[16..20].copy_from_slice(&d.octets());
                let check = !fold(sum_words(0, ip));
                ip[10..12].copy_from_slice(&check.to_be_bytes());
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                ip[0] = 0x60;
                ip[4..6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
                ip[6] = PROTO_TCP;
                ip[7] = HOP_LIMIT;
                ip[8..24].copy_from_slice(&s.octets());
                ip[24..40].copy_from_slice(&d.octets());
            }
            _ => unreachable!("families checked above"),
        }
        tcp[0..2].copy_from_slice(&self.src_port.to_be_bytes());
        tcp[2..4].copy_from_slice(&self.dst_port.to_be_bytes());
        tcp[4..8].copy_from_slice(&self.seq.0.to_be_bytes());
        tcp[8..12].copy_from_slice(&self.ack.0.to_be_bytes());
        tcp[12] = ((tcp_len / 4) as u8) << 4;
        tcp[13] = self.flags.0;
        tcp[14..16].copy_from_slice(&self.window.to_be_bytes());
        tcp[TCP_HEADER..].copy_from_slice(&opts[..opts_len]);
        let check = !fold(sum_words(
            pseudo_header_sum(self.src, self.dst, tcp_len),
            tcp,
        ));
        tcp[16..18].copy_from_slice(&check.to_be_bytes());
        Ok(total)
    }

    /// The cookie SYN+ACK answering the client's `syn` at `now`: from the
    /// server's address and port, sequence number `cookie`, acknowledging
    /// the SYN only (data in it, TCP Fast Open, is not acknowledged: the
    /// client sends it again), window 0 (the window update opens it once
    /// the server is there), with the server's MSS as learned (or
    /// configured).
    ///
    /// Window scale, SACK-permitted and ECN are offered only when the client
    /// asked and sent a timestamp, whose TSval then carries them back
    /// ([`encode_timestamp`]); without one Linux clears them too when it
    /// sends a cookie. SACK and ECN also need the server to do them; the
    /// window scale offered is the server's (0 when it does not scale:
    /// the translation rescales). A timestamp is answered even when the
    /// server is not known to use them: the cookie needs it.
    pub fn cookie_syn_ack(
        syn: &SegmentView,
        cookie: SeqNum,
        server: &LearnedOptions,
        now: Timestamp,
    ) -> Segment {
        let mut flags = TcpFlags::SYN | TcpFlags::ACK;
        let mut options = TcpOptions {
            mss: Some(server.mss),
            ..TcpOptions::default()
        };
        if let Some(client_ts) = syn.options.timestamps {
            let told = syn
                .options
                .window_scale
                .map(|_| server.window_scale.unwrap_or(0));
            let sack = syn.options.sack_permitted && server.sack_permitted;
            let ecn = syn.ecn_setup() && server.ecn;
            if ecn {
                flags |= TcpFlags::ECE;
            }
            let carried = TimestampOptions {
                window_scale: syn.options.window_scale,
                sack_permitted: sack,
                ecn,
                proxy_window_scale: told,
            };
            options.window_scale = told;
            options.sack_permitted = sack;
            options.timestamps = Some(Timestamps {
                value: encode_timestamp(carried, now),
                echo: client_ts.value,
            });
        }
        Segment {
            src: syn.dst,
            dst: syn.src,
            src_port: syn.dst_port,
            dst_port: syn.src_port,
            seq: cookie,
            ack: syn.seq + 1,
            flags: TcpFlags(flags),
            window: 0,
            options,
        }
    }

    /// The SYN to the server once the client's `ack` brought the valid
    /// `cookie`: the client's addresses, ISN and options as the cookie and
    /// the ACK's echo of its timestamp kept them. The window is the ACK's,
    /// unscaled (a SYN's window never is).
    pub fn server_syn(ack: &SegmentView, cookie: &CookieData) -> Segment {
        let client = decode_timestamp(ack.options.timestamps.map(|t| t.echo));
        let mut flags = TcpFlags::SYN;
        if client.ecn {
            flags |= TcpFlags::ECE | TcpFlags::CWR;
        }
        // The client scales the windows it sends when it was told a scale.
        let shift = match (client.window_scale, client.proxy_window_scale) {
            (Some(s), Some(_)) => s as u32,
            _ => 0,
        };
        let window = ((ack.window as u32) << shift).min(0xffff) as u16;
        Segment {
            src: ack.src,
            dst: ack.dst,
            src_port: ack.src_port,
            dst_port: ack.dst_port,
            seq: cookie.client_isn,
            ack: SeqNum(0),
            flags: TcpFlags(flags),
            window,
            options: TcpOptions {
                mss: Some(cookie.mss),
                window_scale: client.proxy_window_scale.and(client.window_scale),
                sack_permitted: client.sack_permitted,
                // The client's clock, so that the server's echoes read right
                // to the client; no echo in a SYN.
                timestamps: ack.options.timestamps.map(|t| Timestamps {
                    value: t.value,
                    echo: 0,
                }),
            },
        }
    }

    /// The ACK completing the server's handshake, for its `syn_ack`, on
    /// behalf of the client whose cookie-bearing ACK was `client_ack`.
    pub fn server_ack(
        client_ack: &SegmentView,
        syn_ack: &SegmentView,
        translation: &Translation,
    ) -> Segment {
        let timestamps = match (client_ack.options.timestamps, syn_ack.options.timestamps) {
            (Some(c), Some(s)) => Some(Timestamps {
                value: c.value,
                echo: s.value,
            }),
            _ => None,
        };
        Segment {
            src: syn_ack.dst,
            dst: syn_ack.src,
            src_port: syn_ack.dst_port,
            dst_port: syn_ack.src_port,
            seq: client_ack.seq,
            ack: syn_ack.seq + 1,
            flags: TcpFlags(TcpFlags::ACK),
            window: translation.window_to_server(client_ack.window),
            options: TcpOptions {
                timestamps,
                ..TcpOptions::default()
            },
        }
    }

    /// The window update to the client: the server's window from its
    /// `syn_ack` (unscaled there) in the scale the client was told, in the
    /// client's sequence space.
    pub fn client_window_update(
        client_ack: &SegmentView,
        syn_ack: &SegmentView,
        translation: &Translation,
    ) -> Segment {
        let timestamps = match (client_ack.options.timestamps, syn_ack.options.timestamps) {
            (Some(c), Some(s)) => Some(Timestamps {
                value: translation.tsval_to_client(s.value),
                echo: c.value,
            }),
            _ => None,
        };
        Segment {
            src: syn_ack.src,
            dst: syn_ack.dst,
            src_port: syn_ack.src_port,
            dst_port: syn_ack.dst_port,
            seq: translation.seq_to_client(syn_ack.seq + 1),
            ack: client_ack.seq,
            flags: TcpFlags(TcpFlags::ACK),
            window: translation.unscaled_window_to_client(syn_ack.window),
            options: TcpOptions {
                timestamps,
                ..TcpOptions::default()
            },
        }
    }
}

#[cfg(test)]
mod tests;
