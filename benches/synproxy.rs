//! The SYN proxy's arithmetic (issue 21): what a flood and a proxied
//! connection cost per packet, apart from the engine.
//!
//! - `cookie_make`: the cookie for one SYN (two SipHash-2-4 of the IPv4
//!   tuple and the MSS index), tuples taken in turn from a set of 1024.
//! - `cookie_check`: checking the cookie of one ACK that carries a valid
//!   one, made a minute earlier (two SipHashes with the current keys).
//! - `cookie_check_forged`: an ACK with a random cookie, as a flood of
//!   forged ACKs brings: both key generations tried, then classified
//!   (up to five SipHashes), the worst case.
//! - `translate_v4`: rewriting one server-to-client IPv4 data segment (64
//!   bytes of payload, timestamps) in place: sequence number, TSval and
//!   window, checksum updated incrementally.
//!
//! Run: `cargo bench --bench synproxy` (about half a minute).
//!
//! Medians of one run, 2026-12-07, on the 2-core development VM while other
//! builds kept its load near 3.4 (so upper bounds): `cookie_make` 51 ns,
//! `cookie_check` 62 ns, `cookie_check_forged` 115 ns, `translate_v4` 47 ns.

#![allow(clippy::disallowed_methods)] // not the core: benchmarks read clocks

use conntrackd::synproxy::cookie::{self, CookieKeys, Tuple};
use conntrackd::synproxy::translate::{Translation, WindowScales};
use conntrackd::wire::SeqNum;
use conntrackd::Timestamp;
use criterion::{black_box, criterion_group, Criterion};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

const TUPLES: usize = 1024;

fn tuples() -> Vec<(Tuple, SeqNum)> {
    (0..TUPLES as u32)
        .map(|i| {
            let t = Tuple {
                client: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i * 7919)),
                client_port: 30_000 + i as u16,
                server: IpAddr::V4(Ipv4Addr::new(203, 0, 113, 5)),
                server_port: 80,
            };
            (t, SeqNum(i.wrapping_mul(0x9e37_79b9)))
        })
        .collect()
}

fn keys() -> CookieKeys {
    let mut keys = CookieKeys::new([0x5a; 32]);
    keys.rotate([0xa5; 32]);
    keys
}

fn cookie_make(c: &mut Criterion) {
    let keys = keys();
    let tuples = tuples();
    let now = Timestamp::from_secs(3_600);
    let mut i = 0;
    c.bench_function("cookie_make", |b| {
        b.iter(|| {
            let (t, isn) = &tuples[i % TUPLES];
            i += 1;
            cookie::make(black_box(&keys), black_box(t), *isn, Some(1460), now)
        })
    });
}

fn cookie_check(c: &mut Criterion) {
    let keys = keys();
    let made = Timestamp::from_secs(3_600);
    let now = Timestamp::from_secs(3_660);
    let acks: Vec<_> = tuples()
        .into_iter()
        .map(|(t, isn)| {
            let c = cookie::make(&keys, &t, isn, Some(1460), made);
            (t, c.isn + 1, isn + 1)
        })
        .collect();
    let mut i = 0;
    c.bench_function("cookie_check", |b| {
        b.iter(|| {
            let (t, ack, seq) = &acks[i % TUPLES];
            i += 1;
            let r = cookie::check(black_box(&keys), black_box(t), *ack, *seq, now);
            debug_assert!(r.is_ok());
            r
        })
    });
    let forged: Vec<_> = acks
        .iter()
        .map(|(t, ack, seq)| (*t, SeqNum(ack.0.rotate_left(11) ^ 0x1234_5678), *seq))
        .collect();
    c.bench_function("cookie_check_forged", |b| {
        b.iter(|| {
            let (t, ack, seq) = &forged[i % TUPLES];
            i += 1;
            cookie::check(black_box(&keys), black_box(t), *ack, *seq, now)
        })
    });
}

fn translate_v4(c: &mut Criterion) {
    let t = Translation::new(
        SeqNum(0xffff_0000),
        SeqNum(0x1234_5678),
        Some((1_000, 4_000_000_000)),
        WindowScales {
            client: Some(7),
            told_client: Some(7),
            server: Some(7),
        },
    );
    // A data segment with timestamps, as Linux sends it (NOP NOP TS).
    let mut h = etherparse::TcpHeader::new(80, 40_000, 1_000_000, 502);
    h.ack = true;
    h.psh = true;
    h.acknowledgment_number = 77;
    h.set_options(&[
        etherparse::TcpOptionElement::Noop,
        etherparse::TcpOptionElement::Noop,
        etherparse::TcpOptionElement::Timestamp(4_000_000_100, 5_000),
    ])
    .unwrap();
    let mut packet = Vec::new();
    etherparse::PacketBuilder::ipv4([203, 0, 113, 5], [10, 0, 0, 2], 64)
        .tcp_header(h)
        .write(&mut packet, &[0xab; 64])
        .unwrap();
    c.bench_function("translate_v4", |b| {
        // The same buffer over and over: each pass adds the deltas again,
        // which is as much work as the first.
        b.iter(|| t.server_to_client(black_box(&mut packet)))
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
    targets = cookie_make, cookie_check, translate_v4
}

/// `criterion_main!`, except for libtest's `--include-ignored` (as in
/// benches/verdict.rs: criterion 0.5 refuses arguments it does not know).
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
