//! How long expiry makes a worker wait: a worker thread decides established
//! packets of random tracked connections in a loop and records each
//! decision's latency, first alone, then while another thread runs
//! `Engine::expire` over the whole table without pause (as housekeeping does
//! once a second; nothing expires, so every entry is walked). Prints the
//! longest and the 99.99th percentile decision in each phase.
//!
//!   cargo run --release --example expiry_stall [CONNECTIONS] [SECONDS] [SHARDS]
//!
//! (defaults 262144, 2, and the daemon's layout for this machine's cores and
//! that table size).

#![allow(clippy::disallowed_methods)] // not the core: a measurement tool reads clocks and starts threads

#[path = "../benches/support/mod.rs"]
mod support;

use conntrackd::engine::Layout;
use conntrackd::{rules_file, Context, Engine, Timestamp};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::{Flow, Rng};

fn arg(n: usize, default: u64) -> u64 {
    std::env::args()
        .nth(n)
        .map(|a| a.replace(['_', ','], "").parse().expect("a number"))
        .unwrap_or(default)
}

/// Decides random established packets for `secs`; returns sorted latencies in ns.
fn worker(engine: &Engine, flows: &[Flow], secs: u64) -> Vec<u64> {
    let ctx = Context::default();
    let now = Timestamp::from_secs(1_000);
    let packets: Vec<Vec<u8>> = flows.iter().map(|f| f.pure_ack()).collect();
    let mut rng = Rng(7);
    let mut lat = Vec::with_capacity(1 << 22);
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end && lat.len() < (1 << 24) {
        let p = &packets[rng.below(packets.len())];
        let t = Instant::now();
        let d = engine.decide(p, &ctx, now);
        lat.push(t.elapsed().as_nanos() as u64);
        assert_eq!(d.verdict(), conntrackd::Verdict::Accept);
    }
    lat.sort_unstable();
    lat
}

fn report(phase: &str, lat: &[u64]) {
    let q = |f: f64| lat[((lat.len() - 1) as f64 * f) as usize];
    println!(
        "{phase:<22} decisions {:>9}  median {:>6} ns  p99.99 {:>8} ns  max {:>9} ns",
        lat.len(),
        q(0.5),
        q(0.9999),
        lat[lat.len() - 1]
    );
}

fn main() {
    let n = arg(1, 262_144) as usize;
    let secs = arg(2, 2);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/examples/stateful-allow-all.toml");
    let config = rules_file::load(&path).expect("the benchmark policy loads");
    let mut settings = config.engine;
    settings.max_connections = settings.max_connections.max(n + 1);
    let cores = std::thread::available_parallelism().map_or(2, |c| c.get());
    let mut layout = Layout::for_table(cores, settings.max_connections, 1);
    if let Some(shards) = std::env::args().nth(3) {
        layout.shards = shards.parse().expect("a power of two");
    }
    let engine = Engine::with_layout(settings, config.policy, layout);
    let ctx = Context::default();
    let now = Timestamp::from_secs(1_000);
    let mut flows: Vec<Flow> = (0..n as u32).map(Flow::new).collect();
    for f in &mut flows {
        f.handshake(&engine, &ctx, now);
    }
    println!(
        "{} connections, {} shards ({} per shard), {cores} cores",
        engine.table().len(),
        layout.shards,
        n / layout.shards
    );
    report("alone", &worker(&engine, &flows, secs));
    let stop = AtomicBool::new(false);
    let (lat, walks, walk_time) = std::thread::scope(|s| {
        let expiry = s.spawn(|| {
            let (mut walks, mut spent) = (0u32, Duration::ZERO);
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                assert_eq!(engine.expire(now), 0);
                spent += t.elapsed();
                walks += 1;
            }
            (walks, spent)
        });
        let lat = worker(&engine, &flows, secs);
        stop.store(true, Ordering::Relaxed);
        let (walks, spent) = expiry.join().expect("expiry thread");
        (lat, walks, spent)
    });
    report("during expiry walks", &lat);
    println!(
        "expiry: {walks} full walks, {:.1} ms each",
        walk_time.as_secs_f64() * 1e3 / f64::from(walks.max(1))
    );
}
