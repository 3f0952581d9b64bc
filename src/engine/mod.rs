//! The decision: one packet in, accept or drop out, with the reason.
//!
//! `Engine::decide(bytes, context, now)` parses, validates flags, looks the
//! connection up, runs its state machine, consults the policy for new
//! connections, and answers. It reads no clock and touches no socket: the
//! NFQUEUE workers and the pcap replay are the only callers that do.

mod proxy;
pub mod settings;

pub use proxy::{Answers, Rewrite, OPENING_LIMIT_SECS, SYN_AGAIN_AFTER};
use proxy::{Io, Step};

use crate::conntrack::sources::{SourceLimits, SourceRefusal};
use crate::conntrack::state;
pub use crate::conntrack::state::StateError;
pub use crate::conntrack::table::Layout;
use crate::conntrack::table::{AdmittedBy, Change, Removal};
use crate::conntrack::table::{Full, Limits, Proto};
use crate::conntrack::tcp::TcpConn;
pub use crate::conntrack::tcp::Window;
pub use crate::conntrack::Traffic;
use crate::conntrack::{Conn, ConnState, FlowKey, Role, Side, Table};
use crate::policy::{Action, Interfaces, Policy};
use crate::reason::{Reason, Verdict};
use crate::time::Timestamp;
use crate::wire::{self, Embedded, Framing, IcmpKind, Packet, TcpSegment, Transport, PROTO_TCP};
use arc_swap::ArcSwap;
use dashmap::DashMap;
use settings::EngineSettings;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Hand-off mode: a proxied connection goes to the kernel once it has
/// carried this much (both ways). Handing it over costs three ctnetlink
/// requests and a new kernel entry, more than translating a short
/// connection's few packets here; a bulk transfer passes it within its
/// first super-packets.
pub const HAND_OVER_AFTER_BYTES: u64 = 64 << 10;

/// What the caller knows about a packet besides its bytes.
#[derive(Clone, Copy, Debug, Default)]
pub struct Context<'a> {
    pub ifaces: Interfaces<'a>,
    pub framing: Framing,
    /// Hand-off mode (see [`Engine::hand_off`]): seconds a connection handed
    /// to the kernel lives in the engine without queued packets. The
    /// decision hands an established connection off itself, under the
    /// lookup that decided the packet, and says so in
    /// [`Decision::handed_off`]. `None`: off.
    pub hand_off: Option<u32>,
    /// Hand-off mode with the SYN proxy: the caller can hand a proxied
    /// connection to the kernel, whose conntrack then translates it (see
    /// [`crate::synproxy::Translation::kernel_can`]). `Some(true)`: the
    /// kernel's SYN proxy hooks are there to translate timestamps too.
    /// `None`: proxied connections stay here. A decision that hands a
    /// proxied connection off (`handed_off`) still rewrites its packet
    /// ([`Answers::rewrite`]); the caller gives the kernel the translation
    /// before the verdict, or calls [`Engine::translate_here`].
    pub kernel_translates: Option<bool>,
}

/// The answer for one packet.
#[must_use]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub reason: Reason,
    /// Connection state before and after the packet (`NONE` when there is none).
    pub before: ConnState,
    pub after: ConnState,
    /// The rule that decided a new connection, if a rule did: its index in
    /// the policy of `generation`.
    pub rule: Option<u16>,
    pub generation: u16,
    /// That rule asked for logging.
    pub log: bool,
    /// Hand-off mode: this packet handed its connection to the kernel (the
    /// caller marks its verdict).
    pub handed_off: bool,
}

impl Decision {
    /// No connection before or after, and no rule (a packet refused before
    /// the lookup, or with no connection to belong to; the policy's
    /// decisions start from it).
    fn stateless(reason: Reason) -> Decision {
        Decision::without_rule(reason, ConnState::None, ConnState::None)
    }

    /// A decision no rule made: a tracked connection's packet, accepted or
    /// dropped by its state, or a connection refused after its handshake.
    fn without_rule(reason: Reason, before: ConnState, after: ConnState) -> Decision {
        Decision {
            reason,
            before,
            after,
            rule: None,
            generation: 0,
            log: false,
            handed_off: false,
        }
    }

    pub fn verdict(&self) -> Verdict {
        self.reason.verdict()
    }

    /// `(before, after)` when the packet changed the connection's state.
    pub fn transition(&self) -> Option<(ConnState, ConnState)> {
        (self.before != self.after).then_some((self.before, self.after))
    }
}

/// What [`Engine::restore_state`] loaded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Restored {
    pub restored: u64,
    /// Left out: already expired.
    pub expired: u64,
    /// Left out: beyond `max_connections`.
    pub over_limit: u64,
    /// Left out: the same connection twice in the file.
    pub duplicates: u64,
    /// Written at a graceful stop (else a periodic snapshot).
    pub graceful: bool,
}

/// One tracked connection, for listings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    pub protocol: u8,
    pub originator: (IpAddr, u16),
    pub responder: (IpAddr, u16),
    pub state: ConnState,
    pub expires_at_secs: u32,
    pub opened_at_secs: u32,
    /// What admitted it, by name.
    pub rule: RuleName,
    pub traffic: Traffic,
    /// TCP: each direction's window, [originator, responder].
    pub windows: Option<[Window; 2]>,
    /// A peer gateway's connection, copied here (see [`Conn::peer`]).
    pub peer: bool,
    /// Opened by the SYN proxy: its packets are translated.
    pub proxied: bool,
}

/// The rule that admitted a connection, as people read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RuleName {
    /// The policy's default action.
    Default,
    Named(String),
    /// Restored from a state file or copied from a peer (neither carries
    /// the rule), or admitted more than [`RULE_NAMES_KEPT`] reloads ago.
    Unknown,
}

impl RuleName {
    /// The rule's name, if known and not the default.
    pub fn name(&self) -> Option<&str> {
        match self {
            RuleName::Named(n) => Some(n),
            _ => None,
        }
    }
}

/// Reloads after which a connection still shows the name of the rule that
/// admitted it: the rule names of the last policies are kept this long.
pub const RULE_NAMES_KEPT: usize = 64;

/// The rule names of the policy in force and the ones before it (newest
/// first), by generation: a reload renumbers rules, and a connection keeps
/// the index and generation it was admitted under.
#[derive(Clone, Default)]
struct RuleNames(std::collections::VecDeque<(u16, Arc<[String]>)>);

impl RuleNames {
    fn push(&mut self, policy: &Policy) {
        let names: Arc<[String]> = policy.rules.iter().map(|r| r.name.clone()).collect();
        self.0.push_front((policy.generation, names));
        self.0.truncate(RULE_NAMES_KEPT);
    }

    fn of(&self, by: AdmittedBy) -> RuleName {
        match by {
            AdmittedBy::Default => RuleName::Default,
            AdmittedBy::Unknown => RuleName::Unknown,
            AdmittedBy::Rule { index, generation } => self
                .0
                .iter()
                .find(|(g, _)| *g == generation)
                .and_then(|(_, names)| names.get(index as usize))
                .map_or(RuleName::Unknown, |n| RuleName::Named(n.clone())),
        }
    }
}

impl ConnInfo {
    /// `names`: the rule names of the policies whose rules may have admitted it.
    fn new(key: &FlowKey, conn: &Conn, names: &RuleNames) -> ConnInfo {
        ConnInfo {
            protocol: key.protocol(),
            originator: key.endpoint(conn.originator),
            responder: key.endpoint(conn.originator.other()),
            state: conn.state(),
            expires_at_secs: conn.expires_at_secs(),
            opened_at_secs: conn.opened_at_secs(),
            rule: names.of(conn.admitted_by()),
            traffic: conn.traffic(),
            windows: match conn.proto {
                Proto::Tcp(t) => Some(t.windows()),
                _ => None,
            },
            peer: conn.peer(),
            proxied: conn.proxied(),
        }
    }
}

pub struct Engine {
    table: Table,
    /// The policy in force, read without a lock on the packet path (a
    /// reload swaps in a new one; a decision keeps the one it started with,
    /// and its generation with it).
    policy: ArcSwap<Policy>,
    /// Connections an operator removed lately: not picked up mid-stream.
    killed: Killed,
    /// Held by `set_policy`: two reloads at once number their policies one
    /// after the other. It keeps the rule names of the last policies.
    reload: Mutex<RuleNames>,
    settings: EngineSettings,
    /// Until this second of the engine's clock, TCP connections may be
    /// picked up mid-stream even without `loose_pickup` (after a restart
    /// from a periodic snapshot: see [`Engine::allow_pickup_until`]).
    pickup_until: AtomicU64,
    /// Entries and half-open connections up to which adaptive timeouts
    /// change nothing (`adaptive.start` of each limit), precomputed so that
    /// a new connection under them costs two integer comparisons.
    adapt_from: (usize, usize),
    /// The policy in force has a rule with source limits: only then does a
    /// completed handshake look the policy up again (`charge_source`).
    limits_sources: AtomicBool,
    /// The SYN proxy's keys, learned servers and mode (see `proxy`).
    proxy: proxy::Proxy,
}

enum Lookup {
    Found(Decision),
    Absent,
}

impl Engine {
    /// An engine whose table has the [`Layout::FIXED`] layout: the same
    /// decisions for the same packets on every machine (replay, tests).
    pub fn new(settings: EngineSettings, policy: Policy) -> Engine {
        Engine::with_layout(settings, policy, Layout::FIXED)
    }

    /// An engine whose table has the given shard count and hash seed (the
    /// daemon passes a random seed).
    pub fn with_layout(settings: EngineSettings, policy: Policy, layout: Layout) -> Engine {
        let limits = Limits {
            max_connections: settings.max_connections,
            max_half_open: settings.max_half_open,
        };
        let start = settings.adaptive.start.clamp(0.0, 1.0);
        let mut names = RuleNames::default();
        names.push(&policy);
        let engine = Engine {
            proxy: proxy::Proxy::new(&settings, layout.seed, policy.uses_synproxy()),
            table: Table::new(limits, layout),
            limits_sources: AtomicBool::new(policy.limits_sources()),
            policy: ArcSwap::from_pointee(policy),
            reload: Mutex::new(names),
            killed: Killed::default(),
            settings,
            pickup_until: AtomicU64::new(0),
            adapt_from: (
                (start * limits.max_connections as f64) as usize,
                (start * limits.max_half_open as f64) as usize,
            ),
        };
        if engine.limits_sources.load(Ordering::Relaxed) {
            // The per-source tracker (a fixed allocation), made now, off the packet path.
            let _ = engine.table.sources();
        }
        engine
    }

    /// The policy's generation (see [`Policy::generation`]).
    pub fn generation(&self) -> u16 {
        self.policy.load().generation
    }

    pub fn settings(&self) -> &EngineSettings {
        &self.settings
    }

    pub fn table(&self) -> &Table {
        &self.table
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.policy.load_full()
    }

    /// The rule names of the last policies (a copy: a listing does not hold
    /// up a reload).
    fn rule_names(&self) -> RuleNames {
        self.reload
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the policy for new connections; tracked connections keep their state.
    pub fn set_policy(&self, mut policy: Policy) {
        let mut names = self.reload.lock().unwrap_or_else(|e| e.into_inner());
        policy.generation = self.policy.load().generation.wrapping_add(1);
        names.push(&policy);
        // A policy that limits sources gets the per-source tracker (a fixed
        // allocation) now, off the packet path, and is known to limit them
        // before its first connection completes a handshake.
        self.proxy
            .rules
            .store(policy.uses_synproxy(), Ordering::Relaxed);
        let limits = policy.limits_sources();
        if limits {
            let _ = self.table.sources();
            self.limits_sources.store(true, Ordering::Relaxed);
        }
        self.policy.store(Arc::new(policy));
        if !limits {
            self.limits_sources.store(false, Ordering::Relaxed);
        }
    }

    /// Decides one packet given as bytes starting at the IP header.
    #[inline]
    pub fn decide(&self, bytes: &[u8], ctx: &Context<'_>, now: Timestamp) -> Decision {
        let mut io = Io {
            bytes,
            answers: None,
        };
        self.decide_io(ctx, now, &mut io)
    }

    /// [`Engine::decide`], and what the SYN proxy answers: the packets to
    /// send, and how an accepted packet is rewritten (a proxied
    /// connection's). `answers` is cleared first.
    #[inline]
    pub fn decide_with(
        &self,
        bytes: &[u8],
        ctx: &Context<'_>,
        now: Timestamp,
        answers: &mut Answers,
    ) -> Decision {
        answers.clear();
        let mut io = Io {
            bytes,
            answers: Some(answers),
        };
        self.decide_io(ctx, now, &mut io)
    }

    #[inline]
    fn decide_io(&self, ctx: &Context<'_>, now: Timestamp, io: &mut Io<'_>) -> Decision {
        match wire::parse(io.bytes, ctx.framing) {
            Ok(packet) => self.decide_parsed(&packet, ctx, now, io),
            Err(reason) => Decision::stateless(reason),
        }
    }

    /// Decides one already parsed packet (the SYN proxy's answers are not
    /// given: see [`Engine::decide_with`]).
    pub fn decide_packet(&self, p: &Packet, ctx: &Context<'_>, now: Timestamp) -> Decision {
        let mut io = Io {
            bytes: &[],
            answers: None,
        };
        self.decide_parsed(p, ctx, now, &mut io)
    }

    fn decide_parsed(
        &self,
        p: &Packet,
        ctx: &Context<'_>,
        now: Timestamp,
        io: &mut Io<'_>,
    ) -> Decision {
        match p.transport {
            Transport::Tcp(seg) => self.tcp(p, &seg, ctx, now, io),
            Transport::Udp { src_port, dst_port } => {
                self.datagram(p, (src_port, dst_port), true, ctx, now)
            }
            Transport::Other => self.datagram(p, (0, 0), true, ctx, now),
            Transport::Icmp(icmp) => match icmp.kind {
                IcmpKind::EchoRequest { id } => self.datagram(p, (id, id), true, ctx, now),
                // A reply never opens a flow: it needs the request's entry.
                IcmpKind::EchoReply { id } => self.datagram(p, (id, id), false, ctx, now),
                IcmpKind::Error(embedded) => self.icmp_error(p, &embedded, now),
                // Untracked ICMP (timestamps, router adverts...): the policy decides each one.
                IcmpKind::Other => self.policy_only(p, ctx),
            },
        }
    }

    /// Hand-off mode: hands an ESTABLISHED:ESTABLISHED TCP connection to the
    /// kernel, given one of its plain (no SYN, FIN or RST) packets from the
    /// originator. The connection is re-anchored with liberal windows (see
    /// `TcpConn::hand_off`) and lives `timeout` seconds without queued
    /// packets. Returns whether the connection was handed off (the caller
    /// then marks the packet's verdict).
    ///
    /// A second parse and lookup of a packet already decided: the daemon
    /// instead sets [`Context::hand_off`], and `decide` does the same in the
    /// lookup that decides the packet.
    pub fn hand_off(&self, bytes: &[u8], framing: Framing, now: Timestamp, timeout: u32) -> bool {
        let Ok(packet) = wire::parse(bytes, framing) else {
            return false;
        };
        let Some((key, side, seg)) = tcp_key(&packet) else {
            return false;
        };
        let Some(mut entry) = self.table.get_mut(&key) else {
            return false;
        };
        let from = entry.role_of(side);
        // A proxied connection is handed off only by `decide`, which tells
        // the caller to hand the kernel its translation.
        if entry.proxied() || !may_hand_off(&entry, from, seg) {
            return false;
        }
        hand_off_conn(&mut entry, seg, now, timeout);
        true
    }

    /// Hand-off mode: the kernel could not take the proxied connection of
    /// `bytes` that the decision handed off (see [`Context::kernel_translates`]):
    /// conntrackd translates it again, and does not offer it to the kernel
    /// again (behind NAT, say, every offer would fail). Its packets keep
    /// coming to the queue (their verdict carries no hand-off mark). Returns
    /// whether it was translated by the kernel.
    pub fn translate_here(&self, bytes: &[u8], framing: Framing) -> bool {
        let Ok(packet) = wire::parse(bytes, framing) else {
            return false;
        };
        let Some((key, _, _)) = tcp_key(&packet) else {
            return false;
        };
        // Under the entry's lock, as every change of its proxy state.
        let Some(_entry) = self.table.get_mut(&key) else {
            return false;
        };
        match self.table.translation(&key) {
            Some(t) if t.by_kernel() => {
                self.table
                    .proxied
                    .insert(key, crate::synproxy::Proxied::Open(t.refused_by_kernel()));
                true
            }
            _ => false,
        }
    }

    /// Hand-off mode: hands `conn` (key `key`), which `seg` may hand off
    /// ([`may_hand_off`]), to the kernel, unless it is a proxied connection
    /// the kernel cannot translate (see [`Context::kernel_translates`]) or
    /// that has carried less than [`HAND_OVER_AFTER_BYTES`]. Whether it did.
    /// A proxied connection handed over now is translated by the kernel
    /// from the next packet on: this one is still rewritten here (the
    /// caller gives the kernel its new entry before the verdict).
    fn hand_off_judged(
        &self,
        conn: &mut Conn,
        key: &FlowKey,
        seg: &TcpSegment,
        ctx: &Context<'_>,
        now: Timestamp,
        timeout: u32,
    ) -> bool {
        if conn.proxied() {
            // The cheap test first: a short connection never looks its
            // translation up.
            let carried: u64 = conn.traffic().bytes.iter().sum();
            if carried < HAND_OVER_AFTER_BYTES {
                return false;
            }
            let Some(t) = self.table.translation(key) else {
                return false;
            };
            if !t.by_kernel() {
                if !ctx.kernel_translates.is_some_and(|ts| t.kernel_can(ts)) {
                    return false;
                }
                self.table
                    .proxied
                    .insert(*key, crate::synproxy::Proxied::Open(t.in_kernel(true)));
            }
        }
        hand_off_conn(conn, seg, now, timeout);
        true
    }

    /// Hand-off mode: the kernel still carries this handed-off TCP connection
    /// (its conntrack entry has the hand-off mark). The engine sees none of its
    /// data, so it keeps the connection `timeout` more seconds from `now`
    /// instead (never less than it had). Either direction: the kernel's
    /// entry may have been re-created from the responder's side after it
    /// expired there first. Returns whether such a connection was found; one
    /// that is closing, or was never handed off, is not kept.
    pub fn keep_handed_off(
        &self,
        src: (IpAddr, u16),
        dst: (IpAddr, u16),
        now: Timestamp,
        timeout: u32,
    ) -> bool {
        let (key, _) = FlowKey::new(PROTO_TCP, src.0, src.1, dst.0, dst.1);
        let Some(mut entry) = self.table.get_mut(&key) else {
            return false;
        };
        let conn = &mut *entry;
        let Proto::Tcp(tcp) = conn.proto else {
            return false;
        };
        if !tcp.is_established() || !tcp.is_liberal() {
            return false;
        }
        let before = conn.expires_at_secs();
        conn.set_timeout(now, timeout);
        conn.set_expires_at_secs(conn.expires_at_secs().max(before));
        true
    }

    /// Removes expired connections; returns how many.
    pub fn expire(&self, now: Timestamp) -> usize {
        self.killed.expire(now);
        self.table.expire(now)
    }

    /// The connection of this tuple (either direction), if tracked.
    pub fn lookup(&self, protocol: u8, a: (IpAddr, u16), b: (IpAddr, u16)) -> Option<ConnInfo> {
        let (key, _) = FlowKey::new(protocol, a.0, a.1, b.0, b.1);
        let conn = *self.table.get(&key)?;
        Some(ConnInfo::new(&key, &conn, &self.rule_names()))
    }

    /// Calls `f` for every tracked connection, one shard locked (for
    /// reading) at a time: `f` must be quick, and must not touch the table.
    pub fn visit_connections(&self, mut f: impl FnMut(&ConnInfo)) {
        let names = self.rule_names();
        self.table
            .for_each(|key, conn| f(&ConnInfo::new(key, conn, &names)));
    }

    /// What the policy would decide for a new connection from `src` to
    /// `dst`: its first packet (a SYN, a datagram, an echo request) is built
    /// and evaluated. `None` for mixed families or a protocol without ports
    /// or echo that the policy never sees as a connection.
    pub fn would_admit(
        &self,
        protocol: u8,
        src: (IpAddr, u16),
        dst: (IpAddr, u16),
        ifaces: &Interfaces<'_>,
    ) -> Option<(Action, Option<u16>)> {
        if src.0.is_ipv4() != dst.0.is_ipv4() {
            return None;
        }
        let (s, d) = (
            std::net::SocketAddr::new(src.0, src.1),
            std::net::SocketAddr::new(dst.0, dst.1),
        );
        let bytes = match protocol {
            wire::PROTO_TCP => wire::build::tcp(s, d).flags(wire::TcpFlags::SYN).build(),
            wire::PROTO_UDP => wire::build::udp(s, d, &[]),
            wire::PROTO_ICMP | wire::PROTO_ICMPV6 => {
                wire::build::icmp_echo(src.0, dst.0, 0, 0, true)
            }
            _ => wire::build::other(src.0, dst.0, protocol, &[]),
        };
        let packet = wire::parse(&bytes, Framing::default()).ok()?;
        let m = self.policy().evaluate(&packet, ifaces);
        Some((m.action, m.rule))
    }

    /// Every tracked connection.
    pub fn connections(&self) -> Vec<ConnInfo> {
        let names = self.rule_names();
        self.table
            .snapshot()
            .into_iter()
            .map(|(key, conn)| ConnInfo::new(&key, &conn, &names))
            .collect()
    }

    /// The table as a state file's bytes (see [`crate::conntrack::state`]):
    /// `graceful` when the queues have stopped delivering, so that nothing
    /// is missing from it.
    /// `unix_now`: the wall clock, Unix seconds (the file's age is counted
    /// by it when it is read).
    pub fn save_state(&self, now: Timestamp, graceful: bool, unix_now: u64) -> Vec<u8> {
        state::encode(
            &self.table.snapshot(),
            |key| self.table.translation(key),
            now,
            graceful,
            unix_now,
        )
    }

    /// Picks up TCP connections mid-stream until `until`, as `loose_pickup`
    /// does (liberal windows for them). After a crash the last snapshot
    /// misses the connections opened after it: for a short while, their
    /// packets open them again instead of being `no_connection`.
    pub fn allow_pickup_until(&self, until: Timestamp) {
        self.pickup_until.store(until.as_secs(), Ordering::Relaxed);
    }

    /// Loads a state file's connections into the (empty) table, as far as
    /// `max_connections` allows; their windows re-anchor on each side's first
    /// packet. Nothing is loaded from a file that does not check out.
    pub fn restore_state(
        &self,
        bytes: &[u8],
        now: Timestamp,
        unix_now: u64,
    ) -> Result<Restored, StateError> {
        let st = state::decode(bytes, now, unix_now)?;
        let mut r = Restored {
            graceful: st.graceful,
            expired: st.expired,
            ..Restored::default()
        };
        let translations: std::collections::HashMap<FlowKey, crate::synproxy::Translation> =
            st.translations.into_iter().collect();
        for (key, conn) in st.entries {
            if self.table.len() >= self.settings.max_connections {
                r.over_limit += 1;
                continue;
            }
            match self.table.insert_new(key, conn) {
                Ok(()) => {
                    r.restored += 1;
                    // A record with the flag always carries its translation.
                    if let Some(t) = translations.get(&key).filter(|_| conn.proxied()) {
                        self.table
                            .proxied
                            .insert(key, crate::synproxy::Proxied::Open(*t));
                    }
                }
                Err(_) => r.duplicates += 1,
            }
        }
        Ok(r)
    }

    /// Applies a peer gateway's record of a connection (`remove`: the peer
    /// removed it). The entry becomes, or stays, a peer entry (see
    /// [`Conn::peer`]); what this node holds is kept when the record is
    /// behind it (an older copy never overwrites what was seen since). A peer
    /// entry never evicts a local one: with the table full it is refused.
    ///
    /// A connection the peer's SYN proxy opened comes with its
    /// `translation`: kept beside the entry, so that this node translates
    /// the connection once it forwards it.
    pub fn apply_peer(
        &self,
        key: FlowKey,
        mut record: Conn,
        translation: Option<crate::synproxy::Translation>,
        remove: bool,
        now: Timestamp,
    ) -> Applied {
        record.set_peer();
        // Translated by the peer's kernel, maybe: here, by this node until
        // it hands the connection off itself.
        let translation = translation
            .filter(|_| record.proxied() && !remove)
            .map(|t| t.in_kernel(false));
        if record.proxied() && translation.is_none() {
            record.clear_proxied();
        }
        // A proxied connection this node could not translate (it runs
        // without the SYN proxy: its queues do not hand packets back) is
        // not taken: forwarded untranslated it would be broken anyway.
        if translation.is_some() && !self.synproxy_configured() {
            return Applied::Stale;
        }
        if let Some(mut entry) = self.table.get_mut(&key) {
            let held = &mut *entry;
            if !held.expired(now) && peer_record_behind(&record, held) {
                return Applied::Stale;
            }
            if remove {
                drop(entry);
                let gone = self.table.remove_if(&key, Removal::Peer, |c| {
                    c.expired(now) || !peer_record_behind(&record, c)
                });
                return if gone.is_some() {
                    Applied::Removed
                } else {
                    Applied::Stale
                };
            }
            let before = held.state();
            let was_proxied = held.proxied();
            held.take_state_of(&record);
            match translation {
                Some(t) => {
                    held.set_proxied();
                    self.table
                        .proxied
                        .insert(key, crate::synproxy::Proxied::Open(t));
                }
                // A record without it (sent before the server answered)
                // leaves what this node holds.
                None if was_proxied => held.set_proxied(),
                None => {}
            }
            self.table.account_half_open(held);
            let after = held.state();
            if after != before {
                self.table.notify(Change::Update { before }, &key, held);
            }
            return Applied::Updated;
        }
        if remove {
            return Applied::Absent;
        }
        if self.table.len() >= self.settings.max_connections {
            return Applied::Full;
        }
        // Beside the entry before it exists: its first packet may follow.
        let state_placed = match translation {
            Some(t) => self.place_proxied(key, crate::synproxy::Proxied::Open(t)),
            None => false,
        };
        match self.table.insert_new(key, record) {
            Ok(()) => Applied::Inserted,
            Err(_) if state_placed => {
                self.table.proxied.remove(&key);
                Applied::Stale
            }
            // Another thread inserted it meanwhile: the next record updates it.
            Err(_) => Applied::Stale,
        }
    }

    /// Removes every connection `pred` selects (an operator's `kill` or
    /// `flush` at `now`); returns how many. Their next packets are
    /// `no_connection` (or open them anew, for a SYN): a mid-stream pickup
    /// (`loose_pickup`, or the pickup window after a crash) does not take
    /// them up again for [`KILLED_KEPT_SECS`]. Walks a snapshot, so it
    /// never holds a shard while deciding.
    pub fn remove_connections(&self, pred: impl Fn(&ConnInfo) -> bool, now: Timestamp) -> usize {
        let mut removed = 0;
        let names = self.rule_names();
        for (key, conn) in self.table.snapshot() {
            if pred(&ConnInfo::new(&key, &conn, &names))
                && self
                    .table
                    .remove_if(&key, Removal::Killed, |_| true)
                    .is_some()
            {
                self.killed.remember(key, now);
                removed += 1;
            }
        }
        removed
    }

    // ---- TCP ----

    fn tcp(
        &self,
        p: &Packet,
        seg: &TcpSegment,
        ctx: &Context<'_>,
        now: Timestamp,
        io: &mut Io<'_>,
    ) -> Decision {
        let (key, side) = FlowKey::new(p.protocol, p.src, seg.src_port, p.dst, seg.dst_port);
        let bare_syn = seg.flags.syn() && !seg.flags.ack();
        // Two rounds at most: a lost insert race is retried as an existing connection.
        for _ in 0..2 {
            if let Lookup::Found(d) = self.tcp_existing(&key, side, seg, bare_syn, p, ctx, now, io)
            {
                return d;
            }
            if let Some(d) = self.tcp_absent(key, side, seg, bare_syn, p, ctx, now, io) {
                return d;
            }
        }
        Decision::stateless(Reason::NoConnection)
    }

    /// A TCP packet without a connection: a new one (a SYN, or a pickup
    /// mid-stream), the SYN proxy's, or none. `None`: another thread
    /// inserted the same connection meanwhile (the caller looks again).
    /// Not inlined: an established connection's packet never comes here,
    /// and its path stays as short as before the proxy.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn tcp_absent(
        &self,
        key: FlowKey,
        side: Side,
        seg: &TcpSegment,
        bare_syn: bool,
        p: &Packet,
        ctx: &Context<'_>,
        now: Timestamp,
        io: &mut Io<'_>,
    ) -> Option<Decision> {
        if self.synproxy_configured() {
            if let Some(d) = self.proxy_new(p, seg, bare_syn, ctx, now, io) {
                return Some(d);
            }
        }
        let tcp = if bare_syn {
            TcpConn::from_syn(seg)
        } else if self.may_pick_up(&key, seg, now) {
            TcpConn::from_midstream(seg)
        } else {
            return Some(Decision::stateless(Reason::NoConnection));
        };
        self.open(
            key,
            side,
            Proto::Tcp(tcp),
            tcp.is_half_open(),
            p,
            ctx,
            now,
            None,
        )
    }

    /// Puts a new connection's proxy state beside the table, unless one is
    /// there (another thread's connection of the same key, which wins):
    /// whether it did.
    fn place_proxied(&self, key: FlowKey, state: crate::synproxy::Proxied) -> bool {
        match self.table.proxied.entry(key) {
            dashmap::Entry::Vacant(v) => {
                v.insert(state);
                true
            }
            dashmap::Entry::Occupied(_) => false,
        }
    }

    /// Whether a TCP packet without a connection may start one mid-stream
    /// (`loose_pickup`, or the pickup window after a crash).
    fn may_pick_up(&self, key: &FlowKey, seg: &TcpSegment, now: Timestamp) -> bool {
        (self.settings.loose_pickup || now.as_secs() < self.pickup_until.load(Ordering::Relaxed))
            && !seg.flags.rst()
            && !seg.flags.fin()
            && !seg.flags.syn()
            && !self.killed.holds(key, now)
    }

    #[allow(clippy::too_many_arguments)]
    fn tcp_existing(
        &self,
        key: &FlowKey,
        side: Side,
        seg: &TcpSegment,
        bare_syn: bool,
        p: &Packet,
        ctx: &Context<'_>,
        now: Timestamp,
        io: &mut Io<'_>,
    ) -> Lookup {
        let Some(mut entry) = self.table.get_mut(key) else {
            return Lookup::Absent;
        };
        let conn = &mut *entry;
        let Proto::Tcp(tcp) = conn.proto else {
            return Lookup::Absent;
        };
        // An expired entry, or a new SYN on a connection in TIME_WAIT or reset
        // (the kernel's reopen), is replaced: the SYN is a new connection and
        // the policy decides it afresh.
        if conn.expired(now) || (bare_syn && tcp.is_reopenable()) {
            let why = if conn.expired(now) {
                Removal::of_expiry(conn)
            } else {
                Removal::Reopened
            };
            drop(entry);
            self.table.remove_if(key, why, |c| {
                c.expired(now) || matches!(c.proto, Proto::Tcp(t) if bare_syn && t.is_reopenable())
            });
            return Lookup::Absent;
        }
        let from = conn.role_of(side);
        if conn.proxied() {
            return self.proxied_existing(entry, key, from, tcp, seg, p, ctx, now, io);
        }
        self.judge(entry, key, from, tcp, seg, p, ctx, now)
    }

    /// A packet of a connection the SYN proxy opened: its handshake with
    /// the server is the proxy's; later the tracker judges the packet in
    /// the server's space, and an accepted one goes on translated (the
    /// rewrite is handed out at once: the caller applies it only to an
    /// accepted packet). Not inlined, so that the common path's code stays
    /// as it was.
    #[allow(clippy::too_many_arguments)]
    #[inline(never)]
    fn proxied_existing(
        &self,
        mut entry: crate::conntrack::table::ConnMut<'_>,
        key: &FlowKey,
        from: Role,
        tcp: TcpConn,
        seg: &TcpSegment,
        p: &Packet,
        ctx: &Context<'_>,
        now: Timestamp,
        io: &mut Io<'_>,
    ) -> Lookup {
        match self.proxy_step(&mut entry, key, from, seg, p, now, io) {
            Step::Decided(d) => Lookup::Found(d),
            Step::Remove(d) => {
                drop(entry);
                self.table.remove_if(key, Removal::Reset, |c| c.proxied());
                Lookup::Found(d)
            }
            Step::Translate(translated, r, here) => {
                if here {
                    io.rewrite(r);
                } else {
                    // The server's RST: the ISN that keeps the kernel's offset.
                    let reset = (from == Role::Responder && seg.flags.rst()).then(|| {
                        let seq = r.translation.seq_to_client(seg.seq);
                        (r.translation, seq.0.wrapping_sub(1))
                    });
                    io.leave_to_kernel(reset);
                }
                let found = self.judge(entry, key, from, tcp, &translated, p, ctx, now);
                // Handed off now, and not before: the kernel is to get it.
                if matches!(found, Lookup::Found(d) if d.handed_off) && !r.translation.by_kernel() {
                    io.hand_over(r.translation);
                }
                found
            }
            Step::Plain => self.judge(entry, key, from, tcp, seg, p, ctx, now),
        }
    }

    /// The tracker's judgement of a packet of a tracked connection, sent by
    /// `from`, and what follows from it (accounting, removal, timeouts).
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn judge(
        &self,
        mut entry: crate::conntrack::table::ConnMut<'_>,
        key: &FlowKey,
        from: Role,
        mut tcp: TcpConn,
        seg: &TcpSegment,
        p: &Packet,
        ctx: &Context<'_>,
        now: Timestamp,
    ) -> Lookup {
        let conn = &mut *entry;
        let before = conn.state();
        let outcome = tcp.handle(from, seg);
        conn.proto = Proto::Tcp(tcp);
        // A peer's connection whose packet this node forwards is this
        // node's from now on (its windows re-anchored as after a restart).
        let mut adopted = false;
        if outcome.reason.verdict() == Verdict::Accept {
            adopted = conn.peer();
            conn.make_local();
            conn.count(from, p.len);
            // A RST that took effect (not one passed as a challenge ACK's answer).
            if seg.flags.rst() && outcome.reason == Reason::Tracked {
                conn.set_reset();
            }
        }
        if outcome.forget {
            let after = conn.state();
            drop(entry);
            // Only if it is still this reset connection: another worker may
            // have reopened the key in between.
            self.table
                .remove_if(key, Removal::Reset, |c| c.state() == after);
            return Lookup::Found(Decision::without_rule(outcome.reason, before, after));
        }
        if outcome.refresh {
            // Assured once the handshake completed with the responder seen
            // (a loose pickup from one side alone is not).
            if tcp.is_established() && tcp.replied() && !conn.assured() {
                conn.set_assured();
                if from == Role::Originator {
                    if let Err(reason) = self.charge_source(p, ctx, conn, now) {
                        drop(entry);
                        self.table.remove_if(key, Removal::Refused, |c| c.assured());
                        return Lookup::Found(Decision::without_rule(
                            reason,
                            before,
                            ConnState::None,
                        ));
                    }
                }
            }
            let mut timeout = tcp.timeout(&self.settings.timeouts);
            if !conn.assured() {
                timeout = self.adapt(timeout, tcp.is_half_open());
            }
            conn.set_timeout(now, timeout);
            self.table.account_half_open(conn);
        }
        let after = conn.state();
        self.tell(adopted, before, after, key, conn, now);
        let mut d = Decision::without_rule(outcome.reason, before, after);
        if let Some(timeout) = ctx.hand_off {
            d.handed_off = d.verdict() == Verdict::Accept
                && may_hand_off(conn, from, seg)
                && self.hand_off_judged(conn, key, seg, ctx, now, timeout);
        }
        Lookup::Found(d)
    }

    /// Tells the table's observer what a packet changed: a peer's
    /// connection adopted, a new state, or (at most every
    /// `Table::progress_every` ms) progress within the same state.
    #[inline]
    fn tell(
        &self,
        adopted: bool,
        before: ConnState,
        after: ConnState,
        key: &FlowKey,
        conn: &mut Conn,
        now: Timestamp,
    ) {
        let change = if adopted {
            Change::Adopted
        } else if after != before {
            Change::Update { before }
        } else {
            let every = self.table.progress_every();
            if every == 0 || !conn.progress_due(now, every) {
                return;
            }
            Change::Progress
        };
        self.table.notify(change, key, conn);
    }

    /// Counts a TCP connection whose handshake just completed against its
    /// source's limits (the rule that admitted it, matched again on this
    /// packet from the originator); over a limit, the connection is refused
    /// and removed (and the source possibly overloaded), as pf does.
    fn charge_source(
        &self,
        p: &Packet,
        ctx: &Context<'_>,
        conn: &mut Conn,
        now: Timestamp,
    ) -> Result<(), Reason> {
        // No rule limits sources: no second policy lookup per connection.
        if !self.limits_sources.load(Ordering::Relaxed) {
            return Ok(());
        }
        let (_, limits, _) = self.policy_match(p, ctx);
        if limits.is_off() {
            return Ok(());
        }
        match self.table.sources().admit(p.src, &limits, now) {
            Ok(admission) => {
                if admission.counted() {
                    conn.set_source_counted();
                }
                Ok(())
            }
            Err(SourceRefusal::ConnLimit) => Err(Reason::SourceConnLimit),
            Err(SourceRefusal::RateLimit) => Err(Reason::SourceRateLimit),
            Err(SourceRefusal::Overloaded) => Err(Reason::SourceOverloaded),
        }
    }

    /// An unassured entry's timeout under adaptive timeouts (see
    /// [`settings::Adaptive`]), from the table's fill.
    #[inline]
    fn adapt(&self, base: u32, half_open: bool) -> u32 {
        let t = &self.table;
        let (len_from, half_from) = self.adapt_from;
        if t.len() <= len_from && (!half_open || t.half_open() <= half_from) {
            return base;
        }
        let limits = t.limits();
        let mut fill = t.len() as f64 / limits.max_connections.max(1) as f64;
        if half_open {
            fill = fill.max(t.half_open() as f64 / limits.max_half_open.max(1) as f64);
        }
        self.settings.adaptive.scale(base, fill)
    }

    // ---- UDP, ICMP echo, other protocols ----

    fn datagram(
        &self,
        p: &Packet,
        ports: (u16, u16),
        may_open: bool,
        ctx: &Context<'_>,
        now: Timestamp,
    ) -> Decision {
        let (key, side) = FlowKey::new(p.protocol, p.src, ports.0, p.dst, ports.1);
        for _ in 0..2 {
            if let Some(mut entry) = self.table.get_mut(&key) {
                let conn = &mut *entry;
                if !conn.expired(now) {
                    let before = conn.state();
                    // Assured (never evicted for a newcomer, the long timeout)
                    // only once the flow goes on after its first reply, as
                    // the kernel's "stream": a single query and answer, or
                    // one probe per port answered by a server, stays cheap
                    // to evict. ICMP is never assured.
                    if conn.replied() && !conn.assured() && !matches!(conn.proto, Proto::Icmp) {
                        conn.set_assured();
                    }
                    let from = conn.role_of(side);
                    if from == Role::Responder && !conn.replied() {
                        conn.set_replied();
                    }
                    let adopted = conn.peer();
                    conn.make_local();
                    conn.count(from, p.len);
                    let mut timeout =
                        // (assured implies replied)
                        self.datagram_timeout(p.protocol, conn.assured());
                    if !conn.assured() {
                        timeout = self.adapt(timeout, false);
                    }
                    conn.set_timeout(now, timeout);
                    let after = conn.state();
                    self.tell(adopted, before, after, &key, conn, now);
                    return Decision::without_rule(Reason::Tracked, before, after);
                }
                drop(entry);
                self.table
                    .remove_if(&key, Removal::Timeout, |c| c.expired(now));
            }
            if !may_open {
                return Decision::stateless(Reason::NoConnection);
            }
            let proto = match p.transport {
                Transport::Icmp(_) => Proto::Icmp,
                Transport::Udp { .. } => Proto::Udp,
                _ => Proto::Other,
            };
            if let Some(d) = self.open(key, side, proto, false, p, ctx, now, None) {
                return d;
            }
        }
        Decision::stateless(Reason::NoConnection)
    }

    fn datagram_timeout(&self, protocol: u8, replied: bool) -> u32 {
        let to = &self.settings.timeouts;
        match protocol {
            wire::PROTO_UDP if replied => to.udp_replied,
            wire::PROTO_UDP => to.udp_unreplied,
            wire::PROTO_ICMP | wire::PROTO_ICMPV6 => to.icmp,
            _ if replied => to.other,
            _ => to.udp_unreplied,
        }
    }

    /// An ICMP error is related when the packet it quotes belongs to a
    /// tracked flow and the error travels back to that packet's sender.
    fn icmp_error(&self, p: &Packet, e: &Embedded, now: Timestamp) -> Decision {
        if p.dst != e.src {
            return Decision::stateless(Reason::IcmpErrorUnrelated);
        }
        let (key, _) = FlowKey::new(e.protocol, e.src, e.src_port, e.dst, e.dst_port);
        match self.table.get(&key) {
            Some(conn) if !conn.expired(now) => {
                let state = conn.state();
                Decision::without_rule(Reason::Related, state, state)
            }
            _ => Decision::stateless(Reason::IcmpErrorUnrelated),
        }
    }

    fn policy_only(&self, p: &Packet, ctx: &Context<'_>) -> Decision {
        self.policy_match(p, ctx).0
    }

    /// The policy's decision for a new connection, and the matching rule's
    /// per-source limits.
    /// The policy's decision on a new connection, its rule's source
    /// limits, and whether its rule asks for the SYN proxy.
    fn policy_match(&self, p: &Packet, ctx: &Context<'_>) -> (Decision, SourceLimits, bool) {
        // One load for the rule and its generation: a reload in between
        // cannot pair one policy's rule index with the other's generation.
        // (The guard is no Arc clone: no shared counter on this path.)
        let (m, generation) = {
            let policy = self.policy.load();
            (policy.evaluate(p, &ctx.ifaces), policy.generation)
        };
        let reason = match (m.action, m.rule) {
            (Action::Accept, Some(_)) => Reason::NewByRule,
            (Action::Accept, None) => Reason::NewByDefault,
            (Action::Drop, Some(_)) => Reason::DropByRule,
            (Action::Drop, None) => Reason::DropByDefault,
            (Action::Reject, Some(_)) => Reason::RejectByRule,
            (Action::Reject, None) => Reason::RejectByDefault,
        };
        let d = Decision {
            reason,
            rule: m.rule,
            generation,
            log: m.log,
            ..Decision::stateless(reason)
        };
        (d, m.source_limits, m.synproxy)
    }

    /// Asks the policy about a new connection and inserts it if allowed.
    /// `None` when another thread inserted the same connection first.
    #[allow(clippy::too_many_arguments)]
    fn open(
        &self,
        key: FlowKey,
        side: Side,
        proto: Proto,
        half_open: bool,
        p: &Packet,
        ctx: &Context<'_>,
        now: Timestamp,
        proxied: Option<crate::synproxy::Proxied>,
    ) -> Option<Decision> {
        let (decision, limits, _) = self.policy_match(p, ctx);
        if decision.verdict() == Verdict::Drop {
            return Some(decision);
        }
        // Per-source limits: a source on the overload list, or holding its
        // limit of connections, gets no new one. Nothing is charged yet: a
        // connection counts against its source once its handshake completes
        // (`charge_source`), so that spoofed SYNs cannot get a real source
        // limited or overloaded (as pf counts established states).
        if !limits.is_off() {
            let sources = self.table.sources();
            if sources.is_overloaded(p.src, now) {
                return Some(Decision {
                    reason: Reason::SourceOverloaded,
                    ..decision
                });
            }
            if limits
                .max_conn
                .is_some_and(|max| sources.connections(p.src) >= max)
            {
                return Some(Decision {
                    reason: Reason::SourceConnLimit,
                    ..decision
                });
            }
        }
        if let Err(full) = self.table.make_room(half_open) {
            let reason = match full {
                Full::Table => Reason::TableFull,
                Full::HalfOpen => Reason::HalfOpenLimit,
            };
            return Some(Decision { reason, ..decision });
        }
        let mut conn = Conn::new(proto, side, decision.log);
        conn.set_admitted(now, decision.rule, decision.generation);
        conn.count(Role::Originator, p.len);
        let timeout = match proto {
            Proto::Tcp(t) => t.timeout(&self.settings.timeouts),
            _ => self.datagram_timeout(p.protocol, false),
        };
        let timeout = self.adapt(timeout, half_open);
        conn.set_timeout(now, timeout);
        // A connection picked up mid-stream is ESTABLISHED from its first
        // packet: in hand-off mode, that packet hands it off.
        // (A connection the proxy opens is never ESTABLISHED yet.)
        let handed_off = match (ctx.hand_off, p.tcp()) {
            (Some(timeout), Some(seg))
                if proxied.is_none() && may_hand_off(&conn, Role::Originator, seg) =>
            {
                hand_off_conn(&mut conn, seg, now, timeout);
                true
            }
            _ => false,
        };
        let mut state_placed = false;
        if let Some(state) = proxied {
            // Before the entry: its first packet may follow at once.
            conn.set_proxied();
            state_placed = self.place_proxied(key, state);
        }
        let state = conn.state();
        match self.table.insert_new(key, conn) {
            Ok(()) => Some(Decision {
                after: state,
                handed_off,
                ..decision
            }),
            Err(_) => {
                // Only what this call placed: the entry that won keeps its own.
                if state_placed {
                    self.table.proxied.remove(&key);
                }
                None
            }
        }
    }
}

/// A TCP packet's key, its side of it, and its segment.
fn tcp_key(packet: &Packet) -> Option<(FlowKey, Side, &TcpSegment)> {
    let seg = packet.tcp()?;
    let (key, side) = FlowKey::new(
        packet.protocol,
        packet.src,
        seg.src_port,
        packet.dst,
        seg.dst_port,
    );
    Some((key, side, seg))
}

/// Whether `seg`, an accepted packet of `conn` sent by the endpoint in role
/// `from`, may hand it to the kernel (see [`Engine::hand_off`]): a plain
/// segment (no SYN, FIN or RST) from the originator, both ends ESTABLISHED.
#[inline]
fn may_hand_off(conn: &Conn, from: Role, seg: &TcpSegment) -> bool {
    from == Role::Originator
        && !seg.flags.syn()
        && !seg.flags.fin()
        && !seg.flags.rst()
        && matches!(conn.proto, Proto::Tcp(tcp) if tcp.is_established())
}

/// Hands `conn` to the kernel on `seg` ([`may_hand_off`] said it may).
#[inline]
fn hand_off_conn(conn: &mut Conn, seg: &TcpSegment, now: Timestamp, timeout: u32) {
    if let Proto::Tcp(mut tcp) = conn.proto {
        tcp.hand_off(Role::Originator, seg);
        conn.proto = Proto::Tcp(tcp);
        conn.set_timeout(now, timeout);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{build, TcpFlags};

    /// The connections left after 64 SYNs into a table of 8.
    fn survivors(engine: &Engine) -> Vec<(IpAddr, u16)> {
        for i in 0..64u16 {
            let src = std::net::SocketAddr::new([198, 18, 0, 2].into(), 40_000 + i);
            let syn = build::tcp(src, "198.19.0.2:80".parse().unwrap())
                .flags(TcpFlags::SYN)
                .seq(u32::from(i))
                .build();
            let _ = engine.decide(&syn, &Context::default(), Timestamp::from_secs(1));
        }
        let mut left: Vec<_> = engine.connections().iter().map(|c| c.originator).collect();
        left.sort();
        left
    }

    /// `Context::hand_off` hands off in `decide` exactly the connections that
    /// `Engine::hand_off` after `decide` did (as the daemon's workers did):
    /// plain accepted packets from the originator of an established one,
    /// a loose pickup's first packet included; and decides as before.
    #[test]
    fn decide_hands_off_what_a_second_lookup_after_it_did() {
        use crate::conntrack::tcp::EndpointState::Established;
        use std::net::SocketAddr;
        const TIMEOUT: u32 = 432_000;
        let (syn, ack, psh, fin) = (
            TcpFlags::SYN,
            TcpFlags::ACK,
            TcpFlags::ACK | TcpFlags::PSH,
            TcpFlags::FIN | TcpFlags::ACK,
        );
        let c: SocketAddr = "198.18.0.2:40000".parse().unwrap();
        let s: SocketAddr = "198.19.0.2:80".parse().unwrap();
        let picked: SocketAddr = "198.18.0.3:40000".parse().unwrap();
        let packets = [
            build::tcp(c, s).flags(syn).seq(100).build(),
            build::tcp(s, c).flags(syn | ack).seq(500).ack(101).build(),
            build::tcp(c, s).flags(ack).seq(101).ack(501).build(),
            build::tcp(c, s)
                .flags(psh)
                .seq(101)
                .ack(501)
                .payload(&[1; 10])
                .build(),
            build::tcp(s, c)
                .flags(psh)
                .seq(501)
                .ack(111)
                .payload(&[2; 10])
                .build(),
            build::tcp(c, s).flags(fin).seq(111).ack(511).build(),
            // Dropped: no connection to belong to.
            build::tcp(picked, s).flags(fin).seq(7).ack(9).build(),
            // Picked up mid-stream (loose_pickup): ESTABLISHED at once.
            build::tcp(picked, s).flags(ack).seq(7).ack(9).build(),
            build::udp(c, s, b"x"),
        ];
        let settings = EngineSettings {
            loose_pickup: true,
            ..EngineSettings::default()
        };
        let deciding = Engine::new(settings, Policy::allow_all());
        let looking_again = Engine::new(settings, Policy::allow_all());
        let hand_off = Context {
            hand_off: Some(TIMEOUT),
            ..Context::default()
        };
        let mut handed = Vec::new();
        for (i, p) in packets.iter().enumerate() {
            let now = Timestamp::from_secs(10 + i as u64);
            let d = deciding.decide(p, &hand_off, now);
            let before = looking_again.decide(p, &Context::default(), now);
            let again = before.verdict() == Verdict::Accept
                && before.after == ConnState::Tcp(Established, Established)
                && looking_again.hand_off(p, Framing::default(), now, TIMEOUT);
            assert_eq!(
                Decision {
                    handed_off: false,
                    ..d
                },
                before,
                "packet {i}"
            );
            assert_eq!(d.handed_off, again, "packet {i}");
            assert_eq!(
                deciding.connections(),
                looking_again.connections(),
                "packet {i}"
            );
            handed.push(d.handed_off);
        }
        let expected = [false, false, true, true, false, false, false, true, false];
        assert_eq!(handed, expected);
    }

    #[test]
    fn a_full_table_evicts_the_oldest_unassured_entries_whatever_the_layout() {
        let settings = EngineSettings {
            // The table fills before the half-open cap: evictions, not refusals.
            max_connections: 8,
            max_half_open: 1024,
            ..EngineSettings::default()
        };
        let fixed = survivors(&Engine::new(settings, Policy::allow_all()));
        let newest: Vec<_> = (56..64u16)
            .map(|i| (IpAddr::from([198, 18, 0, 2]), 40_000 + i))
            .collect();
        assert_eq!(fixed, newest);
        for seed in 1..=4u64 {
            let layout = Layout {
                seed,
                ..Layout::FIXED
            };
            let engine = Engine::with_layout(settings, Policy::allow_all(), layout);
            assert_eq!(survivors(&engine), newest, "seed {seed}");
        }
    }
}

/// What became of a peer's record (see [`Engine::apply_peer`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// A new peer entry.
    Inserted,
    /// An entry took the record's state.
    Updated,
    /// The entry was removed.
    Removed,
    /// This node holds a newer copy: nothing changed.
    Stale,
    /// A removal of an entry this node does not hold.
    Absent,
    /// The table is full.
    Full,
}

/// Whether a peer's `record` is behind what this node `held` of the same
/// connection: TCP by sequence numbers and states, the rest by expiry (a
/// later packet leaves a later expiry). A tuple whose protocol state changed
/// kind is a new connection: never behind.
fn peer_record_behind(record: &Conn, held: &Conn) -> bool {
    match (record.proto, held.proto) {
        (Proto::Tcp(r), Proto::Tcp(h)) => r.behind(&h),
        (Proto::Tcp(_), _) | (_, Proto::Tcp(_)) => false,
        _ => record.expires_at_secs() < held.expires_at_secs(),
    }
}

/// How long a connection an operator removed stays out of reach of a
/// mid-stream pickup, in seconds: longer than the pickup window after a
/// crash (`crash_pickup`, 30 s by default), and than a client's
/// retransmissions take to give up on a dead connection.
pub const KILLED_KEPT_SECS: u64 = 300;
/// At most this many removed connections are remembered (a `flush` of a
/// bigger table remembers the first ones).
pub const KILLED_KEPT: usize = 65_536;

/// The keys of connections an operator removed, each until a second of
/// the engine's clock. Read only by a packet of no connection that could
/// be picked up mid-stream, and only once something was removed.
#[derive(Default)]
struct Killed {
    any: AtomicBool,
    keys: DashMap<FlowKey, u64>,
}

impl Killed {
    fn remember(&self, key: FlowKey, now: Timestamp) {
        if self.keys.len() < KILLED_KEPT {
            self.keys.insert(key, now.as_secs() + KILLED_KEPT_SECS);
            self.any.store(true, Ordering::Relaxed);
        }
    }

    #[inline]
    fn holds(&self, key: &FlowKey, now: Timestamp) -> bool {
        self.any.load(Ordering::Relaxed)
            && self
                .keys
                .get(key)
                .is_some_and(|until| now.as_secs() < *until)
    }

    /// Forgets the keys whose time is up (the expiry walk's). `any` stays
    /// set: clearing it could race with a removal remembered meanwhile.
    fn expire(&self, now: Timestamp) {
        if self.any.load(Ordering::Relaxed) {
            self.keys.retain(|_, until| now.as_secs() < *until);
        }
    }
}
