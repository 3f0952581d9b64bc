//! Text and JSON-lines output of a replay.

use super::book::{ConnRecord, End};
use super::view::PacketView;
use super::{transition, OutputFormat, ReplayError, Row, RowKind, Step, Summary};
use crate::policy::Policy;
use crate::reason::Reason;
use crate::wire;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::Path;

/// Connections listed in the text summary; JSON lists them all.
const TEXT_CONNECTIONS: usize = 100;

pub struct Printer<'w, 'p> {
    out: &'w mut dyn Write,
    format: OutputFormat,
    quiet: bool,
    policy: &'p Policy,
    /// The capture being replayed, shown when there are several.
    capture: Option<String>,
    /// Digits after the point for times (6, or 9 once a nanosecond capture is seen).
    decimals: u8,
}

/// `ns` as seconds with `decimals` digits (6 or 9), with a sign when negative.
fn seconds(ns: i128, decimals: u8) -> String {
    let sign = if ns < 0 { "-" } else { "" };
    let ns = ns.unsigned_abs();
    let (secs, frac) = (ns / 1_000_000_000, ns % 1_000_000_000);
    if decimals >= 9 {
        format!("{sign}{secs}.{frac:09}")
    } else {
        format!("{sign}{secs}.{:06}", frac / 1000)
    }
}

fn relative(ns: u64, first: Option<u64>) -> i128 {
    ns as i128 - first.unwrap_or(ns) as i128
}

/// `TCP 10.0.0.1:40000 > 192.0.2.1:80`, `ICMP 10.0.0.1 > 192.0.2.1 id=7`.
fn conn_text(c: &ConnRecord) -> String {
    let proto = match c.protocol {
        wire::PROTO_TCP | wire::PROTO_UDP | wire::PROTO_ICMP | wire::PROTO_ICMPV6 => {
            wire::protocol_name(c.protocol)
                .to_uppercase()
                .replace("V6", "v6")
        }
        p => format!("proto {p}"),
    };
    if c.has_ports() {
        format!(
            "{proto} {} > {}",
            SocketAddr::from(c.originator),
            SocketAddr::from(c.responder)
        )
    } else if matches!(c.protocol, wire::PROTO_ICMP | wire::PROTO_ICMPV6) {
        format!(
            "{proto} {} > {} id={}",
            c.originator.0, c.responder.0, c.originator.1
        )
    } else {
        format!("{proto} {} > {}", c.originator.0, c.responder.0)
    }
}

/// A JSON object whose keys keep the order given.
struct Ordered<K, V>(Vec<(K, V)>);

impl<K: Serialize, V: Serialize> Serialize for Ordered<K, V> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

#[derive(Serialize)]
struct JsonRow<'a> {
    index: u64,
    /// Seconds since the first frame.
    time: f64,
    /// Seconds since the Unix epoch, exact, as text.
    epoch: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    capture: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    src: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dst: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    proto: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    flags: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ack: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    len: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    icmp_type: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    icmp_code: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    icmp_id: Option<u16>,
    /// "accept", "drop", or "skip" for a frame without an IP packet.
    verdict: &'static str,
    reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state_before: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state_after: Option<String>,
    /// The packets the SYN proxy sends for this one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    answers: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ethertype: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<String>,
}

#[derive(Serialize)]
struct JsonConn {
    proto: String,
    src: String,
    dst: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    sport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    icmp_id: Option<u16>,
    state: String,
    end: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    expired_at: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    replaced_by: Option<u64>,
    first: u64,
    last: u64,
    packets: u64,
}

#[derive(Serialize)]
struct JsonConnections {
    seen: usize,
    in_table: usize,
    expired: usize,
    replaced: usize,
    removed: usize,
    /// Final state -> count, in order of first appearance.
    states: Ordered<String, u64>,
    list: Vec<JsonConn>,
}

#[derive(Serialize)]
struct JsonSummary {
    packets: u64,
    accepted: u64,
    dropped: u64,
    /// Of the dropped, those answered (`reject`); present only when some were.
    #[serde(skip_serializing_if = "is_zero")]
    rejected: u64,
    skipped: u64,
    duration: f64,
    out_of_order: u64,
    /// Present only when some were seen, so that captures without any give
    /// the same summary as before `--checksums auto`.
    #[serde(skip_serializing_if = "is_zero")]
    offloaded_checksums: u64,
    reasons: Ordered<&'static str, u64>,
    skip_reasons: Ordered<&'static str, u64>,
    connections: JsonConnections,
    complete: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Packets dropped and answered (`action = "reject"`), of the dropped ones.
fn rejected(s: &Summary) -> u64 {
    s.reasons
        .iter()
        .filter(|(r, _)| r.is_reject())
        .map(|(_, n)| n)
        .sum()
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

fn count_ends(conns: &[ConnRecord], name: &str) -> usize {
    conns.iter().filter(|c| c.end.name() == name).count()
}

fn final_states(conns: &[ConnRecord]) -> Vec<(String, u64)> {
    let mut states: Vec<(String, u64)> = Vec::new();
    for c in conns {
        let s = c.state.to_string();
        match states.iter_mut().find(|(k, _)| *k == s) {
            Some((_, n)) => *n += 1,
            None => states.push((s, 1)),
        }
    }
    states
}

impl<'w, 'p> Printer<'w, 'p> {
    pub fn new(
        out: &'w mut dyn Write,
        format: OutputFormat,
        quiet: bool,
        policy: &'p Policy,
    ) -> Printer<'w, 'p> {
        Printer {
            out,
            format,
            quiet,
            policy,
            capture: None,
            decimals: 6,
        }
    }

    /// A new capture starts (shown when several are replayed).
    pub fn capture(&mut self, path: &Path, _first: Option<u64>) -> io::Result<()> {
        self.capture = Some(path.display().to_string());
        if self.quiet || self.format != OutputFormat::Text {
            return Ok(());
        }
        writeln!(self.out, "== {} ==", path.display())
    }

    pub fn step(
        &mut self,
        step: &Step,
        decimals: u8,
        conns: &[ConnRecord],
        first: Option<u64>,
    ) -> io::Result<()> {
        self.decimals = self.decimals.max(decimals);
        if self.quiet {
            return Ok(());
        }
        match self.format {
            OutputFormat::Text => {
                let rel = relative(step.row.time.as_nanos(), first);
                for &i in &step.expired {
                    let c = &conns[i];
                    writeln!(
                        self.out,
                        "{:>5}  {}  expired: {}  {}  (packets {}-{})",
                        "--",
                        seconds(rel, decimals),
                        conn_text(c),
                        c.state,
                        c.first,
                        c.last
                    )?;
                }
                writeln!(self.out, "{}", self.text_row(&step.row, decimals, first))
            }
            OutputFormat::Jsonl => {
                let row = self.json_row(&step.row, decimals, first);
                serde_json::to_writer(&mut *self.out, &row)?;
                writeln!(self.out)
            }
        }
    }

    fn rule_name(&self, rule: Option<u16>) -> Option<&'p str> {
        rule.map(|i| self.policy.rule_name(i).unwrap_or("?"))
    }

    fn text_row(&self, row: &Row, decimals: u8, first: Option<u64>) -> String {
        let time = seconds(relative(row.time.as_nanos(), first), decimals);
        match &row.kind {
            RowKind::Packet {
                view,
                decision,
                answers,
            } => {
                let rule = match self.rule_name(decision.rule) {
                    Some(name) => format!(" rule={name}"),
                    None => String::new(),
                };
                let mut line = format!(
                    "{:>5}  {time}  {view}  {} {}{rule}  {}",
                    row.index,
                    decision.reason.verdict_name(),
                    decision.reason,
                    transition(decision)
                );
                // The SYN proxy's own packets, each on a line of its own.
                for a in answers.iter().flatten() {
                    line.push_str(&format!("\n{:>5}  {time}  {a}  sent by the SYN proxy", ""));
                }
                line
            }
            RowKind::Skipped(skip) => format!("{:>5}  {time}  skip {skip}", row.index),
        }
    }

    fn json_row(&self, row: &Row, decimals: u8, first: Option<u64>) -> JsonRow<'p> {
        let rel = relative(row.time.as_nanos(), first);
        let mut j = JsonRow {
            index: row.index,
            time: rel as f64 / 1e9,
            epoch: seconds(row.time.as_nanos() as i128, decimals),
            capture: self.capture.clone(),
            src: None,
            dst: None,
            sport: None,
            dport: None,
            proto: None,
            flags: None,
            seq: None,
            ack: None,
            len: None,
            icmp_type: None,
            icmp_code: None,
            icmp_id: None,
            verdict: "skip",
            reason: "",
            rule: None,
            state_before: None,
            state_after: None,
            answers: Vec::new(),
            ethertype: None,
            detail: None,
        };
        match &row.kind {
            RowKind::Packet {
                view,
                decision,
                answers,
            } => {
                fill_view(&mut j, view);
                j.answers = answers.iter().flatten().map(|a| a.to_string()).collect();
                // accept, drop, or reject (a drop answered with a RST or
                // an ICMP unreachable).
                j.verdict = decision.reason.verdict_name();
                j.reason = decision.reason.name();
                j.rule = self.rule_name(decision.rule);
                j.state_before = Some(decision.before.to_string());
                j.state_after = Some(decision.after.to_string());
            }
            RowKind::Skipped(skip) => {
                j.reason = skip.name();
                j.ethertype = skip.ethertype().map(|t| format!("0x{t:04x}"));
                j.detail = Some(skip.to_string());
            }
        }
        j
    }

    pub fn summary(
        &mut self,
        s: &Summary,
        first: Option<u64>,
        error: Option<&ReplayError>,
    ) -> io::Result<()> {
        match self.format {
            OutputFormat::Text => self.text_summary(s, first, error),
            OutputFormat::Jsonl => {
                let j = json_summary(s, first, error);
                serde_json::to_writer(&mut *self.out, &Ordered(vec![("summary", j)]))?;
                writeln!(self.out)
            }
        }
    }

    fn text_summary(
        &mut self,
        s: &Summary,
        first: Option<u64>,
        error: Option<&ReplayError>,
    ) -> io::Result<()> {
        let d = self.decimals;
        let out = &mut *self.out;
        // Rejected packets are dropped ones; named only when there are some.
        let rejected = match rejected(s) {
            0 => String::new(),
            n => format!(" ({n} rejected)"),
        };
        writeln!(
            out,
            "summary: {} packets in {} s: {} accepted, {} dropped{rejected}, {} skipped",
            s.packets,
            seconds(s.duration_ns as i128, d),
            s.accepted,
            s.dropped,
            s.skipped
        )?;
        for (reason, n) in s.reasons.iter() {
            let verdict = reason.verdict_name();
            writeln!(out, "  {verdict:<6}  {:<22} {n:>8}", reason.name())?;
        }
        for (name, n) in &s.skips {
            writeln!(out, "  {:<6}  {name:<22} {n:>8}", "skip")?;
        }
        if s.out_of_order > 0 {
            writeln!(
                out,
                "  {} packets had a timestamp earlier than a previous one (decided at the later time)",
                s.out_of_order
            )?;
        }
        if s.offloaded_checksums > 0 {
            writeln!(
                out,
                "  {} packets with offloaded checksums, not verified",
                s.offloaded_checksums
            )?;
        }
        let c = &s.connections;
        writeln!(
            out,
            "connections: {} seen: {} in the table at the end, {} expired, {} replaced, {} removed",
            c.len(),
            count_ends(c, "in_table"),
            count_ends(c, "expired"),
            count_ends(c, "replaced"),
            count_ends(c, "removed"),
        )?;
        if !c.is_empty() {
            let states: Vec<String> = final_states(c)
                .into_iter()
                .map(|(state, n)| format!("{state} {n}"))
                .collect();
            writeln!(out, "  final states: {}", states.join(", "))?;
        }
        for conn in c.iter().take(TEXT_CONNECTIONS) {
            let end = match conn.end {
                End::InTable => "in table".to_string(),
                End::Expired { at_ns } => {
                    format!("expired by {}", seconds(relative(at_ns, first), d))
                }
                End::Replaced { by } => format!("replaced by packet {by}"),
                End::Removed => "removed".to_string(),
            };
            writeln!(
                out,
                "  {}  {}  {end}  (packets {}-{}, {} seen)",
                conn_text(conn),
                conn.state,
                conn.first,
                conn.last,
                conn.packets
            )?;
        }
        if c.len() > TEXT_CONNECTIONS {
            writeln!(
                out,
                "  ... and {} more (--format jsonl lists them all)",
                c.len() - TEXT_CONNECTIONS
            )?;
        }
        if error.is_some() {
            writeln!(
                out,
                "replay stopped early: the capture could not be read to its end"
            )?;
        }
        Ok(())
    }
}

fn fill_view(j: &mut JsonRow<'_>, v: &PacketView) {
    j.src = v.src.map(|a| a.to_string());
    j.dst = v.dst.map(|a| a.to_string());
    j.sport = v.ports.map(|p| p.0);
    j.dport = v.ports.map(|p| p.1);
    j.proto = v.proto_name();
    if let Some(t) = &v.tcp {
        j.flags = Some(t.flags.to_string());
        j.seq = Some(t.seq);
        j.ack = Some(t.ack);
        j.len = t.len;
    }
    if let Some(i) = &v.icmp {
        j.icmp_type = Some(i.icmp_type);
        j.icmp_code = Some(i.code);
        j.icmp_id = i.id;
    }
}

fn json_summary(s: &Summary, first: Option<u64>, error: Option<&ReplayError>) -> JsonSummary {
    let c = &s.connections;
    let list = c
        .iter()
        .map(|r| {
            let icmp = matches!(r.protocol, wire::PROTO_ICMP | wire::PROTO_ICMPV6);
            JsonConn {
                proto: wire::protocol_name(r.protocol).into_owned(),
                src: r.originator.0.to_string(),
                dst: r.responder.0.to_string(),
                sport: r.has_ports().then_some(r.originator.1),
                dport: r.has_ports().then_some(r.responder.1),
                icmp_id: icmp.then_some(r.originator.1),
                state: r.state.to_string(),
                end: r.end.name(),
                expired_at: match r.end {
                    End::Expired { at_ns } => Some(relative(at_ns, first) as f64 / 1e9),
                    _ => None,
                },
                replaced_by: match r.end {
                    End::Replaced { by } => Some(by),
                    _ => None,
                },
                first: r.first,
                last: r.last,
                packets: r.packets,
            }
        })
        .collect();
    let states = final_states(c);
    JsonSummary {
        packets: s.packets,
        accepted: s.accepted,
        dropped: s.dropped,
        rejected: rejected(s),
        skipped: s.skipped,
        duration: s.duration_ns as f64 / 1e9,
        out_of_order: s.out_of_order,
        offloaded_checksums: s.offloaded_checksums,
        reasons: Ordered(
            s.reasons
                .iter()
                .map(|(r, n): (Reason, u64)| (r.name(), n))
                .collect(),
        ),
        skip_reasons: Ordered(s.skips.iter().map(|(k, v)| (*k, *v)).collect()),
        connections: JsonConnections {
            seen: c.len(),
            in_table: count_ends(c, "in_table"),
            expired: count_ends(c, "expired"),
            replaced: count_ends(c, "replaced"),
            removed: count_ends(c, "removed"),
            states: Ordered(states),
            list,
        },
        complete: error.is_none(),
        error: error.map(|e| e.to_string()),
    }
}
