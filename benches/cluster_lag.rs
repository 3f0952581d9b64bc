//! Replication lag of the cluster (issue 19), no root needed: two engines
//! and their cluster threads in this process, over a real NATS cluster of
//! two nats-servers on 127.0.0.1 (A on one, B on the other, so every record
//! crosses a route, as between two gateways each with its own server).
//!
//! Engine A decides whole TCP handshakes (crafted packets, `Engine::decide`)
//! at a paced rate of new connections per second, then as fast as this one
//! thread can; for each connection the lag is the time from A's verdict on
//! its SYN (an `Instant` right after `decide`) to the connection's entry
//! appearing on B (B's table observer, at `Change::New` of a peer entry).
//!
//! Reports per rate: lag p50/p99/max, connections that never arrived,
//! records and payload bytes A published per connection, changes A's outbox
//! could not take, and each cluster thread's CPU time (utime+stime of the
//! thread named `ctd-cluster`, /proc/self/task) as a fraction of one core.
//!
//! Run: `cargo bench --bench cluster_lag` (`-- --secs 3 --rounds 3
//! --max-conns 1000000 --rates 10,1000,5000,max`;
//! `--one-server`: A and B on the same server). Needs nats-server
//! (`NATS_SERVER`, else /usr/bin or /usr/sbin).

#![allow(clippy::disallowed_methods)] // not the core: benchmarks read clocks and start threads

use conntrackd::conntrack::key::{FlowKey, Side};
use conntrackd::conntrack::table::{Change, Conn, Observer};
use conntrackd::daemon::cluster::{self, ClusterSettings};
use conntrackd::daemon::shared::cluster::{ClusterState, Link, Observers};
use conntrackd::daemon::shared::{Shared, StopSwitch};
use conntrackd::wire::{build, TcpFlags};
use conntrackd::{Config, Context, Engine, Verdict};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[path = "../tests/common/local_nats.rs"]
mod local_nats;
use local_nats::{free_port, start_server, PASSWORD, USER};
/// Connections per client address (ports 10000..60000).
const PER_ADDR: u32 = 50_000;

/// B's observer: the daemon's, and the time each of A's connections first
/// appears here as a peer entry (ns since `base`; 0: not yet).
struct Recorder {
    inner: Observers,
    base: Instant,
    seen: Arc<Vec<AtomicU64>>,
}

impl Observer for Recorder {
    fn active(&self) -> bool {
        true
    }

    fn observe(&self, change: Change, key: &FlowKey, conn: &Conn) {
        if change == Change::New && conn.peer() {
            if let Some(i) = index_of(key) {
                if let Some(slot) = self.seen.get(i) {
                    let ns = self.base.elapsed().as_nanos() as u64;
                    let _ =
                        slot.compare_exchange(0, ns.max(1), Ordering::Relaxed, Ordering::Relaxed);
                }
            }
        }
        if self.inner.active() {
            self.inner.observe(change, key, conn);
        }
    }
}

/// Connection `i`: 198.18.(i / 50000 / 256).(i / 50000 % 256 + 1):(10000 + i % 50000) to 198.19.0.2:443.
fn client_of(i: usize) -> SocketAddr {
    let i = i as u32;
    let addr = i / PER_ADDR;
    let ip = Ipv4Addr::new(198, 18, (addr / 250) as u8, (addr % 250 + 1) as u8);
    SocketAddr::new(IpAddr::V4(ip), (10_000 + i % PER_ADDR) as u16)
}

fn index_of(key: &FlowKey) -> Option<usize> {
    for side in [Side::Lo, Side::Hi] {
        if let (IpAddr::V4(ip), port) = key.endpoint(side) {
            let o = ip.octets();
            if o[0] == 198 && o[1] == 18 && port >= 10_000 {
                let addr = u32::from(o[2]) * 250 + u32::from(o[3]) - 1;
                return Some((addr * PER_ADDR + u32::from(port) - 10_000) as usize);
            }
        }
    }
    None
}

struct Gateway {
    engine: Arc<Engine>,
    shared: Arc<Shared>,
    state: Arc<ClusterState>,
    stop: StopSwitch,
    thread: Option<JoinHandle<()>>,
    /// The kernel thread id of its cluster thread.
    tid: u32,
}

fn cluster_tids() -> Vec<u32> {
    let mut tids = Vec::new();
    for entry in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() == "ctd-cluster" {
            if let Ok(tid) = entry.file_name().to_string_lossy().parse() {
                tids.push(tid);
            }
        }
    }
    tids
}

/// utime + stime of a thread of this process, in seconds.
fn cpu_secs(tid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap_or_default();
    // After the ")" closing comm: state is field 3; utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0)
        + fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf reads a constant of the system; no memory is passed.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    ticks as f64 / hz
}

/// `[cluster] batch_ms` of both nodes (`--batch-ms`; the default otherwise).
static BATCH_MS: std::sync::OnceLock<u16> = std::sync::OnceLock::new();

impl Gateway {
    fn start(
        node: &str,
        peer: &str,
        port: u16,
        subject: &str,
        recorder: Option<(Instant, Arc<Vec<AtomicU64>>)>,
    ) -> Gateway {
        let rules = format!(
            "[engine]\nmax_connections = 1048576\n[policy]\ndefault = \"accept\"\n[cluster]\n\
             servers = \"nats://127.0.0.1:{port}\"\nnode = \"{node}\"\npeers = \"{peer}\"\n\
             subject = \"{subject}\"\nuser = \"{USER}\"\npassword = \"{PASSWORD}\"\n\
             bulk_timeout_ms = 1000\n{batch}",
            batch = BATCH_MS
                .get()
                .map(|ms| format!("batch_ms = {ms}\n"))
                .unwrap_or_default(),
        );
        let (config, _, settings) = Config::parse_shell::<serde::de::IgnoredAny, ClusterSettings>(
            &rules,
            Path::new("bench.toml"),
        )
        .unwrap();
        let settings = settings.unwrap();
        let engine = Arc::new(Engine::new(config.engine, config.policy));
        let shared = Arc::new(Shared::new(Instant::now(), &[0]));
        let state = cluster::state_for(&settings);
        let _ = shared.cluster.set(state.clone());
        let inner = Observers {
            hub: shared.hub.clone(),
            cluster: Some(state.clone()),
        };
        match recorder {
            Some((base, seen)) => {
                engine
                    .table()
                    .set_observer(Arc::new(Recorder { inner, base, seen }))
            }
            None => engine.table().set_observer(Arc::new(inner)),
        }
        let before = cluster_tids();
        let stop = StopSwitch::default();
        let thread = cluster::start(
            settings,
            state.clone(),
            engine.clone(),
            shared.clone(),
            stop.stop(),
        )
        .unwrap();
        let until = Instant::now() + Duration::from_secs(5);
        let tid = loop {
            if let Some(t) = cluster_tids().into_iter().find(|t| !before.contains(t)) {
                break t;
            }
            assert!(Instant::now() < until, "no new ctd-cluster thread");
            std::thread::sleep(Duration::from_millis(5));
        };
        Gateway {
            engine,
            shared,
            state,
            stop,
            thread: Some(thread),
            tid,
        }
    }

    /// Connection `i`'s handshake; the instant right after the SYN's verdict.
    fn handshake(&self, i: usize) -> Instant {
        let c = client_of(i);
        let s: SocketAddr = "198.19.0.2:443".parse().unwrap();
        let ctx = Context::default();
        let syn = build::tcp(c, s).flags(TcpFlags::SYN).seq(1000).build();
        let d = self.engine.decide(&syn, &ctx, self.shared.now());
        let after_syn = Instant::now();
        assert_eq!(d.verdict(), Verdict::Accept, "{d:?}");
        for packet in [
            build::tcp(s, c)
                .flags(TcpFlags::SYN | TcpFlags::ACK)
                .seq(5000)
                .ack(1001)
                .build(),
            build::tcp(c, s)
                .flags(TcpFlags::ACK)
                .seq(1001)
                .ack(5001)
                .build(),
        ] {
            let d = self.engine.decide(&packet, &ctx, self.shared.now());
            assert_eq!(d.verdict(), Verdict::Accept, "{d:?}");
        }
        after_syn
    }

    fn stop(mut self) {
        self.stop.trip();
        let thread = self.thread.take().unwrap();
        let until = Instant::now() + Duration::from_secs(10);
        while !thread.is_finished() {
            assert!(Instant::now() < until, "the cluster thread did not stop");
            std::thread::sleep(Duration::from_millis(10));
        }
        thread.join().unwrap();
    }
}

fn wait(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let until = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < until, "timed out waiting until {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

struct Row {
    label: String,
    conns: usize,
    achieved: f64,
    arrived: usize,
    p50: f64,
    p99: f64,
    max: f64,
    records_per_conn: f64,
    bytes_per_conn: f64,
    dropped: u64,
    cpu_a: f64,
    cpu_b: f64,
}

fn quantile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i] as f64 / 1e6
}

/// One run: fresh gateways on their own subject; `rate` None: as fast as
/// one thread decides.
fn run(ports: (u16, u16), round: usize, rate: Option<u64>, secs: f64, max_conns: usize) -> Row {
    let subject = format!("ctd-bench-{}-{round}", std::process::id());
    let n = match rate {
        Some(r) => ((r as f64 * secs) as usize).min(max_conns),
        None => max_conns,
    };
    let base = Instant::now();
    let seen: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
    let a = Gateway::start("gw-a", "gw-b", ports.0, &subject, None);
    let b = Gateway::start(
        "gw-b",
        "gw-a",
        ports.1,
        &subject,
        Some((base, seen.clone())),
    );
    wait(
        "both ready and hearing each other",
        Duration::from_secs(15),
        || {
            let heard = |g: &Gateway| {
                g.state
                    .peers()
                    .iter()
                    .all(|p| p.last_heard_unix_ms.is_some())
            };
            a.state.link() == Link::Connected
                && b.state.link() == Link::Connected
                && a.state.ready()
                && b.state.ready()
                && heard(&a)
                && heard(&b)
        },
    );
    let (records0, bytes0) = (
        a.state.records_sent.load(Ordering::Relaxed),
        a.state.bytes_sent.load(Ordering::Relaxed),
    );
    let (cpu_a0, cpu_b0) = (cpu_secs(a.tid), cpu_secs(b.tid));
    let mut sent = vec![0u64; n];
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(secs);
    let mut done = 0;
    while done < n {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let due = match rate {
            Some(r) => (((now - started).as_secs_f64() * r as f64) as usize + 1).min(n),
            None => n,
        };
        if done >= due {
            std::thread::sleep(Duration::from_micros(100));
            continue;
        }
        // At most 1,000 at once, so that the deadline is looked at.
        let end = due.min(done + 1000);
        for (i, slot) in sent.iter_mut().enumerate().take(end).skip(done) {
            *slot = (a.handshake(i) - base).as_nanos() as u64;
        }
        done = end;
    }
    let drive = started.elapsed().as_secs_f64();
    let n = done;
    // Until every connection is on B, or 10 s.
    let until = Instant::now() + Duration::from_secs(10);
    while Instant::now() < until && seen[..n].iter().any(|s| s.load(Ordering::Relaxed) == 0) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let window = started.elapsed().as_secs_f64();
    let (cpu_a, cpu_b) = (cpu_secs(a.tid) - cpu_a0, cpu_secs(b.tid) - cpu_b0);
    let records = a.state.records_sent.load(Ordering::Relaxed) - records0;
    let bytes = a.state.bytes_sent.load(Ordering::Relaxed) - bytes0;
    let dropped = a.state.dropped.load(Ordering::Relaxed);
    let mut lags: Vec<u64> = (0..n)
        .filter_map(|i| {
            let t = seen[i].load(Ordering::Relaxed);
            (t != 0).then(|| t.saturating_sub(sent[i]))
        })
        .collect();
    lags.sort_unstable();
    a.stop();
    b.stop();
    Row {
        label: match rate {
            Some(r) => format!("{r}/s"),
            None => "max".into(),
        },
        conns: n,
        achieved: n as f64 / drive,
        arrived: lags.len(),
        p50: quantile(&lags, 0.5),
        p99: quantile(&lags, 0.99),
        max: quantile(&lags, 1.0),
        records_per_conn: records as f64 / n.max(1) as f64,
        bytes_per_conn: bytes as f64 / n.max(1) as f64,
        dropped,
        cpu_a: cpu_a / window,
        cpu_b: cpu_b / window,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --all-targets` runs this
    // binary without it (and with the test harness's arguments): then a
    // smoke run only, a fraction of a second, that checks it works.
    if !std::env::args().any(|a| a == "--bench") {
        if !Path::new("/usr/bin/nats-server").exists()
            && !Path::new("/usr/sbin/nats-server").exists()
            && std::env::var_os("NATS_SERVER").is_none()
        {
            eprintln!("cluster_lag (smoke): SKIPPED, no nats-server");
            return;
        }
        bench(0.3, 1_000, 1, false, vec![Some(1_000)]);
        return;
    }
    let mut secs = 3.0;
    let mut max_conns = 1_000_000usize;
    let mut rounds = 3usize;
    let mut one_server = false;
    let mut rates: Vec<Option<u64>> = vec![Some(10), Some(1_000), Some(5_000), None];
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--secs" => secs = args.next().unwrap().parse().unwrap(),
            "--max-conns" => max_conns = args.next().unwrap().parse().unwrap(),
            "--rounds" => rounds = args.next().unwrap().parse().unwrap(),
            "--one-server" => one_server = true,
            "--batch-ms" => {
                let ms: u16 = args.next().unwrap().parse().unwrap();
                BATCH_MS.set(ms).unwrap();
            }
            "--rates" => {
                rates = args
                    .next()
                    .unwrap()
                    .split(',')
                    .map(|r| (r != "max").then(|| r.parse().expect("--rates: N,N,...,max")))
                    .collect()
            }
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    bench(secs, max_conns, rounds, one_server, rates);
}

fn bench(secs: f64, max_conns: usize, rounds: usize, one_server: bool, rates: Vec<Option<u64>>) {
    assert!(secs > 0.0 && secs <= 30.0, "--secs: 0 to 30");
    assert!(
        (1..=2_000_000).contains(&max_conns),
        "--max-conns: at most 2,000,000"
    );
    assert!((1..=10).contains(&rounds), "--rounds: 1 to 10");
    let binary = local_nats::nats_server().unwrap_or_else(|e| panic!("{e}"));
    let (p1, p2) = (free_port(), free_port());
    let (_s1, _s2, ports) = if one_server {
        (start_server(&binary, p1, None), None, (p1, p1))
    } else {
        let (c1, c2) = (free_port(), free_port());
        let s1 = start_server(&binary, p1, Some((c1, c2)));
        let s2 = start_server(&binary, p2, Some((c2, c1)));
        (s1, Some(s2), (p1, p2))
    };
    println!(
        "cluster_lag: {} on 127.0.0.1, {secs} s per run, {rounds} rounds, at most {max_conns} connections per run",
        if one_server {
            "one nats-server"
        } else {
            "a NATS cluster of two servers, A and B on different ones"
        }
    );
    println!(
        "{:<8} {:>5} {:>8} {:>10} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>8} {:>7} {:>7}",
        "rate",
        "round",
        "conns",
        "achieved/s",
        "missing",
        "p50 ms",
        "p99 ms",
        "max ms",
        "rec/conn",
        "B/conn",
        "dropped",
        "cpuA",
        "cpuB"
    );
    let mut rows: Vec<Row> = Vec::new();
    let mut round = 0;
    for r in 0..rounds {
        for &rate in &rates {
            round += 1;
            let row = run(ports, round, rate, secs, max_conns);
            println!(
                "{:<8} {:>5} {:>8} {:>10.0} {:>8} {:>8.2} {:>8.2} {:>8.2} {:>9.2} {:>9.1} {:>8} {:>6.1}% {:>6.1}%",
                row.label,
                r + 1,
                row.conns,
                row.achieved,
                row.conns - row.arrived,
                row.p50,
                row.p99,
                row.max,
                row.records_per_conn,
                row.bytes_per_conn,
                row.dropped,
                row.cpu_a * 100.0,
                row.cpu_b * 100.0
            );
            rows.push(row);
        }
    }
    println!("\nmedians over {rounds} rounds:");
    println!(
        "{:<8} {:>10} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>8} {:>7} {:>7}",
        "rate",
        "achieved/s",
        "missing",
        "p50 ms",
        "p99 ms",
        "max ms",
        "rec/conn",
        "B/conn",
        "dropped",
        "cpuA",
        "cpuB"
    );
    for rate in &rates {
        let label = match rate {
            Some(r) => format!("{r}/s"),
            None => "max".into(),
        };
        let of: Vec<&Row> = rows.iter().filter(|r| r.label == label).collect();
        let m = |f: &dyn Fn(&Row) -> f64| median(of.iter().map(|r| f(r)).collect());
        println!(
            "{:<8} {:>10.0} {:>8.0} {:>8.2} {:>8.2} {:>8.2} {:>9.2} {:>9.1} {:>8.0} {:>6.1}% {:>6.1}%",
            label,
            m(&|r| r.achieved),
            m(&|r| (r.conns - r.arrived) as f64),
            m(&|r| r.p50),
            m(&|r| r.p99),
            m(&|r| r.max),
            m(&|r| r.records_per_conn),
            m(&|r| r.bytes_per_conn),
            m(&|r| r.dropped as f64),
            m(&|r| r.cpu_a) * 100.0,
            m(&|r| r.cpu_b) * 100.0
        );
    }
}
