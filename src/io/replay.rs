//! Offline replay of captures. (stub: to be written)

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Rules file.
    #[arg(long)]
    pub rules: PathBuf,
    /// Capture files (pcap or pcapng).
    #[arg(required = true)]
    pub captures: Vec<PathBuf>,
}

pub fn run(_args: ReplayArgs) -> ExitCode {
    eprintln!("conntrackd: replay is not implemented yet");
    ExitCode::FAILURE
}
