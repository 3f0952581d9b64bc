//! The NFQUEUE daemon. (stub: to be written)

use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    /// Rules file (default: rules/default.toml when it exists).
    #[arg(long)]
    pub rules: Option<PathBuf>,
}

pub fn run(_args: DaemonArgs) -> ExitCode {
    eprintln!("conntrackd: the daemon is not implemented yet");
    ExitCode::FAILURE
}
