//! TCP tracking: the state grid, the sequence checks it cannot make, and
//! window tracking.
//!
//! Per packet, in order: classify it, look up both grid cells ([`grid`]),
//! check the sequence numbers the grid cannot see ([`TcpConn::refine`]), run
//! the window check ([`window`]), and only then commit the new states and
//! windows.

pub mod grid;
mod window;

use crate::conntrack::{Role, Timeouts};
use crate::reason::Reason;
use crate::wire::TcpSegment;
pub use grid::{Class, EndpointState, Next};
use window::Endpoint;

/// Both endpoints' states and windows, indexed by [`Role`]. 40 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpConn {
    endpoints: [Endpoint; 2],
}

/// One direction's window, for listings (`conntrackd flows -v`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Window {
    /// Highest sequence number sent, plus its length.
    pub end: u32,
    /// Highest sequence number the peer has allowed (ack + window).
    pub maxend: u32,
    /// Largest window advertised, scaled.
    pub maxwin: u32,
    pub scale: u8,
}

/// How a packet went, for the caller: the reason and whether state changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpOutcome {
    pub reason: Reason,
    /// Whether the packet refreshes the connection's timeout.
    pub refresh: bool,
    /// The connection is over before it began (a RST before any reply, as
    /// when the server refuses the SYN): remove it now, as nf_conntrack
    /// does, so that a further RST finds nothing; a new SYN opens afresh.
    pub forget: bool,
}

impl TcpOutcome {
    /// The packet changes nothing (dropped, or passed without a state change);
    /// the reason says which.
    pub(super) fn unchanged(reason: Reason) -> Self {
        TcpOutcome {
            reason,
            refresh: false,
            forget: false,
        }
    }
}

/// The packet's class for the grid. The receiver's FIN is acknowledged when
/// the ACK reaches the receiver's end (its end includes the FIN, and after a
/// FIN it sends no new data).
#[inline]
fn classify(seg: &TcpSegment, receiver: &Endpoint) -> Class {
    let f = seg.flags;
    let acks_fin = || f.ack() && receiver.state.fin_sent() && !seg.ack.before(receiver.end);
    if f.rst() {
        Class::Rst
    } else if f.syn() && f.ack() {
        Class::SynAck
    } else if f.syn() {
        Class::Syn
    } else if f.fin() {
        if acks_fin() {
            Class::FinAckingFin
        } else {
            Class::Fin
        }
    } else if acks_fin() {
        Class::AckingFin
    } else {
        Class::Ack
    }
}

/// What `TcpConn::refine` lets the grid's cells do.
enum Refined {
    /// Move the endpoints as the cells say.
    Follow,
    /// Judge the packet by its window but move neither endpoint.
    Hold,
}

impl TcpConn {
    /// A connection opened by a SYN from the originator: `SYN_SENT:LISTEN`.
    pub fn from_syn(seg: &TcpSegment) -> TcpConn {
        let mut conn = TcpConn {
            endpoints: [
                Endpoint::new(EndpointState::Closed),
                Endpoint::new(EndpointState::Listen),
            ],
        };
        let outcome = conn.handle(Role::Originator, seg);
        debug_assert_eq!(outcome.reason, Reason::Tracked);
        conn
    }

    /// A connection picked up mid-stream (loose mode): `ESTABLISHED:ESTABLISHED`,
    /// with liberal window checks since the handshake's window facts were missed.
    pub fn from_midstream(seg: &TcpSegment) -> TcpConn {
        let mut conn = TcpConn {
            endpoints: [
                Endpoint::new(EndpointState::Established),
                Endpoint::new(EndpointState::Established),
            ],
        };
        for end in &mut conn.endpoints {
            end.set_liberal();
        }
        window::init_midstream(&mut conn.endpoints, Role::Originator, seg);
        conn
    }

    /// Hand-off: the kernel carries the connection's data from now on
    /// and the engine will see only its SYN, FIN and RST, so its windows go
    /// stale. Re-anchor both sides on this segment (from `from`) with liberal
    /// windows, as a loose pickup would, so that the FIN or RST that ends the
    /// connection is still followed through the closing states.
    pub fn hand_off(&mut self, from: Role, seg: &TcpSegment) {
        let mut fresh = TcpConn::from_midstream(seg);
        if from == Role::Responder {
            fresh.endpoints.swap(0, 1);
        }
        // The other side's next sequence number is what this segment acknowledges.
        let to = from.other();
        let reply = TcpSegment {
            src_port: seg.dst_port,
            dst_port: seg.src_port,
            flags: crate::wire::TcpFlags(crate::wire::TcpFlags::ACK),
            seq: seg.ack,
            ack: seg.seq + seg.seq_len(),
            window: seg.window,
            payload_len: 0,
            options: Default::default(),
        };
        let _ = fresh.handle(to, &reply);
        *self = fresh;
    }

    /// Bytes of a connection in a state file.
    pub const RECORD: usize = 2 * Endpoint::RECORD;

    /// The connection as a state file keeps it.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.endpoints[Role::Originator].encode(out);
        self.endpoints[Role::Responder].encode(out);
    }

    /// A connection read back from a state file (`None` if the bytes are not
    /// a valid one). Its windows re-anchor on each side's first packet: the
    /// endpoints went on while no conntrackd was judging.
    pub fn decode(b: &[u8; TcpConn::RECORD]) -> Option<TcpConn> {
        let (a, r) = b.split_at(Endpoint::RECORD);
        let conn = TcpConn {
            endpoints: [
                Endpoint::decode(a.try_into().ok()?)?,
                Endpoint::decode(r.try_into().ok()?)?,
            ],
        };
        let (originator, responder) = conn.states();
        TcpConn::possible(originator, responder).then_some(conn)
    }

    /// Whether this copy of a connection (a peer's record) is behind
    /// `other`, what this node holds of the same connection: an endpoint
    /// that has sent less, or has not come as far through its states. Sequence
    /// numbers only move forward within one connection (a reopened tuple is
    /// removed first), so a record never turns a connection back, whichever
    /// order a live update and a bulk copy arrive in. pfsync compares its
    /// updates the same way.
    pub fn behind(&self, other: &TcpConn) -> bool {
        Role::BOTH.iter().any(|&role| {
            let (mine, theirs) = (&self.endpoints[role], &other.endpoints[role]);
            let sent_less = match (mine.has_window(), theirs.has_window()) {
                (true, true) => mine.end.before(theirs.end),
                (false, true) => true,
                _ => false,
            };
            sent_less || phase(mine.state) < phase(theirs.state)
        })
    }

    /// Whether a connection can be in this pair of states. Only a responder
    /// that has not answered is in LISTEN, and only while the originator is
    /// in SYN_SENT: any other pair with LISTEN would let the grid's LISTEN
    /// cells pass packets no connection can produce.
    pub fn possible(originator: EndpointState, responder: EndpointState) -> bool {
        use EndpointState::{Listen, SynSent};
        match (originator, responder) {
            (Listen, _) => false,
            (o, Listen) => o == SynSent,
            _ => true,
        }
    }

    /// Windows are judged liberally (picked up mid-stream or handed off).
    pub fn is_liberal(&self) -> bool {
        self.endpoints[Role::Originator].liberal()
    }

    /// Each direction's window as the observer tracks it: [originator, responder].
    pub fn windows(&self) -> [Window; 2] {
        self.endpoints.map(|p| Window {
            end: p.end.0,
            maxend: p.maxend.0,
            maxwin: p.maxwin,
            scale: p.scale,
        })
    }

    pub fn states(&self) -> (EndpointState, EndpointState) {
        (
            self.endpoints[Role::Originator].state,
            self.endpoints[Role::Responder].state,
        )
    }

    /// The responder has sent something the window check accepted (the
    /// kernel's SEEN_REPLY): a connection picked up from one side only has
    /// not been answered yet.
    pub fn replied(&self) -> bool {
        self.endpoints[Role::Responder].has_window()
    }

    /// Both endpoints have been ESTABLISHED (handshake complete).
    pub fn is_established(&self) -> bool {
        self.states() == (EndpointState::Established, EndpointState::Established)
    }

    /// Still in the handshake: counts against the half-open limit.
    pub fn is_half_open(&self) -> bool {
        use EndpointState::*;
        let (originator, responder) = self.states();
        matches!(originator, SynSent | SynRecv) || matches!(responder, Listen | SynSent | SynRecv)
    }

    /// A bare SYN may replace this connection with a new one (nf_conntrack's
    /// reopen from TIME_WAIT/CLOSE): either side in TIME_WAIT, or reset.
    pub fn is_reopenable(&self) -> bool {
        use EndpointState::*;
        let (a, b) = self.states();
        a == TimeWait || b == TimeWait || (a == Closed && b == Closed)
    }

    /// Whether either side has data in flight not yet acknowledged.
    pub fn has_unacknowledged_data(&self) -> bool {
        self.endpoints.iter().any(|end| end.unacknowledged())
    }

    /// The timeout for a TCP connection's pair of states (nf_conntrack's
    /// per-state timeouts, mapped from the two endpoint states).
    #[inline]
    pub fn timeout(&self, to: &Timeouts) -> u32 {
        use EndpointState::*;
        let (a, b) = self.states();
        // The common case first: an established connection.
        if a == Established && b == Established {
            return if self.has_unacknowledged_data() {
                to.established.min(to.unacknowledged)
            } else {
                to.established
            };
        }
        let any = |s: EndpointState| a == s || b == s;
        let base = if any(SynRecv) {
            to.syn_recv
        } else if any(SynSent) || any(Listen) {
            to.syn_sent
        } else if any(LastAck) {
            to.last_ack
        } else if any(TimeWait) {
            to.time_wait
        } else if any(Closed) {
            to.close
        } else if any(FinWait1) || any(Closing) {
            to.fin_wait
        } else if any(CloseWait) || any(FinWait2) {
            to.close_wait
        } else {
            to.established
        };
        if self.has_unacknowledged_data() {
            base.min(to.unacknowledged)
        } else {
            base
        }
    }

    /// Processes one segment sent by the endpoint in role `from`.
    /// On any drop reason the connection is unchanged.
    pub fn handle(&mut self, from: Role, seg: &TcpSegment) -> TcpOutcome {
        let to = from.other();
        let (sender, receiver) = (self.endpoints[from].state, self.endpoints[to].state);
        let class = classify(seg, &self.endpoints[to]);
        let (mut next_sender, mut next_receiver) = grid::lookup(from, class, sender, receiver);
        if next_sender == Next::Invalid || next_receiver == Next::Invalid {
            return TcpOutcome::unchanged(Reason::BadTransition);
        }
        let ignored = next_sender == Next::Ignore || next_receiver == Next::Ignore;
        let mut endpoints = self.endpoints;
        match self.refine(from, seg, class, ignored, &mut endpoints) {
            Ok(Refined::Follow) => {}
            Ok(Refined::Hold) => (next_sender, next_receiver) = (Next::Stay, Next::Stay),
            Err(outcome) => return outcome,
        }
        // An `IG` cell: pass, change no state (refine may have noted what the
        // packet acknowledged).
        if ignored {
            self.endpoints = endpoints;
            return TcpOutcome::unchanged(ignored_as(class, sender));
        }
        let replied = self.replied();
        match window::check(&mut endpoints, from, seg, self.is_established()) {
            Ok(()) => {}
            // The segment's data counts as sent; the states stay.
            Err(outcome) if outcome.reason == Reason::WindowOvershoot => {
                self.endpoints = endpoints;
                return outcome;
            }
            Err(outcome) => return outcome,
        }
        // The states after the copy: written into the copy first, their
        // byte stores would be read back at once by the copy's wide loads
        // (a store-forwarding stall on every tracked packet).
        self.endpoints = endpoints;
        self.endpoints[from].state = apply(next_sender, sender);
        self.endpoints[to].state = apply(next_receiver, receiver);
        TcpOutcome {
            reason: Reason::Tracked,
            refresh: true,
            forget: class == Class::Rst && !replied,
        }
    }

    /// The sequence numbers a packet's class and states do not tell: checks
    /// that the grid cannot make, in one place, each commented. `Err` ends
    /// the packet's processing with that outcome (a drop, or a pass without
    /// change); `ignored`: the grid passes the packet unchanged.
    // Every packet goes through it, most to its last arm: called rather than
    // inlined, it cost an established ACK about 5 % (benches/verdict.rs).
    #[inline(always)]
    fn refine(
        &self,
        from: Role,
        seg: &TcpSegment,
        class: Class,
        ignored: bool,
        endpoints: &mut [Endpoint; 2],
    ) -> Result<Refined, TcpOutcome> {
        let to = from.other();
        let sender = self.endpoints[from].state;
        use Class::*;
        use EndpointState::{Established, Listen, SynRecv, SynSent};
        match (class, sender) {
            // A side restored from a state file and not yet confirmed by its
            // peer (window's F_PROVISIONAL): its sequence numbers are its own
            // word. Its FIN is judged by the window but moves no state, so
            // that one forged packet after a restart cannot start a teardown;
            // once the peer has answered, the FIN's retransmission counts.
            (Fin | FinAckingFin, _) if self.endpoints[from].provisional() => Ok(Refined::Hold),
            // The `IG` cell of an ACK from a responder still in LISTEN: a
            // challenge ACK. It occupies no sequence space (with data it is
            // not one). Remember what it acknowledges: the client's RST
            // answering it starts there.
            (Ack, Listen) if seg.payload_len > 0 => {
                Err(TcpOutcome::unchanged(Reason::BadTransition))
            }
            (Ack, Listen) => {
                if seg.flags.ack() {
                    endpoints[from].note_ack(seg.ack);
                }
                Ok(Refined::Follow)
            }
            // The client's RST answering that challenge ACK (seq = its ack):
            // it tells the server to drop its old connection and must not end
            // this new attempt, whose retransmitted SYN follows (nf_conntrack:
            // "reset in response to a challenge-ack we let through earlier").
            (Rst, SynSent)
                if !self.endpoints[to].has_window()
                    && self.endpoints[to].maxack() == Some(seg.seq) =>
            {
                Err(TcpOutcome::unchanged(Reason::ChallengeAckRst))
            }
            // A retransmitted SYN+ACK after the handshake (our ACK was lost
            // beyond us), which the grid passes unchanged: only if it is the
            // same SYN+ACK (seq = ISN).
            (SynAck, Established) if ignored => {
                if seg.seq + 1 == self.endpoints[from].end && !seg.ack.after(self.endpoints[to].end)
                {
                    Ok(Refined::Follow)
                } else {
                    Err(TcpOutcome::unchanged(Reason::SynAckSeqMismatch))
                }
            }
            // A SYN+ACK must acknowledge exactly the ISN+1 of the SYN it
            // answers (the SYN's seq j: ack = j+1), or with TCP Fast Open any
            // part of the SYN's data. Before the handshake's final ACK the
            // receiver's end is still ISN+1 (+ SYN data).
            (SynAck, _) => {
                if !endpoints[to].acks_syn(seg.ack) {
                    return Err(TcpOutcome::unchanged(Reason::SynAckBadAck));
                }
                // A responder that restarted answers with a new ISN: start over
                // on its window (as nf_conntrack does in SYN_RECV).
                if sender == SynRecv && seg.seq + 1 != endpoints[from].end {
                    endpoints[from].reset_window();
                }
                Ok(Refined::Follow)
            }
            // A SYN again. With the same ISN, a retransmission: the window
            // check judges it. With a new ISN before the other side has
            // answered (the client restarted, or a storm of SYNs on one
            // tuple): follow it, re-initialise its window from this SYN; the
            // SYN+ACK then names the SYN it answers. Once the other side has
            // answered (its SYN+ACK, or its own SYN in a simultaneous open),
            // it holds this side's ISN and answers a SYN with another ISN by
            // an ACK of the one it holds (a challenge ACK, RFC 5961 §4): pass
            // such a SYN and change nothing, as nf_conntrack does (sIG).
            // Following it would let one spoofed SYN break a real handshake,
            // and would drop the RST of a restarted client answering that ACK
            // (seq = its old ISN+1), which the server needs to let go of the
            // old attempt. (A SYN+ACK of the passed SYN is then dropped as
            // `synack_bad_ack`, where nf_conntrack takes that SYN up: README,
            // "Where conntrackd differs from nf_conntrack".)
            (Syn, SynSent | SynRecv) => {
                if seg.seq + 1 == endpoints[from].end {
                    Ok(Refined::Follow)
                } else if !endpoints[to].has_window() {
                    endpoints[from].reset_window();
                    Ok(Refined::Follow)
                } else {
                    Err(TcpOutcome::unchanged(Reason::TcpIgnored))
                }
            }
            // The handshake's final ACK must acknowledge the responder's ISN+1
            // (the SYN+ACK's seq k: ack = k+1); a FIN may ride on it.
            (Ack | AckingFin | Fin | FinAckingFin, SynSent) => {
                if !endpoints[to].has_window() || seg.ack != endpoints[to].end {
                    return Err(TcpOutcome::unchanged(Reason::HandshakeBadAck));
                }
                Ok(Refined::Follow)
            }
            _ => Ok(Refined::Follow),
        }
    }
}

/// What a packet that an `IG` cell passes is called.
fn ignored_as(class: Class, sender: EndpointState) -> Reason {
    match (class, sender) {
        (Class::Ack, EndpointState::Listen) => Reason::ChallengeAck,
        _ => Reason::TcpIgnored,
    }
}

fn apply(next: Next, current: EndpointState) -> EndpointState {
    match next {
        Next::To(s) => s,
        Next::Stay | Next::Ignore | Next::Invalid => current,
    }
}

/// What `TcpConn::handle` decides for every (sender, originator state,
/// responder state, flag class, ack relation), one line each, for every
/// pair of states a connection can be in ([`TcpConn::possible`]), for the
/// checked-in outcome table (`tests/snapshots/tcp_outcomes.txt`): a change to
/// the grid, to `refine` or to the window check shows up there as a reviewed
/// diff.
///
/// The connection is built in the two states with windows as after a
/// handshake (an endpoint in LISTEN has sent nothing). The sender sends at
/// its next sequence number (a FIN from a side that already sent one is its
/// retransmission), acknowledging either everything the other side sent
/// ("end") or one less ("end-1": not its FIN, when it sent one).
pub fn render_outcomes() -> String {
    use crate::wire::{SeqNum, TcpFlags};
    use std::fmt::Write as _;
    // What the sender sends: one flag set per class but the acks-FIN ones,
    // which the ack relation makes.
    const SENT: [(&str, u8); 5] = [
        ("SYN", TcpFlags::SYN),
        ("SYN+ACK", TcpFlags::SYN | TcpFlags::ACK),
        ("FIN", TcpFlags::FIN | TcpFlags::ACK),
        ("ACK", TcpFlags::ACK),
        ("RST", TcpFlags::RST),
    ];
    let mut out = String::from(
        "from originator responder  sent     ack      -> originator responder  reason\n",
    );
    for from in Role::BOTH {
        for a in EndpointState::ALL {
            for b in EndpointState::ALL {
                if !TcpConn::possible(a, b) {
                    continue;
                }
                for (sent, flags) in SENT {
                    for acks_all in [true, false] {
                        let mut conn = TcpConn {
                            endpoints: [Endpoint::new(a), Endpoint::new(b)],
                        };
                        for (p, end) in conn.endpoints.iter_mut().zip([1_000_000u32, 5_000_000]) {
                            if p.state != EndpointState::Listen {
                                p.end = SeqNum(end);
                                p.maxwin = 65_535;
                            }
                        }
                        for role in Role::BOTH {
                            let other = conn.endpoints[role.other()];
                            conn.endpoints[role].maxend = other.end + 65_535;
                        }
                        let (sender, receiver) =
                            (conn.endpoints[from], conn.endpoints[from.other()]);
                        let retransmitted_fin =
                            flags & TcpFlags::FIN != 0 && sender.state.fin_sent();
                        let seg = TcpSegment {
                            src_port: 40_000,
                            dst_port: 80,
                            flags: TcpFlags(flags),
                            seq: if retransmitted_fin {
                                sender.end - 1
                            } else {
                                sender.end
                            },
                            ack: if acks_all {
                                receiver.end
                            } else {
                                receiver.end - 1
                            },
                            window: 65_535,
                            payload_len: 0,
                            options: Default::default(),
                        };
                        let outcome = conn.handle(from, &seg);
                        let (x, y) = conn.states();
                        let _ = writeln!(
                            out,
                            "{:<4} {:<10} {:<11} {:<8} {:<8} -> {:<10} {:<11} {}",
                            match from {
                                Role::Originator => "orig",
                                Role::Responder => "resp",
                            },
                            a.name(),
                            b.name(),
                            sent,
                            if acks_all { "end" } else { "end-1" },
                            x.name(),
                            y.name(),
                            outcome.reason.name()
                        );
                    }
                }
            }
        }
    }
    out
}

/// How far through its life an endpoint's state is: states of one phase can
/// follow each other either way (CLOSE_WAIT and FIN_WAIT_1 are both
/// "closing"), phases only go forward.
fn phase(state: EndpointState) -> u8 {
    use EndpointState::*;
    match state {
        Listen => 0,
        SynSent | SynRecv => 1,
        Established => 2,
        FinWait1 | FinWait2 | Closing | CloseWait | LastAck => 3,
        TimeWait | Closed => 4,
    }
}
