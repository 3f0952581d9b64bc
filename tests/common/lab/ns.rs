//! One network namespace: commands, sysctls and threads inside it.

use super::command::{run_timeout, sh, CMD_TIMEOUT};
use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::thread::JoinHandle;

/// One network namespace.
#[derive(Clone, Debug)]
pub struct Ns {
    pub name: String,
}

impl Ns {
    /// Kills whatever still runs in the namespace (a lab's daemons: only
    /// its test starts processes there) and deletes it; never fails.
    pub fn remove(&self) {
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                if let Ok(pid) = pid.parse::<i32>() {
                    // SAFETY: kill(2) takes two integers and touches no
                    // memory; the pids are processes in this lab's own
                    // namespace.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                }
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }

    /// Runs `args` inside the namespace; it must succeed.
    pub fn sh(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "netns", "exec", &self.name];
        full.extend_from_slice(args);
        sh(&full)
    }

    /// Runs `args` inside the namespace, returning the output whatever it is.
    pub fn output(&self, args: &[&str]) -> Output {
        run_timeout(
            Command::new("ip")
                .args(["netns", "exec", &self.name])
                .args(args),
            CMD_TIMEOUT,
        )
    }

    /// Runs one `iptables`/`ip6tables` command given as a string.
    pub fn iptables(&self, family6: bool, rule: &str) {
        let tool = if family6 { "ip6tables" } else { "iptables" };
        let mut args = vec![tool, "-w", "5"];
        args.extend(rule.split_whitespace());
        self.sh(&args);
    }

    /// `iptables-save` (or `ip6tables-save`) without comments and counters.
    pub fn ruleset(&self, family6: bool) -> String {
        let tool = if family6 {
            "ip6tables-save"
        } else {
            "iptables-save"
        };
        normalize_ruleset(&self.sh(&[tool]))
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.name)
    }

    /// Runs `f` on a thread that lives in this namespace.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        self.spawn(f).join().expect("thread in netns panicked")
    }

    /// Starts a thread that lives in this namespace.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> JoinHandle<T> {
        let path = self.path();
        std::thread::spawn(move || {
            let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            // SAFETY: setns(2) takes an fd and a flag and touches no memory of
            // ours; the fd is an open /run/netns file (`file` outlives the
            // call), and it moves only this new thread into the namespace.
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        })
    }

    /// Writes a sysctl inside the namespace (`net.ipv4.ip_forward`, ...).
    /// Through /proc/sys from a thread in the namespace (net.* entries are
    /// per namespace), so that no `sysctl` binary (procps) is needed.
    pub fn sysctl(&self, key: &str, value: &str) {
        let path = format!("/proc/sys/{}", key.replace('.', "/"));
        let value = value.to_string();
        self.enter(move || {
            std::fs::write(&path, value).unwrap_or_else(|e| panic!("writing {path}: {e}"))
        });
    }
}

/// Drops comment lines and packet/byte counters from iptables-save output.
pub fn normalize_ruleset(save: &str) -> String {
    let mut out = String::new();
    for line in save.lines() {
        if line.starts_with('#') {
            continue;
        }
        let line = match (line.starts_with(':'), line.rfind(" [")) {
            (true, Some(i)) => &line[..i],
            _ => line,
        };
        out.push_str(line);
        out.push('\n');
    }
    out
}
