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
