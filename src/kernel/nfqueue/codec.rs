//! The NFQUEUE protocol on the hot path, on the queue's own netlink socket:
//! many packets per `recvmmsg`, and verdicts coalesced into
//! `NFQNL_MSG_VERDICT_BATCH` runs, all of a batch's verdicts in one `send`.
//!
//! Hand-written because it is the per-packet path: nfq 0.2.5 (which opens and
//! configures the queue, [`super::open`]) reads one packet per `recv` system
//! call, allocates per packet, sends one verdict per `sendto`, and has no batch
//! verdict. This module reads and answers on the same socket.
//!
//! Batch verdicts: `NFQNL_MSG_VERDICT_BATCH` with id N applies to *every*
//! packet of the queue still waiting with an id up to N. The kernel numbers a
//! queue's packets in the order it sends them, and we read them in that order,
//! so a run of consecutive packets with the same verdict and mark, flushed
//! after every earlier run, is exactly one batch verdict.

use crate::kernel::netlink::{align4, attributes, send_to_kernel, u16_ne, u32_be, u32_ne};
use crate::kernel::netlink::{NLMSG_ERROR, NLM_F_REQUEST};
use crate::reason::Verdict;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_VERDICT: u16 = 1;
const NFQNL_MSG_VERDICT_BATCH: u16 = 3;

const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_MARK: u16 = 3;
const NFQA_IFINDEX_INDEV: u16 = 5;
const NFQA_IFINDEX_OUTDEV: u16 = 6;
const NFQA_PAYLOAD: u16 = 10;
const NFQA_CAP_LEN: u16 = 13;
const NFQA_SKB_INFO: u16 = 14;
const NFQA_SKB_CSUMNOTREADY: u32 = 1;

const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;

/// Packets read per `recvmmsg` at most.
pub const BATCH: usize = 64;

/// One packet the kernel queued, borrowed from the receive buffer: its
/// queue id and metadata around the IP packet the engine judges.
#[derive(Clone, Copy, Debug)]
pub struct QueuedPacket<'a> {
    pub id: u32,
    pub indev: u32,
    pub outdev: u32,
    /// The packet's mark (skb->mark); 0 when the kernel sent none.
    pub mark: u32,
    /// Length on the wire (before the copy range cut it).
    pub wire_len: usize,
    /// The checksum is computed (false: partial, GSO or offloaded).
    pub checksum_ready: bool,
    pub payload: &'a [u8],
}

/// What a received datagram held.
#[derive(Debug)]
pub enum Item<'a> {
    Packet(QueuedPacket<'a>),
    /// An error report for an earlier verdict (errno), or another netlink error.
    Error(i32),
}

/// Parses one netlink message of the queue subsystem (`msg` is exactly its bytes).
fn parse_message(msg: &[u8]) -> Option<Item<'_>> {
    let ty = u16_ne(msg, 4);
    if ty == NLMSG_ERROR {
        let errno = if msg.len() >= 20 {
            -(u32_ne(msg, 16) as i32)
        } else {
            libc::EPROTO
        };
        return (errno != 0).then_some(Item::Error(errno));
    }
    if ty != (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET || msg.len() < 20 {
        return None;
    }
    let mut p = QueuedPacket {
        id: 0,
        indev: 0,
        outdev: 0,
        mark: 0,
        wire_len: 0,
        checksum_ready: true,
        payload: &[],
    };
    let mut have_id = false;
    let mut cap_len = None;
    // After nlmsghdr (16 bytes) and nfgenmsg (4).
    for (ty, v) in attributes(&msg[20..]) {
        match ty {
            NFQA_PACKET_HDR if v.len() >= 4 => {
                p.id = u32_be(v, 0);
                have_id = true;
            }
            NFQA_MARK if v.len() >= 4 => p.mark = u32_be(v, 0),
            NFQA_IFINDEX_INDEV if v.len() >= 4 => p.indev = u32_be(v, 0),
            NFQA_IFINDEX_OUTDEV if v.len() >= 4 => p.outdev = u32_be(v, 0),
            NFQA_CAP_LEN if v.len() >= 4 => cap_len = Some(u32_be(v, 0) as usize),
            NFQA_SKB_INFO if v.len() >= 4 => {
                p.checksum_ready = u32_be(v, 0) & NFQA_SKB_CSUMNOTREADY == 0
            }
            NFQA_PAYLOAD => p.payload = v,
            _ => {}
        }
    }
    if !have_id {
        return None;
    }
    p.wire_len = cap_len.unwrap_or(p.payload.len()).max(p.payload.len());
    Some(Item::Packet(p))
}

/// Reads many queued packets per system call.
pub struct Receiver<'fd> {
    fd: BorrowedFd<'fd>,
    slot: usize,
    buf: Vec<u64>,
    lens: [usize; BATCH],
    truncated: [bool; BATCH],
    count: usize,
}

impl<'fd> Receiver<'fd> {
    /// `copy_range`: the queue's copy range; each slot holds one packet message.
    pub fn new(fd: BorrowedFd<'fd>, copy_range: u16) -> Receiver<'fd> {
        let slot = align4(copy_range as usize + 1024).next_multiple_of(64);
        Receiver {
            fd,
            slot,
            buf: vec![0u64; slot * BATCH / 8],
            lens: [0; BATCH],
            truncated: [false; BATCH],
            count: 0,
        }
    }

    /// Waits for at least one datagram (up to the socket's receive timeout,
    /// unless `nonblocking`), then takes whatever else is queued, up to [`BATCH`].
    /// Returns how many datagrams were read.
    pub fn recv(&mut self, nonblocking: bool) -> io::Result<usize> {
        let base = self.buf.as_mut_ptr() as *mut u8;
        // SAFETY: iovec and mmsghdr are plain old data (pointers, lengths,
        // flags), for which all-zero bytes are a valid value.
        let mut iovs: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut hdrs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..BATCH {
            // SAFETY: buf holds BATCH slots of self.slot bytes, so slot i
            // starts inside it.
            iovs[i].iov_base = unsafe { base.add(i * self.slot) } as *mut libc::c_void;
            iovs[i].iov_len = self.slot;
            hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
            hdrs[i].msg_hdr.msg_iovlen = 1;
        }
        let flags = if nonblocking {
            libc::MSG_DONTWAIT
        } else {
            libc::MSG_WAITFORONE
        };
        // SAFETY: hdrs holds BATCH headers, each pointing at its own iovec,
        // each iovec at its own slot of buf; all outlive the call.
        let n = unsafe {
            libc::recvmmsg(
                self.fd.as_raw_fd(),
                hdrs.as_mut_ptr(),
                BATCH as libc::c_uint,
                flags,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            self.count = 0;
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        for (i, h) in hdrs[..n].iter().enumerate() {
            self.lens[i] = (h.msg_len as usize).min(self.slot);
            self.truncated[i] = h.msg_hdr.msg_flags & libc::MSG_TRUNC != 0;
        }
        self.count = n;
        Ok(n)
    }

    /// Calls `f` for every message of the datagrams last read, in order.
    pub fn for_each(&self, mut f: impl FnMut(Item<'_>)) {
        // SAFETY: buf is an initialised Vec<u64>: its bytes are valid u8s,
        // and u8 needs no alignment; u64 storage only aligns the slots.
        let bytes = unsafe {
            std::slice::from_raw_parts(self.buf.as_ptr() as *const u8, self.buf.len() * 8)
        };
        for i in 0..self.count {
            let d = &bytes[i * self.slot..i * self.slot + self.lens[i]];
            if self.truncated[i] {
                // Larger than a slot: cannot happen with the copy range the
                // slots were sized for. The packet id is at the start; the
                // payload is cut, which the engine refuses (truncated).
            }
            let mut at = 0;
            while at + 16 <= d.len() {
                let len = u32_ne(d, at) as usize;
                if len < 16 || at + len > d.len() {
                    break;
                }
                if let Some(item) = parse_message(&d[at..at + len]) {
                    f(item);
                }
                at += align4(len);
            }
        }
    }
}

/// Verdicts of one batch, coalesced into runs, sent with one `send`.
pub struct Verdicts<'fd> {
    fd: Option<BorrowedFd<'fd>>,
    queue: u16,
    buf: Vec<u8>,
    /// The open run: (last id, verdict, mark to set, length).
    run: Option<(u32, Verdict, Option<u32>, u32)>,
    /// Messages written to buf (for statistics).
    pub messages: u64,
}

impl<'fd> Verdicts<'fd> {
    pub fn new(fd: BorrowedFd<'fd>, queue: u16) -> Verdicts<'fd> {
        Verdicts::unsent(Some(fd), queue)
    }

    /// `fd` None: verdicts are only encoded (tests).
    fn unsent(fd: Option<BorrowedFd<'fd>>, queue: u16) -> Verdicts<'fd> {
        Verdicts {
            fd,
            queue,
            buf: Vec::with_capacity(BATCH * 40),
            run: None,
            messages: 0,
        }
    }

    /// Adds the verdict of the next packet (ids must come in the order read).
    #[inline]
    pub fn push(&mut self, id: u32, verdict: Verdict, mark: Option<u32>) {
        match &mut self.run {
            Some((last, v, m, n))
                if *v == verdict && *m == mark && id.wrapping_sub(*last) < 1 << 30 =>
            {
                *last = id;
                *n += 1;
            }
            _ => {
                self.close_run();
                self.run = Some((id, verdict, mark, 1));
            }
        }
    }

    fn close_run(&mut self) {
        if let Some((id, verdict, mark, n)) = self.run.take() {
            let ty = if n == 1 {
                NFQNL_MSG_VERDICT
            } else {
                NFQNL_MSG_VERDICT_BATCH
            };
            self.write(ty, id, verdict, mark);
        }
    }

    fn write(&mut self, ty: u16, id: u32, verdict: Verdict, mark: Option<u32>) {
        let len: u32 = 16 + 4 + 12 + if mark.is_some() { 8 } else { 0 };
        let b = &mut self.buf;
        b.extend_from_slice(&len.to_ne_bytes());
        b.extend_from_slice(&((NFNL_SUBSYS_QUEUE << 8) | ty).to_ne_bytes());
        b.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes()); // seq
        b.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
        b.extend_from_slice(&[libc::AF_UNSPEC as u8, 0]);
        b.extend_from_slice(&self.queue.to_be_bytes());
        b.extend_from_slice(&12u16.to_ne_bytes());
        b.extend_from_slice(&NFQA_VERDICT_HDR.to_ne_bytes());
        let v = match verdict {
            Verdict::Accept => NF_ACCEPT,
            Verdict::Drop => NF_DROP,
        };
        b.extend_from_slice(&v.to_be_bytes());
        b.extend_from_slice(&id.to_be_bytes());
        if let Some(m) = mark {
            b.extend_from_slice(&8u16.to_ne_bytes());
            b.extend_from_slice(&NFQA_MARK.to_ne_bytes());
            b.extend_from_slice(&m.to_be_bytes());
        }
        self.messages += 1;
    }

    /// Sends every verdict added since the last flush. Netlink processes the
    /// messages of one send in order.
    pub fn flush(&mut self) -> io::Result<()> {
        self.close_run();
        if self.buf.is_empty() {
            return Ok(());
        }
        let Some(fd) = self.fd else {
            self.buf.clear();
            return Ok(());
        };
        let sent = send_to_kernel(fd, &self.buf);
        self.buf.clear();
        sent.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet_msg(id: u32, payload: &[u8], mark: Option<u32>) -> Vec<u8> {
        let mut attrs = Vec::new();
        let mut attr = |ty: u16, v: &[u8]| {
            attrs.extend_from_slice(&((v.len() + 4) as u16).to_ne_bytes());
            attrs.extend_from_slice(&ty.to_ne_bytes());
            attrs.extend_from_slice(v);
            while attrs.len() % 4 != 0 {
                attrs.push(0);
            }
        };
        let mut hdr = id.to_be_bytes().to_vec();
        hdr.extend_from_slice(&[0x08, 0x00, 2, 0]);
        attr(NFQA_PACKET_HDR, &hdr);
        if let Some(m) = mark {
            attr(NFQA_MARK, &m.to_be_bytes());
        }
        attr(NFQA_IFINDEX_INDEV, &7u32.to_be_bytes());
        attr(NFQA_SKB_INFO, &1u32.to_be_bytes());
        attr(NFQA_CAP_LEN, &1500u32.to_be_bytes());
        attr(NFQA_PAYLOAD, payload);
        let mut m = Vec::new();
        m.extend_from_slice(&((20 + attrs.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&(NFNL_SUBSYS_QUEUE << 8).to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&[2, 0, 0, 1]);
        m.extend_from_slice(&attrs);
        m
    }

    #[test]
    fn parses_a_packet_message() {
        let m = packet_msg(42, b"hello", Some(0x40));
        match parse_message(&m) {
            Some(Item::Packet(p)) => {
                assert_eq!(p.id, 42);
                assert_eq!(p.mark, 0x40);
                assert_eq!(p.indev, 7);
                assert_eq!(p.outdev, 0);
                assert_eq!(p.wire_len, 1500);
                assert!(!p.checksum_ready);
                assert_eq!(p.payload, b"hello");
            }
            other => panic!("{other:?}"),
        }
        // Cut anywhere: never panics.
        for cut in 0..m.len() {
            let _ = parse_message(&m[..cut.max(20).min(m.len())]);
        }
    }

    #[test]
    fn coalesces_runs() {
        let mut v = Verdicts::unsent(None, 5);
        for id in 1..=3 {
            v.push(id, Verdict::Accept, None);
        }
        v.push(4, Verdict::Drop, None);
        v.push(5, Verdict::Accept, Some(1));
        v.push(6, Verdict::Accept, Some(1));
        v.close_run();
        assert_eq!(v.messages, 3);
        // batch(3, accept), verdict(4, drop), batch(6, accept, mark 1)
        let b = &v.buf;
        assert_eq!(u32_ne(b, 0), 32);
        assert_eq!(u16_ne(b, 4), (3 << 8) | NFQNL_MSG_VERDICT_BATCH);
        assert_eq!(u16_ne(b, 18), 5u16.to_be());
        assert_eq!(u32_be(b, 24), NF_ACCEPT);
        assert_eq!(u32_be(b, 28), 3);
        assert_eq!(u16_ne(b, 32 + 4), (3 << 8) | NFQNL_MSG_VERDICT);
        assert_eq!(u32_be(b, 32 + 24), NF_DROP);
        assert_eq!(u32_be(b, 32 + 28), 4);
        let third = 64;
        assert_eq!(u32_ne(b, third), 40);
        assert_eq!(u16_ne(b, third + 4), (3 << 8) | NFQNL_MSG_VERDICT_BATCH);
        assert_eq!(u32_be(b, third + 36), 1);
    }
}
