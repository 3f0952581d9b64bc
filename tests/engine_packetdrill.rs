//! The Linux kernel's own conntrack selftests, translated by hand into engine
//! scenarios: the six packetdrill scripts in
//! `tools/testing/selftests/net/netfilter/packetdrill/` that
//! `nf_conntrack_packetdrill.sh` runs (packetdrill is not in Debian, so the
//! scripts cannot be run as they are).
//!
//! # How a script reads
//!
//! packetdrill drives a real TCP socket on one host (here "the host") and
//! plays the other end itself ("the peer") through a tun device. nf_conntrack
//! runs on the host: `<` lines are packets from the peer to the host (seen in
//! INPUT), `>` lines are packets the host's stack sends (OUTPUT). Each script
//! adds `--ctstate INVALID -j DROP`, so a packet nf_conntrack marks INVALID
//! never arrives (or never leaves), and the script notices by the stack's
//! reaction or by counting the rule's matches at the end. The engine stands
//! where nf_conntrack stands: every packet of the script goes through
//! `Engine::decide` in order, and the verdict we expect is nf_conntrack's:
//! accept for what it passes, including what it passes without a state
//! change (`TCP_CONNTRACK_IGNORE` and `NFCT_TCP_IGNORE` return `NF_ACCEPT`,
//! the packet is not INVALID), drop for INVALID.
//!
//! The originator is the side whose SYN opens the connection: the host in
//! the scripts that call `connect()`, the peer in those that call `listen()`.
//!
//! # Sequence numbers
//!
//! packetdrill numbers like tcpdump's relative mode (its `run_packet.c`):
//! the seq of a SYN or SYN+ACK from the peer is written as is, and the first
//! such SYN(+ACK) gives the peer's ISN; every other seq from the peer is
//! relative to that ISN (0 before the peer has sent a SYN), and every ack the
//! peer sends is relative to the host's ISN. The host's seq numbers are
//! relative to its own ISN, its acks to the peer's ISN. The host's ISN is the
//! kernel's random choice: here [`HOST_ISN`], high enough that adding the
//! scripts' large relative numbers wraps past 2^32.
//!
//! # What is and is not translated
//!
//! Options conntrack reads (window scale, SACK-permitted) are built as the
//! scripts give them, and MSS for completeness; timestamps are left out
//! (nf_conntrack does not look at them). An outgoing SYN+ACK whose window the
//! script does not give carries 65535. `common.sh` sets only logging, buffer
//! sizes and a rule that matches new SYNs; nf_conntrack's defaults apply
//! otherwise (`nf_conntrack_tcp_loose=1`, `be_liberal=0`,
//! `ignore_invalid_rst=0`). Loose pickup matters nowhere here: every packet
//! belongs to a connection a SYN opened, so the engine keeps its default.
//! Each scenario runs over IPv4 and over IPv6, as the kernel's runner does.

mod engine_support;

use conntrackd::wire::build;
use conntrackd::Verdict;
use engine_support::{Harness, ACK, FIN, PSH, RST, SYN};
use std::net::SocketAddr;

/// The host's initial sequence number (chosen by its kernel in the scripts).
const HOST_ISN: u32 = 0xE000_0000;

/// The host's seq (or the peer's ack) `rel` bytes after the host's ISN.
fn host(rel: u32) -> u32 {
    HOST_ISN.wrapping_add(rel)
}

/// Whether the host opens the connection (`connect()`) or waits (`listen()`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Client,
    Server,
}

/// What nf_conntrack does with one packet, in conntrackd's words: the
/// verdict, the reason conntrackd gives for the same judgement, and the
/// connection state after it (`ORIGINATOR:RESPONDER`).
struct Want {
    verdict: Verdict,
    reason: &'static str,
    after: &'static str,
}

/// nf_conntrack passes the packet.
fn pass(reason: &'static str, after: &'static str) -> Want {
    Want {
        verdict: Verdict::Accept,
        reason,
        after,
    }
}

/// nf_conntrack marks the packet INVALID: the script's ruleset drops it.
fn invalid(reason: &'static str, after: &'static str) -> Want {
    Want {
        verdict: Verdict::Drop,
        reason,
        after,
    }
}

/// One run of a script: the engine between the host and the peer.
struct Script {
    t: Harness,
    name: &'static str,
    family: &'static str,
    host: SocketAddr,
    peer: SocketAddr,
}

impl Script {
    /// A script on one address family. The host listens on 8080 or connects
    /// to the peer's 8080, as packetdrill does.
    fn new(name: &'static str, family: &'static str, role: Role) -> Script {
        let (host_ip, peer_ip) = match family {
            "ipv4" => ("192.168.24.72", "192.0.2.1"),
            "ipv6" => ("[2001:db8:24::72]", "[2001:db8:2::1]"),
            _ => unreachable!("ipv4 or ipv6"),
        };
        let (host_port, peer_port) = match role {
            Role::Server => (8080, 34375),
            Role::Client => (45020, 8080),
        };
        Script {
            t: Harness::allow_all(),
            name,
            family,
            host: format!("{host_ip}:{host_port}").parse().unwrap(),
            peer: format!("{peer_ip}:{peer_port}").parse().unwrap(),
        }
    }

    /// A `<` packet: from the peer to the host.
    fn inbound(&self, flags: u8, seq: u32, ack: u32) -> build::Tcp {
        build::tcp(self.peer, self.host)
            .flags(flags)
            .seq(seq)
            .ack(ack)
    }

    /// A `>` packet: from the host to the peer.
    fn outbound(&self, flags: u8, seq: u32, ack: u32) -> build::Tcp {
        build::tcp(self.host, self.peer)
            .flags(flags)
            .seq(seq)
            .ack(ack)
    }

    /// Sends one packet of the script (`line`, as the script writes it) and
    /// checks conntrackd's decision against nf_conntrack's.
    fn step(&mut self, line: &str, packet: build::Tcp, want: Want) {
        let d = *self.t.send(packet.build());
        let expected = format!("{} {} -> {}", want.verdict, want.reason, want.after);
        let got = format!("{} {} -> {}", d.verdict(), d.reason.name(), d.after);
        assert!(
            got == expected,
            "{} ({}), packet `{line}`:\n  nf_conntrack: {expected}\n  conntrackd:   {got}",
            self.name,
            self.family,
        );
    }

    /// The script's `conntrack -L | grep ASSURED`: the one entry completed
    /// its handshake.
    fn assert_assured(&self) {
        let entries = self.t.engine.table().snapshot();
        assert_eq!(entries.len(), 1, "{} ({})", self.name, self.family);
        assert!(
            entries[0].1.assured(),
            "{} ({}): the connection is not ASSURED",
            self.name,
            self.family
        );
    }
}

const FAMILIES: [&str; 2] = ["ipv4", "ipv6"];

// ---- conntrack_ack_loss_stall.pkt ---------------------------------------------

/// `conntrack_ack_loss_stall.pkt`: a bulk upload whose sender did not get the
/// receiver's ACKs (they were lost on the way back) retransmits its first
/// segment long after the receiver acknowledged it. The retransmission must
/// pass without changing anything, so that the receiver can ACK again and
/// the sender, hearing it, moves on; marking it INVALID would drop it and the
/// sender would retransmit until it gave up (the stall the script is named
/// after).
///
/// The peer connects to the host's port 8080; the peer's ISN is 0. No window
/// scaling (the peer's SYN has no wscale option), so the host's window is
/// 65535 bytes: a segment ending more than 65535 bytes before what the peer
/// has sent is "under the lower bound" (nf_conntrack's `NFCT_TCP_IGNORE`).
#[test]
fn ack_loss_stall_passes_already_acknowledged_retransmission() {
    for family in FAMILIES {
        let mut s = Script::new("conntrack_ack_loss_stall.pkt", family, Role::Server);
        let est = "ESTABLISHED:ESTABLISHED";
        s.step(
            "< S 0:0(0) win 32792 <mss 1000>",
            s.inbound(SYN, 0, 0).window(32792).mss(1000),
            pass("new_by_default", "SYN_SENT:LISTEN"),
        );
        s.step(
            "> S. 0:0(0) ack 1 <mss 1460>",
            s.outbound(SYN | ACK, host(0), 1).window(65535).mss(1460),
            pass("tracked", "SYN_SENT:SYN_RECV"),
        );
        s.step(
            "< . 1:1(0) ack 1 win 65535",
            s.inbound(ACK, 1, host(1)).window(65535),
            pass("tracked", est),
        );
        // 46 full segments, each acknowledged at once: 1..67161.
        let segment = [0x5a; 1460];
        for i in 0..46u32 {
            let seq = 1 + 1460 * i;
            let end = seq + 1460;
            s.step(
                &format!("< P. {seq}:{end}(1460) ack 1 win 257"),
                s.inbound(ACK | PSH, seq, host(1))
                    .window(257)
                    .payload(&segment),
                pass("tracked", est),
            );
            s.step(
                &format!("> . 1:1(0) ack {end} win 65535"),
                s.outbound(ACK, host(1), end).window(65535),
                pass("tracked", est),
            );
        }
        // Its end (1461) is below 67161 - 65535: nf_conntrack's "SEQ is under
        // the lower bound (already ACKed data retransmitted)", which passes
        // the packet without a state change (it used to mark it INVALID).
        s.step(
            "< P. 1:1461(1460) ack 1 win 257",
            s.inbound(ACK | PSH, 1, host(1))
                .window(257)
                .payload(&segment),
            pass("old_retransmission", est),
        );
        // "only sent if above packet isn't flagged as invalid"
        s.step(
            "> . 1:1(0) ack 67161 win 65535",
            s.outbound(ACK, host(1), 67161).window(65535),
            pass("tracked", est),
        );
    }
}

// ---- conntrack_inexact_rst.pkt ---------------------------------------------

/// `conntrack_inexact_rst.pkt`: a TLS client (the host) closes its socket
/// with data still unread after the server's FIN, so its stack answers with a
/// RST; the server, which has already forgotten the connection, answers
/// with a RST of its own whose seq is not the exact next one (it is 1001
/// bytes back). In a closing connection nf_conntrack does not judge a RST's
/// seq at all (the tuple may already be reused), so neither RST is INVALID:
/// the script checks that no packet was. Taken from a real capture (in the
/// script's header).
///
/// The host connects; the peer's SYN+ACK has seq 1 (its ISN), so the peer's
/// relative seq n is 1 + n.
///
/// The closing states differ by design: nf_conntrack keeps one state for the
/// connection (FIN_WAIT after the peer's FIN, CLOSE_WAIT when the host acks
/// it, CLOSE after the RST); conntrackd follows each endpoint through RFC
/// 9293's teardown (README, "Where conntrackd is stricter than
/// nf_conntrack"), so the same moments read `CLOSE_WAIT:FIN_WAIT_1`,
/// `CLOSE_WAIT:FIN_WAIT_2` and `CLOSED:CLOSED`. The verdicts are the same.
#[test]
fn inexact_rst_in_a_closing_connection_passes() {
    for family in FAMILIES {
        let mut s = Script::new("conntrack_inexact_rst.pkt", family, Role::Client);
        let peer = |rel: u32| 1 + rel;
        let est = "ESTABLISHED:ESTABLISHED";
        s.step(
            "> S 0:0(0) win 65535 <mss 1460,sackOK,TS val 1 ecr 0,nop,wscale 8>",
            s.outbound(SYN, host(0), 0)
                .window(65535)
                .mss(1460)
                .sack_permitted()
                .window_scale(8),
            pass("new_by_default", "SYN_SENT:LISTEN"),
        );
        s.step(
            "< S. 1:1(0) ack 1 win 65535 <mss 1460>",
            s.inbound(SYN | ACK, 1, host(1)).window(65535).mss(1460),
            pass("tracked", "SYN_SENT:SYN_RECV"),
        );
        s.step(
            "> . 1:1(0) ack 1 win 65535",
            s.outbound(ACK, host(1), peer(1)).window(65535),
            pass("tracked", est),
        );
        let kb = [0x17; 1000];
        for rel in [1, 1001, 2001] {
            s.step(
                &format!("< . {rel}:{}(1000) ack 1 win 65535", rel + 1000),
                s.inbound(ACK, peer(rel), host(1))
                    .window(65535)
                    .payload(&kb),
                pass("tracked", est),
            );
        }
        for rel in [1001, 2001, 3001] {
            s.step(
                &format!("> . 1:1(0) ack {rel} win 65535"),
                s.outbound(ACK, host(1), peer(rel)).window(65535),
                pass("tracked", est),
            );
        }
        s.step(
            "> P. 1:1001(1000) ack 3001 win 65535",
            s.outbound(ACK | PSH, host(1), peer(3001))
                .window(65535)
                .payload(&kb),
            pass("tracked", est),
        );
        // The kernel: FIN_WAIT (one merged state).
        s.step(
            "< F. 3001:3001(0) ack 1001 win 65535",
            s.inbound(FIN | ACK, peer(3001), host(1001)).window(65535),
            pass("tracked", "CLOSE_WAIT:FIN_WAIT_1"),
        );
        // The kernel: CLOSE_WAIT (the script greps for it).
        s.step(
            "> . 1001:1001(0) ack 3002 win 65535",
            s.outbound(ACK, host(1001), peer(3002)).window(65535),
            pass("tracked", "CLOSE_WAIT:FIN_WAIT_2"),
        );
        // close() with unread data. The kernel: CLOSE (the script greps for it).
        s.step(
            "> R. 1001:1001(0) ack 3002 win 65535",
            s.outbound(RST | ACK, host(1001), peer(3002)).window(65535),
            pass("tracked", "CLOSED:CLOSED"),
        );
        // The peer's spurious RST, 1001 bytes behind what the host acknowledged:
        // nf_conntrack skips the RST checks in a closing state
        // (tcp_can_early_drop) and passes it.
        s.step(
            "< R 2001:2001(0) win 0",
            s.inbound(RST, peer(2001), 0).window(0),
            pass("tracked", "CLOSED:CLOSED"),
        );
    }
}

// ---- conntrack_rst_invalid.pkt ---------------------------------------------

/// `conntrack_rst_invalid.pkt`: RSTs injected into an established
/// connection (blind reset attacks, or stale RSTs of an older connection)
/// must not end it. nf_conntrack marks INVALID a RST whose seq lies before
/// what the RST's receiver has already acknowledged ("invalid rst",
/// `before(seq, td_maxack)`: here the RST at the peer's ISN, the one 42
/// bytes in, and the one a byte short of the host's last ACK) and one far
/// outside the window; the connection stays ESTABLISHED, and only the RST
/// at exactly the acknowledged point closes it. The script counts four
/// INVALID packets in INPUT.
///
/// The host connects; the peer's SYN+ACK has seq 1, so the peer's relative
/// seq n is 1 + n (the first RST's seq is 1, the peer's ISN). The host
/// acknowledges up to 3001 (absolute 3002) before the RSTs arrive.
#[test]
fn rst_before_the_acknowledged_point_is_invalid() {
    for family in FAMILIES {
        let mut s = Script::new("conntrack_rst_invalid.pkt", family, Role::Client);
        let peer = |rel: u32| 1 + rel;
        let est = "ESTABLISHED:ESTABLISHED";
        s.step(
            "> S 0:0(0) win 65535 <mss 1460,sackOK,TS val 1 ecr 0,nop,wscale 8>",
            s.outbound(SYN, host(0), 0)
                .window(65535)
                .mss(1460)
                .sack_permitted()
                .window_scale(8),
            pass("new_by_default", "SYN_SENT:LISTEN"),
        );
        s.step(
            "< S. 1:1(0) ack 1 win 65535 <mss 1460>",
            s.inbound(SYN | ACK, 1, host(1)).window(65535).mss(1460),
            pass("tracked", "SYN_SENT:SYN_RECV"),
        );
        s.step(
            "> . 1:1(0) ack 1 win 65535",
            s.outbound(ACK, host(1), peer(1)).window(65535),
            pass("tracked", est),
        );
        let kb = [0x17; 1000];
        for rel in [1, 1001, 2001] {
            s.step(
                &format!("< . {rel}:{}(1000) ack 1 win 65535", rel + 1000),
                s.inbound(ACK, peer(rel), host(1))
                    .window(65535)
                    .payload(&kb),
                pass("tracked", est),
            );
        }
        for rel in [1001, 2001, 3001] {
            s.step(
                &format!("> . 1:1(0) ack {rel} win 65535"),
                s.outbound(ACK, host(1), peer(rel)).window(65535),
                pass("tracked", est),
            );
        }
        // The script sniffs this segment after the three RSTs, but the kernel
        // sends it at write(), before them; the verdicts are the same in
        // either order (it changes neither the host's highest ACK nor the
        // peer's window).
        s.step(
            "> P. 1:1001(1000) ack 3001 win 65535",
            s.outbound(ACK | PSH, host(1), peer(3001))
                .window(65535)
                .payload(&kb),
            pass("tracked", est),
        );
        // "out of window": seq 1 is before the host's highest ACK (3002).
        s.step(
            "< R 0:0(0) win 0",
            s.inbound(RST, peer(0), 0).window(0),
            invalid("rst_behind_ack", est),
        );
        // "out of window": past the window (nf_conntrack: "SEQ is over the
        // upper bound").
        s.step(
            "< R 1000000:1000000(0) win 0",
            s.inbound(RST, peer(1_000_000), 0).window(0),
            invalid("rst_out_of_window", est),
        );
        // "in-window but not exact match": before the host's highest ACK too.
        s.step(
            "< R 42:42(0) win 0",
            s.inbound(RST, peer(42), 0).window(0),
            invalid("rst_behind_ack", est),
        );
        s.step(
            "< . 3001:3001(0) ack 1001 win 65535",
            s.inbound(ACK, peer(3001), host(1001)).window(65535),
            pass("tracked", est),
        );
        // One byte before the host's highest ACK.
        s.step(
            "< R. 3000:3000(0) ack 1001 win 0",
            s.inbound(RST | ACK, peer(3000), host(1001)).window(0),
            invalid("rst_behind_ack", est),
        );
        // "exact next sequence": the kernel moves to CLOSE.
        s.step(
            "< R. 3001:3001(0) ack 1001 win 0",
            s.inbound(RST | ACK, peer(3001), host(1001)).window(0),
            pass("tracked", "CLOSED:CLOSED"),
        );
    }
}

// ---- conntrack_syn_challenge_ack.pkt -----------------------------------------

/// `conntrack_syn_challenge_ack.pkt`: a client (the host) reconnects from a
/// port for which the server still holds an older connection (the client
/// rebooted, or a NAT reused the port). The server answers the new SYN with
/// an RFC 5961 challenge ACK for the old connection; the client's stack
/// answers that with a RST whose seq is the ACK's ack number, the server
/// drops the old connection, and the client's retransmitted SYN (sent at
/// once: the stack rearms its SYN timer to the minimum) opens the new one.
/// nf_conntrack must pass all of it: the script counts no INVALID packet and
/// ends ESTABLISHED and ASSURED.
///
/// The host connects. The challenge ACK comes before any SYN from the peer,
/// so its seq is taken as is (the peer's ISN is still 0) and its ack is
/// relative to the host's ISN: the RST's seq 643160523 equals it.
///
/// nf_conntrack passes the ACK without a state change (`TCP_CONNTRACK_IGNORE`,
/// "c) ACK in reply direction after initial SYN in original", recording its
/// ack number) and the RST because its seq is that number ("Reset in response
/// to a challenge-ack we let through earlier"); that RST moves its entry to
/// CLOSE, and the retransmitted SYN replaces the entry with a new one in
/// SYN_SENT. conntrackd takes a shorter way on purpose (its
/// `challenge_ack_rst`): the RST answers the old connection, not the new
/// attempt, so the entry stays `SYN_SENT:LISTEN` and the retransmitted SYN is
/// tracked as a retransmission. Same verdicts, same state once the SYN has
/// passed.
#[test]
fn challenge_ack_to_a_reused_port_lets_the_new_connection_through() {
    for family in FAMILIES {
        let mut s = Script::new("conntrack_syn_challenge_ack.pkt", family, Role::Client);
        let syn = "> S 0:0(0) win 65535 <mss 1460,sackOK,TS val 1 ecr 0,nop,wscale 8>";
        let syn_packet = s
            .outbound(SYN, host(0), 0)
            .window(65535)
            .mss(1460)
            .sack_permitted()
            .window_scale(8);
        s.step(
            syn,
            syn_packet.clone(),
            pass("new_by_default", "SYN_SENT:LISTEN"),
        );
        s.step(
            "< . 145824453:145824453(0) ack 643160523 win 240 \
             <mss 1460,nop,nop,TS val 1 ecr 1,nop,wscale 0>",
            s.inbound(ACK, 145_824_453, host(643_160_523))
                .window(240)
                .mss(1460)
                .window_scale(0),
            pass("challenge_ack", "SYN_SENT:LISTEN"),
        );
        s.step(
            "> R 643160523:643160523(0) win 0",
            s.outbound(RST, host(643_160_523), 0).window(0),
            pass("challenge_ack_rst", "SYN_SENT:LISTEN"),
        );
        // "Must go through."
        s.step(syn, syn_packet, pass("tracked", "SYN_SENT:LISTEN"));
        s.step(
            "< S. 0:0(0) ack 1 win 250 <mss 1460,nop,nop,TS val 1 ecr 1,nop,wscale 0>",
            s.inbound(SYN | ACK, 0, host(1))
                .window(250)
                .mss(1460)
                .window_scale(0),
            pass("tracked", "SYN_SENT:SYN_RECV"),
        );
        // "3whs completes."
        s.step(
            "> . 1:1(0) ack 1 win 256 <nop,nop,TS val 1 ecr 1>",
            s.outbound(ACK, host(1), 1).window(256),
            pass("tracked", "ESTABLISHED:ESTABLISHED"),
        );
        s.assert_assured();
    }
}

// ---- conntrack_synack_old.pkt ------------------------------------------------

/// `conntrack_synack_old.pkt`: a server answers a client's SYN (the host's)
/// with the SYN+ACK of an older attempt, whose ack number is wrong for this
/// SYN; later it sends the right SYN+ACK, with another ISN. The stale
/// SYN+ACK is INVALID (the script counts exactly one INVALID packet in
/// INPUT); the right one must pass and the connection must establish. Taken
/// from an NFS client's capture (in the script's header), where a kernel that
/// kept the stale SYN+ACK's sequence numbers dropped the right one and the
/// mount hung.
///
/// The host connects. packetdrill takes the peer's ISN from the first
/// SYN+ACK (145824453), so the host's final ack, written 4294901762, is
/// 145824453 + 4294901762 = 145758919 mod 2^32: the right SYN+ACK's seq + 1.
///
/// The two trackers get there differently: nf_conntrack records the stale
/// SYN+ACK's window before finding its ack wrong, and the right SYN+ACK
/// (exactly 65535 below it) still fits that window's lower edge, by one;
/// conntrackd checks a SYN+ACK's ack before it learns anything from it, so
/// the right SYN+ACK starts the responder's window afresh.
#[test]
fn stale_synack_is_invalid_and_the_right_one_passes() {
    for family in FAMILIES {
        let mut s = Script::new("conntrack_synack_old.pkt", family, Role::Client);
        s.step(
            "> S 0:0(0) win 65535 <mss 1460,sackOK,TS val 1 ecr 0,nop,wscale 8>",
            s.outbound(SYN, host(0), 0)
                .window(65535)
                .mss(1460)
                .sack_permitted()
                .window_scale(8),
            pass("new_by_default", "SYN_SENT:LISTEN"),
        );
        // "bogus/outdated synack, invalid ack value": nf_conntrack's "ACK is
        // over the upper bound (ACKed data not seen yet)".
        s.step(
            "< S. 145824453:145824453(0) ack 643160523 win 240 \
             <mss 1440,nop,nop,TS val 1 ecr 1,nop,wscale 0>",
            s.inbound(SYN | ACK, 145_824_453, host(643_160_523))
                .window(240)
                .mss(1440)
                .window_scale(0),
            invalid("synack_bad_ack", "SYN_SENT:LISTEN"),
        );
        // "syn retransmitted"
        s.step(
            "> S 0:0(0) win 65535 <mss 1460,sackOK,TS val 1015 ecr 0,nop,wscale 8>",
            s.outbound(SYN, host(0), 0)
                .window(65535)
                .mss(1460)
                .sack_permitted()
                .window_scale(8),
            pass("tracked", "SYN_SENT:LISTEN"),
        );
        // "correct synack"
        s.step(
            "< S. 145758918:145758918(0) ack 1 win 250 \
             <mss 1460,nop,nop,TS val 1 ecr 1,nop,wscale 0>",
            s.inbound(SYN | ACK, 145_758_918, host(1))
                .window(250)
                .mss(1460)
                .window_scale(0),
            pass("tracked", "SYN_SENT:SYN_RECV"),
        );
        // After write(3, ..., 1): the data completes the handshake.
        s.step(
            "> P. 1:2(1) ack 4294901762 win 256 <nop,nop,TS val 1067 ecr 1>",
            s.outbound(
                ACK | PSH,
                host(1),
                145_824_453u32.wrapping_add(4_294_901_762),
            )
            .window(256)
            .payload(b"x"),
            pass("tracked", "ESTABLISHED:ESTABLISHED"),
        );
        s.assert_assured();
    }
}

// ---- conntrack_synack_reuse.pkt ----------------------------------------------

/// `conntrack_synack_reuse.pkt`: a client reconnects from the same port to a
/// server (the host) that still holds the connection ESTABLISHED (the client
/// lost its state). The new SYN passes unchanged, the server answers it with
/// a challenge ACK, the client answers that with a RST at the exact point,
/// which closes the old connection, and the client's retransmitted SYN opens
/// a new one. Nothing is INVALID; the script ends with the new connection in
/// SYN_RECV.
///
/// The peer connects to the host's port 8080; the peer's ISN is 0 (its new
/// SYN's seq, 2000, is written as is).
#[test]
fn syn_on_an_established_port_is_challenged_and_reopens_after_rst() {
    for family in FAMILIES {
        let mut s = Script::new("conntrack_synack_reuse.pkt", family, Role::Server);
        let est = "ESTABLISHED:ESTABLISHED";
        s.step(
            "< S 0:0(0) win 32792 <mss 1000,nop,wscale 7, TS val 1 ecr 0,nop,nop>",
            s.inbound(SYN, 0, 0).window(32792).mss(1000).window_scale(7),
            pass("new_by_default", "SYN_SENT:LISTEN"),
        );
        s.step(
            "> S. 0:0(0) ack 1 <mss 1460,nop,nop,TS val 100 ecr 1,nop,wscale 8>",
            s.outbound(SYN | ACK, host(0), 1)
                .window(65535)
                .mss(1460)
                .window_scale(8),
            pass("tracked", "SYN_SENT:SYN_RECV"),
        );
        s.step(
            "< . 1:1(0) ack 1 win 257 <TS val 1 ecr 100,nop,nop>",
            s.inbound(ACK, 1, host(1)).window(257),
            pass("tracked", est),
        );
        s.step(
            "< P. 1:101(100) ack 1 win 257 <TS val 2 ecr 100,nop,nop>",
            s.inbound(ACK | PSH, 1, host(1))
                .window(257)
                .payload(&[0x33; 100]),
            pass("tracked", est),
        );
        s.step(
            "> . 1:1(0) ack 101 win 256 <nop,nop,TS val 110 ecr 2>",
            s.outbound(ACK, host(1), 101).window(256),
            pass("tracked", est),
        );
        // nf_conntrack: TCP_CONNTRACK_IGNORE ("a) SYN in ORIGINAL").
        s.step(
            "< S 2000:2000(0) win 32792 <mss 1000,nop,wscale 7, TS val 233 ecr 0,nop,nop>",
            s.inbound(SYN, 2000, 0)
                .window(32792)
                .mss(1000)
                .window_scale(7),
            pass("tcp_ignored", est),
        );
        // The host's challenge ACK.
        s.step(
            "> . 1:1(0) ack 101 win 256 <nop,nop,TS val 112 ecr 2>",
            s.outbound(ACK, host(1), 101).window(256),
            pass("tracked", est),
        );
        // At the host's highest ACK: the kernel moves to CLOSE.
        s.step(
            "< R. 101:101(0) ack 1 win 257",
            s.inbound(RST | ACK, 101, host(1)).window(257),
            pass("tracked", "CLOSED:CLOSED"),
        );
        // The kernel replaces its entry (the last packet was a RST from the
        // same side) with a new one in SYN_SENT.
        s.step(
            "< S 2000:2000(0) win 32792 <mss 1000,nop,wscale 0, TS val 233 ecr 0,nop,nop>",
            s.inbound(SYN, 2000, 0)
                .window(32792)
                .mss(1000)
                .window_scale(0),
            pass("new_by_default", "SYN_SENT:LISTEN"),
        );
        // Not a line of the script: the listener's SYN+ACK to the new SYN,
        // which the script's last check (`grep SYN_RECV`) relies on.
        s.step(
            "(the host's SYN+ACK to the new SYN)",
            s.outbound(SYN | ACK, host(0x0100_0000), 2001)
                .window(65535)
                .mss(1460)
                .window_scale(8),
            pass("tracked", "SYN_SENT:SYN_RECV"),
        );
    }
}
