//! The network lab: three network namespaces joined by veth pairs, a client
//! and a server on either side of a gateway,
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
//!
//! The tests that build a lab need root, so they are `#[ignore]`d with a
//! reason that says so: a plain `cargo test` lists them as ignored instead of
//! passing them. `CI=true cargo test --all-targets -- --include-ignored` runs
//! them; run that way without root, [`Lab::new`] prints why it skips, and
//! under `CI=true` fails instead (see [`skip`]).
//!
//! This module builds the topology ([`Lab`]); the parts live beside it:
//! `command` (commands with timeouts), `ns` (one namespace), `daemon` (the
//! conntrackd process), `echo` (TCP and UDP echo servers), `traffic`
//! (connections, UDP probes and pings from the client side), `raw` (crafted
//! packets sent through raw sockets) and `sniffer` (what arrives on an
//! interface). Everything the tests use is re-exported here.
//!
//! `container` boots a real systemd as the gateway's PID 1
//! (`systemd-nspawn` in the gateway namespace), for the package's tests.
//!
//! `pair` builds the other topology, two gateways in failover ([`Pair`]:
//! keepalived, a NATS cluster over a sync link), with `nats` (nats-server's
//! configuration and a small NATS client) and `process` (programs left
//! running in a namespace) beside it.

mod command;
mod container;
mod control;
mod daemon;
mod echo;
mod nats;
mod ns;
mod pair;
mod process;
mod raw;
mod sniffer;
mod traffic;

// Each test crate uses its own part of the lab: re-exports one leaves unused
// are not a mistake.
#[allow(unused_imports)]
pub use self::{
    command::{run_timeout, sh},
    container::{rootfs, Container, Stall},
    control::{ctl, json_lines, stats},
    daemon::Daemon,
    echo::{echo, TcpEcho, UdpEcho},
    nats::{
        NatsClient, NatsMsg, NATS_CLUSTER, NATS_CLUSTER_PORT, NATS_MONITOR_PORT,
        NATS_NODE_PASSWORD, NATS_PASSWORD, NATS_PORT, NATS_USER,
    },
    ns::{normalize_ruleset, Ns},
    pair::{
        Failover, Link, Pair, PairConfig, Side, ADVERT_INT, GW_SYNC_IF, VIP_CLIENT4, VIP_CLIENT6,
        VIP_SERVER4, VIP_SERVER6,
    },
    process::Background,
    raw::RawSender,
    sniffer::Sniffer,
    traffic::{
        abort, close, connect, exchange, exchange_within, ping, tcp_session, udp_refused,
        udp_roundtrip,
    },
};

use std::io::Write;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

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

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Whether this test must be skipped (not root, no `ip`/`iptables`). Under
/// `CI=true` a skip is a failure: it panics instead.
pub fn skip(test: &str) -> bool {
    skip_without(test, &[])
}

/// [`skip`], and also when one of `tools` is missing: each is the program,
/// an argument that only prints its version (it is run) and the Debian
/// package that has it.
pub fn skip_without(test: &str, tools: &[(&str, &str, &str)]) -> bool {
    // SAFETY: geteuid(2) takes no arguments, touches no memory and cannot fail.
    let euid = unsafe { libc::geteuid() };
    let why = if euid != 0 {
        Some("needs root (network namespaces, NFQUEUE, iptables)".to_string())
    } else {
        [
            ("ip", "-V", "iproute2"),
            ("iptables", "-V", "iptables"),
            ("ip6tables", "-V", "iptables"),
            ("iptables-save", "-V", "iptables"),
            ("iptables-restore", "-V", "iptables"),
        ]
        .iter()
        .chain(tools)
        .find(|(tool, version, _)| {
            Command::new(tool)
                .arg(version)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_err()
        })
        .map(|(tool, _, package)| format!("needs {tool} (apt-get install {package})"))
    };
    match why {
        None => false,
        Some(why) => {
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{test}: {why}; CI=true forbids skipping this test");
            }
            // Straight to stderr, not eprintln!: the test harness captures
            // the latter for passing tests, and a skip must be seen.
            let _ = writeln!(std::io::stderr(), "SKIP {test}: {why}");
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
    /// With `queue_bypass`, the kernel accepts the packets while no program
    /// listens on the queue (`--queue-bypass`, fail-open).
    pub fn add_nfqueue_rule(&self, queues: &str, queue_bypass: bool) {
        let target = if queues.contains(':') {
            format!("NFQUEUE --queue-balance {queues}")
        } else {
            format!("NFQUEUE --queue-num {queues}")
        };
        let bypass = if queue_bypass { " --queue-bypass" } else { "" };
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

    /// The control socket `start_daemon` gives the daemon.
    pub fn control_socket(&self) -> PathBuf {
        self.dir.path().join("control")
    }

    /// What the lab's daemons see as /var/lib (the default state file is
    /// `conntrackd/table` in it).
    pub fn var_lib(&self) -> PathBuf {
        self.dir.path().join("var-lib")
    }

    /// Starts `conntrackd ARGS` in the gateway namespace and waits until it
    /// says it started.
    pub fn start_daemon(&self, args: &[&str]) -> Daemon {
        // Each lab its own control socket (the default is one per machine).
        let control = self.control_socket();
        let mut args: Vec<&str> = args.to_vec();
        if !args.contains(&"--control-socket") {
            args.extend(["--control-socket", control.to_str().expect("a UTF-8 path")]);
        }
        let d = Daemon::spawn(&self.gw, &args, &self.var_lib());
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
            ns.remove();
        }
    }
}

/// Writes a file atomically enough for a reload test (rename over).
pub fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
