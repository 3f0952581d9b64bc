//! Window tracking after Guido van Rooij, "Real Stateful TCP Packet Filtering
//! in IP Filter", as nf_conntrack implements it. For a segment from `sender`
//! to `receiver`, with end = seq + len (+1 for SYN, +1 for FIN):
//!
//! ```text
//!   I.   seq <= sender.maxend                              (not past the receiver's window)
//!   II.  end >= sender.end - receiver.maxwin               (not already acknowledged data)
//!   III. ack <= receiver.end                               (acknowledges only data sent)
//!   IV.  ack >= receiver.end - max(sender.maxwin, 66000)   (not an ancient ACK)
//! ```
//!
//! I and III failing drop the segment. II and IV failing pass it without any
//! state change (old retransmissions and overly delayed ACKs happen on real
//! networks; dropping them stalls connections, see nf_conntrack's
//! NFCT_TCP_IGNORE). A segment failing only I, whose end lies past the right
//! edge by no more than the receiver's largest window, passes too, and its
//! data counts as sent (window probes, shrinking windows, TSO bursts; Linux
//! 6.1's "N bytes more than expected"). A RST must pass all four, and must not
//! start before what its receiver already acknowledged (`maxack`).

use super::{EndpointState, TcpOutcome};
use crate::conntrack::Role;
use crate::reason::Reason;
use crate::wire::seq::SeqNum;
use crate::wire::TcpSegment;
use std::ops::{Index, IndexMut};

/// RFC 1323: the largest window shift.
const MAX_WINDOW_SCALE: u8 = 14;
/// nf_conntrack's MAXACKWINCONST: lower bound of condition IV's slack.
const MIN_ACK_WINDOW: u32 = 66000;

const F_WINDOW_SCALE: u8 = 1 << 0;
/// `maxack` holds an ACK this endpoint sent (nf_conntrack's MAXACK_SET).
const F_MAXACK: u8 = 1 << 1;
const F_UNACKNOWLEDGED: u8 = 1 << 2;
const F_LIBERAL: u8 = 1 << 3;
/// The SYN carried data (TCP Fast Open): the SYN+ACK may acknowledge it or not.
const F_SYN_DATA: u8 = 1 << 4;
/// Restored from a state file: this endpoint's window is stale until its
/// first packet after the restart re-anchors it (see `check`).
const F_RESTORED: u8 = 1 << 5;
/// Re-anchored from its own first packet after a restore, not yet confirmed
/// by the other side acknowledging within the window: until then its RST
/// is exact only at what the other side acknowledged, and its FIN moves no
/// state (one forged packet must not re-anchor and then end a connection).
const F_PROVISIONAL: u8 = 1 << 6;
/// Every flag a state file may carry (a table saved soon after a restart
/// holds re-anchored, provisional endpoints).
const F_ALL: u8 = F_WINDOW_SCALE
    | F_MAXACK
    | F_UNACKNOWLEDGED
    | F_LIBERAL
    | F_SYN_DATA
    | F_RESTORED
    | F_PROVISIONAL;
/// Largest payload a SYN can carry (one segment).
const MAX_SYN_DATA: u32 = 65535;

/// What the observer knows of one endpoint (nf_conntrack's ip_ct_tcp_state).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Endpoint {
    /// Highest seq + len this endpoint has sent (td_end).
    pub end: SeqNum,
    /// Highest ack + window the other endpoint has allowed it (td_maxend).
    pub maxend: SeqNum,
    /// Largest window this endpoint has advertised, scaled (td_maxwin); 0 = nothing seen yet.
    pub maxwin: u32,
    /// Highest ACK this endpoint has sent (td_maxack), when `F_MAXACK` is set:
    /// a RST to it must not start before this.
    pub maxack: SeqNum,
    pub scale: u8,
    flags: u8,
    pub state: EndpointState,
}

impl Endpoint {
    /// Bytes of one endpoint in a state file.
    pub const RECORD: usize = 19;

    pub fn new(state: EndpointState) -> Endpoint {
        Endpoint {
            end: SeqNum(0),
            maxend: SeqNum(0),
            maxwin: 0,
            maxack: SeqNum(0),
            scale: 0,
            flags: 0,
            state,
        }
    }

    pub fn has_window(&self) -> bool {
        self.maxwin != 0
    }

    pub fn unacknowledged(&self) -> bool {
        self.flags & F_UNACKNOWLEDGED != 0
    }

    /// Whether `ack` acknowledges this side's SYN: exactly ISN+1, or, when the
    /// SYN carried data (TCP Fast Open, RFC 7413), anything from ISN+1 up to
    /// the end of that data (the server may refuse the data and ack only the SYN).
    pub fn acks_syn(&self, ack: SeqNum) -> bool {
        if self.flags & F_SYN_DATA == 0 {
            return ack == self.end;
        }
        !ack.after(self.end) && ack.after(self.end - MAX_SYN_DATA - 2)
    }

    pub fn set_liberal(&mut self) {
        self.flags |= F_LIBERAL;
    }

    pub fn liberal(&self) -> bool {
        self.flags & F_LIBERAL != 0
    }

    /// Restored and not yet confirmed by the other side (see `F_PROVISIONAL`).
    pub fn provisional(&self) -> bool {
        self.flags & (F_RESTORED | F_PROVISIONAL) != 0
    }

    /// The highest ACK this endpoint has sent, if it sent one.
    pub fn maxack(&self) -> Option<SeqNum> {
        (self.flags & F_MAXACK != 0).then_some(self.maxack)
    }

    /// Records an ACK this endpoint sent.
    pub fn note_ack(&mut self, ack: SeqNum) {
        if self.flags & F_MAXACK == 0 || ack.after(self.maxack) {
            self.maxack = ack;
            self.flags |= F_MAXACK;
        }
    }

    /// The `RECORD` bytes a state file keeps of this endpoint.
    pub fn encode(&self, out: &mut Vec<u8>) {
        for v in [self.end.0, self.maxend.0, self.maxwin, self.maxack.0] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&[self.scale, self.flags, self.state as u8]);
    }

    /// An endpoint from its `RECORD` bytes, if they are valid; marked
    /// restored (its window re-anchors on its first packet) when it has one.
    pub fn decode(b: &[u8; Endpoint::RECORD]) -> Option<Endpoint> {
        let u = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let (scale, flags, state) = (b[16], b[17], b[18]);
        if scale > MAX_WINDOW_SCALE || flags & !F_ALL != 0 {
            return None;
        }
        let mut p = Endpoint::new(*EndpointState::ALL.get(state as usize)?);
        p.end = SeqNum(u(0));
        p.maxend = SeqNum(u(4));
        p.maxwin = u(8);
        p.maxack = SeqNum(u(12));
        p.scale = scale;
        // A provisional endpoint is restored again: its first packet after
        // this restart re-anchors it, provisional until the peer confirms.
        p.flags = flags & !F_PROVISIONAL;
        if p.has_window() {
            p.flags |= F_RESTORED;
        }
        Some(p)
    }

    /// Forget the window so the next SYN initialises it again.
    pub fn reset_window(&mut self) {
        let state = self.state;
        let liberal = self.flags & F_LIBERAL;
        *self = Endpoint::new(state);
        self.flags = liberal;
    }
}

/// A connection's two endpoints, by role: `endpoints[from]`, `endpoints[from.other()]`.
impl Index<Role> for [Endpoint; 2] {
    type Output = Endpoint;
    #[inline]
    fn index(&self, role: Role) -> &Endpoint {
        &self[role.index()]
    }
}

impl IndexMut<Role> for [Endpoint; 2] {
    #[inline]
    fn index_mut(&mut self, role: Role) -> &mut Endpoint {
        &mut self[role.index()]
    }
}

/// First sight of an endpoint through its SYN or SYN+ACK.
fn init_from_syn(endpoints: &mut [Endpoint; 2], from: Role, seg: &TcpSegment, end: SeqNum) {
    let to = from.other();
    let p = &mut endpoints[from];
    p.end = end;
    p.maxend = end;
    p.maxwin = (seg.window as u32).max(1);
    p.flags &= F_LIBERAL;
    if let Some(shift) = seg.options.window_scale {
        p.flags |= F_WINDOW_SCALE;
        p.scale = shift.min(MAX_WINDOW_SCALE);
    }
    if seg.payload_len > 0 {
        p.flags |= F_SYN_DATA;
    }
    // RFC 1323: scaling applies only when both SYNs carried the option. Only
    // the second SYN (the peer already seen) can tell; after the first, the
    // shift stays pending.
    if endpoints[to].has_window() {
        let both = endpoints[from].flags & F_WINDOW_SCALE != 0
            && endpoints[to].flags & F_WINDOW_SCALE != 0;
        if !both {
            endpoints[from].scale = 0;
            endpoints[to].scale = 0;
        }
    }
}

/// Loose pickup: initialise from a mid-stream segment, as nf_conntrack does.
pub(super) fn init_midstream(endpoints: &mut [Endpoint; 2], from: Role, seg: &TcpSegment) {
    let to = from.other();
    let end = seg.seq + seg.seq_len();
    let p = &mut endpoints[from];
    p.end = end;
    p.maxwin = (seg.window as u32).max(1);
    p.maxend = end + p.maxwin;
    let r = &mut endpoints[to];
    r.end = seg.ack;
    r.maxend = seg.ack;
}

/// Runs the four checks and, when they pass, updates both endpoints.
// Not inlined: inlined into `TcpConn::handle`, whose copy of the two
// endpoints is a local, LLVM knows a `Role` is one of two and splits the
// copy into one register or stack slot per field and endpoint, each access
// `endpoints[from]` a conditional move between the two: 110 instructions
// more per established ACK (callgrind, examples/decide_loop est) than
// working through this pointer.
#[inline(never)]
pub(super) fn check(
    endpoints: &mut [Endpoint; 2],
    from: Role,
    seg: &TcpSegment,
    established: bool,
) -> Result<(), TcpOutcome> {
    let to = from.other();
    let seq = seg.seq;
    let end = seq + seg.seq_len();
    let win = seg.window as u32;
    let is_rst = seg.flags.rst();
    // Every early return leaves the connection unchanged; whether the packet
    // passes follows from the reason (`old_retransmission` and `delayed_ack`
    // pass, the rest drop). A RST that fails any check is out of window.
    let reject = |r: Reason| {
        Err(TcpOutcome::unchanged(if is_rst {
            Reason::RstOutOfWindow
        } else {
            r
        }))
    };

    if !endpoints[from].has_window() {
        if seg.flags.syn() {
            init_from_syn(endpoints, from, seg, end);
            if !seg.flags.ack() {
                // A bare SYN: nothing to check against yet.
                return Ok(());
            }
        } else if is_rst {
            // A RST from a side we never saw send (the responder refusing the
            // SYN): valid only as RST+ACK of exactly the SYN's ISN+1.
            return if seg.flags.ack() && seg.ack == endpoints[to].end {
                Ok(())
            } else {
                reject(Reason::RstOutOfWindow)
            };
        } else if endpoints[from].liberal() {
            // Picked up mid-stream: this side's first packet tells its window.
            init_midstream(endpoints, from, seg);
        } else {
            return reject(Reason::BadTransition);
        }
    }

    // Restored from a state file: this side went on while no conntrackd was
    // judging (its packets passed unjudged, or waited), so our view of its
    // window is stale. Its first packet after the restart re-anchors it:
    // what it sends and what it acknowledges move the view forward, once,
    // for this side only (the flag clears when the packet passes); every
    // later packet is judged as usual. A RST gets no such leniency.
    if endpoints[from].flags & F_RESTORED != 0 && !is_rst {
        let s = &mut endpoints[from];
        s.flags &= !F_RESTORED;
        s.flags |= F_PROVISIONAL;
        if end.after(s.end) {
            s.end = end;
        }
        if end.after(s.maxend) {
            s.maxend = end;
        }
        if seg.flags.ack() && seg.ack.after(endpoints[to].end) {
            endpoints[to].end = seg.ack;
        }
    }

    // No data (nor a new FIN) from a side after its FIN: only retransmissions.
    if endpoints[from].state.fin_sent() && end.after(endpoints[from].end) {
        return reject(Reason::DataAfterFin);
    }

    let ack = if !seg.flags.ack() || (is_rst && seg.ack == SeqNum(0)) {
        // No ACK (or a RST+ACK with ack 0 from broken stacks): treat as acking all.
        endpoints[to].end
    } else {
        seg.ack
    };
    let (sender, receiver) = (&endpoints[from], &endpoints[to]);
    let liberal = sender.liberal();

    // A RST that starts before what its receiver already acknowledged is
    // stale or forged (nf_conntrack's "invalid rst"). Outside ESTABLISHED a
    // RST with seq 0 answers a SYN we let through and is judged below. Once
    // the connection is closing the check is off, as in the kernel: stacks
    // send inexact RSTs while closing (the kernel's conntrack_inexact_rst
    // selftest), and the window check below still applies.
    let closing = || {
        [sender.state, receiver.state]
            .iter()
            .any(|s| s.fin_sent() || *s == EndpointState::CloseWait)
    };
    if is_rst && !liberal && !closing() {
        if let Some(maxack) = receiver.maxack() {
            if seq.before(maxack) && (seq != SeqNum(0) || established) {
                return Err(TcpOutcome::unchanged(Reason::RstBehindAck));
            }
        }
    }

    // III. It acknowledges only data that was sent.
    let ack_ok = ack.before(receiver.end + 1);
    // II. Its end is not below what the receiver has already acknowledged.
    let in_receive_window = !receiver.has_window() || end.after(sender.end - receiver.maxwin - 1);
    // IV. Its ACK is not older than the largest window allows.
    let ack_slack = sender.maxwin.max(MIN_ACK_WINDOW);
    let ack_recent = ack.after(receiver.end - ack_slack - 1);
    // I. The segment starts inside the receiver's window.
    if !seq.before(sender.maxend + 1) && !liberal {
        // Past the right edge by at most the receiver's largest window, and
        // every other check passes: the data counts as sent (so that its ACK
        // passes), nothing else changes.
        let overshoot = end.distance_from(sender.maxend).wrapping_add(1);
        if !is_rst
            && ack_ok
            && in_receive_window
            && ack_recent
            && receiver.has_window()
            && overshoot <= receiver.maxwin
        {
            let s = &mut endpoints[from];
            if end.after(s.end) {
                s.end = end;
                s.flags |= F_UNACKNOWLEDGED;
            }
            return Err(TcpOutcome::unchanged(Reason::WindowOvershoot));
        }
        return reject(Reason::SeqAboveWindow);
    }
    if !ack_ok && !liberal {
        return reject(Reason::AckAboveSent);
    }
    if !in_receive_window && !liberal {
        return reject(Reason::OldRetransmission);
    }
    if !ack_recent && !liberal {
        return reject(Reason::DelayedAck);
    }
    // RST exactness (RFC 5961 §3.2): in ESTABLISHED an in-window RST that is
    // neither at what the receiver acknowledged last (its RCV.NXT) nor at the
    // sender's next sequence number (a RST right after its data) gets a
    // challenge ACK from the receiver; the connection stays.
    // A liberal connection's `end` may be stale (handed off to the kernel):
    // an in-window RST ends it.
    if is_rst && established && !liberal {
        let exact = (seq == sender.end && !sender.provisional()) || receiver.maxack() == Some(seq);
        if !exact {
            return Err(TcpOutcome::unchanged(Reason::RstChallenged));
        }
    }

    // Update the sender.
    let scaled_win = if seg.flags.syn() {
        win
    } else {
        win << sender.scale
    };
    let s = &mut endpoints[from];
    if s.maxwin < scaled_win {
        s.maxwin = scaled_win;
    }
    if seg.flags.ack() {
        s.note_ack(ack);
    }
    let acks_within_window = seg.flags.ack() && !liberal;
    if end.after(s.end) {
        s.end = end;
        s.flags |= F_UNACKNOWLEDGED;
    }
    let sender_maxend = s.maxend;
    // Update the receiver.
    let r = &mut endpoints[to];
    if r.maxwin != 0 && end.after(sender_maxend) {
        r.maxwin = r.maxwin.wrapping_add(end.distance_from(sender_maxend));
    }
    if (ack + scaled_win).after(r.maxend - 1) {
        r.maxend = ack + scaled_win;
        if scaled_win == 0 {
            r.maxend = r.maxend + 1;
        }
    }
    if ack == r.end {
        r.flags &= !F_UNACKNOWLEDGED;
    }
    // The other side acknowledged within the window (checks III and IV
    // passed): a re-anchored end is confirmed.
    if acks_within_window {
        r.flags &= !F_PROVISIONAL;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Each of the four inequalities at its edge: the last value that passes
    //! and the first that fails, with and without window scaling, on
    //! numbers that cross 2^32.
    use super::*;
    use crate::wire::TcpFlags;

    const SENDER: Role = Role::Originator;
    const RECEIVER: Role = Role::Responder;

    /// Sender and receiver, both established, with `end`s at `base` and
    /// `base + 7_000`, the receiver's window `rwin` (scaled) open from the
    /// sender's end, and the sender's largest window `swin`.
    fn endpoints(base: u32, rwin: u32, swin: u32) -> [Endpoint; 2] {
        let mut s = Endpoint::new(EndpointState::Established);
        let mut r = Endpoint::new(EndpointState::Established);
        s.end = SeqNum(base);
        s.maxend = SeqNum(base) + rwin;
        s.maxwin = swin;
        r.end = SeqNum(base.wrapping_add(7_000));
        r.maxend = r.end + swin;
        r.maxwin = rwin;
        [s, r]
    }

    fn ack_segment(seq: SeqNum, ack: SeqNum, len: u32) -> TcpSegment {
        TcpSegment {
            src_port: 1,
            dst_port: 2,
            flags: TcpFlags(TcpFlags::ACK),
            seq,
            ack,
            window: 1000,
            payload_len: len,
            options: Default::default(),
        }
    }

    fn judge(p: [Endpoint; 2], seq: SeqNum, ack: SeqNum, len: u32) -> Reason {
        let mut p = p;
        match check(&mut p, SENDER, &ack_segment(seq, ack, len), true) {
            Ok(()) => Reason::Tracked,
            Err(o) => o.reason,
        }
    }

    /// Bases that put every edge below, across and above the wrap.
    const BASES: [u32; 3] = [1_000, u32::MAX - 30_000, u32::MAX];
    /// (receiver's window, sender's largest window): unscaled, and scaled by 2^7.
    const WINDOWS: [(u32, u32); 2] = [(65_535, 65_535), (65_535 << 7, 3_000 << 7)];

    #[test]
    fn i_the_segment_starts_at_most_at_the_right_edge() {
        for base in BASES {
            for (rwin, swin) in WINDOWS {
                let p = endpoints(base, rwin, swin);
                let (edge, ack) = (p[SENDER].maxend, p[RECEIVER].end);
                assert_eq!(judge(p, edge, ack, 0), Reason::Tracked, "{base} {rwin}");
                // One past: within the receiver's largest window, an overshoot...
                assert_eq!(judge(p, edge + 1, ack, 10), Reason::WindowOvershoot);
                // ...beyond it, invalid.
                assert_eq!(judge(p, edge + 1, ack, rwin), Reason::SeqAboveWindow);
                let mut tiny = p;
                tiny[RECEIVER].maxwin = 1;
                assert_eq!(judge(tiny, edge + 1, ack, 0), Reason::SeqAboveWindow);
            }
        }
    }

    #[test]
    fn ii_the_segment_ends_no_lower_than_the_receivers_window_allows() {
        for base in BASES {
            for (rwin, swin) in WINDOWS {
                let p = endpoints(base, rwin, swin);
                let ack = p[RECEIVER].end;
                // end = seq + len; the lowest end that passes is sender.end - rwin.
                let lowest = p[SENDER].end - rwin;
                assert_eq!(
                    judge(p, lowest - 10, ack, 10),
                    Reason::Tracked,
                    "{base} {rwin}"
                );
                assert_eq!(judge(p, lowest - 11, ack, 10), Reason::OldRetransmission);
            }
        }
    }

    #[test]
    fn iii_the_ack_covers_only_data_sent() {
        for base in BASES {
            for (rwin, swin) in WINDOWS {
                let p = endpoints(base, rwin, swin);
                let (seq, sent) = (p[SENDER].end, p[RECEIVER].end);
                assert_eq!(judge(p, seq, sent, 0), Reason::Tracked, "{base} {rwin}");
                assert_eq!(judge(p, seq, sent + 1, 0), Reason::AckAboveSent);
            }
        }
    }

    #[test]
    fn iv_the_ack_is_no_older_than_the_largest_window_allows() {
        for base in BASES {
            for (rwin, swin) in WINDOWS {
                let p = endpoints(base, rwin, swin);
                let seq = p[SENDER].end;
                // Slack: the sender's largest window, at least 66000.
                let oldest = p[RECEIVER].end - swin.max(MIN_ACK_WINDOW);
                assert_eq!(judge(p, seq, oldest, 0), Reason::Tracked, "{base} {swin}");
                assert_eq!(judge(p, seq, oldest - 1, 0), Reason::DelayedAck);
            }
        }
    }

    #[test]
    fn an_overshoot_counts_its_data_as_sent() {
        let mut p = endpoints(u32::MAX - 100, 65_535, 65_535);
        let edge = p[SENDER].maxend;
        let seg = ack_segment(edge + 1, p[RECEIVER].end, 100);
        let outcome = check(&mut p, SENDER, &seg, true).unwrap_err();
        assert_eq!(outcome.reason, Reason::WindowOvershoot);
        assert_eq!(p[SENDER].end, edge + 101);
        assert!(p[SENDER].unacknowledged());
    }
}
