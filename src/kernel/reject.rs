//! Raw sockets that send the answers to rejected packets (built by
//! [`crate::wire::reject`]): whole IP packets, header included, handed to
//! this host's own stack, which routes them out like any packet it sends.
//!
//! `IPPROTO_RAW` sockets (IPv4 and IPv6) include the header as written, so
//! the answer carries the rejected packet's destination as its source: the
//! refusal reads as the destination's. Opening them needs CAP_NET_RAW.
//! They receive nothing (Linux delivers no packet to an `IPPROTO_RAW`
//! socket), so no buffer fills behind them.
//!
//! The answers leave through the OUTPUT hook, not FORWARD: the NFQUEUE rule
//! on FORWARD (the default, and `--install-iptables`'s default hook) never
//! queues them back to conntrackd.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// The IPv4 socket, and the IPv6 one unless IPv6 is off on this host.
#[derive(Debug)]
pub struct RawSocket {
    v4: OwnedFd,
    v6: Option<OwnedFd>,
}

fn open_raw(domain: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: socket(2) takes three integers and touches no memory.
    let fd = unsafe {
        libc::socket(
            domain,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a descriptor socket(2) just returned, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl RawSocket {
    /// Opens both sockets. Fails without CAP_NET_RAW; a host without IPv6
    /// gets an IPv4 socket only.
    pub fn open() -> io::Result<RawSocket> {
        let v4 = open_raw(libc::AF_INET)?;
        let v6 = match open_raw(libc::AF_INET6) {
            Ok(fd) => Some(fd),
            Err(e) if e.raw_os_error() == Some(libc::EAFNOSUPPORT) => None,
            Err(e) => return Err(e),
        };
        Ok(RawSocket { v4, v6 })
    }

    /// Sets both sockets' send buffers to `bytes`, past `net.core.wmem_max`
    /// (SO_SNDBUFFORCE, CAP_NET_ADMIN).
    ///
    /// A packet sent to a neighbour not resolved yet waits in that
    /// neighbour's queue (up to `unres_qlen_bytes` each, for the few
    /// seconds resolution takes) and counts against the socket's send
    /// buffer until then. Answers to spoofed sources on a local network
    /// never resolve: with the default buffer (208 KiB, about 250 answers)
    /// a flood of them would make every send fail, real clients' answers
    /// too.
    pub fn set_send_buffer(&self, bytes: usize) -> io::Result<()> {
        for fd in std::iter::once(&self.v4).chain(self.v6.as_ref()) {
            nix::sys::socket::setsockopt(fd, nix::sys::socket::sockopt::SndBufForce, &bytes)
                .map_err(io::Error::from)?;
        }
        Ok(())
    }

    /// Whether IPv6 answers can be sent.
    pub fn has_ipv6(&self) -> bool {
        self.v6.is_some()
    }

    /// Sends one whole IP packet (header included) without waiting: a full
    /// send buffer is an error (`WouldBlock`), as is a short send.
    pub fn send(&self, packet: &[u8]) -> io::Result<()> {
        let sent = match packet.first().map(|b| b >> 4) {
            Some(4) if packet.len() >= 20 => {
                let dst = Ipv4Addr::new(packet[16], packet[17], packet[18], packet[19]);
                // SAFETY: sockaddr_in is plain old data; all-zero bytes are valid.
                let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
                addr.sin_family = libc::AF_INET as libc::sa_family_t;
                addr.sin_addr.s_addr = u32::from(dst).to_be();
                send_to(&self.v4, packet, &addr)?
            }
            Some(6) if packet.len() >= 40 => {
                let Some(v6) = &self.v6 else {
                    return Err(io::Error::from_raw_os_error(libc::EAFNOSUPPORT));
                };
                let mut octets = [0u8; 16];
                octets.copy_from_slice(&packet[24..40]);
                let dst = Ipv6Addr::from(octets);
                // SAFETY: sockaddr_in6 is plain old data; all-zero bytes are valid
                // (port 0: the protocol is the socket's, IPPROTO_RAW).
                let mut addr: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
                addr.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                addr.sin6_addr.s6_addr = dst.octets();
                send_to(v6, packet, &addr)?
            }
            _ => return Err(io::Error::from(io::ErrorKind::InvalidInput)),
        };
        if sent != packet.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("sent {sent} of {} bytes", packet.len()),
            ));
        }
        Ok(())
    }
}

/// Most packets one sendmmsg(2) call carries.
const MANY: usize = 64;

impl RawSocket {
    /// Sends whole IP packets (headers included), up to 64 per system call
    /// (sendmmsg; IPv4 and IPv6 each in their own calls), without waiting.
    /// Returns how many were sent: a packet that fails (a full send buffer,
    /// no route, not an IP packet) is skipped and the rest go on.
    pub fn send_many<'a>(&self, packets: impl Iterator<Item = &'a [u8]> + Clone) -> usize {
        let mut sent = 0;
        for (family, fd) in [(4, Some(&self.v4)), (6, self.v6.as_ref())] {
            let Some(fd) = fd else { continue };
            let mut chunk: [&[u8]; MANY] = [&[]; MANY];
            let mut n = 0;
            for p in packets.clone().filter(|p| ip_version(p) == Some(family)) {
                chunk[n] = p;
                n += 1;
                if n == MANY {
                    sent += send_chunk(fd, &chunk[..n]);
                    n = 0;
                }
            }
            if n > 0 {
                sent += send_chunk(fd, &chunk[..n]);
            }
        }
        sent
    }
}

/// The IP version of a packet long enough for its header's addresses.
fn ip_version(p: &[u8]) -> Option<u8> {
    match p.first()? >> 4 {
        4 if p.len() >= 20 => Some(4),
        6 if p.len() >= 40 => Some(6),
        _ => None,
    }
}

/// One family's packets (checked by [`ip_version`]), at most [`MANY`], in
/// as few sendmmsg calls as the errors allow; how many were sent whole.
fn send_chunk(fd: &OwnedFd, packets: &[&[u8]]) -> usize {
    // SAFETY: plain old data; all-zero bytes are a valid value (family 0
    // until set below).
    let mut addrs: [libc::sockaddr_in6; MANY] = unsafe { std::mem::zeroed() };
    // SAFETY: plain old data; all-zero bytes are a valid value (null, 0).
    let mut iovs: [libc::iovec; MANY] = unsafe { std::mem::zeroed() };
    // SAFETY: plain old data; all-zero bytes are a valid value (null
    // pointers, zero lengths).
    let mut hdrs: [libc::mmsghdr; MANY] = unsafe { std::mem::zeroed() };
    for (i, p) in packets.iter().enumerate() {
        let len = if p[0] >> 4 == 4 {
            // SAFETY: a sockaddr_in fits in a sockaddr_in6 (16 of 28
            // bytes) and has no stricter alignment.
            let a = unsafe {
                &mut *(&mut addrs[i] as *mut libc::sockaddr_in6 as *mut libc::sockaddr_in)
            };
            a.sin_family = libc::AF_INET as libc::sa_family_t;
            a.sin_addr.s_addr = u32::from_ne_bytes([p[16], p[17], p[18], p[19]]);
            std::mem::size_of::<libc::sockaddr_in>()
        } else {
            addrs[i].sin6_family = libc::AF_INET6 as libc::sa_family_t;
            addrs[i].sin6_addr.s6_addr.copy_from_slice(&p[24..40]);
            std::mem::size_of::<libc::sockaddr_in6>()
        };
        iovs[i] = libc::iovec {
            iov_base: p.as_ptr() as *mut libc::c_void,
            iov_len: p.len(),
        };
        hdrs[i].msg_hdr.msg_name = &mut addrs[i] as *mut libc::sockaddr_in6 as *mut libc::c_void;
        hdrs[i].msg_hdr.msg_namelen = len as libc::socklen_t;
        hdrs[i].msg_hdr.msg_iov = &mut iovs[i];
        hdrs[i].msg_hdr.msg_iovlen = 1;
    }
    let mut sent = 0;
    let mut at = 0;
    while at < packets.len() {
        // SAFETY: hdrs[at..len] are initialized above and point into addrs,
        // iovs and the packets, all alive for the call.
        let r = unsafe {
            libc::sendmmsg(
                fd.as_raw_fd(),
                hdrs.as_mut_ptr().add(at),
                (packets.len() - at) as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if r < 0 {
            let e = io::Error::last_os_error();
            match (e.kind(), e.raw_os_error()) {
                (io::ErrorKind::Interrupted, _) => continue,
                // The send buffer is full: so it is for the rest too (one
                // call each would only fail each).
                (io::ErrorKind::WouldBlock, _) | (_, Some(libc::ENOBUFS)) => break,
                // This one failed (no route, say): the rest still go.
                _ => at += 1,
            }
            continue;
        }
        let r = r as usize;
        sent += (at..at + r)
            .filter(|&i| hdrs[i].msg_len as usize == packets[i].len())
            .count();
        at += r.max(1);
    }
    sent
}

/// sendto(2) with MSG_DONTWAIT to a socket address of type `A`.
fn send_to<A>(fd: &OwnedFd, packet: &[u8], addr: &A) -> io::Result<usize> {
    loop {
        // SAFETY: packet is valid for reads of its length and addr is an A
        // (a sockaddr_in or sockaddr_in6) of the size passed, both for the
        // duration of the call.
        let r = unsafe {
            libc::sendto(
                fd.as_raw_fd(),
                packet.as_ptr() as *const libc::c_void,
                packet.len(),
                libc::MSG_DONTWAIT,
                addr as *const A as *const libc::sockaddr,
                std::mem::size_of::<A>() as libc::socklen_t,
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
