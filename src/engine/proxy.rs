//! The SYN proxy's part of deciding (see [`crate::synproxy`] for the
//! arithmetic).
//!
//! A new connection's SYN to a destination behind the proxy (a rule with
//! `synproxy = true`, or `[engine] synproxy` on) is dropped and answered
//! with a cookie SYN+ACK; nothing is kept. The client's ACK that brings the
//! cookie back makes the connection, tracked as if the client's SYN had
//! passed (the proxy's SYN to the server is that SYN), and the proxy sends
//! the server that SYN. The server's SYN+ACK is tracked and answered by the
//! proxy (an ACK to the server, which the tracker sees too, and the
//! server's window to the client); the connection is then ESTABLISHED and
//! every packet of it is translated between the two sequence spaces. The
//! tracker works in the server's space: a client's packet is translated
//! before it is judged, a server's after.
//!
//! The engine sends nothing: it says what to send and how to rewrite in
//! [`Answers`], which [`Engine::decide_with`] fills for the caller.

use super::settings::SynproxyMode;
use super::{Context, Decision, Engine};
use crate::conntrack::table::Proto;
use crate::conntrack::tcp::TcpConn;
use crate::conntrack::{Conn, ConnState, FlowKey, Role};
use crate::reason::{Reason, Verdict};
use crate::synproxy::cookie::{self, CookieData, KEY_MATERIAL_LEN};
use crate::synproxy::options::{read_segment, SegmentView, TcpOptions};
use crate::synproxy::translate::Translation;
use crate::synproxy::{
    CookieError, CookieKeys, LearnedOptions, Proxied, Segment, ServerOptionsCache, Tuple,
};
use crate::time::Timestamp;
use crate::wire::{Packet, SeqNum, SynOptions, TcpFlags, TcpSegment};
use arc_swap::ArcSwapOption;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Seconds the proxy waits for the server's SYN+ACK, sending its SYN again
/// at the client's packets, before it gives up and resets the client.
pub const OPENING_LIMIT_SECS: u64 = 15;
/// The SYN to a server goes again at most this often (TCP's first
/// retransmission timeout, RFC 6298): a client that sends fast while the
/// server is silent cannot make the proxy flood the server with SYNs.
pub const SYN_AGAIN_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// Servers whose handshake options the proxy remembers.
const LEARNED_SERVERS: usize = 4096;

/// What the caller sends and how it rewrites the packet when the SYN proxy
/// answers or translates (filled by [`Engine::decide_with`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Answers {
    /// Packets to send, in order: the cookie SYN+ACK; the SYN to the server;
    /// the ACK to the server and the window update to the client; a RST to
    /// the client.
    pub segments: [Option<Segment>; 2],
    /// The packet, when accepted, goes on rewritten by this.
    pub rewrite: Option<Rewrite>,
    /// Hand-off mode: this packet hands its proxied connection to the
    /// kernel, which is to translate it so (see
    /// [`super::Context::kernel_translates`]).
    pub hand_over: Option<Translation>,
    /// Hand-off mode: the packet is a proxied connection's that the
    /// kernel translates; it goes on as it is (no `rewrite`).
    pub left_to_kernel: bool,
    /// Hand-off mode: the packet is the server's RST of a connection the
    /// kernel translates, and the kernel's entry is to get this ISN first
    /// (with the translation's offsets): on a server's RST the kernel's SYN
    /// proxy hook sets the sequence offset anew, to `ISN + 1 - seq`, which
    /// this makes the connection's own.
    pub kernel_reset: Option<(Translation, u32)>,
}

impl Answers {
    pub fn clear(&mut self) {
        *self = Answers::default();
    }

    /// The packets to send.
    pub fn to_send(&self) -> impl Iterator<Item = &Segment> {
        self.segments.iter().flatten()
    }

    fn push(&mut self, segment: Segment) {
        if let Some(slot) = self.segments.iter_mut().find(|s| s.is_none()) {
            *slot = Some(segment);
        }
    }
}

/// A proxied connection's packet, rewritten into the other side's space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rewrite {
    pub translation: Translation,
    /// A server's packet for the client (else a client's for the server).
    pub to_client: bool,
}

impl Rewrite {
    /// Rewrites `packet` (IP header first) in place; whether a byte
    /// changed. The TCP checksum is updated incrementally.
    pub fn apply(&self, packet: &mut [u8]) -> Result<bool, crate::synproxy::TranslateError> {
        if self.to_client {
            self.translation.server_to_client(packet)
        } else {
            self.translation.client_to_server(packet)
        }
    }
}

/// The packet's bytes (to read its options), and where the answers go.
pub(super) struct Io<'a> {
    pub bytes: &'a [u8],
    pub answers: Option<&'a mut Answers>,
}

impl Io<'_> {
    fn answer(&mut self, segment: Segment) {
        if let Some(a) = self.answers.as_deref_mut() {
            a.push(segment);
        }
    }

    pub(super) fn rewrite(&mut self, rewrite: Rewrite) {
        if let Some(a) = self.answers.as_deref_mut() {
            a.rewrite = Some(rewrite);
        }
    }

    pub(super) fn leave_to_kernel(&mut self, reset: Option<(Translation, u32)>) {
        if let Some(a) = self.answers.as_deref_mut() {
            a.left_to_kernel = true;
            a.kernel_reset = reset;
        }
    }

    pub(super) fn hand_over(&mut self, translation: Translation) {
        if let Some(a) = self.answers.as_deref_mut() {
            a.hand_over = Some(translation);
        }
    }

    /// The proxy's view of the packet: from its bytes, or (bytes not given)
    /// from the parsed segment, without timestamps.
    fn view(&self, p: &Packet, seg: &TcpSegment) -> SegmentView {
        read_segment(self.bytes).unwrap_or(SegmentView {
            src: p.src,
            dst: p.dst,
            src_port: seg.src_port,
            dst_port: seg.dst_port,
            seq: seg.seq,
            ack: seg.ack,
            flags: seg.flags,
            window: seg.window,
            options: TcpOptions {
                mss: seg.options.mss,
                window_scale: seg.options.window_scale,
                sack_permitted: seg.options.sack_permitted,
                timestamps: None,
            },
            payload_len: seg.payload_len,
        })
    }
}

/// The proxy's engine-wide state.
pub(super) struct Proxy {
    /// None until the caller gives keys ([`Engine::set_cookie_keys`]): no
    /// cookie is made or accepted without them.
    keys: ArcSwapOption<CookieKeys>,
    /// Servers' handshake options; never waited for on the packet path.
    learned: Mutex<ServerOptionsCache>,
    /// The policy in force has a rule with `synproxy = true`.
    pub rules: AtomicBool,
    /// `adaptive`: on now.
    adaptive_on: AtomicBool,
}

impl Proxy {
    pub(super) fn new(settings: &super::EngineSettings, seed: u64, rules: bool) -> Proxy {
        let d = settings.synproxy_defaults;
        let defaults = LearnedOptions {
            mss: d.mss,
            window_scale: Some(d.wscale),
            sack_permitted: true,
            timestamps: true,
            ecn: false,
        };
        let mut key = [0u8; 16];
        key[..8].copy_from_slice(&seed.to_le_bytes());
        key[8..].copy_from_slice(&seed.rotate_left(17).to_le_bytes());
        Proxy {
            keys: ArcSwapOption::empty(),
            learned: Mutex::new(ServerOptionsCache::new(LEARNED_SERVERS, key, defaults)),
            rules: AtomicBool::new(rules),
            adaptive_on: AtomicBool::new(false),
        }
    }
}

/// What a proxied connection's packet needs before (or instead of) the
/// tracker's judgement.
pub(super) enum Step {
    /// The proxy decided it (a handshake step).
    Decided(Decision),
    /// The proxy decided it, and the connection goes.
    Remove(Decision),
    /// The tracker judges this (translated) segment; an accepted packet is
    /// rewritten so when the flag says so (else the kernel's entry does, see
    /// [`Translation::rewritten_here`]).
    Translate(TcpSegment, Rewrite, bool),
    /// No proxy state (never expected): judged as it is.
    Plain,
}

impl Engine {
    /// Gives the SYN proxy its cookie keys (32 random bytes): the first call
    /// sets them, each later one rotates them (cookies made with the keys
    /// before still check, until the next rotation). Without keys the proxy
    /// answers nothing and new connections are tracked as without it.
    pub fn set_cookie_keys(&self, material: [u8; KEY_MATERIAL_LEN]) {
        let next = match self.proxy.keys.load_full() {
            Some(k) => {
                let mut k = (*k).clone();
                k.rotate(material);
                k
            }
            None => CookieKeys::new(material),
        };
        self.proxy.keys.store(Some(Arc::new(next)));
    }

    /// Whether the SYN proxy may answer anything: a rule asks for it, or
    /// `[engine] synproxy` is not off.
    pub fn synproxy_configured(&self) -> bool {
        self.settings.synproxy != SynproxyMode::Off || self.proxy.rules.load(Ordering::Relaxed)
    }

    /// Whether the engine-wide mode proxies every accepted connection now
    /// (`adaptive`: on above `start` of the half-open limit, off again
    /// below `end`).
    fn proxy_everything(&self) -> bool {
        match self.settings.synproxy {
            SynproxyMode::Off => false,
            SynproxyMode::Always => true,
            SynproxyMode::Adaptive => {
                let a = self.settings.synproxy_adaptive;
                let fill =
                    self.table.half_open() as f64 / self.settings.max_half_open.max(1) as f64;
                let on = self.proxy.adaptive_on.load(Ordering::Relaxed);
                let now_on = if on { fill >= a.end } else { fill > a.start };
                if now_on != on {
                    self.proxy.adaptive_on.store(now_on, Ordering::Relaxed);
                }
                now_on
            }
        }
    }

    /// The adaptive mode is on (for status and metrics).
    pub fn synproxy_adaptive_on(&self) -> bool {
        self.proxy.adaptive_on.load(Ordering::Relaxed)
    }

    /// What the proxy tells a client of `server`: learned, else configured.
    /// Never waits: with the cache busy, the configured options.
    fn server_options(&self, server: std::net::IpAddr, port: u16) -> LearnedOptions {
        match self.proxy.learned.try_lock() {
            Ok(cache) => cache.options_for(server, port),
            Err(_) => self.configured_options(),
        }
    }

    fn configured_options(&self) -> LearnedOptions {
        let d = self.settings.synproxy_defaults;
        LearnedOptions {
            mss: d.mss,
            window_scale: Some(d.wscale),
            sack_permitted: true,
            timestamps: true,
            ecn: false,
        }
    }

    /// A TCP packet that belongs to no connection, to a destination behind
    /// the proxy: a SYN gets a cookie, an ACK is checked for one. `None`:
    /// not the proxy's to decide (the caller goes on as without it).
    ///
    /// Never inlined (nor `proxy_step`): their frames would grow the
    /// established path's, which never calls them.
    #[inline(never)]
    pub(super) fn proxy_new(
        &self,
        p: &Packet,
        seg: &TcpSegment,
        bare_syn: bool,
        ctx: &Context<'_>,
        now: Timestamp,
        io: &mut Io<'_>,
    ) -> Option<Decision> {
        let plain_ack = seg.flags.ack() && !seg.flags.syn() && !seg.flags.rst() && !seg.flags.fin();
        if !bare_syn && !plain_ack {
            return None;
        }
        let keys = self.proxy.keys.load_full()?;
        let (d, _, rule_proxies) = self.policy_match(p, ctx);
        if d.verdict() != Verdict::Accept {
            return None;
        }
        let tuple = Tuple {
            client: p.src,
            client_port: seg.src_port,
            server: p.dst,
            server_port: seg.dst_port,
        };
        if bare_syn {
            if !(rule_proxies || self.proxy_everything()) {
                return None;
            }
            let made = cookie::make(&keys, &tuple, seg.seq, seg.options.mss, now);
            if io.answers.is_some() {
                let syn = io.view(p, seg);
                let server = self.server_options(p.dst, seg.dst_port);
                io.answer(Segment::cookie_syn_ack(&syn, made.isn, &server, now));
            }
            return Some(Decision {
                reason: Reason::SynCookieSent,
                ..d
            });
        }
        // An ACK: ours to check only where the proxy may have sent cookies.
        if !(rule_proxies || self.settings.synproxy != SynproxyMode::Off) {
            return None;
        }
        let (key, side) = FlowKey::new(p.protocol, p.src, seg.src_port, p.dst, seg.dst_port);
        let data = match cookie::check(&keys, &tuple, seg.ack, seg.seq, now) {
            Ok(data) => data,
            // Not a cookie: perhaps a connection to pick up mid-stream.
            Err(_) if self.may_pick_up(&key, seg, now) => return None,
            Err(CookieError::Expired) => {
                return Some(Decision::stateless(Reason::SynCookieExpired))
            }
            Err(CookieError::Invalid) => {
                return Some(Decision::stateless(Reason::SynCookieInvalid))
            }
        };
        let ack = io.view(p, seg);
        let syn = Segment::server_syn(&ack, &data);
        // The tracker sees the proxy's SYN to the server as the client's.
        let tcp = TcpConn::from_syn(&TcpSegment {
            src_port: syn.src_port,
            dst_port: syn.dst_port,
            flags: syn.flags,
            seq: syn.seq,
            ack: SeqNum(0),
            window: syn.window,
            payload_len: 0,
            options: SynOptions {
                window_scale: syn.options.window_scale,
                mss: syn.options.mss,
                sack_permitted: syn.options.sack_permitted,
            },
        });
        let opening = Proxied::Opening {
            cookie: data,
            client_ack: ack,
            since: now,
            last_syn: now,
        };
        let d = self.open(key, side, Proto::Tcp(tcp), true, p, ctx, now, Some(opening))?;
        if d.verdict() != Verdict::Accept {
            return Some(d);
        }
        io.answer(syn);
        Some(Decision {
            reason: Reason::SynproxyOpening,
            ..d
        })
    }

    /// A packet of a connection the proxy opened, sent by `from`: the
    /// server's SYN+ACK and what comes while it is awaited are the proxy's;
    /// later packets are translated.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    pub(super) fn proxy_step(
        &self,
        conn: &mut Conn,
        key: &FlowKey,
        from: Role,
        seg: &TcpSegment,
        p: &Packet,
        now: Timestamp,
        io: &mut Io<'_>,
    ) -> Step {
        let Some(state) = self.table.proxied.get(key).map(|s| *s) else {
            return Step::Plain;
        };
        let (cookie, client_ack, since, last_syn) = match state {
            Proxied::Open(t) => {
                let mut s = *seg;
                if from == Role::Originator {
                    s.ack = t.ack_to_server(s.ack);
                    s.window = t.window_to_server(s.window);
                }
                let rewrite = Rewrite {
                    translation: t,
                    to_client: from == Role::Responder,
                };
                let (here, next) = t.rewritten_here(seg.flags.0);
                if next != t {
                    // (Under the entry's lock, as every change of it.)
                    self.table.proxied.insert(*key, Proxied::Open(next));
                }
                return Step::Translate(s, rewrite, here);
            }
            Proxied::Opening {
                cookie,
                client_ack,
                since,
                last_syn,
            } => (cookie, client_ack, since, last_syn),
        };
        let before = conn.state();
        let decided = |reason| Decision::without_rule(reason, before, before);
        match from {
            Role::Responder if seg.flags.syn() && seg.flags.ack() && !seg.flags.rst() => {
                let Proto::Tcp(mut tcp) = conn.proto else {
                    return Step::Plain;
                };
                let outcome = tcp.handle(Role::Responder, seg);
                if outcome.reason != Reason::Tracked {
                    // Never passed on: it is in the server's space, and the
                    // client was told another ISN.
                    let reason = match outcome.reason.verdict() {
                        Verdict::Drop => outcome.reason,
                        Verdict::Accept => Reason::BadTransition,
                    };
                    return Step::Decided(decided(reason));
                }
                let syn_ack = io.view(p, seg);
                let t = Translation::for_handshake(&cookie, &client_ack, &syn_ack);
                if let Ok(mut cache) = self.proxy.learned.try_lock() {
                    // What the server was offered (the proxy's SYN): what it
                    // leaves out of its answer says something only then.
                    let offered = Segment::server_syn(&client_ack, &cookie);
                    let ecn = offered.flags.has(TcpFlags::ECE | TcpFlags::CWR);
                    cache.learn_from_syn_ack(&offered.options, ecn, &syn_ack);
                }
                let ack = Segment::server_ack(&client_ack, &syn_ack, &t);
                // The tracker sees the proxy's ACK to the server as the client's.
                let _ = tcp.handle(
                    Role::Originator,
                    &TcpSegment {
                        src_port: ack.src_port,
                        dst_port: ack.dst_port,
                        flags: ack.flags,
                        seq: ack.seq,
                        ack: ack.ack,
                        window: ack.window,
                        payload_len: 0,
                        options: SynOptions::default(),
                    },
                );
                conn.proto = Proto::Tcp(tcp);
                conn.count(Role::Responder, p.len);
                // Not assured yet: the client's next packet makes it so,
                // charged to the client's per-source limits (`judge`).
                conn.set_timeout(now, tcp.timeout(&self.settings.timeouts));
                self.table.account_half_open(conn);
                self.table.proxied.insert(*key, Proxied::Open(t));
                io.answer(ack);
                io.answer(Segment::client_window_update(&client_ack, &syn_ack, &t));
                let after = conn.state();
                self.tell(false, before, after, key, conn, now);
                Step::Decided(Decision::without_rule(
                    Reason::SynproxyOpened,
                    before,
                    after,
                ))
            }
            // A server's RST refuses the proxy's SYN only if it acknowledges
            // it (as the tracker asks in SYN_SENT); any other is dropped.
            Role::Responder
                if seg.flags.rst() && (!seg.flags.ack() || seg.ack != cookie.client_isn + 1) =>
            {
                Step::Decided(decided(Reason::RstOutOfWindow))
            }
            Role::Responder if seg.flags.rst() => {
                // The server refused: the client, which believes its
                // connection open, is reset.
                io.answer(client_reset(&client_ack, &cookie));
                Step::Remove(Decision::without_rule(
                    Reason::SynproxyServerFailed,
                    before,
                    ConnState::None,
                ))
            }
            // Nothing else of the server's belongs before its SYN+ACK.
            Role::Responder => Step::Decided(decided(Reason::BadTransition)),
            // The client's RST ends it only at the sequence number it is at.
            Role::Originator if seg.flags.rst() && seg.seq != client_ack.seq => {
                Step::Decided(decided(Reason::RstOutOfWindow))
            }
            Role::Originator if seg.flags.rst() => {
                // The client gave up: its RST goes on (the server holds the
                // proxy's SYN in SYN_RECV), and so does the connection.
                Step::Remove(Decision::without_rule(
                    Reason::Tracked,
                    before,
                    ConnState::None,
                ))
            }
            Role::Originator
                if now.as_secs().saturating_sub(since.as_secs()) >= OPENING_LIMIT_SECS =>
            {
                io.answer(client_reset(&client_ack, &cookie));
                Step::Remove(Decision::without_rule(
                    Reason::SynproxyServerFailed,
                    before,
                    ConnState::None,
                ))
            }
            Role::Originator => {
                // The server has not answered: the SYN may have been lost.
                // (Under the entry's lock: no other packet of the connection
                // changes its proxy state meanwhile.)
                if now.saturating_since(last_syn) >= SYN_AGAIN_AFTER {
                    if let Some(mut state) = self.table.proxied.get_mut(key) {
                        if let Proxied::Opening { last_syn, .. } = &mut *state {
                            *last_syn = now;
                        }
                    }
                    io.answer(Segment::server_syn(&client_ack, &cookie));
                }
                Step::Decided(decided(Reason::SynproxyWaiting))
            }
        }
    }
}

/// A RST to the client of a connection the proxy could not open, in the
/// client's space (it was told the cookie as the server's ISN).
fn client_reset(client_ack: &SegmentView, cookie: &CookieData) -> Segment {
    Segment {
        src: client_ack.dst,
        dst: client_ack.src,
        src_port: client_ack.dst_port,
        dst_port: client_ack.src_port,
        seq: cookie.isn + 1,
        ack: client_ack.seq,
        flags: TcpFlags(TcpFlags::RST | TcpFlags::ACK),
        window: 0,
        options: TcpOptions::default(),
    }
}
