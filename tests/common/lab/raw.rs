//! Crafted packets: whole IP packets (header included) sent from a namespace
//! through raw sockets.

use super::ns::Ns;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::net::{IpAddr, SocketAddr};

/// Sends `bytes` to `to` on a socket whose addresses carry no port (raw and
/// ping sockets: port 0); the whole datagram must go.
pub(super) fn send_to(sock: &Socket, bytes: &[u8], to: IpAddr) {
    let n = sock
        .send_to(bytes, &SockAddr::from(SocketAddr::new(to, 0)))
        .unwrap_or_else(|e| panic!("sendto {to}: {e}"));
    assert_eq!(n, bytes.len(), "sendto {to}: {n} of {} bytes", bytes.len());
}

/// Sends whole IP packets (header included) from a namespace.
pub struct RawSender {
    v4: Socket,
    v6: Socket,
}

impl RawSender {
    pub fn new(ns: &Ns) -> RawSender {
        ns.enter(|| {
            // IPPROTO_RAW implies IP_HDRINCL (and IPV6_HDRINCL for AF_INET6).
            let open = |domain| {
                Socket::new(
                    domain,
                    Type::from(libc::SOCK_RAW),
                    Some(Protocol::from(libc::IPPROTO_RAW)),
                )
                .expect("raw socket")
            };
            RawSender {
                v4: open(Domain::IPV4),
                v6: open(Domain::IPV6),
            }
        })
    }

    /// Sends `packet` (an IP packet as built by `conntrackd::wire::build`).
    pub fn send(&self, packet: &[u8]) {
        let summary = conntrackd::wire::lax::headers(packet);
        let dst = summary.dst.expect("packet with a destination");
        match dst {
            IpAddr::V4(_) => send_to(&self.v4, packet, dst),
            IpAddr::V6(_) => send_to(&self.v6, packet, dst),
        }
    }
}
