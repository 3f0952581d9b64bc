//! The NFQUEUE queue set-up (`src/kernel/nfqueue`) against the kernel, in
//! the lab's gateway namespace, without the daemon: a queue opened with
//! `open` is bound and configured on its own socket, a second program cannot
//! bind the same number (and is told why), packets sent to it are read and
//! answered on that socket, and an unbind, or closing the socket, frees the
//! number.
//!
//! Needs root, so the test is `#[ignore]`d: run it as root with
//! `CI=true cargo test --all-targets -- --include-ignored` (without root it
//! prints why it skips, and fails under `CI=true`).

#![allow(clippy::disallowed_methods)] // not the core: tests read clocks and start threads

mod common;

use common::lab::{self, Lab, UdpEcho};
use conntrackd::kernel::nfqueue::codec::{Item, Receiver, Verdicts};
use conntrackd::kernel::nfqueue::{open, BoundQueue, QueueConfig};
use conntrackd::Verdict;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

const QUEUE: u16 = 3;

fn config() -> QueueConfig {
    QueueConfig {
        num: QUEUE,
        copy_range: 256,
        maxlen: 64,
        rcvbuf: 1 << 20,
        accept_on_overflow: false,
    }
}

/// Answers every packet of `q` with `verdict` until `stop`; returns the
/// queue and how many packets it answered.
fn answer(
    mut q: BoundQueue,
    verdict: Verdict,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(BoundQueue, u64)> {
    std::thread::spawn(move || {
        let mut packets = 0;
        {
            let mut rx = Receiver::new(q.fd(), q.copy_range);
            let mut tx = Verdicts::new(q.fd(), q.num);
            // recv times out every 100 ms (the socket's SO_RCVTIMEO).
            while !stop.load(Ordering::Relaxed) {
                if rx.recv(false).is_ok() {
                    rx.for_each(|item| {
                        if let Item::Packet(p) = item {
                            assert!(!p.payload.is_empty());
                            tx.push(p.id, verdict, None);
                            packets += 1;
                        }
                    });
                    tx.flush().expect("sending verdicts");
                }
            }
        }
        q.unbind().expect("unbinding");
        (q, packets)
    })
}

#[test]
#[ignore = "needs root: network namespaces, NFQUEUE, iptables"]
fn a_queue_is_ours_alone_answers_on_its_socket_and_unbinds() {
    let Some(lab) = Lab::new("a_queue_is_ours_alone_answers_on_its_socket_and_unbinds") else {
        return;
    };
    let server = SocketAddr::new(IpAddr::V4(lab::SERVER4), 7001);
    let _echo = UdpEcho::start(&lab.server, server);
    lab.add_nfqueue_rule(&QUEUE.to_string(), false);
    // Nobody on the queue: the kernel drops what the rule sends to it.
    assert!(!lab::udp_roundtrip(
        &lab.client,
        server,
        Duration::from_millis(500)
    ));

    let q = lab.gw.enter(|| open(&config())).expect("opening the queue");
    assert!(q.gso, "the kernel refused NFQA_CFG_F_GSO");
    assert!(q.rcvbuf >= 1 << 20, "receive buffer {}", q.rcvbuf);
    // The kernel's view: queue number, port id, packets waiting, copy mode
    // (2: packet), copy range, ...
    let table = lab.gw.enter(|| {
        std::fs::read_to_string("/proc/thread-self/net/netfilter/nfnetlink_queue")
            .expect("reading nfnetlink_queue")
    });
    let line: Vec<&str> = table
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.first() == Some(&"3"))
        .unwrap_or_else(|| panic!("queue 3 is not in {table:?}"));
    assert_eq!((line[3], line[4]), ("2", "256"), "{table:?}");

    // The number is taken: a second open says so, and binds nothing.
    let second = lab.gw.enter(|| open(&config()).map(|_| ()));
    let why = format!("{:#}", second.expect_err("a second bind of the same queue"));
    assert!(why.contains("is another program bound to it?"), "{why}");

    // Packets come to our socket and our verdicts reach the kernel.
    let stop = Arc::new(AtomicBool::new(false));
    let worker = answer(q, Verdict::Accept, stop.clone());
    let through = lab::udp_roundtrip(&lab.client, server, Duration::from_secs(5));
    stop.store(true, Ordering::Relaxed);
    let (q, packets) = worker.join().expect("answering thread");
    assert!(through, "the echo did not come back through the queue");
    assert!(packets >= 2, "{packets} packets answered");

    // Unbound (the socket still open): dropped again, and the number is free.
    assert!(!lab::udp_roundtrip(
        &lab.client,
        server,
        Duration::from_millis(500)
    ));
    let again = lab
        .gw
        .enter(|| open(&config()))
        .expect("binding after the unbind");
    drop(q);

    // Closing the socket without an unbind frees the number too.
    drop(again);
    let third = lab.gw.enter(|| open(&config()).map(|_| ()));
    assert!(third.is_ok(), "binding after the socket closed: {third:?}");
}
