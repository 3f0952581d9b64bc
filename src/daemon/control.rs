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
//! ```

use super::worker::Shared;
use crate::engine::ConnInfo;
use crate::policy::Cidr;
use crate::reason::{Reason, Verdict};
use crate::Engine;
use serde::Deserialize;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
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
        let proto = match f.proto.as_deref() {
            None => None,
            Some("tcp") => Some(6),
            Some("udp") => Some(17),
            Some("icmp") => Some(1),
            Some("icmpv6") => Some(58),
            Some(n) => Some(
                n.parse()
                    .map_err(|_| format!("proto {n:?}: tcp, udp, icmp, icmpv6 or a number"))?,
            ),
        };
        Ok(Selector {
            src: cidr(&f.src)?,
            dst: cidr(&f.dst)?,
            port: f.port,
            proto,
            state: f.state.as_ref().map(|s| s.to_ascii_uppercase()),
        })
    }

    fn matches(&self, c: &ConnInfo) -> bool {
        self.src.map_or(true, |n| n.contains(c.originator.0))
            && self.dst.map_or(true, |n| n.contains(c.responder.0))
            && self
                .port
                .map_or(true, |p| c.originator.1 == p || c.responder.1 == p)
            && self.proto.map_or(true, |p| c.protocol == p)
            && self
                .state
                .as_ref()
                .map_or(true, |s| c.state.to_string().contains(s.as_str()))
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
    },
    Kill {
        #[serde(flatten)]
        filter: Filter,
    },
    Flush,
    Reload,
}

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
}

/// The listening socket: created (replacing a stale one), mode 0660.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
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
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Serves clients until `stop`; removes the socket file at the end.
pub fn serve(listener: UnixListener, path: PathBuf, control: Control, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((stream, _)) => {
                if let Err(e) = client(stream, &control) {
                    debug!("control client: {e}");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                warn!("control socket: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    let _ = std::fs::remove_file(&path);
}

fn client(stream: UnixStream, control: &Control) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(TIMEOUT))?;
    stream.set_write_timeout(Some(TIMEOUT))?;
    let mut line = Vec::new();
    let n = BufReader::new((&stream).take(MAX_REQUEST as u64 + 1)).read_until(b'\n', &mut line)?;
    let mut out = std::io::BufWriter::new(&stream);
    if n > MAX_REQUEST {
        control.bad_requests.fetch_add(1, Ordering::Relaxed);
        return reply(
            &mut out,
            &error(&format!("request longer than {MAX_REQUEST} bytes")),
        );
    }
    let request = match serde_json::from_slice::<Request>(&line) {
        Ok(r) => r,
        Err(e) => {
            control.bad_requests.fetch_add(1, Ordering::Relaxed);
            return reply(&mut out, &error(&format!("bad request: {e}")));
        }
    };
    match request {
        Request::Stats => reply(&mut out, &stats(control)),
        Request::Flows { filter, limit } => flows(&mut out, control, &filter, limit),
        Request::Kill { filter } => match Selector::new(&filter) {
            Ok(sel) => {
                let killed = control.engine.remove_connections(|c| sel.matches(c));
                reply(&mut out, &json!({"ok": true, "killed": killed}))
            }
            Err(e) => reply(&mut out, &error(&e)),
        },
        Request::Flush => {
            let killed = control.engine.remove_connections(|_| true);
            reply(&mut out, &json!({"ok": true, "killed": killed}))
        }
        Request::Reload => match (control.reload)() {
            Ok(summary) => reply(&mut out, &json!({"ok": true, "summary": summary})),
            Err(e) => reply(
                &mut out,
                &json!({"ok": false, "error": e, "kept": "old rules kept"}),
            ),
        },
    }
}

fn error(message: &str) -> Value {
    json!({"ok": false, "error": message})
}

fn reply(out: &mut impl Write, v: &Value) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, v)?;
    out.write_all(b"\n")?;
    out.flush()
}

fn stats(c: &Control) -> Value {
    let totals = c.shared.totals();
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
    json!({
        "ok": true,
        "uptime_s": c.started.elapsed().as_secs(),
        "connections": table.len(),
        "max_connections": c.max_connections,
        "half_open": table.half_open(),
        "evicted_half_open": evictions.half_open,
        "evicted_unreplied": evictions.unreplied,
        "packets": totals.packets(),
        "accepted": totals.counters.total(Verdict::Accept),
        "dropped": totals.counters.total(Verdict::Drop),
        "reads": totals.reads,
        "enobufs": totals.enobufs,
        "recv_errors": totals.recv_errors,
        "bad_requests": c.bad_requests.load(Ordering::Relaxed),
        "sources": sources,
        "reasons": reasons,
    })
}

/// One line per connection, then a summary line.
fn flows(
    out: &mut impl Write,
    c: &Control,
    filter: &Filter,
    limit: Option<usize>,
) -> std::io::Result<()> {
    let sel = match Selector::new(filter) {
        Ok(s) => s,
        Err(e) => return reply(out, &error(&e)),
    };
    let now = c.shared.now().as_secs();
    let limit = limit.unwrap_or(usize::MAX);
    let (mut shown, mut matched) = (0usize, 0usize);
    for info in c.engine.connections() {
        if !sel.matches(&info) {
            continue;
        }
        matched += 1;
        if shown < limit {
            shown += 1;
            serde_json::to_writer(
                &mut *out,
                &json!({
                    "proto": crate::wire::protocol_name(info.protocol),
                    "src": info.originator.0.to_string(),
                    "sport": info.originator.1,
                    "dst": info.responder.0.to_string(),
                    "dport": info.responder.1,
                    "state": info.state.to_string(),
                    "expires_in_s": u64::from(info.expires_at_secs).saturating_sub(now),
                }),
            )?;
            out.write_all(b"\n")?;
        }
    }
    reply(
        out,
        &json!({"ok": true, "shown": shown, "matched": matched}),
    )
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
