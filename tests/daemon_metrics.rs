//! The metrics endpoint of a running daemon (`[daemon] metrics_listen`),
//! scraped over HTTP with curl inside the gateway namespace: after real TCP
//! connections, crafted invalid packets, reloads and a bad control request,
//! the scraped values equal the daemon's own counters (`conntrackd stats
//! --json` over the control socket) and the invalid packets show under their
//! reasons. A bad `metrics_listen` is refused at start (no root needed).
//!
//! The lab test needs root, so it is `#[ignore]`d (see tests/daemon.rs).

#![allow(clippy::disallowed_methods)] // not the core: tests read clocks and start threads

mod common;

use common::lab::{self, ctl, stats, Lab, RawSender, TcpEcho};
use conntrackd::wire::build;
use conntrackd::wire::TcpFlags as F;
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant, SystemTime};

const METRICS: &str = "127.0.0.1:9680";

const RULES: &str = r#"
[policy]
default = "accept"

[[rule]]
name = "discard"
action = "drop"
proto = "udp"
dst_ports = [9]

[daemon]
metrics_listen = "127.0.0.1:9680"
"#;

fn v4(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(lab::SERVER4), port)
}

fn client_v4(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(lab::CLIENT4), port)
}

type Labels = BTreeMap<String, String>;

/// One sample of the Prometheus text format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: Labels,
    value: f64,
}

/// Reads the Prometheus text format (version 0.0.4): `# HELP`/`# TYPE`
/// lines, then `name{label="value",...} value [timestamp]`, label values
/// with `\\`, `\"` and `\n` escapes. Panics on anything else, and on a
/// sample whose name no `# TYPE` line declared.
fn parse(text: &str) -> Vec<Sample> {
    let mut typed = BTreeSet::new();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(
                ["counter", "gauge", "untyped", "histogram", "summary"].contains(&kind),
                "{line}"
            );
            typed.insert(name.to_string());
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let name_end = line
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or_else(|| panic!("a sample without a value: {line}"));
        let name = &line[..name_end];
        assert!(!name.is_empty(), "{line}");
        let mut rest = &line[name_end..];
        let mut labels = Labels::new();
        if let Some(mut inner) = rest.strip_prefix('{') {
            loop {
                if let Some(after) = inner.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let (key, after) = inner.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
                let mut value = String::new();
                let mut chars = after.char_indices();
                let end = loop {
                    match chars.next() {
                        Some((_, '\\')) => match chars.next() {
                            Some((_, 'n')) => value.push('\n'),
                            Some((_, c @ ('\\' | '"'))) => value.push(c),
                            other => panic!("bad escape {other:?} in {line}"),
                        },
                        Some((i, '"')) => break i,
                        Some((_, c)) => value.push(c),
                        None => panic!("unterminated label value: {line}"),
                    }
                };
                labels.insert(key.trim_start_matches(',').to_string(), value);
                inner = &after[end + 1..];
                inner = inner.strip_prefix(',').unwrap_or(inner);
            }
        }
        let mut fields = rest.split_whitespace();
        let value = fields.next().unwrap_or_else(|| panic!("no value: {line}"));
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value {v:?}: {line}")),
        };
        assert!(
            fields.count() <= 1,
            "at most a timestamp after the value: {line}"
        );
        assert!(typed.contains(name), "{name} has no # TYPE line before it");
        out.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    out
}

/// The samples named `name` whose labels include `with`.
fn matching<'a>(
    samples: &'a [Sample],
    name: &'a str,
    with: &'a [(&str, &str)],
) -> impl Iterator<Item = &'a Sample> + 'a {
    samples.iter().filter(move |s| {
        s.name == name
            && with
                .iter()
                .all(|(k, v)| s.labels.get(*k).is_some_and(|x| x == v))
    })
}

/// The one sample named `name` with labels `with`, as an integer.
fn one(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> u64 {
    let found: Vec<_> = matching(samples, name, with).collect();
    assert_eq!(found.len(), 1, "{name} {with:?}: {found:?}");
    found[0].value as u64
}

fn sum(samples: &[Sample], name: &str, with: &[(&str, &str)]) -> u64 {
    matching(samples, name, with).map(|s| s.value as u64).sum()
}

/// An HTTP answer: status, Content-Type, body.
struct Answer {
    status: u16,
    content_type: String,
    body: String,
}

/// GET `path` from the daemon's metrics endpoint with curl, run inside the
/// gateway namespace (the endpoint listens on the gateway's loopback).
fn get(lab: &Lab, path: &str, accept: Option<&str>) -> Answer {
    let url = format!("http://{METRICS}{path}");
    let mut args = vec!["curl", "-sS", "--max-time", "5", "-D", "-"];
    let header;
    if let Some(a) = accept {
        header = format!("Accept: {a}");
        args.extend(["-H", &header]);
    }
    args.push(&url);
    let out = lab.gw.output(&args);
    assert!(
        out.status.success(),
        "curl {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).expect("UTF-8");
    let (head, body) = text.split_once("\r\n\r\n").expect("headers, then the body");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a status line: {head}"));
    let content_type = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-type")
                .then(|| v.trim().to_string())
        })
        .unwrap_or_default();
    Answer {
        status,
        content_type,
        body: body.to_string(),
    }
}

fn scrape(lab: &Lab) -> Vec<Sample> {
    let a = get(lab, "/metrics", None);
    assert_eq!(a.status, 200, "{}", a.body);
    assert!(
        a.content_type.starts_with("text/plain; version=0.0.4"),
        "{}",
        a.content_type
    );
    parse(&a.body)
}

/// Where the scrape and the daemon's own counters (`stats --json`) disagree.
fn disagreements(m: &[Sample], s: &Value) -> Vec<String> {
    let mut bad = Vec::new();
    let reasons: BTreeSet<&str> = matching(m, "conntrackd_packets_total", &[])
        .map(|x| x.labels["reason"].as_str())
        .collect();
    if let Some(obj) = s["reasons"].as_object() {
        for name in obj.keys() {
            if !reasons.contains(name.as_str()) {
                bad.push(format!("stats counts reason {name}, the metrics do not"));
            }
        }
    }
    let mut check = |what: &str, metric: u64, stat: &Value| {
        if Some(metric) != stat.as_u64() {
            bad.push(format!("{what}: metrics {metric}, stats {stat}"));
        }
    };
    for reason in &reasons {
        let stat = s["reasons"].get(*reason).cloned().unwrap_or(Value::from(0));
        check(
            &format!("packets {reason}"),
            sum(m, "conntrackd_packets_total", &[("reason", reason)]),
            &stat,
        );
    }
    let packets = |verdict| sum(m, "conntrackd_packets_total", &[("verdict", verdict)]);
    check("accepted", packets("accept"), &s["accepted"]);
    check("dropped", packets("drop"), &s["dropped"]);
    check(
        "packets",
        sum(m, "conntrackd_queue_packets_total", &[]),
        &s["packets"],
    );
    check(
        "connections",
        one(m, "conntrackd_connections", &[]),
        &s["connections"],
    );
    check(
        "connections limit",
        one(m, "conntrackd_connections_limit", &[]),
        &s["max_connections"],
    );
    check(
        "half-open",
        one(m, "conntrackd_half_open_connections", &[]),
        &s["half_open"],
    );
    check(
        "evicted half-open",
        one(m, "conntrackd_evictions_total", &[("kind", "half_open")]),
        &s["evicted_half_open"],
    );
    check(
        "evicted unreplied",
        one(m, "conntrackd_evictions_total", &[("kind", "unreplied")]),
        &s["evicted_unreplied"],
    );
    check(
        "reads",
        sum(m, "conntrackd_queue_reads_total", &[]),
        &s["reads"],
    );
    check(
        "enobufs",
        sum(m, "conntrackd_queue_enobufs_total", &[]),
        &s["enobufs"],
    );
    check(
        "recv errors",
        one(m, "conntrackd_recv_errors_total", &[]),
        &s["recv_errors"],
    );
    check(
        "bad requests",
        one(m, "conntrackd_control_bad_requests_total", &[]),
        &s["bad_requests"],
    );
    for rule in s["rules"].as_array().expect("rules in stats") {
        let name = rule["name"].as_str().unwrap();
        check(
            "rule connections",
            one(m, "conntrackd_rule_connections_total", &[("rule", name)]),
            &rule["connections"],
        );
        check(
            "rule packets",
            one(m, "conntrackd_rule_packets_total", &[("rule", name)]),
            &rule["packets"],
        );
    }
    // Counted by the expiry walk once a second; nothing changed since.
    check(
        "connections by state",
        sum(m, "conntrackd_connections_by_state", &[]),
        &s["connections"],
    );
    check(
        "in the handshake, by state",
        one(
            m,
            "conntrackd_connections_by_state",
            &[("state", "tcp_handshake")],
        ),
        &s["half_open"],
    );
    bad
}

#[test]
#[ignore = "needs root: network namespaces, NFQUEUE, iptables"]
fn scraped_metrics_equal_the_daemons_own_counters() {
    let Some(lab) = Lab::new("metrics") else {
        return;
    };
    lab.add_nfqueue_rule("0:1", false);
    lab.drop_crafted_at_hosts();
    let rules = lab.write_rules("rules.toml", RULES);
    let socket = lab.control_socket();
    let mut d = lab.start_daemon(&[
        "--rules",
        rules.to_str().unwrap(),
        "--queue",
        "0-1",
        "--fail-closed",
    ]);
    d.wait_log("metrics endpoint open", Duration::from_secs(5));
    let before = scrape(&lab);
    assert_eq!(sum(&before, "conntrackd_queue_packets_total", &[]), 0);

    // Real connections: one kept open, three closed.
    let _echo = TcpEcho::start(&lab.server, v4(8080));
    let open = lab::connect(&lab.client, v4(8080), Duration::from_secs(3)).expect("connect");
    lab::exchange(&open, 20_000, 1).expect("exchange");
    for _ in 0..3 {
        lab::tcp_session(&lab.client, v4(8080), 10_000).expect("a short session");
    }

    // Crafted packets no correct stack sends (dropped before any lookup, so
    // they make no table entry), and an ACK of no connection.
    let from_client = RawSender::new(&lab.client);
    let crafted = [
        (F::SYN | F::FIN, 40001u16),
        (F::SYN | F::FIN, 40002),
        (F::FIN | F::PSH | F::URG, 40003),
        (0, 40004),
        (F::ACK, 40005),
    ];
    for (flags, port) in crafted {
        from_client.send(
            &build::tcp(client_v4(port), v4(port - 33000))
                .flags(flags)
                .seq(777)
                .ack(if flags & F::ACK != 0 { 999 } else { 0 })
                .build(),
        );
    }
    // Workers publish once a second: poll until all of them are counted.
    let deadline = Instant::now() + Duration::from_secs(10);
    let counted = |m: &[Sample], reason: &str| {
        one(
            m,
            "conntrackd_packets_total",
            &[("verdict", "drop"), ("reason", reason)],
        )
    };
    loop {
        let m = scrape(&lab);
        let seen = [
            counted(&m, "syn_fin"),
            counted(&m, "xmas"),
            counted(&m, "null_flags"),
            counted(&m, "no_connection"),
        ];
        if seen == [2, 1, 1, 1] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "crafted packets not counted under their reasons: syn_fin, xmas, \
             null_flags, no_connection = {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // Reloads: two that work (control socket, SIGHUP), one of a broken file.
    let (ok, out) = ctl(&socket, &["reload"]);
    assert!(ok, "{out}");
    d.signal(libc::SIGHUP);
    d.wait_log_n("rules reloaded", 2, Duration::from_secs(5));
    lab::replace_file(&rules, "[policy]\ndefault = \"maybe\"\n");
    let (ok, out) = ctl(&socket, &["reload"]);
    assert!(!ok && out.contains("old rules kept"), "{out}");
    lab::replace_file(&rules, RULES);
    // A bad control request.
    let mut raw = std::os::unix::net::UnixStream::connect(&socket).unwrap();
    std::io::Write::write_all(&mut raw, b"{\"cmd\":\"format c:\"}\n").unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut raw, &mut answer).unwrap();
    assert!(answer.contains("bad request"), "{answer}");

    // Anything but GET /metrics is 404; OpenMetrics for those who ask.
    for path in ["/", "/metrics/x", "/favicon.ico"] {
        assert_eq!(get(&lab, path, None).status, 404, "{path}");
    }
    let om = get(
        &lab,
        "/metrics",
        Some("application/openmetrics-text;version=1.0.0,text/plain;q=0.5"),
    );
    assert_eq!(om.status, 200);
    assert!(
        om.content_type.starts_with("application/openmetrics-text"),
        "{}",
        om.content_type
    );
    assert!(om.body.ends_with("# EOF\n"), "{}", om.body);
    assert!(om.body.contains("conntrackd_packets_total{"), "{}", om.body);

    // Nothing moves any more: after a publish, an expiry walk and the
    // scrape cache's second, the scrape and stats must agree exactly. (A
    // retry covers a publish falling between the two reads.)
    std::thread::sleep(Duration::from_millis(2500));
    // One datagram the "discard" rule drops (after the reloads, which start
    // the rules' counters afresh); counted once its worker publishes.
    let sock = lab
        .client
        .enter(|| std::net::UdpSocket::bind("0.0.0.0:0").expect("bind udp"));
    sock.send_to(b"discard me", v4(9)).expect("send");
    let deadline = Instant::now() + Duration::from_secs(5);
    while stats(&socket)["rules"][0]["packets"] != 1 {
        assert!(
            Instant::now() < deadline,
            "the discard rule never counted: {}",
            stats(&socket)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut attempts = 0;
    let (m, s) = loop {
        attempts += 1;
        let s = stats(&socket);
        let m = scrape(&lab);
        let bad = disagreements(&m, &s);
        if bad.is_empty() {
            break (m, s);
        }
        assert!(
            attempts < 3,
            "metrics and stats disagree: {bad:#?}\nstats: {s}"
        );
        std::thread::sleep(Duration::from_millis(1500));
    };

    // What the exchange must show, whatever the counts agree on.
    assert!(
        one(
            &m,
            "conntrackd_packets_total",
            &[("verdict", "accept"), ("reason", "tracked")]
        ) > 20,
        "tracked packets of the real connections"
    );
    assert_eq!(
        one(
            &m,
            "conntrackd_packets_total",
            &[("verdict", "accept"), ("reason", "new_by_default")]
        ),
        4,
        "four connections opened"
    );
    assert_eq!(
        one(&m, "conntrackd_rule_packets_total", &[("rule", "discard")]),
        1,
        "the datagram to port 9"
    );
    assert_eq!(one(&m, "conntrackd_reloads_total", &[("result", "ok")]), 2);
    assert_eq!(
        one(&m, "conntrackd_reloads_total", &[("result", "failed")]),
        1
    );
    assert_eq!(one(&m, "conntrackd_control_bad_requests_total", &[]), 1);
    assert!(one(&m, "conntrackd_connections", &[]) >= 4, "{s}");
    assert_eq!(
        one(
            &m,
            "conntrackd_connections_by_state",
            &[("state", "tcp_established")]
        ),
        1,
        "the connection kept open"
    );
    assert_eq!(
        one(
            &m,
            "conntrackd_connections_by_state",
            &[("state", "tcp_closing")]
        ),
        3,
        "the three closed sessions, in TIME_WAIT"
    );
    let queues: BTreeSet<&str> = matching(&m, "conntrackd_queue_reads_total", &[])
        .map(|x| x.labels["queue"].as_str())
        .collect();
    assert_eq!(queues, BTreeSet::from(["0", "1"]));
    assert_eq!(
        one(
            &m,
            "conntrackd_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1
    );
    let start = matching(&m, "conntrackd_start_time_seconds", &[])
        .next()
        .expect("start time")
        .value;
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let uptime = s["uptime_s"].as_f64().unwrap();
    assert!(
        (now - start - uptime).abs() < 3.0,
        "start time {start}, now {now}, uptime {uptime}"
    );
    // No label carries an address.
    for sample in &m {
        for v in sample.labels.values() {
            assert!(!v.contains("198.") && !v.contains("2001:"), "{sample:?}");
        }
    }

    lab::close(open).expect("close");
    assert!(d.stop().success(), "{}", d.log());
    // The endpoint went with the daemon.
    let after = lab.gw.output(&[
        "curl",
        "-sS",
        "--max-time",
        "2",
        &format!("http://{METRICS}/metrics"),
    ]);
    assert!(!after.status.success(), "still served after the stop");
}

/// The daemon starts before the network is configured (systemd: before
/// network-pre.target): a management address that does not exist yet is
/// listened on anyway, and served once it is configured.
#[test]
#[ignore = "needs root: network namespaces, NFQUEUE, iptables"]
fn the_endpoint_serves_an_address_configured_after_start() {
    let Some(lab) = Lab::new("metrics-later") else {
        return;
    };
    lab.add_nfqueue_rule("0", true);
    let rules = lab.write_rules("rules.toml", "[policy]\ndefault = \"accept\"\n");
    let url = "http://198.18.0.100:9680/metrics";
    let curl = || lab.gw.output(&["curl", "-sS", "--max-time", "2", url]);
    let mut d = lab.start_daemon(&[
        "--rules",
        rules.to_str().unwrap(),
        "--metrics-listen",
        "198.18.0.100:9680",
    ]);
    assert!(!curl().status.success(), "served before the address exists");
    lab.gw
        .sh(&["ip", "addr", "add", "198.18.0.100/32", "dev", "lo"]);
    let out = curl();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("conntrackd_connections "));
    assert!(d.stop().success(), "{}", d.log());
}

// ---- no namespace needed ----

fn conntrackd(args: &[&str]) -> std::process::Output {
    lab::run_timeout(
        std::process::Command::new(env!("CARGO_BIN_EXE_conntrackd")).args(args),
        Duration::from_secs(10),
    )
}

#[test]
fn a_bad_metrics_listen_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.toml");
    std::fs::write(
        &path,
        "[daemon]\nmetrics_listen = \"localhost:9680\"\n[policy]\ndefault = \"accept\"\n",
    )
    .unwrap();
    let out = conntrackd(&["--rules", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("rules.toml:2:18") && err.contains("is not an IP address and port"),
        "{err}"
    );
    // `conntrackd check` says so too.
    let out = conntrackd(&["check", "--rules", path.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("rules.toml:2:18"));

    let out = conntrackd(&["--rules", "rules/default.toml", "--metrics-listen", "9680"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--metrics-listen") && err.contains("is not an IP address and port"),
        "{err}"
    );

    // An address already in use: refused before any queue is bound.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let control = dir.path().join("control");
    let state = dir.path().join("table");
    let out = conntrackd(&[
        "--rules",
        "rules/default.toml",
        "--control-socket",
        control.to_str().unwrap(),
        "--state-file",
        state.to_str().unwrap(),
        "--metrics-listen",
        &addr,
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen for metrics on {addr}")) && err.contains("in use"),
        "{err}"
    );
    // A refused start leaves no state file ("running, not stopped
    // gracefully" is written only once the daemon has started).
    assert!(!state.exists(), "a refused start wrote {}", state.display());
}
