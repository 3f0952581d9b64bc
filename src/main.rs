use clap::Parser;
use conntrackd::cli::{Cli, Command};
use conntrackd::config::ShellTable;
use conntrackd::daemon::{ClusterSettings, DaemonSettings};
use conntrackd::rules_file;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.command.is_some() {
        end_quietly_at_a_closed_pipe();
    }
    match cli.command {
        None => conntrackd::daemon::run(cli.daemon),
        Some(Command::Check { rules }) => check(rules.as_deref()),
        Some(Command::Replay(args)) => conntrackd::replay::run(args),
        Some(Command::UninstallIptables { rules, chain }) => {
            conntrackd::daemon::uninstall_iptables(rules, chain)
        }
        Some(control) => conntrackd::cli::control(control),
    }
}

/// A command whose output goes into `… | head` ends when the reader does,
/// quietly, as `cat` does: killed by SIGPIPE. Rust ignores SIGPIPE, so the
/// write would fail instead and `println!` panic with a backtrace. Not for
/// the daemon, whose sockets must see EPIPE as an error of one client.
fn end_quietly_at_a_closed_pipe() {
    // SAFETY: at start, before any thread: sets SIGPIPE back to its default.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// `conntrackd check`: the summary, or every problem of the file, one a line.
fn check(rules: Option<&std::path::Path>) -> ExitCode {
    let path = match rules_file::path(rules) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rules_file::load_shell::<DaemonSettings, ClusterSettings>(&path) {
        Ok((config, daemon, cluster)) => {
            for w in &config.warnings {
                eprintln!("warning: {w}");
            }
            let tables = [daemon.summary(), cluster.and_then(|c| c.summary())];
            print!("{}", config.summary_of(&tables));
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            for line in e.lines() {
                eprintln!("error: {line}");
            }
            ExitCode::FAILURE
        }
    }
}
