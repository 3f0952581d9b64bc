//! The TCP state machine as one auditable table.
//!
//! conntrackd tracks each endpoint separately, as pf does and as RFC 9293
//! describes TCP (each end has its own state: `FIN_WAIT_2:CLOSE_WAIT`). Every packet moves two endpoints: the one
//! that sent it (by what it sent, [`SENT`]) and the one it goes to (by what it
//! receives, [`RECEIVED`]). A packet passes the state machine when neither cell
//! says `IV`; where either says `IG` the packet passes and changes nothing.
//!
//! The observer assumes a packet it lets through arrives: the receiver's state
//! changes as the packet passes (a FIN moves its receiver to CLOSE_WAIT).
//!
//! Exceptions the grid cannot express (the handshake's exact ACK numbers, the
//! RST that answers a challenge ACK, a simultaneous close seen from
//! CLOSE_WAIT) live in `super::TcpConn::refine`, each commented; sequence
//! numbers are the window check's ([`super::window`]). `tests/snapshots/tcp_grid.txt` holds the
//! rendered grid: a change here is a reviewed diff there.

use std::fmt;

/// One endpoint's TCP state, with the RFC 793 name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum EndpointState {
    Closed,
    Listen,
    SynSent,
    SynRecv,
    Established,
    FinWait1,
    FinWait2,
    Closing,
    TimeWait,
    CloseWait,
    LastAck,
}

impl EndpointState {
    pub const ALL: [EndpointState; 11] = [
        Closed,
        Listen,
        SynSent,
        SynRecv,
        Established,
        FinWait1,
        FinWait2,
        Closing,
        TimeWait,
        CloseWait,
        LastAck,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Closed => "CLOSED",
            Listen => "LISTEN",
            SynSent => "SYN_SENT",
            SynRecv => "SYN_RECV",
            Established => "ESTABLISHED",
            FinWait1 => "FIN_WAIT_1",
            FinWait2 => "FIN_WAIT_2",
            Closing => "CLOSING",
            TimeWait => "TIME_WAIT",
            CloseWait => "CLOSE_WAIT",
            LastAck => "LAST_ACK",
        }
    }

    /// Two-letter column label used in the grid.
    pub const fn abbrev(self) -> &'static str {
        match self {
            Closed => "CL",
            Listen => "LI",
            SynSent => "SS",
            SynRecv => "SR",
            Established => "ES",
            FinWait1 => "F1",
            FinWait2 => "F2",
            Closing => "CG",
            TimeWait => "TW",
            CloseWait => "CW",
            LastAck => "LA",
        }
    }

    /// This endpoint has sent its FIN or RST (so it may send no new data).
    pub const fn fin_sent(self) -> bool {
        matches!(
            self,
            FinWait1 | FinWait2 | Closing | TimeWait | LastAck | Closed
        )
    }
}

impl fmt::Display for EndpointState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

use EndpointState::*;

/// What a cell says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Move to this state.
    To(EndpointState),
    /// Keep the current state.
    Stay,
    /// Pass the packet without any state change (nf_conntrack's sIG).
    Ignore,
    /// Drop: this endpoint cannot send/receive this now.
    Invalid,
}

/// Flag class of what an endpoint sent (nf_conntrack's priority: RST > SYN+ACK > SYN > FIN > ACK).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Sent {
    Syn,
    SynAck,
    Fin,
    Ack,
    Rst,
}

impl Sent {
    pub const ALL: [Sent; 5] = [Sent::Syn, Sent::SynAck, Sent::Fin, Sent::Ack, Sent::Rst];
    pub const fn name(self) -> &'static str {
        match self {
            Sent::Syn => "SYN",
            Sent::SynAck => "SYN+ACK",
            Sent::Fin => "FIN",
            Sent::Ack => "ACK",
            Sent::Rst => "RST",
        }
    }
}

/// Flag class of what an endpoint received. An ACK (or FIN) that covers the
/// receiver's own FIN is its own class: it is what moves FIN_WAIT_1 on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Received {
    Syn,
    SynAck,
    Fin,
    FinAckingFin,
    Ack,
    AckingFin,
    Rst,
}

impl Received {
    pub const ALL: [Received; 7] = [
        Received::Syn,
        Received::SynAck,
        Received::Fin,
        Received::FinAckingFin,
        Received::Ack,
        Received::AckingFin,
        Received::Rst,
    ];
    pub const fn name(self) -> &'static str {
        match self {
            Received::Syn => "SYN",
            Received::SynAck => "SYN+ACK",
            Received::Fin => "FIN",
            Received::FinAckingFin => "FIN,acks-my-FIN",
            Received::Ack => "ACK",
            Received::AckingFin => "ACK,acks-my-FIN",
            Received::Rst => "RST",
        }
    }
}

// Cell aliases, so the grid reads like nf_conntrack's.
const CL: Next = Next::To(Closed);
const SS: Next = Next::To(SynSent);
const SR: Next = Next::To(SynRecv);
const ES: Next = Next::To(Established);
const F1: Next = Next::To(FinWait1);
const F2: Next = Next::To(FinWait2);
const CG: Next = Next::To(Closing);
const TW: Next = Next::To(TimeWait);
const CW: Next = Next::To(CloseWait);
const LA: Next = Next::To(LastAck);
const __: Next = Next::Stay;
const IG: Next = Next::Ignore;
const IV: Next = Next::Invalid;

/// `SENT[class][sender state]`: the sender's next state.
#[rustfmt::skip]
pub const SENT: [[Next; 11]; 5] = [
/*                  CL  LI  SS  SR  ES  F1  F2  CG  TW  CW  LA */
/* SYN     */     [ SS, SR, __, __, IG, IV, IV, IV, IV, IV, IV ],
/*  CL: the originator's first SYN (reopening a closed or TIME_WAIT
 *      connection is handled before the grid: the old entry is replaced).
 *  LI: simultaneous open: the responder sends its own SYN after seeing the
 *      originator's, so it is already in SYN_RECV (RFC 793 fig. 8).
 *  SS, SR: retransmitted SYN (a new ISN re-initialises the window until the
 *      peer has answered, then passes unchanged, see refine).
 *  ES: a SYN on an established connection is answered by a challenge ACK
 *      (RFC 5961 §4): pass it, change nothing, as nf_conntrack does.
 *  F1..LA: no SYN during the teardown (stricter than nf_conntrack). */
/* SYN+ACK */     [ IV, SR, IV, __, IG, IV, IV, IV, IV, IV, IV ],
/*  LI: the responder answers the SYN (refine checks ack == ISN+1).
 *  SS: the originator cannot acknowledge a SYN it never received.
 *  SR: retransmitted SYN+ACK, or each side's SYN+ACK in a simultaneous open.
 *  ES: the final ACK was lost beyond us and the responder retransmits its
 *      SYN+ACK: pass it unchanged if its seq is the ISN (refine). */
/* FIN     */     [ __, IV, F1, F1, F1, __, __, __, __, LA, __ ],
/*  CL: the passive closer got its last ACK, but that ACK was lost beyond us
 *      and the FIN comes again: the receiver's cell decides (TIME_WAIT hears
 *      it; a side CLOSED by a RST does not). No new data: window check.
 *  SS: the handshake's final ACK may carry a FIN (refine checks the ack).
 *  SR: close from SYN_RECV sends a FIN (RFC 793 CLOSE call).
 *  F1, F2, CG, TW, LA: a retransmitted FIN; the window check drops it if it
 *      carries new data ("no data after FIN").
 *  CW: the passive closer sends its FIN: LAST_ACK. */
/* ACK     */     [ IV, IG, ES, __, __, __, __, __, __, __, __ ],
/*  CL: after a RST nothing is left to acknowledge.
 *  LI: a bare ACK from the responder before its SYN+ACK: the RFC 5961
 *      challenge ACK of a server that still holds an older connection on
 *      these ports (client reboot, NAT port reuse), or a split handshake.
 *      Pass it, change nothing, as nf_conntrack does; the client's RST that
 *      answers it must not end the new attempt (refine).
 *  SS: the handshake's final ACK (refine checks ack == responder ISN+1).
 *  TW: the active closer's last ACK of the peer's FIN. */
/* RST     */     [ __, CL, CL, CL, CL, CL, CL, CL, CL, CL, CL ],
/*  Every state may reset; the window check (and RST exactness in ESTABLISHED)
 *  decides whether the RST counts. */
];

/// `RECEIVED[class][receiver state]`: the receiver's next state.
#[rustfmt::skip]
pub const RECEIVED: [[Next; 11]; 7] = [
/*                  CL  LI  SS  SR  ES  F1  F2  CG  TW  CW  LA */
/* SYN     */     [ IV, __, SR, __, __, __, __, __, __, __, __ ],
/*  LI: the responder stays LISTEN until it answers with its SYN+ACK.
 *  SS: simultaneous open: a SYN reaches a side that sent its own SYN. */
/* SYN+ACK */     [ IV, IV, __, ES, __, __, __, __, __, __, __ ],
/*  LI: a SYN+ACK to a side that never sent a SYN.
 *  SS: the originator waits in SYN_SENT until its ACK passes (RFC 9293:
 *      it is ESTABLISHED once it sends the handshake's third segment).
 *  SR: simultaneous open: our SYN is acknowledged. */
/* FIN     */     [ IV, IV, CW, CW, CW, CG, TW, __, __, __, __ ],
/*  SS, SR: the peer closes right after the handshake.
 *  ES: the passive close begins: CLOSE_WAIT.
 *  F1: both sent FIN, neither acknowledged: simultaneous close, CLOSING.
 *  F2: the peer's FIN after ours was acknowledged: TIME_WAIT (2MSL).
 *  CG, TW, CW, LA: a retransmitted FIN. */
/* FIN,acks-my-FIN */
                  [ __, IV, CW, CW, CW, TW, TW, TW, __, __, CL ],
/*  CL: the TIME_WAIT side retransmits its FIN to a side already CLOSED.
 *  F1: the peer's ACK of our FIN and its own FIN in one segment (the
 *      four-way teardown's second and third segments merged): TIME_WAIT.
 *  CG: simultaneous close, and our FIN is now acknowledged: TIME_WAIT.
 *  LA: the peer's FIN retransmitted with the ACK of ours: CLOSED. */
/* ACK     */     [ IV, IV, __, ES, __, __, __, __, __, __, __ ],
/*  LI: an ACK to a responder that has not sent its SYN+ACK.
 *  SR: the handshake's final ACK reaches the responder: ESTABLISHED. */
/* ACK,acks-my-FIN */
                  [ __, IV, __, ES, __, F2, __, TW, __, __, CL ],
/*  CL: TIME_WAIT re-acknowledges our retransmitted FIN (its first ACK was
 *      lost beyond us). After a RST the sender is CLOSED too and its own
 *      cell refuses the ACK.
 *  F1: our FIN is acknowledged: FIN_WAIT_2.
 *  CG: simultaneous close completes on this side: TIME_WAIT.
 *  LA: the last ACK: CLOSED. */
/* RST     */     [ __, CL, CL, CL, CL, CL, CL, CL, CL, CL, CL ],
];

/// Looks up both cells for one packet: `(sender next, receiver next)`.
#[inline]
pub fn lookup(
    sent: Sent,
    sender: EndpointState,
    received: Received,
    receiver: EndpointState,
) -> (Next, Next) {
    (
        SENT[sent as usize][sender as usize],
        RECEIVED[received as usize][receiver as usize],
    )
}

fn cell(n: Next) -> &'static str {
    match n {
        Next::To(s) => s.abbrev(),
        Next::Stay => "__",
        Next::Ignore => "IG",
        Next::Invalid => "IV",
    }
}

/// Renders both grids as text (the snapshot test compares this with a file).
pub fn render() -> String {
    let mut out = String::new();
    let header: String = EndpointState::ALL
        .iter()
        .map(|s| format!(" {}", s.abbrev()))
        .collect();
    out.push_str(&format!("SENT (sender's next state){}\n", ""));
    out.push_str(&format!("{:<18}{}\n", "", header));
    for class in Sent::ALL {
        let row: String = SENT[class as usize]
            .iter()
            .map(|n| format!(" {}", cell(*n)))
            .collect();
        out.push_str(&format!("{:<18}{}\n", class.name(), row));
    }
    out.push_str("\nRECEIVED (receiver's next state)\n");
    out.push_str(&format!("{:<18}{}\n", "", header));
    for class in Received::ALL {
        let row: String = RECEIVED[class as usize]
            .iter()
            .map(|n| format!(" {}", cell(*n)))
            .collect();
        out.push_str(&format!("{:<18}{}\n", class.name(), row));
    }
    out.push_str("\nlegend:");
    for s in EndpointState::ALL {
        out.push_str(&format!(" {}={}", s.abbrev(), s.name()));
    }
    out.push_str(" __=unchanged IG=pass-unchanged IV=invalid\n");
    out
}
