//! The `conntrackd` client against a lab daemon's control socket, as an
//! operator runs it.

use super::command::run_timeout;
use std::path::Path;
use std::time::Duration;

/// `conntrackd ARGS --socket SOCKET`: whether it exited 0, and its stdout
/// followed by its stderr.
pub fn ctl(socket: &Path, args: &[&str]) -> (bool, String) {
    let out = run_timeout(
        std::process::Command::new(env!("CARGO_BIN_EXE_conntrackd"))
            .args(args)
            .args(["--socket", socket.to_str().expect("a UTF-8 path")]),
        Duration::from_secs(10),
    );
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// `conntrackd stats --json`: the daemon's counters (the answer's last line).
pub fn stats(socket: &Path) -> serde_json::Value {
    let (ok, out) = ctl(socket, &["stats", "--json"]);
    assert!(ok, "conntrackd stats: {out}");
    serde_json::from_str(out.lines().last().expect("a line")).expect("stats as JSON")
}

/// The JSON lines of a `--json` answer.
pub fn json_lines(out: &str) -> Vec<serde_json::Value> {
    out.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}
