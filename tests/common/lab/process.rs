//! Programs the labs leave running in a namespace (keepalived, nats-server):
//! their output goes to a log file, and they are stopped, bounded, when
//! dropped.

use super::ns::Ns;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A program running in a namespace, its stdout and stderr appended to a
/// log file. Stopped (SIGTERM, then SIGKILL) when dropped.
pub struct Background {
    what: String,
    child: Child,
    /// The program's pid (`ip netns exec` execs it).
    pub pid: i32,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl Background {
    /// Starts `args` in `ns`; its output is appended to `log`.
    pub fn spawn(ns: &Ns, args: &[&str], log: &Path) -> Background {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("{}: {e}", log.display()));
        let err = file.try_clone().expect("dup of the log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &ns.name])
            .args(args)
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {args:?} in {}: {e}", ns.name));
        Background {
            what: format!("{} in {}", args[0], ns.name),
            pid: child.id() as i32,
            child,
            log: log.to_path_buf(),
            status: None,
        }
    }

    /// Everything it wrote so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Whether it still runs.
    pub fn running(&mut self) -> bool {
        if self.status.is_none() {
            self.status = self.child.try_wait().expect("wait");
        }
        self.status.is_none()
    }

    /// Sends `sig` while it runs.
    pub fn signal(&mut self, sig: i32) {
        if self.running() {
            // SAFETY: kill(2) takes two integers and touches no memory; the pid
            // is our own child's, not yet reaped, so it names no other process.
            unsafe { libc::kill(self.pid, sig) };
        }
    }

    /// Waits up to `timeout` for its exit; whether it exited.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.running() {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    /// SIGTERM, up to `grace` to exit, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        self.signal(libc::SIGTERM);
        if !self.wait_exit(grace) {
            self.kill();
        }
    }

    /// SIGKILL: no chance to clean up (a crash).
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        assert!(
            self.wait_exit(Duration::from_secs(10)),
            "{} (pid {}) survived SIGKILL for 10 s",
            self.what,
            self.pid
        );
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if self.running() {
            self.signal(libc::SIGTERM);
            if !self.wait_exit(Duration::from_secs(5)) {
                self.signal(libc::SIGKILL);
                self.wait_exit(Duration::from_secs(5));
            }
        }
    }
}
