//! A million decisions of one packet kind, for instruction counts under
//! callgrind (repeatable where timings are not):
//!
//!   valgrind --tool=callgrind target/release/examples/decide_loop est   # an established ACK
//!   valgrind --tool=callgrind target/release/examples/decide_loop inv   # SYN+FIN (invalid flags)
//!   valgrind --tool=callgrind target/release/examples/decide_loop syn   # 100,000 new SYNs (distinct flows, no eviction)
//!
//! Build the same file against two commits to compare them.

#![allow(clippy::disallowed_methods)] // not the core: a measurement tool
#[path = "../benches/support/mod.rs"]
mod support;
use conntrackd::{Config, Context, Engine, Timestamp};
use std::path::Path;
use support::Flow;
fn main() {
    let which = std::env::args().nth(1).unwrap_or_else(|| "est".into());
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/examples/stateful-allow-all.toml");
    let config = Config::load(&path).unwrap();
    let engine = Engine::new(config.engine, config.policy);
    let ctx = Context::default();
    let now = Timestamp::from_secs(1000);
    let mut f = Flow::new(1);
    f.handshake(&engine, &ctx, now);
    if which == "syn" {
        // Built before the loop: the loop measures only the decisions.
        let syns: Vec<Vec<u8>> = (0..100_000).map(|i| Flow::new(2 + i).syn()).collect();
        let mut n = 0u64;
        for p in &syns {
            n += engine.decide(std::hint::black_box(p), &ctx, now).reason as u64;
        }
        println!("{n}");
        return;
    }
    let p = match which.as_str() {
        "inv" => f.syn_fin(),
        _ => f.pure_ack(),
    };
    let mut n = 0u64;
    for _ in 0..1_000_000 {
        let d = engine.decide(std::hint::black_box(&p), &ctx, now);
        n += d.reason as u64;
    }
    println!("{n}");
}
