use clap::Parser;
use conntrackd::cli::{Cli, Command};
use conntrackd::Config;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        None => conntrackd::daemon::run(cli.daemon),
        Some(Command::Check { rules }) => match conntrackd::config::rules_path(rules.as_deref())
            .map_err(|e| e.to_string())
            .and_then(|path| Config::load(&path).map_err(|e| e.to_string()))
        {
            Ok(config) => {
                for w in &config.warnings {
                    eprintln!("warning: {w}");
                }
                print!("{config}");
                println!("ok");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Some(Command::Replay(args)) => conntrackd::replay::run(args),
        Some(control) => conntrackd::cli::control(control),
    }
}
