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
        filter: crate::daemon::control::Filter,
        /// Show at most this many.
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Remove the tracked connections the filter selects (their next packets
    /// are no_connection); prints how many.
    Kill {
        #[command(flatten)]
        client: Client,
        #[command(flatten)]
        filter: crate::daemon::control::Filter,
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
        } => {
            let mut r = serde_json::to_value(&filter).expect("a filter");
            r["cmd"] = json!("flows");
            if let Some(n) = limit {
                r["limit"] = json!(n);
            }
            (client, r)
        }
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
        Command::Check { .. } | Command::Replay(_) => unreachable!("not a control command"),
    };
    let socket = client
        .socket
        .unwrap_or_else(crate::daemon::settings::default_control_socket);
    let lines = match crate::daemon::control::request(&socket, &request) {
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
        Some("stats") => {
            if let Value::Object(m) = last {
                for (k, v) in m {
                    if k != "ok" && k != "reasons" && !v.is_null() {
                        println!("{k:<18} {v}");
                    }
                }
                if let Some(Value::Object(r)) = m.get("reasons") {
                    println!("reasons:");
                    let mut r: Vec<_> = r.iter().collect();
                    r.sort_by_key(|(_, n)| std::cmp::Reverse(n.as_u64().unwrap_or(0)));
                    for (name, n) in r {
                        println!("  {name:<26} {n}");
                    }
                }
            }
        }
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
                println!(
                    "{:<7} {:<45} -> {:<45} {:<26} expires in {} s",
                    s("proto"),
                    end(s("src"), s("sport")),
                    end(s("dst"), s("dport")),
                    s("state"),
                    s("expires_in_s")
                );
            }
            println!("{} shown, {} matched", last["shown"], last["matched"]);
        }
        Some("kill") | Some("flush") => println!("{} connections removed", last["killed"]),
        Some("reload") => println!("rules reloaded: {}", last["summary"].as_str().unwrap_or("")),
        _ => println!("{last}"),
    }
}
