//! The TCP state machine as one auditable table.
//!
//! conntrackd tracks each endpoint separately, as pf does and as RFC 9293
//! describes TCP (each end has its own state: `FIN_WAIT_2:CLOSE_WAIT`).
//! Every packet moves two endpoints: the one that sent it (its `sent` cell)
//! and the one it goes to (its `received` cell). As nf_conntrack's
//! `tcp_conntracks[2][6][TCP_CONNTRACK_MAX]`, the grid has one half per
//! direction: packets from the originator ([`FROM_ORIGINATOR`]) and from the
//! responder ([`FROM_RESPONDER`]). A packet passes the state machine when
//! neither cell says `IV`; where either says `IG` it passes and changes
//! nothing. One pair of states needs both cells at once
//! ([`CROSSED_SYN_ACKS`]).
//!
//! The observer assumes a packet it lets through arrives: the receiver's state
//! changes as the packet passes (a FIN moves its receiver to CLOSE_WAIT).
//!
//! What the grid does not decide are sequence numbers: the handshake's exact
//! ACK numbers, a SYN's ISN, the RST that answers a challenge ACK are
//! `super::TcpConn::refine`'s, each commented, and the windows are the window
//! check's ([`super::window`]). `tests/snapshots/tcp_grid.txt` holds the
//! rendered grid: a change here is a reviewed diff there.

use crate::conntrack::Role;
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

/// What a packet is, for the grid: its flags, by nf_conntrack's priority
/// (RST > SYN+ACK > SYN > FIN > ACK), and for a FIN or an ACK whether it
/// acknowledges its receiver's FIN: that is what moves the receiver on from
/// FIN_WAIT_1, CLOSING and LAST_ACK, and what tells a passive closer's FIN
/// (LAST_ACK) from a simultaneous close (CLOSING).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Class {
    Syn,
    SynAck,
    Fin,
    FinAckingFin,
    Ack,
    AckingFin,
    Rst,
}

impl Class {
    pub const ALL: [Class; 7] = [
        Class::Syn,
        Class::SynAck,
        Class::Fin,
        Class::FinAckingFin,
        Class::Ack,
        Class::AckingFin,
        Class::Rst,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Class::Syn => "SYN",
            Class::SynAck => "SYN+ACK",
            Class::Fin => "FIN",
            Class::FinAckingFin => "FIN,acks-FIN",
            Class::Ack => "ACK",
            Class::AckingFin => "ACK,acks-FIN",
            Class::Rst => "RST",
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

/// One direction's half of the grid.
pub struct Grid {
    /// `sent[class][sender's state]`: the sender's next state.
    pub sent: [[Next; 11]; 7],
    /// `received[class][receiver's state]`: the receiver's next state.
    pub received: [[Next; 11]; 7],
}

/// Packets from the originator (nf_conntrack's original direction).
#[rustfmt::skip]
pub const FROM_ORIGINATOR: Grid = Grid {
sent: [
/*                     CL  LI  SS  SR  ES  F1  F2  CG  TW  CW  LA */
/* SYN          */   [ SS, IV, __, __, IG, IV, IV, IV, IV, IV, IV ],
/*  CL: the connection's first SYN (`TcpConn::from_syn`). A SYN that reopens
 *      a connection in TIME_WAIT or reset replaces it before the grid.
 *  LI: IV, never: the originator does not listen (`TcpConn::possible`).
 *  SS, SR: a retransmitted SYN, or one with a new ISN (refine).
 *  ES: a client reconnecting on the ports of an established connection: the
 *      server answers with a challenge ACK (RFC 5961 §4); pass it, change
 *      nothing, as nf_conntrack does.
 *  F1, F2, CG, TW, CW, LA: IV, no SYN during the teardown (stricter than
 *      nf_conntrack, which passes one unchanged from FIN_WAIT, CLOSE_WAIT
 *      and LAST_ACK); once either side is in TIME_WAIT a SYN reopens the
 *      connection before the grid. */
/* SYN+ACK      */   [ IV, IV, IV, __, IG, IV, IV, IV, IV, IV, IV ],
/*  CL: IV, a SYN+ACK answers a SYN, and a closed side holds none.
 *  LI: IV, never: the originator does not listen.
 *  SS: IV, the originator cannot acknowledge a SYN it never received.
 *  SR: simultaneous open: the originator's SYN+ACK answers the responder's
 *      SYN (or is retransmitted).
 *  ES: the handshake's final ACK was lost beyond us and the SYN+ACK comes
 *      again: pass it unchanged if it is the same SYN+ACK (refine). Sent to
 *      a side in SYN_RECV it is the crossed SYN+ACK of a simultaneous open
 *      (`CROSSED_SYN_ACKS`).
 *  F1, F2, CG, TW, CW, LA: IV, no handshake during the teardown. */
/* FIN          */   [ __, IV, F1, F1, F1, __, __, __, __, CG, __ ],
/* FIN,acks-FIN */   [ __, IV, F1, F1, F1, __, __, __, __, LA, __ ],
/*  CL: the passive closer got its last ACK, but that ACK was lost beyond us
 *      and the FIN comes again: the receiver's cell decides (TIME_WAIT hears
 *      it; a side CLOSED by a RST does not). No new data: window check.
 *  LI: IV, never: the originator does not listen.
 *  SS: the handshake's final ACK may carry a FIN (refine checks the ack).
 *  SR: close from SYN_RECV sends a FIN (RFC 793 CLOSE call).
 *  ES: the active close: FIN_WAIT_1.
 *  F1, F2, CG, TW, LA: a retransmitted FIN; the window check drops it if it
 *      carries new data ("no data after FIN").
 *  CW: the passive closer's FIN. Acknowledging the active closer's FIN, it
 *      is the third segment of the teardown: LAST_ACK. Not acknowledging it,
 *      it was sent before that FIN arrived: a simultaneous close, CLOSING. */
/* ACK          */   [ IV, IV, ES, __, __, __, __, __, __, __, __ ],
/* ACK,acks-FIN */   [ IV, IV, ES, __, __, __, __, __, __, __, __ ],
/*  CL: IV, after a RST or its last ACK a side has nothing to acknowledge.
 *  LI: IV, never: the originator does not listen.
 *  SS: the handshake's final ACK (refine checks ack == responder ISN+1).
 *  TW: the active closer's last ACK of the peer's FIN. */
/* RST          */   [ __, IV, CL, CL, CL, CL, CL, CL, CL, CL, CL ],
/*  LI: IV, never: the originator does not listen.
 *  Every other state may reset; the window check (and RST exactness in
 *  ESTABLISHED) decides whether the RST counts. */
],
received: [
/*                     CL  LI  SS  SR  ES  F1  F2  CG  TW  CW  LA */
/* SYN          */   [ IV, __, SR, __, __, __, __, __, __, __, __ ],
/*  CL: IV, a closed side hears no SYN of its old connection: when both
 *      sides are closed (or one is in TIME_WAIT) a new SYN replaces the
 *      connection before the grid.
 *  LI: the responder stays LISTEN until it answers with its SYN+ACK.
 *  SS: simultaneous open: a SYN reaches a side that sent its own SYN. */
/* SYN+ACK      */   [ IV, IV, __, ES, __, __, __, __, __, __, __ ],
/*  CL: IV, a SYN+ACK to a closed side answers nothing it sent.
 *  LI: IV, a SYN+ACK to a side that never sent a SYN.
 *  SS: the receiver waits in SYN_SENT until its ACK passes (RFC 9293: it
 *      is ESTABLISHED once it sends the handshake's third segment).
 *  SR: simultaneous open: the receiver's SYN is acknowledged. */
/* FIN          */   [ IV, IV, CW, CW, CW, CG, TW, __, __, __, __ ],
/*  CL: IV, a FIN that does not acknowledge the closed side's FIN: that side
 *      was closed by a RST, or the FIN is not its peer's.
 *  LI: IV, a FIN to a responder that has not answered the SYN.
 *  SS, SR: the peer closes right after the handshake.
 *  ES: the passive close begins: CLOSE_WAIT.
 *  F1: both sent FIN, neither acknowledged: simultaneous close, CLOSING.
 *  F2: the peer's FIN after ours was acknowledged: TIME_WAIT (2MSL).
 *  CG, TW, CW, LA: a retransmitted FIN. */
/* FIN,acks-FIN */   [ __, IV, IV, IV, IV, TW, TW, TW, __, IV, CL ],
/*  CL: the TIME_WAIT side retransmits its FIN to a side already CLOSED.
 *  LI, SS, SR, ES, CW: IV, never: the receiver has sent no FIN.
 *  F1: the peer's ACK of our FIN and its own FIN in one segment (the
 *      four-way teardown's second and third segments merged): TIME_WAIT.
 *  F2: the peer's FIN after ours was acknowledged: TIME_WAIT.
 *  CG: simultaneous close, and our FIN is now acknowledged: TIME_WAIT.
 *  LA: the peer's FIN retransmitted with the ACK of ours: CLOSED. */
/* ACK          */   [ IV, IV, __, ES, __, __, __, __, __, __, __ ],
/*  CL: IV, an ACK that does not cover the closed side's FIN: after a RST
 *      nothing is left to acknowledge.
 *  LI: IV, an ACK to a responder that has not sent its SYN+ACK.
 *  SR: the handshake's final ACK reaches the responder: ESTABLISHED. */
/* ACK,acks-FIN */   [ __, IV, IV, IV, IV, F2, __, TW, __, IV, CL ],
/*  CL: TIME_WAIT re-acknowledges our retransmitted FIN (its first ACK was
 *      lost beyond us). After a RST the sender is CLOSED too and its own
 *      cell refuses the ACK.
 *  LI, SS, SR, ES, CW: IV, never: the receiver has sent no FIN.
 *  F1: our FIN is acknowledged: FIN_WAIT_2.
 *  CG: simultaneous close completes on this side: TIME_WAIT.
 *  LA: the last ACK: CLOSED. */
/* RST          */   [ __, CL, CL, CL, CL, CL, CL, CL, CL, CL, CL ],
],
};

/// Packets from the responder (nf_conntrack's reply direction). The same as
/// from the originator but for a SYN in ESTABLISHED and LISTEN, which only
/// the responder knows.
#[rustfmt::skip]
pub const FROM_RESPONDER: Grid = Grid {
sent: [
/*                     CL  LI  SS  SR  ES  F1  F2  CG  TW  CW  LA */
/* SYN          */   [ SS, SR, __, __, IV, IV, IV, IV, IV, IV, IV ],
/*  CL: as the originator's from CLOSED (the window check refuses new data
 *      from a side that sent its FIN).
 *  LI: simultaneous open: the responder sends its own SYN after seeing the
 *      originator's, so it is already in SYN_RECV (RFC 793 fig. 8).
 *  SS, SR: a retransmitted SYN, or one with a new ISN (refine).
 *  ES: IV, the server of an established connection does not reconnect to
 *      its client (nf_conntrack's reply row: sES -> sIV).
 *  F1, F2, CG, TW, CW, LA: IV, no SYN during the teardown. */
/* SYN+ACK      */   [ IV, SR, IV, __, IG, IV, IV, IV, IV, IV, IV ],
/*  CL: IV, a SYN+ACK answers a SYN, and a closed side holds none.
 *  LI: the responder answers the SYN (refine checks ack == ISN+1).
 *  SS: IV, a side in SYN_SENT cannot acknowledge a SYN it never received.
 *  SR: a retransmitted SYN+ACK, or each side's in a simultaneous open.
 *  ES: the final ACK was lost beyond us and the SYN+ACK comes again: pass
 *      it unchanged if it is the same SYN+ACK (refine); to a side in
 *      SYN_RECV, `CROSSED_SYN_ACKS`.
 *  F1, F2, CG, TW, CW, LA: IV, no handshake during the teardown. */
/* FIN          */   [ __, IV, F1, F1, F1, __, __, __, __, CG, __ ],
/* FIN,acks-FIN */   [ __, IV, F1, F1, F1, __, __, __, __, LA, __ ],
/*  LI: IV, a responder that has not answered the SYN has nothing to close.
 *  The other cells, and why, as in FROM_ORIGINATOR's FIN rows. */
/* ACK          */   [ IV, IG, ES, __, __, __, __, __, __, __, __ ],
/*  CL: IV, after a RST or its last ACK a side has nothing to acknowledge.
 *  LI: a bare ACK from the responder before its SYN+ACK: the RFC 5961
 *      challenge ACK of a server that still holds an older connection on
 *      these ports (client reboot, NAT port reuse), or a split handshake.
 *      Pass it, change nothing, as nf_conntrack does; the client's RST that
 *      answers it must not end the new attempt (refine).
 *  SS: the handshake's final ACK (refine checks ack == peer ISN+1). */
/* ACK,acks-FIN */   [ IV, IV, ES, __, __, __, __, __, __, __, __ ],
/*  CL: IV, as the ACK row.
 *  LI: IV, never: the originator, in SYN_SENT, has sent no FIN. */
/* RST          */   [ __, CL, CL, CL, CL, CL, CL, CL, CL, CL, CL ],
/*  LI: the responder refuses the SYN (the window check wants the RST+ACK
 *      of exactly the SYN's ISN+1). */
],
received: [
/*                     CL  LI  SS  SR  ES  F1  F2  CG  TW  CW  LA */
/* SYN          */   [ IV, IV, SR, __, __, __, __, __, __, __, __ ],
/* SYN+ACK      */   [ IV, IV, __, ES, __, __, __, __, __, __, __ ],
/* FIN          */   [ IV, IV, CW, CW, CW, CG, TW, __, __, __, __ ],
/* FIN,acks-FIN */   [ __, IV, IV, IV, IV, TW, TW, TW, __, IV, CL ],
/* ACK          */   [ IV, IV, __, ES, __, __, __, __, __, __, __ ],
/* ACK,acks-FIN */   [ __, IV, IV, IV, IV, F2, __, TW, __, IV, CL ],
/* RST          */   [ __, IV, CL, CL, CL, CL, CL, CL, CL, CL, CL ],
/*  LI: IV, never: the originator does not listen.
 *  The other cells, and why, as in FROM_ORIGINATOR's received rows. */
],
};

/// The one pair of states two rows cannot hold apart: a SYN+ACK from a side
/// in ESTABLISHED to one in SYN_RECV, in either direction. In a
/// simultaneous open each side sends a SYN+ACK; the first to arrive makes
/// its receiver ESTABLISHED, and the receiver's own SYN+ACK, already on the
/// way, completes the other side. The sender's row says `IG` (to any other
/// receiver the SYN+ACK is a retransmission) and the receiver's row says `__`
/// to a SYN_RECV sender (a retransmitted SYN+ACK changes nothing): together,
/// `(sender, receiver)`:
pub const CROSSED_SYN_ACKS: (Next, Next) = (__, ES);

/// Both cells for one packet: `(sender's next, receiver's next)`.
#[inline]
pub fn lookup(
    from: Role,
    class: Class,
    sender: EndpointState,
    receiver: EndpointState,
) -> (Next, Next) {
    if class == Class::SynAck && sender == Established && receiver == SynRecv {
        return CROSSED_SYN_ACKS;
    }
    let grid = match from {
        Role::Originator => &FROM_ORIGINATOR,
        Role::Responder => &FROM_RESPONDER,
    };
    (
        grid.sent[class as usize][sender as usize],
        grid.received[class as usize][receiver as usize],
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

/// Renders the grid as text (the snapshot test compares this with a file).
pub fn render() -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let header: String = EndpointState::ALL
        .iter()
        .map(|s| format!(" {}", s.abbrev()))
        .collect();
    let table = |out: &mut String, title: &str, rows: &[[Next; 11]; 7]| {
        let _ = writeln!(out, "{title}");
        let _ = writeln!(out, "{:<18}{header}", "");
        for class in Class::ALL {
            let row: String = rows[class as usize]
                .iter()
                .map(|n| format!(" {}", cell(*n)))
                .collect();
            let _ = writeln!(out, "{:<18}{row}", class.name());
        }
    };
    for (from, grid) in [
        (Role::Originator, &FROM_ORIGINATOR),
        (Role::Responder, &FROM_RESPONDER),
    ] {
        let (sender, receiver) = match from {
            Role::Originator => ("originator", "responder"),
            Role::Responder => ("responder", "originator"),
        };
        let _ = writeln!(out, "FROM THE {}\n", sender.to_uppercase());
        table(
            &mut out,
            &format!("SENT ({sender}'s next state)"),
            &grid.sent,
        );
        out.push('\n');
        let title = format!("RECEIVED ({receiver}'s next state)");
        table(&mut out, &title, &grid.received);
        out.push('\n');
    }
    let (s, r) = CROSSED_SYN_ACKS;
    let _ = writeln!(
        out,
        "BOTH CELLS AT ONCE (either direction)\nSYN+ACK from ES to SR: sender {}, receiver {}\n",
        cell(s),
        cell(r)
    );
    out.push_str("legend:");
    for s in EndpointState::ALL {
        let _ = write!(out, " {}={}", s.abbrev(), s.name());
    }
    out.push_str(" __=unchanged IG=pass-unchanged IV=invalid");
    out.push_str(" acks-FIN=acknowledges its receiver's FIN\n");
    out
}
