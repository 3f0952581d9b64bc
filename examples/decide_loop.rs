//! Decisions of one packet kind, for instruction counts under callgrind
//! (repeatable where timings are not):
//!
//!   valgrind --tool=callgrind target/release/examples/decide_loop est   # an established ACK, 1,000,000 times
//!   valgrind --tool=callgrind target/release/examples/decide_loop inv   # SYN+FIN (invalid flags), 1,000,000 times
//!   valgrind --tool=callgrind target/release/examples/decide_loop hand  # est in hand-off mode: each hands the connection off
//!   valgrind --tool=callgrind target/release/examples/decide_loop syn   # 32,768 new SYNs (distinct flows, no eviction)
//!
//! `syn` is `benches/verdict.rs`'s `new_syn` in the state a long run of it
//! reaches: the same 32,768 SYNs (half the half-open limit: nothing is
//! evicted) into a table emptied by expiry, after two such passes (untimed)
//! that left their keys behind in the table's early-drop queue.
//! The decisions run in `decide_all`, a function of its own: its inclusive
//! count (`callgrind_annotate --inclusive=yes`) divided by the packets is the
//! cost of one decision, without the setup. Build the same file against two
//! commits to compare them.

#![allow(clippy::disallowed_methods)] // not the core: a measurement tool
#[path = "../benches/support/mod.rs"]
mod support;
use conntrackd::{rules_file, Context, Engine, Timestamp};
use std::path::Path;
use support::Flow;

/// Decides every packet of `packets`, `rounds` times over.
#[inline(never)]
fn decide_all(
    engine: &Engine,
    ctx: &Context<'_>,
    now: Timestamp,
    packets: &[Vec<u8>],
    rounds: u32,
) -> u64 {
    let mut n = 0u64;
    for _ in 0..rounds {
        for p in packets {
            n += engine.decide(std::hint::black_box(p), ctx, now).reason as u64;
        }
    }
    n
}

fn main() {
    let which = std::env::args().nth(1).unwrap_or_else(|| "est".into());
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/examples/stateful-allow-all.toml");
    let config = rules_file::load(&path).unwrap();
    let engine = Engine::new(config.engine, config.policy);
    let mut ctx = Context::default();
    let now = Timestamp::from_secs(1000);
    let mut f = Flow::new(1);
    f.handshake(&engine, &ctx, now);
    // Built before the loop: the loop measures only the decisions.
    let (packets, rounds): (Vec<Vec<u8>>, u32) = match which.as_str() {
        "syn" => ((0..32_768).map(|i| Flow::new(2 + i).syn()).collect(), 1),
        "inv" => (vec![f.syn_fin()], 1_000_000),
        _ => (vec![f.pure_ack()], 1_000_000),
    };
    if which == "hand" {
        // The kernel's established timeout, as the daemon sets it by default.
        ctx.hand_off = Some(432_000);
    }
    if which == "syn" {
        for _ in 0..2 {
            for p in &packets {
                let _ = engine.decide(p, &ctx, now);
            }
            engine.expire(Timestamp::from_secs(1 << 40));
        }
    }
    println!("{}", decide_all(&engine, &ctx, now, &packets, rounds));
    if which == "hand" {
        assert!(engine.decide(&packets[0], &ctx, now).handed_off);
    }
}
