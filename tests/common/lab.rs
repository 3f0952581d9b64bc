//! The network lab (design.md §5): three network namespaces joined by veth,
//!
//! ```text
//!   client (eth0) ---- (cli) gateway (srv) ---- (eth0) server
//!   198.18.0.2/24      198.18.0.1  198.19.0.1       198.19.0.2/24
//!   2001:db8:1::2/64   2001:db8:1::1  2001:db8:2::1  2001:db8:2::2/64
//! ```
//!
//! with forwarding on in the gateway, and the built `conntrackd` started in
//! the gateway namespace. Every lab has its own namespace names (pid and a
//! counter), so tests run in parallel; namespaces and daemons are removed on
//! drop. Every wait has a timeout and every traffic loop a bound.
//!
//! Sockets are opened inside a namespace by a thread that `setns(2)`s into
//! it; a socket stays in the namespace it was created in, whichever thread
//! then uses it. So no tool beyond `ip` and `iptables` is needed.

use std::ffi::CString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket,
};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const GW_CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const GW_SERVER4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
pub const SERVER4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 2);
pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2);
pub const SERVER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 2);

/// Gateway interface names (what rules' `in_iface`/`out_iface` see).
pub const GW_CLIENT_IF: &str = "cli";
pub const GW_SERVER_IF: &str = "srv";
/// End hosts' interface name.
pub const HOST_IF: &str = "eth0";

const MAC_CLIENT: &str = "02:c7:d0:00:01:02";
const MAC_GW_CLIENT: &str = "02:c7:d0:00:01:01";
const MAC_GW_SERVER: &str = "02:c7:d0:00:02:01";
const MAC_SERVER: &str = "02:c7:d0:00:02:02";

/// Client ports the crafted-packet tests use; real connections get their
/// ephemeral ports elsewhere (ip_local_port_range in the client).
pub const CRAFTED_CLIENT_PORTS: (u16, u16) = (40000, 40999);
/// Server ports the crafted-packet tests use; dropped at the server's INPUT.
pub const CRAFTED_SERVER_PORTS: (u16, u16) = (7000, 7999);

const CMD_TIMEOUT: Duration = Duration::from_secs(20);

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Whether this test must be skipped (not root, no `ip`/`iptables`). Under
/// `CI=true` a skip is a failure: it panics instead.
pub fn skip(test: &str) -> bool {
    let why = if unsafe { libc::geteuid() } != 0 {
        Some("needs root (network namespaces, NFQUEUE, iptables)".to_string())
    } else {
        [
            "ip",
            "iptables",
            "ip6tables",
            "iptables-save",
            "iptables-restore",
        ]
        .iter()
        .find(|tool| {
            Command::new(tool)
                .arg("-V")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_err()
        })
        .map(|tool| format!("needs {tool} (apt-get install iproute2 iptables)"))
    };
    match why {
        None => false,
        Some(why) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{test}: {why}; CI=true forbids skipping this test");
            }
            eprintln!("SKIP {test}: {why}");
            true
        }
    }
}

/// Whether nftables' `nft` is installed.
pub fn have_nft() -> bool {
    Command::new("nft")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs a command with a timeout; kills it when the time is up.
pub fn run_timeout(cmd: &mut Command, timeout: Duration) -> Output {
    let desc = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {desc}: {e}"));
    // Read the pipes in threads so that a chatty child cannot block.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{desc} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    Output {
        status,
        stdout: t_out.join().unwrap(),
        stderr: t_err.join().unwrap(),
    }
}

/// Runs a command that must succeed.
pub fn sh(args: &[&str]) -> String {
    let out = run_timeout(Command::new(args[0]).args(&args[1..]), CMD_TIMEOUT);
    assert!(
        out.status.success(),
        "{args:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// One network namespace.
#[derive(Clone, Debug)]
pub struct Ns {
    pub name: String,
}

impl Ns {
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
            // SAFETY: a valid namespace fd; only this thread changes namespace.
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

/// client -- gateway -- server.
pub struct Lab {
    pub id: String,
    pub client: Ns,
    pub gw: Ns,
    pub server: Ns,
    pub dir: tempfile::TempDir,
}

impl Lab {
    /// Builds the lab, or `None` when the test must be skipped (see [`skip`]).
    pub fn new(test: &str) -> Option<Lab> {
        if skip(test) {
            return None;
        }
        let id = format!(
            "{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let lab = Lab {
            client: Ns {
                name: format!("ctd-{id}-c"),
            },
            gw: Ns {
                name: format!("ctd-{id}-g"),
            },
            server: Ns {
                name: format!("ctd-{id}-s"),
            },
            id,
            dir: tempfile::tempdir().expect("tempdir"),
        };
        // From here on, Drop removes whatever was created.
        for ns in [&lab.client, &lab.gw, &lab.server] {
            sh(&["ip", "netns", "add", &ns.name]);
        }
        let (c, g, s) = (&lab.client, &lab.gw, &lab.server);
        let ip = |args: String| {
            sh(&std::iter::once("ip")
                .chain(args.split_whitespace())
                .collect::<Vec<_>>())
        };
        // Fixed MAC addresses, so that neighbours can be entered statically:
        // neighbour discovery under load is not what these tests are about.
        ip(format!(
            "-n {} link add {HOST_IF} address {MAC_CLIENT} type veth \
             peer name {GW_CLIENT_IF} address {MAC_GW_CLIENT} netns {}",
            c.name, g.name
        ));
        ip(format!(
            "-n {} link add {HOST_IF} address {MAC_SERVER} type veth \
             peer name {GW_SERVER_IF} address {MAC_GW_SERVER} netns {}",
            s.name, g.name
        ));
        for ns in [c, g, s] {
            ns.sysctl("net.ipv6.conf.all.accept_ra", "0");
            ns.sysctl("net.ipv6.conf.default.accept_ra", "0");
            ip(format!("-n {} link set lo up", ns.name));
        }
        g.sysctl("net.ipv4.ip_forward", "1");
        g.sysctl("net.ipv6.conf.all.forwarding", "1");
        // Ping sockets (SOCK_DGRAM ICMP) for root in the client and server.
        c.sysctl("net.ipv4.ping_group_range", "0 2147483647");
        s.sysctl("net.ipv4.ping_group_range", "0 2147483647");
        // Real connections' ephemeral ports stay clear of the crafted range.
        c.sysctl("net.ipv4.ip_local_port_range", "50000 60999");
        s.sysctl("net.ipv4.ip_local_port_range", "50000 60999");
        for (ns, dev, v4, v6) in [
            (c, HOST_IF, "198.18.0.2/24", "2001:db8:1::2/64"),
            (g, GW_CLIENT_IF, "198.18.0.1/24", "2001:db8:1::1/64"),
            (g, GW_SERVER_IF, "198.19.0.1/24", "2001:db8:2::1/64"),
            (s, HOST_IF, "198.19.0.2/24", "2001:db8:2::2/64"),
        ] {
            ip(format!("-n {} addr add {v4} dev {dev}", ns.name));
            ip(format!("-n {} addr add {v6} dev {dev} nodad", ns.name));
            ip(format!("-n {} link set {dev} up", ns.name));
        }
        for (ns, dev, addrs, mac) in [
            (c, HOST_IF, ["198.18.0.1", "2001:db8:1::1"], MAC_GW_CLIENT),
            (g, GW_CLIENT_IF, ["198.18.0.2", "2001:db8:1::2"], MAC_CLIENT),
            (g, GW_SERVER_IF, ["198.19.0.2", "2001:db8:2::2"], MAC_SERVER),
            (s, HOST_IF, ["198.19.0.1", "2001:db8:2::1"], MAC_GW_SERVER),
        ] {
            for addr in addrs {
                ip(format!(
                    "-n {} neigh replace {addr} lladdr {mac} dev {dev} nud permanent",
                    ns.name
                ));
            }
        }
        ip(format!("-n {} route add default via {GW_CLIENT4}", c.name));
        ip(format!(
            "-n {} -6 route add default via 2001:db8:1::1",
            c.name
        ));
        ip(format!("-n {} route add default via {GW_SERVER4}", s.name));
        ip(format!(
            "-n {} -6 route add default via 2001:db8:2::1",
            s.name
        ));
        Some(lab)
    }

    /// The administrator's rule: every forwarded packet to NFQUEUE (IPv4 and IPv6).
    /// `queues` is `"0"` or `"0:1"`.
    pub fn add_nfqueue_rule(&self, queues: &str, bypass: bool) {
        let target = if queues.contains(':') {
            format!("NFQUEUE --queue-balance {queues}")
        } else {
            format!("NFQUEUE --queue-num {queues}")
        };
        let bypass = if bypass { " --queue-bypass" } else { "" };
        for v6 in [false, true] {
            self.gw
                .iptables(v6, &format!("-A FORWARD -j {target}{bypass}"));
        }
    }

    /// The end hosts drop the crafted-packet port ranges at INPUT, so that
    /// their kernels never answer crafted packets (they are still seen by
    /// AF_PACKET sniffers, which read before netfilter).
    pub fn drop_crafted_at_hosts(&self) {
        let (cl, ch) = CRAFTED_CLIENT_PORTS;
        let (sl, shi) = CRAFTED_SERVER_PORTS;
        for v6 in [false, true] {
            self.client
                .iptables(v6, &format!("-A INPUT -p tcp --dport {cl}:{ch} -j DROP"));
            self.server
                .iptables(v6, &format!("-A INPUT -p tcp --dport {sl}:{shi} -j DROP"));
        }
    }

    /// Writes a rules file in the lab's temporary directory.
    pub fn write_rules(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).expect("writing rules");
        path
    }

    /// Starts `conntrackd ARGS` in the gateway namespace and waits until it
    /// says it started.
    pub fn start_daemon(&self, args: &[&str]) -> Daemon {
        let d = Daemon::spawn(&self.gw, args);
        // Generous: under a loaded machine iptables alone can take seconds.
        d.wait_log("conntrackd started", Duration::from_secs(20));
        d
    }
}

impl Lab {
    /// Neighbour tables, links and the gateway's rule counters, for a failing
    /// test. Never panics (it runs while a test unwinds).
    pub fn diagnostics(&self) -> String {
        let run = |ns: &Ns, args: &[&str]| -> String {
            let o = Command::new("ip")
                .args(["netns", "exec", &ns.name])
                .args(args)
                .stdin(Stdio::null())
                .output();
            match o {
                Ok(o) => format!(
                    "--- {} {}\n{}",
                    ns.name,
                    args.join(" "),
                    String::from_utf8_lossy(&o.stdout)
                ),
                Err(e) => format!("--- {} {}: {e}\n", ns.name, args.join(" ")),
            }
        };
        let mut out = String::new();
        for ns in [&self.client, &self.gw, &self.server] {
            out.push_str(&run(ns, &["ip", "neigh", "show"]));
            out.push_str(&run(ns, &["ip", "-6", "neigh", "show"]));
            out.push_str(&run(ns, &["ip", "-s", "link", "show"]));
        }
        out.push_str(&run(&self.gw, &["iptables-save", "-c"]));
        out.push_str(&run(&self.gw, &["ip6tables-save", "-c"]));
        out
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- lab {} ----\n{}", self.id, self.diagnostics());
        }
        for ns in [&self.client, &self.gw, &self.server] {
            // Processes still running in a namespace are ours (daemons).
            if let Ok(out) = Command::new("ip")
                .args(["netns", "pids", &ns.name])
                .output()
            {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
            let _ = Command::new("ip")
                .args(["netns", "del", &ns.name])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A running conntrackd; its stderr is collected line by line.
pub struct Daemon {
    child: Child,
    pub pid: i32,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl Daemon {
    /// Starts `conntrackd ARGS` in `ns` without waiting for it.
    pub fn spawn(ns: &Ns, args: &[&str]) -> Daemon {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.name, env!("CARGO_BIN_EXE_conntrackd")])
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
            // SAFETY: our own child's pid, not yet reaped.
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

// ---- traffic ----

/// A TCP echo server in a namespace: each connection's bytes are sent back
/// until the peer shuts down its side. Stops when dropped.
pub struct TcpEcho {
    stop: Arc<AtomicBool>,
    pub addr: SocketAddr,
    handle: Option<JoinHandle<()>>,
}

impl TcpEcho {
    pub fn start(ns: &Ns, addr: SocketAddr) -> TcpEcho {
        let listener = ns.enter(move || TcpListener::bind(addr).expect("bind echo server"));
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((conn, _)) => {
                        std::thread::spawn(move || echo(conn));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        TcpEcho {
            stop,
            addr,
            handle: Some(handle),
        }
    }
}

fn echo(mut conn: TcpStream) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(15)));
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match conn.read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if conn.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = conn.shutdown(Shutdown::Write);
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Connects from inside `ns`.
pub fn connect(ns: &Ns, to: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let s = ns.enter(move || TcpStream::connect_timeout(&to, timeout))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

fn pattern(i: usize, salt: u8) -> u8 {
    ((i * 31 + 7) as u8) ^ salt
}

/// Sends `n` bytes through an echo connection and checks they all come back
/// (both directions at once: a writer thread and this reader).
pub fn exchange(stream: &TcpStream, n: usize, salt: u8) -> std::io::Result<()> {
    let mut w = stream.try_clone()?;
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let chunk: Vec<u8> = (0..n).map(|i| pattern(i, salt)).collect();
        for part in chunk.chunks(32 * 1024) {
            w.write_all(part)?;
        }
        Ok(())
    });
    let mut r = stream.try_clone()?;
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    // Generous for the sizes used (a few MB take well under a second), but
    // bounded: a connection limping on retransmissions fails the test.
    let deadline = Instant::now() + Duration::from_secs(15);
    while got < n {
        if Instant::now() > deadline {
            let _ = stream.shutdown(Shutdown::Both);
            let _ = writer.join();
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("only {got} of {n} bytes came back within 15 s"),
            ));
        }
        let k = match r.read(&mut buf) {
            Ok(k) => k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if k == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("connection closed after {got} of {n} bytes"),
            ));
        }
        for (j, b) in buf[..k].iter().enumerate() {
            if *b != pattern(got + j, salt) {
                return Err(std::io::Error::other(format!("byte {} differs", got + j)));
            }
        }
        got += k;
    }
    writer.join().expect("writer thread")?;
    Ok(())
}

/// Closes an echo connection cleanly: FIN from us, then the peer's FIN.
pub fn close(stream: TcpStream) -> std::io::Result<()> {
    stream.shutdown(Shutdown::Write)?;
    let mut rest = Vec::new();
    (&stream).read_to_end(&mut rest)?;
    if !rest.is_empty() {
        return Err(std::io::Error::other("unexpected data before EOF"));
    }
    Ok(())
}

/// Ends a connection with a RST instead of a FIN (SO_LINGER 0, then close).
pub fn abort(stream: TcpStream) {
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER");
}

/// Connect, exchange `n` bytes both ways, close: the whole life of a connection.
pub fn tcp_session(ns: &Ns, to: SocketAddr, n: usize) -> std::io::Result<()> {
    // 5 s: room for two lost SYNs (retransmitted after 1 and 3 s).
    let s = connect(ns, to, Duration::from_secs(5))?;
    exchange(&s, n, 0x5a)?;
    close(s)
}

/// A UDP echo server in a namespace. Stops when dropped.
pub struct UdpEcho {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl UdpEcho {
    pub fn start(ns: &Ns, addr: SocketAddr) -> UdpEcho {
        let sock = ns.enter(move || UdpSocket::bind(addr).expect("bind udp echo"));
        sock.set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(120);
            let mut buf = [0u8; 2048];
            while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        });
        UdpEcho {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Sends a datagram from `ns` and waits for its echo (a few tries).
pub fn udp_roundtrip(ns: &Ns, to: SocketAddr, timeout: Duration) -> bool {
    let any: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let sock = ns.enter(move || UdpSocket::bind(any).expect("bind udp"));
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + timeout;
    let msg = b"conntrackd udp probe";
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        let _ = sock.send_to(msg, to);
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            if from == to && &buf[..n] == msg {
                return true;
            }
        }
    }
    false
}

/// Sends datagrams from a connected UDP socket in `ns` to a closed port until
/// the ICMP port unreachable comes back (as ECONNREFUSED).
pub fn udp_refused(ns: &Ns, to: SocketAddr, timeout: Duration) -> bool {
    let sock = ns.enter(move || {
        let any: SocketAddr = if to.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let s = UdpSocket::bind(any).expect("bind udp");
        s.connect(to).expect("connect udp");
        s
    });
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        if let Err(e) = sock.send(b"anyone?") {
            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        if let Err(e) = sock.recv(&mut buf) {
            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
    }
    false
}

/// ICMP (v4 or v6) echo from `ns` through a ping socket; true when answered.
pub fn ping(ns: &Ns, to: IpAddr, timeout: Duration) -> bool {
    let v6 = to.is_ipv6();
    let fd = ns.enter(move || {
        let (domain, proto) = if v6 {
            (libc::AF_INET6, libc::IPPROTO_ICMPV6)
        } else {
            (libc::AF_INET, libc::IPPROTO_ICMP)
        };
        // SAFETY: plain socket(2).
        let fd = unsafe { libc::socket(domain, libc::SOCK_DGRAM, proto) };
        assert!(fd >= 0, "ping socket: {}", std::io::Error::last_os_error());
        // SAFETY: a new fd we own.
        unsafe { OwnedFd::from_raw_fd(fd) }
    });
    set_rcvtimeo(&fd, Duration::from_millis(200));
    let deadline = Instant::now() + timeout;
    let mut seq = 0u16;
    while Instant::now() < deadline {
        seq += 1;
        // type, code, checksum (kernel), id (kernel), seq, payload
        let mut msg = vec![if v6 { 128 } else { 8 }, 0, 0, 0, 0, 0];
        msg.extend_from_slice(&seq.to_be_bytes());
        msg.extend_from_slice(b"conntrackd ping");
        send_to(&fd, &msg, to);
        let mut buf = [0u8; 256];
        // SAFETY: buf is valid for its length.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n >= 8 && buf[0] == if v6 { 129 } else { 0 } {
            return true;
        }
    }
    false
}

pub fn set_rcvtimeo(fd: &OwnedFd, d: Duration) {
    socket2::SockRef::from(fd)
        .set_read_timeout(Some(d))
        .expect("SO_RCVTIMEO");
}

fn send_to(fd: &OwnedFd, bytes: &[u8], to: IpAddr) {
    let r = match to {
        IpAddr::V4(a) => {
            let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sa.sin_family = libc::AF_INET as libc::sa_family_t;
            sa.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
            // SAFETY: sa is a valid sockaddr_in.
            unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    0,
                    &sa as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
        }
        IpAddr::V6(a) => {
            let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sa.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sa.sin6_addr.s6_addr = a.octets();
            // SAFETY: sa is a valid sockaddr_in6.
            unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    bytes.as_ptr().cast(),
                    bytes.len(),
                    0,
                    &sa as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    };
    assert!(
        r == bytes.len() as isize,
        "sendto {to}: {}",
        std::io::Error::last_os_error()
    );
}

/// Sends whole IP packets (header included) from a namespace.
pub struct RawSender {
    v4: OwnedFd,
    v6: OwnedFd,
}

impl RawSender {
    pub fn new(ns: &Ns) -> RawSender {
        ns.enter(|| {
            // IPPROTO_RAW implies IP_HDRINCL (and IPV6_HDRINCL for AF_INET6).
            let open = |domain| {
                // SAFETY: plain socket(2).
                let fd = unsafe { libc::socket(domain, libc::SOCK_RAW, libc::IPPROTO_RAW) };
                assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
                // SAFETY: a new fd we own.
                unsafe { OwnedFd::from_raw_fd(fd) }
            };
            RawSender {
                v4: open(libc::AF_INET),
                v6: open(libc::AF_INET6),
            }
        })
    }

    /// Sends `packet` (an IP packet as built by `conntrackd::wire::build`).
    pub fn send(&self, packet: &[u8]) {
        let summary = conntrackd::wire::lax::headers(packet);
        let dst = summary.dst.expect("packet with a destination");
        match dst {
            IpAddr::V4(_) => send_to(&self.v4, packet, dst),
            IpAddr::V6(_) => send_to(&self.v6, packet, dst),
        }
    }
}

/// Reads every IP packet arriving on an interface (AF_PACKET, before netfilter).
pub struct Sniffer {
    fd: OwnedFd,
    seen: Mutex<Vec<Vec<u8>>>,
}

impl Sniffer {
    pub fn new(ns: &Ns, ifname: &str) -> Sniffer {
        let ifname = CString::new(ifname).unwrap();
        let fd = ns.enter(move || {
            let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
            // SAFETY: plain socket(2); SOCK_DGRAM strips the link header.
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_DGRAM, proto) };
            assert!(
                fd >= 0,
                "packet socket: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: a new fd we own.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: a NUL-terminated name.
            let index = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
            assert!(index != 0, "no interface {ifname:?}");
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto as u16;
            sll.sll_ifindex = index as i32;
            // SAFETY: sll is a valid sockaddr_ll.
            let r = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    &sll as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
                )
            };
            assert_eq!(
                r,
                0,
                "bind packet socket: {}",
                std::io::Error::last_os_error()
            );
            fd
        });
        set_rcvtimeo(&fd, Duration::from_millis(20));
        Sniffer {
            fd,
            seen: Mutex::new(Vec::new()),
        }
    }

    /// Reads what arrives (incoming packets only) into the seen list until
    /// nothing more is waiting, `until` passes, or a packet matches `pred`.
    fn poll(&self, until: Instant, pred: &dyn Fn(&[u8]) -> bool) -> bool {
        let mut buf = vec![0u8; 65536];
        loop {
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: buffers valid for their lengths.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    &mut sll as *mut _ as *mut libc::sockaddr,
                    &mut len,
                )
            };
            if n > 0 && sll.sll_pkttype != libc::PACKET_OUTGOING {
                let packet = buf[..n as usize].to_vec();
                let matched = pred(&packet);
                self.seen.lock().unwrap().push(packet);
                if matched {
                    return true;
                }
            }
            if n <= 0 || Instant::now() >= until {
                return false;
            }
        }
    }

    /// Waits until a packet matching `pred` arrives (or was already seen).
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&[u8]) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        if self.seen.lock().unwrap().iter().any(|p| pred(p)) {
            return true;
        }
        loop {
            if self.poll(deadline, &pred) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
        }
    }

    /// Whether any packet seen so far matches `pred` (reads what is waiting first).
    pub fn saw(&self, pred: impl Fn(&[u8]) -> bool) -> bool {
        self.poll(Instant::now() + Duration::from_millis(100), &|_| false);
        self.seen.lock().unwrap().iter().any(|p| pred(p))
    }
}

/// Writes a file atomically enough for a reload test (rename over).
pub fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
