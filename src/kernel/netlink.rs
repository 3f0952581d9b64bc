//! Netlink plumbing shared by the NFQUEUE codec ([`super::nfqueue`]) and
//! the conntrack dump ([`super::ctnetlink`]): attribute walking, the one
//! socket option socket2 lacks (SO_RCVBUFFORCE), and sending a request to the
//! kernel.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

pub(crate) const NLMSG_ERROR: u16 = 2;
pub(crate) const NLM_F_REQUEST: u16 = 1;
/// An attribute's type without its NLA_F_NESTED and NLA_F_NET_BYTEORDER flags.
const NLA_TYPE_MASK: u16 = 0x3fff;

#[inline]
pub(crate) fn u16_ne(b: &[u8], at: usize) -> u16 {
    u16::from_ne_bytes([b[at], b[at + 1]])
}
#[inline]
pub(crate) fn u32_ne(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
#[inline]
pub(crate) fn u32_be(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
#[inline]
pub(crate) const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The attributes of a netlink message body, as (type, value); ends at the
/// first malformed one.
#[inline]
pub(crate) fn attributes(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16_ne(b, 0) as usize;
        let ty = u16_ne(b, 2) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            return None;
        }
        let value = &b[4..len];
        b = &b[align4(len).min(b.len())..];
        Some((ty, value))
    })
}

/// The netlink messages of a datagram, in order; ends at a malformed length
/// or where fewer bytes than a header are left. A last message longer than
/// the bytes left (a datagram cut short) comes as far as it goes: the reader
/// decides what a cut message is worth.
#[inline]
pub(crate) fn messages(mut d: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if d.len() < 16 {
            return None;
        }
        let len = u32_ne(d, 0) as usize;
        if len < 16 {
            return None;
        }
        let msg = &d[..len.min(d.len())];
        d = &d[align4(len).min(d.len())..];
        Some(msg)
    })
}

/// SO_RCVBUFFORCE: a receive buffer of `bytes` whatever `net.core.rmem_max`
/// says (needs CAP_NET_ADMIN). socket2, which sets the other options, has
/// no SO_RCVBUFFORCE; nix has.
pub(crate) fn set_recv_buffer_force(fd: BorrowedFd<'_>, bytes: usize) -> io::Result<()> {
    nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::RcvBufForce, &bytes)
        .map_err(io::Error::from)
}

/// Sends `buf` to the kernel (netlink port 0) in one datagram, retrying on EINTR.
pub(crate) fn send_to_kernel(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: sockaddr_nl is plain old data, for which all-zero bytes are a
    // valid value (port 0, groups 0: the kernel).
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    loop {
        // SAFETY: buf is valid for reads of buf.len() bytes and addr is a
        // sockaddr_nl of the size passed, both for the duration of the call.
        let r = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                buf.as_ptr() as *const libc::c_void,
                buf.len(),
                0,
                &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}
