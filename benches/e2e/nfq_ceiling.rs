//! The NFQUEUE ceiling for the end-to-end benchmark: accepts every packet,
//! with exactly the queue settings conntrackd uses (same `open`, same
//! defaults: GSO, copy range, queue length, receive buffer, fail-open), one
//! thread per queue, and conntrackd's own I/O path (a batch of packets per
//! `recvmmsg`, batch verdicts, one `send` per batch). What conntrackd costs on
//! top of this is the price of deciding.
//!
//!   nfq_ceiling QUEUES [--naive]    e.g. `0` or `0-1`; runs until SIGINT/SIGTERM
//!
//! `--naive`: the `nfq` crate's own path instead, one `recv` and one
//! verdict `sendto` per packet (what conntrackd did before batching, and
//! before it owned its queue socket: nfq gives no access to its descriptor,
//! so conntrackd speaks the queue protocol on a socket of its own).

#![allow(clippy::disallowed_methods)] // a shell: threads

use conntrackd::daemon::{DaemonSettings, Overflow, QueueSpec};
use conntrackd::kernel::nfqueue::codec::{Item, Receiver, Verdicts};
use conntrackd::kernel::nfqueue::{open, QueueConfig};
use conntrackd::Verdict;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn main() -> anyhow::Result<()> {
    let spec = std::env::args().nth(1).unwrap_or_else(|| "0".into());
    let naive = std::env::args().any(|a| a == "--naive");
    let queues: QueueSpec = spec.parse().map_err(anyhow::Error::msg)?;
    let d = DaemonSettings::default();
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let mut threads = Vec::new();
    for &num in queues.as_slice() {
        let stop = stop.clone();
        if naive {
            let mut q = nfq::Queue::open()?;
            q.bind(num)?;
            q.set_copy_range(num, d.copy_range)?;
            q.set_queue_max_len(num, d.queue_maxlen)?;
            q.set_fail_open(num, d.queue_overflow == Overflow::Accept)?;
            q.set_recv_gso(num, true)?;
            // Non-blocking, so that the stop is seen; under load the queue
            // is never empty and the loop never sleeps.
            q.set_nonblocking(true);
            threads.push(std::thread::spawn(move || {
                let mut packets = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match q.recv() {
                        Ok(mut msg) => {
                            msg.set_verdict(nfq::Verdict::Accept);
                            let _ = q.verdict(msg);
                            packets += 1;
                        }
                        Err(_) => std::thread::sleep(std::time::Duration::from_micros(100)),
                    }
                }
                let _ = q.unbind(num);
                packets
            }));
            continue;
        }
        let q = open(&QueueConfig {
            num,
            copy_range: d.copy_range,
            maxlen: d.queue_maxlen,
            rcvbuf: d.socket_rcvbuf,
            accept_on_overflow: d.queue_overflow == Overflow::Accept,
        })?;
        threads.push(std::thread::spawn(move || {
            let mut packets = 0u64;
            // recv times out regularly (the socket has SO_RCVTIMEO) so that stop is seen.
            let mut rx = Receiver::new(q.fd(), q.copy_range);
            let mut tx = Verdicts::new(q.fd(), q.num);
            while !stop.load(Ordering::Relaxed) {
                if rx.recv(false).is_ok() {
                    rx.for_each(|item| {
                        if let Item::Packet(p) = item {
                            tx.push(p.id, Verdict::Accept, None);
                            packets += 1;
                        }
                    });
                    let _ = tx.flush();
                }
            }
            packets
        }));
    }
    let total: u64 = threads.into_iter().map(|t| t.join().unwrap_or(0)).sum();
    eprintln!("nfq_ceiling: {total} packets accepted");
    Ok(())
}
