//! The sequence translation of a proxied connection, for its whole life.
//!
//! The client was told an initial sequence number (the cookie) and a
//! timestamp clock (the cookie's TSval) before the server chose its own.
//! So every packet between them is rewritten:
//!
//! - server → client: `seq += seq_delta`, `TSval += ts_delta`, and the
//!   window rescaled from the server's window scale to the one the client
//!   was told;
//! - client → server: `ack -= seq_delta`, each SACK block's edges
//!   `-= seq_delta` (they acknowledge server data), `TSecr -= ts_delta`, and
//!   the window rescaled from the client's scale to the one the server
//!   applies to it (they differ only when the server turned scaling down).
//!
//! The client's own sequence numbers and TSvals pass unchanged: the server
//! got the client's ISN and clock in the proxy's SYN.
//!
//! Rewriting is in place, with the TCP checksum updated incrementally
//! (RFC 1624), never recomputed: it runs on every packet of the connection.
//! The IP header is not touched. A packet whose checksum was left to
//! offload (the field holds the pseudo-header sum, see
//! `wire::offloaded_checksum`) keeps that field as it is: the pseudo-header
//! does not change, and the NIC sums the rewritten bytes
//! ([`Translation::rewrite`] with [`Checksums::NotComputed`]).
//!
//! What a rescale loses: from a larger scale to a smaller one the window
//! saturates at 0xffff in the smaller unit (the peer sees less window than
//! there is: slower, never wrong); from a smaller to a larger one the low
//! bits are cut (rounded down, so the peer never sends past the real
//! window; a window below one unit reads as 0 until the next update).

use super::cookie::{decode_timestamp, CookieData};
use super::options::{next_option, SegmentView, OPT_SACK, OPT_TIMESTAMP};
use super::packet::{fold, locate_tcp, read_u16, read_u32, PacketError};
use crate::wire::{Checksums, SeqNum};

/// Why a packet was not translated (it is left as it was).
pub type TranslateError = PacketError;

/// The window scale options of a proxied handshake (`None`: not sent).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WindowScales {
    /// In the client's SYN.
    pub client: Option<u8>,
    /// In the proxy's cookie SYN+ACK to the client.
    pub told_client: Option<u8>,
    /// In the server's SYN+ACK (the proxy's SYN to the server carried the
    /// client's).
    pub server: Option<u8>,
}

/// How one proxied connection is translated. Small and `Copy`: it lives in
/// the connection's table entry, and in the state file ([`Self::to_bytes`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Translation {
    /// The cookie minus the server's ISN.
    seq_delta: u32,
    /// The client's view of the timestamp clock minus the server's.
    ts_delta: u32,
    /// The shift the server applies to the windows it sends.
    server_shift: u8,
    /// The shift the client applies to the windows it receives (what it
    /// was told).
    told_shift: u8,
    /// The shift the client applies to the windows it sends.
    client_shift: u8,
    /// The shift the server applies to the client's windows.
    client_shift_at_server: u8,
    /// Handed to the kernel (hand-off mode): its conntrack entry rewrites
    /// the packets (sequence adjustment, and the SYN proxy hooks'
    /// timestamp offset). See [`Self::rewritten_here`].
    kernel: bool,
    /// Handed to the kernel, and a FIN or RST of it has come since.
    kernel_teardown: bool,
    /// The kernel refused it once: it stays here (not in the state file: a
    /// restart tries once more).
    kernel_refused: bool,
}

/// The version byte of [`Translation::to_bytes`].
const FORMAT_VERSION: u8 = 1;
/// The flags of the version byte: translated by the kernel; and its
/// teardown has begun.
const BY_KERNEL: u8 = 0x80;
const KERNEL_TEARDOWN: u8 = 0x40;
/// The length of [`Translation::to_bytes`].
pub const TRANSLATION_BYTES: usize = 13;
const MAX_WINDOW_SCALE: u8 = 14;

impl Translation {
    /// The translation between a client told `cookie_isn` and a server that
    /// chose `server_isn`. `timestamps`: the TSval the client was told and
    /// the one the server's SYN+ACK carried, when both sides use them.
    pub fn new(
        cookie_isn: SeqNum,
        server_isn: SeqNum,
        timestamps: Option<(u32, u32)>,
        scales: WindowScales,
    ) -> Self {
        let cap = |s: u8| s.min(MAX_WINDOW_SCALE);
        // RFC 7323 2.2: scaling is on for a side's connection only when
        // both its SYN and SYN+ACK carried the option. The client's SYN+ACK
        // offers it only when the client's SYN had it.
        let client_side = match (scales.client, scales.told_client) {
            (Some(c), Some(t)) => Some((cap(c), cap(t))),
            _ => None,
        };
        let server_side = match (scales.client, scales.server) {
            (Some(c), Some(s)) => Some((cap(c), cap(s))),
            _ => None,
        };
        let ts_delta = timestamps.map_or(0, |(told, server)| told.wrapping_sub(server));
        Translation {
            seq_delta: cookie_isn.0.wrapping_sub(server_isn.0),
            ts_delta,
            server_shift: server_side.map_or(0, |(_, s)| s),
            told_shift: client_side.map_or(0, |(_, t)| t),
            client_shift: client_side.map_or(0, |(c, _)| c),
            client_shift_at_server: server_side.map_or(0, |(c, _)| c),
            kernel: false,
            kernel_teardown: false,
            kernel_refused: false,
        }
    }

    /// The translation once the server's `syn_ack` answers the SYN sent for
    /// the client's cookie-bearing `client_ack`, whose cookie checked as
    /// `cookie`. What the client was told comes back in the ACK's TSecr
    /// (its echo of the cookie SYN+ACK's TSval).
    pub fn for_handshake(
        cookie: &CookieData,
        client_ack: &SegmentView,
        syn_ack: &SegmentView,
    ) -> Self {
        let echoed = client_ack.options.timestamps.map(|t| t.echo);
        let told = decode_timestamp(echoed);
        let timestamps = match (echoed, syn_ack.options.timestamps) {
            (Some(told_tsval), Some(server)) => Some((told_tsval, server.value)),
            _ => None,
        };
        Translation::new(
            cookie.isn,
            syn_ack.seq,
            timestamps,
            WindowScales {
                client: told.window_scale,
                told_client: told.proxy_window_scale,
                server: syn_ack.options.window_scale,
            },
        )
    }

    /// The translation that undoes this one: applied to a packet this one
    /// translated (in the same direction), it gives the packet back, except
    /// for what a window rescale lost.
    pub fn reversed(&self) -> Self {
        Translation {
            seq_delta: self.seq_delta.wrapping_neg(),
            ts_delta: self.ts_delta.wrapping_neg(),
            server_shift: self.told_shift,
            told_shift: self.server_shift,
            client_shift: self.client_shift_at_server,
            client_shift_at_server: self.client_shift,
            kernel: self.kernel,
            kernel_teardown: self.kernel_teardown,
            kernel_refused: self.kernel_refused,
        }
    }

    /// Whether the kernel's conntrack rewrites this connection's packets
    /// (see [`Self::in_kernel`]).
    pub fn by_kernel(&self) -> bool {
        self.kernel
    }

    /// The same translation, made by the kernel's conntrack from now on
    /// (`true`: handed off) or by conntrackd (`false`).
    pub fn in_kernel(self, kernel: bool) -> Self {
        Translation {
            kernel,
            kernel_teardown: false,
            ..self
        }
    }

    /// Whether conntrackd rewrites a queued packet with these `flags` (the
    /// TCP flags byte), and the translation from then on.
    ///
    /// Once handed to the kernel, only SYN, FIN and RST are queued while the
    /// connection's hand-off mark is set, and everything after its first FIN
    /// or RST (the mark is cleared then): FINs, RSTs and what follows them
    /// have the kernel's new entry, which translates them. A plain packet
    /// that reaches the queue before then has no such entry: it was queued
    /// before the hand-over (with the kernel's old entry) or found invalid
    /// by the kernel (which takes its entry away). Those are rewritten here,
    /// and so is a SYN (the kernel's entry translates none: a SYN on an open
    /// connection is refused anyway). What this cannot tell: a FIN or RST
    /// queued before the hand-over and decided after it goes on
    /// untranslated; the other end ignores it (out of window) and the FIN is
    /// sent again, through the new entry.
    pub fn rewritten_here(self, flags: u8) -> (bool, Self) {
        if !self.kernel {
            return (true, self);
        }
        let teardown = flags & (0x01 | 0x04) != 0; // FIN, RST
        if self.kernel_teardown || teardown {
            let next = Translation {
                kernel_teardown: true,
                ..self
            };
            return (false, next);
        }
        (true, self)
    }

    /// What the kernel's conntrack can do for this connection: the
    /// sequence adjustment adds one offset, and the SYN proxy hooks one
    /// timestamp offset; neither rescales a window. With `timestamps`
    /// false (the hooks are not registered), only a connection whose
    /// timestamps need no offset.
    pub fn kernel_can(&self, timestamps: bool) -> bool {
        !self.kernel_refused && !self.rescales() && (timestamps || self.ts_delta == 0)
    }

    /// The kernel could not take it: translated here from now on, and not
    /// offered to the kernel again.
    pub fn refused_by_kernel(self) -> Self {
        Translation {
            kernel: false,
            kernel_teardown: false,
            kernel_refused: true,
            ..self
        }
    }

    /// The window shifts in use: the client's and the server's (0 both
    /// when scaling is off).
    pub fn window_shifts(&self) -> (u8, u8) {
        (self.client_shift_at_server, self.server_shift)
    }

    /// The kernel's sequence adjustment for the server's direction (the
    /// reply direction): added to the server's sequence numbers, taken from
    /// the client's acknowledgements and SACK edges.
    pub fn seq_offset(&self) -> u32 {
        self.seq_delta
    }

    /// The kernel SYN proxy's `tsoff`: the server's clock minus the one
    /// the client was told (taken from the server's TSval, added to the
    /// client's TSecr).
    pub fn timestamp_offset(&self) -> u32 {
        self.ts_delta.wrapping_neg()
    }

    /// A server sequence number in the client's space.
    pub fn seq_to_client(&self, seq: SeqNum) -> SeqNum {
        seq + self.seq_delta
    }

    /// A client's acknowledgement (or SACK edge) in the server's space.
    pub fn ack_to_server(&self, ack: SeqNum) -> SeqNum {
        ack - self.seq_delta
    }

    /// A server TSval in the client's view of the clock.
    pub fn tsval_to_client(&self, tsval: u32) -> u32 {
        tsval.wrapping_add(self.ts_delta)
    }

    /// A client TSecr in the server's clock.
    pub fn tsecr_to_server(&self, tsecr: u32) -> u32 {
        tsecr.wrapping_sub(self.ts_delta)
    }

    /// A window field of a (non-SYN) server packet, for the client.
    pub fn window_to_client(&self, window: u16) -> u16 {
        rescale(window, self.server_shift, self.told_shift)
    }

    /// A window field of a (non-SYN) client packet, for the server.
    pub fn window_to_server(&self, window: u16) -> u16 {
        rescale(window, self.client_shift, self.client_shift_at_server)
    }

    /// The unscaled window of a SYN+ACK in the scale the client was told.
    pub fn unscaled_window_to_client(&self, window: u16) -> u16 {
        rescale(window, 0, self.told_shift)
    }

    /// The window scales differ between the two sides (windows are
    /// rewritten, with the losses the module documentation names).
    pub fn rescales(&self) -> bool {
        self.server_shift != self.told_shift || self.client_shift != self.client_shift_at_server
    }

    /// Rewrites `packet` (IP header first, checksum finished), sent by the
    /// server to the client, into the client's sequence space. `Ok(true)`
    /// when a byte changed. On error the packet is untouched.
    pub fn server_to_client(&self, packet: &mut [u8]) -> Result<bool, TranslateError> {
        self.rewrite(packet, Direction::ServerToClient, Checksums::Verify)
    }

    /// Rewrites `packet` (checksum finished), sent by the client to the
    /// server, into the server's sequence space. As
    /// [`Self::server_to_client`].
    pub fn client_to_server(&self, packet: &mut [u8]) -> Result<bool, TranslateError> {
        self.rewrite(packet, Direction::ClientToServer, Checksums::Verify)
    }

    /// Rewrites `packet` going `direction`. With [`Checksums::Verify`] the
    /// packet's checksum is finished and is updated; with
    /// [`Checksums::NotComputed`] it is left to offload and is left alone.
    pub fn rewrite(
        &self,
        packet: &mut [u8],
        direction: Direction,
        checksums: Checksums,
    ) -> Result<bool, TranslateError> {
        let to_client = direction == Direction::ServerToClient;
        let at = locate_tcp(packet)?;
        let tcp = &mut packet[at.start..at.start + at.header_len];
        let mut edit = Edit::new(read_u16(tcp, 16), checksums == Checksums::Verify);
        let syn = tcp[13] & 0x02 != 0;
        if to_client {
            let seq = read_u32(tcp, 4).wrapping_add(self.seq_delta);
            edit.put(tcp, 4, &seq.to_be_bytes());
            // A SYN's window is never scaled (RFC 7323 2.2).
            if !syn {
                let window = self.window_to_client(read_u16(tcp, 14));
                edit.put(tcp, 14, &window.to_be_bytes());
            }
        } else {
            // An ACK number means something only with the ACK flag.
            if tcp[13] & 0x10 != 0 {
                let ack = read_u32(tcp, 8).wrapping_sub(self.seq_delta);
                edit.put(tcp, 8, &ack.to_be_bytes());
            }
            if !syn {
                let window = self.window_to_server(read_u16(tcp, 14));
                edit.put(tcp, 14, &window.to_be_bytes());
            }
        }
        let mut next = 0;
        while let Some((kind, at, len)) = next_option(&tcp[20..], next) {
            next = at + len;
            let offset = 20 + at;
            match kind {
                OPT_TIMESTAMP if len == 10 => {
                    if to_client {
                        let tsval = read_u32(tcp, offset + 2).wrapping_add(self.ts_delta);
                        edit.put(tcp, offset + 2, &tsval.to_be_bytes());
                    } else {
                        let tsecr = read_u32(tcp, offset + 6).wrapping_sub(self.ts_delta);
                        edit.put(tcp, offset + 6, &tsecr.to_be_bytes());
                    }
                }
                // The client's SACK blocks acknowledge server data; the
                // server's acknowledge client data, which is not translated.
                OPT_SACK if !to_client && len >= 10 && (len - 2) % 8 == 0 => {
                    let mut edge = offset + 2;
                    while edge < offset + len {
                        let e = read_u32(tcp, edge).wrapping_sub(self.seq_delta);
                        edit.put(tcp, edge, &e.to_be_bytes());
                        edge += 4;
                    }
                }
                _ => {}
            }
        }
        Ok(edit.finish(tcp))
    }

    /// The fixed bytes of the state file: a version (its high bit: translated
    /// by the kernel), then the fields, big endian.
    pub fn to_bytes(&self) -> [u8; TRANSLATION_BYTES] {
        let mut b = [0; TRANSLATION_BYTES];
        b[0] = FORMAT_VERSION
            | if self.kernel { BY_KERNEL } else { 0 }
            | if self.kernel_teardown {
                KERNEL_TEARDOWN
            } else {
                0
            };
        b[1..5].copy_from_slice(&self.seq_delta.to_be_bytes());
        b[5..9].copy_from_slice(&self.ts_delta.to_be_bytes());
        b[9] = self.server_shift;
        b[10] = self.told_shift;
        b[11] = self.client_shift;
        b[12] = self.client_shift_at_server;
        b
    }

    /// Reads [`Self::to_bytes`]; `None` for another version or a shift
    /// above 14 (a corrupt file, not a translation to apply).
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        let b: &[u8; TRANSLATION_BYTES] = bytes.try_into().ok()?;
        let kernel = b[0] & (BY_KERNEL | KERNEL_TEARDOWN);
        if b[0] & !(BY_KERNEL | KERNEL_TEARDOWN) != FORMAT_VERSION
            || kernel == KERNEL_TEARDOWN
            || b[9..].iter().any(|&s| s > MAX_WINDOW_SCALE)
        {
            return None;
        }
        Some(Translation {
            seq_delta: read_u32(b, 1),
            ts_delta: read_u32(b, 5),
            server_shift: b[9],
            told_shift: b[10],
            client_shift: b[11],
            client_shift_at_server: b[12],
            kernel: b[0] & BY_KERNEL != 0,
            kernel_teardown: kernel == BY_KERNEL | KERNEL_TEARDOWN,
            kernel_refused: false,
        })
    }
}

/// Computes the TCP checksum of `packet` (IP header first, the whole
/// segment in the buffer) afresh and writes it. For a rewritten packet
/// whose checksum was left unfinished by offload (a partial checksum: the
/// kernel then finishes none of a packet handed back to it), so not on the
/// common path. On error the packet is untouched.
pub fn finish_checksum(packet: &mut [u8]) -> Result<(), TranslateError> {
    let at = locate_tcp(packet)?;
    let end = at.start + at.segment_len;
    if packet.len() < end {
        return Err(PacketError::Truncated);
    }
    let (src, dst) = super::packet::addresses(packet, at.v6);
    let segment = &mut packet[at.start..end];
    segment[16..18].copy_from_slice(&[0, 0]);
    let sum = super::packet::sum_words(
        super::packet::pseudo_header_sum(src, dst, segment.len()),
        segment,
    );
    let check = !fold(sum);
    segment[16..18].copy_from_slice(&check.to_be_bytes());
    Ok(())
}

/// A window field sent in units of `2^from`, in units of `2^to`.
fn rescale(window: u16, from: u8, to: u8) -> u16 {
    let bytes = (window as u64) << from;
    (bytes >> to).min(0xffff) as u16
}

/// Which way a packet of a proxied connection goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    ServerToClient,
    ClientToServer,
}

/// Field rewrites of a TCP header, with the checksum updated for them all
/// at once: RFC 1624 eqn. 3 summed over every changed word,
/// `HC' = ~(~HC + Σ~m + Σm')`.
struct Edit {
    check: u16,
    /// The checksum is finished (else it is the offload's seed: kept).
    update_check: bool,
    /// `Σ~m + Σm'` over the 16-bit words changed so far.
    delta: u64,
    changed: bool,
}

impl Edit {
    fn new(check: u16, update_check: bool) -> Self {
        Edit {
            check,
            update_check,
            delta: 0,
            changed: false,
        }
    }

    /// Writes `new` at `at` in `tcp`. The checksum is over 16-bit words from
    /// the header's start; an option's field may start at an odd offset, so
    /// the words covering it are taken whole.
    fn put(&mut self, tcp: &mut [u8], at: usize, new: &[u8]) {
        if tcp[at..at + new.len()] == *new {
            return;
        }
        let start = at & !1;
        let end = (at + new.len() + 1) & !1;
        for w in (start..end).step_by(2) {
            self.delta += (!read_u16(tcp, w)) as u64;
        }
        tcp[at..at + new.len()].copy_from_slice(new);
        for w in (start..end).step_by(2) {
            self.delta += read_u16(tcp, w) as u64;
        }
        self.changed = true;
    }

    /// Writes the checksum; whether anything changed.
    fn finish(self, tcp: &mut [u8]) -> bool {
        if self.changed && self.update_check {
            let check = !fold((!self.check) as u64 + self.delta);
            tcp[16..18].copy_from_slice(&check.to_be_bytes());
        }
        self.changed
    }
}

#[cfg(test)]
mod tests;
