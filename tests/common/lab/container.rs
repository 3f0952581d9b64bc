//! A real systemd as the gateway's PID 1: `systemd-nspawn --boot` of the
//! Debian root filesystem that `packaging/systemd-lab/rootfs.sh` makes once
//! (reused by path), in the lab's gateway network namespace. The rootfs is
//! never written to: each boot is `--volatile=overlay` (a tmpfs over a
//! read-only root), so whatever a test installs is gone at power-off.
//!
//! Commands run inside with `nsenter -t LEADER -a` (every namespace of the
//! container's PID 1: its mounts, so `systemctl`, `dpkg` and the container's
//! own binaries). With `--register=no` there is no machined to ask for the
//! leader: it is the child of `systemd-nspawn` whose innermost pid is 1.
//! Powered off on drop (bounded), then killed.

use super::command::run_timeout;
use super::ns::Ns;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Where `packaging/systemd-lab/rootfs.sh` puts the rootfs by default
/// (`CONNTRACKD_SYSTEMD_ROOTFS` overrides both).
pub const DEFAULT_ROOTFS: &str = "/var/cache/conntrackd/systemd-lab-rootfs";

/// The rootfs the container boots, if it has been made.
pub fn rootfs() -> Result<PathBuf, String> {
    let dir = std::env::var_os("CONNTRACKD_SYSTEMD_ROOTFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOTFS));
    if dir.join(".conntrackd-rootfs-v2").exists() {
        Ok(dir)
    } else {
        Err(format!(
            "needs the systemd lab's rootfs at {} (packaging/systemd-lab/rootfs.sh)",
            dir.display()
        ))
    }
}

/// A booted container: systemd as PID 1 in the gateway's network namespace.
pub struct Container {
    nspawn: Child,
    /// The container's cgroups (one per mounted hierarchy), removed at drop.
    cgroups: Vec<PathBuf>,
    /// The container's PID 1, as the host sees it.
    pub leader: i32,
    console: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
    /// How long from spawning nspawn to `is-system-running` = running.
    pub boot_time: Duration,
}

impl Container {
    /// Boots `rootfs` in `gw`'s network namespace and waits (bounded) until
    /// systemd says the system is running.
    pub fn boot(gw: &Ns, rootfs: &Path) -> Container {
        let start = Instant::now();
        let cgroups = own_cgroups(&gw.name);
        let joined: Vec<String> = cgroups.iter().map(|d| d.display().to_string()).collect();
        // nspawn (as the shell it execs from) moves into the container's own
        // cgroups first: with --keep-unit and no systemd on the host, the
        // container's systemd takes nspawn's cgroup as its root, and two
        // containers in one cgroup race over the same unit cgroups
        // (seen: "Failed to attach to cgroup /system.slice/…").
        let mut nspawn = Command::new("sh")
            .args([
                "-c",
                "IFS=:; for d in $CTD_CGROUPS; do echo $$ >\"$d/cgroup.procs\" || exit 1; done; \
                 unset IFS; exec systemd-nspawn \"$@\"",
                "sh",
            ])
            .env("CTD_CGROUPS", joined.join(":"))
            .args([
                "--quiet",
                "--register=no",
                "--keep-unit",
                // Not in nspawn's default bounding set even with a network
                // namespace of our own: without it no service binds a queue.
                "--capability=CAP_NET_ADMIN",
                "--volatile=overlay",
                "--console=pipe",
                "--boot",
                "-D",
            ])
            .arg(rootfs)
            .arg(format!("--network-namespace-path=/run/netns/{}", gw.name))
            .arg(format!("--machine={}", gw.name))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning systemd-nspawn (apt-get install systemd-container)");
        let console = Arc::new(Mutex::new(Vec::new()));
        let (out, err) = (nspawn.stdout.take().unwrap(), nspawn.stderr.take().unwrap());
        let sink = console.clone();
        let sink2 = console.clone();
        let reader = std::thread::spawn(move || {
            let t = std::thread::spawn(move || {
                for line in BufReader::new(err).lines().map_while(Result::ok) {
                    sink2.lock().unwrap().push(format!("nspawn: {line}"));
                }
            });
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
            let _ = t.join();
        });
        let nspawn_pid = nspawn.id() as i32;
        let mut c = Container {
            nspawn,
            cgroups,
            leader: 0,
            console,
            reader: Some(reader),
            boot_time: Duration::ZERO,
        };
        // From here on, Drop powers off or kills what was started.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(pid) = leader_of(nspawn_pid) {
                c.leader = pid;
                break;
            }
            if let Ok(Some(s)) = c.nspawn.try_wait() {
                panic!("systemd-nspawn exited ({s}):\n{}", c.console());
            }
            assert!(
                Instant::now() < deadline,
                "no container PID 1 under systemd-nspawn {nspawn_pid} within 30 s:\n{}",
                c.console()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let o = c.exec_timeout(&["systemctl", "is-system-running"], Duration::from_secs(10));
            let last = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if last == "running" {
                break;
            }
            if last == "degraded" {
                let failed = c.out(&["systemctl", "--failed", "--no-legend"]);
                let why = c.exec(&["journalctl", "-b", "--no-pager", "-p", "warning"]);
                panic!(
                    "the container booted degraded; failed units:\n{failed}\n{}",
                    String::from_utf8_lossy(&why.stdout)
                );
            }
            assert!(
                Instant::now() < deadline,
                "systemctl is-system-running: {last:?} after 90 s:\n{}",
                c.console()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        c.boot_time = start.elapsed();
        c
    }

    /// What the container printed on its console (and nspawn on stderr).
    pub fn console(&self) -> String {
        self.console.lock().unwrap().join("\n")
    }

    /// Runs `args` inside the container, whatever the outcome, within `limit`.
    pub fn exec_timeout(&self, args: &[&str], limit: Duration) -> Output {
        let mut cmd = Command::new("nsenter");
        cmd.args(["-t", &self.leader.to_string(), "-a", "--"])
            .args(args)
            // The container's PATH, not the test's.
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("LANG", "C.UTF-8")
            .env("SYSTEMD_PAGER", "")
            .env("DEBIAN_FRONTEND", "noninteractive");
        run_timeout(&mut cmd, limit)
    }

    /// Runs `args` inside the container (30 s at most), whatever the outcome.
    pub fn exec(&self, args: &[&str]) -> Output {
        self.exec_timeout(args, Duration::from_secs(30))
    }

    /// Runs `args` inside the container; it must succeed. Its stdout.
    pub fn out(&self, args: &[&str]) -> String {
        let o = self.exec(args);
        assert!(
            o.status.success(),
            "in the container: {args:?} failed ({}):\n{}{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Runs a shell script inside the container; it must succeed.
    pub fn sh(&self, script: &str) -> String {
        self.out(&["sh", "-ec", script])
    }

    /// Copies a host file into the container at `to` (through the
    /// container's root, /proc/LEADER/root).
    pub fn copy_in(&self, from: &Path, to: &str) {
        let dest =
            PathBuf::from(format!("/proc/{}/root", self.leader)).join(to.trim_start_matches('/'));
        std::fs::copy(from, &dest)
            .unwrap_or_else(|e| panic!("copying {} to {}: {e}", from.display(), dest.display()));
    }

    /// Writes `text` to `to` inside the container (mode 0644).
    pub fn write(&self, to: &str, text: &str) {
        let dest =
            PathBuf::from(format!("/proc/{}/root", self.leader)).join(to.trim_start_matches('/'));
        std::fs::write(&dest, text).unwrap_or_else(|e| panic!("writing {}: {e}", dest.display()));
    }

    /// `systemctl show -p NAMES… UNIT` as name → value.
    pub fn show(&self, unit: &str, props: &[&str]) -> std::collections::BTreeMap<String, String> {
        let mut args = vec!["systemctl", "show", unit];
        for p in props {
            args.extend(["-p", p]);
        }
        self.out(&args)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The host's id of thread `name` (its comm) of the container's process
    /// `pid` (a pid as the container sees it, e.g. a unit's MainPID).
    pub fn host_thread(&self, pid: &str, name: &str) -> Option<i32> {
        let ns = std::fs::read_link(format!("/proc/{}/ns/pid", self.leader)).ok()?;
        let host_pid = std::fs::read_dir("/proc")
            .ok()?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .find(|p| {
                let same_ns =
                    std::fs::read_link(format!("/proc/{p}/ns/pid")).ok() == Some(ns.clone());
                let inner = std::fs::read_to_string(format!("/proc/{p}/status"))
                    .ok()
                    .and_then(|s| {
                        let ids = s.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
                        ids.split_whitespace().last().map(str::to_string)
                    });
                same_ns && inner.as_deref() == Some(pid)
            })?;
        std::fs::read_dir(format!("/proc/{host_pid}/task"))
            .ok()?
            .flatten()
            .find(|t| {
                std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name)
            })
            .and_then(|t| t.file_name().to_str()?.parse().ok())
    }

    /// Powers the container off: `systemctl poweroff`, then waits (bounded)
    /// for nspawn to exit; kills PID 1 (and with it the container) if not.
    pub fn poweroff(&mut self) -> bool {
        if let Ok(Some(_)) = self.nspawn.try_wait() {
            return true;
        }
        if self.leader > 0 {
            let _ = Command::new("nsenter")
                .args(["-t", &self.leader.to_string(), "-a", "--"])
                .args(["systemctl", "--no-block", "poweroff"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.nspawn.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if self.leader > 0 {
            // SAFETY: kill(2) takes two integers; the pid is this container's
            // PID 1, and SIGKILL to it ends the container's pid namespace.
            unsafe { libc::kill(self.leader, libc::SIGKILL) };
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
        false
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let clean = self.poweroff();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        for dir in &self.cgroups {
            remove_cgroup(dir);
        }
        if std::thread::panicking() || !clean {
            eprintln!(
                "---- container console (powered off cleanly: {clean}) ----\n{}",
                self.console()
            );
        }
    }
}

/// The container's PID 1: a descendant of `nspawn` whose innermost pid
/// (the last NSpid of /proc/PID/status) is 1.
fn leader_of(nspawn: i32) -> Option<i32> {
    let mut frontier = vec![nspawn];
    // nspawn forks an outer child that forks PID 1: two levels at most, and
    // a bound on the walk anyway.
    for _ in 0..4 {
        let mut next = Vec::new();
        for parent in &frontier {
            for child in children(*parent) {
                let status = std::fs::read_to_string(format!("/proc/{child}/status"));
                if let Ok(status) = status {
                    let nspid = status.lines().find_map(|l| l.strip_prefix("NSpid:"));
                    if let Some(ids) = nspid {
                        let ids: Vec<&str> = ids.split_whitespace().collect();
                        if ids.len() > 1 && ids.last() == Some(&"1") {
                            return Some(child);
                        }
                    }
                }
                next.push(child);
            }
        }
        frontier = next;
    }
    None
}

/// The children of `pid` (from /proc/PID/task/*/children).
fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
                out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
            }
        }
    }
    out
}

/// One thread of a process held still, the others running: ptrace(2)
/// PTRACE_SEIZE and PTRACE_INTERRUPT on that thread alone (a signal such as
/// SIGSTOP would stop the whole process). Held by a thread of the test's own
/// (the tracer), until the thread dies (it is reaped, so that its process
/// can end) or the `Stall` is dropped (detached: it runs again), or 120 s.
pub struct Stall {
    release: Option<std::sync::mpsc::Sender<()>>,
    tracer: Option<JoinHandle<Option<String>>>,
}

impl Stall {
    /// Stops thread `tid` (a host id); an error if ptrace refused.
    pub fn thread(tid: i32) -> std::io::Result<Stall> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let tracer = std::thread::spawn(move || {
            // SAFETY: ptrace(2) and waitpid(2) with integer arguments on a
            // thread id; no memory of the tracee is touched.
            unsafe {
                if libc::ptrace(libc::PTRACE_SEIZE, tid, 0, 0) != 0
                    || libc::ptrace(libc::PTRACE_INTERRUPT, tid, 0, 0) != 0
                {
                    let _ = ready_tx.send(Err(std::io::Error::last_os_error()));
                    return None;
                }
                let mut status = 0;
                if libc::waitpid(tid, &mut status, libc::__WALL) != tid {
                    let _ = ready_tx.send(Err(std::io::Error::last_os_error()));
                    return None;
                }
                let _ = ready_tx.send(Ok(()));
                let deadline = Instant::now() + Duration::from_secs(120);
                loop {
                    let mut status = 0;
                    let r = libc::waitpid(tid, &mut status, libc::__WALL | libc::WNOHANG);
                    if r == tid && (libc::WIFEXITED(status) || libc::WIFSIGNALED(status)) {
                        return Some("the thread ended".to_string());
                    }
                    if r < 0 {
                        return Some(format!("waitpid: {}", std::io::Error::last_os_error()));
                    }
                    let let_go = !matches!(
                        released.try_recv(),
                        Err(std::sync::mpsc::TryRecvError::Empty)
                    );
                    if let_go || Instant::now() >= deadline {
                        libc::ptrace(libc::PTRACE_DETACH, tid, 0, 0);
                        return Some("detached".to_string());
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        });
        match ready_rx.recv() {
            Ok(Ok(())) => Ok(Stall {
                release: Some(release),
                tracer: Some(tracer),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(std::io::Error::other("the tracer thread died")),
        }
    }

    /// Lets the thread go (if it still lives) and says how the stall ended.
    pub fn end(mut self) -> String {
        self.finish()
    }

    fn finish(&mut self) -> String {
        drop(self.release.take());
        self.tracer
            .take()
            .and_then(|t| t.join().ok().flatten())
            .unwrap_or_default()
    }
}

impl Drop for Stall {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A cgroup of the container's own in each hierarchy the host mounts (the
/// test's own cgroup there, /proc/self/cgroup, + `conntrackd-lab-NAME`):
/// cgroup v2's, and v1's name=systemd when the host is hybrid.
fn own_cgroups(name: &str) -> Vec<PathBuf> {
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let mut dirs = Vec::new();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next(), parts.next(), parts.next());
        let base = match controllers {
            Some("name=systemd") => PathBuf::from("/sys/fs/cgroup/systemd"),
            Some("") if Path::new("/sys/fs/cgroup/unified/cgroup.procs").exists() => {
                PathBuf::from("/sys/fs/cgroup/unified")
            }
            Some("") if Path::new("/sys/fs/cgroup/cgroup.procs").exists() => {
                PathBuf::from("/sys/fs/cgroup")
            }
            _ => continue,
        };
        let dir = base
            .join(path.unwrap_or("/").trim_start_matches('/'))
            .join(format!("conntrackd-lab-{name}"));
        match std::fs::create_dir(&dir) {
            Ok(()) => dirs.push(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => dirs.push(dir),
            Err(e) => panic!("creating the container's cgroup {}: {e}", dir.display()),
        }
    }
    dirs
}

/// Removes a cgroup and what the container's systemd left under it, deepest
/// first (rmdir of an empty cgroup; one with processes stays).
fn remove_cgroup(dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
}
