//! What the state file costs: fills an engine with N established IPv4
//! connections, then times `save_state` and `restore_state` into a fresh
//! engine and prints the file size.
//!
//!   cargo run --release --example state_file [N...]     (default: 100000 1000000)
//!
//! With STATE_OUT=FILE, the last table's state file is also written there
//! (for benches/restart_gap.sh).

#![allow(clippy::disallowed_methods)] // not the core: a measurement tool reads clocks

#[path = "../benches/support/mod.rs"]
mod support;

use conntrackd::{rules_file, Context, Engine, Timestamp};
use std::path::Path;
use std::time::Instant;
use support::Flow;

fn main() {
    let sizes: Vec<usize> = {
        let args: Vec<usize> = std::env::args()
            .skip(1)
            .map(|a| a.replace(['_', ','], "").parse().expect("a number"))
            .collect();
        if args.is_empty() {
            vec![100_000, 1_000_000]
        } else {
            args
        }
    };
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/examples/stateful-allow-all.toml");
    let config = rules_file::load(&path).expect("the benchmark policy loads");
    let ctx = Context::default();
    let now = Timestamp::from_secs(1_000);
    println!(
        "{:>10} {:>10} {:>10} {:>10} {:>10}",
        "conns", "file MB", "B/conn", "save ms", "load ms"
    );
    for n in sizes {
        let mut settings = config.engine;
        settings.max_connections = settings.max_connections.max(n + 1);
        let engine = Engine::new(settings, config.policy.clone());
        for i in 0..n as u32 {
            Flow::new(i).handshake(&engine, &ctx, now);
        }
        let t = Instant::now();
        let bytes = engine.save_state(now, true, 1_800_000_000);
        let save = t.elapsed();
        let fresh = Engine::new(settings, config.policy.clone());
        let t = Instant::now();
        let r = fresh
            .restore_state(&bytes, Timestamp::from_secs(1), 1_800_000_000)
            .expect("the file loads");
        let load = t.elapsed();
        if let Some(out) = std::env::var_os("STATE_OUT") {
            std::fs::write(out, &bytes).expect("writing STATE_OUT");
        }
        assert_eq!(r.restored as usize, n);
        println!(
            "{:>10} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
            n,
            bytes.len() as f64 / 1e6,
            bytes.len() as f64 / n as f64,
            save.as_secs_f64() * 1e3,
            load.as_secs_f64() * 1e3
        );
    }
}
