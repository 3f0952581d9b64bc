//! The `conntrackd` process under test, started in the gateway namespace;
//! its log (stderr) is collected line by line for the assertions.

use super::ns::Ns;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A running conntrackd; its stderr is collected line by line.
pub struct Daemon {
    child: Child,
    pub pid: i32,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Daemon {
    /// Starts `conntrackd ARGS` in `ns` without waiting for it, with
    /// `var_lib` mounted over /var/lib in a mount namespace of its own (so
    /// the default state file, /var/lib/conntrackd/table, is the test's and
    /// never the machine's).
    pub fn spawn(ns: &Ns, args: &[&str], var_lib: &std::path::Path) -> Daemon {
        std::fs::create_dir_all(var_lib).expect("creating the daemon's /var/lib");
        // unshare, sh and ip each exec the next: the pid is conntrackd's.
        let mut child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount --bind "$0" /var/lib && exec ip netns exec "$@""#)
            .arg(var_lib)
            .args([&ns.name, env!("CARGO_BIN_EXE_conntrackd")])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning conntrackd");
        // `ip netns exec` execs the program: the pid is conntrackd's.
        let pid = child.id() as i32;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                match line {
                    Ok(l) => sink.lock().unwrap().push(l),
                    Err(_) => break,
                }
            }
        });
        Daemon {
            child,
            pid,
            lines,
            reader: Some(reader),
            status: None,
        }
    }

    /// Everything logged so far.
    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Log lines containing `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// A counter of a log line, `name=N` or `name=N` inside `reasons="..."`
    /// (0 when the line does not name it: reasons are listed only when
    /// non-zero).
    pub fn counter(line: &str, name: &str) -> u64 {
        line.split(&format!("{name}="))
            .nth(1)
            .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Number of log lines containing `needle`.
    pub fn count_log(&self, needle: &str) -> usize {
        self.log_lines(needle).len()
    }

    /// Waits for the `n`-th line containing `needle`; panics with the log on timeout
    /// or if the daemon exits first.
    pub fn wait_log_n(&self, needle: &str, n: usize, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.log_lines(needle);
            if found.len() >= n {
                return found[n - 1].clone();
            }
            if Instant::now() > deadline {
                panic!(
                    "conntrackd did not log {needle:?} (x{n}) within {timeout:?}; log:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn wait_log(&self, needle: &str, timeout: Duration) -> String {
        self.wait_log_n(needle, 1, timeout)
    }

    pub fn signal(&self, sig: i32) {
        if self.status.is_none() {
            // SAFETY: kill(2) takes two integers and touches no memory; the pid
            // is our own child's, not yet reaped, so it names no other process.
            unsafe { libc::kill(self.pid, sig) };
        }
    }

    /// Waits for the exit; panics (with the log) after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        if let Some(s) = self.status {
            return s;
        }
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                self.status = Some(s);
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
                return s;
            }
            if Instant::now() > deadline {
                let threads = thread_states(self.pid);
                let _ = self.child.kill();
                panic!(
                    "conntrackd did not exit within {timeout:?}; threads:\n{threads}\nlog:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGTERM, then the exit status.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit(Duration::from_secs(20))
    }

    /// SIGKILL: the daemon gets no chance to clean up.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        self.wait_exit(Duration::from_secs(10));
    }
}

/// Name, state and kernel wait channel of each thread of a process (for a hang).
fn thread_states(pid: i32) -> String {
    let mut out = String::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return format!("(no /proc/{pid}/task)");
    };
    for task in tasks.flatten() {
        let p = task.path();
        let read = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
        let stat = read("stat");
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or("?")
            .to_string();
        out.push_str(&format!(
            "{} {} state={} wchan={}\n{}",
            task.file_name().to_string_lossy(),
            read("comm").trim(),
            state,
            read("wchan"),
            read("stack")
        ));
    }
    out
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() && self.status.is_none() {
            // For the post-mortem: a graceful stop logs the final counters,
            // and the reader gets to the end of the log.
            self.signal(libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(s)) = self.child.try_wait() {
                    self.status = Some(s);
                    if let Some(r) = self.reader.take() {
                        let _ = r.join();
                    }
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if self.status.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "---- conntrackd log (pid {}) ----\n{}",
                self.pid,
                self.log()
            );
        }
    }
}
