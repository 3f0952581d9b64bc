//! What a worker tells the logging thread, over a bounded channel: a packet
//! worth a log line, or a socket error. The worker only copies bytes
//! ([`HEAD`] of them); the logging thread parses and writes.

use super::HEAD;
use crate::reason::Reason;

/// What a worker tells the logging thread.
#[derive(Clone, Debug)]
pub enum Notice {
    Packet(PacketNotice),
    /// `recv` on a queue socket failed (ENOBUFS: the socket buffer overflowed
    /// and the kernel dropped or, fail-open, accepted packets meanwhile).
    RecvError {
        queue: u16,
        errno: i32,
    },
    /// The kernel refused a verdict.
    VerdictError {
        queue: u16,
        errno: i32,
    },
    /// Sending verdicts failed: they are kept and sent again; `collapsed`:
    /// the backlog had grown past its bound and became one batch drop.
    VerdictSendFailed {
        queue: u16,
        errno: i32,
        collapsed: bool,
    },
}

/// A packet worth a log line: dropped (debug level), or decided by a rule
/// with `log = true`.
#[derive(Clone, Debug)]
pub struct PacketNotice {
    pub queue: u16,
    pub reason: Reason,
    pub rule: Option<u16>,
    /// Decided by a rule marked `log = true`.
    pub log: bool,
    pub in_ifindex: u32,
    pub out_ifindex: u32,
    pub wire_len: u32,
    pub head_len: u8,
    pub head: [u8; HEAD],
}

impl PacketNotice {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        queue: u16,
        reason: Reason,
        rule: Option<u16>,
        log: bool,
        in_ifindex: u32,
        out_ifindex: u32,
        wire_len: u32,
        bytes: &[u8],
    ) -> PacketNotice {
        let n = bytes.len().min(HEAD);
        let mut head = [0u8; HEAD];
        head[..n].copy_from_slice(&bytes[..n]);
        PacketNotice {
            queue,
            reason,
            rule,
            log,
            in_ifindex,
            out_ifindex,
            wire_len,
            head_len: n as u8,
            head,
        }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.head[..self.head_len as usize]
    }
}
