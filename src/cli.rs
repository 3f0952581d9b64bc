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
        /// Rules file to check.
        #[arg(long, default_value = "rules/default.toml")]
        rules: PathBuf,
    },
    /// Replay captures through the engine and show each packet's verdict and reason.
    Replay(crate::replay::ReplayArgs),
}
