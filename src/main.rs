use clap::Parser;
use conntrackd::cli::{Cli, Command};
use conntrackd::config::ShellTable;
use conntrackd::daemon::{ClusterSettings, DaemonSettings};
use conntrackd::rules_file;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
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
