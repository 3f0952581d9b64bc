//! The control socket: a unix socket serving one JSON object per line, on a
//! thread of its own, so that no client, slow or hostile, ever stalls a
//! worker. The `conntrackd` binary is its client (`conntrackd stats`,
//! `flows`, `kill`, `flush`, `reload`).
//!
//! One request line (at most [`MAX_REQUEST`] bytes, within [`TIMEOUT`]) gets
//! one reply line: `{"ok":true,...}` or `{"ok":false,"error":"..."}`.
//! Clients are served one at a time; a client that does not finish its
//! request or read its reply within the timeout is dropped. Listings walk a
//! snapshot of the table (taken off the packet path) and never hold a shard
//! while writing to the client.
//!
//! ```text
//! {"cmd":"stats"}
//! {"cmd":"flows","src":"198.18.0.0/15","port":443,"proto":"tcp","state":"ESTABLISHED","limit":100}
//! {"cmd":"kill","dst":"198.19.0.2/32","port":8080}
//! {"cmd":"flush"}
//! {"cmd":"reload"}
//! {"cmd":"cluster"}
//! ```

use super::super::shared::cluster::{ClusterState, Peer, Refusal};
use super::super::shared::hub::Record;
use super::super::shared::{DropRecord, Shared, Stop};
use super::deadline::Deadline;
use super::events::{self, Interest, Subscription};
use crate::conntrack::ConnState;
use crate::engine::{ConnInfo, RuleName};
use crate::policy::{Cidr, Interfaces};
use crate::reason::{Reason, Verdict};
use crate::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::{debug, warn};

/// Longest request line.
pub const MAX_REQUEST: usize = 4096;
/// How long a client may take to send its request, or to read a reply chunk.
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Which connections a listing or a kill selects; every given field must
/// match. The same struct is the client's command-line options and the
/// request's JSON fields.
#[derive(Clone, Debug, Default, Deserialize, serde::Serialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Filter {
    /// The originator's address in this network (CIDR or address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[arg(long, value_name = "CIDR")]
    pub src: Option<String>,
    /// The responder's address in this network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[arg(long, value_name = "CIDR")]
    pub dst: Option<String>,
    /// Either end's port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[arg(long, value_name = "N")]
    pub port: Option<u16>,
    /// tcp, udp, icmp, icmpv6 or a number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[arg(long, value_name = "P")]
    pub proto: Option<String>,
    /// A part of the state as listed: ESTABLISHED, SYN_SENT, TIME_WAIT, UDP_REPLIED...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[arg(long, value_name = "S")]
    pub state: Option<String>,
}

impl Filter {
    /// Selects everything.
    pub fn is_empty(&self) -> bool {
        self.src.is_none()
            && self.dst.is_none()
            && self.port.is_none()
            && self.proto.is_none()
            && self.state.is_none()
    }
}

/// A filter with its values parsed.
struct Selector {
    src: Option<Cidr>,
    dst: Option<Cidr>,
    port: Option<u16>,
    proto: Option<u8>,
    state: Option<String>,
}

impl Selector {
    fn new(f: &Filter) -> Result<Selector, String> {
        let cidr = |s: &Option<String>| -> Result<Option<Cidr>, String> {
            s.as_deref()
                .map(|s| s.parse::<Cidr>().map_err(|e| format!("{s:?}: {e}")))
                .transpose()
        };
        let proto = f
            .proto
            .as_deref()
            .map(|p| p.parse::<crate::policy::ProtoSpec>())
            .transpose()?
            .and_then(|p| p.number());
        Ok(Selector {
            src: cidr(&f.src)?,
            dst: cidr(&f.dst)?,
            port: f.port,
            proto,
            state: f.state.as_ref().map(|s| s.to_ascii_uppercase()),
        })
    }

    /// What a stream of events (`drops_only`: of drops) selected by this wants.
    fn interest(self, drops_only: bool) -> Interest {
        Interest {
            drops_only,
            select: Some(Arc::new(move |r: &Record| self.matches_record(r))),
        }
    }

    fn matches(&self, c: &ConnInfo) -> bool {
        self.matches_parts(
            Some(c.protocol),
            Some(c.originator),
            Some(c.responder),
            c.state,
        )
    }

    /// A drop or an event: addresses and ports as far as they are known (an
    /// unknown one matches no filter on it).
    fn matches_record(&self, r: &Record) -> bool {
        match r {
            Record::Drop(d) => {
                let end = |a: Option<IpAddr>, p: Option<u16>| a.map(|a| (a, p.unwrap_or(0)));
                let h = d.headers();
                let ports = h.ports.unzip();
                self.matches_parts(
                    h.protocol,
                    end(h.src, ports.0),
                    end(h.dst, ports.1),
                    d.state,
                )
            }
            Record::Conn(e) => self.matches_parts(
                Some(e.protocol),
                Some(e.originator),
                Some(e.responder),
                e.state,
            ),
        }
    }

    fn matches_parts(
        &self,
        protocol: Option<u8>,
        src: Option<(IpAddr, u16)>,
        dst: Option<(IpAddr, u16)>,
        state: ConnState,
    ) -> bool {
        let addr = |net: Option<Cidr>, end: Option<(IpAddr, u16)>| {
            net.map_or(true, |n| end.is_some_and(|e| n.contains(e.0)))
        };
        addr(self.src, src)
            && addr(self.dst, dst)
            && self.port.map_or(true, |p| {
                src.is_some_and(|e| e.1 == p) || dst.is_some_and(|e| e.1 == p)
            })
            && self.proto.map_or(true, |p| protocol == Some(p))
            && self
                .state
                .as_ref()
                .map_or(true, |s| state.to_string().contains(s.as_str()))
    }
}

#[derive(Debug, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    Stats,
    Flows {
        #[serde(flatten)]
        filter: Filter,
        #[serde(default)]
        limit: Option<usize>,
        /// Add each direction's window.
        #[serde(default)]
        verbose: bool,
    },
    Kill {
        #[serde(flatten)]
        filter: Filter,
    },
    Flush,
    Reload,
    /// Everything known about one flow: tracked state, recent drops, and
    /// what the policy would say to a new connection.
    Why {
        /// `ADDR[:PORT]` (`[v6]:PORT` for IPv6).
        src: String,
        dst: String,
        #[serde(default)]
        proto: Option<String>,
        /// Interfaces, for rules that name them.
        #[serde(default)]
        in_iface: Option<String>,
        #[serde(default)]
        out_iface: Option<String>,
    },
    /// The recent-drops ring, filtered; `follow` streams new ones.
    Drops {
        #[serde(flatten)]
        filter: Filter,
        #[serde(default)]
        last: Option<usize>,
        #[serde(default)]
        follow: bool,
    },
    /// Streams NEW, UPDATE, DESTROY and DROP events.
    Events {
        #[serde(flatten)]
        filter: Filter,
    },
    /// Health: every worker alive and coming round (and, in a cluster, the
    /// peers' tables copied).
    Status,
    /// The cluster: the connection to NATS, the peers, what was sent,
    /// received, refused, and the last bulk copy.
    Cluster,
}

/// Drops `why` shows, at most.
const WHY_DROPS: usize = 10;
/// Connections `why` lists when a port is left out, at most.
const WHY_FLOWS: usize = 20;
/// Drops `drops` shows without `--last`.
const DEFAULT_DROPS: usize = 50;

/// What the control thread needs from the daemon.
pub struct Control {
    pub engine: Arc<Engine>,
    pub shared: Arc<Shared>,
    /// Reloads the rules; the summary, or the error (old rules kept).
    pub reload: Box<dyn Fn() -> Result<String, String> + Send + Sync>,
    pub started: Instant,
    pub max_connections: usize,
    /// Requests that were not valid JSON or named no known command.
    pub bad_requests: Arc<AtomicU64>,
    /// Hands streaming clients to the event thread.
    pub joins: crossbeam_channel::Sender<Subscription>,
    /// The counters at the previous `stats`, for rates since then.
    pub last_stats: Mutex<Option<(Instant, Value)>>,
}

/// The gid of a group name (or number). `nix` reads the group database
/// with a buffer that grows on ERANGE (a group of many members).
fn group_id(name: &str) -> std::io::Result<nix::unistd::Gid> {
    if let Ok(n) = name.parse::<libc::gid_t>() {
        return Ok(nix::unistd::Gid::from_raw(n));
    }
    match nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid),
        Ok(None) => Err(std::io::Error::other(format!(
            "group {name:?} does not exist"
        ))),
        Err(e) => Err(std::io::Error::other(format!("group {name:?}: {e}"))),
    }
}

/// The listening socket: created (replacing a stale one), mode 0660, in
/// `group` when one is given.
pub fn bind(path: &Path, group: Option<&str>) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))?;
    if let Some(group) = group {
        std::os::unix::fs::chown(path, None, Some(group_id(group)?.as_raw()))?;
    }
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves clients until `stop`; removes the socket file at the end.
pub fn serve(listener: UnixListener, path: PathBuf, control: Control, stop: Stop) {
    while !stop.is_set() {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = client(stream, &control, &stop) {
                    debug!("control client: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                stop.wait(Duration::from_millis(50));
            }
            Err(e) => {
                warn!("control socket: {e}");
                stop.wait(Duration::from_millis(200));
            }
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// A client's time, all told: reading its request and writing the answer
/// (a client that trickles one byte per timeout gets no longer than this).
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(30);

fn client(stream: UnixStream, control: &Control, stop: &Stop) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    let until = Instant::now() + CLIENT_DEADLINE;
    let mut line = Vec::new();
    BufReader::new(
        Deadline {
            stream: &stream,
            until,
            stop,
        }
        .take(MAX_REQUEST as u64 + 1),
    )
    .read_until(b'\n', &mut line)?;
    let mut out = std::io::BufWriter::new(Deadline {
        stream: &stream,
        until,
        stop,
    });
    match answer(control, &line, &mut out)? {
        Then::Close => Ok(()),
        Then::Stream(interest, first) => stream_to(control, &mut out, &stream, interest, first),
    }
}

/// What the socket does once a request is answered.
enum Then {
    Close,
    /// Hand the client to the event thread: what it wants, and what it is
    /// written first (any backlog, then the acknowledgement).
    Stream(Interest, Vec<u8>),
}

/// Answers one request line (as read: at most `MAX_REQUEST` + 1 bytes)
/// into `out`. The protocol without the socket: tested on its own.
fn answer(control: &Control, line: &[u8], out: &mut impl Write) -> std::io::Result<Then> {
    if line.len() > MAX_REQUEST {
        control.bad_requests.fetch_add(1, Ordering::Relaxed);
        reply(
            out,
            &error(&format!("request longer than {MAX_REQUEST} bytes")),
        )?;
        return Ok(Then::Close);
    }
    let request = match serde_json::from_slice::<Request>(line) {
        Ok(r) => r,
        Err(e) => {
            control.bad_requests.fetch_add(1, Ordering::Relaxed);
            reply(out, &error(&format!("bad request: {e}")))?;
            return Ok(Then::Close);
        }
    };
    let selector = |filter: &Filter, out: &mut dyn Write| match Selector::new(filter) {
        Ok(s) => Ok(Some(s)),
        Err(e) => reply(out, &error(&e)).map(|()| None),
    };
    match request {
        Request::Stats => reply(out, &stats(control))?,
        Request::Flows {
            filter,
            limit,
            verbose,
        } => flows(out, control, &filter, limit, verbose)?,
        Request::Why {
            src,
            dst,
            proto,
            in_iface,
            out_iface,
        } => match why(control, &src, &dst, proto.as_deref(), in_iface, out_iface) {
            Ok(v) => reply(out, &v)?,
            Err(e) => reply(out, &error(&e))?,
        },
        Request::Drops {
            filter,
            last,
            follow,
        } => {
            let Some(sel) = selector(&filter, out)? else {
                return Ok(Then::Close);
            };
            let recent = control
                .shared
                .drops
                .recent(last.unwrap_or(DEFAULT_DROPS), |d| {
                    sel.matches_record(&Record::Drop(*d))
                });
            // The backlog in the same shape as streamed drops.
            let mut first = Vec::new();
            for d in &recent {
                serde_json::to_writer(&mut first, &events::record_json(&Record::Drop(*d)))?;
                first.push(b'\n');
            }
            let done = json!({
                "ok": true,
                "shown": recent.len(),
                "unrecorded": control.shared.drops.unrecorded(),
                "following": follow,
            });
            serde_json::to_writer(&mut first, &done)?;
            first.push(b'\n');
            if follow {
                return Ok(Then::Stream(sel.interest(true), first));
            }
            out.write_all(&first)?;
            out.flush()?;
        }
        Request::Events { filter } => {
            let Some(sel) = selector(&filter, out)? else {
                return Ok(Then::Close);
            };
            let ack = json!({"ok": true, "following": true}).to_string() + "\n";
            return Ok(Then::Stream(sel.interest(false), ack.into_bytes()));
        }
        Request::Status => reply(out, &status(control))?,
        Request::Cluster => reply(out, &cluster(control))?,
        Request::Kill { filter } => {
            if let Some(sel) = selector(&filter, out)? {
                let killed = control
                    .engine
                    .remove_connections(|c| sel.matches(c), control.shared.now());
                reply(out, &json!({"ok": true, "killed": killed}))?;
            }
        }
        Request::Flush => {
            let killed = control
                .engine
                .remove_connections(|_| true, control.shared.now());
            reply(out, &json!({"ok": true, "killed": killed}))?;
        }
        Request::Reload => match (control.reload)() {
            Ok(summary) => reply(out, &json!({"ok": true, "summary": summary}))?,
            Err(e) => reply(
                out,
                &json!({"ok": false, "error": e, "kept": "old rules kept"}),
            )?,
        },
    }
    Ok(Then::Close)
}

/// Hands the client to the event thread, which writes `first` (the
/// acknowledgement, after any backlog) and then the events: it is
/// subscribed before it is told so, so nothing after the acknowledgement
/// is missed. Refused (too many streams), the client gets the error here.
fn stream_to(
    control: &Control,
    out: &mut impl Write,
    stream: &UnixStream,
    interest: Interest,
    first: Vec<u8>,
) -> std::io::Result<()> {
    let joined = events::join(
        &control.shared.hub,
        &control.joins,
        Subscription {
            stream: stream.try_clone()?,
            interest,
            first,
        },
    );
    match joined {
        Ok(()) => Ok(()),
        Err(e) => reply(out, &error(&e)),
    }
}

/// `ADDR`, `ADDR:PORT` or `[V6]:PORT`.
fn endpoint(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok((a.ip(), Some(a.port())));
    }
    let bare = s.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>()
        .map(|a| (a, None))
        .map_err(|_| format!("{s:?}: give ADDR, ADDR:PORT or [IPv6]:PORT"))
}

/// `conntrackd why`: the tracked state (either direction), the recent drops
/// between the two ends, and the policy's answer to a new connection.
fn why(
    c: &Control,
    src: &str,
    dst: &str,
    proto: Option<&str>,
    in_iface: Option<String>,
    out_iface: Option<String>,
) -> Result<Value, String> {
    let (sa, sp) = endpoint(src)?;
    let (da, dp) = endpoint(dst)?;
    if sa.is_ipv4() != da.is_ipv4() {
        return Err(format!("{src} and {dst} are not of one address family"));
    }
    let filter = Filter {
        proto: Some(proto.unwrap_or("tcp").to_string()),
        ..Filter::default()
    };
    let protocol = Selector::new(&filter)?
        .proto
        .unwrap_or(crate::wire::PROTO_TCP);
    let policy = c.engine.policy();
    let name = |rule: Option<u16>| rule.and_then(|i| policy.rule_name(i)).map(str::to_string);
    let now = c.shared.now().as_secs();
    let info = |i: &ConnInfo| flow_line(i, now, false);
    // Tracked: the exact tuple when both ports are given, else every
    // connection between the two addresses (either way round).
    let tracked: Vec<Value> = match (sp, dp) {
        (Some(sp), Some(dp)) => c
            .engine
            .lookup(protocol, (sa, sp), (da, dp))
            .iter()
            .map(info)
            .collect(),
        _ => {
            let mut found = Vec::new();
            c.engine.visit_connections(|i| {
                let ends = [i.originator, i.responder];
                let has = |a: IpAddr, p: Option<u16>| {
                    ends.iter()
                        .any(|e| e.0 == a && p.map_or(true, |p| p == e.1))
                };
                if i.protocol == protocol && has(sa, sp) && has(da, dp) && found.len() < WHY_FLOWS {
                    found.push(info(i));
                }
            });
            found
        }
    };
    let port_ok = |p: Option<u16>, q: Option<u16>| p.map_or(true, |p| q == Some(p));
    let between = |d: &DropRecord| {
        let d = d.headers();
        let (ps, pd) = d.ports.unzip();
        let forward = d.src == Some(sa) && d.dst == Some(da) && port_ok(sp, ps) && port_ok(dp, pd);
        let back = d.src == Some(da) && d.dst == Some(sa) && port_ok(dp, ps) && port_ok(sp, pd);
        d.protocol == Some(protocol) && (forward || back)
    };
    let drops: Vec<Value> = c
        .shared
        .drops
        .recent(WHY_DROPS, between)
        .iter()
        .map(|d| d.to_json())
        .collect();
    let ifaces = Interfaces {
        input: in_iface.as_deref(),
        output: out_iface.as_deref(),
    };
    let no_interfaces =
        ifaces.input.is_none() && ifaces.output.is_none() && policy.names_interfaces();
    let ports = (sp.unwrap_or(0), dp.unwrap_or(0));
    let new_connection = match c
        .engine
        .would_admit(protocol, (sa, ports.0), (da, ports.1), &ifaces)
    {
        Some((action, rule)) => json!({
            "action": action.to_string(),
            "rule": name(rule),
            "by": if rule.is_some() { "rule" } else { "default" },
            "note": (dp.is_none() && matches!(protocol, 6 | 17))
                .then_some("no destination port given: evaluated for port 0"),
            "interfaces": no_interfaces
                .then_some("none given (--in, --out): rules that name an interface do not match"),
        }),
        None => json!({"note": "no first packet to evaluate for this protocol"}),
    };
    Ok(json!({
        "ok": true,
        "tracked": tracked,
        "drops": drops,
        "new_connection": new_connection,
    }))
}

/// `conntrackd status`: ok when every worker's loop came round within
/// `STUCK_AFTER`, and in a cluster once the first bulk copy is done (a
/// keepalived track script keeps a syncing node backup); else why not.
fn status(c: &Control) -> Value {
    let workers: Vec<Value> = c
        .shared
        .heartbeat_ages()
        .map(|(queue, age)| json!({"queue": queue, "idle_ms": age}))
        .collect();
    let cluster = c.shared.cluster.get();
    let syncing = cluster.is_some_and(|s| !s.ready());
    let mut v = match c.shared.unhealthy(super::super::shared::STUCK_AFTER) {
        None if syncing => json!({
            "ok": false,
            "error": "cluster: syncing (copying the peers' tables)",
            "workers": workers,
        }),
        None => json!({"ok": true, "workers": workers, "uptime_s": c.started.elapsed().as_secs()}),
        Some(why) => json!({"ok": false, "error": why, "workers": workers}),
    };
    if let Some(s) = cluster {
        let peers = s.peers();
        v["cluster"] = json!({
            "state": s.state_name(),
            "node": s.node,
            "peers_heard": peers.iter().filter(|p| p.last_heard_unix_ms.is_some()).count(),
            "peers": peers.len(),
            "policy_mismatch": peers.iter().filter(|p| p.digest_agrees == Some(false)).map(|p| p.name.as_str()).collect::<Vec<_>>(),
        });
    }
    v
}

/// `conntrackd cluster`: everything the node knows of its cluster.
fn cluster(c: &Control) -> Value {
    let Some(s) = c.shared.cluster.get() else {
        return error("no [cluster] in the rules file: this node runs alone");
    };
    cluster_json(s, super::super::shared::wall_clock_ms())
}

/// The cluster's state at wall clock `unix_ms`.
fn cluster_json(s: &ClusterState, unix_ms: u64) -> Value {
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    let refused: serde_json::Map<String, Value> = Refusal::ALL
        .iter()
        .map(|&r| (r.name().to_string(), json!(s.refused(r))))
        .collect();
    let peers: Vec<Value> = s.peers().iter().map(|p| peer_json(p, unix_ms)).collect();
    let last_bulk = s
        .last_bulk
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .map(|b| {
            json!({
                "ago_s": unix_ms.saturating_sub(b.started_unix_ms) / 1000,
                "took_ms": b.took_ms,
                "answered": b.answered,
                "missing": b.missing,
                "records": b.records,
            })
        });
    let digest = *s.digest.lock().unwrap_or_else(|e| e.into_inner());
    json!({
        "ok": true,
        "node": s.node,
        "servers": s.servers,
        "subject": s.subject,
        "state": s.state_name(),
        "connection": match s.link() {
            super::super::shared::cluster::Link::Connecting => "connecting",
            super::super::shared::cluster::Link::Connected => "connected",
            super::super::shared::cluster::Link::Disconnected => "disconnected",
        },
        "ready": s.ready(),
        "policy_digest": digest[..6].iter().map(|b| format!("{b:02x}")).collect::<String>(),
        "records_sent": load(&s.records_sent),
        "messages_sent": load(&s.messages_sent),
        "bytes_sent": load(&s.bytes_sent),
        "records_dropped": load(&s.dropped),
        "publish_errors": load(&s.publish_errors),
        "bulk_copies_sent": load(&s.bulk_answered),
        "refused": refused,
        "peers": peers,
        "last_bulk_copy": last_bulk,
    })
}

fn peer_json(p: &Peer, unix_ms: u64) -> Value {
    let a = &p.applied;
    json!({
        "name": p.name,
        "last_heard_ms_ago": p.last_heard_unix_ms.map(|t| unix_ms.saturating_sub(t)),
        "lag_ms": {
            "last": p.lag_last_ms,
            "max": p.lag_max_ms,
            "p50": p.lag_quantile(0.5),
            "p99": p.lag_quantile(0.99),
        },
        "messages": p.messages,
        "records_received": p.records_received,
        "applied": {
            "inserted": a.inserted,
            "updated": a.updated,
            "removed": a.removed,
            "stale": a.stale,
            "absent": a.absent,
            "full": a.full,
            "expired": a.expired,
        },
        "missed_messages": p.missed,
        "policy_agrees": p.digest_agrees,
        "ready": p.ready,
        "connections": p.connections,
    })
}

fn error(message: &str) -> Value {
    json!({"ok": false, "error": message})
}

fn reply(out: &mut (impl Write + ?Sized), v: &Value) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, v)?;
    out.write_all(b"\n")?;
    out.flush()
}

/// The shortest window rates are computed over.
const RATE_WINDOW: Duration = Duration::from_secs(2);

/// Counters whose rate per second since the previous `stats` is shown.
const RATED: &[&str] = &[
    "packets",
    "accepted",
    "dropped",
    "new_connections",
    "evicted_half_open",
    "evicted_unreplied",
    "enobufs",
];

/// How long `stats` waits for the workers to publish their counters.
const FRESH_STATS_WAIT: Duration = Duration::from_millis(300);

fn stats(c: &Control) -> Value {
    // The counters of every packet judged so far, not of the last second's
    // publication: `stats` right after traffic shows it.
    let totals = c.shared.fresh_totals(FRESH_STATS_WAIT);
    let table = c.engine.table();
    let reasons: serde_json::Map<String, Value> = totals
        .counters
        .iter()
        .map(|(r, n): (Reason, u64)| (r.name().to_string(), json!(n)))
        .collect();
    let evictions = table.evictions();
    let sources = table.sources_made().map(|s| {
        json!({
            "tracked": s.len(),
            "capacity": s.capacity(),
            "displaced": s.displaced(),
            "untracked": s.untracked(),
        })
    });
    let policy = c.engine.policy();
    let hits = (totals.rules_generation == policy.generation).then_some(&totals.rule_hits);
    let rules: Vec<Value> = policy
        .rules
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let h = hits.and_then(|h| h.get(i)).copied().unwrap_or([0; 2]);
            json!({"name": r.name, "action": r.action.to_string(), "packets": h[0], "connections": h[1]})
        })
        .collect();
    let queues: Vec<Value> = c
        .shared
        .stats
        .iter()
        .zip(&c.shared.heartbeats)
        .map(|(slot, beat)| {
            let queue = beat.0;
            let s = slot.lock().unwrap_or_else(|e| e.into_inner());
            json!({
                "queue": queue,
                "packets": s.packets(),
                "reads": s.reads,
                "mean_batch": if s.reads == 0 { 0.0 } else { s.packets() as f64 / s.reads as f64 },
                "enobufs": s.enobufs,
                "recv_errors": s.recv_errors,
                "verdict_errors": s.verdict_errors,
            })
        })
        .collect();
    let new_connections =
        totals.counters.get(Reason::NewByRule) + totals.counters.get(Reason::NewByDefault);
    let overload = [
        Reason::SourceConnLimit,
        Reason::SourceRateLimit,
        Reason::SourceOverloaded,
    ]
    .iter()
    .map(|&r| totals.counters.get(r))
    .sum::<u64>();
    let mut v = json!({
        "ok": true,
        "uptime_s": c.started.elapsed().as_secs(),
        "connections": table.len(),
        "max_connections": c.max_connections,
        "half_open": table.half_open(),
        "synproxy_adaptive_on": c.engine.synproxy_adaptive_on(),
        "new_connections": new_connections,
        "evicted_half_open": evictions.half_open,
        "evicted_unreplied": evictions.unreplied,
        "packets": totals.packets(),
        "accepted": totals.counters.total(Verdict::Accept),
        "dropped": totals.counters.total(Verdict::Drop),
        "overload_drops": overload,
        "table_full_drops": totals.counters.get(Reason::TableFull) + totals.counters.get(Reason::HalfOpenLimit),
        "reads": totals.reads,
        "enobufs": totals.enobufs,
        "recv_errors": totals.recv_errors,
        "verdict_errors": totals.verdict_errors,
        "verdict_send_failures": totals.verdict_send_failures,
        "verdict_backlogs_dropped": totals.verdict_backlogs_dropped,
        "engine_panics": totals.engine_panics,
        "log_events_lost": totals.events_lost,
        "stream_events_lost": c.shared.hub.lost(),
        "stream_subscribers": c.shared.hub.subscribers(),
        "drops_unrecorded": c.shared.drops.unrecorded(),
        "rejects_sent": totals.rejects_sent,
        "rejects_rate_limited": totals.rejects_rate_limited,
        "rejects_failed": totals.rejects_failed,
        "synproxy_sent": totals.synproxy_sent,
        "synproxy_send_failures": totals.synproxy_send_failures,
        "synproxy_rewritten": totals.synproxy_rewritten,
        "synproxy_rewrite_failures": totals.synproxy_rewrite_failures,
        "synproxy_handed_off": totals.synproxy_handed_off,
        "synproxy_handoff_failures": totals.synproxy_handoff_failures,
        "synproxy_left_to_kernel": totals.synproxy_left_to_kernel,
        "bad_requests": c.bad_requests.load(Ordering::Relaxed),
        "sources": sources,
        "queues": queues,
        "rules": rules,
        "reasons": reasons,
    });
    // Rates since the previous call (none at the first).
    // Workers publish once a second: a shorter window would show 0 or twice
    // the rate. The window is the daemon's, shared by every client.
    let now = Instant::now();
    let mut last = c.last_stats.lock().unwrap_or_else(|e| e.into_inner());
    let window = last.as_ref().map(|(then, _)| now.duration_since(*then));
    if window.is_some_and(|w| w < RATE_WINDOW) {
        return v;
    }
    if let Some((then, prev)) = last.as_ref() {
        let secs = now.duration_since(*then).as_secs_f64();
        let rates: serde_json::Map<String, Value> = RATED
            .iter()
            .map(|k| {
                let d = v[k]
                    .as_u64()
                    .unwrap_or(0)
                    .saturating_sub(prev[k].as_u64().unwrap_or(0));
                (
                    k.to_string(),
                    json!((d as f64 / secs * 10.0).round() / 10.0),
                )
            })
            .collect();
        v["per_second"] = json!(rates);
        v["per_second_over_s"] = json!((secs * 10.0).round() / 10.0);
    }
    let keep: serde_json::Map<String, Value> = RATED
        .iter()
        .map(|k| (k.to_string(), v[k].clone()))
        .collect();
    *last = Some((now, Value::Object(keep)));
    v
}

/// One line per connection, then a summary line. The walk holds one
/// shard at a time and keeps only what it will show (at most `limit`);
/// nothing is written to the client while a shard is held.
fn flows(
    out: &mut impl Write,
    c: &Control,
    filter: &Filter,
    limit: Option<usize>,
    verbose: bool,
) -> std::io::Result<()> {
    let sel = match Selector::new(filter) {
        Ok(s) => s,
        Err(e) => return reply(out, &error(&e)),
    };
    let limit = limit.unwrap_or(usize::MAX);
    // Room for all of them before the walk: no reallocation while a shard is held.
    let mut shown = Vec::with_capacity(limit.min(c.engine.table().len() + 1024));
    let mut matched = 0usize;
    c.engine.visit_connections(|info| {
        if sel.matches(info) {
            matched += 1;
            if shown.len() < limit {
                shown.push(info.clone());
            }
        }
    });
    let now = c.shared.now().as_secs();
    for info in &shown {
        serde_json::to_writer(&mut *out, &flow_line(info, now, verbose))?;
        out.write_all(b"\n")?;
    }
    reply(
        out,
        &json!({"ok": true, "shown": shown.len(), "matched": matched}),
    )
}

/// One connection as `flows` and `why` show it, at engine second `now`;
/// `verbose` adds each direction's window.
fn flow_line(info: &ConnInfo, now: u64, verbose: bool) -> Value {
    let mut line = events::flow_fields(info.protocol, info.originator, info.responder, info.state);
    line["age_s"] = json!(now.saturating_sub(u64::from(info.opened_at_secs)));
    line["expires_in_s"] = json!(u64::from(info.expires_at_secs).saturating_sub(now));
    line["rule"] = json!(info.rule.name());
    if info.rule == RuleName::Unknown {
        // Restored from a state file, copied from a peer, or admitted
        // before more reloads than the engine remembers.
        line["rule_unknown"] = json!(true);
    }
    line["packets"] = json!(info.traffic.packets);
    line["bytes"] = json!(info.traffic.bytes);
    if info.peer {
        // A copy of a connection a peer gateway forwards.
        line["peer"] = json!(true);
    }
    if info.proxied {
        line["proxied"] = json!(true);
    }
    if let (true, Some(w)) = (verbose, info.windows) {
        line["windows"] = json!(w
            .iter()
            .map(
                |w| json!({"end": w.end, "maxend": w.maxend, "maxwin": w.maxwin, "scale": w.scale})
            )
            .collect::<Vec<_>>());
    }
    line
}

/// The client side: sends one request, returns the reply lines.
pub fn request(socket: &Path, req: &Value) -> anyhow::Result<Vec<Value>> {
    use anyhow::Context as _;
    let mut stream = UnixStream::connect(socket).with_context(|| {
        format!(
            "connecting to the control socket {} (is conntrackd running, and may you \
             read and write the socket?)",
            socket.display()
        )
    })?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    serde_json::to_writer(&mut stream, req)?;
    stream.write_all(b"\n")?;
    let mut lines = Vec::new();
    for line in BufReader::new(stream).lines() {
        let v: Value = serde_json::from_str(&line?).context("a reply that is not JSON")?;
        let last = v.get("ok").is_some();
        lines.push(v);
        if last {
            break;
        }
    }
    Ok(lines)
}

/// The protocol without a socket: request lines in, answer lines out.
#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{build, TcpFlags};
    use crate::{Config, Context, Timestamp};

    fn control(policy: &str, reload: Result<String, String>) -> Control {
        let config = Config::parse(policy, Path::new("r.toml")).unwrap();
        let (joins, _) = crossbeam_channel::bounded(1);
        Control {
            engine: Arc::new(Engine::new(config.engine, config.policy)),
            shared: Arc::new(Shared::new(Instant::now(), &[0])),
            reload: Box::new(move || reload.clone()),
            started: Instant::now(),
            max_connections: 1000,
            bad_requests: Arc::new(AtomicU64::new(0)),
            joins,
            last_stats: Mutex::new(None),
        }
    }

    const ACCEPT: &str = "[policy]\ndefault = \"accept\"\n";

    /// The answer to `request`, as JSON lines, and what the socket does next.
    fn ask(c: &Control, request: &str) -> (Vec<Value>, Then) {
        let mut out = Vec::new();
        let then = answer(c, request.as_bytes(), &mut out).unwrap();
        let lines = out
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        (lines, then)
    }

    fn one(c: &Control, request: &str) -> Value {
        let (lines, then) = ask(c, request);
        assert!(matches!(then, Then::Close));
        assert_eq!(lines.len(), 1, "{lines:?}");
        lines.into_iter().next().unwrap()
    }

    /// Opens a connection 198.18.0.2:`port` → 198.19.0.2:80 (a SYN).
    fn open(c: &Control, port: u16) {
        let syn = build::tcp(
            format!("198.18.0.2:{port}").parse().unwrap(),
            "198.19.0.2:80".parse().unwrap(),
        )
        .flags(TcpFlags::SYN)
        .build();
        let d = c
            .engine
            .decide(&syn, &Context::default(), Timestamp::from_secs(1));
        assert_eq!(d.verdict(), Verdict::Accept);
    }

    #[test]
    fn a_group_is_found_by_name_or_number() {
        assert_eq!(group_id("root").unwrap().as_raw(), 0);
        assert_eq!(group_id("4242").unwrap().as_raw(), 4242);
        let e = group_id("no-such-group-ctd").unwrap_err().to_string();
        assert_eq!(e, "group \"no-such-group-ctd\" does not exist");
        assert!(group_id("a\0b").is_err());
    }

    #[test]
    fn a_bad_request_is_answered_with_why_and_counted() {
        let c = control(ACCEPT, Ok(String::new()));
        let cases = [
            ("not json\n", "bad request: "),
            (
                "{\"cmd\":\"explode\"}\n",
                "bad request: unknown variant `explode`",
            ),
            (
                "{\"cmd\":\"flows\",\"colour\":1}\n",
                "bad request: unknown field `colour`",
            ),
            ("\n", "bad request: "),
        ];
        for (request, starts) in cases {
            let v = one(&c, request);
            assert_eq!(v["ok"], false, "{request}");
            let e = v["error"].as_str().unwrap();
            assert!(e.starts_with(starts), "{request}: {e}");
        }
        let long = format!(
            "{{\"cmd\":\"stats\",\"x\":\"{}\"}}\n",
            "a".repeat(MAX_REQUEST)
        );
        let v = one(&c, &long[..MAX_REQUEST + 1]);
        assert_eq!(v["error"], "request longer than 4096 bytes");
        assert_eq!(c.bad_requests.load(Ordering::Relaxed), 5);
        // A request is one line: what follows its newline is not read.
        assert_eq!(one(&c, "{\"cmd\":\"flush\"}\n")["killed"], 0);
    }

    #[test]
    fn flows_lists_what_the_filter_selects_and_kill_removes_it() {
        let c = control(ACCEPT, Ok(String::new()));
        for port in [40000, 40001, 40002] {
            open(&c, port);
        }
        let (lines, _) = ask(&c, "{\"cmd\":\"flows\",\"port\":40001}\n");
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0]["sport"], 40001);
        assert_eq!(lines[0]["state"], "SYN_SENT:LISTEN");
        assert_eq!(lines[1], json!({"ok": true, "shown": 1, "matched": 1}));
        let (lines, _) = ask(&c, "{\"cmd\":\"flows\",\"limit\":0}\n");
        assert_eq!(lines, [json!({"ok": true, "shown": 0, "matched": 3})]);
        let v = one(&c, "{\"cmd\":\"flows\",\"src\":\"198.18.0.300\"}\n");
        assert_eq!(v["ok"], false);
        assert!(v["error"].as_str().unwrap().contains("198.18.0.300"), "{v}");

        assert_eq!(one(&c, "{\"cmd\":\"kill\",\"port\":40001}\n")["killed"], 1);
        let (lines, _) = ask(&c, "{\"cmd\":\"flows\"}\n");
        assert_eq!(lines.last().unwrap()["matched"], 2);
        assert_eq!(one(&c, "{\"cmd\":\"flush\"}\n")["killed"], 2);
        assert_eq!(c.engine.table().len(), 0);
    }

    #[test]
    fn why_shows_the_tracked_state_and_what_the_policy_says() {
        let c = control(
            "[policy]\ndefault = \"drop\"\n[[rule]]\nname = \"web\"\nproto = \"tcp\"\ndst_ports = [80]\naction = \"accept\"\n",
            Ok(String::new()),
        );
        open(&c, 40000);
        let v = one(
            &c,
            "{\"cmd\":\"why\",\"src\":\"198.18.0.2:40000\",\"dst\":\"198.19.0.2:80\"}\n",
        );
        assert_eq!(v["ok"], true, "{v}");
        let text = v.to_string();
        assert!(text.contains("SYN_SENT") && text.contains("web"), "{text}");
        let v = one(
            &c,
            "{\"cmd\":\"why\",\"src\":\"nowhere\",\"dst\":\"198.19.0.2:80\"}\n",
        );
        assert_eq!(v["ok"], false);
    }

    #[test]
    fn reload_says_what_changed_or_that_the_old_rules_are_kept() {
        let c = control(ACCEPT, Ok("2 rules, default drop (1 added)".into()));
        let v = one(&c, "{\"cmd\":\"reload\"}\n");
        assert_eq!(
            v,
            json!({"ok": true, "summary": "2 rules, default drop (1 added)"})
        );
        let c = control(ACCEPT, Err("r.toml:3:1: unknown field `actoin`".into()));
        let v = one(&c, "{\"cmd\":\"reload\"}\n");
        assert_eq!(v["ok"], false);
        assert_eq!(v["kept"], "old rules kept");
        assert_eq!(v["error"], "r.toml:3:1: unknown field `actoin`");
    }

    #[test]
    fn stats_counts_and_status_names_a_worker_that_never_came_round() {
        let c = control(ACCEPT, Ok(String::new()));
        open(&c, 40000);
        let v = one(&c, "{\"cmd\":\"stats\"}\n");
        assert_eq!(
            (v["ok"].clone(), v["connections"].clone()),
            (json!(true), json!(1))
        );
        assert_eq!(v["max_connections"], 1000);
        assert!(v.get("per_second").is_none(), "no rates at the first call");
        let v = one(&c, "{\"cmd\":\"status\"}\n");
        assert_eq!(v["ok"], false);
        assert_eq!(v["error"], "worker of queue 0: never started");
    }

    #[test]
    fn cluster_shows_the_peers_and_status_waits_for_the_first_bulk_copy() {
        let c = control(ACCEPT, Ok(String::new()));
        let v = one(&c, "{\"cmd\":\"cluster\"}\n");
        assert_eq!(v["ok"], false);
        assert!(v["error"].as_str().unwrap().contains("runs alone"), "{v}");
        assert!(one(&c, "{\"cmd\":\"status\"}\n").get("cluster").is_none());

        let state = Arc::new(ClusterState::new(
            "gw-a",
            &["nats://198.18.255.1:4222".into()],
            "conntrackd",
            &["gw-b".into()],
        ));
        c.shared.cluster.set(state.clone()).unwrap();
        for beat in &c.shared.heartbeats {
            beat.1
                .store(c.shared.now().as_nanos() / 1_000_000 + 1, Ordering::Relaxed);
        }
        let v = one(&c, "{\"cmd\":\"status\"}\n");
        assert_eq!(v["ok"], false, "syncing: not ready yet");
        assert!(v["error"].as_str().unwrap().contains("syncing"), "{v}");
        assert_eq!(v["cluster"]["state"], "syncing");

        state.set_link(super::super::super::shared::cluster::Link::Connected);
        state.set_ready();
        state.syncing.store(false, Ordering::Relaxed);
        state.refuse(Refusal::UnknownNode);
        state.records_sent.store(12, Ordering::Relaxed);
        state.with_peer("gw-b", |p| {
            p.last_heard_unix_ms = Some(1_000);
            p.lag(3);
            p.records_received = 40;
            p.digest_agrees = Some(false);
            p.ready = true;
        });
        let v = one(&c, "{\"cmd\":\"status\"}\n");
        assert_eq!(v["ok"], true, "{v}");
        assert_eq!(v["cluster"]["policy_mismatch"], json!(["gw-b"]));

        let v = cluster_json(&state, 1_500);
        assert_eq!(v["state"], "ready");
        assert_eq!(v["connection"], "connected");
        assert_eq!(v["records_sent"], 12);
        assert_eq!(v["refused"]["unknown_node"], 1);
        let p = &v["peers"][0];
        assert_eq!(p["name"], "gw-b");
        assert_eq!(p["last_heard_ms_ago"], 500);
        assert_eq!(p["lag_ms"]["last"], 3);
        assert_eq!(p["records_received"], 40);
        assert_eq!(p["policy_agrees"], false);
        assert_eq!(v["last_bulk_copy"], Value::Null);
        assert_eq!(one(&c, "{\"cmd\":\"cluster\"}\n")["node"], "gw-a");

        // A peer's connection is listed as such.
        open(&c, 40000);
        let (key, conn) = c.engine.table().snapshot()[0];
        c.engine.remove_connections(|_| true, c.shared.now());
        let now = Timestamp::from_secs(1);
        c.engine.apply_peer(key, conn, None, false, now);
        let (lines, _) = ask(&c, "{\"cmd\":\"flows\"}\n");
        assert_eq!(lines[0]["peer"], true, "{lines:?}");
    }

    #[test]
    fn drops_and_events_are_handed_to_the_event_thread_after_their_backlog() {
        let c = control(ACCEPT, Ok(String::new()));
        let (lines, then) = ask(&c, "{\"cmd\":\"drops\"}\n");
        assert!(matches!(then, Then::Close));
        assert_eq!(
            lines,
            [json!({"ok": true, "shown": 0, "unrecorded": 0, "following": false})]
        );
        let (lines, then) = ask(&c, "{\"cmd\":\"drops\",\"follow\":true,\"port\":22}\n");
        assert!(lines.is_empty(), "nothing written before the hand-off");
        let Then::Stream(interest, first) = then else {
            panic!("drops --follow streams");
        };
        assert!(interest.drops_only);
        assert_eq!(
            serde_json::from_slice::<Value>(first.trim_ascii_end()).unwrap(),
            json!({"ok": true, "shown": 0, "unrecorded": 0, "following": true})
        );
        let (_, then) = ask(&c, "{\"cmd\":\"events\",\"state\":\"ESTABLISHED\"}\n");
        let Then::Stream(interest, first) = then else {
            panic!("events streams");
        };
        assert!(!interest.drops_only && interest.select.is_some());
        assert_eq!(
            serde_json::from_slice::<Value>(&first).unwrap(),
            json!({"ok": true, "following": true})
        );
        assert!(first.ends_with(b"\n"));
        let v = one(&c, "{\"cmd\":\"events\",\"proto\":\"tcpp\"}\n");
        assert_eq!(
            v["ok"], false,
            "a bad filter is refused before any hand-off"
        );
    }
}
