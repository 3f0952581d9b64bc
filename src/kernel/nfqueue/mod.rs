//! NFQUEUE queues: opening, binding and configuring one ([`open`]), and the
//! queue protocol on the hot path ([`codec`]).
//!
//! Each queue has a netlink socket of its own, opened here and owned by its
//! [`BoundQueue`]: closing it (dropping the queue) unbinds the queue. One
//! `NFQNL_MSG_CONFIG` message binds the queue and sets its copy range,
//! length and flags, applied by the kernel in one go within the `send`; a
//! packet queued before the answer is read is dropped
//! (`BoundQueue::answer`). [`codec`] reads and answers the packets on the
//! same socket.
//!
//! Hand-written in place of nfq 0.2.5, which opens the socket and never lets
//! go of it: no accessor for its fd, which had to be found by comparing
//! `/proc/self/fd` before and after opening. We need the socket for its
//! receive buffer, its receive timeout (so that a worker blocked in `recv`
//! wakes up regularly to notice a shutdown) and the codec; the configuration
//! is one message of five attributes.

pub mod codec;

use crate::kernel::netlink::{align4, messages, send_to_kernel, set_recv_buffer_force};
use crate::kernel::netlink::{u16_ne, u32_ne};
use crate::kernel::netlink::{NLMSG_ERROR, NLM_F_REQUEST};
use crate::reason::Verdict;
use anyhow::Context as _;
use socket2::{Domain, Protocol, Socket, Type};
use std::io::{self, Read as _};
use std::os::fd::{AsFd as _, BorrowedFd};
use std::time::{Duration, Instant};

/// How long a worker blocks in `recv` before it checks for shutdown.
pub const RECV_TIMEOUT: Duration = Duration::from_millis(100);

/// How long a configuration request waits for the kernel's answer at most
/// (the kernel answers before `send` returns; packets may be ahead of it).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

const NLM_F_ACK: u16 = 4;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQA_CFG_MASK: u16 = 4;
const NFQA_CFG_FLAGS: u16 = 5;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_CFG_CMD_UNBIND: u8 = 2;
const NFQNL_COPY_META: u8 = 1;
const NFQNL_COPY_PACKET: u8 = 2;
const NFQA_CFG_F_FAIL_OPEN: u32 = 1;
const NFQA_CFG_F_GSO: u32 = 4;

/// Per-queue settings.
#[derive(Clone, Copy, Debug)]
pub struct QueueConfig {
    pub num: u16,
    pub copy_range: u16,
    pub maxlen: u32,
    pub rcvbuf: usize,
    /// A full queue accepts what does not fit (NFQA_CFG_F_FAIL_OPEN), instead
    /// of dropping it.
    pub accept_on_overflow: bool,
}

/// An opened, bound and configured queue, and its socket.
pub struct BoundQueue {
    sock: Socket,
    /// The sequence number of the last configuration request.
    seq: u32,
    pub num: u16,
    pub copy_range: u16,
    /// The kernel accepted NFQA_CFG_F_GSO.
    pub gso: bool,
    /// Receive buffer the kernel granted, in bytes.
    pub rcvbuf: usize,
}

/// Opens a socket, binds it to `cfg.num` and configures it.
pub fn open(cfg: &QueueConfig) -> anyhow::Result<BoundQueue> {
    let num = cfg.num;
    let sock = Socket::new(
        Domain::from(libc::AF_NETLINK),
        Type::RAW,
        Some(Protocol::from(libc::NETLINK_NETFILTER)),
    )
    .context("opening an NFQUEUE netlink socket")?;
    // The receive buffer first: packets may arrive as soon as the queue is bound.
    // SO_RCVBUFFORCE (CAP_NET_ADMIN) ignores net.core.rmem_max.
    let want = cfg.rcvbuf.min(i32::MAX as usize / 2);
    if set_recv_buffer_force(sock.as_fd(), want).is_err() {
        sock.set_recv_buffer_size(want)
            .with_context(|| format!("setting the socket receive buffer to {want} bytes"))?;
    }
    // The kernel doubles the value for bookkeeping and reports the doubled value.
    let rcvbuf = sock.recv_buffer_size().unwrap_or(0) / 2;
    sock.set_read_timeout(Some(RECV_TIMEOUT))
        .with_context(|| format!("queue {num}: setting the receive timeout"))?;
    // Socket overruns are reported (ENOBUFS, NETLINK_NO_ENOBUFS off: the
    // default), so that they are counted and logged.
    let mut queue = BoundQueue {
        sock,
        seq: 0,
        num,
        copy_range: cfg.copy_range,
        gso: true,
        rcvbuf,
    };
    // GSO: the kernel hands over unsegmented super-packets and does not
    // complete partial checksums; NFQA_SKB_INFO then says which packets carry
    // a checksum that is not computed yet. Without it, the kernel segments and
    // checksums every packet before queueing (slower, still correct). A
    // kernel without it refuses the message (EOPNOTSUPP): current kernels
    // check the flags before binding, older ones after, so the queue may be
    // bound then; unbinding first makes the second try the same on both.
    let fail_open = if cfg.accept_on_overflow {
        NFQA_CFG_F_FAIL_OPEN
    } else {
        0
    };
    let all = NFQA_CFG_F_FAIL_OPEN | NFQA_CFG_F_GSO;
    let mut bound = queue.bind(cfg, fail_open | NFQA_CFG_F_GSO, all);
    if matches!(&bound, Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP)) {
        queue.gso = false;
        let _ = queue.unbind(); // ENODEV where the refusal bound nothing
        bound = queue.bind(cfg, fail_open, NFQA_CFG_F_FAIL_OPEN);
    }
    bound.map_err(|e| {
        // The kernel says EPERM for both.
        let why = match e.raw_os_error() {
            Some(libc::EPERM) => {
                " (is another program bound to it? conntrackd needs CAP_NET_ADMIN)"
            }
            _ => "",
        };
        anyhow::Error::new(e).context(format!("binding and configuring NFQUEUE queue {num}{why}"))
    })?;
    Ok(queue)
}

impl BoundQueue {
    /// The queue's socket, for [`codec::Receiver`] and [`codec::Verdicts`].
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }

    /// Stops the kernel queueing to this queue; the packets still waiting
    /// are dropped. (Dropping the queue, which closes the socket, does too.)
    pub fn unbind(&mut self) -> io::Result<()> {
        let cmd = [NFQNL_CFG_CMD_UNBIND, 0, 0, 0];
        self.request(&[(NFQA_CFG_CMD, &cmd)])
    }

    /// Binds the queue and sets its copy range, length and the `flags` in
    /// `mask`, in one message, which the kernel handles in one go: a current
    /// kernel checks the flags before binding, so that a refused message
    /// binds nothing (an older one binds first, see [`open`]).
    fn bind(&mut self, cfg: &QueueConfig, flags: u32, mask: u32) -> io::Result<()> {
        let cmd = [NFQNL_CFG_CMD_BIND, 0, 0, 0];
        let mode = if cfg.copy_range == 0 {
            NFQNL_COPY_META
        } else {
            NFQNL_COPY_PACKET
        };
        let mut params = u32::from(cfg.copy_range).to_be_bytes().to_vec();
        params.push(mode);
        self.request(&[
            (NFQA_CFG_CMD, &cmd),
            (NFQA_CFG_PARAMS, &params),
            (NFQA_CFG_QUEUE_MAXLEN, &cfg.maxlen.to_be_bytes()),
            (NFQA_CFG_MASK, &mask.to_be_bytes()),
            (NFQA_CFG_FLAGS, &flags.to_be_bytes()),
        ])
    }

    /// Sends one configuration message and returns the kernel's answer.
    fn request(&mut self, attrs: &[(u16, &[u8])]) -> io::Result<()> {
        self.seq = self.seq.wrapping_add(1);
        let msg = config_message(self.seq, self.num, attrs);
        send_to_kernel(self.fd(), &msg)?;
        self.answer(self.seq)
    }

    /// Reads up to the kernel's answer to request `seq` (an NLMSG_ERROR with
    /// that sequence number; errno 0: done). Packets ahead of it (queued
    /// between a bind and its answer, or before an unbind) are dropped: no
    /// one judged them, and a packet left without a verdict would be given
    /// the next batch verdict's, an accept perhaps.
    fn answer(&self, seq: u32) -> io::Result<()> {
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        let mut buf = vec![0u8; usize::from(self.copy_range) + 8192];
        let mut drops = codec::Verdicts::new(self.fd(), self.num);
        while Instant::now() < deadline {
            let n = match (&self.sock).read(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let mut answer = None;
            for msg in messages(&buf[..n]) {
                if u16_ne(msg, 4) == NLMSG_ERROR && msg.len() >= 20 && u32_ne(msg, 8) == seq {
                    answer = Some(-(u32_ne(msg, 16) as i32));
                } else if let Some(codec::Item::Packet(p)) = codec::parse_message(msg) {
                    drops.push(p.id, Verdict::Drop, None);
                }
            }
            drops.flush()?;
            match answer {
                Some(0) => return Ok(()),
                Some(errno) => return Err(io::Error::from_raw_os_error(errno)),
                None => {}
            }
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "no answer from the kernel to a queue configuration request",
        ))
    }
}

/// An `NFQNL_MSG_CONFIG` request for `queue` that asks for an answer.
fn config_message(seq: u32, queue: u16, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut m = Vec::with_capacity(64);
    m.extend_from_slice(&0u32.to_ne_bytes()); // the length, set below
    m.extend_from_slice(&((codec::NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG).to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    // The port id: the kernel's.
    m.extend_from_slice(&0u32.to_ne_bytes());
    // nfgenmsg: family (unused), version 0, the queue number (big-endian).
    m.extend_from_slice(&[libc::AF_UNSPEC as u8, 0]);
    m.extend_from_slice(&queue.to_be_bytes());
    for (ty, value) in attrs {
        m.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(value);
        m.resize(align4(m.len()), 0);
    }
    let len = m.len() as u32;
    m[..4].copy_from_slice(&len.to_ne_bytes());
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::netlink::attributes;

    /// The bind request, as the kernel reads it (nfnetlink_queue.c,
    /// nfqnl_recv_config): one message, the queue number in the nfgenmsg,
    /// each attribute aligned.
    #[test]
    fn a_bind_request_carries_the_whole_configuration() {
        let params = [0, 0, 0x02, 0x00, NFQNL_COPY_PACKET];
        let m = config_message(
            7,
            0x0102,
            &[
                (NFQA_CFG_CMD, &[NFQNL_CFG_CMD_BIND, 0, 0, 0]),
                (NFQA_CFG_PARAMS, &params),
                (NFQA_CFG_QUEUE_MAXLEN, &4096u32.to_be_bytes()),
                (NFQA_CFG_MASK, &5u32.to_be_bytes()),
                (NFQA_CFG_FLAGS, &4u32.to_be_bytes()),
            ],
        );
        assert_eq!(u32_ne(&m, 0) as usize, m.len());
        assert_eq!(m.len() % 4, 0);
        assert_eq!(u16_ne(&m, 4), (3 << 8) | 2);
        assert_eq!(u16_ne(&m, 6), NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(u32_ne(&m, 8), 7);
        assert_eq!(&m[16..20], &[0, 0, 1, 2]);
        let attrs: Vec<(u16, Vec<u8>)> =
            attributes(&m[20..]).map(|(t, v)| (t, v.to_vec())).collect();
        assert_eq!(
            attrs,
            [
                (NFQA_CFG_CMD, vec![1, 0, 0, 0]),
                (NFQA_CFG_PARAMS, params.to_vec()),
                (NFQA_CFG_QUEUE_MAXLEN, vec![0, 0, 0x10, 0]),
                (NFQA_CFG_MASK, vec![0, 0, 0, 5]),
                (NFQA_CFG_FLAGS, vec![0, 0, 0, 4]),
            ]
        );
    }
}
