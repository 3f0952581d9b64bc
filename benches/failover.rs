//! The two-gateway lab benchmark (issue 19; root): tests/common/lab/pair.rs,
//! keepalived moving the virtual addresses, a NATS cluster over the sync
//! link.
//!
//! - `rate`: A's short-connection rate with `[cluster]` and without, in
//!   rounds of one run (A's conntrackd restarted in each mode in turn, the
//!   order rotating; `examples/shortconn` as benches/e2e.sh runs it), with
//!   the CPU time per connection of each process and of A's threads.
//! - `failover`: 1,000 connections (`--conns`) through A to an echo server,
//!   a few bytes each way; A fails (its conntrackd SIGKILLed, its LAN links
//!   down); how many carry data again through B within 10 s, the time from
//!   the failure to B's first forwarded packet, to the first and the last
//!   connection's echo; and how long B took to hold copies of all of them
//!   after the last one was opened.
//! - `anchor`: the same failover with the kernel's conntrack (strict rules)
//!   on both gateways and conntrack-tools' conntrackd (FT-FW over UDP on the
//!   sync link), keepalived's notify scripts doing what conntrack-tools'
//!   primary-backup.sh does.
//!
//! Run as root: `cargo build --release --example shortconn && cargo bench
//! --bench failover` (`-- --only rate|failover|anchor`, `--rounds N`,
//! `--secs S`, `--conns N`; `--batch-ms MS`: `[cluster] batch_ms` of both
//! gateways; `--modes without,cluster,5,...`: A's modes in the rate part,
//! every one in every round, a number being `[cluster]` at that batch_ms;
//! `--b-idle`: B's conntrackd and nats-server at SCHED_IDLE for the rate
//! part, standing for a gateway with cores of its own). Needs keepalived, nats-server, and for the
//! anchor conntrack-tools' conntrackd (`apt-get install conntrackd`).

#![allow(clippy::disallowed_methods)] // not the core: benchmarks read clocks and start threads

#[path = "../tests/common/mod.rs"]
mod common;

use common::lab::{self, Background, Failover, Ns, Pair, PairConfig, Side, TcpEcho};
use common::lab::{NATS_PASSWORD, NATS_USER};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const ECHO_PORT: u16 = 8080;
const SHORT_PORT: u16 = 8081;
/// Bytes each way per exchange on the long connections.
const BYTES: usize = 16;
/// How long connections have to carry data again after the failure.
const SURVIVAL_LIMIT: Duration = Duration::from_secs(10);

const RULES: &str = r#"
[policy]
default = "drop"

[[rule]]
name = "echo"
action = "accept"
proto = "tcp"
dst_ports = [8080, 8081]
"#;

fn server(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(lab::SERVER4), port)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    }
}

fn ms(d: Option<Duration>) -> String {
    d.map(|d| format!("{:.0}", d.as_secs_f64() * 1e3))
        .unwrap_or_else(|| "-".into())
}

// ---- conntrackd (ours) on both gateways -------------------------------------

fn gateway_rules(pair: &Pair, side: Side, mode: Mode) -> PathBuf {
    let (me, other) = (side.letter(), side.other().letter());
    let mut text = RULES.to_string();
    if let Mode::Cluster(batch_ms) = mode {
        text += &format!(
            "\n[cluster]\nservers = [\"nats://127.0.0.1:4222\", \"nats://{peer}:4222\"]\n\
             node = \"gw-{me}\"\npeers = [\"gw-{other}\"]\nuser = \"{NATS_USER}\"\n\
             password = \"{NATS_PASSWORD}\"\n",
            peer = side.other().sync4(),
        );
        if let Some(ms) = batch_ms {
            text += &format!("batch_ms = {ms}\n");
        }
    }
    let name = format!("rules-{me}-{}.toml", mode.name().replace('/', "-"));
    pair.write_file(&name, &text)
}

fn start_gateway(pair: &Pair, side: Side, mode: Mode) -> lab::Daemon {
    let gw = pair.gw(side);
    if !gw.ruleset(false).contains("NFQUEUE") {
        for v6 in [false, true] {
            gw.iptables(v6, "-I FORWARD -j NFQUEUE --queue-num 0");
        }
    }
    let rules = gateway_rules(pair, side, mode);
    pair.start_daemon(side, &["--rules", rules.to_str().expect("a UTF-8 path")])
}

/// Peer copies on `side` of connections to `port` (`conntrackd flows`).
fn peer_copies(pair: &Pair, side: Side, port: u16) -> usize {
    let port_arg = port.to_string();
    let (ok, out) = lab::ctl(
        &pair.control_socket(side),
        &["flows", "--json", "--port", &port_arg],
    );
    if !ok {
        return 0;
    }
    lab::json_lines(&out)
        .iter()
        .filter(|f| f["peer"] == true && f["dport"] == port)
        .count()
}

fn cluster_json(pair: &Pair, side: Side) -> serde_json::Value {
    let (_, out) = lab::ctl(&pair.control_socket(side), &["cluster", "--json"]);
    lab::json_lines(&out)
        .pop()
        .unwrap_or(serde_json::Value::Null)
}

fn shortconn_binary() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_conntrackd"));
    let path = bin
        .parent()
        .expect("the binary's folder")
        .join("examples/shortconn");
    assert!(
        path.exists(),
        "{} is missing: cargo build --release --example shortconn (same CARGO_TARGET_DIR)",
        path.display()
    );
    path
}

/// One round of short connections from the client; connections per second.
fn shortconn_round(pair: &Pair, threads: usize, secs: u64) -> (f64, u64) {
    let bin = shortconn_binary();
    let out = lab::run_timeout(
        Command::new("ip")
            .args(["netns", "exec", &pair.client.name])
            .arg(&bin)
            .args([
                "client",
                &server(SHORT_PORT).to_string(),
                &threads.to_string(),
                &secs.to_string(),
            ]),
        Duration::from_secs(secs + 15),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let words: Vec<&str> = text.split_whitespace().collect();
    let rate = words
        .iter()
        .position(|w| *w == "connections_per_second")
        .and_then(|i| words.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    let errors = words
        .iter()
        .position(|w| *w == "errors")
        .and_then(|i| words.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    (rate, errors)
}

/// A's conntrackd restarted in `mode`; back as master, and settled.
///
/// A still holds the virtual addresses right after the stop: its
/// keepalived's track script (every second) has not run yet. It fails a
/// moment later (conntrackd down, or with `[cluster]` syncing its bulk
/// copy), B takes over, and A takes the addresses back after an advert
/// timeout: a round started before that would run partly through B. So A
/// must be ready, then hold the addresses without a break for longer than
/// a track interval and an advert timeout.
fn restart_a(pair: &Pair, a: &mut lab::Daemon, mode: Mode) {
    a.stop();
    *a = start_gateway(pair, Side::A, mode);
    let socket = pair.control_socket(Side::A);
    let start = Instant::now();
    while !lab::ctl(&socket, &["status"]).0 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "A's conntrackd not ready in 30 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let settled = Duration::from_millis(2500);
    let mut held_since = None;
    loop {
        pair.wait_master(Side::A, Duration::from_secs(30));
        let since = *held_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= settled {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
        if pair.master() != Some(Side::A) {
            held_since = None;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "A did not keep the virtual addresses for {settled:?} within 60 s"
        );
    }
}

/// utime + stime of a process, in seconds (all its threads).
fn process_cpu(pid: i32) -> f64 {
    stat_cpu(&format!("/proc/{pid}/stat"))
}

/// utime + stime from a /proc stat file, in seconds.
fn stat_cpu(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf reads a constant of the system; no memory is passed.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}

/// CPU seconds so far of a process's threads, summed by thread name.
fn thread_cpu(pid: i32) -> std::collections::BTreeMap<String, f64> {
    let mut by_name = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return by_name;
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let secs = stat_cpu(dir.join("stat").to_str().unwrap_or(""));
        *by_name.entry(name.trim().to_string()).or_insert(0.0) += secs;
    }
    by_name
}

/// The pids of the processes named `comm` in a gateway's namespace.
fn pids_named(ns: &Ns, comm: &str) -> Vec<i32> {
    let out = Command::new("ip")
        .args(["netns", "pids", &ns.name])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .collect()
}

/// CPU seconds so far of conntrackd and nats-server in a gateway.
fn gateway_cpu(pair: &Pair, side: Side) -> (f64, f64) {
    let sum = |comm: &str| {
        pids_named(pair.gw(side), comm)
            .into_iter()
            .map(process_cpu)
            .sum::<f64>()
    };
    (sum("conntrackd"), sum("nats-server"))
}

fn bench_rate(pair: &Pair, a: &mut lab::Daemon, rounds: usize, secs: u64, modes: &[Mode]) {
    let _server = Background::spawn(
        &pair.server,
        &[
            shortconn_binary().to_str().unwrap(),
            "server",
            &server(SHORT_PORT).to_string(),
        ],
        &pair.dir.path().join("shortconn-server.log"),
    );
    pair.client.sh(&[
        "sh",
        "-c",
        "echo 1 > /proc/sys/net/ipv4/tcp_tw_reuse; echo '1024 65000' > /proc/sys/net/ipv4/ip_local_port_range",
    ]);
    std::thread::sleep(Duration::from_millis(300));
    let threads = 4;
    let names: Vec<String> = modes.iter().map(|m| m.name()).collect();
    println!(
        "\n== a. short connections/s through A (shortconn client, {threads} threads, {secs} s per round), \
         A's conntrackd in each mode ({}) every round, the order rotating",
        names.join(", ")
    );
    println!(
        "{:>5} {:>12} {:>9} {:>7} {:>9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>7}",
        "round",
        "mode",
        "conn/s",
        "errors",
        "records",
        "A ctd",
        "A worker",
        "A cluster",
        "A nats",
        "B ctd",
        "B nats",
        "B fwd"
    );
    println!(
        "  (CPU microseconds per connection of each process or A's threads, utime+stime over the \
         round; B fwd: packets B forwarded meanwhile, which should be none)"
    );
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); modes.len()];
    let alone = modes.iter().position(|m| *m == Mode::Alone);
    for round in 0..rounds {
        // Each mode first in as many rounds as the others.
        let mut this = vec![0.0f64; modes.len()];
        for k in 0..modes.len() {
            let i = (round + k) % modes.len();
            let mode = modes[i];
            restart_a(pair, a, mode);
            let before = cluster_json(pair, Side::A)["records_sent"]
                .as_u64()
                .unwrap_or(0);
            let a_pid = pids_named(pair.gw(Side::A), "conntrackd");
            let threads0 = a_pid.first().map(|&p| thread_cpu(p)).unwrap_or_default();
            let cpu0 = [gateway_cpu(pair, Side::A), gateway_cpu(pair, Side::B)];
            let b0 = pair.gw(Side::B).enter(forwarded_here);
            let logs0 = [
                pair.keepalived_log(Side::A).len(),
                pair.keepalived_log(Side::B).len(),
            ];
            let (rate, errors) = shortconn_round(pair, threads, secs);
            let b_forwarded = pair.gw(Side::B).enter(forwarded_here) - b0;
            // Some of the round went through B: what keepalived said
            // (its log is buffered: some of it may show after a later round).
            for (side, from) in [(Side::A, logs0[0]), (Side::B, logs0[1])] {
                let log = pair.keepalived_log(side);
                let said = log.get(from..).unwrap_or("").lines();
                for line in said.filter(|l| b_forwarded > 0 && l.contains("STATE")) {
                    println!("      keepalived {}: {line}", side.letter());
                }
            }
            let cpu1 = [gateway_cpu(pair, Side::A), gateway_cpu(pair, Side::B)];
            let threads1 = a_pid.first().map(|&p| thread_cpu(p)).unwrap_or_default();
            let conns = (rate * secs as f64).max(1.0);
            let per = |x1: f64, x0: f64| (x1 - x0) / conns * 1e6;
            let thread = |name: &str| {
                per(
                    threads1.get(name).copied().unwrap_or(0.0),
                    threads0.get(name).copied().unwrap_or(0.0),
                )
            };
            let us = [
                per(cpu1[0].0, cpu0[0].0),
                thread("ctd-q0"),
                thread("ctd-cluster"),
                per(cpu1[0].1, cpu0[0].1),
                per(cpu1[1].0, cpu0[1].0),
                per(cpu1[1].1, cpu0[1].1),
            ];
            cpu[i].push(us[0] + us[3]);
            let sent = cluster_json(pair, Side::A)["records_sent"]
                .as_u64()
                .map(|n| (n - before).to_string())
                .unwrap_or_else(|| "-".into());
            println!(
                "{:>5} {:>12} {:>9.0} {:>7} {:>9} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>7}",
                round + 1,
                mode.name(),
                rate,
                errors,
                sent,
                us[0],
                us[1],
                us[2],
                us[3],
                us[4],
                us[5],
                b_forwarded
            );
            this[i] = rate;
            rates[i].push(rate);
        }
        if let Some(alone) = alone {
            for (i, r) in this.iter().enumerate() {
                ratios[i].push(r / this[alone]);
            }
        }
    }
    for (i, mode) in modes.iter().enumerate() {
        let rate = median(rates[i].clone());
        let ratio = alone
            .map(|alone| {
                let mut per_round = ratios[i].clone();
                per_round.sort_by(f64::total_cmp);
                format!(
                    "; against without: ratio of the medians {:.3}, median of the per-round ratios \
                     {:.3} (quartiles {:.3}-{:.3})",
                    rate / median(rates[alone].clone()),
                    median(per_round.clone()),
                    quantile(&per_round, 0.25),
                    quantile(&per_round, 0.75)
                )
            })
            .unwrap_or_default();
        println!(
            "{}: median {rate:.0} conn/s, A's conntrackd + nats-server {:.1} us per connection{ratio}",
            mode.name(),
            median(cpu[i].clone())
        );
    }
    println!("(target: with [cluster] >= 0.95 of without)");
}

/// A sorted sample's `q` quantile (nearest rank).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// How a gateway's conntrackd runs: alone, or with `[cluster]` (at a
/// `batch_ms`, or the daemon's default).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Alone,
    Cluster(Option<u16>),
}

impl Mode {
    fn name(&self) -> String {
        match self {
            Mode::Alone => "without".into(),
            Mode::Cluster(None) => "cluster".into(),
            Mode::Cluster(Some(ms)) => format!("cluster/{ms}ms"),
        }
    }

    /// `without`, `cluster`, or a `batch_ms` in milliseconds.
    fn parse(word: &str) -> Mode {
        match word {
            "without" => Mode::Alone,
            "cluster" => Mode::Cluster(None),
            ms => Mode::Cluster(Some(
                ms.parse().expect("--modes: without, cluster or N (ms)"),
            )),
        }
    }
}

// ---- the failover of many connections -----------------------------------------

/// `n` connections from the client to the echo server, each with an exchange.
fn open_connections(pair: &Pair, n: usize) -> Vec<TcpStream> {
    let to = server(ECHO_PORT);
    let conns = pair.client.enter(move || {
        let mut conns = Vec::with_capacity(n);
        for i in 0..n {
            match TcpStream::connect_timeout(&to, Duration::from_secs(3)) {
                Ok(s) => conns.push(s),
                Err(e) => panic!("connection {i} to {to}: {e}"),
            }
        }
        conns
    });
    let ok = exchange_all(&conns, 0x10, Duration::from_secs(20), Instant::now());
    let good = ok.iter().filter(|t| t.is_some()).count();
    assert_eq!(
        good, n,
        "{good} of {n} connections exchanged before the failure"
    );
    conns
}

fn payload(i: usize, salt: u8) -> [u8; BYTES] {
    let mut p = [0u8; BYTES];
    for (k, b) in p.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31) ^ (k as u8) ^ salt;
    }
    p
}

/// Writes a few bytes on every connection and waits (poll) for each echo,
/// until `limit`; per connection, when its echo was complete (since `since`).
fn exchange_all(
    conns: &[TcpStream],
    salt: u8,
    limit: Duration,
    since: Instant,
) -> Vec<Option<Duration>> {
    let mut done: Vec<Option<Duration>> = vec![None; conns.len()];
    let mut failed = vec![false; conns.len()];
    let mut got = vec![0usize; conns.len()];
    let mut bufs = vec![[0u8; BYTES]; conns.len()];
    for (i, mut s) in conns.iter().enumerate() {
        s.set_nonblocking(true).unwrap();
        if s.write_all(&payload(i, salt)).is_err() {
            failed[i] = true;
        }
    }
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let mut fds: Vec<libc::pollfd> = Vec::new();
        let mut which = Vec::new();
        for (i, s) in conns.iter().enumerate() {
            if done[i].is_none() && !failed[i] {
                fds.push(libc::pollfd {
                    fd: s.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                });
                which.push(i);
            }
        }
        if fds.is_empty() {
            break;
        }
        // SAFETY: `fds` is a live array of pollfd of the length passed; poll
        // writes only their revents.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 10) };
        if r <= 0 {
            continue;
        }
        for (f, &i) in fds.iter().zip(&which) {
            if f.revents == 0 {
                continue;
            }
            let mut s = &conns[i];
            match s.read(&mut bufs[i][got[i]..]) {
                Ok(0) => failed[i] = true,
                Ok(k) => {
                    got[i] += k;
                    if got[i] == BYTES {
                        if bufs[i] == payload(i, salt) {
                            done[i] = Some(since.elapsed());
                        } else {
                            failed[i] = true;
                        }
                        got[i] = 0;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => failed[i] = true,
            }
        }
    }
    for s in conns {
        let _ = s.set_nonblocking(false);
    }
    done
}

/// Packets forwarded by the namespace of the calling thread (IPv4
/// ForwDatagrams plus IPv6 OutForwDatagrams; /proc/thread-self/net is the
/// thread's namespace's).
fn forwarded_here() -> u64 {
    let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap_or_default();
    let mut ip = snmp.lines().filter(|l| l.starts_with("Ip: "));
    let v4 = match (ip.next(), ip.next()) {
        (Some(names), Some(values)) => names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == "ForwDatagrams")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0),
        _ => 0,
    };
    let snmp6 = std::fs::read_to_string("/proc/thread-self/net/snmp6").unwrap_or_default();
    let v6: u64 = snmp6
        .lines()
        .find_map(|l| l.strip_prefix("Ip6OutForwDatagrams"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    v4 + v6
}

/// A thread in `side`'s namespace that reads its forwarding counter now,
/// then polls it (every 0.5 ms) until it grows or `limit` passes; joined, the
/// time from the instant sent on the returned channel to the first increase.
fn watch_forwarded(
    pair: &Pair,
    side: Side,
    limit: Duration,
) -> (
    std::sync::mpsc::Sender<Instant>,
    std::thread::JoinHandle<Option<Duration>>,
) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<Instant>();
    let handle = pair.gw(side).spawn(move || {
        let base = forwarded_here();
        let _ = ready_tx.send(());
        let since = go_rx.recv().ok()?;
        let deadline = since + limit;
        while Instant::now() < deadline {
            if forwarded_here() > base {
                return Some(since.elapsed());
            }
            std::thread::sleep(Duration::from_micros(500));
        }
        None
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("the watcher read its counter");
    (go_tx, handle)
}

struct FailoverFigures {
    conns: usize,
    copied_after: Option<Duration>,
    survived: usize,
    first_forward: Option<Duration>,
    first_echo: Option<Duration>,
    last_echo: Option<Duration>,
    /// The failure's wall-clock time (Unix seconds), for the notify log.
    failed_unix: f64,
}

/// The failover of `conns` (open, through A): `fail` fails A; B's forwards
/// and the echoes are timed from just before it.
fn failover(
    pair: &Pair,
    conns: &[TcpStream],
    copied_after: Option<Duration>,
    fail: impl FnOnce(),
) -> FailoverFigures {
    let (go, watcher) = watch_forwarded(pair, Side::B, SURVIVAL_LIMIT);
    let failed_unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let t0 = Instant::now();
    let _ = go.send(t0);
    fail();
    let echoes = exchange_all(conns, 0x20, SURVIVAL_LIMIT, t0);
    let first_forward = watcher.join().expect("the watcher");
    let times: Vec<Duration> = echoes.iter().flatten().copied().collect();
    FailoverFigures {
        conns: conns.len(),
        copied_after,
        survived: times.len(),
        first_forward,
        first_echo: times.iter().min().copied(),
        last_echo: times.iter().max().copied(),
        failed_unix,
    }
}

fn print_failover(what: &str, f: &FailoverFigures) {
    println!(
        "{what}: {}/{} connections carried data again through B within {:?}; from the failure: \
         B's first forwarded packet {} ms, first echo {} ms, last echo {} ms; B held copies of \
         all {} connections {} ms after the last was opened",
        f.survived,
        f.conns,
        SURVIVAL_LIMIT,
        ms(f.first_forward),
        ms(f.first_echo),
        ms(f.last_echo),
        f.conns,
        ms(f.copied_after)
    );
}

/// Waits (bounded) until `count()` reaches `n`; the time since `since`.
fn wait_count(
    n: usize,
    since: Instant,
    limit: Duration,
    mut count: impl FnMut() -> usize,
) -> Option<Duration> {
    let deadline = Instant::now() + limit;
    loop {
        if count() >= n {
            return Some(since.elapsed());
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `k` new connections one at a time through A; for each, the time from
/// its connect() returning (the handshake done at the client) to `count()`
/// growing by one (polled every 2 ms, so the figures include the cost of one
/// poll). Returns the median and the max, in ms.
fn probe_lag(pair: &Pair, k: usize, mut count: impl FnMut() -> usize) -> Probe {
    let mut lags = Vec::new();
    let mut polls = Vec::new();
    let mut keep = Vec::new();
    for _ in 0..k {
        let before = count();
        let s = lab::connect(&pair.client, server(ECHO_PORT), Duration::from_secs(3))
            .expect("a probe connection");
        let opened = Instant::now();
        let deadline = opened + Duration::from_secs(3);
        while Instant::now() < deadline {
            let asked = Instant::now();
            let now = count();
            polls.push(asked.elapsed().as_secs_f64() * 1e3);
            if now > before {
                lags.push(opened.elapsed().as_secs_f64() * 1e3);
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        keep.push(s);
    }
    Probe {
        arrived: lags.len(),
        max: lags.iter().copied().fold(f64::NAN, f64::max),
        p50: median(lags),
        poll: median(polls),
    }
}

struct Probe {
    arrived: usize,
    p50: f64,
    max: f64,
    /// The median time one poll took.
    poll: f64,
}

fn print_probe(what: &str, k: usize, p: &Probe) {
    println!(
        "{what}: lag probe, {k} connections one at a time: {} reached B; from connect() \
         returning to B holding it (polled): median {:.1} ms, max {:.1} ms (one poll takes {:.1} ms)",
        p.arrived, p.p50, p.max, p.poll
    );
}

/// `cluster`: how both gateways run for the failover (and B throughout);
/// `modes`: A's modes in the rate benchmark.
/// `b_idle`: B's conntrackd and nats-server at idle priority for the rate
/// benchmark (`--b-idle`).
fn ours(
    only: Option<&str>,
    rounds: usize,
    secs: u64,
    n: usize,
    cluster: Mode,
    modes: &[Mode],
    b_idle: bool,
) {
    let Some(pair) = Pair::with(
        "bench_failover_conntrackd",
        PairConfig {
            failover: Failover::Keepalived,
            nats: true,
            track_conntrackd: true,
        },
    ) else {
        return;
    };
    let _b = start_gateway(&pair, Side::B, cluster);
    let mut a = start_gateway(&pair, Side::A, cluster);
    pair.wait_master(Side::A, Duration::from_secs(30));
    if only.is_none() || only == Some("failover") {
        println!("\n== b. failover of {n} established connections, conntrackd with [cluster] on both gateways");
        let _echo = TcpEcho::start(&pair.server, server(ECHO_PORT));
        let probe = probe_lag(&pair, 20, || peer_copies(&pair, Side::B, ECHO_PORT));
        print_probe("conntrackd [cluster]", 20, &probe);
        let lag = &cluster_json(&pair, Side::B)["peers"][0]["lag_ms"];
        println!(
            "B's own measure of A's messages (receive time less send time, ms): p50 {} p99 {} max {}",
            lag["p50"], lag["p99"], lag["max"]
        );
        let base = peer_copies(&pair, Side::B, ECHO_PORT);
        let conns = open_connections(&pair, n);
        let opened = Instant::now();
        let copied = wait_count(base + n, opened, Duration::from_secs(10), || {
            peer_copies(&pair, Side::B, ECHO_PORT)
        });
        let figures = failover(&pair, &conns, copied, || {
            a.kill9();
            pair.fail(Side::A);
        });
        print_failover("conntrackd [cluster]", &figures);
        let b = cluster_json(&pair, Side::B);
        println!(
            "B's cluster state after: records received from A {}",
            b["peers"][0]["records_received"]
        );
        // A comes back (its links, a new conntrackd that copies B's table)
        // and takes the addresses back, for what follows.
        drop(conns);
        pair.recover(Side::A);
        a = start_gateway(&pair, Side::A, cluster);
        pair.wait_master(Side::A, Duration::from_secs(30));
    }
    if only.is_none() || only == Some("rate") {
        if b_idle {
            // B stands for a gateway of its own: its conntrackd and
            // nats-server take only the CPU that A's side leaves idle.
            for comm in ["conntrackd", "nats-server"] {
                for pid in pids_named(pair.gw(Side::B), comm) {
                    let ok = Command::new("chrt")
                        .args(["--all-tasks", "--idle", "--pid", "0", &pid.to_string()])
                        .status()
                        .is_ok_and(|s| s.success());
                    assert!(ok, "chrt --idle on B's {comm} ({pid})");
                }
            }
            println!("\nB's conntrackd and nats-server run as SCHED_IDLE (--b-idle)");
        }
        bench_rate(&pair, &mut a, rounds, secs, modes);
    }
}

// ---- the anchor: kernel conntrack and conntrack-tools -------------------------

fn strict_kernel_conntrack(gw: &Ns) {
    for v6 in [false, true] {
        for rule in [
            "-P FORWARD DROP",
            "-A FORWARD -m conntrack --ctstate INVALID -j DROP",
            "-A FORWARD -p tcp ! --syn -m conntrack --ctstate NEW -j DROP",
            "-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
            "-A FORWARD -m conntrack --ctstate NEW -j ACCEPT",
        ] {
            gw.iptables(v6, rule);
        }
    }
    gw.sysctl("net.netfilter.nf_conntrack_tcp_loose", "0");
    gw.sysctl("net.netfilter.nf_conntrack_tcp_be_liberal", "0");
}

/// conntrack-tools' FT-FW configuration of one gateway: UDP on the sync link.
fn ctt_conf(pair: &Pair, side: Side) -> PathBuf {
    let l = side.letter();
    let dir = pair.dir.path();
    let text = format!(
        r#"Sync {{
	Mode FTFW {{
		DisableExternalCache Off
	}}
	UDP {{
		IPv4_address {me}
		IPv4_Destination_Address {peer}
		Port 3780
		Interface sync
		SndSocketBuffer 1249280
		RcvSocketBuffer 1249280
		Checksum on
	}}
}}
General {{
	HashSize 32768
	HashLimit 131072
	LogFile {log}
	Syslog off
	LockFile {lock}
	UNIX {{
		Path {ctl}
	}}
	NetlinkBufferSize 2097152
	NetlinkBufferSizeMaxGrowth 8388608
	Filter From Userspace {{
		Protocol Accept {{
			TCP
		}}
		Address Ignore {{
			IPv4_address 127.0.0.1
			IPv4_address {me}
			IPv4_address {peer}
		}}
	}}
}}
"#,
        me = side.sync4(),
        peer = side.other().sync4(),
        log = dir.join(format!("ctt-{l}.log")).display(),
        lock = dir.join(format!("ctt-{l}.lock")).display(),
        ctl = dir.join(format!("ctt-{l}.ctl")).display(),
    );
    pair.write_file(&format!("ctt-{l}.conf"), &text)
}

/// conntrack-tools' primary-backup.sh for this gateway's conntrackd.
fn notify_script(pair: &Pair, side: Side, conf: &Path) -> PathBuf {
    let l = side.letter();
    let text = format!(
        r#"#!/bin/sh
# conntrack-tools' doc/sync/primary-backup.sh, for the lab's conntrackd.
C="/usr/sbin/conntrackd -C {conf}"
echo "$(date +%s.%N) $1" >> {log}
case "$1" in
  primary)
    $C -c; $C -f; $C -R; $C -B ;;
  backup)
    $C -s >/dev/null || $C -d
    $C -t; $C -n ;;
  fault)
    $C -t ;;
esac
echo "$(date +%s.%N) $1 done" >> {log}
exit 0
"#,
        conf = conf.display(),
        log = pair.dir.path().join(format!("notify-{l}.log")).display(),
    );
    pair.write_file(&format!("primary-backup-{l}.sh"), &text)
}

/// Entries in the external cache of `side`'s conntrackd to `port`.
fn external_cache(pair: &Pair, side: Side, conf: &Path, port: u16) -> usize {
    let out = pair
        .gw(side)
        .output(&["/usr/sbin/conntrackd", "-C", conf.to_str().unwrap(), "-e"]);
    let needle = format!("dport={port} ");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&needle))
        .count()
}

fn anchor(n: usize) {
    if !Path::new("/usr/sbin/conntrackd").exists() {
        println!("\n== c. anchor skipped: no /usr/sbin/conntrackd (apt-get install conntrackd conntrack)");
        return;
    }
    let Some(pair) = Pair::with(
        "bench_failover_anchor",
        PairConfig {
            failover: Failover::Keepalived,
            nats: false,
            track_conntrackd: false,
        },
    ) else {
        return;
    };
    println!(
        "\n== c. anchor: failover of {n} established connections, kernel conntrack (strict) and \
         conntrack-tools' conntrackd FT-FW over UDP on the sync link"
    );
    let mut confs = Vec::new();
    let mut daemons = Vec::new();
    for side in Side::BOTH {
        strict_kernel_conntrack(pair.gw(side));
        let conf = ctt_conf(&pair, side);
        daemons.push(Background::spawn(
            pair.gw(side),
            &["/usr/sbin/conntrackd", "-C", conf.to_str().unwrap()],
            &pair.dir.path().join(format!("ctt-{}.out", side.letter())),
        ));
        confs.push(conf);
    }
    std::thread::sleep(Duration::from_millis(500));
    // keepalived again, with primary-backup.sh as the sync group's notify.
    for side in [Side::B, Side::A] {
        let script = notify_script(&pair, side, &confs[side as usize]);
        let notify = format!(
            "vrrp_sync_group LANS {{\n    notify_master \"/bin/sh {s} primary\"\n    \
             notify_backup \"/bin/sh {s} backup\"\n    notify_fault \"/bin/sh {s} fault\"\n",
            s = script.display()
        );
        let conf = pair
            .keepalived_conf(side)
            .replace("vrrp_sync_group LANS {\n", &notify);
        assert!(conf.contains("notify_master"), "{conf}");
        pair.restart_keepalived(side, &conf);
    }
    pair.wait_master(Side::A, Duration::from_secs(30));
    // The notify scripts of the last transitions have run.
    std::thread::sleep(Duration::from_secs(3));

    let _echo = TcpEcho::start(&pair.server, server(ECHO_PORT));
    let probe = probe_lag(&pair, 20, || {
        external_cache(&pair, Side::B, &confs[1], ECHO_PORT)
    });
    print_probe("conntrack-tools FT-FW (B's external cache)", 20, &probe);
    let base = external_cache(&pair, Side::B, &confs[1], ECHO_PORT);
    let conns = open_connections(&pair, n);
    let opened = Instant::now();
    let copied = wait_count(base + n, opened, Duration::from_secs(10), || {
        external_cache(&pair, Side::B, &confs[1], ECHO_PORT)
    });
    let mut a = daemons.remove(0);
    let figures = failover(&pair, &conns, copied, || {
        a.kill();
        pair.fail(Side::A);
    });
    print_failover("kernel conntrack + conntrack-tools FT-FW", &figures);
    // B's primary-backup.sh: when it started and ended after the failure.
    let notify = std::fs::read_to_string(pair.dir.path().join("notify-b.log")).unwrap_or_default();
    let mut started = None;
    for line in notify.lines() {
        let mut w = line.split_whitespace();
        let (Some(t), Some(what)) = (w.next().and_then(|t| t.parse::<f64>().ok()), w.next()) else {
            continue;
        };
        if t < figures.failed_unix || what != "primary" {
            continue;
        }
        match (w.next(), started) {
            (None, None) => started = Some(t),
            (Some("done"), Some(s)) => {
                println!(
                    "B's notify_master (primary-backup.sh primary: -c -f -R -B) ran from {:.0} ms to \
                     {:.0} ms after the failure",
                    (s - figures.failed_unix) * 1e3,
                    (t - figures.failed_unix) * 1e3
                );
                break;
            }
            _ => {}
        }
    }
}

fn main() {
    // `cargo test --all-targets` runs this binary without --bench (and with
    // the test harness's arguments): the lab needs root and minutes, so a
    // test run only says how to run it.
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!("failover: a benchmark, run as root with `cargo bench --bench failover`");
        return;
    }
    let mut only: Option<String> = None;
    let mut rounds = 4usize;
    let mut secs = 3u64;
    let mut n = 1000usize;
    let mut batch_ms: Option<u16> = None;
    let mut modes: Option<Vec<Mode>> = None;
    let mut b_idle = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--only" => only = args.next(),
            "--rounds" => rounds = args.next().unwrap().parse().unwrap(),
            "--secs" => secs = args.next().unwrap().parse().unwrap(),
            "--conns" => n = args.next().unwrap().parse().unwrap(),
            "--b-idle" => b_idle = true,
            "--batch-ms" => batch_ms = Some(args.next().unwrap().parse().unwrap()),
            "--modes" => {
                modes = Some(args.next().unwrap().split(',').map(Mode::parse).collect());
            }
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    assert!((1..=30).contains(&rounds), "--rounds: 1 to 30");
    assert!((1..=10).contains(&secs), "--secs: 1 to 10");
    assert!((1..=5000).contains(&n), "--conns: 1 to 5000");
    // The client's and the echo server's ends of every connection, and the
    // echo threads: raise the descriptor limit.
    let limit = libc::rlimit {
        rlim_cur: 65536,
        rlim_max: 65536,
    };
    // SAFETY: setrlimit reads the struct passed, which outlives the call.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    let started = Instant::now();
    let only = only.as_deref();
    if only != Some("anchor") {
        let modes = modes.unwrap_or_else(|| vec![Mode::Cluster(batch_ms), Mode::Alone]);
        ours(
            only,
            rounds,
            secs,
            n,
            Mode::Cluster(batch_ms),
            &modes,
            b_idle,
        );
    }
    if only.is_none() || only == Some("anchor") {
        anchor(n);
    }
    println!(
        "\nfailover bench: {:.0} s in all",
        started.elapsed().as_secs_f64()
    );
}
