//! The SYN proxy's I/O: the engine decides what to answer and how to
//! rewrite ([`crate::engine::Answers`]); a worker writes those packets into
//! buffers made once and sends them through a raw socket shared by all
//! workers (the reject answers' kind: they leave through OUTPUT), and hands
//! the kernel a proxied connection's packets rewritten.
//!
//! The answers go at once, not after the batch's verdicts: none of them
//! depends on a verdict, and the client waits for its SYN+ACK.

use super::super::shared::WorkerStats;
use crate::engine::{Answers, Context, Decision};
use crate::kernel::reject::RawSocket;
use crate::synproxy::options::SEGMENT_MAX;
use crate::time::Timestamp;
use crate::Engine;
use std::cell::RefCell;
use std::sync::Arc;

/// The largest packet a queue hands over whole (copy range 65535).
const PACKET_MAX: usize = 65_535;
/// The largest packet a verdict can carry: an attribute's 16-bit length
/// counts its 4-byte header.
const MAX_REWRITTEN: usize = u16::MAX as usize - 4;

/// One worker's side of the proxy: the shared socket, and its own buffers
/// (a packet's worth for the rewrite, about 64 KiB, made when the worker is).
pub struct Proxying {
    socket: Arc<Option<RawSocket>>,
    answers: RefCell<Answers>,
    out: RefCell<[u8; SEGMENT_MAX]>,
    packet: RefCell<Vec<u8>>,
}

impl Proxying {
    pub fn new(socket: Arc<Option<RawSocket>>) -> Proxying {
        Proxying {
            socket,
            answers: RefCell::new(Answers::default()),
            out: RefCell::new([0; SEGMENT_MAX]),
            packet: RefCell::new(Vec::with_capacity(PACKET_MAX)),
        }
    }

    /// Decides `packet`, and sends what the proxy answers.
    #[inline]
    pub fn decide(
        &self,
        engine: &Engine,
        packet: &[u8],
        ctx: &Context<'_>,
        now: Timestamp,
        stats: &mut WorkerStats,
    ) -> Decision {
        let mut answers = self.answers.borrow_mut();
        let d = engine.decide_with(packet, ctx, now, &mut answers);
        let mut out = self.out.borrow_mut();
        for segment in answers.to_send() {
            let sent = match (segment.write(&mut out[..]), self.socket.as_ref()) {
                (Ok(n), Some(socket)) => socket.send(&out[..n]).is_ok(),
                _ => false,
            };
            if sent {
                stats.synproxy_sent += 1;
            } else {
                stats.synproxy_send_failures += 1;
            }
        }
        d
    }

    /// The accepted `packet` as the proxy rewrites it.
    ///
    /// `checksum_ready`: the queue's word on the checksum (false: partial,
    /// left to offload). The kernel finishes no checksum of a packet handed
    /// back (it marks it unchecked), so a partial one is computed here, over
    /// the whole packet (a GSO super-packet's too: a veth hands it on whole).
    pub fn rewritten(
        &self,
        packet: &[u8],
        wire_len: usize,
        checksum_ready: bool,
        stats: &mut WorkerStats,
    ) -> Rewritten<'_> {
        let Some(rewrite) = self.answers.borrow().rewrite else {
            return Rewritten::Unchanged;
        };
        // Not copied whole, or too long for a netlink attribute (its length
        // is 16 bits, header included): it cannot be handed back.
        if wire_len > packet.len() || packet.len() > MAX_REWRITTEN {
            stats.synproxy_rewrite_failures += 1;
            return Rewritten::Refused;
        }
        {
            let mut buf = self.packet.borrow_mut();
            buf.clear();
            buf.extend_from_slice(packet);
            if rewrite.apply(&mut buf).is_err() {
                stats.synproxy_rewrite_failures += 1;
                return Rewritten::Refused;
            }
            if !checksum_ready && crate::synproxy::translate::finish_checksum(&mut buf).is_err() {
                stats.synproxy_rewrite_failures += 1;
                return Rewritten::Refused;
            }
        }
        stats.synproxy_rewritten += 1;
        Rewritten::Packet(self.packet.borrow())
    }
}

/// What [`Proxying::rewritten`] made of an accepted packet.
pub enum Rewritten<'a> {
    /// Not a proxied connection's: it goes on as it is.
    Unchanged,
    /// It goes on as this.
    Packet(std::cell::Ref<'a, Vec<u8>>),
    /// It must be rewritten but cannot be (not copied whole): dropped.
    Refused,
}
