//! What a worker does for each packet it drops besides deciding it: the
//! record for `why`, `drops` and `events`, and its place in the worker's
//! ring. A million drops (batches of 64, as one `recvmmsg` brings), for
//! instruction counts under callgrind:
//!
//!   valgrind --tool=callgrind target/release/examples/drop_bookkeeping
//!
//! Build it against two commits to compare them (before the records were
//! kept as bytes, each drop was parsed and locked the ring on its own:
//! `drops.record(0, DropRecord::new(..))` per packet).

#![allow(clippy::disallowed_methods)] // not the core: a measurement tool
#[path = "../benches/support/mod.rs"]
mod support;
use conntrackd::conntrack::ConnState;
use conntrackd::daemon::shared::drops::{DropRecord, Drops};
use conntrackd::reason::Reason;
use support::Flow;

fn main() {
    let drops = Drops::new(2);
    // 64 SYNs of distinct flows, built before the loop.
    let packets: Vec<Vec<u8>> = (0..64).map(|i| Flow::new(i).syn()).collect();
    let mut batch = Vec::with_capacity(packets.len());
    for round in 0..1_000_000 / packets.len() as u64 {
        for p in &packets {
            let p = std::hint::black_box(p);
            let record = DropRecord::new(
                round,
                0,
                Reason::DropByDefault,
                ConnState::None,
                p,
                p.len() as u32,
            );
            batch.push(record);
        }
        drops.record_all(0, &batch);
        batch.clear();
    }
    println!("{}", drops.recent(1, |_| true).len());
}
