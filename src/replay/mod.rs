//! Offline replay: `conntrackd replay --rules FILE CAPTURE...`.
//!
//! Every frame of the captures goes through one [`Engine`], the same the
//! daemon runs, with the capture's timestamps as the clock: the clock never
//! goes back (an out-of-order frame is decided at the latest time seen), and
//! `Engine::expire` runs each time it enters a new second, so timeouts and
//! TIME_WAIT behave as they did on the wire. The output depends only on the
//! captures and the rules.
//!
//! Checksums: the daemon has the kernel's word on whether a packet's checksum
//! is final (NFQA_SKB_INFO); a capture has none. A capture taken on a sending
//! host with checksum offload holds that host's packets with only the
//! pseudo-header sum in the TCP/UDP checksum field. [`ChecksumMode::Auto`]
//! (the default) recognises that value ([`wire::offloaded_checksum`]) and
//! judges such a packet as the daemon judges a `CHECKSUM_PARTIAL` one,
//! without its checksum, counting it in [`Summary::offloaded_checksums`];
//! any other wrong checksum is still a `bad_checksum` drop.
//!
//! The library side ([`Replayer`], [`replay_packets`], [`replay_capture`])
//! serves tests that compare the live path with a replay.

pub mod book;
pub mod capture;
pub mod link;
mod output;
mod sink;
pub mod view;

pub use book::{ConnRecord, End};
pub use capture::{Capture, Frame};
pub use link::Skip;
pub use view::PacketView;

use crate::engine::{Context, Decision, Engine};
use crate::policy::Interfaces;
use crate::reason::{Counters, Reason, Verdict};
use crate::rules_file;
use crate::time::Timestamp;
use crate::wire::{self, Checksums, Framing};
use book::ConnBook;
use link::Decoded;
use output::Printer;
use sink::Sink;
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// One line per packet, for people.
    #[default]
    Text,
    /// One JSON object per packet, then {"summary": {...}}.
    Jsonl,
}

/// How replay treats checksums.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ChecksumMode {
    /// Verify every TCP/UDP/ICMP checksum: an unfinished one is a bad_checksum drop.
    Verify,
    /// Verify, except that a TCP/UDP checksum holding only the pseudo-header
    /// sum (what a sending host with checksum offload leaves for its NIC) is
    /// not verified: the packet is judged without it, and counted.
    #[default]
    Auto,
    /// Verify no checksum.
    Off,
}

impl From<Checksums> for ChecksumMode {
    /// `Verify` verifies every checksum, `NotComputed` none.
    fn from(c: Checksums) -> ChecksumMode {
        match c {
            Checksums::Verify => ChecksumMode::Verify,
            Checksums::NotComputed => ChecksumMode::Off,
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ReplayArgs {
    /// Rules file [default: /etc/conntrackd/rules.toml].
    #[arg(long, value_name = "FILE")]
    pub rules: Option<PathBuf>,
    /// Capture files (pcap or pcapng), replayed in order through one engine.
    #[arg(required = true)]
    pub captures: Vec<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
    /// Print only the summary.
    #[arg(long, short)]
    pub quiet: bool,
    /// Write the dropped packets to this file (pcap; pcapng if the name ends in .pcapng).
    #[arg(long, value_name = "OUT.pcap")]
    pub write_dropped: Option<PathBuf>,
    /// Write the accepted packets to this file (pcap; pcapng if the name ends in .pcapng).
    #[arg(long, value_name = "OUT.pcap")]
    pub write_accepted: Option<PathBuf>,
    /// Which checksums to verify. A capture taken on a host that offloads
    /// checksums to its NIC holds that host's packets with unfinished ones.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = ChecksumMode::Auto)]
    pub checksums: ChecksumMode,
    /// Deprecated: the same as --checksums off.
    #[arg(long, conflicts_with = "checksums")]
    pub no_checksums: bool,
}

impl ReplayArgs {
    /// `--checksums`, or `off` for the old `--no-checksums`.
    pub fn checksum_mode(&self) -> ChecksumMode {
        if self.no_checksums {
            ChecksumMode::Off
        } else {
            self.checksums
        }
    }
}

/// Why a replay stopped.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("cannot open {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: not a pcap or pcapng file ({detail})", path.display())]
    NotACapture { path: PathBuf, detail: String },
    #[error(
        "{}: unsupported link type {name}: replay reads Ethernet (with VLAN tags), raw IP, \
         Linux cooked (SLL, SLL2) and BSD loopback captures",
        path.display()
    )]
    UnsupportedLinkType { path: PathBuf, name: String },
    #[error(
        "{}: truncated capture: the file ends in the middle of {what} (after frame {after})",
        path.display()
    )]
    Truncated {
        path: PathBuf,
        /// Frames of this file read before the error.
        after: u64,
        what: String,
    },
    #[error("{}: corrupt capture after frame {after}: {detail}", path.display())]
    Corrupt {
        path: PathBuf,
        after: u64,
        detail: String,
    },
    #[error("{}: read error: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: {detail}", path.display())]
    Write { path: PathBuf, detail: String },
}

/// The SYN proxy's cookie keys in a replay (see `replay`'s use).
pub const REPLAY_COOKIE_KEYS: [u8; 32] = *b"conntrackd replay cookie keys 32";

/// What happened to one frame.
// One row at a time lives (a step): its size does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RowKind {
    /// An IP packet, and the engine's decision.
    Packet {
        view: PacketView,
        decision: Decision,
        /// What the SYN proxy would send for it (each shown as a line of its own).
        answers: [Option<PacketView>; 2],
    },
    /// A frame that carries no IP packet, not shown to the engine.
    Skipped(Skip),
}

/// One frame of a replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    /// 1-based, counting every frame of every capture in order (for a single
    /// capture, Wireshark's frame number).
    pub index: u64,
    /// The frame's own timestamp (nanoseconds since the Unix epoch).
    pub time: Timestamp,
    pub kind: RowKind,
}

impl Row {
    pub fn decision(&self) -> Option<&Decision> {
        match &self.kind {
            RowKind::Packet { decision, .. } => Some(decision),
            RowKind::Skipped(_) => None,
        }
    }

    /// `None` for a skipped frame.
    pub fn verdict(&self) -> Option<Verdict> {
        self.decision().map(|d| d.verdict())
    }
}

/// One frame's result, with the connections that expired just before it.
#[derive(Clone, Debug)]
pub struct Step {
    /// Indices into [`Replayer::connections`], in the order they were opened.
    pub expired: Vec<usize>,
    pub row: Row,
}

/// The totals of a replay.
#[derive(Clone, Debug)]
pub struct Summary {
    pub packets: u64,
    pub accepted: u64,
    pub dropped: u64,
    pub skipped: u64,
    pub reasons: Counters,
    /// Skip reasons and counts, by name.
    pub skips: BTreeMap<&'static str, u64>,
    pub connections: Vec<ConnRecord>,
    /// Frames whose timestamp was earlier than the latest one before them.
    pub out_of_order: u64,
    /// Packets judged without verifying their checksum because it was only
    /// the pseudo-header sum (`--checksums auto`).
    pub offloaded_checksums: u64,
    /// From the first frame's time to the latest time seen.
    pub duration_ns: u64,
}

/// Drives an engine with frames and timestamps, and keeps the books.
pub struct Replayer<'e> {
    engine: &'e Engine,
    checksums: ChecksumMode,
    /// The engine's clock: the latest frame time seen (ns).
    clock: Option<u64>,
    first_ns: Option<u64>,
    /// The second `Engine::expire` last ran in.
    expired_in: Option<u64>,
    index: u64,
    counters: Counters,
    skips: BTreeMap<&'static str, u64>,
    out_of_order: u64,
    offloaded_checksums: u64,
    book: ConnBook,
}

impl<'e> Replayer<'e> {
    /// `checksums`: a [`ChecksumMode`], or a [`Checksums`] (`Verify`, as the
    /// daemon does; `NotComputed`, the same as [`ChecksumMode::Off`]).
    pub fn new(engine: &'e Engine, checksums: impl Into<ChecksumMode>) -> Replayer<'e> {
        Replayer {
            engine,
            checksums: checksums.into(),
            clock: None,
            first_ns: None,
            expired_in: None,
            index: 0,
            counters: Counters::default(),
            skips: BTreeMap::new(),
            out_of_order: 0,
            offloaded_checksums: 0,
            book: ConnBook::default(),
        }
    }

    pub fn engine(&self) -> &Engine {
        self.engine
    }

    /// Every connection seen so far, in the order they were opened.
    pub fn connections(&self) -> &[ConnRecord] {
        self.book.records()
    }

    /// Time of the first frame (ns since the epoch).
    pub fn first_ns(&self) -> Option<u64> {
        self.first_ns
    }

    /// Moves the clock to `ts_ns` (never back) and expires connections when
    /// it enters a new second (the table keeps whole seconds).
    fn advance(&mut self, ts_ns: u64) -> (Timestamp, Vec<usize>) {
        self.index += 1;
        self.first_ns.get_or_insert(ts_ns);
        let now = match self.clock {
            Some(c) if ts_ns < c => {
                self.out_of_order += 1;
                c
            }
            _ => ts_ns,
        };
        self.clock = Some(now);
        let now = Timestamp::from_nanos(now);
        let mut expired = Vec::new();
        if self.expired_in != Some(now.as_secs()) {
            self.expired_in = Some(now.as_secs());
            if self.engine.expire(now) > 0 {
                expired = self.book.expired(self.engine, now.as_nanos());
            }
        }
        (now, expired)
    }

    /// One IP packet (bytes from the IP header on). `wire_len`: its real
    /// length when the capture kept only its first bytes.
    pub fn ip_packet(&mut self, ts_ns: u64, ip: &[u8], wire_len: Option<u32>) -> Step {
        let (now, expired) = self.advance(ts_ns);
        let checksums = match self.checksums {
            ChecksumMode::Verify => Checksums::Verify,
            ChecksumMode::Off => Checksums::NotComputed,
            ChecksumMode::Auto if wire::offloaded_checksum(ip, wire_len) => {
                // The sender's NIC completes it: judged as the daemon judges a
                // packet the kernel marks CHECKSUM_PARTIAL.
                self.offloaded_checksums += 1;
                Checksums::NotComputed
            }
            ChecksumMode::Auto => Checksums::Verify,
        };
        let ctx = Context {
            ifaces: Interfaces::default(),
            framing: Framing {
                wire_len,
                checksums,
            },
            ..Context::default()
        };
        let mut proxy = crate::engine::Answers::default();
        let decision = self.engine.decide_with(ip, &ctx, now, &mut proxy);
        let answers = proxy.segments.map(|s| {
            let mut buf = [0u8; crate::synproxy::options::SEGMENT_MAX];
            let n = s?.write(&mut buf).ok()?;
            Some(PacketView::of(&buf[..n], None))
        });
        self.counters.record(decision.reason);
        let view = PacketView::of(ip, wire_len);
        self.book.packet(self.index, &view, &decision);
        Step {
            expired,
            row: Row {
                index: self.index,
                time: Timestamp::from_nanos(ts_ns),
                kind: RowKind::Packet {
                    view,
                    decision,
                    answers,
                },
            },
        }
    }

    /// A frame that carries no IP packet.
    pub fn skipped(&mut self, ts_ns: u64, skip: Skip) -> Step {
        let (_, expired) = self.advance(ts_ns);
        *self.skips.entry(skip.name()).or_default() += 1;
        Step {
            expired,
            row: Row {
                index: self.index,
                time: Timestamp::from_nanos(ts_ns),
                kind: RowKind::Skipped(skip),
            },
        }
    }

    /// One captured frame: its link layer is removed and the IP packet decided.
    pub fn frame(&mut self, frame: &Frame<'_>) -> Step {
        match frame.link.decode(frame.data) {
            Decoded::Ip { offset } => {
                let ip = &frame.data[offset..];
                let captured = frame.data.len() as u32;
                let wire_len = (captured < frame.orig_len).then(|| frame.orig_len - offset as u32);
                self.ip_packet(frame.ts_ns, ip, wire_len)
            }
            Decoded::Skip(skip) => self.skipped(frame.ts_ns, skip),
        }
    }

    /// The totals; marks which connections are still in the table.
    pub fn finish(&mut self) -> Summary {
        self.book.finish(self.engine);
        let accepted = self.counters.total(Verdict::Accept);
        let dropped = self.counters.total(Verdict::Drop);
        let skipped = self.skips.values().sum();
        Summary {
            packets: accepted + dropped + skipped,
            accepted,
            dropped,
            skipped,
            reasons: self.counters.clone(),
            skips: self.skips.clone(),
            connections: self.book.records().to_vec(),
            out_of_order: self.out_of_order,
            offloaded_checksums: self.offloaded_checksums,
            duration_ns: match (self.first_ns, self.clock) {
                (Some(a), Some(b)) => b.saturating_sub(a),
                _ => 0,
            },
        }
    }
}

/// Replays IP packets (bytes from the IP header on, as NFQUEUE delivers
/// them) through `engine` exactly as `conntrackd replay` does with a capture:
/// each packet's timestamp is the clock, `Engine::expire` runs as time
/// advances, checksums are verified, no interfaces are known. One row per
/// packet, in order.
pub fn replay_packets<'a, I>(engine: &Engine, packets: I) -> Vec<Row>
where
    I: IntoIterator<Item = (Timestamp, &'a [u8])>,
{
    let mut r = Replayer::new(engine, Checksums::Verify);
    packets
        .into_iter()
        .map(|(t, bytes)| r.ip_packet(t.as_nanos(), bytes, None).row)
        .collect()
}

/// Replays one capture file through `engine`: one row per frame (skipped
/// frames included). On a read error, the rows before it are lost; use
/// [`Replayer`] and [`Capture`] directly to keep them.
pub fn replay_capture(
    engine: &Engine,
    path: &Path,
    checksums: impl Into<ChecksumMode>,
) -> Result<Vec<Row>, ReplayError> {
    let mut capture = Capture::open(path)?;
    let mut r = Replayer::new(engine, checksums);
    let mut rows = Vec::new();
    while let Some(frame) = capture.next_frame() {
        rows.push(r.frame(&frame?).row);
    }
    Ok(rows)
}

/// The rules that name interfaces can never match a replayed packet.
fn interface_rules(engine: &Engine) -> Vec<String> {
    engine
        .policy()
        .rules
        .iter()
        .filter(|r| {
            let shown = r.to_string();
            shown.contains(" in=") || shown.contains(" out=")
        })
        .map(|r| r.name.clone())
        .collect()
}

pub fn run(args: ReplayArgs) -> ExitCode {
    let rules = match rules_file::path(args.rules.as_deref()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config = match rules_file::load(&rules) {
        Ok(c) => c,
        Err(e) => {
            for line in e.lines() {
                eprintln!("error: {line}");
            }
            return ExitCode::FAILURE;
        }
    };
    let engine = Engine::new(config.engine, config.policy.clone());
    // Fixed cookie keys: a replay's cookies are the same at every run (and
    // differ from any daemon's, whose keys are random).
    engine.set_cookie_keys(REPLAY_COOKIE_KEYS);
    let with_ifaces = interface_rules(&engine);
    if !with_ifaces.is_empty() {
        eprintln!(
            "note: rules {} name interfaces; a capture records none, so they never match in replay",
            with_ifaces.join(", ")
        );
    }
    let mut sinks = Vec::new();
    for (path, verdict) in [
        (&args.write_accepted, Verdict::Accept),
        (&args.write_dropped, Verdict::Drop),
    ] {
        if let Some(path) = path {
            match Sink::create(path, verdict) {
                Ok(s) => sinks.push(s),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
    }
    let checksums = args.checksum_mode();
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let policy = engine.policy();
    let mut printer = Printer::new(&mut out, args.format, args.quiet, &policy);
    let mut replayer = Replayer::new(&engine, checksums);

    let result = replay_files(&args.captures, &mut replayer, &mut printer, &mut sinks);
    let (error, io_error) = match result {
        Ok(()) => (None, None),
        Err(Stop::Replay(e)) => (Some(e), None),
        Err(Stop::Output(e)) => (None, Some(e)),
    };
    let summary = replayer.finish();
    let mut io_error = io_error;
    if io_error.is_none() {
        io_error = printer
            .summary(&summary, replayer.first_ns(), error.as_ref())
            .and_then(|()| out.flush())
            .err();
    }
    let mut failed = error.is_some();
    if let Some(e) = io_error {
        if e.kind() == io::ErrorKind::BrokenPipe {
            // `conntrackd replay ... | head`: the reader has seen enough.
            return ExitCode::SUCCESS;
        }
        eprintln!("error: writing the output: {e}");
        failed = true;
    }
    let first_link = sinks.iter().find_map(|s| s.link_hint());
    for sink in &mut sinks {
        if let Err(e) = sink.finish(first_link) {
            eprintln!("error: {e}");
            failed = true;
        }
    }
    if let Some(e) = &error {
        eprintln!("error: {e}");
    }
    let bad = summary.reasons.get(Reason::BadChecksum);
    if bad > 0 {
        match checksums {
            ChecksumMode::Verify => eprintln!(
                "hint: {bad} packet(s) dropped for bad_checksum. A capture taken on a host that \
                 offloads checksums to its NIC shows outgoing packets with unfinished checksums \
                 (only the pseudo-header sum); --checksums auto (the default) does not verify \
                 those, --checksums off verifies none."
            ),
            ChecksumMode::Auto => eprintln!(
                "hint: {bad} packet(s) dropped for bad_checksum: their checksums are wrong, and \
                 not the pseudo-header sum that checksum offload leaves. If the capture is known \
                 to hold unfinished checksums of another kind, replay it with --checksums off."
            ),
            ChecksumMode::Off => {}
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

enum Stop {
    Replay(ReplayError),
    Output(io::Error),
}

fn replay_files(
    paths: &[PathBuf],
    replayer: &mut Replayer<'_>,
    printer: &mut Printer<'_, '_>,
    sinks: &mut [Sink],
) -> Result<(), Stop> {
    let many = paths.len() > 1;
    for path in paths {
        let mut capture = Capture::open(path).map_err(Stop::Replay)?;
        for sink in sinks.iter_mut() {
            sink.template(capture.pcap_header());
        }
        if many {
            printer
                .capture(path, replayer.first_ns())
                .map_err(Stop::Output)?;
        }
        while let Some(frame) = capture.next_frame() {
            let frame = frame.map_err(Stop::Replay)?;
            let step = replayer.frame(&frame);
            printer
                .step(
                    &step,
                    frame.decimals,
                    replayer.connections(),
                    replayer.first_ns(),
                )
                .map_err(Stop::Output)?;
            if let Some(verdict) = step.row.verdict() {
                for sink in sinks.iter_mut().filter(|s| s.verdict() == verdict) {
                    sink.write(&frame).map_err(Stop::Replay)?;
                }
            }
        }
    }
    Ok(())
}

/// `NONE -> SYN_SENT:LISTEN`, or the state alone when it did not change.
pub fn transition(d: &Decision) -> String {
    if d.before == d.after {
        d.after.to_string()
    } else {
        format!("{} -> {}", d.before, d.after)
    }
}
