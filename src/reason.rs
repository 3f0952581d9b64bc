//! Why a packet was accepted or dropped: one enum for every cause.
//!
//! Logs, counters, replay output and tests all speak in these names, so a
//! reason is a plain fieldless `Copy` value with a stable snake_case name.

use std::fmt;

/// Accept or drop: the only two answers conntrackd gives the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    Accept,
    Drop,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Accept => "accept",
            Verdict::Drop => "drop",
        })
    }
}

macro_rules! reasons {
    ($( $(#[$doc:meta])* $variant:ident = $name:literal => $verdict:ident, )*) => {
        /// Every cause of every verdict. The verdict follows from the reason.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum Reason {
            $( $(#[$doc])* $variant, )*
        }

        impl Reason {
            /// All reasons, in declaration order (the index is `reason as usize`).
            pub const ALL: &'static [Reason] = &[$(Reason::$variant,)*];

            /// Stable snake_case name used in logs, metrics and replay output.
            pub const fn name(self) -> &'static str {
                match self { $(Reason::$variant => $name,)* }
            }

            /// Whether a packet with this reason is accepted or dropped.
            pub const fn verdict(self) -> Verdict {
                match self { $(Reason::$variant => Verdict::$verdict,)* }
            }

            /// Looks a reason up by its name.
            pub fn from_name(name: &str) -> Option<Reason> {
                match name { $($name => Some(Reason::$variant),)* _ => None }
            }
        }
    };
}

reasons! {
    // ---- accepted ----
    /// A new connection allowed by a named rule.
    NewByRule = "new_by_rule" => Accept,
    /// A new connection allowed by the policy's default action.
    NewByDefault = "new_by_default" => Accept,
    /// A packet of a tracked connection, valid for its state and window.
    Tracked = "tracked" => Accept,
    /// An ICMP/ICMPv6 error whose embedded header matches a tracked flow.
    Related = "related" => Accept,
    /// A retransmission of data the receiver already acknowledged: passed so the
    /// receiver can re-ACK, but it neither changes state nor extends the timeout
    /// (as nf_conntrack's NFCT_TCP_IGNORE).
    OldRetransmission = "old_retransmission" => Accept,
    /// An ACK older than the window allows (an overly delayed ACK): passed without
    /// state change, as nf_conntrack does.
    DelayedAck = "delayed_ack" => Accept,
    /// An in-window RST whose sequence number is not the exact next one: the
    /// receiver answers with a challenge ACK (RFC 5961), so the state is kept.
    RstChallenged = "rst_challenged" => Accept,
    /// A packet the state machine tolerates without a state change (a SYN+ACK
    /// retransmitted after the handshake completed, a SYN on an established
    /// connection that the peer will answer with a challenge ACK).
    TcpIgnored = "tcp_ignored" => Accept,
    /// A bare ACK from the responder while the originator is in SYN_SENT: the
    /// RFC 5961 challenge ACK of a server that still holds an older connection
    /// on these ports (client reboot, NAT port reuse), or a split handshake.
    /// Passed without a state change, as nf_conntrack does.
    ChallengeAck = "challenge_ack" => Accept,
    /// The originator's RST answering such a challenge ACK (its seq is the
    /// ACK's ack number): passed so that the server drops its old connection;
    /// the new attempt stays in SYN_SENT and its retransmitted SYN goes on.
    ChallengeAckRst = "challenge_ack_rst" => Accept,
    /// A segment that starts past the receiver's advertised window, by no more
    /// than the receiver's largest window (window probes, a shrinking window,
    /// TSO bursts): passed without a state change, but its data counts as
    /// sent, so that its ACK passes (as nf_conntrack since Linux 6.1).
    WindowOvershoot = "window_overshoot" => Accept,

    // ---- dropped: the packet itself is broken ----
    /// Shorter than the headers it announces, or than the IP length says.
    Truncated = "truncated" => Drop,
    /// Not IPv4 or IPv6, or an IPv4 header length (IHL) below 5 words.
    BadIpHeader = "bad_ip_header" => Drop,
    /// IP total/payload length shorter than the headers it must contain.
    BadIpLength = "bad_ip_length" => Drop,
    /// A malformed or misplaced IPv6 extension header or IPv4 AH.
    BadExtensionHeader = "bad_extension_header" => Drop,
    /// TCP data offset below 5 words or past the end of the packet.
    BadTcpOffset = "bad_tcp_offset" => Drop,
    /// UDP length field inconsistent with the IP payload.
    BadUdpLength = "bad_udp_length" => Drop,
    /// A wrong TCP, UDP, ICMP or ICMPv6 checksum.
    BadChecksum = "bad_checksum" => Drop,
    /// An IP fragment: conntrackd needs whole datagrams (load nf_defrag).
    Fragment = "fragment" => Drop,

    // ---- dropped: TCP flag combinations no correct stack sends ----
    /// SYN+FIN, with or without PSH, RST or URG.
    SynFin = "syn_fin" => Drop,
    /// SYN+RST.
    SynRst = "syn_rst" => Drop,
    /// FIN+RST.
    FinRst = "fin_rst" => Drop,
    /// FIN+PSH+URG without ACK (the "Xmas tree" scan).
    Xmas = "xmas" => Drop,
    /// No flag at all (the NULL scan).
    NullFlags = "null_flags" => Drop,
    /// FIN without ACK (the FIN scan).
    FinWithoutAck = "fin_without_ack" => Drop,
    /// URG alone.
    UrgOnly = "urg_only" => Drop,
    /// PSH alone.
    PshOnly = "psh_only" => Drop,
    /// Any other combination outside nf_conntrack's valid list.
    InvalidFlags = "invalid_flags" => Drop,

    // ---- dropped: the state machine says no ----
    /// A non-SYN TCP packet (or an ICMP reply) with no connection to belong to.
    NoConnection = "no_connection" => Drop,
    /// A TCP flag class the current state does not allow (the grid's `Invalid`).
    BadTransition = "bad_transition" => Drop,
    /// A SYN+ACK that does not acknowledge the originator's ISN+1.
    SynAckBadAck = "synack_bad_ack" => Drop,
    /// The handshake's final ACK does not acknowledge the responder's ISN+1.
    HandshakeBadAck = "handshake_bad_ack" => Drop,
    /// Window check I: the segment starts past the receiver's window.
    SeqAboveWindow = "seq_above_window" => Drop,
    /// Window check III: it acknowledges data the peer never sent.
    AckAboveSent = "ack_above_sent" => Drop,
    /// New data (or a new FIN) from a side that already sent its FIN.
    DataAfterFin = "data_after_fin" => Drop,
    /// A RST whose sequence number is outside the window.
    RstOutOfWindow = "rst_out_of_window" => Drop,
    /// A RST whose sequence number lies before what its receiver has already
    /// acknowledged (nf_conntrack's "invalid rst"): stale or injected.
    RstBehindAck = "rst_behind_ack" => Drop,
    /// A SYN+ACK retransmission whose sequence number differs from the first.
    SynAckSeqMismatch = "synack_seq_mismatch" => Drop,
    /// An ICMP/ICMPv6 error that matches no tracked flow.
    IcmpErrorUnrelated = "icmp_error_unrelated" => Drop,

    // ---- dropped: handled by the SYN proxy (answered by conntrackd) ----
    /// A new connection's SYN, answered by the SYN proxy with a SYN cookie
    /// (a SYN+ACK whose sequence number proves the client's address when it
    /// comes back); nothing is kept for it.
    SynCookieSent = "syn_cookie_sent" => Drop,
    /// The client's ACK brought back a valid cookie: the connection is made,
    /// and the proxy sends the server a SYN with the client's ISN and options.
    SynproxyOpening = "synproxy_opening" => Drop,
    /// The server's SYN+ACK to the proxy's SYN: answered by the proxy (an
    /// ACK to the server, the server's window to the client); from here on
    /// the connection's packets are translated.
    SynproxyOpened = "synproxy_opened" => Drop,
    /// A client's packet while the server has not answered the proxy's SYN:
    /// the SYN is sent again, the packet dropped (the client sends it again).
    SynproxyWaiting = "synproxy_waiting" => Drop,
    /// The server refused (RST) or never answered the proxy's SYN: the
    /// connection is removed and the client is sent a RST.
    SynproxyServerFailed = "synproxy_server_failed" => Drop,
    /// An ACK to a destination behind the SYN proxy that belongs to no
    /// connection and brings no valid cookie (forged, or for another tuple).
    SynCookieInvalid = "syn_cookie_invalid" => Drop,
    /// An ACK that brings a cookie of ours made too long ago (more than two
    /// minutes, or before the last key rotation but one).
    SynCookieExpired = "syn_cookie_expired" => Drop,

    // ---- dropped: policy and resources ----
    /// The source already holds its rule's `max_src_conn` connections.
    SourceConnLimit = "source_conn_limit" => Drop,
    /// The source opened connections faster than its rule's `max_src_conn_rate`.
    SourceRateLimit = "source_rate_limit" => Drop,
    /// The source exceeded a limit and is on the overload list for its rule's
    /// `overload_secs`: every new connection from it is refused meanwhile.
    SourceOverloaded = "source_overloaded" => Drop,
    /// A new connection refused by a named rule.
    DropByRule = "drop_by_rule" => Drop,
    /// A new connection refused by the policy's default action.
    DropByDefault = "drop_by_default" => Drop,
    /// A new connection refused by a named rule with `action = "reject"`:
    /// dropped, and answered with a TCP RST or an ICMP port unreachable
    /// ([`Reason::is_reject`]).
    RejectByRule = "reject_by_rule" => Drop,
    /// A new connection refused by the default action `reject`: dropped and
    /// answered, as `reject_by_rule`.
    RejectByDefault = "reject_by_default" => Drop,
    /// The table is full and no unestablished entry could be evicted.
    TableFull = "table_full" => Drop,
    /// Too many half-open (SYN_SENT/SYN_RECV) connections.
    HalfOpenLimit = "half_open_limit" => Drop,
}

impl Reason {
    /// Number of reasons (size of a per-reason counter array).
    pub const COUNT: usize = Reason::ALL.len();

    pub const fn index(self) -> usize {
        self as usize
    }

    /// A drop that the caller answers with a TCP RST or an ICMP port
    /// unreachable (`action = "reject"`; see `wire::reject`). The kernel
    /// still hears a plain drop: the answer is a packet of its own.
    pub const fn is_reject(self) -> bool {
        matches!(self, Reason::RejectByRule | Reason::RejectByDefault)
    }

    /// The verdict as replay and logs show it: `accept`, `drop`, or `reject`
    /// for a drop that is answered.
    pub const fn verdict_name(self) -> &'static str {
        match self.verdict() {
            Verdict::Accept => "accept",
            Verdict::Drop if self.is_reject() => "reject",
            Verdict::Drop => "drop",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Per-reason packet counters. Each worker owns one (no shared cache line on the
/// hot path) and merges it into a total when asked.
#[derive(Clone, Debug)]
pub struct Counters {
    counts: [u64; Reason::COUNT],
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            counts: [0; Reason::COUNT],
        }
    }
}

impl Counters {
    #[inline]
    pub fn record(&mut self, reason: Reason) {
        self.counts[reason.index()] += 1;
    }

    pub fn get(&self, reason: Reason) -> u64 {
        self.counts[reason.index()]
    }

    pub fn merge(&mut self, other: &Counters) {
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter()) {
            *a += b;
        }
    }

    pub fn total(&self, verdict: Verdict) -> u64 {
        Reason::ALL
            .iter()
            .filter(|r| r.verdict() == verdict)
            .map(|r| self.get(*r))
            .sum()
    }

    /// Non-zero counters, in reason order.
    pub fn iter(&self) -> impl Iterator<Item = (Reason, u64)> + '_ {
        Reason::ALL
            .iter()
            .map(|r| (*r, self.get(*r)))
            .filter(|(_, n)| *n > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_round_trip() {
        let mut names: Vec<_> = Reason::ALL.iter().map(|r| r.name()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Reason::COUNT);
        let rejects: Vec<_> = Reason::ALL.iter().filter(|r| r.is_reject()).collect();
        assert_eq!(rejects, [&Reason::RejectByRule, &Reason::RejectByDefault]);
        // Written out, not recomputed the way verdict_name computes it.
        for (r, shown) in [
            (Reason::RejectByRule, "reject"),
            (Reason::RejectByDefault, "reject"),
            (Reason::DropByRule, "drop"),
            (Reason::SynFin, "drop"),
            (Reason::Tracked, "accept"),
            (Reason::NewByDefault, "accept"),
        ] {
            assert_eq!(r.verdict_name(), shown, "{r}");
        }
        for r in Reason::ALL {
            assert!(
                ["accept", "drop", "reject"].contains(&r.verdict_name()),
                "{r}"
            );
            assert_eq!(r.verdict_name() == "reject", r.is_reject(), "{r}");
        }
        for r in Reason::ALL {
            assert_eq!(Reason::from_name(r.name()), Some(*r));
            assert_eq!(Reason::ALL[r.index()], *r);
        }
    }

    #[test]
    fn counters_count_per_reason_and_merge() {
        let mut a = Counters::default();
        a.record(Reason::Tracked);
        a.record(Reason::Tracked);
        a.record(Reason::SynFin);
        let mut b = Counters::default();
        b.record(Reason::SynFin);
        b.record(Reason::OldRetransmission);
        a.merge(&b);
        assert_eq!(a.get(Reason::Tracked), 2);
        assert_eq!(a.get(Reason::SynFin), 2);
        assert_eq!(
            a.total(Verdict::Accept),
            3,
            "old_retransmission is an accept"
        );
        assert_eq!(a.total(Verdict::Drop), 2);
        let listed: Vec<_> = a.iter().collect();
        assert_eq!(
            listed,
            vec![
                (Reason::Tracked, 2),
                (Reason::OldRetransmission, 1),
                (Reason::SynFin, 2)
            ]
        );
    }
}
