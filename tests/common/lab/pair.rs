//! The failover lab: two gateways, A and B, between the client and the
//! server, sharing virtual addresses by VRRP (keepalived) and joined by a
//! sync link that carries a two-server NATS cluster.
//!
//! ```text
//!                         switch namespace
//!   client eth0 ---- c0 [bridge lanc] ca ---- cli  gateway A  srv ---- sa [bridge lans] s0 ---- eth0 server
//!                                     cb ---- cli  gateway B  srv ---- sb
//!                                        gateway A sync ---- sync gateway B
//!
//!   client LAN 198.18.0.0/24, 2001:db8:1::/64: client .2 (::2), A .11 (::11), B .12 (::12), VIP .1 (::1)
//!   server LAN 198.19.0.0/24, 2001:db8:2::/64: server .2 (::2), A .11 (::11), B .12 (::12), VIP .1 (::1)
//!   sync link  198.18.255.0/30, 2001:db8:ff::/64: A .1 (::1), B .2 (::2)
//! ```
//!
//! The two LAN segments are Linux bridges in a namespace of their own, the
//! switch: the client and the server keep a single `eth0` as in the
//! one-gateway lab ([`super::Lab`]), the gateways keep the interface names
//! `cli` and `srv` (what rules' `in_iface`/`out_iface` see), and a gateway's
//! failure ([`Pair::fail`]: its own ends of the LAN veths down) takes the
//! carrier off its bridge ports as a dead box or a pulled cable would. The
//! bridges snoop no multicast (VRRP adverts, neighbour discovery and ARP
//! reach every port) and run no STP (a port forwards as soon as it is up).
//! The client and the server route by default via the virtual addresses,
//! resolved by ARP and neighbour discovery (no static entries: the owner of
//! a virtual address changes). Forwarding is on in both gateways. No
//! namespace accepts router advertisements or runs duplicate address
//! detection; the switch has no IPv6 at all. MAC addresses are fixed
//! (`02:c7:d0:00:LAN:HOST`: A's `cli` is 02:c7:d0:00:01:11, B's `srv`
//! 02:c7:d0:00:02:12, the client 02:c7:d0:00:01:02), so that neighbour
//! tables and the bridges' forwarding databases read at a glance.
//!
//! Failover ([`Failover`]):
//! - `Keepalived` (the default): keepalived 2.2.7 in each gateway
//!   (`--dont-fork --vrrp`, its own pid files and config in the lab's
//!   directory, logging to a file), a sync group of two VRRPv3 instances,
//!   one per LAN (`cli`: VRID 51, `srv`: VRID 52), each with the IPv4 virtual
//!   address in `virtual_ipaddress` and the IPv6 one in
//!   `virtual_ipaddress_excluded` (an instance advertises one address
//!   family; excluded addresses move with it but are not advertised, so no
//!   second VRRP instance is needed for IPv6). A has priority 200, B 100,
//!   both start as BACKUP and preempt (the default): A takes the addresses
//!   back when it recovers. Adverts every [`ADVERT_INT`] s: B takes over
//!   when it has missed A's adverts for 0.72 s (three intervals and the
//!   skew of priority 100), 0.6 to 0.7 s after A's links went down in the
//!   lab's runs, and A takes the addresses back about as long after its
//!   links come up. The new master sends gratuitous ARPs and unsolicited
//!   neighbour advertisements at once and again after 1 s
//!   (`vrrp_garp_master_delay`). keepalived works in network namespaces as
//!   it is (`ip netns exec`); several instances on one machine need only
//!   their own pid files (`--pid`, `--vrrp_pid`).
//! - `Manual`: no keepalived; the lab moves the addresses itself
//!   ([`Pair::move_vips`]: `ip addr del` on one side, `ip addr add` on the
//!   other, and the client's and server's neighbour entries for the virtual
//!   addresses set to the new owner's MAC, as a gratuitous ARP would). `fail`
//!   and `recover` do the same moves keepalived would (to B when A fails,
//!   back to A, which preempts, when A recovers).
//!
//! NATS ([`PairConfig::nats`]): `nats-server` in each gateway, clients on
//! every address of the gateway (127.0.0.1 for the gateway's own daemon, the
//! sync address for the other gateway) with user and password
//! ([`NATS_USER`], [`NATS_PASSWORD`]), the cluster and the monitoring port on
//! the sync address, one route to the other server with the routes' own
//! password. [`Pair::start_nats`] and [`Pair::stop_nats`] make an outage;
//! [`Pair::wait_nats_cluster`] waits until both servers list their route
//! (monitoring `/routez`).
//!
//! Like [`super::Lab`]: namespace names of their own (pid and a counter),
//! everything removed on drop (keepalived and nats-server stopped, whatever
//! else runs in the namespaces killed, namespaces deleted), every wait with
//! a timeout.

use super::command::sh;
use super::daemon::Daemon;
use super::nats::{self, NatsClient, NATS_MONITOR_PORT, NATS_PASSWORD, NATS_PORT, NATS_USER};
use super::ns::Ns;
use super::process::Background;
use super::{skip_without, COUNTER, GW_CLIENT_IF, GW_SERVER_IF, HOST_IF};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The client side's virtual addresses (the client's default gateways).
pub const VIP_CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const VIP_CLIENT6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 1);
/// The server side's virtual addresses (the server's default gateways).
pub const VIP_SERVER4: Ipv4Addr = Ipv4Addr::new(198, 19, 0, 1);
pub const VIP_SERVER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 1);
/// The gateways' interface on the sync link.
pub const GW_SYNC_IF: &str = "sync";
/// keepalived's `advert_int` (VRRPv3 counts in centiseconds). 0.1 works as
/// well; 0.2 leaves a loaded machine room for a late advert without a
/// spurious takeover, and B still takes over within a second.
pub const ADVERT_INT: &str = "0.2";

/// The four virtual addresses with their prefix and gateway interface.
const VIPS: [(IpAddr, u8, &str); 4] = [
    (IpAddr::V4(VIP_CLIENT4), 24, GW_CLIENT_IF),
    (IpAddr::V6(VIP_CLIENT6), 64, GW_CLIENT_IF),
    (IpAddr::V4(VIP_SERVER4), 24, GW_SERVER_IF),
    (IpAddr::V6(VIP_SERVER6), 64, GW_SERVER_IF),
];

const MAC_CLIENT: &str = "02:c7:d0:00:01:02";
const MAC_SERVER: &str = "02:c7:d0:00:02:02";

/// One of the two gateways.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

impl Side {
    pub const BOTH: [Side; 2] = [Side::A, Side::B];

    /// The other gateway.
    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }

    fn index(self) -> usize {
        match self {
            Side::A => 0,
            Side::B => 1,
        }
    }

    /// `a` or `b`: in namespace and file names.
    pub fn letter(self) -> char {
        match self {
            Side::A => 'a',
            Side::B => 'b',
        }
    }

    /// Last byte of the gateway's own LAN addresses (.11, .12).
    fn host(self) -> u8 {
        11 + self.index() as u8
    }

    /// The gateway's own address on the client LAN (198.18.0.11 or .12).
    pub fn client_lan4(self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 0, self.host())
    }

    /// The gateway's own address on the client LAN (2001:db8:1::11 or ::12).
    pub fn client_lan6(self) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 0x11 + self.index() as u16)
    }

    /// The gateway's own address on the server LAN (198.19.0.11 or .12).
    pub fn server_lan4(self) -> Ipv4Addr {
        Ipv4Addr::new(198, 19, 0, self.host())
    }

    /// The gateway's own address on the server LAN (2001:db8:2::11 or ::12).
    pub fn server_lan6(self) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 0x11 + self.index() as u16)
    }

    /// The gateway's address on the sync link (198.18.255.1 or .2).
    pub fn sync4(self) -> Ipv4Addr {
        Ipv4Addr::new(198, 18, 255, 1 + self.index() as u8)
    }

    /// The gateway's address on the sync link (2001:db8:ff::1 or ::2).
    pub fn sync6(self) -> Ipv6Addr {
        Ipv6Addr::new(0x2001, 0xdb8, 0xff, 0, 0, 0, 0, 1 + self.index() as u16)
    }

    /// MAC address of the gateway's interface on a link (fixed, for the
    /// neighbour entries of the manual failover and for diagnostics).
    pub fn mac(self, link: Link) -> String {
        let lan = match link {
            Link::Client => 0x01,
            Link::Server => 0x02,
            Link::Sync => 0xff,
        };
        let host = match link {
            Link::Sync => 1 + self.index() as u8,
            _ => self.host(),
        };
        // The host number in decimal digits: A's `cli` is 02:c7:d0:00:01:11.
        format!("02:c7:d0:00:{lan:02x}:{host:02}")
    }
}

/// A gateway's links.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// `cli`, to the client LAN.
    Client,
    /// `srv`, to the server LAN.
    Server,
    /// `sync`, to the other gateway.
    Sync,
}

impl Link {
    /// The interface's name in the gateway.
    pub fn name(self) -> &'static str {
        match self {
            Link::Client => GW_CLIENT_IF,
            Link::Server => GW_SERVER_IF,
            Link::Sync => GW_SYNC_IF,
        }
    }
}

/// Who moves the virtual addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failover {
    /// keepalived (VRRP) in both gateways.
    Keepalived,
    /// The lab itself ([`Pair::move_vips`], [`Pair::fail`], [`Pair::recover`]).
    Manual,
}

/// What [`Pair::with`] starts.
#[derive(Clone, Copy, Debug)]
pub struct PairConfig {
    pub failover: Failover,
    /// nats-server in both gateways, clustered over the sync link.
    pub nats: bool,
    /// keepalived tracks each gateway's conntrackd (`conntrackd status`, as
    /// the README's example does): a gateway whose conntrackd is not running
    /// or does not hold the table yet gives up or never takes the virtual
    /// addresses. [`Pair::with`] then returns without waiting for a master:
    /// none can be one before a conntrackd runs.
    pub track_conntrackd: bool,
}

impl Default for PairConfig {
    fn default() -> PairConfig {
        PairConfig {
            failover: Failover::Keepalived,
            nats: true,
            track_conntrackd: false,
        }
    }
}

/// client -- (A | B) -- server, see the module doc.
pub struct Pair {
    pub id: String,
    pub client: Ns,
    pub server: Ns,
    pub gw_a: Ns,
    pub gw_b: Ns,
    /// The two bridges (LAN segments).
    pub switch: Ns,
    pub dir: tempfile::TempDir,
    pub config: PairConfig,
    keepalived: Mutex<[Option<Background>; 2]>,
    nats: Mutex<[Option<Background>; 2]>,
    /// With [`Failover::Manual`]: who holds the virtual addresses.
    manual_master: Mutex<Option<Side>>,
}

/// How long the lab waits for keepalived to elect A, and for NATS to cluster.
const START_TIMEOUT: Duration = Duration::from_secs(20);

impl Pair {
    /// The whole lab: keepalived and NATS, A the master, the NATS cluster
    /// formed; `None` when the test must be skipped (see [`super::skip`]).
    pub fn new(test: &str) -> Option<Pair> {
        Pair::with(test, PairConfig::default())
    }

    /// The lab with `config`; `None` when the test must be skipped. Returns
    /// once A holds the virtual addresses (and the NATS cluster is formed).
    pub fn with(test: &str, config: PairConfig) -> Option<Pair> {
        let mut tools = Vec::new();
        if config.failover == Failover::Keepalived {
            tools.push(("keepalived", "--version", "keepalived"));
        }
        if config.nats {
            tools.push(("nats-server", "--version", "nats-server"));
        }
        if skip_without(test, &tools) {
            return None;
        }
        let id = format!(
            "{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        );
        let ns = |x: &str| Ns {
            name: format!("ctd-{id}-{x}"),
        };
        let pair = Pair {
            client: ns("c"),
            server: ns("s"),
            gw_a: ns("a"),
            gw_b: ns("b"),
            switch: ns("w"),
            id: id.clone(),
            dir: tempfile::tempdir().expect("tempdir"),
            config,
            keepalived: Mutex::new([None, None]),
            nats: Mutex::new([None, None]),
            manual_master: Mutex::new(None),
        };
        // From here on, Drop removes whatever was created.
        pair.build();
        match config.failover {
            Failover::Keepalived => {
                for side in Side::BOTH {
                    pair.start_keepalived(side);
                }
                if !config.track_conntrackd {
                    pair.wait_master(Side::A, START_TIMEOUT);
                }
            }
            Failover::Manual => pair.move_vips(Side::A),
        }
        if config.nats {
            for side in Side::BOTH {
                pair.start_nats(side);
            }
            pair.wait_nats_cluster(START_TIMEOUT);
        }
        Some(pair)
    }

    fn namespaces(&self) -> [&Ns; 5] {
        [
            &self.client,
            &self.server,
            &self.gw_a,
            &self.gw_b,
            &self.switch,
        ]
    }

    fn build(&self) {
        for ns in self.namespaces() {
            sh(&["ip", "netns", "add", &ns.name]);
        }
        let (c, s, w) = (&self.client, &self.server, &self.switch);
        let ip = |args: String| {
            sh(&std::iter::once("ip")
                .chain(args.split_whitespace())
                .collect::<Vec<_>>())
        };
        // Before any interface exists: the "default" sysctls are what new
        // interfaces get.
        for ns in self.namespaces() {
            for conf in ["all", "default"] {
                ns.sysctl(&format!("net.ipv6.conf.{conf}.accept_ra"), "0");
                ns.sysctl(&format!("net.ipv6.conf.{conf}.accept_dad"), "0");
            }
            ip(format!("-n {} link set lo up", ns.name));
        }
        w.sysctl("net.ipv6.conf.default.disable_ipv6", "1");
        w.sysctl("net.ipv6.conf.all.disable_ipv6", "1");
        for br in ["lanc", "lans"] {
            ip(format!(
                "-n {} link add {br} type bridge stp_state 0 mcast_snooping 0",
                w.name
            ));
        }
        ip(format!(
            "-n {} link add {HOST_IF} address {MAC_CLIENT} type veth peer name c0 netns {}",
            c.name, w.name
        ));
        ip(format!(
            "-n {} link add {HOST_IF} address {MAC_SERVER} type veth peer name s0 netns {}",
            s.name, w.name
        ));
        for side in Side::BOTH {
            let g = self.gw(side);
            let l = side.letter();
            for (link, port) in [(Link::Client, 'c'), (Link::Server, 's')] {
                ip(format!(
                    "-n {} link add {} address {} type veth peer name {port}{l} netns {}",
                    g.name,
                    link.name(),
                    side.mac(link),
                    w.name
                ));
            }
        }
        ip(format!(
            "-n {} link add {GW_SYNC_IF} address {} type veth peer name {GW_SYNC_IF} address {} netns {}",
            self.gw_a.name,
            Side::A.mac(Link::Sync),
            Side::B.mac(Link::Sync),
            self.gw_b.name
        ));
        for (br, ports) in [("lanc", ["c0", "ca", "cb"]), ("lans", ["s0", "sa", "sb"])] {
            for port in ports {
                ip(format!("-n {} link set {port} master {br} up", w.name));
            }
            ip(format!("-n {} link set {br} up", w.name));
        }
        for ns in [c, s] {
            // Ping sockets for root, ephemeral ports as in the one-gateway lab.
            ns.sysctl("net.ipv4.ping_group_range", "0 2147483647");
            ns.sysctl("net.ipv4.ip_local_port_range", "50000 60999");
        }
        let mut addrs = vec![
            (
                c,
                HOST_IF,
                "198.18.0.2/24".to_string(),
                "2001:db8:1::2/64".to_string(),
            ),
            (
                s,
                HOST_IF,
                "198.19.0.2/24".to_string(),
                "2001:db8:2::2/64".to_string(),
            ),
        ];
        for side in Side::BOTH {
            let g = self.gw(side);
            g.sysctl("net.ipv4.ip_forward", "1");
            g.sysctl("net.ipv6.conf.all.forwarding", "1");
            addrs.extend([
                (
                    g,
                    GW_CLIENT_IF,
                    format!("{}/24", side.client_lan4()),
                    format!("{}/64", side.client_lan6()),
                ),
                (
                    g,
                    GW_SERVER_IF,
                    format!("{}/24", side.server_lan4()),
                    format!("{}/64", side.server_lan6()),
                ),
                (
                    g,
                    GW_SYNC_IF,
                    format!("{}/30", side.sync4()),
                    format!("{}/64", side.sync6()),
                ),
            ]);
        }
        for (ns, dev, v4, v6) in addrs {
            ip(format!("-n {} addr add {v4} dev {dev}", ns.name));
            ip(format!("-n {} addr add {v6} dev {dev} nodad", ns.name));
            ip(format!("-n {} link set {dev} up", ns.name));
        }
        ip(format!("-n {} route add default via {VIP_CLIENT4}", c.name));
        ip(format!(
            "-n {} -6 route add default via {VIP_CLIENT6}",
            c.name
        ));
        ip(format!("-n {} route add default via {VIP_SERVER4}", s.name));
        ip(format!(
            "-n {} -6 route add default via {VIP_SERVER6}",
            s.name
        ));
    }

    /// The gateway's namespace.
    pub fn gw(&self, side: Side) -> &Ns {
        match side {
            Side::A => &self.gw_a,
            Side::B => &self.gw_b,
        }
    }

    /// Writes a file in the lab's temporary directory.
    pub fn write_file(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        path
    }

    // ---- keepalived -----------------------------------------------------

    /// keepalived's configuration for one gateway.
    pub fn keepalived_conf(&self, side: Side) -> String {
        let priority = match side {
            Side::A => 200,
            Side::B => 100,
        };
        let (script, track) = if self.config.track_conntrackd {
            let socket = self.control_socket(side);
            (
                format!(
                    r#"
vrrp_script conntrackd {{
    script "{bin} status --socket {socket}"
    interval 1
    timeout 1
    fall 1
    rise 1
}}
"#,
                    bin = env!("CARGO_BIN_EXE_conntrackd"),
                    socket = socket.display(),
                ),
                "    track_script {\n        conntrackd\n    }\n",
            )
        } else {
            (String::new(), "")
        };
        let instance = |name: &str, dev: &str, vrid: u8, v4: Ipv4Addr, v6: Ipv6Addr| {
            format!(
                r#"
vrrp_instance {name} {{
    state BACKUP
    interface {dev}
    virtual_router_id {vrid}
    priority {priority}
    advert_int {ADVERT_INT}
    virtual_ipaddress {{
        {v4}/24 dev {dev}
    }}
    virtual_ipaddress_excluded {{
        {v6}/64 dev {dev}
    }}
{track}}}
"#
            )
        };
        format!(
            r#"global_defs {{
    router_id gw-{letter}
    vrrp_version 3
    vrrp_garp_master_delay 1
    script_user root
    enable_script_security
}}
{script}
vrrp_sync_group LANS {{
    group {{
        CLIENT_LAN
        SERVER_LAN
    }}
}}
{client}{server}"#,
            letter = side.letter(),
            client = instance("CLIENT_LAN", GW_CLIENT_IF, 51, VIP_CLIENT4, VIP_CLIENT6),
            server = instance("SERVER_LAN", GW_SERVER_IF, 52, VIP_SERVER4, VIP_SERVER6),
        )
    }

    fn start_keepalived(&self, side: Side) {
        self.start_keepalived_with(side, &self.keepalived_conf(side));
    }

    /// Stops the gateway's keepalived (SIGTERM: it gives up its addresses)
    /// and starts it again with `conf` instead of [`Pair::keepalived_conf`]
    /// (notify scripts, say); the lab's own log and pid files. Does not wait
    /// for a master.
    pub fn restart_keepalived(&self, side: Side, conf: &str) {
        let old = self.keepalived.lock().unwrap()[side.index()].take();
        if let Some(mut p) = old {
            p.stop(Duration::from_secs(5));
        }
        self.start_keepalived_with(side, conf);
    }

    fn start_keepalived_with(&self, side: Side, conf: &str) {
        let l = side.letter();
        let conf = self.write_file(&format!("keepalived-{l}.conf"), conf);
        let file = |name: String| {
            self.dir
                .path()
                .join(name)
                .to_str()
                .expect("a UTF-8 path")
                .to_string()
        };
        let (pid, vrrp_pid) = (
            file(format!("keepalived-{l}.pid")),
            file(format!("keepalived-{l}-vrrp.pid")),
        );
        let conf = conf.to_str().expect("a UTF-8 path");
        let process = Background::spawn(
            self.gw(side),
            &[
                "keepalived",
                "--dont-fork",
                "--vrrp",
                "--log-console",
                "--log-detail",
                "--no-syslog",
                "--use-file",
                conf,
                "--pid",
                &pid,
                "--vrrp_pid",
                &vrrp_pid,
            ],
            &self.dir.path().join(format!("keepalived-{l}.log")),
        );
        self.keepalived.lock().unwrap()[side.index()] = Some(process);
    }

    /// keepalived's log in that gateway (empty without keepalived).
    pub fn keepalived_log(&self, side: Side) -> String {
        std::fs::read(
            self.dir
                .path()
                .join(format!("keepalived-{}.log", side.letter())),
        )
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
    }

    // ---- virtual addresses and failures -------------------------------

    /// The virtual addresses the gateway holds now.
    pub fn vips(&self, side: Side) -> Vec<IpAddr> {
        let out = self.gw(side).sh(&["ip", "-j", "addr", "show"]);
        let ifaces: serde_json::Value = serde_json::from_str(&out).expect("ip -j addr");
        let mut held = Vec::new();
        for (vip, _, dev) in VIPS {
            let on = ifaces.as_array().into_iter().flatten().any(|iface| {
                iface["ifname"] == dev
                    && iface["addr_info"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|a| a["local"].as_str() == Some(&vip.to_string()))
            });
            if on {
                held.push(vip);
            }
        }
        held
    }

    /// The gateway holding all four virtual addresses while the other holds
    /// none; `None` in between (or split).
    pub fn master(&self) -> Option<Side> {
        let (a, b) = (self.vips(Side::A), self.vips(Side::B));
        match (a.len(), b.len()) {
            (4, 0) => Some(Side::A),
            (0, 4) => Some(Side::B),
            _ => None,
        }
    }

    /// Waits until `side` holds the four virtual addresses and the other
    /// none; how long that took. Panics (with the diagnostics) on timeout.
    pub fn wait_master(&self, side: Side, timeout: Duration) -> Duration {
        let start = Instant::now();
        loop {
            if self.master() == Some(side) {
                return start.elapsed();
            }
            if start.elapsed() > timeout {
                panic!(
                    "gateway {side:?} did not take the virtual addresses within {timeout:?} \
                     (A holds {:?}, B {:?})\n{}",
                    self.vips(Side::A),
                    self.vips(Side::B),
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Moves the virtual addresses to `to` by hand ([`Failover::Manual`]
    /// only): removed from the other gateway, added to `to`, and the client's
    /// and server's neighbour entries for them pointed at `to`'s MACs (what
    /// a gratuitous ARP or unsolicited neighbour advert does).
    pub fn move_vips(&self, to: Side) {
        assert_eq!(
            self.config.failover,
            Failover::Manual,
            "keepalived moves the virtual addresses of this lab"
        );
        let from = self.gw(to.other());
        for (vip, prefix, dev) in VIPS {
            // Absent already when it never held them.
            let _ = from.output(&["ip", "addr", "del", &format!("{vip}/{prefix}"), "dev", dev]);
        }
        for (vip, prefix, dev) in VIPS {
            let mut args = vec!["ip", "addr", "replace"];
            let addr = format!("{vip}/{prefix}");
            args.extend([addr.as_str(), "dev", dev]);
            if vip.is_ipv6() {
                args.push("nodad");
            }
            self.gw(to).sh(&args);
        }
        for (host, vip, link) in [
            (&self.client, IpAddr::V4(VIP_CLIENT4), Link::Client),
            (&self.client, IpAddr::V6(VIP_CLIENT6), Link::Client),
            (&self.server, IpAddr::V4(VIP_SERVER4), Link::Server),
            (&self.server, IpAddr::V6(VIP_SERVER6), Link::Server),
        ] {
            host.sh(&[
                "ip",
                "neigh",
                "replace",
                &vip.to_string(),
                "lladdr",
                &to.mac(link),
                "dev",
                HOST_IF,
                "nud",
                "stale",
            ]);
        }
        *self.manual_master.lock().unwrap() = Some(to);
    }

    /// Sets one of the gateway's links up or down (its own end of the veth).
    pub fn set_link(&self, side: Side, link: Link, up: bool) {
        let state = if up { "up" } else { "down" };
        self.gw(side)
            .sh(&["ip", "link", "set", "dev", link.name(), state]);
    }

    /// A gateway's failure: its LAN links go down (the sync link stays up).
    /// keepalived in the other gateway takes the virtual addresses (wait
    /// with [`Pair::wait_master`]); with [`Failover::Manual`] the lab moves
    /// them itself when the failed gateway held them.
    pub fn fail(&self, side: Side) {
        self.set_link(side, Link::Client, false);
        self.set_link(side, Link::Server, false);
        if self.config.failover == Failover::Manual
            && *self.manual_master.lock().unwrap() == Some(side)
        {
            self.move_vips(side.other());
        }
    }

    /// The gateway's LAN links come back. keepalived in A takes the
    /// virtual addresses back (higher priority, preemption); with
    /// [`Failover::Manual`] the lab moves them back to A itself.
    pub fn recover(&self, side: Side) {
        self.set_link(side, Link::Client, true);
        self.set_link(side, Link::Server, true);
        if self.config.failover == Failover::Manual
            && side == Side::A
            && *self.manual_master.lock().unwrap() != Some(Side::A)
        {
            self.move_vips(Side::A);
        }
    }

    /// Packets the gateway forwarded so far (IPv4 ForwDatagrams plus IPv6
    /// OutForwDatagrams, from its /proc/net/snmp and snmp6).
    pub fn forwarded(&self, side: Side) -> u64 {
        let g = self.gw(side);
        let snmp = g.sh(&["cat", "/proc/net/snmp"]);
        let mut ip = snmp.lines().filter(|l| l.starts_with("Ip: "));
        let (names, values) = (
            ip.next().expect("Ip: names"),
            ip.next().expect("Ip: values"),
        );
        let v4: u64 = names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(n, _)| *n == "ForwDatagrams")
            .and_then(|(_, v)| v.parse().ok())
            .expect("ForwDatagrams");
        let snmp6 = g.sh(&["cat", "/proc/net/snmp6"]);
        let v6: u64 = snmp6
            .lines()
            .find_map(|l| l.strip_prefix("Ip6OutForwDatagrams"))
            .and_then(|v| v.trim().parse().ok())
            .expect("Ip6OutForwDatagrams");
        v4 + v6
    }

    // ---- NATS -------------------------------------------------------------

    fn nats_conf_path(&self, side: Side) -> PathBuf {
        self.dir.path().join(format!("nats-{}.conf", side.letter()))
    }

    fn nats_log_path(&self, side: Side) -> PathBuf {
        self.dir.path().join(format!("nats-{}.log", side.letter()))
    }

    /// The gateway's nats-server as seen from inside that gateway, with the
    /// client login: `nats://USER:PASSWORD@127.0.0.1:4222`.
    /// (The same for both gateways: each reaches its own server there.)
    pub fn nats_url(&self, _side: Side) -> String {
        format!("nats://{NATS_USER}:{NATS_PASSWORD}@127.0.0.1:{NATS_PORT}")
    }

    /// The gateway's nats-server on the sync link (reachable from both
    /// gateways): `SYNC_ADDRESS:4222`.
    pub fn nats_addr(&self, side: Side) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(side.sync4()), NATS_PORT)
    }

    /// Starts nats-server in the gateway (its config written to the lab's
    /// directory) and waits until it accepts clients on 127.0.0.1. The
    /// cluster route forms after ([`Pair::wait_nats_cluster`]).
    pub fn start_nats(&self, side: Side) {
        let conf = nats::server_conf(
            &format!("gw-{}", side.letter()),
            side.sync4(),
            side.other().sync4(),
        );
        let path = self.nats_conf_path(side);
        std::fs::write(&path, conf).expect("writing the nats-server config");
        let mut slot = self.nats.lock().unwrap();
        if let Some(p) = slot[side.index()].as_mut() {
            assert!(!p.running(), "nats-server already runs in gateway {side:?}");
        }
        let mut process = Background::spawn(
            self.gw(side),
            &["nats-server", "-c", path.to_str().expect("a UTF-8 path")],
            &self.nats_log_path(side),
        );
        let local = SocketAddr::from(([127, 0, 0, 1], NATS_PORT));
        let start = Instant::now();
        let g = self.gw(side);
        loop {
            let up = g
                .enter(move || {
                    std::net::TcpStream::connect_timeout(&local, Duration::from_millis(200))
                })
                .is_ok();
            if up {
                break;
            }
            if !process.running() || start.elapsed() > START_TIMEOUT {
                panic!(
                    "nats-server in gateway {side:?} does not accept clients \
                     (running: {}); log:\n{}",
                    process.running(),
                    process.log()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        slot[side.index()] = Some(process);
    }

    /// Kills the gateway's nats-server (SIGKILL: an outage, not a shutdown).
    pub fn stop_nats(&self, side: Side) {
        if let Some(mut p) = self.nats.lock().unwrap()[side.index()].take() {
            p.kill();
        }
    }

    /// nats-server's log in that gateway (all its runs).
    pub fn nats_log(&self, side: Side) -> String {
        std::fs::read(self.nats_log_path(side))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// How many cluster routes the gateway's nats-server has (its
    /// monitoring `/routez`); `None` when it does not answer.
    pub fn nats_routes(&self, side: Side) -> Option<u64> {
        let monitor = SocketAddr::new(IpAddr::V4(side.sync4()), NATS_MONITOR_PORT);
        let body =
            nats::http_get(self.gw(side), monitor, "/routez", Duration::from_secs(2)).ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["num_routes"].as_u64()
    }

    /// Waits until the gateway's nats-server reports `n` routes; how long
    /// that took. Panics (with both logs) on timeout.
    pub fn wait_nats_routes(&self, side: Side, n: u64, timeout: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let routes = self.nats_routes(side);
            if routes == Some(n) {
                return start.elapsed();
            }
            if start.elapsed() > timeout {
                panic!(
                    "nats-server in gateway {side:?} has {routes:?} routes, not {n}, \
                     after {timeout:?}\n--- nats A\n{}\n--- nats B\n{}",
                    self.nats_log(Side::A),
                    self.nats_log(Side::B)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until both nats-servers have their route to each other; how
    /// long that took.
    pub fn wait_nats_cluster(&self, timeout: Duration) -> Duration {
        let start = Instant::now();
        self.wait_nats_routes(Side::A, 1, timeout);
        let left = timeout.saturating_sub(start.elapsed());
        self.wait_nats_routes(Side::B, 1, left);
        start.elapsed()
    }

    /// A NATS client logged in (user and password given) to `server`'s
    /// nats-server, from inside gateway `from` (127.0.0.1 when it is the
    /// same gateway, the sync link otherwise).
    pub fn nats_client(
        &self,
        from: Side,
        server: Side,
        user: &str,
        password: &str,
    ) -> std::io::Result<NatsClient> {
        let addr = if from == server {
            SocketAddr::from(([127, 0, 0, 1], NATS_PORT))
        } else {
            self.nats_addr(server)
        };
        NatsClient::connect(self.gw(from), addr, user, password, Duration::from_secs(5))
    }

    // ---- conntrackd ---------------------------------------------------------

    /// The control socket [`Pair::start_daemon`] gives the gateway's daemon.
    pub fn control_socket(&self, side: Side) -> PathBuf {
        self.dir.path().join(format!("control-{}", side.letter()))
    }

    /// What the gateway's daemon sees as /var/lib.
    pub fn var_lib(&self, side: Side) -> PathBuf {
        self.dir.path().join(format!("var-lib-{}", side.letter()))
    }

    /// Starts `conntrackd ARGS` in the gateway (its own control socket and
    /// /var/lib) and waits until it says it started.
    pub fn start_daemon(&self, side: Side, args: &[&str]) -> Daemon {
        let control = self.control_socket(side);
        let mut args: Vec<&str> = args.to_vec();
        if !args.contains(&"--control-socket") {
            args.extend(["--control-socket", control.to_str().expect("a UTF-8 path")]);
        }
        let d = Daemon::spawn(self.gw(side), &args, &self.var_lib(side));
        d.wait_log("conntrackd started", Duration::from_secs(20));
        d
    }

    // ---- diagnostics and teardown ----------------------------------------

    /// Addresses, neighbours, bridge ports, firewall rules and the tails of
    /// keepalived's and nats-server's logs, for a failing test. Never panics.
    pub fn diagnostics(&self) -> String {
        let run = |ns: &Ns, args: &[&str]| -> String {
            let o = Command::new("timeout")
                .args(["5", "ip", "netns", "exec", &ns.name])
                .args(args)
                .stdin(Stdio::null())
                .output();
            match o {
                Ok(o) => format!(
                    "--- {} {}\n{}{}",
                    ns.name,
                    args.join(" "),
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => format!("--- {} {}: {e}\n", ns.name, args.join(" ")),
            }
        };
        let tail = |text: String| -> String {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        let mut out = String::new();
        for ns in [&self.client, &self.server, &self.gw_a, &self.gw_b] {
            out.push_str(&run(ns, &["ip", "-br", "addr"]));
            out.push_str(&run(ns, &["ip", "neigh", "show"]));
        }
        out.push_str(&run(&self.switch, &["bridge", "link"]));
        out.push_str(&run(&self.switch, &["bridge", "fdb", "show", "dynamic"]));
        for side in Side::BOTH {
            out.push_str(&run(self.gw(side), &["iptables-save", "-c"]));
            out.push_str(&run(self.gw(side), &["ip6tables-save", "-c"]));
            let l = side.letter();
            out.push_str(&format!(
                "--- keepalived {l}\n{}\n",
                tail(self.keepalived_log(side))
            ));
            out.push_str(&format!("--- nats {l}\n{}\n", tail(self.nats_log(side))));
        }
        out
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- pair lab {} ----\n{}", self.id, self.diagnostics());
        }
        // keepalived first, gently: its VRRP child goes with it.
        let mut keepalived = self.keepalived.lock().unwrap_or_else(|e| e.into_inner());
        for p in keepalived.iter_mut().flatten() {
            p.signal(libc::SIGTERM);
        }
        for p in keepalived.iter_mut().flatten() {
            if !p.wait_exit(Duration::from_secs(5)) {
                p.signal(libc::SIGKILL);
                p.wait_exit(Duration::from_secs(5));
            }
        }
        let mut nats = self.nats.lock().unwrap_or_else(|e| e.into_inner());
        for p in nats.iter_mut().flatten() {
            p.signal(libc::SIGKILL);
            p.wait_exit(Duration::from_secs(5));
        }
        for ns in self.namespaces() {
            ns.remove();
        }
    }
}
