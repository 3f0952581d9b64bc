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
use crate::kernel::nfqueue::codec::{QueuedPacket, Sink, Verdicts};
use crate::kernel::reject::RawSocket;
use crate::synproxy::options::SEGMENT_MAX;
use crate::time::Timestamp;
use crate::Engine;
use crate::Verdict;
use std::cell::RefCell;
use std::sync::Arc;

/// One worker's side of the proxy: the shared socket, and its own buffers
/// (made when the worker is).
pub struct Proxying {
    socket: Arc<Option<RawSocket>>,
    answers: RefCell<Answers>,
    out: RefCell<[u8; SEGMENT_MAX]>,
}

impl Proxying {
    pub fn new(socket: Arc<Option<RawSocket>>) -> Proxying {
        Proxying {
            socket,
            answers: RefCell::new(Answers::default()),
            out: RefCell::new([0; SEGMENT_MAX]),
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

    /// The translation the kernel is to get: the packet just decided hands
    /// its proxied connection off.
    pub fn hand_over(&self) -> Option<crate::synproxy::translate::Translation> {
        self.answers.borrow().hand_over
    }

    /// Hands the kernel the accepted packet `p`: rewritten when it is a
    /// proxied connection's (in the verdict itself: one copy), else as it is
    /// with `mark`.
    ///
    /// The kernel finishes no checksum of a packet handed back (it marks it
    /// unchecked), so a partial one (`checksum_ready` false: left to
    /// offload) is computed here, over the whole packet (a GSO
    /// super-packet's too: a veth hands it on whole).
    pub fn hand_back<S: Sink>(
        &self,
        tx: &mut Verdicts<S>,
        p: &QueuedPacket<'_>,
        mark: Option<u32>,
        stats: &mut WorkerStats,
    ) {
        let answers = self.answers.borrow();
        if answers.left_to_kernel {
            stats.synproxy_left_to_kernel += 1;
        }
        let Some(rewrite) = answers.rewrite else {
            tx.push(p.id, Verdict::Accept, mark);
            return;
        };

        // Not copied whole: it cannot be handed back (a netlink attribute's
        // 16-bit length is checked by the verdict).
        let changed = p.wire_len <= p.payload.len()
            && tx.push_changed(p.id, p.payload, |packet| {
                rewrite.apply(packet).is_ok()
                    && (p.checksum_ready
                        || crate::synproxy::translate::finish_checksum(packet).is_ok())
            });
        if changed {
            stats.synproxy_rewritten += 1;
        } else {
            if p.wire_len > p.payload.len() {
                tx.push(p.id, Verdict::Drop, None);
            }
            stats.synproxy_rewrite_failures += 1;
        }
    }
}
