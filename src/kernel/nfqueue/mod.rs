//! NFQUEUE queues: opening, binding and configuring one ([`open`]), and the
//! queue protocol on the hot path ([`codec`]).
//!
//! nfq 0.2.5 opens, binds and configures each queue. It has no accessor for
//! the socket fd; [`open`] finds it in `/proc/self/fd` (the netlink socket
//! that appeared across `Queue::open`) to set the receive buffer and a
//! receive timeout, so that a worker blocked in `recv` wakes up regularly to
//! notice a shutdown. The packets themselves are read and answered on that fd
//! by [`codec`].

pub mod codec;

use crate::kernel::netlink::set_recv_buffer_force;
use anyhow::{bail, Context as _};
use std::collections::BTreeMap;
use std::os::fd::{BorrowedFd, RawFd};
use std::time::Duration;

/// How long a worker blocks in `recv` before it checks for shutdown.
pub const RECV_TIMEOUT: Duration = Duration::from_millis(100);

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

/// An opened, bound and configured queue.
pub struct BoundQueue {
    queue: nfq::Queue,
    /// The queue's socket, owned by `queue`.
    fd: RawFd,
    pub num: u16,
    pub copy_range: u16,
    /// The kernel accepted NFQA_CFG_F_GSO.
    pub gso: bool,
    /// Receive buffer the kernel granted, in bytes.
    pub rcvbuf: usize,
}

/// Open file descriptors and what they point to (`socket:[inode]`, paths...).
fn open_fds() -> anyhow::Result<BTreeMap<RawFd, std::path::PathBuf>> {
    let mut fds = BTreeMap::new();
    for entry in std::fs::read_dir("/proc/self/fd").context("listing /proc/self/fd")? {
        let entry = entry?;
        if let Some(fd) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
            // The directory's own fd is gone by the time we read its link: skip failures.
            if let Ok(target) = std::fs::read_link(entry.path()) {
                fds.insert(fd, target);
            }
        }
    }
    Ok(fds)
}

fn is_nfnetlink_socket(fd: BorrowedFd<'_>) -> bool {
    let sock = socket2::SockRef::from(&fd);
    sock.domain().ok() == Some(socket2::Domain::from(libc::AF_NETLINK))
        && sock.protocol().ok().flatten() == Some(socket2::Protocol::from(libc::NETLINK_NETFILTER))
}

/// Opens a socket, binds it to `cfg.num` and configures it. Call from one
/// thread at a time (the fd is found by comparing `/proc/self/fd` before
/// and after opening).
pub fn open(cfg: &QueueConfig) -> anyhow::Result<BoundQueue> {
    let num = cfg.num;
    let before = open_fds()?;
    let mut queue = nfq::Queue::open()
        .context("opening an NFQUEUE netlink socket (conntrackd needs CAP_NET_ADMIN)")?;
    let after = open_fds()?;
    // New descriptors, or reused numbers pointing elsewhere (the fd that
    // listed /proc/self/fd the first time may now be the socket).
    let candidates: Vec<RawFd> = after
        .iter()
        .filter(|(fd, target)| before.get(fd) != Some(target))
        .map(|(fd, _)| *fd)
        // SAFETY: fd is open (just listed) and is only borrowed for the test.
        .filter(|fd| is_nfnetlink_socket(unsafe { BorrowedFd::borrow_raw(*fd) }))
        .collect();
    let fd = match candidates[..] {
        [fd] => fd,
        _ => bail!(
            "cannot identify the NFQUEUE socket among new file descriptors {candidates:?} \
             (another thread opened a netlink socket at the same time)"
        ),
    };
    // SAFETY: the socket is open and owned by `queue`, which outlives this borrow.
    let sock = unsafe { BorrowedFd::borrow_raw(fd) };
    // The receive buffer first: packets may arrive as soon as the queue is bound.
    // SO_RCVBUFFORCE (CAP_NET_ADMIN) ignores net.core.rmem_max.
    let want = cfg.rcvbuf.min(i32::MAX as usize / 2);
    if set_recv_buffer_force(sock, want).is_err() {
        socket2::SockRef::from(&sock)
            .set_recv_buffer_size(want)
            .with_context(|| format!("setting the socket receive buffer to {want} bytes"))?;
    }
    // The kernel doubles the value for bookkeeping and reports the doubled value.
    let rcvbuf = socket2::SockRef::from(&sock)
        .recv_buffer_size()
        .unwrap_or(0)
        / 2;
    queue.bind(num).with_context(|| {
        format!("binding NFQUEUE queue {num} (is another program already bound to it?)")
    })?;
    // Between bind and the end of this configuration a packet could arrive and
    // be swallowed by nfq's wait for the configuration ACKs; with
    // --install-iptables the hook is installed only after every queue is
    // configured, so this cannot happen then.
    queue
        .set_copy_range(num, cfg.copy_range)
        .with_context(|| format!("queue {num}: setting the copy range"))?;
    queue
        .set_queue_max_len(num, cfg.maxlen)
        .with_context(|| format!("queue {num}: setting the queue length"))?;
    // GSO: the kernel hands over unsegmented super-packets and does not
    // complete partial checksums; NFQA_SKB_INFO then says which packets carry
    // a checksum that is not computed yet. Without it, the kernel segments and
    // checksums every packet before queueing (slower, still correct).
    let gso = queue.set_recv_gso(num, true).is_ok();
    queue
        .set_fail_open(num, cfg.accept_on_overflow)
        .with_context(|| format!("queue {num}: setting the overflow action"))?;
    // Report socket overruns (ENOBUFS) so that they are counted and logged.
    queue
        .set_recv_enobufs(true)
        .with_context(|| format!("queue {num}: enabling ENOBUFS reports"))?;
    socket2::SockRef::from(&sock)
        .set_read_timeout(Some(RECV_TIMEOUT))
        .with_context(|| format!("queue {num}: setting the receive timeout"))?;
    Ok(BoundQueue {
        queue,
        fd,
        num,
        copy_range: cfg.copy_range,
        gso,
        rcvbuf,
    })
}

impl BoundQueue {
    /// The queue's socket, for [`codec::Receiver`] and [`codec::Verdicts`].
    pub fn fd(&self) -> BorrowedFd<'_> {
        // SAFETY: `queue` owns the socket and keeps it open as long as self lives.
        unsafe { BorrowedFd::borrow_raw(self.fd) }
    }

    /// Stops the kernel queueing to this queue.
    pub fn unbind(&mut self) -> std::io::Result<()> {
        self.queue.unbind(self.num)
    }

    /// The configured nfq queue (for the NFQUEUE-ceiling bench helper, which
    /// must use exactly conntrackd's queue settings).
    pub fn queue_mut(&mut self) -> &mut nfq::Queue {
        &mut self.queue
    }
}
