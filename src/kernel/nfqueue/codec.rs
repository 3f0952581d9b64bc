//! The NFQUEUE protocol on the hot path, on the queue's own netlink socket:
//! many packets per `recvmmsg`, and verdicts coalesced into
//! `NFQNL_MSG_VERDICT_BATCH` runs, all of a batch's verdicts in one `send`.
//!
//! Hand-written because it is the per-packet path: nfq 0.2.5 reads one packet
//! per `recv` system call, allocates per packet, sends one verdict per
//! `sendto`, and has no batch verdict. This module reads and answers on the
//! queue's socket, which [`super::open`] opens and configures.
//!
//! Batch verdicts: `NFQNL_MSG_VERDICT_BATCH` with id N applies to *every*
//! packet of the queue still waiting with an id up to N. The kernel numbers a
//! queue's packets in the order it sends them, and we read them in that order,
//! so a run of consecutive packets with the same verdict and mark, flushed
//! after every earlier run, is exactly one batch verdict.

use crate::kernel::netlink::{align4, attributes, messages, send_to_kernel};
use crate::kernel::netlink::{u16_ne, u32_be, u32_ne};
use crate::kernel::netlink::{NLMSG_ERROR, NLM_F_REQUEST};
use crate::reason::Verdict;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

pub(super) const NFNL_SUBSYS_QUEUE: u16 = 3;
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

/// Parses one netlink message of the queue subsystem: `msg` is its bytes, at
/// least a header's (16), fewer than its length says if the datagram was cut.
/// A cut packet message comes without its payload (the last attribute, so
/// the one cut), which the engine refuses: its packet still gets a verdict,
/// which a later batch verdict would otherwise give it unjudged. A cut error
/// message is an error (EPROTO if its errno is cut too).
pub(super) fn parse_message(msg: &[u8]) -> Option<Item<'_>> {
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
            count: 0,
        }
    }

    /// Waits for at least one datagram (up to the socket's receive timeout,
    /// unless `nonblocking`), then takes whatever else is queued, up to the
    /// [`BATCH`]. Returns how many datagrams were read.
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
        // SAFETY: hdrs holds BATCH headers,
        // each pointing at its own iovec, each iovec at its own slot of buf;
        // all outlive the call.
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
            // A datagram larger than its slot (MSG_TRUNC) comes cut, see
            // parse_message; it cannot happen with the copy range the slots
            // were sized for.
            self.lens[i] = (h.msg_len as usize).min(self.slot);
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
            for item in messages(d).filter_map(parse_message) {
                f(item);
            }
        }
    }
}

/// Where verdict messages go: the queue's socket, or a test's model of it.
pub trait Sink {
    /// Hands `buf` (whole netlink messages) to the kernel in one `send`.
    fn send(&mut self, buf: &[u8]) -> io::Result<()>;
}

impl Sink for BorrowedFd<'_> {
    #[inline]
    fn send(&mut self, buf: &[u8]) -> io::Result<()> {
        send_to_kernel(*self, buf).map(|_| ())
    }
}

/// Bytes handed to the kernel per `send` at most: a netlink datagram larger
/// than the socket's send buffer is refused (EMSGSIZE), so a backlog of
/// unsent verdicts goes in pieces of whole messages, in order.
const SEND_CHUNK: usize = 32 * 1024;

/// Unsent verdicts kept for resending at most (about 26,000 messages, several
/// times a queue's `maxlen`: the kernel holds at most that many packets
/// waiting for us, and each has one verdict). Past it the backlog is replaced
/// by one batch drop, see [`Verdicts::flush`].
const BACKLOG_MAX: usize = 1024 * 1024;

/// Verdicts of one batch, coalesced into runs, sent with one `send`.
///
/// A send that fails is never lost: a batch verdict with id N applies to every
/// packet still waiting with an id up to N, so a dropped packet whose verdict
/// was not delivered would be accepted by the next run of accepts. The failed
/// messages stay in the buffer, ahead of every later verdict, and go again
/// (in order: netlink applies the messages of a send in order, and a send that
/// fails applied none of them) at the next [`Verdicts::flush`].
pub struct Verdicts<S: Sink> {
    sink: S,
    queue: u16,
    /// Messages not yet accepted by the kernel: a failed send's, then the new ones.
    buf: Vec<u8>,
    /// The open run: (last id, verdict, mark to set, length).
    run: Option<(u32, Verdict, Option<u32>, u32)>,
    /// The id of the last verdict written to buf.
    last_id: u32,
    /// Messages written to buf (for statistics).
    pub messages: u64,
    /// Sends that failed (their messages were kept and resent).
    pub failed_sends: u64,
    /// Backlogs past [`BACKLOG_MAX`] replaced by one batch drop.
    pub collapsed: u64,
}

impl<'fd> Verdicts<BorrowedFd<'fd>> {
    pub fn new(fd: BorrowedFd<'fd>, queue: u16) -> Verdicts<BorrowedFd<'fd>> {
        Verdicts::with_sink(fd, queue)
    }
}

impl<S: Sink> Verdicts<S> {
    pub fn with_sink(sink: S, queue: u16) -> Verdicts<S> {
        Verdicts {
            sink,
            queue,
            buf: Vec::with_capacity(BATCH * 40),
            run: None,
            last_id: 0,
            messages: 0,
            failed_sends: 0,
            collapsed: 0,
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

    /// Accepts packet `id` handed back as `packet`.
    pub fn push_rewritten(&mut self, id: u32, packet: &[u8]) {
        self.push_changed(id, packet, |_| true);
    }

    /// Adds an accept verdict that hands the kernel `packet`, after
    /// `change`, in place of the queued one (a rewritten packet:
    /// NFQA_PAYLOAD). `change` works in the verdict's own buffer, so the
    /// packet is copied once, where it goes. The kernel takes it whole, cut
    /// or grown to its length, and checksums nothing: the changed packet
    /// must be complete with its checksums final.
    ///
    /// A packet too long for a netlink attribute (at most 65,531 bytes: its
    /// 16-bit length counts its header), or one that `change` refuses
    /// (false), is dropped instead. Whether it was accepted.
    pub fn push_changed(
        &mut self,
        id: u32,
        packet: &[u8],
        change: impl FnOnce(&mut [u8]) -> bool,
    ) -> bool {
        if packet.len() > u16::MAX as usize - 4 {
            self.push(id, Verdict::Drop, None);
            return false;
        }
        self.close_run();
        let start = self.buf.len();
        self.write(NFQNL_MSG_VERDICT, id, Verdict::Accept, None);
        // The verdict message just written gets the payload attribute.
        let attr_len = 4 + packet.len();
        let b = &mut self.buf;
        b.extend_from_slice(&(attr_len as u16).to_ne_bytes());
        b.extend_from_slice(&NFQA_PAYLOAD.to_ne_bytes());
        let body = b.len();
        b.extend_from_slice(packet);
        if !change(&mut b[body..]) {
            // The verdict written above is taken back.
            b.truncate(start);
            self.messages -= 1;
            self.push(id, Verdict::Drop, None);
            return false;
        }
        b.resize(b.len() + (align4(attr_len) - attr_len), 0);
        let total = (b.len() - start) as u32;
        b[start..start + 4].copy_from_slice(&total.to_ne_bytes());
        true
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
        self.last_id = id;
        self.messages += 1;
    }

    /// Verdicts are waiting to be sent (a failed send's, to be resent).
    pub fn pending(&self) -> bool {
        !self.buf.is_empty() || self.run.is_some()
    }

    /// Sends every verdict added since the last successful flush, in order.
    /// On failure the unsent messages are kept, ahead of any later verdict,
    /// for the next flush to send again; the error says why.
    ///
    /// A backlog past [`BACKLOG_MAX`] (the kernel refusing verdicts for a
    /// long time) is replaced by one batch verdict that drops every packet up
    /// to its last id: fail closed, in a bounded buffer, and nothing that was
    /// decided as a drop is ever accepted.
    pub fn flush(&mut self) -> io::Result<()> {
        self.close_run();
        if self.buf.len() > BACKLOG_MAX {
            self.buf.clear();
            self.collapsed += 1;
            self.write(NFQNL_MSG_VERDICT_BATCH, self.last_id, Verdict::Drop, None);
        }
        let mut sent = 0;
        while sent < self.buf.len() {
            let end = self.chunk_end(sent);
            if let Err(e) = self.sink.send(&self.buf[sent..end]) {
                self.failed_sends += 1;
                self.buf.drain(..sent);
                return Err(e);
            }
            sent = end;
        }
        self.buf.clear();
        Ok(())
    }

    /// The end of the chunk starting at `from`: whole messages, at most
    /// [`SEND_CHUNK`] bytes (at least one message).
    fn chunk_end(&self, from: usize) -> usize {
        let mut end = from;
        while end < self.buf.len() {
            let len = align4(u32_ne(&self.buf, end) as usize);
            if end > from && end + len - from > SEND_CHUNK {
                break;
            }
            end += len;
        }
        end
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

    /// A sink that keeps what is sent, in one buffer.
    struct Sent(Vec<u8>);

    impl Sink for Sent {
        fn send(&mut self, buf: &[u8]) -> io::Result<()> {
            self.0.extend_from_slice(buf);
            Ok(())
        }
    }

    #[test]
    fn a_rewritten_verdict_carries_the_packet_and_runs_stay_in_order() {
        let mut v = Verdicts::with_sink(Sent(Vec::new()), 3);
        v.push(1, Verdict::Accept, None);
        v.push_rewritten(2, b"abcde");
        v.push(3, Verdict::Drop, None);
        v.flush().unwrap();
        let sent = v.sink.0.clone();
        // Three messages: the verdict of 1, 2 with its payload, then 3.
        let mut at = 0;
        let mut lens = Vec::new();
        while at < sent.len() {
            let len = u32_ne(&sent, at) as usize;
            lens.push(len);
            at += align4(len);
        }
        assert_eq!(lens, [32, 32 + 12, 32]);
        let second = &sent[32..32 + 44];
        assert_eq!(u16::from_ne_bytes([second[32], second[33]]), 9);
        assert_eq!(u16::from_ne_bytes([second[34], second[35]]), NFQA_PAYLOAD);
        assert_eq!(&second[36..41], b"abcde");
        assert_eq!(&second[28..32], &2u32.to_be_bytes());
    }

    #[test]
    fn a_changed_verdict_carries_the_change_and_a_refused_change_drops() {
        let mut v = Verdicts::with_sink(Sent(Vec::new()), 2);
        assert!(v.push_changed(1, b"abcde", |b| {
            b.make_ascii_uppercase();
            true
        }));
        assert!(!v.push_changed(2, b"fghij", |b| {
            b[0] = b'!';
            false
        }));
        v.flush().unwrap();
        let sent = v.sink.0.clone();
        // 1 accepted with its changed payload, then 2 a plain drop: nothing
        // of the refused change is left behind.
        assert_eq!(v.messages, 2);
        assert_eq!(sent.len(), 44 + 32, "{sent:?}");
        assert_eq!(u32_ne(&sent, 0), 32 + 12);
        assert_eq!(&sent[36..41], b"ABCDE");
        let second = &sent[44..];
        assert_eq!(u32_ne(second, 0), 32);
        assert_eq!(&second[28..32], &2u32.to_be_bytes());
        assert_eq!(u32_be(second, 24), NF_DROP);
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
    }

    /// A netlink error message (as the kernel reports a refused verdict).
    fn error_msg(errno: i32) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&36u32.to_ne_bytes());
        m.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(&(-errno).to_ne_bytes());
        m.extend_from_slice(&[0; 16]); // the refused message's header
        m
    }

    #[derive(Clone, Debug, PartialEq)]
    enum Seen {
        Packet(u32, Vec<u8>),
        Error(i32),
    }

    /// What the receiver hands on from a datagram.
    fn seen(datagram: &[u8]) -> Vec<Seen> {
        messages(datagram)
            .filter_map(parse_message)
            .map(|item| match item {
                Item::Packet(p) => Seen::Packet(p.id, p.payload.to_vec()),
                Item::Error(e) => Seen::Error(e),
            })
            .collect()
    }

    /// A datagram cut at every offset, from 0 to whole: each message wholly
    /// there parses as in the whole datagram, nothing after the cut message
    /// comes, and the cut message, with `have` of its bytes, comes as
    /// - nothing, with less than a header (16 bytes), or for a packet whose
    ///   id (in the first attribute, after the 20 bytes of headers) is cut;
    /// - its packet with no payload: the payload is cut, and the engine
    ///   refuses an empty packet, so it still gets a verdict; never part of
    ///   a payload, which could pass for a whole, shorter packet (the whole
    ///   payload, when only the padding after it is cut);
    /// - its error, or EPROTO when the errno (bytes 16 to 20) is cut.
    #[test]
    fn a_datagram_cut_anywhere_gives_whole_messages_and_a_clear_cut_one() {
        let payloads: [&[u8]; 2] = [b"hello", b"world!!"];
        let msgs = [
            packet_msg(41, payloads[0], Some(0x40)),
            error_msg(libc::ENOENT),
            packet_msg(42, payloads[1], None),
        ];
        let datagram = msgs.concat();
        let whole = seen(&datagram);
        assert_eq!(
            whole,
            [
                Seen::Packet(41, payloads[0].to_vec()),
                Seen::Error(libc::ENOENT),
                Seen::Packet(42, payloads[1].to_vec()),
            ]
        );
        let cut_one = |m: &[u8], whole: &Seen, have: usize| -> Option<Seen> {
            if have < 16 {
                return None;
            }
            match whole {
                Seen::Error(e) => Some(Seen::Error(if have >= 20 { *e } else { libc::EPROTO })),
                Seen::Packet(_, _) if have < 20 + u16_ne(m, 20) as usize => None,
                Seen::Packet(id, payload) => {
                    let padding = align4(payload.len()) - payload.len();
                    let kept = if have >= m.len() - padding {
                        payload.clone()
                    } else {
                        Vec::new()
                    };
                    Some(Seen::Packet(*id, kept))
                }
            }
        };
        for cut in 0..=datagram.len() {
            let mut want = Vec::new();
            let mut start = 0;
            for (m, w) in msgs.iter().zip(&whole) {
                let have = cut.saturating_sub(start);
                if have >= m.len() {
                    want.push(w.clone());
                } else {
                    want.extend(cut_one(m, w, have));
                    break;
                }
                start += m.len();
            }
            assert_eq!(seen(&datagram[..cut]), want, "cut at {cut}");
        }
    }

    #[test]
    fn coalesces_runs() {
        let mut v = Verdicts::with_sink(Model::default(), 5);
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

    /// The kernel's side of a queue, as far as verdicts go: packets waiting
    /// by id, and what each was given. A send may be made to fail.
    #[derive(Default)]
    struct Model {
        waiting: std::collections::BTreeSet<u32>,
        given: std::collections::BTreeMap<u32, Verdict>,
        /// Sends to fail, by their number (0: the first send).
        fail: std::collections::BTreeSet<u32>,
        sends: u32,
    }

    impl Sink for Model {
        fn send(&mut self, buf: &[u8]) -> io::Result<()> {
            let n = self.sends;
            self.sends += 1;
            if self.fail.contains(&n) {
                return Err(io::Error::from_raw_os_error(libc::ENOBUFS));
            }
            let mut at = 0;
            while at < buf.len() {
                let len = u32_ne(buf, at) as usize;
                let ty = u16_ne(buf, at + 4) & 0xff;
                let verdict = match u32_be(buf, at + 24) {
                    NF_ACCEPT => Verdict::Accept,
                    _ => Verdict::Drop,
                };
                let id = u32_be(buf, at + 28);
                // VERDICT: that packet; VERDICT_BATCH: every waiting one up to id.
                let covered: Vec<u32> = match ty {
                    NFQNL_MSG_VERDICT => self.waiting.range(id..=id).copied().collect(),
                    _ => self.waiting.range(..=id).copied().collect(),
                };
                for c in covered {
                    self.waiting.remove(&c);
                    self.given.insert(c, verdict);
                }
                at += align4(len);
            }
            Ok(())
        }
    }

    /// Runs batches of decided verdicts through `Verdicts` over a model
    /// kernel whose sends fail as told, then flushes until a send succeeds;
    /// returns what the kernel gave each packet.
    fn deliver(batches: &[Vec<Verdict>], fail: &[u32]) -> (Vec<Verdict>, Model) {
        let mut model = Model::default();
        model.fail.extend(fail);
        let mut tx = Verdicts::with_sink(model, 0);
        let mut id = 0u32;
        let mut decided = Vec::new();
        for batch in batches {
            for &v in batch {
                id += 1;
                tx.sink.waiting.insert(id);
                decided.push(v);
                tx.push(id, v, None);
            }
            let _ = tx.flush();
        }
        for _ in 0..fail.len() + 1 {
            if tx.flush().is_ok() {
                break;
            }
        }
        assert!(!tx.pending());
        (decided, tx.sink)
    }

    /// The case that motivated resending: accept, drop, accept in a batch
    /// whose send fails, then a run of accepts sent as one batch verdict.
    /// Without the resend that batch verdict would accept the dropped packet.
    #[test]
    fn a_failed_send_never_lets_a_later_batch_accept_a_drop() {
        use Verdict::{Accept, Drop};
        let batches = [vec![Accept, Drop, Accept], vec![Accept, Accept, Accept]];
        let (decided, model) = deliver(&batches, &[0]);
        assert!(model.waiting.is_empty());
        let given: Vec<Verdict> = model.given.values().copied().collect();
        assert_eq!(given, decided);
        assert_eq!(model.given[&2], Drop);
    }

    proptest::proptest! {
        /// Whatever the verdicts and whichever sends fail, every packet is
        /// given exactly the verdict decided for it.
        #[test]
        fn every_packet_gets_its_own_verdict_whatever_sends_fail(
            batches in proptest::collection::vec(
                proptest::collection::vec(proptest::bool::ANY, 1..20), 1..12),
            fail in proptest::collection::btree_set(0u32..12, 0..6),
        ) {
            let batches: Vec<Vec<Verdict>> = batches
                .iter()
                .map(|b| b.iter().map(|&a| if a { Verdict::Accept } else { Verdict::Drop }).collect())
                .collect();
            let fail: Vec<u32> = fail.into_iter().collect();
            let (decided, model) = deliver(&batches, &fail);
            proptest::prop_assert!(model.waiting.is_empty());
            let given: Vec<Verdict> = model.given.values().copied().collect();
            proptest::prop_assert_eq!(given, decided);
        }
    }

    /// A backlog past its bound (the kernel refusing every verdict for
    /// long) becomes one batch drop: bounded, and nothing decided as a drop
    /// is accepted; packets that were to be accepted are dropped instead.
    #[test]
    fn an_overgrown_backlog_fails_closed() {
        let mut model = Model::default();
        model.fail.extend(0..10_000);
        let mut tx = Verdicts::with_sink(model, 0);
        let mut id = 0u32;
        while tx.collapsed == 0 {
            for k in 0..BATCH as u32 {
                id += 1;
                tx.sink.waiting.insert(id);
                let v = if k % 7 == 3 {
                    Verdict::Drop
                } else {
                    Verdict::Accept
                };
                tx.push(id, v, None);
            }
            assert!(tx.flush().is_err());
            assert!(tx.buf.len() <= BACKLOG_MAX + BATCH * 40);
        }
        // One message left: the batch drop up to the last id.
        assert_eq!(tx.buf.len(), 32);
        tx.sink.fail.clear();
        tx.flush().unwrap();
        assert!(tx.sink.waiting.is_empty());
        assert_eq!(tx.sink.given.len(), id as usize);
        assert!(tx.sink.given.values().all(|&v| v == Verdict::Drop));
    }

    /// A backlog larger than a send's limit goes in whole-message chunks.
    #[test]
    fn a_large_backlog_is_sent_in_chunks_of_whole_messages() {
        let mut model = Model::default();
        model.fail.insert(0);
        let mut tx = Verdicts::with_sink(model, 0);
        for id in 1..=2000u32 {
            tx.sink.waiting.insert(id);
            // Alternating: one message per packet.
            let v = if id % 2 == 0 {
                Verdict::Drop
            } else {
                Verdict::Accept
            };
            tx.push(id, v, None);
        }
        assert!(tx.flush().is_err());
        tx.flush().unwrap();
        assert!(tx.sink.sends > 2, "{} sends", tx.sink.sends);
        assert!(tx.sink.waiting.is_empty());
        for (id, v) in &tx.sink.given {
            assert_eq!(*v == Verdict::Drop, id % 2 == 0);
        }
    }
}
