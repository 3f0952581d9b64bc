//! Memory per tracked connection: fills an engine with established TCP
//! connections (each through a real three-way handshake, IPv4, the policy of
//! `rules/examples/stateful-allow-all.toml`) and prints the heap and RSS the
//! table took, divided by the number of connections. Target: ≤ 160 bytes at
//! 1,000,000 connections.
//!
//! ```text
//! cargo run --release --example memory_per_conn [CONNECTIONS] [MAX_CONNECTIONS]
//! ```
//!
//! Defaults: 1,000,000 connections, `max_connections` 1,100,000. Heap bytes
//! are counted by a global allocator wrapper (live bytes, exact); RSS comes
//! from `/proc/self/statm` (what the kernel charges, page-granular). Both
//! are deltas from just before `Engine::new`, so the table's pre-sizing
//! counts too. Checkpoints along the fill show how the figure moves with the
//! hash tables' load factor.

#![allow(clippy::disallowed_methods)] // not the core: tests, benchmarks and tools read clocks and start threads

#[path = "../benches/support/mod.rs"]
mod support;

use conntrackd::conntrack::{Conn, Key4, Key6};
use conntrackd::{rules_file, Context, Engine, Timestamp};
use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;
use support::Flow;

/// The system allocator, counting live bytes.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to the system allocator with the caller's
// arguments unchanged, so it keeps GlobalAlloc's contract; the counter is
// only bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator (so from `System`) with `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `realloc`'s contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            LIVE.fetch_add(new_size, Ordering::Relaxed);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn heap() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// Resident set size in bytes, from `/proc/self/statm` (second field, pages).
fn rss() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("/proc/self/statm");
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .expect("statm's resident field");
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages * page as usize
}

fn arg(n: usize, default: usize) -> usize {
    std::env::args()
        .nth(n)
        .map(|a| a.replace(['_', ','], "").parse().expect("a number"))
        .unwrap_or(default)
}

fn main() {
    let connections = arg(1, 1_000_000);
    let max_connections = arg(2, 1_100_000);
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/examples/stateful-allow-all.toml");
    let config = rules_file::load(&path).expect("the benchmark policy loads");
    let mut settings = config.engine;
    settings.max_connections = max_connections;
    let ctx = Context::default();
    let now = Timestamp::from_secs(1_000);

    println!(
        "entry: IPv4 (Key4 {} B, Conn {} B) = {} B, IPv6 (Key6 {} B, Conn {} B) = {} B, plus 1 control byte per bucket",
        size_of::<Key4>(),
        size_of::<Conn>(),
        size_of::<(Key4, Conn)>(),
        size_of::<Key6>(),
        size_of::<Conn>(),
        size_of::<(Key6, Conn)>()
    );
    let (heap0, rss0) = (heap(), rss());
    let engine = Engine::new(settings, config.policy);
    println!(
        "empty engine (max_connections {max_connections}): heap {:.1} MiB, RSS {:.1} MiB",
        (heap() - heap0) as f64 / (1 << 20) as f64,
        (rss().saturating_sub(rss0)) as f64 / (1 << 20) as f64
    );
    println!(
        "{:>12} {:>12} {:>12} {:>10} {:>10}",
        "connections", "heap MiB", "RSS MiB", "heap B/c", "RSS B/c"
    );
    let report = |n: usize| {
        let (h, r) = (heap() - heap0, rss().saturating_sub(rss0));
        println!(
            "{:>12} {:>12.1} {:>12.1} {:>10.1} {:>10.1}",
            n,
            h as f64 / (1 << 20) as f64,
            r as f64 / (1 << 20) as f64,
            h as f64 / n as f64,
            r as f64 / n as f64
        );
        (h, r)
    };
    let step = (connections / 10).max(1);
    let start = Instant::now();
    let mut last = (0, 0);
    for i in 0..connections {
        Flow::new(i as u32).handshake(&engine, &ctx, now);
        if (i + 1) % step == 0 || i + 1 == connections {
            last = report(i + 1);
        }
    }
    assert_eq!(engine.table().len(), connections);
    println!(
        "filled in {:.1?}; {} connections tracked",
        start.elapsed(),
        engine.table().len()
    );
    println!(
        "bytes per connection at {connections}: heap {:.1}, RSS {:.1} (target <= 160)",
        last.0 as f64 / connections as f64,
        last.1 as f64 / connections as f64
    );
    drop(engine);
}
