//! Answering rejected packets (`action = "reject"`): the worker builds each
//! answer while it decides its batch ([`crate::wire::reject`], into buffers
//! made once), and sends them after the batch's verdicts, through one raw
//! socket shared by all workers, at most `reject_rate` a second.
//!
//! The rejected packet itself is dropped whatever happens to its answer.
//! Counted per worker ([`WorkerStats`]): answers sent, answers over the rate
//! (not sent), answers that failed (no raw socket, or the send failed).
//! Packets that are never answered (see `wire::reject`) count in none.

use super::super::shared::rate::RateLimit;
use super::super::shared::WorkerStats;
use crate::kernel::nfqueue::codec::BATCH;
use crate::kernel::reject::RawSocket;
use crate::time::Timestamp;
use crate::wire::reject::{reject_reply, REPLY_MAX};
use crate::wire::Framing;
use std::cell::RefCell;
use std::sync::Arc;

/// What the workers share: the socket (none without CAP_NET_RAW, or with
/// `reject_rate = 0`) and the rate.
#[derive(Debug)]
pub struct Rejecter {
    socket: Option<RawSocket>,
    limiter: RateLimit,
}

impl Rejecter {
    pub fn new(socket: Option<RawSocket>, per_second: u32) -> Rejecter {
        Rejecter {
            socket,
            limiter: RateLimit::new(per_second, per_second.saturating_mul(2)),
        }
    }

    /// Whether answers can be sent at all.
    pub fn can_answer(&self) -> bool {
        self.socket.is_some() && !self.limiter.is_off()
    }
}

/// One worker's answers to the batch it is deciding.
struct Pending {
    bufs: Box<[[u8; REPLY_MAX]]>,
    lens: [usize; BATCH],
    count: usize,
}

/// A worker's side: the shared socket and rate, and its own buffers (one
/// answer per packet of a batch, about 80 KiB, made when the worker is).
pub struct Replies {
    shared: Arc<Rejecter>,
    pending: RefCell<Pending>,
}

impl Replies {
    pub fn new(shared: Arc<Rejecter>) -> Replies {
        Replies {
            shared,
            pending: RefCell::new(Pending {
                bufs: vec![[0u8; REPLY_MAX]; BATCH].into_boxed_slice(),
                lens: [0; BATCH],
                count: 0,
            }),
        }
    }

    /// Builds the answer to a rejected packet, to be sent by [`Replies::send`]
    /// after the batch's verdicts; or counts why it will not be.
    pub fn prepare(
        &self,
        packet: &[u8],
        framing: Framing,
        now: Timestamp,
        stats: &mut WorkerStats,
    ) {
        let mut p = self.pending.borrow_mut();
        let at = p.count;
        if at == p.bufs.len() {
            // More rejected packets than a batch holds: cannot happen (one
            // answer per packet read), but never overrun.
            stats.rejects_failed += 1;
            return;
        }
        // Nothing will be sent (answers off, or no socket): only count what
        // would have been answered.
        if self.shared.limiter.is_off() || self.shared.socket.is_none() {
            if reject_reply(packet, framing, &mut p.bufs[at]).is_some() {
                if self.shared.limiter.is_off() {
                    stats.rejects_rate_limited += 1;
                } else {
                    stats.rejects_failed += 1;
                }
            }
            return;
        }
        // The token before the answer: under a flood, packets over the rate
        // cost no second parse and no copy (an unanswerable one, such as a
        // broadcast, spends a token).
        if !self.shared.limiter.allow(now.as_nanos()) {
            stats.rejects_rate_limited += 1;
        } else if let Some(len) = reject_reply(packet, framing, &mut p.bufs[at]) {
            p.lens[at] = len;
            p.count += 1;
        }
    }

    /// Sends the answers prepared since the last call (non-blocking).
    pub fn send(&self, stats: &mut WorkerStats) {
        let mut p = self.pending.borrow_mut();
        if p.count == 0 {
            return;
        }
        let Some(socket) = &self.shared.socket else {
            return;
        };
        let count = p.count;
        let sent = {
            let p = &*p;
            socket.send_many((0..count).map(|i| &p.bufs[i][..p.lens[i]]))
        };
        stats.rejects_sent += sent as u64;
        stats.rejects_failed += (count - sent) as u64;
        p.count = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{build, TcpFlags};

    #[test]
    fn without_a_socket_answers_count_as_failed_and_unanswerable_ones_not_at_all() {
        let replies = Replies::new(Arc::new(Rejecter::new(None, 100)));
        let mut stats = WorkerStats::default();
        let now = Timestamp::from_secs(1);
        let c = "198.18.0.2:40000".parse().unwrap();
        let s = "198.19.0.2:22".parse().unwrap();
        let syn = build::tcp(c, s).flags(TcpFlags::SYN).build();
        replies.prepare(&syn, Framing::default(), now, &mut stats);
        let rst = build::tcp(c, s).flags(TcpFlags::RST).build();
        replies.prepare(&rst, Framing::default(), now, &mut stats);
        replies.send(&mut stats);
        assert_eq!(
            (
                stats.rejects_sent,
                stats.rejects_failed,
                stats.rejects_rate_limited
            ),
            (0, 1, 0)
        );
        // reject_rate = 0: over the rate, whether or not there is a socket.
        let off = Replies::new(Arc::new(Rejecter::new(None, 0)));
        off.prepare(&syn, Framing::default(), now, &mut stats);
        assert_eq!(stats.rejects_rate_limited, 1);
    }
}
