//! Handing a connection the SYN proxy opened to the kernel's conntrack, so
//! that the kernel forwards its data and rewrites it (hand-off mode).
//!
//! The kernel rewrites a connection's sequence numbers only when its
//! conntrack entry has the sequence-adjustment extension, and its
//! timestamps only with the SYN proxy extension (and the SYN proxy hooks
//! registered). An entry the kernel made itself has neither, and an
//! extension cannot be added to an entry once it is in the table; an
//! entry made over ctnetlink always has both. So the hand-over replaces the
//! kernel's entry:
//!
//! 1. `GET` the entry by its original tuple: it must exist and carry no NAT
//!    (a NAT binding would be lost with it); its mark is kept.
//! 2. `DELETE` it and `NEW` (create, exclusive) one in ESTABLISHED with
//!    liberal windows, the hand-off mark, the reply direction's sequence
//!    offset and the timestamp offset, in one datagram.
//!
//! The kernel handles a request to it within the `sendto`, so the answers
//! are read without waiting. (A packet of the connection that arrives
//! between the delete and the create gets an entry of the kernel's own,
//! which loses to the created one when the kernel confirms it: that packet
//! is dropped, and sent again.) Whatever fails, the connection stays in
//! userspace.
//!
//! Written by hand, like [`super::ctnetlink`]'s dump: four attributes more
//! than that, and no crate writes the sequence adjustment.

use super::ctnetlink::{
    CTA_IP_V4_DST, CTA_IP_V4_SRC, CTA_IP_V6_DST, CTA_IP_V6_SRC, CTA_MARK, CTA_PROTO_DST_PORT,
    CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_TUPLE_IP, CTA_TUPLE_ORIG, CTA_TUPLE_PROTO,
    CTA_TUPLE_REPLY, IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_NEW, NFNL_SUBSYS_CTNETLINK,
};
use super::netlink::{attributes, messages, send_to_kernel, u32_ne, NLMSG_ERROR, NLM_F_REQUEST};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

const IPCTNL_MSG_CT_DELETE: u16 = 2;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;

const CTA_STATUS: u16 = 3;
const CTA_PROTOINFO: u16 = 4;
const CTA_TIMEOUT: u16 = 7;
const CTA_SEQ_ADJ_REPLY: u16 = 16;
const CTA_SYNPROXY: u16 = 24;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
const CTA_PROTOINFO_TCP_WSCALE_ORIGINAL: u16 = 2;
const CTA_PROTOINFO_TCP_WSCALE_REPLY: u16 = 3;
const CTA_PROTOINFO_TCP_FLAGS_ORIGINAL: u16 = 4;
const CTA_PROTOINFO_TCP_FLAGS_REPLY: u16 = 5;
const CTA_SEQADJ_CORRECTION_POS: u16 = 1;
const CTA_SEQADJ_OFFSET_BEFORE: u16 = 2;
const CTA_SEQADJ_OFFSET_AFTER: u16 = 3;
const CTA_SYNPROXY_ISN: u16 = 1;
const CTA_SYNPROXY_ITS: u16 = 2;
const CTA_SYNPROXY_TSOFF: u16 = 3;

const IPS_SEEN_REPLY: u32 = 0x2;
const IPS_ASSURED: u32 = 0x4;
/// Already set on an entry ctnetlink creates: a status without it is refused.
const IPS_CONFIRMED: u32 = 0x8;
const IPS_NAT: u32 = 0x10 | 0x20;
/// The entry's sequence adjustment is on (set with `CTA_SEQ_ADJ_*`).
const IPS_SEQ_ADJUST: u32 = 0x40;
const TCP_CONNTRACK_ESTABLISHED: u8 = 3;
const TCP_FLAG_WINDOW_SCALE: u8 = 0x01;
const TCP_FLAG_BE_LIBERAL: u8 = 0x08;

/// One proxied connection, as the kernel's entry is to carry it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handed {
    pub client: SocketAddr,
    pub server: SocketAddr,
    /// Added to the server's sequence numbers (taken from the client's
    /// acknowledgements and SACK edges).
    pub seq_offset: u32,
    /// The kernel SYN proxy's `tsoff`: taken from the server's TSval, added
    /// to the client's TSecr.
    pub timestamp_offset: u32,
    /// The window scales in use (client's, server's), when both sides
    /// scale.
    pub scales: Option<(u8, u8)>,
    /// The mark bit(s) of hand-off mode, added to the entry's mark.
    pub mark: u32,
    /// Seconds before the kernel's entry expires without packets (each
    /// packet sets the kernel's own timeout).
    pub timeout: u32,
}

/// Why a connection was not handed over (it stays in userspace).
#[derive(Debug, thiserror::Error)]
pub enum HandOverError {
    #[error("the kernel tracks no such connection under the addresses FORWARD sees")]
    NotTracked,
    #[error("the kernel's entry carries NAT, which a new entry would lose")]
    Nat,
    #[error("the kernel refused: {0}")]
    Refused(io::Error),
    #[error("no answer from the kernel")]
    NoAnswer,
}

/// A ctnetlink socket that hands connections over, with a buffer made once.
pub struct HandOver {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl HandOver {
    pub fn open() -> io::Result<HandOver> {
        Ok(HandOver {
            fd: super::ctnetlink::open_socket()?,
            seq: 0,
            buf: Vec::with_capacity(4096),
        })
    }

    /// Replaces the kernel's entry of `c` by one that translates it.
    pub fn hand_over(&mut self, c: &Handed) -> Result<(), HandOverError> {
        self.seq = self.seq.wrapping_add(1);
        let get = self.seq;
        self.buf.clear();
        get_request(&mut self.buf, c, get);
        send_to_kernel(self.fd.as_fd(), &self.buf).map_err(HandOverError::Refused)?;
        let (status, mark) = match self.answer(get)? {
            Answer::Entry { status, mark } => (status, mark),
            Answer::Done => return Err(HandOverError::NoAnswer),
        };
        if status & IPS_NAT != 0 {
            return Err(HandOverError::Nat);
        }
        // Delete and create in one datagram: the kernel runs both at once.
        self.seq = self.seq.wrapping_add(2);
        let (delete, create) = (self.seq.wrapping_sub(1), self.seq);
        self.buf.clear();
        delete_request(&mut self.buf, c, delete);
        create_request(&mut self.buf, c, mark | c.mark, create);
        send_to_kernel(self.fd.as_fd(), &self.buf).map_err(HandOverError::Refused)?;
        // What counts is the create (a delete that found nothing, the entry
        // gone meanwhile, does not matter): both answers are read, so that
        // none is left for a later request.
        let _ = self.answer(delete);
        match self.answer(create) {
            Ok(Answer::Done) => Ok(()),
            // No answer: whether the entry is the new one decides (it has
            // the sequence adjustment on), or both conntrackd and the
            // kernel would translate.
            Ok(Answer::Entry { .. }) | Err(HandOverError::NoAnswer) => {
                self.seq = self.seq.wrapping_add(1);
                let get = self.seq;
                self.buf.clear();
                get_request(&mut self.buf, c, get);
                send_to_kernel(self.fd.as_fd(), &self.buf).map_err(HandOverError::Refused)?;
                match self.answer(get)? {
                    Answer::Entry { status, .. } if status & IPS_SEQ_ADJUST != 0 => Ok(()),
                    _ => Err(HandOverError::NoAnswer),
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Sets the SYN proxy ISN of `c`'s kernel entry (see
    /// `Answers::kernel_reset`), keeping its timestamp offset.
    pub fn set_isn(&mut self, c: &Handed, isn: u32) -> Result<(), HandOverError> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        self.buf.clear();
        let at = header(&mut self.buf, IPCTNL_MSG_CT_NEW, 0, seq, c);
        put_tuple(&mut self.buf, CTA_TUPLE_ORIG, c.client, c.server);
        put_synproxy(&mut self.buf, isn, c.timestamp_offset);
        finish(&mut self.buf, at);
        send_to_kernel(self.fd.as_fd(), &self.buf).map_err(HandOverError::Refused)?;
        match self.answer(seq)? {
            Answer::Done => Ok(()),
            Answer::Entry { .. } => Err(HandOverError::NoAnswer),
        }
    }

    /// The kernel's answer to request `seq` (already queued: the kernel
    /// answered within the `sendto`). Answers to other requests are skipped.
    fn answer(&mut self, seq: u32) -> Result<Answer, HandOverError> {
        let mut entry = None;
        loop {
            self.buf.resize(8192, 0);
            // SAFETY: buf is valid for writes of its length for the call.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr() as *mut libc::c_void,
                    self.buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                return Err(HandOverError::NoAnswer);
            }
            for msg in messages(&self.buf[..n as usize]) {
                if msg.len() < 20 || u32_ne(msg, 8) != seq {
                    continue;
                }
                match read_answer(msg) {
                    Some(Ok(Answer::Entry { status, mark })) => {
                        entry = Some(Answer::Entry { status, mark })
                    }
                    // The ack ends the answer; an entry came before it.
                    Some(Ok(Answer::Done)) => return Ok(entry.unwrap_or(Answer::Done)),
                    Some(Err(e)) => return Err(e),
                    None => {}
                }
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// The entry asked for: its status and mark.
    Entry { status: u32, mark: u32 },
    /// The acknowledgement (error 0).
    Done,
}

/// One message of an answer: an entry, an ack, an error, or (`None`)
/// something else.
fn read_answer(msg: &[u8]) -> Option<Result<Answer, HandOverError>> {
    let ty = u16::from_ne_bytes([msg[4], msg[5]]);
    if ty == NLMSG_ERROR {
        let errno = i32::from_ne_bytes(msg.get(16..20)?.try_into().ok()?);
        return Some(match -errno {
            0 => Ok(Answer::Done),
            libc::ENOENT => Err(HandOverError::NotTracked),
            e => Err(HandOverError::Refused(io::Error::from_raw_os_error(e))),
        });
    }
    if ty != (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW {
        return None;
    }
    let be32 = |want| {
        attributes(&msg[20..])
            .find(|&(t, _)| t == want)
            .and_then(|(_, v)| Some(u32::from_be_bytes(v.get(..4)?.try_into().ok()?)))
    };
    Some(Ok(Answer::Entry {
        status: be32(CTA_STATUS).unwrap_or(0),
        mark: be32(CTA_MARK).unwrap_or(0),
    }))
}

/// Appends a netlink attribute; returns where it starts (to close a nest).
fn put(out: &mut Vec<u8>, ty: u16, value: &[u8]) -> usize {
    let at = out.len();
    out.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(super::netlink::align4(out.len()), 0);
    at
}

/// Opens a nested attribute; [`close`] sets its length.
fn open(out: &mut Vec<u8>, ty: u16) -> usize {
    put(out, ty | NLA_F_NESTED, &[])
}

fn close(out: &mut [u8], at: usize) {
    let len = (out.len() - at) as u16;
    out[at..at + 2].copy_from_slice(&len.to_ne_bytes());
}

fn put_be32(out: &mut Vec<u8>, ty: u16, v: u32) {
    put(out, ty, &v.to_be_bytes());
}

fn put_tuple(out: &mut Vec<u8>, ty: u16, src: SocketAddr, dst: SocketAddr) {
    let tuple = open(out, ty);
    let ip = open(out, CTA_TUPLE_IP);
    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            put(out, CTA_IP_V4_SRC, &s.octets());
            put(out, CTA_IP_V4_DST, &d.octets());
        }
        (s, d) => {
            put(out, CTA_IP_V6_SRC, &to_v6(s).octets());
            put(out, CTA_IP_V6_DST, &to_v6(d).octets());
        }
    }
    close(out, ip);
    let proto = open(out, CTA_TUPLE_PROTO);
    put(out, CTA_PROTO_NUM, &[libc::IPPROTO_TCP as u8]);
    put(out, CTA_PROTO_SRC_PORT, &src.port().to_be_bytes());
    put(out, CTA_PROTO_DST_PORT, &dst.port().to_be_bytes());
    close(out, proto);
    close(out, tuple);
}

fn to_v6(a: IpAddr) -> std::net::Ipv6Addr {
    match a {
        IpAddr::V4(a) => a.to_ipv6_mapped(),
        IpAddr::V6(a) => a,
    }
}

/// Starts a message; [`finish`] sets its length.
fn header(out: &mut Vec<u8>, ty: u16, flags: u16, seq: u32, c: &Handed) -> usize {
    let at = out.len();
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | ty).to_ne_bytes());
    out.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK | flags).to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    let family = if c.client.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    out.extend_from_slice(&[family as u8, 0, 0, 0]);
    at
}

fn finish(out: &mut [u8], at: usize) {
    let len = (out.len() - at) as u32;
    out[at..at + 4].copy_from_slice(&len.to_ne_bytes());
}

fn get_request(out: &mut Vec<u8>, c: &Handed, seq: u32) {
    let at = header(out, IPCTNL_MSG_CT_GET, 0, seq, c);
    put_tuple(out, CTA_TUPLE_ORIG, c.client, c.server);
    finish(out, at);
}

fn delete_request(out: &mut Vec<u8>, c: &Handed, seq: u32) {
    let at = header(out, IPCTNL_MSG_CT_DELETE, 0, seq, c);
    put_tuple(out, CTA_TUPLE_ORIG, c.client, c.server);
    finish(out, at);
}

/// The new entry: ESTABLISHED, seen both ways and assured, liberal windows
/// (conntrackd judged the handshake; the kernel picks the windows up from
/// the next packets), `mark`, and both offsets.
fn create_request(out: &mut Vec<u8>, c: &Handed, mark: u32, seq: u32) {
    let at = header(out, IPCTNL_MSG_CT_NEW, NLM_F_CREATE | NLM_F_EXCL, seq, c);
    put_tuple(out, CTA_TUPLE_ORIG, c.client, c.server);
    put_tuple(out, CTA_TUPLE_REPLY, c.server, c.client);
    put_be32(
        out,
        CTA_STATUS,
        IPS_CONFIRMED | IPS_SEEN_REPLY | IPS_ASSURED,
    );
    put_be32(out, CTA_TIMEOUT, c.timeout);
    put_be32(out, CTA_MARK, mark);
    let info = open(out, CTA_PROTOINFO);
    let tcp = open(out, CTA_PROTOINFO_TCP);
    put(out, CTA_PROTOINFO_TCP_STATE, &[TCP_CONNTRACK_ESTABLISHED]);
    let flags = TCP_FLAG_BE_LIBERAL | c.scales.map_or(0, |_| TCP_FLAG_WINDOW_SCALE);
    let mask = TCP_FLAG_BE_LIBERAL | TCP_FLAG_WINDOW_SCALE;
    put(out, CTA_PROTOINFO_TCP_FLAGS_ORIGINAL, &[flags, mask]);
    put(out, CTA_PROTOINFO_TCP_FLAGS_REPLY, &[flags, mask]);
    if let Some((client, server)) = c.scales {
        put(out, CTA_PROTOINFO_TCP_WSCALE_ORIGINAL, &[client]);
        put(out, CTA_PROTOINFO_TCP_WSCALE_REPLY, &[server]);
    }
    close(out, tcp);
    close(out, info);
    let adj = open(out, CTA_SEQ_ADJ_REPLY);
    put_be32(out, CTA_SEQADJ_CORRECTION_POS, 0);
    put_be32(out, CTA_SEQADJ_OFFSET_BEFORE, c.seq_offset);
    put_be32(out, CTA_SEQADJ_OFFSET_AFTER, c.seq_offset);
    close(out, adj);
    // The ISN matters only at a server's RST, when the kernel's SYN proxy
    // hook sets the sequence offset anew from it: conntrackd sets it then
    // (`HandOver::set_isn`). ITS serves only the kernel proxy's own
    // handshake, which this entry (created ESTABLISHED) never goes through.
    put_synproxy(out, 0, c.timestamp_offset);
    finish(out, at);
}

fn put_synproxy(out: &mut Vec<u8>, isn: u32, timestamp_offset: u32) {
    let proxy = open(out, CTA_SYNPROXY);
    put_be32(out, CTA_SYNPROXY_ISN, isn);
    put_be32(out, CTA_SYNPROXY_ITS, 0);
    put_be32(out, CTA_SYNPROXY_TSOFF, timestamp_offset);
    close(out, proxy);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handed() -> Handed {
        Handed {
            client: "198.18.0.2:40000".parse().unwrap(),
            server: "198.19.0.2:7000".parse().unwrap(),
            seq_offset: 0xfff0_0001,
            timestamp_offset: 77,
            scales: Some((7, 9)),
            mark: 0x2000_0000,
            timeout: 600,
        }
    }

    fn find(attrs: &[u8], ty: u16) -> &[u8] {
        attributes(attrs)
            .find(|&(t, _)| t == ty)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("attribute {ty} missing"))
    }

    fn be32(v: &[u8]) -> u32 {
        u32::from_be_bytes(v.try_into().unwrap())
    }

    #[test]
    fn the_new_entry_carries_the_offsets_the_mark_and_established() {
        let mut out = Vec::new();
        create_request(&mut out, &handed(), 0x2000_0005, 9);
        let msgs: Vec<_> = messages(&out).collect();
        assert_eq!(msgs.len(), 1);
        assert_eq!(u32_ne(&out, 0) as usize, out.len());
        let flags = u16::from_ne_bytes([out[6], out[7]]);
        assert_eq!(flags, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL);
        assert_eq!(out[16], libc::AF_INET as u8);
        let body = &out[20..];
        let reply = find(body, CTA_TUPLE_REPLY);
        let ip = find(reply, CTA_TUPLE_IP);
        assert_eq!(find(ip, CTA_IP_V4_SRC), &[198, 19, 0, 2]);
        let ports = find(reply, CTA_TUPLE_PROTO);
        assert_eq!(find(ports, CTA_PROTO_DST_PORT), &40000u16.to_be_bytes());
        assert_eq!(be32(find(body, CTA_STATUS)), 0xe);
        assert_eq!(be32(find(body, CTA_MARK)), 0x2000_0005);
        assert_eq!(be32(find(body, CTA_TIMEOUT)), 600);
        let tcp = find(find(body, CTA_PROTOINFO), CTA_PROTOINFO_TCP);
        assert_eq!(find(tcp, CTA_PROTOINFO_TCP_STATE), &[3]);
        assert_eq!(find(tcp, CTA_PROTOINFO_TCP_WSCALE_REPLY), &[9]);
        assert_eq!(find(tcp, CTA_PROTOINFO_TCP_FLAGS_ORIGINAL), &[0x09, 0x09]);
        let adj = find(body, CTA_SEQ_ADJ_REPLY);
        assert_eq!(be32(find(adj, CTA_SEQADJ_OFFSET_BEFORE)), 0xfff0_0001);
        assert_eq!(be32(find(adj, CTA_SEQADJ_OFFSET_AFTER)), 0xfff0_0001);
        assert_eq!(be32(find(find(body, CTA_SYNPROXY), CTA_SYNPROXY_TSOFF)), 77);
    }

    #[test]
    fn ipv6_tuples_and_no_scaling() {
        let mut c = handed();
        c.client = "[2001:db8::2]:40000".parse().unwrap();
        c.server = "[2001:db8:1::2]:7000".parse().unwrap();
        c.scales = None;
        let mut out = Vec::new();
        get_request(&mut out, &c, 1);
        let start = out.len();
        create_request(&mut out, &c, c.mark, 2);
        assert_eq!(messages(&out).count(), 2);
        assert_eq!(out[16], libc::AF_INET6 as u8);
        let orig = find(&out[20..], CTA_TUPLE_ORIG);
        let ip = find(orig, CTA_TUPLE_IP);
        assert_eq!(
            find(ip, CTA_IP_V6_DST),
            &"2001:db8:1::2"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
        let tcp = find(find(&out[start + 20..], CTA_PROTOINFO), CTA_PROTOINFO_TCP);
        assert_eq!(find(tcp, CTA_PROTOINFO_TCP_FLAGS_REPLY), &[0x08, 0x09]);
        assert!(attributes(tcp).all(|(t, _)| t != CTA_PROTOINFO_TCP_WSCALE_REPLY));
    }

    #[test]
    fn answers_read_as_entries_acks_and_errors() {
        let mut msg = Vec::new();
        let at = msg.len();
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW).to_ne_bytes());
        msg.extend_from_slice(&[0; 10]);
        msg.extend_from_slice(&[2, 0, 0, 0]);
        put_be32(&mut msg, CTA_STATUS, 0x3e);
        put_be32(&mut msg, CTA_MARK, 5);
        finish(&mut msg, at);
        assert!(matches!(
            read_answer(&msg),
            Some(Ok(Answer::Entry {
                status: 0x3e,
                mark: 5
            }))
        ));
        let mut err = vec![0u8; 36];
        err[0..4].copy_from_slice(&36u32.to_ne_bytes());
        err[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert!(matches!(read_answer(&err), Some(Ok(Answer::Done))));
        err[16..20].copy_from_slice(&(-libc::ENOENT).to_ne_bytes());
        assert!(matches!(
            read_answer(&err),
            Some(Err(HandOverError::NotTracked))
        ));
        err[16..20].copy_from_slice(&(-libc::EEXIST).to_ne_bytes());
        assert!(matches!(
            read_answer(&err),
            Some(Err(HandOverError::Refused(_)))
        ));
    }
}
