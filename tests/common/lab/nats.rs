//! NATS for the failover lab (`pair`): the nats-server configuration, a tiny
//! client of NATS' text protocol (enough to log in, subscribe, publish and
//! read messages) and the HTTP GET that reads nats-server's monitoring
//! endpoints. Sockets are opened inside a namespace ([`Ns::enter`]); every
//! read waits at most until a deadline.

use super::ns::Ns;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Client logins: user and password (nats-server's `authorization` block).
pub const NATS_USER: &str = "conntrackd";
pub const NATS_PASSWORD: &str = "lab-client-secret";
/// The gateways' logins: user `gw-a` or `gw-b`, each allowed to publish only
/// on its own node's subjects (and answers to requests, for bulk copies).
pub const NATS_NODE_PASSWORD: &str = "lab-node-secret";
/// The servers' logins to each other (the cluster's own `authorization`).
const ROUTE_USER: &str = "route";
const ROUTE_PASSWORD: &str = "lab-route-secret";
/// Client, cluster (route) and monitoring ports.
pub const NATS_PORT: u16 = 4222;
pub const NATS_CLUSTER_PORT: u16 = 6222;
pub const NATS_MONITOR_PORT: u16 = 8222;
/// The cluster's name (both servers must give the same).
pub const NATS_CLUSTER: &str = "conntrackd-lab";

/// nats-server 2.9's configuration for one of two clustered servers: clients
/// on every address of the namespace (127.0.0.1 and the sync link among them)
/// with passwords (a full user, and one per gateway node limited to its own
/// subjects), the cluster and the monitoring on `own` (the sync link
/// address), one route to `peer` with the route password.
pub fn server_conf(name: &str, own: Ipv4Addr, peer: Ipv4Addr) -> String {
    let node = |n: &str| {
        format!(
            r#"{{ user: "{n}", password: "{NATS_NODE_PASSWORD}", permissions: {{
      publish: ["conntrackd.changes.{n}", "conntrackd.hello.{n}", "conntrackd.bulk"]
      subscribe: ["conntrackd.>", "_INBOX.>"]
      allow_responses: true
    }} }}"#
        )
    };
    let (gw_a, gw_b) = (node("gw-a"), node("gw-b"));
    format!(
        r#"server_name: "{name}"
listen: "0.0.0.0:{NATS_PORT}"
http: "{own}:{NATS_MONITOR_PORT}"
authorization {{
  users = [
    {{ user: "{NATS_USER}", password: "{NATS_PASSWORD}" }}
    {gw_a}
    {gw_b}
  ]
}}
cluster {{
  name: "{NATS_CLUSTER}"
  listen: "{own}:{NATS_CLUSTER_PORT}"
  authorization {{
    user: "{ROUTE_USER}"
    password: "{ROUTE_PASSWORD}"
  }}
  routes: [
    "nats-route://{ROUTE_USER}:{ROUTE_PASSWORD}@{peer}:{NATS_CLUSTER_PORT}"
  ]
}}
"#
    )
}

/// `GET path` (HTTP/1.0: the server closes after its answer) to `addr` from
/// inside `ns`; the body of a 200 answer.
pub fn http_get(
    ns: &Ns,
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
) -> std::io::Result<String> {
    let mut s = ns.enter(move || TcpStream::connect_timeout(&addr, timeout))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut answer = Vec::new();
    // Bounded by the read timeout per read and by the answer's size.
    (&mut s).take(1 << 20).read_to_end(&mut answer)?;
    let answer = String::from_utf8_lossy(&answer);
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP header end in {answer:?}")))?;
    if !head.starts_with("HTTP/1.") || head.split_whitespace().nth(1) != Some("200") {
        return Err(std::io::Error::other(format!("GET {path}: {head}")));
    }
    Ok(body.to_string())
}

/// One message a subscription received.
#[derive(Clone, Debug)]
pub struct NatsMsg {
    pub subject: String,
    pub sid: u64,
    pub reply: Option<String>,
    pub payload: Vec<u8>,
}

/// A connection to a nats-server speaking the text protocol (`CONNECT`,
/// `SUB`, `PUB`, `PING`; `INFO`, `MSG`, `PONG`, `+OK`, `-ERR`).
pub struct NatsClient {
    stream: TcpStream,
    /// Bytes read and not yet parsed.
    buf: Vec<u8>,
    /// The server's `INFO` when we connected.
    pub info: serde_json::Value,
}

fn timed_out(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::TimedOut, what.to_string())
}

impl NatsClient {
    /// Connects from inside `ns` to the server at `addr`, logs in with
    /// `user` and `password` and waits for the `PONG` that answers the
    /// `PING` after `CONNECT`: an error of kind `PermissionDenied` carrying
    /// the server's `-ERR` line when the login is refused.
    pub fn connect(
        ns: &Ns,
        addr: SocketAddr,
        user: &str,
        password: &str,
        timeout: Duration,
    ) -> std::io::Result<NatsClient> {
        let deadline = Instant::now() + timeout;
        let stream = ns.enter(move || TcpStream::connect_timeout(&addr, timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut c = NatsClient {
            stream,
            buf: Vec::new(),
            info: serde_json::Value::Null,
        };
        let line = c.line(deadline)?.ok_or_else(|| timed_out("no INFO"))?;
        let info = line
            .strip_prefix("INFO ")
            .ok_or_else(|| std::io::Error::other(format!("expected INFO, got {line:?}")))?;
        c.info = serde_json::from_str(info)?;
        let connect = serde_json::json!({
            "verbose": false,
            "pedantic": false,
            "user": user,
            "pass": password,
            "name": "conntrackd-lab",
            "lang": "rust",
            "version": "0",
            "protocol": 1,
        });
        c.send(format!("CONNECT {connect}\r\nPING\r\n").as_bytes())?;
        c.pong(deadline)?;
        Ok(c)
    }

    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads more bytes; false when the deadline has passed.
    fn fill(&mut self, deadline: Instant) -> std::io::Result<bool> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        self.stream
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        let mut chunk = [0u8; 4096];
        match self.stream.read(&mut chunk) {
            Ok(0) => Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            )),
            Ok(n) => {
                self.buf.extend_from_slice(&chunk[..n]);
                Ok(true)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) =>
            {
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }

    /// The next protocol line (without its CRLF), or `None` at the deadline.
    fn line(&mut self, deadline: Instant) -> std::io::Result<Option<String>> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..i]).into_owned();
                self.buf.drain(..i + 2);
                return Ok(Some(line));
            }
            if !self.fill(deadline)? {
                return Ok(None);
            }
        }
    }

    /// `n` payload bytes and their CRLF, or `None` at the deadline.
    fn payload(&mut self, n: usize, deadline: Instant) -> std::io::Result<Option<Vec<u8>>> {
        while self.buf.len() < n + 2 {
            if !self.fill(deadline)? {
                return Ok(None);
            }
        }
        let payload = self.buf[..n].to_vec();
        if &self.buf[n..n + 2] != b"\r\n" {
            return Err(std::io::Error::other("a payload not followed by CRLF"));
        }
        self.buf.drain(..n + 2);
        Ok(Some(payload))
    }

    /// Handles what the server may send at any time: its `PING` (answered),
    /// `INFO` updates and `+OK`; an `-ERR` is an error. Whether the line was
    /// one of these.
    fn housekeeping(&mut self, line: &str) -> std::io::Result<bool> {
        if line == "PING" {
            self.send(b"PONG\r\n")?;
            Ok(true)
        } else if line.starts_with("INFO ") || line == "+OK" {
            Ok(true)
        } else if line.starts_with("-ERR") {
            Err(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                line.to_string(),
            ))
        } else {
            Ok(false)
        }
    }

    /// Waits for the server's `PONG`.
    fn pong(&mut self, deadline: Instant) -> std::io::Result<()> {
        // Each line read waits at most until the deadline.
        loop {
            let line = self.line(deadline)?.ok_or_else(|| timed_out("no PONG"))?;
            if line == "PONG" {
                return Ok(());
            }
            if !self.housekeeping(&line)? {
                return Err(std::io::Error::other(format!(
                    "expected PONG, got {line:?}"
                )));
            }
        }
    }

    /// `PING`, then waits for the `PONG`: the server has handled everything
    /// sent before.
    pub fn flush(&mut self, timeout: Duration) -> std::io::Result<()> {
        self.send(b"PING\r\n")?;
        self.pong(Instant::now() + timeout)
    }

    /// `SUB subject sid`.
    pub fn subscribe(&mut self, subject: &str, sid: u64) -> std::io::Result<()> {
        self.send(format!("SUB {subject} {sid}\r\n").as_bytes())
    }

    /// `PUB subject n` and the payload.
    pub fn publish(&mut self, subject: &str, payload: &[u8]) -> std::io::Result<()> {
        let mut msg = format!("PUB {subject} {}\r\n", payload.len()).into_bytes();
        msg.extend_from_slice(payload);
        msg.extend_from_slice(b"\r\n");
        self.send(&msg)
    }

    /// The next message of a subscription, or `None` when none came within
    /// `timeout`.
    pub fn next_msg(&mut self, timeout: Duration) -> std::io::Result<Option<NatsMsg>> {
        let deadline = Instant::now() + timeout;
        // Each line read waits at most until the deadline.
        loop {
            let Some(line) = self.line(deadline)? else {
                return Ok(None);
            };
            if line == "PONG" || self.housekeeping(&line)? {
                continue;
            }
            // MSG <subject> <sid> [reply-to] <#bytes>
            let words: Vec<&str> = line.split_whitespace().collect();
            let (subject, sid, reply, n) = match words.as_slice() {
                ["MSG", s, sid, n] => (s, sid, None, n),
                ["MSG", s, sid, r, n] => (s, sid, Some(r.to_string()), n),
                _ => return Err(std::io::Error::other(format!("unexpected {line:?}"))),
            };
            let bad = |_| std::io::Error::other(format!("bad MSG line {line:?}"));
            let n: usize = n.parse().map_err(bad)?;
            let sid: u64 = sid.parse().map_err(bad)?;
            let subject = subject.to_string();
            // The payload follows its line at once: a little past the
            // deadline rather than a message cut in two.
            let late = deadline.max(Instant::now() + Duration::from_secs(1));
            let payload = self
                .payload(n, late)?
                .ok_or_else(|| timed_out("a MSG without its payload"))?;
            return Ok(Some(NatsMsg {
                subject,
                sid,
                reply,
                payload,
            }));
        }
    }
}
