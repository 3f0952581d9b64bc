//! Traffic for the benchmarks and the memory measurement: many IPv4 TCP
//! connections, their handshakes, and an endless stream of valid data
//! segments for each of them.
//!
//! Shared by `benches/verdict.rs` and `examples/memory_per_conn.rs` (through
//! `#[path]`); not a bench target of its own (cargo only discovers
//! `benches/*.rs` and `benches/*/main.rs`).

#![allow(dead_code)]

use conntrackd::wire::build;
use conntrackd::wire::TcpFlags;
use conntrackd::{Context, Decision, Engine, Reason, Timestamp};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

/// Payload of every data segment, as the brief asks ("small payload").
pub const PAYLOAD: usize = 64;
/// Window field of data segments: Linux's usual 501 << 7 = 64128 bytes.
pub const DATA_WINDOW: u16 = 501;
/// Window scale both SYNs carry (Linux's usual).
pub const WSCALE: u8 = 7;

/// splitmix64: a cheap deterministic generator for ISNs and orders.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform-enough index below `n` (Lemire's multiply-shift).
    pub fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }
}

/// The `i`-th client endpoint: 10.0.0.0/8 addresses, 16 ports each, so up
/// to 2^28 distinct connections.
pub fn client(i: u32) -> SocketAddrV4 {
    let ip = 0x0a00_0000u32 | ((i >> 4) & 0x00ff_ffff);
    SocketAddrV4::new(Ipv4Addr::from(ip), 40_000 + (i & 15) as u16)
}

/// The server the `i`-th client talks to: one of 200 HTTPS servers.
pub fn server(i: u32) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 1 + (i % 200) as u8), 443)
}

/// One TCP connection as the two endpoints see it.
#[derive(Clone, Copy, Debug)]
pub struct Flow {
    pub client: SocketAddrV4,
    pub server: SocketAddrV4,
    /// Next sequence number each side sends (after the handshake).
    pub c_next: u32,
    pub s_next: u32,
    /// Whose turn it is to send the next data segment.
    client_turn: bool,
}

impl Flow {
    /// Connection `i`, with ISNs drawn from `i` (they differ per connection,
    /// and some streams cross the 2^32 wrap during a long run).
    pub fn new(i: u32) -> Flow {
        let mut r = Rng(0x5eed ^ ((i as u64) << 20));
        let isns = r.next_u64();
        Flow {
            client: client(i),
            server: server(i),
            c_next: isns as u32,
            s_next: (isns >> 32) as u32,
            client_turn: true,
        }
    }

    fn c2s(&self) -> build::Tcp {
        build::tcp(SocketAddr::V4(self.client), SocketAddr::V4(self.server))
    }

    fn s2c(&self) -> build::Tcp {
        build::tcp(SocketAddr::V4(self.server), SocketAddr::V4(self.client))
    }

    /// The client's SYN, with the options Linux sends.
    pub fn syn(&self) -> Vec<u8> {
        self.c2s()
            .flags(TcpFlags::SYN)
            .seq(self.c_next)
            .window(64240)
            .mss(1460)
            .sack_permitted()
            .window_scale(WSCALE)
            .build()
    }

    /// The same SYN with FIN set too: an invalid combination.
    pub fn syn_fin(&self) -> Vec<u8> {
        self.c2s()
            .flags(TcpFlags::SYN | TcpFlags::FIN)
            .seq(self.c_next)
            .window(64240)
            .build()
    }

    /// Runs the three-way handshake through `engine`, checking each answer.
    pub fn handshake(&mut self, engine: &Engine, ctx: &Context<'_>, now: Timestamp) {
        let syn = self.syn();
        let d = engine.decide(&syn, ctx, now);
        assert_eq!(d.reason, Reason::NewByDefault, "SYN of {self:?}: {d:?}");
        self.c_next = self.c_next.wrapping_add(1);
        let syn_ack = self
            .s2c()
            .flags(TcpFlags::SYN | TcpFlags::ACK)
            .seq(self.s_next)
            .ack(self.c_next)
            .window(65160)
            .mss(1460)
            .sack_permitted()
            .window_scale(WSCALE)
            .build();
        let d = engine.decide(&syn_ack, ctx, now);
        assert_eq!(d.reason, Reason::Tracked, "SYN+ACK of {self:?}: {d:?}");
        self.s_next = self.s_next.wrapping_add(1);
        let ack = self
            .c2s()
            .seq(self.c_next)
            .ack(self.s_next)
            .window(DATA_WINDOW)
            .build();
        let d = engine.decide(&ack, ctx, now);
        assert_eq!(d.reason, Reason::Tracked, "final ACK of {self:?}: {d:?}");
        assert!(
            d.after.to_string() == "ESTABLISHED:ESTABLISHED",
            "after the handshake of {self:?}: {d:?}"
        );
    }

    /// The client's pure ACK (no payload) of everything the server sent: it
    /// stays valid however often it is repeated.
    pub fn pure_ack(&self) -> Vec<u8> {
        self.c2s()
            .seq(self.c_next)
            .ack(self.s_next)
            .window(DATA_WINDOW)
            .build()
    }

    /// The next data segment: client and server take turns, each sending
    /// `PAYLOAD` new bytes (PSH|ACK) and acknowledging all the other sent.
    /// Written over `out`, which must hold a copy of [`Template`]'s bytes.
    pub fn next_data(&mut self, t: &Template, out: &mut [u8]) {
        let (src, dst, seq, ack) = if self.client_turn {
            (self.client, self.server, self.c_next, self.s_next)
        } else {
            (self.server, self.client, self.s_next, self.c_next)
        };
        t.write(out, src, dst, seq, ack);
        if self.client_turn {
            self.c_next = self.c_next.wrapping_add(PAYLOAD as u32);
        } else {
            self.s_next = self.s_next.wrapping_add(PAYLOAD as u32);
        }
        self.client_turn = !self.client_turn;
    }

    /// What `next_data` writes, built with `wire::build` (to check it).
    pub fn next_data_reference(&self) -> Vec<u8> {
        let b = if self.client_turn {
            self.c2s().seq(self.c_next).ack(self.s_next)
        } else {
            self.s2c().seq(self.s_next).ack(self.c_next)
        };
        b.flags(TcpFlags::ACK | TcpFlags::PSH)
            .window(DATA_WINDOW)
            .payload(&[0x5a; PAYLOAD])
            .build()
    }
}

/// An IPv4 PSH|ACK data segment built once with `wire::build`; `write`
/// patches addresses, ports, seq and ack and recomputes both checksums, so
/// that the benchmarks can produce fresh segments without allocating.
pub struct Template {
    bytes: Vec<u8>,
}

/// Offsets in an IPv4 packet without options followed by a 20-byte TCP header.
const IP_CSUM: usize = 10;
const IP_SRC: usize = 12;
const TCP: usize = 20;

fn fold(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn sum16(bytes: &[u8]) -> u64 {
    let mut sum = 0u64;
    let mut chunks = bytes.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_be_bytes([c[0], c[1]]) as u64;
    }
    if let [last] = chunks.remainder() {
        sum += (*last as u64) << 8;
    }
    sum
}

impl Template {
    pub fn new() -> Template {
        let f = Flow::new(0);
        let bytes = f.next_data_reference();
        assert_eq!(bytes.len(), TCP + 20 + PAYLOAD, "no IP or TCP options");
        Template { bytes }
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn write(&self, out: &mut [u8], src: SocketAddrV4, dst: SocketAddrV4, seq: u32, ack: u32) {
        out.copy_from_slice(&self.bytes);
        out[IP_SRC..IP_SRC + 4].copy_from_slice(&src.ip().octets());
        out[IP_SRC + 4..IP_SRC + 8].copy_from_slice(&dst.ip().octets());
        out[IP_CSUM..IP_CSUM + 2].fill(0);
        let ip_csum = fold(sum16(&out[..TCP]));
        out[IP_CSUM..IP_CSUM + 2].copy_from_slice(&ip_csum.to_be_bytes());
        out[TCP..TCP + 2].copy_from_slice(&src.port().to_be_bytes());
        out[TCP + 2..TCP + 4].copy_from_slice(&dst.port().to_be_bytes());
        out[TCP + 4..TCP + 8].copy_from_slice(&seq.to_be_bytes());
        out[TCP + 8..TCP + 12].copy_from_slice(&ack.to_be_bytes());
        out[TCP + 16..TCP + 18].fill(0);
        let tcp_len = (out.len() - TCP) as u64;
        let pseudo = sum16(&out[IP_SRC..IP_SRC + 8]) + 6 + tcp_len;
        let csum = fold(pseudo + sum16(&out[TCP..]));
        out[TCP + 16..TCP + 18].copy_from_slice(&csum.to_be_bytes());
    }
}

impl Default for Template {
    fn default() -> Self {
        Template::new()
    }
}

/// In which order a [`Stream`] visits its connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// 0, 1, 2, ... (a single connection: always the same one).
    RoundRobin,
    /// Uniformly random: table lookups miss the caches once the table is big.
    Random,
}

/// An endless stream of valid data segments over a set of established
/// connections, produced a batch at a time into reusable buffers.
pub struct Stream {
    pub flows: Vec<Flow>,
    template: Template,
    order: Order,
    next: usize,
    rng: Rng,
    /// The current batch.
    pub batch: Vec<Vec<u8>>,
}

impl Stream {
    pub fn new(flows: Vec<Flow>, order: Order, batch: usize) -> Stream {
        let template = Template::new();
        let batch = (0..batch).map(|_| template.bytes().to_vec()).collect();
        Stream {
            flows,
            template,
            order,
            next: 0,
            rng: Rng(0xfeed),
            batch,
        }
    }

    /// Writes the next `n` segments into `batch[..n]`.
    pub fn fill(&mut self, n: usize) -> &[Vec<u8>] {
        for slot in &mut self.batch[..n] {
            let i = match self.order {
                Order::RoundRobin => {
                    let i = self.next;
                    self.next = if i + 1 == self.flows.len() { 0 } else { i + 1 };
                    i
                }
                Order::Random => self.rng.below(self.flows.len()),
            };
            self.flows[i].next_data(&self.template, slot);
        }
        &self.batch[..n]
    }
}

/// `n` connections (numbered from `first`) taken through the handshake.
pub fn establish(
    engine: &Engine,
    ctx: &Context<'_>,
    now: Timestamp,
    first: u32,
    n: u32,
) -> Vec<Flow> {
    (first..first + n)
        .map(|i| {
            let mut f = Flow::new(i);
            f.handshake(engine, ctx, now);
            f
        })
        .collect()
}

/// Checks that the patched segments are exactly what `wire::build` makes and
/// that the engine accepts a long run of them as `Tracked`.
pub fn self_check(engine: &Engine, ctx: &Context<'_>, now: Timestamp, flows: &mut [Flow]) {
    let t = Template::new();
    let mut buf = t.bytes().to_vec();
    for f in flows.iter_mut().take(4) {
        for _ in 0..4 {
            let reference = f.next_data_reference();
            f.next_data(&t, &mut buf);
            assert_eq!(buf, reference, "patched segment differs from wire::build's");
            let d: Decision = engine.decide(&buf, ctx, now);
            assert_eq!(d.reason, Reason::Tracked, "{d:?}");
        }
    }
}
