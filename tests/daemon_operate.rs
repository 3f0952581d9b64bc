//! Operating the running daemon through its control socket, as an operator
//! does with the `conntrackd` client: flows with counters, why, drops,
//! events, status, and who may use the socket. Real gateway namespaces
//! (tests/common/lab/), real TCP connections and crafted packets.
//!
//! The tests need root, so they are `#[ignore]`d: run them with
//! `CI=true cargo test --all-targets -- --include-ignored`.

#![allow(clippy::disallowed_methods)] // not the core: tests, benchmarks and tools read clocks and start threads

mod common;

use common::lab::{self, ctl, json_lines, Lab, RawSender, TcpEcho};
use conntrackd::wire::build;
use conntrackd::wire::TcpFlags as F;
use serde_json::Value;
use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One rule for port 8080, the rest dropped; short closing timeouts so that
/// a torn-down connection leaves the table within seconds.
const RULES: &str = r#"
[policy]
default = "drop"

[[rule]]
name = "web"
action = "accept"
proto = "tcp"
dst_ports = [8080]

[engine.timeouts]
time_wait = 2
close = 2
fin_wait = 2
last_ack = 2
close_wait = 2
"#;

fn v4(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(lab::SERVER4), port)
}

fn client_v4(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(lab::CLIENT4), port)
}

/// The flows listed for port 8080.
fn flows(socket: &Path) -> Vec<Value> {
    let (ok, out) = ctl(socket, &["flows", "--port", "8080", "--json", "-v"]);
    assert!(ok, "{out}");
    let mut lines = json_lines(&out);
    lines.pop();
    lines
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A streaming client (`conntrackd events`, `drops --follow`) whose lines
/// are collected; killed when dropped.
struct Stream {
    child: std::process::Child,
    lines: Arc<Mutex<Vec<Value>>>,
}

impl Stream {
    fn start(socket: &Path, args: &[&str]) -> Stream {
        let mut child = Command::new(env!("CARGO_BIN_EXE_conntrackd"))
            .args(args)
            .args(["--json", "--socket", socket.to_str().unwrap()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning the client");
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        // Subscribed once the daemon said so.
        let s = Stream { child, lines };
        s.wait("the subscription", |v| v["following"] == true);
        s
    }

    fn wait(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(v) = self.lines.lock().unwrap().iter().find(|v| pred(v)) {
                return v.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no {what} in {:#?}",
                self.lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A real connection appears in `flows` with both states, the rule that
/// admitted it and counters that grow with its traffic, and leaves the
/// table after its teardown; `events` streams its NEW, UPDATE and DESTROY
/// (cause: fin), with the same counters.
#[test]
#[ignore = "needs root: network namespaces, NFQUEUE, iptables"]
fn flows_count_a_connection_and_events_follow_its_life() {
    let Some(lab) = Lab::new("flows-events") else {
        return;
    };
    lab.add_nfqueue_rule("0", false);
    let rules = lab.write_rules("rules.toml", RULES);
    let socket = lab.control_socket();
    let d = lab.start_daemon(&["--rules", rules.to_str().unwrap()]);
    let events = Stream::start(&socket, &["events", "--port", "8080"]);
    let _echo = TcpEcho::start(&lab.server, v4(8080));
    let s = lab::connect(&lab.client, v4(8080), Duration::from_secs(3)).expect("connect");
    let sport = s.local_addr().unwrap().port();
    lab::exchange(&s, 1000, 1).expect("exchange");

    let first = flows(&socket);
    assert_eq!(first.len(), 1, "{first:#?}");
    let f = &first[0];
    assert_eq!(f["state"], "ESTABLISHED:ESTABLISHED", "{f}");
    assert_eq!(f["rule"], "web", "{f}");
    assert_eq!(f["sport"], sport, "{f}");
    assert!(f["windows"][0]["maxwin"].as_u64().unwrap() > 0, "{f}");
    let (p0, b0) = (
        f["packets"][0].as_u64().unwrap(),
        f["bytes"][0].as_u64().unwrap(),
    );
    // The handshake and 1000 bytes each way at least.
    assert!(p0 >= 3 && b0 >= 1000, "{f}");
    assert!(f["bytes"][1].as_u64().unwrap() >= 1000, "{f}");

    lab::exchange(&s, 20_000, 2).expect("exchange");
    let second = flows(&socket);
    let g = &second[0];
    assert!(g["packets"][0].as_u64().unwrap() > p0, "{f}\n{g}");
    assert!(g["bytes"][0].as_u64().unwrap() >= b0 + 20_000, "{f}\n{g}");
    assert!(g["bytes"][1].as_u64().unwrap() >= 21_000, "{g}");

    // why, for a tracked connection: its state and rule, no drops.
    let (ok, out) = ctl(
        &socket,
        &[
            "why",
            &format!("198.18.0.2:{sport}"),
            "198.19.0.2:8080",
            "--json",
        ],
    );
    assert!(ok, "{out}");
    let why = json_lines(&out).pop().unwrap();
    assert_eq!(
        why["tracked"][0]["state"], "ESTABLISHED:ESTABLISHED",
        "{why}"
    );
    assert_eq!(why["tracked"][0]["rule"], "web", "{why}");
    assert_eq!(why["drops"].as_array().unwrap().len(), 0, "{why}");
    // A listing cut by --limit still says how many matched.
    let (ok, out) = ctl(&socket, &["flows", "--port", "8080", "--limit", "0"]);
    assert!(ok && out.contains("0 shown, 1 matched"), "{out}");
    // A first stats call sets the window for the rates of a later one.
    let (ok, out) = ctl(&socket, &["stats", "--json"]);
    assert!(ok && !out.contains("per_second"), "{out}");
    let first_stats = Instant::now();

    let new = events.wait("NEW", |v| v["event"] == "NEW" && v["sport"] == sport);
    assert_eq!(new["dport"], 8080);
    events.wait("UPDATE to ESTABLISHED", |v| {
        v["event"] == "UPDATE" && v["state"] == "ESTABLISHED:ESTABLISHED"
    });

    lab::close(s).expect("close");
    wait_until(
        "the connection to leave the table",
        Duration::from_secs(15),
        || flows(&socket).is_empty(),
    );
    let gone = events.wait("DESTROY", |v| {
        v["event"] == "DESTROY" && v["sport"] == sport
    });
    assert_eq!(
        gone["cause"],
        "fin",
        "{gone}\n{:#?}",
        events.lines.lock().unwrap()
    );
    assert!(gone["bytes"][0].as_u64().unwrap() >= b0 + 20_000, "{gone}");

    // Rates need a window of 2 s at least; the traffic since the first
    // call shows in them.
    std::thread::sleep(Duration::from_millis(2100).saturating_sub(first_stats.elapsed()));
    let rates = lab::stats(&socket);
    assert!(
        rates["per_second_over_s"].as_f64().unwrap() >= 2.0,
        "{rates}"
    );
    assert!(
        rates["per_second"]["packets"].as_f64().unwrap() > 0.0,
        "{rates}"
    );

    // flush removes a live connection (DESTROY, cause killed); its next
    // packets are no_connection.
    let s = lab::connect(&lab.client, v4(8080), Duration::from_secs(3)).expect("connect");
    let sport = s.local_addr().unwrap().port();
    lab::exchange(&s, 100, 3).expect("exchange");
    let (ok, out) = ctl(&socket, &["flush"]);
    assert!(ok && out.contains("1 connections removed"), "{out}");
    let killed = events.wait("DESTROY killed", |v| {
        v["event"] == "DESTROY" && v["sport"] == sport
    });
    assert_eq!(killed["cause"], "killed", "{killed}");
    assert!(lab::exchange(&s, 100, 4).is_err(), "flushed: no_connection");
    drop(d);
}

/// `why` names the reason a crafted packet was dropped and the rule a new
/// connection would match; `drops` lists it, filtered; a port no rule
/// admits would meet the default.
#[test]
#[ignore = "needs root: network namespaces, NFQUEUE, iptables"]
fn why_and_drops_explain_a_dropped_packet() {
    let Some(lab) = Lab::new("why") else {
        return;
    };
    lab.add_nfqueue_rule("0", false);
    lab.drop_crafted_at_hosts();
    let rules = lab.write_rules("rules.toml", RULES);
    let socket = lab.control_socket();
    let d = lab.start_daemon(&["--rules", rules.to_str().unwrap()]);
    let follow = Stream::start(&socket, &["drops", "--follow", "--port", "8080"]);
    let raw = RawSender::new(&lab.client);
    let port = lab::CRAFTED_CLIENT_PORTS.0 + 7;
    raw.send(
        &build::tcp(client_v4(port), v4(8080))
            .flags(F::SYN | F::FIN)
            .build(),
    );
    // An ACK for no connection, to another port: not in the 8080 filter.
    raw.send(&build::tcp(client_v4(port), v4(9090)).flags(F::ACK).build());

    let streamed = follow.wait("the streamed drop", |v| v["event"] == "DROP");
    assert_eq!(streamed["reason"], "syn_fin", "{streamed}");

    let src = format!("198.18.0.2:{port}");
    let (ok, out) = ctl(&socket, &["why", &src, "198.19.0.2:8080", "--json"]);
    assert!(ok, "{out}");
    let why = json_lines(&out).pop().unwrap();
    assert_eq!(why["tracked"].as_array().unwrap().len(), 0, "{why}");
    let drops = why["drops"].as_array().unwrap();
    assert_eq!(drops.len(), 1, "{why}");
    assert_eq!(drops[0]["reason"], "syn_fin", "{why}");
    assert_eq!(drops[0]["flags"], "SF", "{why}");
    assert_eq!(why["new_connection"]["action"], "accept", "{why}");
    assert_eq!(why["new_connection"]["rule"], "web", "{why}");
    // The human form says the same.
    let (ok, human) = ctl(&socket, &["why", &src, "198.19.0.2:8080"]);
    assert!(
        ok && human.contains("syn_fin") && human.contains("rule \"web\""),
        "{human}"
    );

    let (ok, out) = ctl(&socket, &["why", "198.18.0.2", "198.19.0.2:9090", "--json"]);
    assert!(ok, "{out}");
    let why = json_lines(&out).pop().unwrap();
    assert_eq!(why["new_connection"]["action"], "drop", "{why}");
    assert_eq!(why["new_connection"]["by"], "default", "{why}");
    assert_eq!(why["drops"][0]["reason"], "no_connection", "{why}");

    let (ok, out) = ctl(&socket, &["drops", "--json", "--port", "9090"]);
    assert!(ok, "{out}");
    let listed = json_lines(&out);
    assert_eq!(listed.len(), 2, "one drop and the summary: {out}");
    assert_eq!(listed[0]["reason"], "no_connection", "{out}");
    assert_eq!(listed[0]["dport"], 9090, "{out}");

    let (ok, out) = ctl(&socket, &["why", "198.18.0.2", "2001:db8::1"]);
    assert!(!ok && out.contains("address family"), "{out}");
    drop(follow);
    drop(d);
}

/// Finds the thread of `pid` named `name`.
fn thread_of(pid: i32, name: &str) -> i32 {
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let comm = std::fs::read_to_string(task.join("comm")).unwrap_or_default();
        if comm.trim() == name {
            return task.file_name().unwrap().to_str().unwrap().parse().unwrap();
        }
    }
    panic!("no thread {name} in {pid}");
}

/// `status` answers ok while the workers come round, and fails naming the
/// worker when one is stopped (one thread frozen with ptrace, the rest of
/// the daemon running); ok again once it runs.
#[test]
#[ignore = "needs root: network namespaces, NFQUEUE, iptables, ptrace"]
fn status_fails_while_a_worker_is_stopped() {
    let Some(lab) = Lab::new("status") else {
        return;
    };
    lab.add_nfqueue_rule("0:1", false);
    let rules = lab.write_rules("rules.toml", RULES);
    let socket = lab.control_socket();
    let d = lab.start_daemon(&["--rules", rules.to_str().unwrap(), "--queue", "0-1"]);
    let (ok, out) = ctl(&socket, &["status"]);
    assert!(ok && out.contains("2 workers alive"), "{out}");

    let tid = thread_of(d.pid, "ctd-q1");
    // SAFETY: plain ptrace calls on a thread id read from /proc; the thread
    // is only stopped and resumed, its memory untouched.
    unsafe {
        assert_eq!(
            libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0),
            0,
            "PTRACE_SEIZE"
        );
        assert_eq!(
            libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0),
            0,
            "PTRACE_INTERRUPT"
        );
        let mut st = 0;
        assert_eq!(libc::waitpid(tid, &mut st, libc::__WALL), tid);
    }
    std::thread::sleep(conntrackd::daemon::shared::STUCK_AFTER + Duration::from_secs(1));
    let (ok, out) = ctl(&socket, &["status"]);
    // SAFETY: as above; the thread is in a ptrace stop, so it can be detached.
    let detached = unsafe { libc::ptrace(libc::PTRACE_DETACH, tid, 0, 0) };
    assert_eq!(detached, 0, "PTRACE_DETACH");
    assert!(
        !ok && out.contains("worker of queue 1: no progress"),
        "{out}"
    );
    assert!(
        !out.contains("queue 0"),
        "only the stopped one is named: {out}"
    );
    wait_until("status ok again", Duration::from_secs(10), || {
        ctl(&socket, &["status"]).0
    });
    drop(d);
}

/// A copy of the client that any user may run (the build directory may
/// not be readable by others).
fn public_client(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join("conntrackd");
    std::fs::copy(env!("CARGO_BIN_EXE_conntrackd"), &path).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// The socket is mode 0660 (root's): another user is refused with a clear
/// message, and a garbage request gets an error while the daemon keeps
/// serving; with `control_socket_group`, the group's members may use it.
#[test]
#[ignore = "needs root: network namespaces, NFQUEUE, iptables"]
fn the_socket_refuses_other_users_and_survives_garbage() {
    use std::os::unix::fs::PermissionsExt;
    use std::os::unix::process::CommandExt;
    let Some(lab) = Lab::new("socket-access") else {
        return;
    };
    lab.add_nfqueue_rule("0", false);
    // Others may reach the directory, so that only the socket's mode decides.
    std::fs::set_permissions(lab.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let rules = lab.write_rules("rules.toml", RULES);
    let socket = lab.control_socket();
    let d = lab.start_daemon(&["--rules", rules.to_str().unwrap()]);
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660);
    let client = public_client(lab.dir.path());
    let out = Command::new(&client)
        .args(["stats", "--socket", socket.to_str().unwrap()])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("Permission denied") && text.contains("may you read and write"),
        "{text}"
    );

    for garbage in [
        &b"\xff\xfe not json\n"[..],
        b"{\"cmd\":\"why\"}\n",
        &[b'x'; 10_000][..],
    ] {
        let mut raw = std::os::unix::net::UnixStream::connect(&socket).unwrap();
        let _ = std::io::Write::write_all(&mut raw, garbage);
        let mut answer = String::new();
        let _ = std::io::Read::read_to_string(&mut raw, &mut answer);
        assert!(answer.contains("\"ok\":false"), "{answer}");
    }
    let (ok, out) = ctl(&socket, &["stats", "--json"]);
    assert!(ok && out.contains("\"bad_requests\":3"), "{out}");
    drop(d);

    // The socket in a group of the other user's: now it may.
    let grouped = lab.write_rules(
        "grouped.toml",
        &format!("{RULES}\n[daemon]\ncontrol_socket_group = \"nogroup\"\n"),
    );
    let d = lab.start_daemon(&["--rules", grouped.to_str().unwrap()]);
    let out = Command::new(&client)
        .args(["status", "--socket", socket.to_str().unwrap()])
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    drop(d);
}
