//! Command-line interface (clap). Each subcommand's arguments live with the
//! code that runs it.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "conntrackd",
    version,
    about = "Stateful TCP connection-tracking firewall on NFQUEUE",
    long_about = "Stateful TCP connection-tracking firewall on NFQUEUE.\n\n\
        Without a subcommand, runs the daemon: every packet the kernel queues \
        (iptables -j NFQUEUE) gets an accept or drop verdict from the connection \
        tracker and the rules file."
)]
pub struct Cli {
    #[command(flatten)]
    pub daemon: crate::daemon::DaemonArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Validate a rules file and print a summary (exit 1 with file:line:column on error).
    Check {
        /// Rules file to check [default: /etc/conntrackd/rules.toml].
        #[arg(long, value_name = "FILE")]
        rules: Option<PathBuf>,
    },
    /// Remove conntrackd's iptables and ip6tables chain and its jumps (what
    /// --install-iptables installed). A fail-closed daemon (queue_bypass =
    /// false) leaves them in place when it stops, so that nothing is
    /// forwarded unjudged until it is back: this is how to take them out.
    UninstallIptables {
        /// Rules file whose [daemon] iptables_chain (and hand-off mark) to
        /// remove [default: /etc/conntrackd/rules.toml].
        #[arg(long, value_name = "FILE")]
        rules: Option<PathBuf>,
        /// The chain to remove, instead of the rules file's.
        #[arg(long, value_name = "NAME")]
        chain: Option<String>,
    },
    /// Replay captures through the engine and show each packet's verdict and reason.
    Replay(crate::replay::ReplayArgs),
    /// Counters of the running daemon: connections, half-open, evictions, per-reason packets.
    Stats {
        #[command(flatten)]
        client: Client,
    },
    /// The tracked connections (like pfctl -ss), filtered.
    Flows {
        #[command(flatten)]
        client: Client,
        #[command(flatten)]
        filter: crate::daemon::operations::control::Filter,
        /// Show at most this many.
        #[arg(long)]
        limit: Option<usize>,
        /// Add each direction's window (end, maxend, maxwin, scale).
        #[arg(short, long)]
        verbose: bool,
    },
    /// Everything known about a flow: whether it is tracked and in which
    /// state, its last drops and their reasons, and what the rules would
    /// decide for a new connection from SRC to DST.
    Why {
        #[command(flatten)]
        client: Client,
        /// ADDR[:PORT] ([IPv6]:PORT), the connection's originator.
        src: String,
        /// ADDR[:PORT], its responder.
        dst: String,
        /// tcp, udp, icmp, icmpv6 or a number.
        #[arg(long, default_value = "tcp")]
        proto: String,
        /// Input interface, for rules that name one.
        #[arg(long = "in", value_name = "IFACE")]
        in_iface: Option<String>,
        /// Output interface, for rules that name one.
        #[arg(long = "out", value_name = "IFACE")]
        out_iface: Option<String>,
    },
    /// The recent drops (a bounded ring kept by the daemon), filtered.
    Drops {
        #[command(flatten)]
        client: Client,
        #[command(flatten)]
        filter: crate::daemon::operations::control::Filter,
        /// Show the last N.
        #[arg(long, value_name = "N", default_value_t = 50)]
        last: usize,
        /// Then keep printing new drops as they happen (Ctrl-C to stop).
        #[arg(short, long)]
        follow: bool,
    },
    /// Stream connection events (like conntrack -E): NEW, UPDATE, DESTROY
    /// with its cause, and DROP. Ctrl-C to stop.
    Events {
        #[command(flatten)]
        client: Client,
        #[command(flatten)]
        filter: crate::daemon::operations::control::Filter,
    },
    /// Health check: exit 0 when every worker is alive and coming round
    /// (and, with a [cluster], once the peers' tables are copied: a keepalived
    /// track script keeps a syncing node backup), 1 with the reason otherwise.
    Status {
        #[command(flatten)]
        client: Client,
    },
    /// The cluster ([cluster] in the rules file): the connection to NATS,
    /// each peer (last heard, lag, records, policy agreement, ready), what
    /// was sent, dropped and refused, and the last bulk copy.
    Cluster {
        #[command(flatten)]
        client: Client,
    },
    /// Remove the tracked connections the filter selects (their next packets
    /// are no_connection); prints how many.
    Kill {
        #[command(flatten)]
        client: Client,
        #[command(flatten)]
        filter: crate::daemon::operations::control::Filter,
    },
    /// Remove every tracked connection; prints how many.
    Flush {
        #[command(flatten)]
        client: Client,
    },
    /// Reload the rules file; prints the result (or the error: old rules kept).
    Reload {
        #[command(flatten)]
        client: Client,
    },
}

/// How to reach the running daemon.
#[derive(Debug, clap::Args)]
pub struct Client {
    /// The control socket [default: $RUNTIME_DIRECTORY/control, else /run/conntrackd/control].
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Print the daemon's JSON lines as they are.
    #[arg(long)]
    pub json: bool,
}

/// Sends one control request and prints the answer; the exit status says
/// whether the daemon answered ok.
pub fn control(command: Command) -> std::process::ExitCode {
    use serde_json::{json, Value};
    let (client, request) = match command {
        Command::Stats { client } => (client, json!({"cmd": "stats"})),
        Command::Flows {
            client,
            filter,
            limit,
            verbose,
        } => {
            let mut r = serde_json::to_value(&filter).expect("a filter");
            r["cmd"] = json!("flows");
            r["verbose"] = json!(verbose);
            if let Some(n) = limit {
                r["limit"] = json!(n);
            }
            (client, r)
        }
        Command::Why {
            client,
            src,
            dst,
            proto,
            in_iface,
            out_iface,
        } => (
            client,
            json!({"cmd": "why", "src": src, "dst": dst, "proto": proto,
                   "in_iface": in_iface, "out_iface": out_iface}),
        ),
        Command::Drops {
            client,
            filter,
            last,
            follow,
        } => {
            let mut r = serde_json::to_value(&filter).expect("a filter");
            r["cmd"] = json!("drops");
            r["last"] = json!(last);
            r["follow"] = json!(follow);
            (client, r)
        }
        Command::Events { client, filter } => {
            let mut r = serde_json::to_value(&filter).expect("a filter");
            r["cmd"] = json!("events");
            (client, r)
        }
        Command::Status { client } => (client, json!({"cmd": "status"})),
        Command::Cluster { client } => (client, json!({"cmd": "cluster"})),
        Command::Kill { client, filter } => {
            if filter.is_empty() {
                eprintln!("conntrackd kill: give a filter (--src, --dst, --port, --proto, --state), or use flush");
                return std::process::ExitCode::from(2);
            }
            let mut r = serde_json::to_value(&filter).expect("a filter");
            r["cmd"] = json!("kill");
            (client, r)
        }
        Command::Flush { client } => (client, json!({"cmd": "flush"})),
        Command::Reload { client } => (client, json!({"cmd": "reload"})),
        Command::Check { .. } | Command::Replay(_) | Command::UninstallIptables { .. } => {
            unreachable!("not a control command")
        }
    };
    let socket = client
        .socket
        .unwrap_or_else(crate::daemon::lifecycle::settings::default_control_socket);
    let streams = request["cmd"] == "events" || request["follow"] == true;
    if streams {
        return follow(&socket, &request, client.json);
    }
    let lines = match crate::daemon::operations::control::request(&socket, &request) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("conntrackd: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let last = lines.last().cloned().unwrap_or(Value::Null);
    let ok = last.get("ok") == Some(&Value::Bool(true));
    if client.json {
        for l in &lines {
            println!("{l}");
        }
    } else if !ok {
        eprintln!(
            "conntrackd: {}{}",
            last.get("error")
                .and_then(Value::as_str)
                .unwrap_or("no answer"),
            last.get("kept")
                .map(|k| format!(" ({})", k.as_str().unwrap_or("")))
                .unwrap_or_default()
        );
    } else {
        print_human(&request["cmd"], &lines);
    }
    if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

fn print_human(cmd: &serde_json::Value, lines: &[serde_json::Value]) {
    use serde_json::Value;
    let last = lines.last().expect("an answer");
    match cmd.as_str() {
        Some("stats") => print_stats(last),
        Some("flows") => {
            for f in &lines[..lines.len() - 1] {
                let s = |k: &str| {
                    f.get(k)
                        .map(|v| v.to_string().trim_matches('"').to_string())
                        .unwrap_or_default()
                };
                let end = |a: String, p: String| {
                    if a.contains(':') {
                        format!("[{a}]:{p}")
                    } else {
                        format!("{a}:{p}")
                    }
                };
                let pair = |k: &str| format!("{}/{}", f[k][0], f[k][1]);
                println!(
                    "{:<6} {} -> {} {} age {}s expires {}s rule {} pkts {} bytes {}{}",
                    s("proto"),
                    end(s("src"), s("sport")),
                    end(s("dst"), s("dport")),
                    s("state"),
                    s("age_s"),
                    s("expires_in_s"),
                    rule_of(f),
                    pair("packets"),
                    pair("bytes"),
                    match (f["peer"] == true, f["proxied"] == true) {
                        (true, _) => " (peer's)",
                        (_, true) => " (proxied)",
                        _ => "",
                    },
                );
                if let Some(Value::Array(w)) = f.get("windows") {
                    for (side, w) in ["originator", "responder"].iter().zip(w) {
                        println!(
                            "       {side:<10} end {} maxend {} maxwin {} scale {}",
                            w["end"], w["maxend"], w["maxwin"], w["scale"]
                        );
                    }
                }
            }
            println!("{} shown, {} matched", last["shown"], last["matched"]);
        }
        Some("kill") | Some("flush") => println!("{} connections removed", last["killed"]),
        Some("why") => print_why(last),
        Some("drops") => {
            for d in &lines[..lines.len() - 1] {
                println!("{}", drop_line(d));
            }
            println!("{} shown", last["shown"]);
        }
        Some("status") => {
            let workers = last["workers"].as_array().map_or(0, |w| w.len());
            println!("ok: {workers} workers alive, up {} s", last["uptime_s"]);
            if let Some(c) = last.get("cluster") {
                println!(
                    "cluster: {} ({} of {} peers heard)",
                    c["state"].as_str().unwrap_or("?"),
                    c["peers_heard"],
                    c["peers"]
                );
            }
        }
        Some("cluster") => print_cluster(last),
        Some("reload") => println!("rules reloaded: {}", last["summary"].as_str().unwrap_or("")),
        _ => println!("{last}"),
    }
}

/// Prints a stream (events, drops --follow) until the daemon closes it or
/// the user interrupts.
fn follow(
    socket: &std::path::Path,
    request: &serde_json::Value,
    json: bool,
) -> std::process::ExitCode {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = match std::os::unix::net::UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => {
            eprintln!(
                "conntrackd: connecting to the control socket {}: {e} (is conntrackd running, \
                 and may you read and write the socket?)",
                socket.display()
            );
            return std::process::ExitCode::FAILURE;
        }
    };
    let sent = serde_json::to_writer(&mut stream, request)
        .map_err(std::io::Error::from)
        .and_then(|()| stream.write_all(b"\n"));
    if let Err(e) = sent {
        eprintln!("conntrackd: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let stdout = std::io::stdout();
    for line in BufReader::new(stream).lines() {
        let Ok(line) = line else { break };
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if v.get("ok") == Some(&serde_json::Value::Bool(false)) {
            eprintln!("conntrackd: {}", v["error"].as_str().unwrap_or("refused"));
            return std::process::ExitCode::FAILURE;
        }
        let text = if json {
            line
        } else if v.get("ok").is_some() {
            continue;
        } else if let Some(n) = v.get("lost") {
            format!("({n} events lost: this reader fell behind)")
        } else if v["event"] == "DROP" {
            drop_line(&v)
        } else {
            event_line(&v)
        };
        if writeln!(stdout.lock(), "{text}").is_err() {
            break;
        }
    }
    std::process::ExitCode::SUCCESS
}

fn endpoint(v: &serde_json::Value, addr: &str, port: &str) -> String {
    let a = v[addr].as_str().unwrap_or("?");
    match v[port].as_u64() {
        Some(p) if a.contains(':') => format!("[{a}]:{p}"),
        Some(p) => format!("{a}:{p}"),
        None => a.to_string(),
    }
}

fn clock(ms: &serde_json::Value) -> String {
    let ms = ms.as_u64().unwrap_or(0);
    let day = ms % 86_400_000;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        day / 3_600_000,
        day / 60_000 % 60,
        day / 1000 % 60,
        day % 1000
    )
}

fn drop_line(d: &serde_json::Value) -> String {
    format!(
        "{} DROP {:<22} {} {} -> {} {}{}",
        clock(&d["time_ms"]),
        d["reason"].as_str().unwrap_or("?"),
        d["proto"].as_str().unwrap_or("?"),
        endpoint(d, "src", "sport"),
        endpoint(d, "dst", "dport"),
        d["flags"]
            .as_str()
            .map(|f| format!("[{f}] "))
            .unwrap_or_default(),
        d["state"].as_str().unwrap_or(""),
    )
}

fn event_line(e: &serde_json::Value) -> String {
    let what = e["event"].as_str().unwrap_or("?");
    let tail = match what {
        "UPDATE" => format!(
            "{} -> {}",
            e["before"].as_str().unwrap_or("?"),
            e["state"].as_str().unwrap_or("?")
        ),
        "DESTROY" => format!(
            "{} ({}) pkts {}/{} bytes {}/{}",
            e["state"].as_str().unwrap_or("?"),
            e["cause"].as_str().unwrap_or("?"),
            e["packets"][0],
            e["packets"][1],
            e["bytes"][0],
            e["bytes"][1]
        ),
        _ => e["state"].as_str().unwrap_or("?").to_string(),
    };
    format!(
        "{} {:<7} {} {} -> {} {}{}",
        clock(&e["time_ms"]),
        what,
        e["proto"].as_str().unwrap_or("?"),
        endpoint(e, "src", "sport"),
        endpoint(e, "dst", "dport"),
        tail,
        match (e["peer"] == true, e["proxied"] == true) {
            (true, _) => " (peer's)",
            (_, true) => " (proxied)",
            _ => "",
        },
    )
}

/// The rule that admitted a listed connection: its name, `(default)`, or
/// `(unknown)` (restored from a state file or copied from a peer).
fn rule_of(f: &serde_json::Value) -> &str {
    match f["rule"].as_str() {
        Some(name) => name,
        None if f["rule_unknown"] == true => "(unknown)",
        None => "(default)",
    }
}

fn print_why(w: &serde_json::Value) {
    match w["tracked"].as_array() {
        Some(t) if !t.is_empty() => {
            for c in t {
                println!(
                    "tracked: {} {} -> {} {} (rule {}, expires in {} s)",
                    c["proto"].as_str().unwrap_or("?"),
                    endpoint(c, "src", "sport"),
                    endpoint(c, "dst", "dport"),
                    c["state"].as_str().unwrap_or("?"),
                    rule_of(c),
                    c["expires_in_s"]
                );
            }
        }
        _ => println!(
            "tracked: no (its packets other than a new connection's first are no_connection)"
        ),
    }
    match w["drops"].as_array() {
        Some(d) if !d.is_empty() => {
            println!("recent drops:");
            for d in d {
                println!("  {}", drop_line(d));
            }
        }
        _ => println!("recent drops: none"),
    }
    let n = &w["new_connection"];
    match n["action"].as_str() {
        Some(action) => println!(
            "a new connection would be: {action} ({}){}{}",
            match n["rule"].as_str() {
                Some(r) => format!("rule {r:?}"),
                None => "the default action".into(),
            },
            n["note"]
                .as_str()
                .map(|s| format!("; {s}"))
                .unwrap_or_default(),
            n["interfaces"]
                .as_str()
                .map(|s| format!("; interfaces {s}"))
                .unwrap_or_default(),
        ),
        None => println!("a new connection: {}", n["note"].as_str().unwrap_or("?")),
    }
}

/// `conntrackd cluster` for people.
fn print_cluster(v: &serde_json::Value) {
    use serde_json::Value;
    let list = |v: &Value| {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    println!(
        "node {} ({}), {} to {}, subject {}.*, policy digest {}",
        v["node"].as_str().unwrap_or("?"),
        v["state"].as_str().unwrap_or("?"),
        v["connection"].as_str().unwrap_or("?"),
        list(&v["servers"]),
        v["subject"].as_str().unwrap_or("?"),
        v["policy_digest"].as_str().unwrap_or("?"),
    );
    println!(
        "sent {} records in {} messages; {} dropped (outbox full, or NATS not taking them), {} publish \
         errors; {} bulk copies sent",
        v["records_sent"],
        v["messages_sent"],
        v["records_dropped"],
        v["publish_errors"],
        v["bulk_copies_sent"]
    );
    if let Value::Object(r) = &v["refused"] {
        let parts: Vec<String> = r.iter().map(|(k, n)| format!("{k} {n}")).collect();
        println!("refused messages: {}", parts.join(", "));
    }
    println!(
        "peer             heard       lag ms (last/p50/p99/max)  records    missed  policy  ready"
    );
    for p in v["peers"].as_array().into_iter().flatten() {
        let heard = match p["last_heard_ms_ago"].as_u64() {
            Some(ms) => format!("{:.1} s ago", ms as f64 / 1e3),
            None => "never".into(),
        };
        let lag = &p["lag_ms"];
        let ms = |k: &str| lag[k].as_i64().map_or("-".into(), |n| n.to_string());
        println!(
            "{:<16} {:<11} {:<26} {:<10} {:<7} {:<7} {}",
            p["name"].as_str().unwrap_or("?"),
            heard,
            format!("{}/{}/{}/{}", ms("last"), ms("p50"), ms("p99"), ms("max")),
            p["records_received"].to_string(),
            p["missed_messages"].to_string(),
            match p["policy_agrees"].as_bool() {
                Some(true) => "same",
                Some(false) => "DIFFERS",
                None => "?",
            },
            if p["ready"] == true { "yes" } else { "no" },
        );
    }
    match v.get("last_bulk_copy") {
        Some(b) if !b.is_null() => println!(
            "last bulk copy: {} s ago, {} records in {} ms from {}{}",
            b["ago_s"],
            b["records"],
            b["took_ms"],
            match list(&b["answered"]) {
                a if a.is_empty() => "no peer".to_string(),
                a => a,
            },
            match list(&b["missing"]) {
                m if m.is_empty() => String::new(),
                m => format!("; no answer from {m}"),
            }
        ),
        _ => println!("last bulk copy: none yet"),
    }
}

/// `conntrackd stats` for people: the counters, then the queues, the rules
/// and the reasons as tables, with rates since the previous call.
fn print_stats(v: &serde_json::Value) {
    use serde_json::Value;
    let Value::Object(m) = v else { return };
    let tables = [
        "ok",
        "reasons",
        "queues",
        "rules",
        "per_second",
        "per_second_over_s",
        "sources",
    ];
    for (k, v) in m {
        if !tables.contains(&k.as_str()) && !v.is_null() {
            let rate = m
                .get("per_second")
                .and_then(|r| r.get(k))
                .map(|r| format!("  ({r}/s)"))
                .unwrap_or_default();
            println!("{k:<22} {v}{rate}");
        }
    }
    if let Some(over) = m.get("per_second_over_s") {
        println!("(rates over the {over} s since the previous stats)");
    }
    if let Some(Value::Object(s)) = m.get("sources") {
        let f = |k: &str| s.get(k).cloned().unwrap_or(Value::Null);
        println!(
            "sources                tracked {} of {}, displaced {}, untracked {}",
            f("tracked"),
            f("capacity"),
            f("displaced"),
            f("untracked")
        );
    }
    if let Some(Value::Array(q)) = m.get("queues") {
        println!("queue  packets      reads        mean batch  enobufs  recv errors");
        for q in q {
            println!(
                "{:<6} {:<12} {:<12} {:<11.1} {:<8} {}",
                q["queue"].to_string(),
                q["packets"].to_string(),
                q["reads"].to_string(),
                q["mean_batch"].as_f64().unwrap_or(0.0),
                q["enobufs"].to_string(),
                q["recv_errors"]
            );
        }
    }
    if let Some(Value::Array(r)) = m.get("rules") {
        if !r.is_empty() {
            println!("rule                     action  packets      connections");
            for r in r {
                println!(
                    "{:<24} {:<7} {:<12} {}",
                    r["name"].as_str().unwrap_or("?"),
                    r["action"].as_str().unwrap_or("?"),
                    r["packets"].to_string(),
                    r["connections"]
                );
            }
        }
    }
    if let Some(Value::Object(r)) = m.get("reasons") {
        println!("reasons:");
        let mut r: Vec<_> = r.iter().filter(|(_, n)| n.as_u64() != Some(0)).collect();
        r.sort_by_key(|(_, n)| std::cmp::Reverse(n.as_u64().unwrap_or(0)));
        for (name, n) in r {
            println!("  {name:<26} {n}");
        }
    }
}
