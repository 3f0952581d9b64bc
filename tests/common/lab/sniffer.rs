//! What arrives on an interface, read with an AF_PACKET socket (before
//! netfilter): how the tests see which crafted packets crossed the gateway.

use super::ns::Ns;
use socket2::{Domain, Protocol, Socket, Type};
use std::ffi::CString;
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Reads every IP packet arriving on an interface (AF_PACKET, before netfilter).
pub struct Sniffer {
    sock: Socket,
    seen: Mutex<Vec<Vec<u8>>>,
}

/// A link-layer address of a packet socket: `protocol` in network byte order,
/// the rest zero (the kernel fills them in on receive).
fn link_address(protocol: u16, ifindex: i32) -> libc::sockaddr_ll {
    libc::sockaddr_ll {
        sll_family: libc::AF_PACKET as u16,
        sll_protocol: protocol,
        sll_ifindex: ifindex,
        sll_hatype: 0,
        sll_pkttype: 0,
        sll_halen: 0,
        sll_addr: [0; 8],
    }
}

const LINK_ADDRESS_LEN: libc::socklen_t = std::mem::size_of::<libc::sockaddr_ll>() as _;

impl Sniffer {
    pub fn new(ns: &Ns, ifname: &str) -> Sniffer {
        let ifname = CString::new(ifname).unwrap();
        let sock = ns.enter(move || {
            let proto = (libc::ETH_P_ALL as u16).to_be();
            // SOCK_DGRAM strips the link header: what is read is the IP packet.
            let sock = Socket::new(
                Domain::from(libc::AF_PACKET),
                Type::DGRAM,
                Some(Protocol::from(i32::from(proto))),
            )
            .expect("packet socket");
            // SAFETY: if_nametoindex(3) only reads the name, a NUL-terminated
            // string that `ifname` keeps alive for the call.
            let index = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
            assert!(index != 0, "no interface {ifname:?}");
            // socket2 has no sockaddr_ll: bind(2) by hand.
            let sll = link_address(proto, index as i32);
            // SAFETY: the pointer and length describe `sll`, a whole
            // sockaddr_ll that lives on this stack frame for the call; bind(2)
            // only reads it. The fd is `sock`'s, open for the call.
            let r = unsafe {
                libc::bind(
                    sock.as_raw_fd(),
                    (&sll as *const libc::sockaddr_ll).cast::<libc::sockaddr>(),
                    LINK_ADDRESS_LEN,
                )
            };
            assert_eq!(
                r,
                0,
                "bind packet socket: {}",
                std::io::Error::last_os_error()
            );
            sock
        });
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("SO_RCVTIMEO");
        Sniffer {
            sock,
            seen: Mutex::new(Vec::new()),
        }
    }

    /// Reads what arrives (incoming packets only) into the seen list until
    /// nothing more is waiting, `until` passes, or a packet matches `pred`.
    fn poll(&self, until: Instant, pred: &dyn Fn(&[u8]) -> bool) -> bool {
        let mut buf = vec![0u8; 65536];
        loop {
            // recvfrom(2) by hand: the source address says whether the packet
            // was outgoing, and socket2's recv_from would hand it over only as
            // an opaque address (and the bytes as uninitialised memory).
            let mut sll = link_address(0, 0);
            let mut len = LINK_ADDRESS_LEN;
            // SAFETY: `buf` is valid for writes of `buf.len()` bytes and `sll`
            // of `len` bytes (a whole sockaddr_ll; the kernel writes at most
            // `len` bytes and updates `len`); both outlive the call. The fd is
            // `self.sock`'s, open for the call.
            let n = unsafe {
                libc::recvfrom(
                    self.sock.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut sll as *mut libc::sockaddr_ll).cast::<libc::sockaddr>(),
                    &mut len,
                )
            };
            if n > 0 && sll.sll_pkttype != libc::PACKET_OUTGOING {
                let packet = buf[..n as usize].to_vec();
                let matched = pred(&packet);
                self.seen.lock().unwrap().push(packet);
                if matched {
                    return true;
                }
            }
            if n <= 0 || Instant::now() >= until {
                return false;
            }
        }
    }

    /// Waits until a packet matching `pred` arrives (or was already seen).
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&[u8]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        if self.seen.lock().unwrap().iter().any(|p| pred(p)) {
            return true;
        }
        loop {
            if self.poll(deadline, &pred) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
        }
    }

    /// Whether any packet seen so far matches `pred` (reads what is waiting first).
    pub fn saw(&self, pred: impl Fn(&[u8]) -> bool) -> bool {
        self.poll(Instant::now() + Duration::from_millis(100), &|_| false);
        self.seen.lock().unwrap().iter().any(|p| pred(p))
    }

    /// How many packets seen so far match `pred` (reads what is waiting first).
    pub fn count(&self, pred: impl Fn(&[u8]) -> bool) -> usize {
        self.poll(Instant::now() + Duration::from_millis(100), &|_| false);
        self.seen.lock().unwrap().iter().filter(|p| pred(p)).count()
    }
}
