//! Verdict latency: one `Engine::decide` from raw packet bytes (IPv4, starting
//! at the IP header, checksums verified), with the policy of
//! `rules/examples/stateful-allow-all.toml` (every new connection accepted,
//! tracking as strict as ever).
//!
//! Cases (targets on the 2-core reference machine in brackets):
//!
//! - `established` [≤ 100 ns]: a 64-byte PSH|ACK data segment of an
//!   established connection, in window, carrying new data and acknowledging
//!   everything the peer sent. Repeating one data segment would measure a
//!   retransmission instead (its end is not past the sender's `end`, so the
//!   window update and the "unacknowledged data" bookkeeping are skipped), so
//!   the segments advance: client and server take turns, each sending 64 new
//!   bytes and acknowledging the other's. They are produced a batch at a time
//!   (`support::Stream`, patched from a template with both checksums
//!   recomputed) outside the timed region, and every decision is checked to be
//!   `Reason::Tracked` (outside the timing, by count per batch).
//! - `established_repeated_ack`: for reference, one pure ACK (no payload)
//!   decided over and over; it stays valid when repeated.
//! - `established_handoff`: as `established`, in hand-off mode
//!   (`Context::hand_off`): each of the client's segments hands the
//!   connection to the kernel again (re-anchors its windows and sets its
//!   timeout) in the lookup that decides it, as the daemon's workers do
//!   for the packets already in flight when a connection is handed off.
//! - `new_syn` [≤ 300 ns]: a SYN (with MSS, SACK-permitted and window-scale
//!   options, as Linux sends) opening a new connection each time, from a set
//!   of 32,768 distinct clients; once the set is used up the table is emptied
//!   (`Engine::expire` with a far-future time, untimed) and the set replayed,
//!   so the table holds 0..32,768 half-open connections and never fills.
//! - `invalid_flags` [≤ 30 ns]: a SYN+FIN segment (`Reason::SynFin`).
//! - `established_1m` [≤ 1.5x `established`]: as `established`, with
//!   1,000,000 established connections in the table (filled by handshakes,
//!   untimed), on one of them.
//! - `established_1m_random`: as `established_1m` but each segment belongs
//!   to a connection drawn at random among the million: the table lookups
//!   miss the CPU caches, as on a busy gateway. `established_1k_random` is the
//!   same with 1,000 connections (the table fits in cache), to separate the
//!   cost of a big table from the cost of many connections.
//! - `two_threads/established`: two threads deciding at once, each on its
//!   own 8 connections. One iteration = each thread decides one segment; the
//!   time is the slower thread's, so it reads as the per-decision latency
//!   with two threads busy; the throughput line (2 elements per iteration)
//!   gives the aggregate rate.
//! - `two_threads/new_syn`: the same with new SYNs, each thread opening
//!   connections from its own half of `new_syn`'s set: two workers under a
//!   SYN flood share the policy and the table's counts and early-drop queue.
//!
//! Run: `cargo bench --bench verdict` (about 2-3 minutes), or one case with
//! `cargo bench --bench verdict -- established`.

#![allow(clippy::disallowed_methods)] // not the core: tests, benchmarks and tools read clocks and start threads

#[path = "support/mod.rs"]
mod support;

use conntrackd::{rules_file, Config, Context, EngineSettings};
use conntrackd::{Engine, Reason, Timestamp};
use criterion::{black_box, criterion_group, Criterion, Throughput};
use std::path::Path;
use std::sync::Barrier;
use std::time::{Duration, Instant};
use support::{establish, self_check, Flow, Order, Stream};

/// Segments decided per timed stretch: big enough that the two clock reads
/// per batch cost nothing, small enough (1024 × 104 bytes) to stay in L2.
const BATCH: usize = 1024;
/// Distinct SYNs in `new_syn`.
const SYN_SET: u32 = 32_768;
/// Connections in the big table.
const MILLION: u32 = 1_000_000;
/// Connection numbers for the SYN set (clear of the established ones).
const SYN_BASE: u32 = 1 << 24;
/// Seconds a handed-off connection lives without queued packets (the
/// kernel's established timeout, as the daemon sets it by default).
const HAND_OFF_TIMEOUT: u32 = 432_000;

fn now() -> Timestamp {
    Timestamp::from_secs(1_000)
}

fn config() -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("rules/examples/stateful-allow-all.toml");
    rules_file::load(&path).expect("the benchmark policy loads")
}

/// An engine with the benchmark policy, and its engine settings adjusted.
fn engine(adjust: impl FnOnce(&mut EngineSettings)) -> Engine {
    let config = config();
    let mut settings = config.engine;
    adjust(&mut settings);
    Engine::new(settings, config.policy)
}

/// Decides `iters` segments of `stream`, timing only the decisions. With a
/// barrier, each batch starts when every thread sharing it has produced its own.
fn timed_stream(
    engine: &Engine,
    ctx: &Context<'_>,
    stream: &mut Stream,
    iters: u64,
    barrier: Option<&Barrier>,
) -> Duration {
    let now = now();
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(BATCH as u64) as usize;
        let batch = stream.fill(n);
        if let Some(barrier) = barrier {
            barrier.wait();
        }
        let start = Instant::now();
        let mut tracked = 0usize;
        for packet in batch {
            let d = engine.decide(black_box(packet), ctx, now);
            tracked += (d.reason == Reason::Tracked) as usize;
        }
        total += start.elapsed();
        assert_eq!(tracked, n, "every segment of the stream is Tracked");
        left -= n as u64;
    }
    total
}

/// Checks, outside any timing, that the stream still yields `Tracked`
/// segments after a benchmark ran it (the windows moved along correctly).
fn still_tracked(engine: &Engine, ctx: &Context<'_>, stream: &mut Stream) {
    for packet in stream.fill(BATCH) {
        let d = engine.decide(packet, ctx, now());
        assert_eq!(d.reason, Reason::Tracked, "{d:?}");
    }
}

fn established(c: &mut Criterion) {
    let engine = engine(|_| {});
    let ctx = Context::default();
    let mut flows = establish(&engine, &ctx, now(), 0, 1);
    self_check(&engine, &ctx, now(), &mut flows);

    let ack = flows[0].pure_ack();
    let d = engine.decide(&ack, &ctx, now());
    assert_eq!(d.reason, Reason::Tracked, "{d:?}");

    let mut stream = Stream::new(flows, Order::RoundRobin, BATCH);
    c.bench_function("established", |b| {
        b.iter_custom(|iters| timed_stream(&engine, &ctx, &mut stream, iters, None))
    });
    still_tracked(&engine, &ctx, &mut stream);

    // The pure ACK is still valid: the stream only moved both ends forward.
    let ack = stream.flows[0].pure_ack();
    assert_eq!(engine.decide(&ack, &ctx, now()).reason, Reason::Tracked);
    c.bench_function("established_repeated_ack", |b| {
        b.iter(|| engine.decide(black_box(&ack), &ctx, now()))
    });
    assert_eq!(engine.decide(&ack, &ctx, now()).reason, Reason::Tracked);
}

fn established_handoff(c: &mut Criterion) {
    let engine = engine(|_| {});
    let flows = establish(&engine, &Context::default(), now(), 0, 1);
    let ctx = Context {
        hand_off: Some(HAND_OFF_TIMEOUT),
        ..Context::default()
    };
    let mut stream = Stream::new(flows, Order::RoundRobin, BATCH);
    c.bench_function("established_handoff", |b| {
        b.iter_custom(|iters| {
            let now = now();
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(BATCH as u64) as usize;
                let batch = stream.fill(n);
                let start = Instant::now();
                let (mut tracked, mut handed) = (0usize, 0usize);
                for packet in batch {
                    let d = engine.decide(black_box(packet), &ctx, now);
                    tracked += (d.reason == Reason::Tracked) as usize;
                    handed += d.handed_off as usize;
                }
                total += start.elapsed();
                assert_eq!(tracked, n, "every segment of the stream is Tracked");
                // The client's segments, every other one, hand it off.
                assert!(handed.abs_diff(n - handed) <= 1, "{handed} of {n}");
                left -= n as u64;
            }
            total
        })
    });
    still_tracked(&engine, &ctx, &mut stream);
}

fn new_syn(c: &mut Criterion) {
    // The file's limits (262,144 connections, 65,536 half-open) hold the
    // 32,768 half-open connections of one pass with room to spare.
    let engine = engine(|_| {});
    let ctx = Context::default();
    let syns: Vec<Vec<u8>> = (SYN_BASE..SYN_BASE + SYN_SET)
        .map(|i| Flow::new(i).syn())
        .collect();
    assert!(engine.settings().max_half_open > SYN_SET as usize);
    assert!(engine.settings().max_connections > SYN_SET as usize);
    let empty_table = |engine: &Engine| {
        engine.expire(Timestamp::from_secs(1 << 40));
        assert_eq!(engine.table().len(), 0);
    };
    let mut next = 0usize;
    c.bench_function("new_syn", |b| {
        b.iter_custom(|iters| {
            let now = now();
            let mut total = Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                if next == syns.len() {
                    empty_table(&engine);
                    next = 0;
                }
                let n = left.min((syns.len() - next) as u64) as usize;
                let start = Instant::now();
                let mut opened = 0usize;
                for syn in &syns[next..next + n] {
                    let d = engine.decide(black_box(syn), &ctx, now);
                    opened += (d.reason == Reason::NewByDefault) as usize;
                }
                total += start.elapsed();
                assert_eq!(opened, n, "every SYN opens a connection");
                next += n;
                left -= n as u64;
            }
            total
        })
    });
}

fn invalid_flags(c: &mut Criterion) {
    let engine = engine(|_| {});
    let ctx = Context::default();
    let packet = Flow::new(7).syn_fin();
    assert_eq!(engine.decide(&packet, &ctx, now()).reason, Reason::SynFin);
    c.bench_function("invalid_flags", |b| {
        b.iter(|| engine.decide(black_box(&packet), &ctx, now()))
    });
    assert_eq!(engine.decide(&packet, &ctx, now()).reason, Reason::SynFin);
    assert_eq!(engine.table().len(), 0);
}

/// A table of a million established connections and two streams over them.
struct Big {
    engine: Engine,
    /// Connection 0 alone.
    one: Stream,
    /// The others, at random (two streams on one connection would fall out
    /// of step, so connection 0 is not among them).
    random: Stream,
}

fn fill_big() -> Big {
    let engine = engine(|s| s.max_connections = 1_100_000);
    let ctx = Context::default();
    let start = Instant::now();
    let mut flows = establish(&engine, &ctx, now(), 0, MILLION);
    assert_eq!(engine.table().len(), MILLION as usize);
    eprintln!(
        "filled {} connections by handshake in {:.1?}",
        engine.table().len(),
        start.elapsed()
    );
    self_check(&engine, &ctx, now(), &mut flows[..1]);
    let one = Stream::new(flows[..1].to_vec(), Order::RoundRobin, BATCH);
    let random = Stream::new(flows.split_off(1), Order::Random, BATCH);
    Big {
        engine,
        one,
        random,
    }
}

fn established_big(c: &mut Criterion) {
    // Filled on first use, so that running other cases alone skips the fill.
    let mut big: Option<Big> = None;
    let ctx = Context::default();
    c.bench_function("established_1m", |b| {
        let Big { engine, one, .. } = big.get_or_insert_with(fill_big);
        b.iter_custom(|iters| timed_stream(engine, &ctx, one, iters, None))
    });
    c.bench_function("established_1m_random", |b| {
        let Big { engine, random, .. } = big.get_or_insert_with(fill_big);
        b.iter_custom(|iters| timed_stream(engine, &ctx, random, iters, None))
    });
    if let Some(Big {
        engine,
        one,
        random,
    }) = &mut big
    {
        still_tracked(engine, &ctx, one);
        still_tracked(engine, &ctx, random);
        assert_eq!(engine.table().len(), MILLION as usize);
    }
}

fn established_small_random(c: &mut Criterion) {
    let engine = engine(|_| {});
    let ctx = Context::default();
    let flows = establish(&engine, &ctx, now(), 0, 1_000);
    let mut random = Stream::new(flows, Order::Random, BATCH);
    still_tracked(&engine, &ctx, &mut random);
    c.bench_function("established_1k_random", |b| {
        b.iter_custom(|iters| timed_stream(&engine, &ctx, &mut random, iters, None))
    });
    still_tracked(&engine, &ctx, &mut random);
}

fn two_threads(c: &mut Criterion) {
    const PER_THREAD: u32 = 8;
    let engine = engine(|_| {});
    let ctx = Context::default();
    let mut streams = [0, 1].map(|t| {
        let flows = establish(&engine, &ctx, now(), t * PER_THREAD, PER_THREAD);
        Stream::new(flows, Order::RoundRobin, BATCH)
    });
    let mut group = c.benchmark_group("two_threads");
    group.throughput(Throughput::Elements(2));
    group.bench_function("established", |b| {
        b.iter_custom(|iters| {
            // Both threads decide each batch at the same time: they meet at
            // the barrier after producing it (untimed), then time their own
            // decisions. The slower thread's total is the sample.
            let barrier = Barrier::new(2);
            let [a, b] = &mut streams;
            let (engine, ctx, barrier) = (&engine, &ctx, &barrier);
            std::thread::scope(|s| {
                let worker =
                    |stream: &mut Stream| timed_stream(engine, ctx, stream, iters, Some(barrier));
                let ta = s.spawn(move || worker(a));
                let tb = s.spawn(move || worker(b));
                let (ta, tb) = (ta.join().unwrap(), tb.join().unwrap());
                ta.max(tb)
            })
        })
    });
    for stream in &mut streams {
        still_tracked(&engine, &ctx, stream);
    }

    // Each thread opens connections from its own half of the SYN set, a
    // batch at a time, both at once; once both have used their half up, the
    // table is emptied (untimed) and the halves replayed, as in `new_syn`.
    let half = (SYN_SET / 2) as usize;
    let syns: [Vec<Vec<u8>>; 2] = [0, 1].map(|t| {
        let first = SYN_BASE + t * half as u32;
        (first..first + half as u32)
            .map(|i| Flow::new(i).syn())
            .collect()
    });
    engine.expire(Timestamp::from_secs(1 << 40));
    let mut next = 0usize;
    group.bench_function("new_syn", |b| {
        b.iter_custom(|iters| {
            let barrier = Barrier::new(2);
            let (engine, ctx, barrier, from) = (&engine, &ctx, &barrier, next);
            let worker = |set: &[Vec<u8>]| {
                let now = now();
                let (mut total, mut left, mut at) = (Duration::ZERO, iters, from);
                while left > 0 {
                    if at == set.len() {
                        if barrier.wait().is_leader() {
                            engine.expire(Timestamp::from_secs(1 << 40));
                        }
                        at = 0;
                    }
                    let n = left.min((set.len() - at).min(BATCH) as u64) as usize;
                    barrier.wait();
                    let start = Instant::now();
                    let mut opened = 0usize;
                    for syn in &set[at..at + n] {
                        let d = engine.decide(black_box(syn), ctx, now);
                        opened += (d.reason == Reason::NewByDefault) as usize;
                    }
                    total += start.elapsed();
                    assert_eq!(opened, n, "every SYN opens a connection");
                    at += n;
                    left -= n as u64;
                }
                (total, at)
            };
            let [a, b] = &syns;
            let ((ta, at), (tb, _)) = std::thread::scope(|s| {
                let ta = s.spawn(move || worker(a));
                let tb = s.spawn(move || worker(b));
                (ta.join().unwrap(), tb.join().unwrap())
            });
            next = at;
            ta.max(tb)
        })
    });
    group.finish();
}

/// A new SYN into a full half-open table: each one evicts the oldest
/// half-open entry (early drop). Compare with `new_syn`.
fn new_syn_evicting(c: &mut Criterion) {
    const CAP: usize = 4_096;
    let engine = engine(|s| s.max_half_open = CAP);
    let ctx = Context::default();
    // Many more SYNs than the cap: a SYN's key was evicted long before it
    // comes round again, so every one opens a new connection.
    let syns: Vec<Vec<u8>> = (SYN_BASE..SYN_BASE + SYN_SET)
        .map(|i| Flow::new(i).syn())
        .collect();
    let now = now();
    for syn in &syns[..CAP] {
        let _ = engine.decide(syn, &ctx, now);
    }
    assert_eq!(engine.table().half_open(), CAP);
    let mut next = CAP;
    c.bench_function("new_syn_evicting", |b| {
        b.iter_custom(|iters| {
            let mut opened = 0u64;
            let start = Instant::now();
            for _ in 0..iters {
                let d = engine.decide(black_box(&syns[next]), &ctx, now);
                opened += (d.reason == Reason::NewByDefault) as u64;
                next = (next + 1) % syns.len();
            }
            let took = start.elapsed();
            assert_eq!(opened, iters, "every SYN opens a connection");
            assert_eq!(engine.table().half_open(), CAP);
            took
        })
    });
}

fn config_criterion() -> Criterion {
    Criterion::default()
        .sample_size(50)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! {
    name = benches;
    config = config_criterion();
    targets = established, established_handoff, new_syn, new_syn_evicting, invalid_flags, established_big,
        established_small_random, two_threads
}
/// `criterion_main!`, except for libtest's `--include-ignored`. The test
/// command (`cargo test --all-targets -- --include-ignored`) hands it to every
/// target, this one too, and criterion 0.5 refuses arguments it does not know
/// and reads them from the process's own command line: so run again without it.
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--include-ignored") {
        let status = std::process::Command::new(std::env::current_exe().expect("own path"))
            .args(args.iter().filter(|a| *a != "--include-ignored"))
            .status()
            .expect("re-running the benchmark");
        std::process::exit(status.code().unwrap_or(1));
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
