//! Whole flows through one engine, with its promises checked after every
//! packet.
//!
//! `decide_sequence` feeds raw bytes, and random bytes seldom carry a valid
//! checksum: few of its packets get past parsing. Here the input is a list
//! of operations over eight fixed flows (IPv4 and IPv6, a client talking to
//! two ports, two clients of one server, an outside host, a host talking to
//! itself), in both directions: TCP segments with any flag byte, sequence
//! and acknowledgment numbers relative to what each side has sent so far
//! (or anywhere), windows, payload lengths and options (MSS, window scale,
//! SACK-permitted, timestamps, SACK blocks, a malformed one), each built
//! into a real IP packet whose checksums are right, deliberately wrong, or
//! left to the "not computed" framing, whole or cut to an NFQUEUE copy
//! range; UDP datagrams, ICMP echoes and ICMP errors on the same addresses;
//! waits with expiry, a restart from the saved table, a policy reload, the
//! kernel hand-off. The engine's settings (table and half-open limits, loose
//! pickup, short or default timeouts, adaptive timeouts), its policy
//! (accept all, or rules with per-source limits, a drop and a reject by
//! rule, an interface match, and a drop or reject default) and each
//! packet's input interface come from the input too.
//!
//! After every operation the target checks what the engine promises:
//! the parser reads back the fields that were written; a malformed packet
//! (bad checksum, a flag combination no stack sends) changes nothing; a
//! decision's states are the table's, before and after, and a rule it names
//! has its action; a drop by the state machine leaves its connection exactly
//! as it was, and an accept that changes no state leaves its timeout alone;
//! a new connection starts with its one packet counted, tracked packets add
//! up per direction; without loose pickup no TCP packet but a SYN opens a
//! connection; a packet touches no other connection than its own, but for
//! early drop's evictions; the table's counters (entries, half-open,
//! per-source) match its contents and its limits; expiry removes exactly
//! the expired entries, a restart restores exactly the unexpired ones, and
//! in the end everything expires.
//!
//! Packets decided, by reason, and the TCP state pairs reached are printed
//! when the process exits (`tcp_flows: ...`).
//!
//! A state file the engine has just written must load (it once did not,
//! after a restored side had been re-anchored: this target found it).
#![no_main]

use conntrackd::config::Config;
use conntrackd::conntrack::sources::Sources;
use conntrackd::conntrack::tcp::EndpointState;
use conntrackd::conntrack::{ConnState, Role, Timeouts};
use conntrackd::engine::settings::Adaptive;
use conntrackd::engine::{ConnInfo, Context, Layout};
use conntrackd::policy::{Action, Interfaces, Policy};
use conntrackd::wire::{self, build, Checksums, Framing, TcpFlags, TcpSegment, Transport};
use conntrackd::wire::{SeqNum, SynOptions};
use conntrackd::{Decision, Engine, EngineSettings, Reason, Timestamp, Verdict};
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

// ---- the input ----

#[derive(Debug)]
struct Input {
    setup: Setup,
    ops: Vec<Op>,
}

/// The setup, then operations until the bytes run out (no length or
/// continuation bytes: every byte the fuzzer adds is a little more flow).
impl<'a> Arbitrary<'a> for Input {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        let setup = Setup::arbitrary(u)?;
        let mut ops = Vec::new();
        while !u.is_empty() {
            ops.push(Op::arbitrary(u)?);
        }
        Ok(Input { setup, ops })
    }

    fn arbitrary_take_rest(mut u: arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        Self::arbitrary(&mut u)
    }
}

#[derive(Arbitrary, Debug)]
struct Setup {
    /// 1 to 8 (there are eight flows: the table can fill).
    max_connections: u8,
    /// 1 to 8.
    max_half_open: u8,
    loose_pickup: bool,
    short_timeouts: bool,
    adaptive: bool,
    /// Accept all, or the rules with a drop or a reject default (modulo 3).
    policy: u8,
    /// Each side's first sequence number is derived from this one.
    isn: u32,
    start_secs: u16,
}

/// One operation; `kind` picks what it is (mostly a TCP segment), the other
/// fields are read as that kind needs them.
#[derive(Arbitrary, Debug)]
struct Op {
    kind: u8,
    /// Index into `FLOWS` (modulo).
    flow: u8,
    /// From the flow's server to its client.
    reply: bool,
    /// The input interface (modulo `IFACES`).
    iface: u8,
    /// Time before the operation, in steps of 1/16 s.
    step: u8,
    seg: Segment,
    extra: u16,
}

/// Each field is read so that zero bytes give the plain packet: an ACK at
/// the next sequence number acknowledging all the other side sent, with a
/// full window, no payload, and a right checksum.
#[derive(Arbitrary, Debug, Clone, Copy)]
struct Segment {
    flags: Flags,
    /// Relative to what this side has sent.
    seq: Rel,
    /// Relative to what the other side has sent.
    ack: Rel,
    /// Subtracted from 65535.
    window_less: u16,
    payload: Len,
    options: Options,
    check: Check,
}

#[derive(Debug, Clone, Copy)]
enum Flags {
    /// One of the combinations a stack sends (modulo their number), with
    /// the PSH, ECE and CWR bits of the byte.
    Valid(u8),
    /// Any byte: the combinations no stack sends are exercised too.
    Raw(u8),
}

impl<'a> Arbitrary<'a> for Flags {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        let (mode, bits): (u8, u8) = u.arbitrary()?;
        Ok(if mode < 192 {
            Flags::Valid(bits)
        } else {
            Flags::Raw(bits)
        })
    }
}

impl Flags {
    fn byte(self) -> u8 {
        match self {
            Flags::Valid(b) => {
                let extra = b & (TcpFlags::PSH | TcpFlags::ECE | TcpFlags::CWR);
                VALID_CORES[usize::from(b) % VALID_CORES.len()] | extra
            }
            Flags::Raw(b) => b,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Rel {
    Next,
    Plus(u16),
    Minus(u16),
    Any(u32),
}

impl<'a> Arbitrary<'a> for Rel {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match u8::arbitrary(u)? {
            0..=127 => Rel::Next,
            128..=175 => Rel::Plus(u.arbitrary()?),
            176..=223 => Rel::Minus(u.arbitrary()?),
            _ => Rel::Any(u.arbitrary()?),
        })
    }
}

#[derive(Debug, Clone, Copy)]
enum Len {
    Zero,
    Small(u8),
    Large(u16),
}

impl<'a> Arbitrary<'a> for Len {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match u8::arbitrary(u)? {
            0..=127 => Len::Zero,
            128..=223 => Len::Small(u.arbitrary()?),
            _ => Len::Large(u.arbitrary()?),
        })
    }
}

#[derive(Arbitrary, Debug, Clone, Copy)]
struct Options {
    mss: Option<u16>,
    window_scale: Option<u8>,
    sack_permitted: bool,
    timestamps: Option<(u32, u32)>,
    /// SACK blocks (modulo 4), if they fit.
    sack_blocks: u8,
    /// A malformed option first: nothing after it is read.
    malformed: bool,
    /// IPv6 only: a Hop-by-Hop header before TCP.
    hop_by_hop: bool,
}

#[derive(Debug, Clone, Copy)]
enum Check {
    Valid,
    /// The TCP checksum is wrong.
    Corrupt,
    /// The framing says the checksum is not computed (and it is wrong).
    NotComputed,
    /// Only the headers and a few payload bytes are in the buffer.
    CopyRange,
}

impl<'a> Arbitrary<'a> for Check {
    fn arbitrary(u: &mut arbitrary::Unstructured<'a>) -> arbitrary::Result<Self> {
        Ok(match u8::arbitrary(u)? {
            0..=159 => Check::Valid,
            160..=191 => Check::Corrupt,
            192..=223 => Check::NotComputed,
            _ => Check::CopyRange,
        })
    }
}

// ---- the fixed world ----

/// (client, server) of each flow.
const FLOWS: [(&str, &str); 8] = [
    ("10.0.0.2:40000", "192.0.2.10:80"),
    ("10.0.0.2:40001", "192.0.2.10:80"),
    ("10.0.0.3:40000", "192.0.2.10:443"),
    ("203.0.113.7:51000", "10.0.0.2:22"),
    ("[2001:db8::2]:40000", "[2001:db8::10]:80"),
    ("[2001:db8::2]:40001", "[2001:db8::10]:80"),
    ("[fd00::7]:51000", "[2001:db8::2]:22"),
    // Both ends the same: both directions are one side of the key.
    ("10.0.0.2:5000", "10.0.0.2:5000"),
];

/// The rules of the two policies with rules (one drops what no rule
/// matches, the other rejects it): per-source limits on the web flows
/// (IPv4: one connection a source, over it the source is overloaded for
/// 20 s; IPv6: two, and one new connection a source in 30 s), a drop and a
/// reject by rule, an interface match, an ICMP type.
const RULES: &str = r#"
[[rule]]
name = "web"
action = "accept"
proto = "tcp"
dst = ["192.0.2.0/24"]
dst_ports = [80]
max_src_conn = 1
overload_secs = 20

[[rule]]
name = "web6"
action = "accept"
proto = "tcp"
dst = ["2001:db8::/32"]
dst_ports = [80]
max_src_conn = 2
max_src_conn_rate = "1/30"
overload_secs = 20

[[rule]]
name = "no-https"
action = "drop"
proto = "tcp"
src = ["10.0.0.3/32"]
dst_ports = [443]

[[rule]]
name = "ssh-vpn"
action = "accept"
proto = "tcp"
dst_ports = [22]
in_iface = "wg+"

[[rule]]
name = "ssh-in"
action = "reject"
proto = "tcp"
src = ["203.0.113.0/24"]
dst_ports = [22]

[[rule]]
name = "ping"
action = "accept"
proto = "icmp"
icmp_type = 8

[[rule]]
name = "lan-out"
action = "accept"
src = ["10.0.0.0/8", "2001:db8::/32"]
log = true
"#;

/// The most connections the rules let one source hold.
fn source_limit(addr: IpAddr) -> u32 {
    if addr.is_ipv4() {
        1
    } else {
        2
    }
}

/// Input interfaces a packet may come in on (`None`: not known).
const IFACES: [Option<&str>; 4] = [None, Some("eth0"), Some("wg0"), Some("wg1")];

/// Seconds a handed-off connection lives without queued packets.
const HAND_OFF_TIMEOUT: u32 = 600;
/// Seconds of mid-stream pickup after a restart from a periodic snapshot.
const CRASH_PICKUP: u64 = 30;
/// The wall clock at the engine's second 0 (state files carry it).
const UNIX_EPOCH_AT_ZERO: u64 = 1_800_000_000;

struct World {
    flows: [(SocketAddr, SocketAddr); 8],
    /// Accept all; the rules with a drop default; with a reject default.
    policies: [Policy; 3],
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let rules = |default: &str| {
            let text = format!("[policy]\ndefault = \"{default}\"\n{RULES}");
            Config::parse(&text, std::path::Path::new("tcp_flows.toml"))
                .expect("the rules compile")
                .policy
        };
        World {
            flows: FLOWS.map(|(c, s)| (c.parse().unwrap(), s.parse().unwrap())),
            policies: [Policy::allow_all(), rules("drop"), rules("reject")],
        }
    })
}

/// One of the three policies (modulo).
fn policy(which: u8) -> Policy {
    let policies = &world().policies;
    policies[usize::from(which) % policies.len()].clone()
}

fn short_timeouts() -> Timeouts {
    Timeouts {
        syn_sent: 4,
        syn_recv: 3,
        established: 40,
        fin_wait: 6,
        close_wait: 5,
        last_ack: 3,
        time_wait: 6,
        close: 2,
        unacknowledged: 10,
        udp_unreplied: 3,
        udp_replied: 8,
        icmp: 3,
        other: 9,
    }
}

// ---- what the run reached, printed at exit ----

static PACKETS: AtomicU64 = AtomicU64::new(0);
static REASONS: [AtomicU64; Reason::COUNT] = [const { AtomicU64::new(0) }; Reason::COUNT];
/// TCP (originator, responder) state pairs seen in the table: bit o*11+r.
static PAIRS: AtomicU64 = AtomicU64::new(0);
static PAIRS_HI: AtomicU64 = AtomicU64::new(0);
/// Restarts from a saved table.
static RESTARTS: AtomicU64 = AtomicU64::new(0);

extern "C" fn report() {
    let packets = PACKETS.load(Ordering::Relaxed);
    let mut reasons: Vec<String> = Reason::ALL
        .iter()
        .filter_map(|r| {
            let n = REASONS[r.index()].load(Ordering::Relaxed);
            (n > 0).then(|| format!("{r}={n}"))
        })
        .collect();
    reasons.sort();
    let (lo, hi) = (
        PAIRS.load(Ordering::Relaxed),
        PAIRS_HI.load(Ordering::Relaxed),
    );
    let mut pairs = Vec::new();
    for (i, o) in EndpointState::ALL.iter().enumerate() {
        for (j, r) in EndpointState::ALL.iter().enumerate() {
            let bit = i * 11 + j;
            let seen = if bit < 64 {
                lo >> bit
            } else {
                hi >> (bit - 64)
            };
            if seen & 1 == 1 {
                pairs.push(format!("{}:{}", o.abbrev(), r.abbrev()));
            }
        }
    }
    let reached = Reason::ALL
        .iter()
        .filter(|r| REASONS[r.index()].load(Ordering::Relaxed) > 0)
        .count();
    eprintln!(
        "tcp_flows: {packets} packets decided; {reached} of {} reasons; \
         {} of 121 TCP state pairs in the table; {} restarts from a saved table\n\
         tcp_flows: reasons {}\ntcp_flows: state pairs {}",
        Reason::COUNT,
        pairs.len(),
        RESTARTS.load(Ordering::Relaxed),
        reasons.join(" "),
        pairs.join(" ")
    );
}

fn note_pair(state: ConnState) {
    if let ConnState::Tcp(o, r) = state {
        let bit = o as u32 * 11 + r as u32;
        if bit < 64 {
            PAIRS.fetch_or(1 << bit, Ordering::Relaxed);
        } else {
            PAIRS_HI.fetch_or(1 << (bit - 64), Ordering::Relaxed);
        }
    }
}

extern "C" {
    fn atexit(f: extern "C" fn()) -> std::os::raw::c_int;
}

// ---- packets ----

fn add_sum(mut sum: u32, bytes: &[u8]) -> u32 {
    let mut chunks = bytes.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The flag combinations a correct stack sends (nf_conntrack's list, PSH,
/// ECE and CWR aside), written out here rather than asked of the crate.
const VALID_CORES: [u8; 9] = {
    const S: u8 = TcpFlags::SYN;
    const F: u8 = TcpFlags::FIN;
    const R: u8 = TcpFlags::RST;
    const A: u8 = TcpFlags::ACK;
    const U: u8 = TcpFlags::URG;
    // (The plain ACK first: it is what zero bytes give.)
    [A, S, S | A, F | A, R, R | A, A | U, S | U, F | A | U]
};

fn valid_flags(flags: u8) -> bool {
    let core = TcpFlags::SYN | TcpFlags::FIN | TcpFlags::RST | TcpFlags::ACK | TcpFlags::URG;
    VALID_CORES.contains(&(flags & core))
}

/// A TCP segment as a packet.
struct Built {
    framing: Framing,
    /// The whole packet's length (what the buffer holds may be less).
    wire_len: u32,
    /// What parsing must give: the segment, or the reason it is dropped.
    expect: Result<TcpSegment, Reason>,
}

fn build_tcp(
    out: &mut Vec<u8>,
    src: SocketAddr,
    dst: SocketAddr,
    seg: &Segment,
    seq: u32,
    ack: u32,
) -> Built {
    out.clear();
    let o = seg.options;
    // Options, each only if it fits the 40 bytes.
    let mut opts = [0u8; 40];
    let mut n = 0;
    let mut push = |bytes: &[u8]| {
        let fits = n + bytes.len() <= opts.len();
        if fits {
            opts[n..n + bytes.len()].copy_from_slice(bytes);
            n += bytes.len();
        }
        fits
    };
    if o.malformed {
        // An MSS option one byte long: the option list ends there.
        push(&[2, 1]);
    }
    let mut read = SynOptions::default();
    if let Some(mss) = o.mss {
        let [a, b] = mss.to_be_bytes();
        if push(&[2, 4, a, b]) {
            read.mss = Some(mss);
        }
    }
    if o.sack_permitted && push(&[4, 2]) {
        read.sack_permitted = true;
    }
    if let Some((val, ecr)) = o.timestamps {
        let mut ts = [0u8; 10];
        ts[0] = 8;
        ts[1] = 10;
        ts[2..6].copy_from_slice(&val.to_be_bytes());
        ts[6..].copy_from_slice(&ecr.to_be_bytes());
        push(&ts);
    }
    if let Some(shift) = o.window_scale {
        if push(&[1, 3, 3, shift]) {
            read.window_scale = Some(shift);
        }
    }
    let blocks = usize::from(o.sack_blocks % 4);
    if blocks > 0 {
        let mut sack = [0u8; 2 + 8 * 3];
        sack[0] = 5;
        sack[1] = (2 + 8 * blocks) as u8;
        for (i, edge) in sack[2..2 + 8 * blocks].chunks_exact_mut(4).enumerate() {
            edge.copy_from_slice(&ack.wrapping_add(1000 * i as u32 + 1).to_be_bytes());
        }
        push(&sack[..2 + 8 * blocks]);
    }
    if o.malformed {
        read = SynOptions::default();
    }
    let opt_len = n.div_ceil(4) * 4;
    let tcp_len = 20 + opt_len;
    let v6 = src.is_ipv6();
    let ext_len = if v6 && o.hop_by_hop { 8 } else { 0 };
    let ip_len = if v6 { 40 } else { 20 };
    let max_payload = 65_535 - 40 - 8 - 60;
    let payload = match seg.payload {
        Len::Zero => 0,
        Len::Small(b) => usize::from(b),
        Len::Large(w) => usize::from(w).min(max_payload),
    };
    // Large segments are cut as NFQUEUE's copy range cuts them.
    let cut = matches!(seg.check, Check::CopyRange) || payload > 1460;
    let captured = if cut { payload.min(16) } else { payload };
    let total = ip_len + ext_len + tcp_len + payload;

    match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.extend_from_slice(&[0x45, 0]);
            out.extend_from_slice(&(total as u16).to_be_bytes());
            out.extend_from_slice(&[0x12, 0x34, 0x40, 0, 64, wire::PROTO_TCP, 0, 0]);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
            let sum = fold(add_sum(0, &out[..20]));
            out[10..12].copy_from_slice(&sum.to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            out.extend_from_slice(&[0x60, 0, 0, 0]);
            out.extend_from_slice(&((ext_len + tcp_len + payload) as u16).to_be_bytes());
            out.push(if ext_len > 0 { 0 } else { wire::PROTO_TCP });
            out.push(64);
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
            if ext_len > 0 {
                // Next header TCP, length 0 (8 bytes), one PadN of 4.
                out.extend_from_slice(&[wire::PROTO_TCP, 0, 1, 4, 0, 0, 0, 0]);
            }
        }
        _ => unreachable!("every flow is of one family"),
    }
    let at = out.len();
    out.extend_from_slice(&src.port().to_be_bytes());
    out.extend_from_slice(&dst.port().to_be_bytes());
    out.extend_from_slice(&seq.to_be_bytes());
    out.extend_from_slice(&ack.to_be_bytes());
    out.extend_from_slice(&[(tcp_len / 4) as u8 * 16, seg.flags.byte()]);
    out.extend_from_slice(&(u16::MAX - seg.window_less).to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(&opts[..opt_len]);
    // The payload is zeros: it adds nothing to the checksum, which is then
    // right for the whole segment even when the buffer holds only its start.
    out.resize(out.len() + captured, 0);
    let l4_len = (tcp_len + payload) as u32;
    let pseudo = match (src.ip(), dst.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            let sum = add_sum(add_sum(0, &s.octets()), &d.octets());
            sum + u32::from(wire::PROTO_TCP) + l4_len
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            let sum = add_sum(add_sum(0, &s.octets()), &d.octets());
            sum + (l4_len >> 16) + (l4_len & 0xffff) + u32::from(wire::PROTO_TCP)
        }
        _ => unreachable!(),
    };
    let mut sum = fold(add_sum(pseudo, &out[at..at + tcp_len]));
    if matches!(seg.check, Check::Corrupt | Check::NotComputed) {
        sum ^= 0x0100;
    }
    out[at + 16..at + 18].copy_from_slice(&sum.to_be_bytes());

    let checksums = if matches!(seg.check, Check::NotComputed) {
        Checksums::NotComputed
    } else {
        Checksums::Verify
    };
    let verified = checksums == Checksums::Verify && !cut;
    let expect = if verified && matches!(seg.check, Check::Corrupt) {
        Err(Reason::BadChecksum)
    } else if !valid_flags(seg.flags.byte()) {
        let named = TcpFlags(seg.flags.byte()).validate();
        assert!(
            named.is_err(),
            "flags {:#04x} are not valid",
            seg.flags.byte()
        );
        Err(named.unwrap_err())
    } else {
        Ok(TcpSegment {
            src_port: src.port(),
            dst_port: dst.port(),
            flags: TcpFlags(seg.flags.byte()),
            seq: SeqNum(seq),
            ack: SeqNum(ack),
            window: u16::MAX - seg.window_less,
            payload_len: payload as u32,
            options: if seg.flags.byte() & TcpFlags::SYN != 0 {
                read
            } else {
                SynOptions::default()
            },
        })
    };
    Built {
        framing: Framing {
            wire_len: cut.then_some(total as u32),
            checksums,
        },
        wire_len: total as u32,
        expect,
    }
}

// ---- the model: what the target knows besides the engine ----

struct Model {
    engine: Engine,
    settings: EngineSettings,
    policy: u8,
    /// The interface of the packet being decided.
    iface: Option<&'static str>,
    /// Nanoseconds of the engine's clock.
    now: u64,
    /// Until this second, TCP is picked up mid-stream (after a restart from
    /// a periodic snapshot).
    pickup_until: u64,
    /// Per flow, per direction (0: from the client): the sequence number
    /// after the last byte that side has had accepted.
    next: [[u32; 2]; 8],
    /// The table, as last read.
    view: Vec<ConnInfo>,
    /// The connections the last restart brought back (see `identity`).
    restored: Vec<Identity>,
    buf: Vec<u8>,
}

fn layout() -> Layout {
    // Few shards: reading the whole table after every packet stays cheap.
    Layout {
        shards: 4,
        ..Layout::FIXED
    }
}

fn read_table(engine: &Engine) -> Vec<ConnInfo> {
    let mut view = Vec::with_capacity(8);
    engine.visit_connections(|c| view.push(c.clone()));
    view
}

fn find(view: &[ConnInfo], protocol: u8, a: (IpAddr, u16), b: (IpAddr, u16)) -> Option<&ConnInfo> {
    view.iter().find(|c| {
        c.protocol == protocol
            && ((c.originator == a && c.responder == b) || (c.originator == b && c.responder == a))
    })
}

/// A connection's ends and second of opening: another connection on the
/// same ends, opened later, is another one.
type Identity = (u8, (IpAddr, u16), (IpAddr, u16), u32);

fn identity(c: &ConnInfo) -> Identity {
    (c.protocol, c.originator, c.responder, c.opened_at_secs)
}

fn same_entry(x: &ConnInfo, y: &ConnInfo) -> bool {
    x.protocol == y.protocol && x.originator == y.originator && x.responder == y.responder
}

fn half_open(state: ConnState) -> bool {
    use EndpointState::*;
    matches!(state, ConnState::Tcp(o, r)
        if matches!(o, SynSent | SynRecv) || matches!(r, Listen | SynSent | SynRecv))
}

/// A bare SYN replaces such a connection (TIME_WAIT, or reset).
fn reopenable(state: ConnState) -> bool {
    use EndpointState::*;
    matches!(state, ConnState::Tcp(o, r)
        if o == TimeWait || r == TimeWait || (o == Closed && r == Closed))
}

/// Drops decided before any lookup: the packet is malformed.
fn stateless(reason: Reason) -> bool {
    use Reason::*;
    matches!(
        reason,
        Truncated
            | BadIpHeader
            | BadIpLength
            | BadExtensionHeader
            | BadTcpOffset
            | BadUdpLength
            | BadChecksum
            | Fragment
            | SynFin
            | SynRst
            | FinRst
            | Xmas
            | NullFlags
            | FinWithoutAck
            | UrgOnly
            | PshOnly
            | InvalidFlags
    )
}

/// Drops by the state machine of a tracked connection.
fn tracked_drop(reason: Reason) -> bool {
    use Reason::*;
    matches!(
        reason,
        BadTransition
            | SynAckBadAck
            | HandshakeBadAck
            | SeqAboveWindow
            | AckAboveSent
            | DataAfterFin
            | RstOutOfWindow
            | RstBehindAck
            | SynAckSeqMismatch
    )
}

/// Accepts that change no state and extend no timeout.
fn accepted_unchanged(reason: Reason) -> bool {
    use Reason::*;
    matches!(
        reason,
        OldRetransmission
            | DelayedAck
            | RstChallenged
            | TcpIgnored
            | ChallengeAck
            | ChallengeAckRst
            | WindowOvershoot
    )
}

/// Refusals of a new connection (by the policy or for want of room), and
/// packets that have no connection.
fn refused(reason: Reason) -> bool {
    use Reason::*;
    matches!(
        reason,
        NoConnection
            | DropByRule
            | DropByDefault
            | RejectByRule
            | RejectByDefault
            | TableFull
            | HalfOpenLimit
            | SourceConnLimit
            | SourceRateLimit
            | SourceOverloaded
    )
}

/// One packet's facts, for the checks.
struct Sent {
    protocol: u8,
    src: (IpAddr, u16),
    dst: (IpAddr, u16),
    /// The whole packet's bytes.
    len: u32,
    /// TCP flags (0 for other protocols).
    flags: u8,
    tcp: bool,
    /// What parsing must give (`Err`: a stateless drop).
    parse: Result<(), Reason>,
}

impl Sent {
    fn bare_syn(&self) -> bool {
        self.tcp && self.flags & TcpFlags::SYN != 0 && self.flags & TcpFlags::ACK == 0
    }
    fn has(&self, bits: u8) -> bool {
        self.tcp && self.flags & bits != 0
    }
}

impl Model {
    fn new(setup: &Setup) -> Model {
        let settings = EngineSettings {
            max_connections: 1 + usize::from(setup.max_connections % 8),
            max_half_open: 1 + usize::from(setup.max_half_open % 8),
            loose_pickup: setup.loose_pickup,
            timeouts: if setup.short_timeouts {
                short_timeouts()
            } else {
                Timeouts::default()
            },
            adaptive: if setup.adaptive {
                Adaptive::default()
            } else {
                Adaptive {
                    start: 1.0,
                    ..Adaptive::default()
                }
            },
        };
        let mut next = [[0u32; 2]; 8];
        for (f, sides) in next.iter_mut().enumerate() {
            for (d, n) in sides.iter_mut().enumerate() {
                *n = setup
                    .isn
                    .wrapping_add(0x9e37_79b9u32.wrapping_mul((2 * f + d + 1) as u32));
            }
        }
        Model {
            engine: Engine::with_layout(settings, policy(setup.policy), layout()),
            settings,
            policy: setup.policy,
            iface: None,
            now: u64::from(setup.start_secs) * 1_000_000_000,
            pickup_until: 0,
            next,
            view: Vec::new(),
            restored: Vec::new(),
            buf: Vec::with_capacity(2048),
        }
    }

    fn now(&self) -> Timestamp {
        Timestamp::from_nanos(self.now)
    }

    fn secs(&self) -> u64 {
        self.now / 1_000_000_000
    }

    fn live<'v>(&self, c: Option<&'v ConnInfo>) -> Option<&'v ConnInfo> {
        c.filter(|c| u64::from(c.expires_at_secs) > self.secs())
    }

    fn decide(&self, bytes: &[u8], framing: Framing) -> Decision {
        let ctx = Context {
            framing,
            ifaces: Interfaces {
                input: self.iface,
                output: None,
            },
            // Hand-off is exercised through `Engine::hand_off` (see `hand_off`).
            hand_off: None,
        };
        let d = self.engine.decide(bytes, &ctx, self.now());
        PACKETS.fetch_add(1, Ordering::Relaxed);
        REASONS[d.reason.index()].fetch_add(1, Ordering::Relaxed);
        d
    }

    /// The table's counters against its contents and limits.
    fn check_table(&mut self) {
        let view = read_table(&self.engine);
        let table = self.engine.table();
        assert_eq!(table.len(), view.len(), "entry count");
        assert!(
            table.len() <= self.settings.max_connections,
            "over max_connections"
        );
        let half = view.iter().filter(|c| half_open(c.state)).count();
        assert_eq!(table.half_open(), half, "half-open count: {view:#?}");
        assert!(
            half <= self.settings.max_half_open,
            "over max_half_open: {view:#?}"
        );
        if let Some(sources) = table.sources_made() {
            check_sources(sources, &view);
        }
        for c in &view {
            note_pair(c.state);
        }
        self.view = view;
    }

    /// A decision against the table before and after its packet.
    fn check_decision(&self, before: &[ConnInfo], after: &[ConnInfo], p: &Sent, d: &Decision) {
        let r = d.reason;
        let now = self.secs();
        let prior = find(before, p.protocol, p.src, p.dst);
        let live = self.live(prior);
        let post = find(after, p.protocol, p.src, p.dst);
        let ctx = || format!("{r} {:?} {:?} {:?} {live:?} -> {post:?}", p.src, p.dst, d);

        // A rule is named exactly when a rule decided, and it is one whose
        // action is the decision's.
        let by_rule = matches!(
            r,
            Reason::NewByRule | Reason::DropByRule | Reason::RejectByRule
        );
        let by_default = matches!(
            r,
            Reason::NewByDefault | Reason::DropByDefault | Reason::RejectByDefault
        );
        if by_rule {
            let policy = self.engine.policy();
            let rule = &policy.rules[usize::from(d.rule.expect("a rule decided"))];
            let action = match r {
                Reason::NewByRule => Action::Accept,
                Reason::DropByRule => Action::Drop,
                _ => Action::Reject,
            };
            assert_eq!(rule.action, action, "{}", ctx());
            assert_eq!(rule.log, d.log, "{}", ctx());
            assert_eq!(d.generation, policy.generation);
        }
        if by_default
            || stateless(r)
            || tracked_drop(r)
            || accepted_unchanged(r)
            || r == Reason::Tracked
        {
            assert_eq!(d.rule, None, "{}", ctx());
        }

        if let Err(expected) = p.parse {
            // A malformed packet: dropped before any lookup, nothing changes.
            assert_eq!(r, expected, "{}", ctx());
            assert_eq!((d.before, d.after), (ConnState::None, ConnState::None));
            assert_eq!(before, after, "a malformed packet changed the table");
            return;
        }
        assert!(!stateless(r), "{}", ctx());

        // The decision's states are the table's.
        if d.before != ConnState::None {
            assert_eq!(live.map(|c| c.state), Some(d.before), "{}", ctx());
        }
        if let Some(c) = live {
            if !(p.bare_syn() && reopenable(c.state)) {
                assert_eq!(d.before, c.state, "{}", ctx());
            }
        }
        match post {
            Some(c) => assert_eq!(d.after, c.state, "{}", ctx()),
            // Gone: refused, or forgotten at a RST before any reply.
            None => assert!(
                d.after == ConnState::None || (r == Reason::Tracked && p.has(TcpFlags::RST)),
                "{}",
                ctx()
            ),
        }
        if d.verdict() == Verdict::Drop {
            assert!(
                after.len() <= before.len(),
                "a drop added an entry: {}",
                ctx()
            );
        } else {
            assert!(after.len() <= before.len() + 1, "{}", ctx());
        }

        // Counted per direction: [from the originator, from the responder].
        let counted = |c: &ConnInfo, base: Option<&ConnInfo>| {
            let mut t = base.map(|b| b.traffic).unwrap_or_default();
            let i = usize::from(c.originator != p.src);
            t.packets[i] += 1;
            t.bytes[i] += u64::from(p.len);
            assert_eq!(c.traffic, t, "traffic: {}", ctx());
        };

        if matches!(r, Reason::NewByRule | Reason::NewByDefault) {
            let c = post.unwrap_or_else(|| panic!("admitted but not tracked: {}", ctx()));
            assert_eq!(d.before, ConnState::None, "{}", ctx());
            assert_eq!(c.originator, p.src, "{}", ctx());
            assert_eq!(u64::from(c.opened_at_secs), now, "{}", ctx());
            assert!(u64::from(c.expires_at_secs) > now, "{}", ctx());
            counted(c, None);
            if p.tcp {
                let pickup = self.settings.loose_pickup || now < self.pickup_until;
                use EndpointState::*;
                if p.bare_syn() {
                    assert_eq!(c.state, ConnState::Tcp(SynSent, Listen), "{}", ctx());
                } else {
                    assert!(
                        pickup,
                        "a TCP packet but a SYN opened a connection: {}",
                        ctx()
                    );
                    assert!(!p.has(TcpFlags::SYN | TcpFlags::FIN | TcpFlags::RST));
                    assert_eq!(
                        c.state,
                        ConnState::Tcp(Established, Established),
                        "{}",
                        ctx()
                    );
                }
            }
        } else if refused(r) {
            assert!(post.is_none(), "refused yet tracked: {}", ctx());
            assert_eq!(d.after, ConnState::None, "{}", ctx());
        } else if tracked_drop(r) {
            let c = live.unwrap_or_else(|| panic!("no connection to judge: {}", ctx()));
            assert_eq!(post, Some(c), "a dropped packet changed its connection");
            assert_eq!(d.before, d.after, "{}", ctx());
        } else if accepted_unchanged(r) {
            let c = live.unwrap_or_else(|| panic!("no connection to pass: {}", ctx()));
            let n = post.unwrap_or_else(|| panic!("passed, then gone: {}", ctx()));
            assert_eq!(d.before, d.after, "{}", ctx());
            assert_eq!(
                n.expires_at_secs,
                c.expires_at_secs,
                "timeout moved: {}",
                ctx()
            );
            counted(n, Some(c));
        } else if r == Reason::Tracked {
            let c = live.unwrap_or_else(|| panic!("tracked without a connection: {}", ctx()));
            if let Some(n) = post {
                assert!(u64::from(n.expires_at_secs) > now, "{}", ctx());
                counted(n, Some(c));
            }
        } else {
            panic!("unexpected reason for this packet: {}", ctx());
        }

        // Without loose pickup, only a SYN opens a TCP connection.
        let pickup = self.settings.loose_pickup || now < self.pickup_until;
        if p.tcp && live.is_none() && !p.bare_syn() && !pickup {
            assert_eq!(r, Reason::NoConnection, "{}", ctx());
        }

        // No other connection changes; some go only to make room.
        let mine = |c: &ConnInfo| {
            c.protocol == p.protocol
                && ((c.originator == p.src && c.responder == p.dst)
                    || (c.originator == p.dst && c.responder == p.src))
        };
        for c in after.iter().filter(|c| !mine(c)) {
            assert!(before.contains(c), "another connection changed: {}", ctx());
        }
        let made_room = matches!(
            r,
            Reason::NewByRule | Reason::NewByDefault | Reason::TableFull | Reason::HalfOpenLimit
        );
        for c in before.iter().filter(|c| !mine(c)) {
            if !after.iter().any(|a| same_entry(a, c)) {
                assert!(made_room, "another connection went: {c:?} at {}", ctx());
            }
        }
    }

    fn run(&mut self, op: &Op) {
        self.now += u64::from(op.step) * (1_000_000_000 / 16);
        let flow = usize::from(op.flow) % FLOWS.len();
        self.iface = IFACES[usize::from(op.iface) % IFACES.len()];
        let (client, server) = world().flows[flow];
        let dir = if op.reply {
            Role::Responder
        } else {
            Role::Originator
        };
        let (src, dst) = if op.reply {
            (server, client)
        } else {
            (client, server)
        };
        match op.kind {
            0..=191 => self.tcp(flow, dir, src, dst, &op.seg),
            192..=207 => self.udp(src, dst, op.extra),
            208..=219 => self.echo(src, dst, client.port(), op.extra),
            220..=231 => self.icmp_error(flow, dir, src, dst, op.extra),
            232..=239 => self.wait(op.extra, op.reply),
            240..=243 => self.restart(op.reply, op.extra as u8),
            244..=247 => self.reload(op.extra as u8),
            248..=251 => self.hand_off(flow, dir, src, dst, &op.seg),
            _ => self.keep_handed_off(src, dst),
        }
    }

    fn seq_ack(&self, flow: usize, dir: Role, seg: &Segment) -> (u32, u32) {
        let rel = |base: u32, r: Rel| match r {
            Rel::Next => base,
            Rel::Minus(d) => base.wrapping_sub(u32::from(d)),
            Rel::Plus(d) => base.wrapping_add(u32::from(d)),
            Rel::Any(d) => base.wrapping_add(d),
        };
        (
            rel(self.next[flow][dir.index()], seg.seq),
            rel(self.next[flow][dir.other().index()], seg.ack),
        )
    }

    fn tcp(&mut self, flow: usize, dir: Role, src: SocketAddr, dst: SocketAddr, seg: &Segment) {
        let (seq, ack) = self.seq_ack(flow, dir, seg);
        let mut buf = std::mem::take(&mut self.buf);
        let built = build_tcp(&mut buf, src, dst, seg, seq, ack);
        // The parser reads back what was written.
        match (wire::parse(&buf, built.framing), &built.expect) {
            (Ok(p), Ok(want)) => {
                assert_eq!((p.src, p.dst), (src.ip(), dst.ip()));
                assert_eq!((p.protocol, p.len), (wire::PROTO_TCP, built.wire_len));
                assert_eq!(p.transport, Transport::Tcp(*want), "read back");
            }
            (Err(got), Err(want)) => assert_eq!(got, *want),
            (got, want) => panic!("parsed {got:?}, built {want:?}"),
        }
        let d = self.decide(&buf, built.framing);
        self.buf = buf;
        let before = std::mem::take(&mut self.view);
        self.check_table();
        let sent = Sent {
            protocol: wire::PROTO_TCP,
            src: (src.ip(), src.port()),
            dst: (dst.ip(), dst.port()),
            len: built.wire_len,
            flags: seg.flags.byte(),
            tcp: true,
            parse: built.expect.map(|_| ()),
        };
        self.check_decision(&before, &self.view, &sent, &d);
        if d.verdict() == Verdict::Accept {
            let payload = match built.expect {
                Ok(s) => s.seq_len(),
                Err(_) => unreachable!("accepted"),
            };
            let end = seq.wrapping_add(payload);
            let next = &mut self.next[flow][dir.index()];
            if (end.wrapping_sub(*next) as i32) > 0 {
                *next = end;
            }
        }
    }

    fn udp(&mut self, src: SocketAddr, dst: SocketAddr, extra: u16) {
        let payload = [0x5au8; 64];
        let bytes = build::udp(src, dst, &payload[..usize::from(extra % 64)]);
        let d = self.decide(&bytes, Framing::default());
        let before = std::mem::take(&mut self.view);
        self.check_table();
        let sent = Sent {
            protocol: wire::PROTO_UDP,
            src: (src.ip(), src.port()),
            dst: (dst.ip(), dst.port()),
            len: bytes.len() as u32,
            flags: 0,
            tcp: false,
            parse: Ok(()),
        };
        self.check_decision(&before, &self.view, &sent, &d);
    }

    fn echo(&mut self, src: SocketAddr, dst: SocketAddr, id: u16, extra: u16) {
        let request = extra & 1 == 0;
        let bytes = build::icmp_echo(src.ip(), dst.ip(), id, extra, request);
        let d = self.decide(&bytes, Framing::default());
        let before = std::mem::take(&mut self.view);
        self.check_table();
        let sent = Sent {
            protocol: if src.is_ipv4() {
                wire::PROTO_ICMP
            } else {
                wire::PROTO_ICMPV6
            },
            src: (src.ip(), id),
            dst: (dst.ip(), id),
            len: bytes.len() as u32,
            flags: 0,
            tcp: false,
            parse: Ok(()),
        };
        if !request {
            // A reply never opens a flow.
            assert!(
                !matches!(d.reason, Reason::NewByRule | Reason::NewByDefault),
                "an echo reply opened a flow"
            );
        }
        self.check_decision(&before, &self.view, &sent, &d);
    }

    /// An ICMP error quoting one of the flow's packets (TCP, or UDP when
    /// `extra` is odd), sent back to that packet's sender, or (`extra & 2`)
    /// on to its destination, where it relates to nothing.
    fn icmp_error(&mut self, flow: usize, dir: Role, src: SocketAddr, dst: SocketAddr, extra: u16) {
        let (protocol, quoted) = if extra & 1 == 0 {
            let seq = self.next[flow][dir.index()];
            let ack = self.next[flow][dir.other().index()];
            let q = build::tcp(src, dst).seq(seq).ack(ack).build();
            (wire::PROTO_TCP, q)
        } else {
            (wire::PROTO_UDP, build::udp(src, dst, b"quoted"))
        };
        let to_sender = extra & 2 == 0;
        let bytes = if to_sender {
            build::icmp_unreachable(dst.ip(), src.ip(), &quoted)
        } else {
            build::icmp_unreachable(src.ip(), dst.ip(), &quoted)
        };
        let d = self.decide(&bytes, Framing::default());
        let before = std::mem::take(&mut self.view);
        self.check_table();
        let quoted_conn = self.live(find(
            &before,
            protocol,
            (src.ip(), src.port()),
            (dst.ip(), dst.port()),
        ));
        // (A host talking to itself is the quoted packet's sender either way.)
        let back_to_sender = to_sender || src.ip() == dst.ip();
        match quoted_conn {
            Some(c) if back_to_sender => {
                assert_eq!(d.reason, Reason::Related);
                assert_eq!((d.before, d.after), (c.state, c.state));
            }
            _ => assert_eq!(d.reason, Reason::IcmpErrorUnrelated),
        }
        assert_eq!(before, self.view, "an ICMP error changed the table");
    }

    fn wait(&mut self, secs: u16, expire: bool) {
        self.now += u64::from(secs) * 1_000_000_000;
        if !expire {
            return;
        }
        let removed = self.engine.expire(self.now());
        let before = std::mem::take(&mut self.view);
        self.check_table();
        let now = self.secs();
        assert_eq!(removed, before.len() - self.view.len(), "expire's count");
        for c in &before {
            let kept = self.view.contains(c);
            assert_eq!(
                kept,
                u64::from(c.expires_at_secs) > now,
                "expiry of {c:?} at {now}"
            );
        }
    }

    /// Saves the table, starts a new engine `gap` seconds later and
    /// restores it there, as the daemon does across a restart.
    fn restart(&mut self, graceful: bool, gap: u8) {
        let saved_at = self.secs();
        let bytes = self
            .engine
            .save_state(self.now(), graceful, UNIX_EPOCH_AT_ZERO + saved_at);
        self.now += u64::from(gap) * 1_000_000_000;
        let now = self.secs();
        let engine = Engine::with_layout(self.settings, policy(self.policy), layout());
        let r = engine
            .restore_state(&bytes, self.now(), UNIX_EPOCH_AT_ZERO + now)
            .unwrap_or_else(|e| panic!("a state file just written does not load: {e}"));
        RESTARTS.fetch_add(1, Ordering::Relaxed);
        assert_eq!(r.graceful, graceful);
        assert_eq!((r.over_limit, r.duplicates), (0, 0));
        self.pickup_until = 0;
        if !graceful {
            self.pickup_until = now + CRASH_PICKUP;
            engine.allow_pickup_until(Timestamp::from_secs(self.pickup_until));
        }
        self.engine = engine;
        let before = std::mem::take(&mut self.view);
        self.check_table();
        assert_eq!(r.restored + r.expired, before.len() as u64);
        // Each connection with time left comes back, with that time less the gap.
        let mut restored = 0;
        for c in &before {
            let left = u64::from(c.expires_at_secs)
                .saturating_sub(saved_at)
                .saturating_sub(u64::from(gap));
            let back = find(&self.view, c.protocol, c.originator, c.responder);
            if left == 0 {
                assert!(back.is_none(), "expired, yet restored: {c:?}");
                continue;
            }
            restored += 1;
            let back = back.unwrap_or_else(|| panic!("not restored: {c:?}"));
            assert_eq!(
                (back.originator, back.state, back.windows),
                (c.originator, c.state, c.windows)
            );
            assert_eq!(u64::from(back.expires_at_secs), now + left);
        }
        assert_eq!(r.restored, restored);
        self.restored = self.view.iter().map(identity).collect();
    }

    fn reload(&mut self, which: u8) {
        let generation = self.engine.generation();
        self.engine.set_policy(policy(which));
        self.policy = which;
        assert_eq!(self.engine.generation(), generation.wrapping_add(1));
        let before = std::mem::take(&mut self.view);
        self.check_table();
        // A reload renumbers rules: only the rule names may change.
        assert_eq!(before.len(), self.view.len());
        for a in &before {
            let b = find(&self.view, a.protocol, a.originator, a.responder).expect("kept");
            assert_eq!((a.state, a.expires_at_secs), (b.state, b.expires_at_secs));
            assert_eq!((a.traffic, a.windows), (b.traffic, b.windows));
        }
    }

    fn hand_off(
        &mut self,
        flow: usize,
        dir: Role,
        src: SocketAddr,
        dst: SocketAddr,
        seg: &Segment,
    ) {
        let (seq, ack) = self.seq_ack(flow, dir, seg);
        let mut buf = std::mem::take(&mut self.buf);
        let built = build_tcp(&mut buf, src, dst, seg, seq, ack);
        let handed = self
            .engine
            .hand_off(&buf, built.framing, self.now(), HAND_OFF_TIMEOUT);
        self.buf = buf;
        let before = std::mem::take(&mut self.view);
        self.check_table();
        let (a, b) = ((src.ip(), src.port()), (dst.ip(), dst.port()));
        let post = find(&self.view, wire::PROTO_TCP, a, b);
        if !handed {
            assert_eq!(before, self.view, "a refused hand-off changed the table");
            return;
        }
        use EndpointState::Established;
        let prior = find(&before, wire::PROTO_TCP, a, b).expect("handed off a connection");
        let es = ConnState::Tcp(Established, Established);
        assert_eq!((prior.state, prior.originator), (es, a));
        assert!(built.expect.is_ok(), "handed off on a malformed packet");
        assert_eq!(
            seg.flags.byte() & (TcpFlags::SYN | TcpFlags::FIN | TcpFlags::RST),
            0
        );
        let post = post.expect("still tracked");
        assert_eq!(post.state, es);
        assert_eq!(
            u64::from(post.expires_at_secs),
            self.secs() + u64::from(HAND_OFF_TIMEOUT)
        );
    }

    fn keep_handed_off(&mut self, src: SocketAddr, dst: SocketAddr) {
        let (a, b) = ((src.ip(), src.port()), (dst.ip(), dst.port()));
        let kept = self
            .engine
            .keep_handed_off(a, b, self.now(), HAND_OFF_TIMEOUT);
        let before = std::mem::take(&mut self.view);
        self.check_table();
        if !kept {
            assert_eq!(before, self.view, "keep_handed_off changed the table");
            return;
        }
        let prior = find(&before, wire::PROTO_TCP, a, b).expect("kept a connection");
        let post = find(&self.view, wire::PROTO_TCP, a, b).expect("still tracked");
        use EndpointState::Established;
        assert_eq!(post.state, ConnState::Tcp(Established, Established));
        let want =
            (self.secs() + u64::from(HAND_OFF_TIMEOUT)).max(u64::from(prior.expires_at_secs));
        assert_eq!(u64::from(post.expires_at_secs), want);
    }

    /// Far in the future everything has expired, and every counter is back
    /// to zero.
    fn finish(&mut self) {
        let len = self.engine.table().len();
        let far = self.now() + std::time::Duration::from_secs(10_000_000);
        assert_eq!(self.engine.expire(far), len);
        assert_eq!(self.engine.table().len(), 0);
        assert_eq!(self.engine.table().half_open(), 0);
        if let Some(sources) = self.engine.table().sources_made() {
            for (client, server) in &world().flows {
                for end in [client, server] {
                    assert_eq!(sources.connections(end.ip()), 0, "{end} still counted");
                }
            }
        }
    }
}

/// Each source's counted connections: no more than it has in the table,
/// and no more than its limit.
fn check_sources(sources: &Sources, view: &[ConnInfo]) {
    for (client, server) in &world().flows {
        for end in [client.ip(), server.ip()] {
            let counted = sources.connections(end);
            let held = view.iter().filter(|c| c.originator.0 == end).count();
            assert!(
                counted as usize <= held,
                "{end}: {counted} counted, {held} held"
            );
            assert!(counted <= source_limit(end), "{end}: {counted} counted");
        }
    }
}

fuzz_target!(|input: Input| {
    static REPORT: std::sync::Once = std::sync::Once::new();
    REPORT.call_once(|| {
        // SAFETY: `report` is a plain function that only reads atomics.
        unsafe { atexit(report) };
    });
    let mut model = Model::new(&input.setup);
    model.check_table();
    for op in &input.ops {
        model.run(op);
    }
    model.finish();
});
