//! The SYN proxy's I/O: the engine decides what to answer and how to
//! rewrite ([`crate::engine::Answers`]); a worker writes those packets into
//! buffers made once and sends them through a raw socket shared by all
//! workers (the reject answers' kind: they leave through OUTPUT), and hands
//! the kernel a proxied connection's packets rewritten.
//!
//! The answers of a batch go together (sendmmsg: one system call per 64
//! and family, where a flood of SYNs made one per cookie), as soon as the
//! batch is decided and before its verdicts: none of them depends on a
//! verdict, and the client waits for its SYN+ACK.

use super::super::shared::WorkerStats;
use crate::engine::{Answers, Context, Decision};
use crate::kernel::handover::{HandOver, Handed};
use crate::kernel::nfqueue::codec::{QueuedPacket, Sink, Verdicts, BATCH};
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
    pending: RefCell<Pending>,
    /// Hand-off mode: this worker's ctnetlink socket that gives the kernel
    /// proxied connections.
    handover: Option<RefCell<HandOver>>,
}

/// Hand-off mode's mark bit(s) and the kernel entry's timeout (seconds), as
/// the worker's `Handoff` has them.
#[derive(Clone, Copy, Debug)]
pub struct KernelEntry {
    pub mark: u32,
    pub timeout: u32,
}

/// The kernel's entry of the proxied connection of `packet`, sent by the
/// server (`from_server`) or the client, translated by `t`.
fn handed(
    packet: &[u8],
    t: &crate::synproxy::translate::Translation,
    handoff: KernelEntry,
    from_server: bool,
) -> Option<Handed> {
    let seg = crate::synproxy::options::read_segment(packet).ok()?;
    let (src, dst) = (
        std::net::SocketAddr::new(seg.src, seg.src_port),
        std::net::SocketAddr::new(seg.dst, seg.dst_port),
    );
    let (client, server) = if from_server { (dst, src) } else { (src, dst) };
    let (client_shift, server_shift) = t.window_shifts();
    Some(Handed {
        client,
        server,
        seq_offset: t.seq_offset(),
        timestamp_offset: t.timestamp_offset(),
        scales: (client_shift != 0 || server_shift != 0).then_some((client_shift, server_shift)),
        mark: handoff.mark,
        timeout: handoff.timeout,
    })
}

/// At most two answers per packet of a batch.
const PENDING: usize = 2 * BATCH;

/// The batch's answers, written, not sent yet.
struct Pending {
    bufs: Box<[[u8; SEGMENT_MAX]]>,
    lens: [usize; PENDING],
    count: usize,
}

impl Proxying {
    /// `handover`: hand-off mode's ctnetlink socket, when proxied
    /// connections are handed off.
    pub fn new(socket: Arc<Option<RawSocket>>, handover: Option<HandOver>) -> Proxying {
        Proxying {
            socket,
            answers: RefCell::new(Answers::default()),
            pending: RefCell::new(Pending {
                bufs: vec![[0; SEGMENT_MAX]; PENDING].into_boxed_slice(),
                lens: [0; PENDING],
                count: 0,
            }),
            handover: handover.map(RefCell::new),
        }
    }

    /// Proxied connections can be handed to the kernel.
    pub fn can_hand_over(&self) -> bool {
        self.handover.is_some()
    }

    /// Sends the answers written since the last call.
    pub fn send(&self, stats: &mut WorkerStats) {
        let mut p = self.pending.borrow_mut();
        if p.count == 0 {
            return;
        }
        let count = p.count;
        let sent = match self.socket.as_ref() {
            Some(socket) => {
                let p = &*p;
                socket.send_many((0..count).map(|i| &p.bufs[i][..p.lens[i]]))
            }
            None => 0,
        };
        stats.synproxy_sent += sent as u64;
        stats.synproxy_send_failures += (count - sent) as u64;
        p.count = 0;
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
        for segment in answers.to_send() {
            if self.pending.borrow().count == PENDING {
                self.send(stats); // never with batches of BATCH: two answers a packet at most
            }
            let mut p = self.pending.borrow_mut();
            let at = p.count;
            match segment.write(&mut p.bufs[at][..]) {
                Ok(n) => {
                    p.lens[at] = n;
                    p.count += 1;
                }
                Err(_) => stats.synproxy_send_failures += 1,
            }
        }
        d
    }

    /// The packet just decided (accepted) hands the connection off: a
    /// proxied one goes to the kernel with its translation first (its
    /// packet is still rewritten here). Whether the verdict may carry the
    /// hand-off mark; if the kernel refuses, conntrackd translates the
    /// connection again ([`Engine::translate_here`]).
    pub fn hand_over(
        &self,
        engine: &Engine,
        packet: &[u8],
        framing: crate::wire::Framing,
        handoff: KernelEntry,
        stats: &mut WorkerStats,
    ) -> bool {
        let Some(handover) = &self.handover else {
            return true;
        };
        let Some(t) = self.answers.borrow().hand_over else {
            return true; // not proxied, or handed over already
        };
        let done = handed(packet, &t, handoff, false)
            .is_some_and(|h| handover.borrow_mut().hand_over(&h).is_ok());
        if done {
            stats.synproxy_handed_off += 1;
        } else {
            stats.synproxy_handoff_failures += 1;
            engine.translate_here(packet, framing);
        }
        done
    }

    /// The packet just decided (accepted) is a server's RST of a proxied
    /// connection the kernel translates: its entry gets the ISN that keeps
    /// the connection's offset through the kernel's SYN proxy hook (which
    /// sets it anew on a server's RST) before the RST goes on.
    pub fn reset_in_kernel(&self, packet: &[u8], handoff: KernelEntry, stats: &mut WorkerStats) {
        let Some(handover) = &self.handover else {
            return;
        };
        let Some((t, isn)) = self.answers.borrow().kernel_reset else {
            return;
        };
        let set = handed(packet, &t, handoff, true)
            .is_some_and(|h| handover.borrow_mut().set_isn(&h, isn).is_ok());
        if !set {
            stats.synproxy_handoff_failures += 1;
        }
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
