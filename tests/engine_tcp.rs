//! TCP scenarios on the sans-IO engine, driven with crafted packets and a
//! virtual clock: the three-way handshake (with simultaneous open and TCP Fast
//! Open), data within each direction's window, the four-way teardown (and its
//! merged, simultaneous and half-closed variants), RST, TIME_WAIT and the
//! per-state timeouts. States print as `ORIGINATOR:RESPONDER` (the client's,
//! then the server's): each endpoint's state in RFC 9293 §3.3.2 (`SYN_SENT`
//! for SYN-SENT, `SYN_RECV` for SYN-RECEIVED, as nf_conntrack spells them;
//! `NONE` before the endpoint's first segment).
//!
//! ISNs sit just below 2^32 so every connection crosses the wrap.

mod engine_support;

use conntrackd::Reason;
use engine_support::*;

// ---- the three-way handshake ----------------------------------------------

#[test]
fn handshake_moves_each_endpoint_through_rfc9293_states() {
    let mut t = Harness::allow_all();
    let mut f = Flow::v4();
    let d = f.client(&mut t, SYN, b"");
    assert_eq!(d.reason, Reason::NewByDefault);
    assert_eq!(show(&d), "NONE -> SYN_SENT:LISTEN");
    let d = f.server(&mut t, SYN | ACK, b"");
    assert_eq!(
        (d.reason, show(&d).as_str()),
        (Reason::Tracked, "SYN_SENT:LISTEN -> SYN_SENT:SYN_RECV")
    );
    let d = f.client(&mut t, ACK, b"");
    assert_eq!(show(&d), "SYN_SENT:SYN_RECV -> ESTABLISHED:ESTABLISHED");
    assert_eq!(t.engine.table().half_open(), 0);
}

#[test]
fn synack_must_acknowledge_isn_plus_one() {
    let mut t = Harness::allow_all();
    let mut f = Flow::v4();
    f.client(&mut t, SYN, b"");
    for wrong in [f.c_nxt.wrapping_sub(1), f.c_nxt.wrapping_add(1), 0] {
        let d = t.tcp(f.s, f.c, SYN | ACK, f.s_nxt, wrong, b"");
        assert_eq!(d.reason, Reason::SynAckBadAck, "ack {wrong}");
        assert_eq!(
            d.after.to_string(),
            "SYN_SENT:LISTEN",
            "a bad SYN+ACK changes nothing"
        );
    }
    assert_eq!(f.server(&mut t, SYN | ACK, b"").reason, Reason::Tracked);
}

#[test]
fn final_ack_must_acknowledge_responder_isn_plus_one() {
    let mut t = Harness::allow_all();
    let mut f = Flow::v4();
    f.client(&mut t, SYN, b"");
    f.server(&mut t, SYN | ACK, b"");
    for wrong in [
        f.s_nxt.wrapping_add(1),
        f.s_nxt.wrapping_sub(1),
        f.s_nxt.wrapping_add(100_000),
    ] {
        let d = t.tcp(f.c, f.s, ACK, f.c_nxt, wrong, b"");
        assert_eq!(d.reason, Reason::HandshakeBadAck, "ack {wrong}");
    }
    assert_eq!(
        show(&f.client(&mut t, ACK, b"")),
        "SYN_SENT:SYN_RECV -> ESTABLISHED:ESTABLISHED"
    );
}

#[test]
fn fast_open_synack_may_acknowledge_the_syn_without_its_data() {
    // RFC 7413 §4.2.2: the server refuses the SYN's data and acks only the SYN.
    let mut t = Harness::allow_all();
    let mut f = Flow::v4();
    let isn = f.c_nxt;
    assert_eq!(f.client(&mut t, SYN, &[5; 20]).reason, Reason::NewByDefault);
    let d = t.tcp(f.s, f.c, SYN | ACK, f.s_nxt, isn.wrapping_add(1), b"");
    assert_eq!(d.reason, Reason::Tracked);
    // Beyond the SYN's data is still wrong.
    let d = t.tcp(f.s, f.c, SYN | ACK, f.s_nxt, isn.wrapping_add(22), b"");
    assert_eq!(d.reason, Reason::SynAckBadAck);
    f.s_nxt = f.s_nxt.wrapping_add(1);
    // The client sends the refused data again after the handshake.
    let d = t.tcp(f.c, f.s, ACK | PSH, isn.wrapping_add(1), f.s_nxt, &[5; 20]);
    assert_eq!(show(&d), "SYN_SENT:SYN_RECV -> ESTABLISHED:ESTABLISHED");
}

#[test]
fn ack_before_synack_is_dropped() {
    let mut t = Harness::allow_all();
    let mut f = Flow::v4();
    f.client(&mut t, SYN, b"");
    let d = t.tcp(f.c, f.s, ACK, f.c_nxt, 12345, b"");
    assert_eq!(d.reason, Reason::BadTransition);
}

#[test]
fn synack_from_the_originator_is_dropped() {
    let mut t = Harness::allow_all();
    let mut f = Flow::v4();
    f.client(&mut t, SYN, b"");
    let d = t.tcp(f.c, f.s, SYN | ACK, f.c_nxt, 1, b"");
    assert_eq!(d.reason, Reason::BadTransition);
}

#[test]
fn retransmitted_syn_and_synack_pass() {
    let mut t = Harness::allow_all();
    let mut f = Flow::v4();
    let isn = f.c_nxt;
    f.client(&mut t, SYN, b"");
    assert_eq!(t.tcp(f.c, f.s, SYN, isn, 0, b"").reason, Reason::Tracked);
    let s_isn = f.s_nxt;
    f.server(&mut t, SYN | ACK, b"");
    let d = t.tcp(f.s, f.c, SYN | ACK, s_isn, f.c_nxt, b"");
    assert_eq!(
        (d.reason, d.after.to_string().as_str()),
        (Reason::Tracked, "SYN_SENT:SYN_RECV")
    );
    f.client(&mut t, ACK, b"");
    // The final ACK was lost beyond the gateway: the responder retransmits its SYN+ACK.
    let d = t.tcp(f.s, f.c, SYN | ACK, s_isn, f.c_nxt, b"");
    assert_eq!(d.reason, Reason::TcpIgnored);
    assert_eq!(d.after.to_string(), "ESTABLISHED:ESTABLISHED");
    // A SYN+ACK with another ISN on an established connection is not a retransmission.
    let d = t.tcp(f.s, f.c, SYN | ACK, s_isn.wrapping_add(5000), f.c_nxt, b"");
    assert_eq!(d.reason, Reason::SynAckSeqMismatch);
}

/// A client that restarts before its SYN is answered sends a new SYN with a
/// new ISN; the tracker follows the last SYN, whatever its ISN, and the
/// SYN+ACK must acknowledge exactly that ISN+1 (README: "Where conntrackd
/// differs from nf_conntrack"; the kernel follows only a higher ISN).
#[test]
fn a_syn_storm_then_the_handshake_of_the_last_syn_passes() {
    let mut t = Harness::allow_all();
    let mut f = Flow::v4();
    // The last is behind the highest in sequence space, and just under 2^32:
    // the connection crosses the wrap.
    let isns = [1_000_000u32, 900_000_000, 50_000, u32::MAX - 5];
    for isn in isns {
        let d = t.tcp(f.c, f.s, SYN, isn, 0, b"");
        assert_eq!(d.verdict(), conntrackd::Verdict::Accept, "SYN {isn}");
        assert_eq!(d.after.to_string(), "SYN_SENT:LISTEN", "SYN {isn}");
    }
    // A SYN+ACK of any earlier SYN: the client no longer holds that ISN.
    for isn in &isns[..3] {
        let d = t.tcp(f.s, f.c, SYN | ACK, f.s_nxt, isn + 1, b"");
        assert_eq!(d.reason, Reason::SynAckBadAck, "SYN+ACK of {isn}");
    }
    f.c_nxt = isns[3] + 1;
    assert_eq!(f.server(&mut t, SYN | ACK, b"").reason, Reason::Tracked);
    let d = f.client(&mut t, ACK, b"");
    assert_eq!(show(&d), "SYN_SENT:SYN_RECV -> ESTABLISHED:ESTABLISHED");
    assert_eq!(
        f.client(&mut t, ACK | PSH, &[1; 10]).reason,
        Reason::Tracked
    );
    assert_eq!(
        f.server(&mut t, ACK | PSH, &[2; 20]).reason,
        Reason::Tracked
    );
    assert_eq!(f.client(&mut t, ACK, b"").reason, Reason::Tracked);
}

/// A SYN with another ISN (a spoofed one, say) between the client's SYN and
/// the server's answer: the SYN+ACK of the client's SYN is dropped until the
/// client retransmits its SYN, then the handshake completes. What it takes to
/// complete a handshake, the server's ISN, is only in the SYN+ACK.
#[test]
fn a_syn_with_another_isn_before_the_answer_costs_one_retransmission() {
    let mut t = Harness::allow_all();
    let f = Flow::v4();
    let (ci, si) = (1_000_000u32, f.s_nxt);
    t.tcp(f.c, f.s, SYN, ci, 0, b"");
    t.tcp(f.c, f.s, SYN, 900_000_000, 0, b"");
    let d = t.tcp(f.s, f.c, SYN | ACK, si, ci + 1, b"");
    assert_eq!(d.reason, Reason::SynAckBadAck);
    // An ACK before a SYN+ACK has passed is dropped: completing a handshake
    // takes the server's ISN, which only its SYN+ACK carries.
    let d = t.tcp(f.c, f.s, ACK, 900_000_001, si.wrapping_add(1), b"");
    assert_eq!(d.reason, Reason::BadTransition);
    assert_eq!(t.tcp(f.c, f.s, SYN, ci, 0, b"").reason, Reason::Tracked);
    assert_eq!(
        t.tcp(f.s, f.c, SYN | ACK, si, ci + 1, b"").reason,
        Reason::Tracked
    );
    let d = t.tcp(f.c, f.s, ACK, ci + 1, si.wrapping_add(1), b"");
    assert_eq!(show(&d), "SYN_SENT:SYN_RECV -> ESTABLISHED:ESTABLISHED");
}

/// A SYN with another ISN after the server's SYN+ACK (a spoofed one, from an
/// attacker who guessed the tuple) passes and changes nothing, as in
/// nf_conntrack: the server holds the ISN it acknowledged. The real client's
/// final ACK completes the handshake and its data and ACKs pass (the SYN once
/// moved the tracker to its ISN, and the client's ACK of the server's data
/// was dropped as `handshake_bad_ack`).
#[test]
fn a_syn_with_another_isn_after_the_synack_changes_nothing() {
    let mut t = Harness::allow_all();
    let mut f = Flow::v4();
    let ci = f.c_nxt;
    f.client(&mut t, SYN, b"");
    f.server(&mut t, SYN | ACK, b"");
    // Above and below the client's ISN.
    for isn in [ci.wrapping_add(900_000_000), ci.wrapping_sub(5_000_000)] {
        let d = t.tcp(f.c, f.s, SYN, isn, 0, b"");
        assert_eq!(
            (d.reason, show(&d).as_str()),
            (Reason::TcpIgnored, "SYN_SENT:SYN_RECV -> SYN_SENT:SYN_RECV"),
            "SYN {isn}"
        );
    }
    // The client's own SYN retransmitted is still its SYN.
    assert_eq!(t.tcp(f.c, f.s, SYN, ci, 0, b"").reason, Reason::Tracked);
    let d = f.client(&mut t, ACK, b"");
    assert_eq!(show(&d), "SYN_SENT:SYN_RECV -> ESTABLISHED:ESTABLISHED");
    for (sender, flags, payload) in [
        (Role::Originator, ACK | PSH, &[1; 10][..]),
        (Role::Responder, ACK | PSH, &[2; 20]),
        (Role::Originator, ACK, b""),
        (Role::Originator, ACK | PSH, &[3; 30]),
        (Role::Responder, ACK, b""),
    ] {
        let d = f.send(&mut t, sender, flags, payload);
        assert_eq!(
            (d.reason, d.after.to_string().as_str()),
            (Reason::Tracked, "ESTABLISHED:ESTABLISHED"),
            "{sender:?} {} with {} bytes",
            F(flags),
            payload.len()
        );
    }
}

/// A client whose SYN+ACK was lost beyond the gateway restarts and sends a
/// SYN with a new ISN. The server, still holding the old attempt, answers it
/// with an ACK of the old ISN+1 (a challenge ACK, RFC 5961 §4); the client,
/// in SYN-SENT, answers that with a RST at the ACK's number (RFC 9293
/// §3.10.7.3), which passes and resets the old attempt (it was dropped as
/// `rst_out_of_window` while the new SYN moved the tracker); the client's
/// next SYN opens the connection afresh.
#[test]
fn a_restarted_client_resets_the_old_attempt_and_connects() {
    let mut t = Harness::allow_all();
    let mut f = Flow::v6();
    let (old, si) = (f.c_nxt, f.s_nxt);
    f.client(&mut t, SYN, b"");
    f.server(&mut t, SYN | ACK, b"");
    let new = old.wrapping_sub(1_000_000);
    let d = t.tcp(f.c, f.s, SYN, new, 0, b"");
    assert_eq!(d.reason, Reason::TcpIgnored);
    let d = t.tcp(f.s, f.c, ACK, si.wrapping_add(1), old.wrapping_add(1), b"");
    assert_eq!(
        (d.reason, d.after.to_string().as_str()),
        (Reason::Tracked, "SYN_SENT:SYN_RECV")
    );
    let d = t.tcp(f.c, f.s, RST, old.wrapping_add(1), 0, b"");
    assert_eq!(
        (d.reason, show(&d).as_str()),
        (Reason::Tracked, "SYN_SENT:SYN_RECV -> CLOSED:CLOSED")
    );
    // The new attempt: its SYN retransmitted, the server's answer, data.
    let mut g = Flow::v6();
    (g.c_nxt, g.s_nxt) = (new, si.wrapping_add(77_777));
    let d = g.client(&mut t, SYN, b"");
    assert_eq!(
        (d.reason, show(&d).as_str()),
        (Reason::NewByDefault, "NONE -> SYN_SENT:LISTEN")
    );
    assert_eq!(g.server(&mut t, SYN | ACK, b"").reason, Reason::Tracked);
    let d = g.client(&mut t, ACK, b"");
    assert_eq!(show(&d), "SYN_SENT:SYN_RECV -> ESTABLISHED:ESTABLISHED");
    assert_eq!(
        g.client(&mut t, ACK | PSH, &[4; 10]).reason,
        Reason::Tracked
    );
    assert_eq!(
        g.server(&mut t, ACK | PSH, &[5; 20]).reason,
        Reason::Tracked
    );
    assert_eq!(g.client(&mut t, ACK, b"").reason, Reason::Tracked);
}

/// The difference from nf_conntrack that remains after the SYN+ACK (README:
/// "Where conntrackd differs from nf_conntrack"): when the server answers a
/// restarted client's new SYN with a SYN+ACK of it, the kernel takes up the
/// SYN it passed; conntrackd drops that SYN+ACK, and the client's SYNs pass
/// without refreshing the entry, until the half-open entry expires and the
/// next SYN opens afresh.
#[test]
fn a_synack_of_a_syn_passed_unchanged_waits_for_the_entry_to_expire() {
    let mut t = Harness::allow_all();
    let mut f = Flow::v4();
    let old = f.c_nxt;
    f.client(&mut t, SYN, b"");
    f.server(&mut t, SYN | ACK, b"");
    let answered = t.now_secs;
    let new = old.wrapping_add(1_000_000);
    let (mut g, si) = (Flow::v4(), f.s_nxt.wrapping_add(500_000));
    (g.c_nxt, g.s_nxt) = (new, si);
    assert_eq!(g.client(&mut t, SYN, b"").reason, Reason::TcpIgnored);
    let d = t.tcp(g.s, g.c, SYN | ACK, si, new.wrapping_add(1), b"");
    assert_eq!(d.reason, Reason::SynAckBadAck);
    // The client's SYN again, within the SYN_RECV timeout (60 s).
    t.now_secs = answered + 59;
    assert_eq!(t.tcp(g.c, g.s, SYN, new, 0, b"").reason, Reason::TcpIgnored);
    t.now_secs = answered + 61;
    let d = t.tcp(g.c, g.s, SYN, new, 0, b"");
    assert_eq!(
        (d.reason, show(&d).as_str()),
        (Reason::NewByDefault, "NONE -> SYN_SENT:LISTEN")
    );
    assert_eq!(g.server(&mut t, SYN | ACK, b"").reason, Reason::Tracked);
    let d = g.client(&mut t, ACK, b"");
    assert_eq!(show(&d), "SYN_SENT:SYN_RECV -> ESTABLISHED:ESTABLISHED");
}

/// A SYN on an established connection: from the client, a reconnect on the
/// same ports (the server answers it with a challenge ACK), passed without a
/// state change as nf_conntrack does; from the server, which never
/// reconnects to its client, invalid (nf_conntrack's reply direction too).
#[test]
fn a_syn_on_an_established_connection_passes_unchanged_only_from_the_client() {
    let mut t = Harness::allow_all();
    let mut f = Flow::established(&mut t);
    let d = t.tcp(f.c, f.s, SYN, 5, 0, b"");
    assert_eq!(
        (d.reason, d.after.to_string().as_str()),
        (Reason::TcpIgnored, "ESTABLISHED:ESTABLISHED")
    );
    let d = t.tcp(f.s, f.c, SYN, 5, 0, b"");
    assert_eq!(
        (d.reason, d.after.to_string().as_str()),
        (Reason::BadTransition, "ESTABLISHED:ESTABLISHED")
    );
    assert_eq!(f.client(&mut t, ACK, b"").reason, Reason::Tracked);
}

#[test]
fn simultaneous_open() {
    let mut t = Harness::allow_all();
    let mut f = Flow::v4();
    f.client(&mut t, SYN, b"");
    // The responder's own SYN crosses ours.
    let d = t.tcp(f.s, f.c, SYN, f.s_nxt, 0, b"");
    f.s_nxt = f.s_nxt.wrapping_add(1);
    assert_eq!(show(&d), "SYN_SENT:LISTEN -> SYN_RECV:SYN_RECV");
    let d = t.tcp(f.c, f.s, SYN | ACK, f.c_nxt.wrapping_sub(1), f.s_nxt, b"");
    assert_eq!(show(&d), "SYN_RECV:SYN_RECV -> SYN_RECV:ESTABLISHED");
    let d = t.tcp(f.s, f.c, SYN | ACK, f.s_nxt.wrapping_sub(1), f.c_nxt, b"");
    assert_eq!(show(&d), "SYN_RECV:ESTABLISHED -> ESTABLISHED:ESTABLISHED");
    assert_eq!(
        f.client(&mut t, ACK | PSH, b"hello").reason,
        Reason::Tracked
    );
    assert_eq!(
        f.server(&mut t, ACK | PSH, b"world").reason,
        Reason::Tracked
    );
}

// ---- data -----------------------------------------------------------------

#[test]
fn data_flows_both_ways_across_the_sequence_wrap() {
    let mut t = Harness::allow_all();
    let mut f = Flow::established(&mut t);
    let start = f.c_nxt;
    for i in 0..200u32 {
        let payload = vec![i as u8; 1000];
        assert_eq!(
            f.client(&mut t, ACK | PSH, &payload).reason,
            Reason::Tracked,
            "client segment {i}"
        );
        assert_eq!(f.server(&mut t, ACK, b"").reason, Reason::Tracked);
        assert_eq!(
            f.server(&mut t, ACK | PSH, &payload[..100]).reason,
            Reason::Tracked,
            "server segment {i}"
        );
        assert_eq!(f.client(&mut t, ACK, b"").reason, Reason::Tracked);
    }
    assert!(
        f.c_nxt < start,
        "the client's sequence numbers wrapped past 2^32"
    );
}

#[test]
fn data_beyond_the_receivers_window_is_dropped() {
    let mut t = Harness::allow_all();
    let mut f = Flow::established(&mut t);
    // The server advertised 65535 bytes (no scaling): a segment starting past
    // that edge by more than the server's largest window is invalid...
    let d = t.tcp(
        f.c,
        f.s,
        ACK | PSH,
        f.c_nxt.wrapping_add(65_535 + 65_536),
        f.s_nxt,
        b"x",
    );
    assert_eq!(d.reason, Reason::SeqAboveWindow);
    let d = t.tcp(
        f.c,
        f.s,
        ACK | PSH,
        f.c_nxt.wrapping_add(1 << 30),
        f.s_nxt,
        b"x",
    );
    assert_eq!(d.reason, Reason::SeqAboveWindow);
    // Still within the window: fine.
    let d = t.tcp(
        f.c,
        f.s,
        ACK | PSH,
        f.c_nxt.wrapping_add(60_000),
        f.s_nxt,
        b"x",
    );
    assert_eq!(d.reason, Reason::Tracked);
    assert_eq!(f.client(&mut t, ACK, b"").reason, Reason::Tracked);
}

#[test]
fn ack_of_data_never_sent_is_dropped() {
    let mut t = Harness::allow_all();
    let mut f = Flow::established(&mut t);
    let d = t.tcp(f.c, f.s, ACK, f.c_nxt, f.s_nxt.wrapping_add(10), b"");
    assert_eq!(d.reason, Reason::AckAboveSent);
    assert_eq!(f.client(&mut t, ACK, b"").reason, Reason::Tracked);
}

#[test]
fn old_retransmission_passes_without_state_change() {
    let mut t = Harness::allow_all();
    let mut f = Flow::established(&mut t);
    let first = f.c_nxt;
    // Move the client ~150 KB forward in 1000-byte steps, each acknowledged.
    for _ in 0..150 {
        f.client(&mut t, ACK | PSH, &[0; 1000]);
        f.server(&mut t, ACK, b"");
    }
    // A copy of the very first segment, long acknowledged and behind the window.
    let d = t.tcp(f.c, f.s, ACK | PSH, first, f.s_nxt, &[0; 1000]);
    assert_eq!(d.reason, Reason::OldRetransmission);
    assert_eq!(d.reason.verdict(), conntrackd::Verdict::Accept);
    // A recent retransmission (inside the window) is simply tracked.
    let d = t.tcp(
        f.c,
        f.s,
        ACK | PSH,
        f.c_nxt.wrapping_sub(1000),
        f.s_nxt,
        &[0; 1000],
    );
    assert_eq!(d.reason, Reason::Tracked);
}

#[test]
fn window_scaling_counts_only_when_both_syns_carry_it() {
    // Both offer scaling: the server's 1024 << 7 = 131072-byte window admits data at +100000.
    let mut t = Harness::allow_all();
    let mut f = Flow::v4();
    t.send(f.syn_builder().window_scale(7).build());
    let d = t.send(f.synack_builder().window_scale(7).window(1024).build());
    assert_eq!(d.reason, Reason::Tracked);
    f.client(&mut t, ACK, b"");
    // The server's first scaled window update.
    t.send(f.builder(Role::Responder, ACK).window(1024).build());
    let d = t.tcp(
        f.c,
        f.s,
        ACK | PSH,
        f.c_nxt.wrapping_add(100_000),
        f.s_nxt,
        b"x",
    );
    assert_eq!(d.reason, Reason::Tracked, "scaled window");

    // The originator's own scale counts too: the server may send up to the
    // client's 1024 << 7.
    let d = t.send(f.builder(Role::Originator, ACK).window(1024).build());
    assert_eq!(d.reason, Reason::Tracked);
    let d = t.tcp(
        f.s,
        f.c,
        ACK | PSH,
        f.s_nxt.wrapping_add(100_000),
        f.c_nxt,
        b"x",
    );
    assert_eq!(d.reason, Reason::Tracked, "originator's scaled window");

    // Only the client offers it: windows are unscaled and +100000 is past 1024.
    let mut t = Harness::allow_all();
    let mut f = Flow::v4();
    t.send(f.syn_builder().window_scale(7).build());
    t.send(f.synack_builder().window(1024).build());
    f.client(&mut t, ACK, b"");
    t.send(f.builder(Role::Responder, ACK).window(1024).build());
    let d = t.tcp(
        f.c,
        f.s,
        ACK | PSH,
        f.c_nxt.wrapping_add(100_000),
        f.s_nxt,
        b"x",
    );
    assert_eq!(d.reason, Reason::SeqAboveWindow, "unscaled window");
}

// ---- no connection ----------------------------------------------------------

#[test]
fn packets_without_a_connection_are_dropped_and_create_nothing() {
    let mut t = Harness::allow_all();
    let f = Flow::v4();
    for flags in [ACK, ACK | PSH, FIN | ACK, RST, RST | ACK, SYN | ACK] {
        let d = t.tcp(f.c, f.s, flags, 1000, 2000, b"data");
        assert_eq!(d.reason, Reason::NoConnection, "flags {}", F(flags));
    }
    assert_eq!(t.engine.table().len(), 0);
}

#[test]
fn loose_pickup_adopts_mid_stream_connections_only_when_enabled() {
    let settings = conntrackd::EngineSettings {
        loose_pickup: true,
        ..Default::default()
    };
    let mut t = Harness::with(settings, conntrackd::policy::Policy::allow_all());
    let f = Flow::v4();
    let d = t.tcp(f.c, f.s, ACK | PSH, 1000, 2000, b"data");
    assert_eq!(d.reason, Reason::NewByDefault);
    assert_eq!(d.after.to_string(), "ESTABLISHED:ESTABLISHED");
    assert_eq!(
        t.tcp(f.s, f.c, ACK, 2000, 1004, b"").reason,
        Reason::Tracked
    );
    // A FIN or RST never opens a connection, even in loose mode.
    let g = Flow::v4_port(41000);
    assert_eq!(
        t.tcp(g.c, g.s, FIN | ACK, 1, 1, b"").reason,
        Reason::NoConnection
    );
}

// ---- invalid flag combinations ------------------------------------------------

#[test]
fn invalid_flag_combinations_are_dropped_before_lookup() {
    let mut t = Harness::allow_all();
    let mut f = Flow::established(&mut t);
    let cases = [
        (SYN | FIN, Reason::SynFin),
        (SYN | FIN | PSH, Reason::SynFin),
        (SYN | FIN | RST, Reason::SynFin),
        (SYN | FIN | URG, Reason::SynFin),
        (SYN | RST, Reason::SynRst),
        (FIN | RST, Reason::FinRst),
        (FIN | PSH | URG, Reason::Xmas),
        (0, Reason::NullFlags),
        (FIN, Reason::FinWithoutAck),
        (URG, Reason::UrgOnly),
        (PSH, Reason::PshOnly),
    ];
    for (flags, reason) in cases {
        // On an established connection, in window: still dropped.
        let d = t.tcp(f.c, f.s, flags, f.c_nxt, f.s_nxt, b"");
        assert_eq!(d.reason, reason, "flags {}", F(flags));
        // Without a connection: the same reason (checked before lookup), nothing created.
        let g = Flow::v4_port(50000);
        assert_eq!(t.tcp(g.c, g.s, flags, 1, 0, b"").reason, reason);
    }
    assert_eq!(t.engine.table().len(), 1);
    assert_eq!(f.client(&mut t, ACK, b"").reason, Reason::Tracked);
}

// ---- teardown ---------------------------------------------------------------

/// The four-way close the client starts, step by step.
const FOUR_WAY_FROM_CLIENT: [(Role, u8, &str); 4] = [
    (
        Role::Originator,
        FIN | ACK,
        "ESTABLISHED:ESTABLISHED -> FIN_WAIT_1:CLOSE_WAIT",
    ),
    (
        Role::Responder,
        ACK,
        "FIN_WAIT_1:CLOSE_WAIT -> FIN_WAIT_2:CLOSE_WAIT",
    ),
    (
        Role::Responder,
        FIN | ACK,
        "FIN_WAIT_2:CLOSE_WAIT -> TIME_WAIT:LAST_ACK",
    ),
    (
        Role::Originator,
        ACK,
        "TIME_WAIT:LAST_ACK -> TIME_WAIT:CLOSED",
    ),
];

#[test]
fn four_way_close_from_the_client() {
    let mut t = Harness::allow_all();
    let mut f = Flow::established(&mut t);
    f.assert_steps(&mut t, &FOUR_WAY_FROM_CLIENT);
}

#[test]
fn four_way_close_from_the_server() {
    let mut t = Harness::allow_all();
    let mut f = Flow::established(&mut t);
    let steps = [
        (
            Role::Responder,
            FIN | ACK,
            "ESTABLISHED:ESTABLISHED -> CLOSE_WAIT:FIN_WAIT_1",
        ),
        (
            Role::Originator,
            ACK,
            "CLOSE_WAIT:FIN_WAIT_1 -> CLOSE_WAIT:FIN_WAIT_2",
        ),
        (
            Role::Originator,
            FIN | ACK,
            "CLOSE_WAIT:FIN_WAIT_2 -> LAST_ACK:TIME_WAIT",
        ),
        (
            Role::Responder,
            ACK,
            "LAST_ACK:TIME_WAIT -> CLOSED:TIME_WAIT",
        ),
    ];
    f.assert_steps(&mut t, &steps);
}

#[test]
fn merged_ack_and_fin_close_in_three_segments() {
    // Seed 004: the server's ACK of the FIN and its own FIN travel in one segment.
    let mut t = Harness::allow_all();
    let mut f = Flow::established(&mut t);
    f.client(&mut t, FIN | ACK, b"");
    let d = f.server(&mut t, FIN | ACK, b"");
    assert_eq!(show(&d), "FIN_WAIT_1:CLOSE_WAIT -> TIME_WAIT:LAST_ACK");
    let d = f.client(&mut t, ACK, b"");
    assert_eq!(show(&d), "TIME_WAIT:LAST_ACK -> TIME_WAIT:CLOSED");
}

#[test]
fn simultaneous_close_goes_through_closing() {
    let mut t = Harness::allow_all();
    let f = Flow::established(&mut t);
    // Both FINs are sent before either arrives: each acknowledges only data.
    let (c_fin, s_fin) = (f.c_nxt, f.s_nxt);
    let d = t.tcp(f.c, f.s, FIN | ACK, c_fin, s_fin, b"");
    assert_eq!(show(&d), "ESTABLISHED:ESTABLISHED -> FIN_WAIT_1:CLOSE_WAIT");
    let d = t.tcp(f.s, f.c, FIN | ACK, s_fin, c_fin, b"");
    assert_eq!(show(&d), "FIN_WAIT_1:CLOSE_WAIT -> CLOSING:CLOSING");
    let d = t.tcp(
        f.c,
        f.s,
        ACK,
        c_fin.wrapping_add(1),
        s_fin.wrapping_add(1),
        b"",
    );
    assert_eq!(show(&d), "CLOSING:CLOSING -> CLOSING:TIME_WAIT");
    let d = t.tcp(
        f.s,
        f.c,
        ACK,
        s_fin.wrapping_add(1),
        c_fin.wrapping_add(1),
        b"",
    );
    assert_eq!(show(&d), "CLOSING:TIME_WAIT -> TIME_WAIT:TIME_WAIT");
}

#[test]
fn half_close_lets_the_other_side_keep_sending() {
    let mut t = Harness::allow_all();
    let mut f = Flow::established(&mut t);
    f.client(&mut t, FIN | ACK, b"");
    f.server(&mut t, ACK, b"");
    for _ in 0..5 {
        assert_eq!(
            f.server(&mut t, ACK | PSH, &[7; 500]).reason,
            Reason::Tracked
        );
        let d = f.client(&mut t, ACK, b"");
        assert_eq!(
            (d.reason, d.after.to_string().as_str()),
            (Reason::Tracked, "FIN_WAIT_2:CLOSE_WAIT")
        );
    }
    assert_eq!(
        show(&f.server(&mut t, FIN | ACK, b"")),
        "FIN_WAIT_2:CLOSE_WAIT -> TIME_WAIT:LAST_ACK"
    );
    assert_eq!(
        show(&f.client(&mut t, ACK, b"")),
        "TIME_WAIT:LAST_ACK -> TIME_WAIT:CLOSED"
    );
}

#[test]
fn no_new_data_after_fin_but_retransmissions_pass() {
    let mut t = Harness::allow_all();
    let mut f = Flow::established(&mut t);
    let data_seq = f.c_nxt;
    f.client(&mut t, ACK | PSH, &[1; 100]);
    let fin_seq = f.c_nxt;
    f.client(&mut t, FIN | ACK, b"");
    // New data after the FIN.
    let d = t.tcp(f.c, f.s, ACK | PSH, f.c_nxt, f.s_nxt, &[2; 10]);
    assert_eq!(d.reason, Reason::DataAfterFin);
    // Retransmissions of the data and of the FIN itself are fine.
    let d = t.tcp(f.c, f.s, ACK | PSH, data_seq, f.s_nxt, &[1; 100]);
    assert_eq!(d.reason, Reason::Tracked);
    let d = t.tcp(f.c, f.s, FIN | ACK, fin_seq, f.s_nxt, b"");
    assert_eq!(d.reason, Reason::Tracked);
    assert_eq!(d.after.to_string(), "FIN_WAIT_1:CLOSE_WAIT");
    // A FIN that claims more data than the first one is new data too.
    let d = t.tcp(f.c, f.s, FIN | ACK, fin_seq, f.s_nxt, &[3; 5]);
    assert_eq!(d.reason, Reason::DataAfterFin);
}

// ---- RST ------------------------------------------------------------------------

#[test]
fn rst_at_the_exact_sequence_closes_the_connection() {
    let mut t = Harness::allow_all();
    let mut f = Flow::established(&mut t);
    let d = f.server(&mut t, RST | ACK, b"");
    assert_eq!(
        (d.reason, show(&d)),
        (
            Reason::Tracked,
            "ESTABLISHED:ESTABLISHED -> CLOSED:CLOSED".into()
        )
    );
    // Nothing more passes on a reset connection.
    assert_eq!(f.client(&mut t, ACK, b"").reason, Reason::BadTransition);
}

#[test]
fn rst_outside_the_window_is_dropped() {
    let mut t = Harness::allow_all();
    let mut f = Flow::established(&mut t);
    for off in [100_000u32, 1 << 30] {
        let d = t.tcp(f.s, f.c, RST, f.s_nxt.wrapping_add(off), 0, b"");
        assert_eq!(d.reason, Reason::RstOutOfWindow, "offset {off}");
    }
    // Behind what the client acknowledged: stale or forged (nf_conntrack's "invalid rst").
    for off in [(1u32 << 31) + 5, u32::MAX] {
        let d = t.tcp(f.s, f.c, RST, f.s_nxt.wrapping_add(off), 0, b"");
        assert_eq!(d.reason, Reason::RstBehindAck, "offset {off}");
    }
    assert_eq!(
        f.client(&mut t, ACK, b"").after.to_string(),
        "ESTABLISHED:ESTABLISHED"
    );
}

#[test]
fn inexact_rst_in_window_gets_a_challenge_and_keeps_state() {
    let mut t = Harness::allow_all();
    let mut f = Flow::established(&mut t);
    let d = t.tcp(f.s, f.c, RST, f.s_nxt.wrapping_add(1000), 0, b"");
    assert_eq!(d.reason, Reason::RstChallenged);
    assert_eq!(d.after.to_string(), "ESTABLISHED:ESTABLISHED");
    assert_eq!(f.client(&mut t, ACK, b"").reason, Reason::Tracked);
}

/// The server refuses the SYN with a RST+ACK of exactly its ISN+1 (any other
/// ack answers no SYN of ours: out of window). The connection is then
/// forgotten, as nf_conntrack does: a further RST finds nothing, and a new
/// SYN opens a new connection.
#[test]
fn a_rst_refusing_the_syn_forgets_the_connection() {
    let mut t = Harness::allow_all();
    let mut f = Flow::v4();
    f.client(&mut t, SYN, b"");
    let d = t.tcp(f.s, f.c, RST | ACK, 0, f.c_nxt.wrapping_add(7), b"");
    assert_eq!(d.reason, Reason::RstOutOfWindow);
    let d = t.tcp(f.s, f.c, RST | ACK, 0, f.c_nxt, b"");
    assert_eq!(
        (d.reason, show(&d)),
        (Reason::Tracked, "SYN_SENT:LISTEN -> CLOSED:CLOSED".into())
    );
    assert_eq!(t.engine.table().len(), 0);
    let d = t.tcp(f.s, f.c, RST | ACK, 0, f.c_nxt, b"");
    assert_eq!(d.reason, Reason::NoConnection);
    let d = f.client(&mut t, SYN, b"");
    assert_eq!(
        (d.reason, show(&d)),
        (Reason::NewByDefault, "NONE -> SYN_SENT:LISTEN".into())
    );
}

// ---- TIME_WAIT and timeouts ----------------------------------------------------

#[test]
fn time_wait_lasts_2msl_and_a_new_syn_reopens() {
    let mut t = Harness::allow_all();
    let mut f = Flow::established(&mut t);
    f.client(&mut t, FIN | ACK, b"");
    f.server(&mut t, FIN | ACK, b"");
    f.client(&mut t, ACK, b"");
    let closed_at = t.now_secs;
    // The last ACK retransmitted within 2MSL (default 120 s) still belongs to the connection.
    t.now_secs = closed_at + 119;
    let d = t.tcp(f.c, f.s, ACK, f.c_nxt, f.s_nxt, b"");
    assert_eq!(
        (d.reason, d.after.to_string().as_str()),
        (Reason::Tracked, "TIME_WAIT:CLOSED")
    );
    // A new SYN on the same ports reopens it as a new connection.
    let mut g = Flow::v4();
    g.c_nxt = f.c_nxt.wrapping_add(100_000);
    let d = g.client(&mut t, SYN, b"");
    assert_eq!(
        (d.reason, show(&d)),
        (Reason::NewByDefault, "NONE -> SYN_SENT:LISTEN".into())
    );
}

#[test]
fn fin_retransmitted_after_the_last_ack_is_heard_in_time_wait() {
    // The last ACK is lost beyond the gateway: the server sends its FIN again
    // and the client, in TIME_WAIT, acknowledges it again.
    let mut t = Harness::allow_all();
    let mut f = Flow::established(&mut t);
    f.client(&mut t, FIN | ACK, b"");
    f.server(&mut t, ACK, b"");
    let fin = f.s_nxt;
    f.server(&mut t, FIN | ACK, b"");
    f.client(&mut t, ACK, b"");
    let d = t.tcp(f.s, f.c, FIN | ACK, fin, f.c_nxt, b"");
    assert_eq!(
        (d.reason, d.after.to_string().as_str()),
        (Reason::Tracked, "TIME_WAIT:CLOSED")
    );
    let d = t.tcp(f.c, f.s, ACK, f.c_nxt, f.s_nxt, b"");
    assert_eq!(
        (d.reason, d.after.to_string().as_str()),
        (Reason::Tracked, "TIME_WAIT:CLOSED")
    );
    // But the closed side may send nothing new.
    let d = t.tcp(f.s, f.c, ACK | PSH, f.s_nxt, f.c_nxt, b"more");
    assert_eq!(d.reason.verdict(), conntrackd::Verdict::Drop);
}

#[test]
fn time_wait_expires_after_2msl() {
    let mut t = Harness::allow_all();
    let mut f = Flow::established(&mut t);
    f.client(&mut t, FIN | ACK, b"");
    f.server(&mut t, FIN | ACK, b"");
    f.client(&mut t, ACK, b"");
    t.now_secs += 121;
    assert_eq!(t.engine.expire(t.now()), 1);
    assert!(t.engine.table().is_empty());
    assert_eq!(
        t.tcp(f.c, f.s, ACK, f.c_nxt, f.s_nxt, b"").reason,
        Reason::NoConnection
    );
}

#[test]
fn time_wait_is_configurable() {
    let settings = conntrackd::EngineSettings {
        timeouts: conntrackd::config::Timeouts {
            time_wait: 5,
            ..Default::default()
        },
        ..Default::default()
    };
    let mut t = Harness::with(settings, conntrackd::policy::Policy::allow_all());
    let mut f = Flow::established(&mut t);
    f.client(&mut t, FIN | ACK, b"");
    f.server(&mut t, FIN | ACK, b"");
    f.client(&mut t, ACK, b"");
    t.now_secs += 4;
    assert_eq!(t.engine.expire(t.now()), 0);
    t.now_secs += 2;
    assert_eq!(t.engine.expire(t.now()), 1);
}

/// Every pair of states lives the timeout of its state (nf_conntrack's, one
/// per state; the pair's is that of the state nearest the handshake's start
/// or the connection's end): each timeout configured to its own value, each
/// state is entered and its timeout read back from the connection's expiry.
#[test]
fn each_state_has_its_own_timeout() {
    let timeouts = conntrackd::config::Timeouts {
        syn_sent: 101,
        syn_recv: 102,
        established: 103,
        fin_wait: 104,
        close_wait: 105,
        last_ack: 106,
        time_wait: 107,
        close: 108,
        ..Default::default()
    };
    let settings = conntrackd::EngineSettings {
        timeouts,
        ..Default::default()
    };
    let mut t = Harness::with(settings, conntrackd::policy::Policy::allow_all());
    // Sends one step a second later than the last and reads back the
    // connection's state and the seconds it has left.
    let step = |t: &mut Harness, f: &mut Flow, sender: Role, flags: u8| {
        t.now_secs += 1;
        let d = f.send(t, sender, flags, b"");
        assert_eq!(d.reason.verdict(), conntrackd::Verdict::Accept, "{d:?}");
        let c = t
            .engine
            .lookup(6, (f.c.ip(), f.c.port()), (f.s.ip(), f.s.port()))
            .expect("tracked");
        (
            c.state.to_string(),
            u64::from(c.expires_at_secs) - t.now_secs,
        )
    };
    let mut f = Flow::v4();
    for (sender, flags, state, timeout) in [
        (Role::Originator, SYN, "SYN_SENT:LISTEN", 101),
        (Role::Responder, SYN | ACK, "SYN_SENT:SYN_RECV", 102),
        (Role::Originator, ACK, "ESTABLISHED:ESTABLISHED", 103),
        (Role::Originator, FIN | ACK, "FIN_WAIT_1:CLOSE_WAIT", 104),
        (Role::Responder, ACK, "FIN_WAIT_2:CLOSE_WAIT", 105),
        (Role::Responder, FIN | ACK, "TIME_WAIT:LAST_ACK", 106),
        (Role::Originator, ACK, "TIME_WAIT:CLOSED", 107),
    ] {
        let got = step(&mut t, &mut f, sender, flags);
        assert_eq!(got, (state.to_string(), timeout), "{sender:?} {}", F(flags));
    }
    // CLOSING: a simultaneous close, both FINs sent before either arrives.
    let mut g = Flow::v4_port(41000).open(&mut t);
    let c_fin = g.c_nxt;
    step(&mut t, &mut g, Role::Originator, FIN | ACK);
    // The server's FIN acknowledges the client's data, not its FIN.
    g.c_nxt = c_fin;
    let got = step(&mut t, &mut g, Role::Responder, FIN | ACK);
    assert_eq!(got, ("CLOSING:CLOSING".to_string(), 104));
    // CLOSED: reset.
    let mut h = Flow::v4_port(42000).open(&mut t);
    let got = step(&mut t, &mut h, Role::Responder, RST | ACK);
    assert_eq!(got, ("CLOSED:CLOSED".to_string(), 108));
}

/// Expiry removes a connection whose SYN was never answered once `syn_sent`
/// has passed, and takes it off the half-open count; an established one
/// lives on.
#[test]
fn an_unanswered_syn_expires_and_leaves_the_half_open_count() {
    let mut t = Harness::allow_all();
    let mut half = Flow::v4_port(42000);
    half.client(&mut t, SYN, b"");
    let _est = Flow::established(&mut t);
    t.now_secs += 121;
    assert_eq!(t.engine.expire(t.now()), 1);
    assert_eq!(t.engine.table().len(), 1);
    assert_eq!(t.engine.table().half_open(), 0);
}

// ---- connmark hand-off --------------------------------------------------------

#[test]
fn handed_off_connection_still_follows_its_teardown() {
    let mut t = Harness::allow_all();
    let mut f = Flow::established(&mut t);
    let plain = f.builder(Role::Originator, ACK).build();
    let now = t.now();
    // Only plain packets from the originator of an established connection.
    let fin = f.builder(Role::Originator, FIN | ACK).build();
    assert!(!t.engine.hand_off(&fin, Default::default(), now, 600));
    assert!(t.engine.hand_off(&plain, Default::default(), now, 600));
    // The kernel carried 50 MB each way meanwhile: the engine never saw it.
    f.c_nxt = f.c_nxt.wrapping_add(50_000_000);
    f.s_nxt = f.s_nxt.wrapping_add(50_000_000);
    let d = f.client(&mut t, FIN | ACK, b"");
    assert_eq!(
        (d.reason, show(&d).as_str()),
        (
            Reason::Tracked,
            "ESTABLISHED:ESTABLISHED -> FIN_WAIT_1:CLOSE_WAIT"
        )
    );
    // An in-window RST ends it even though the engine's view was stale.
    let mut g = Flow::v4_port(41000);
    for (sender, flags) in [
        (Role::Originator, SYN),
        (Role::Responder, SYN | ACK),
        (Role::Originator, ACK),
    ] {
        g.send(&mut t, sender, flags, b"");
    }
    let plain = g.builder(Role::Originator, ACK).build();
    assert!(t.engine.hand_off(&plain, Default::default(), now, 600));
    g.s_nxt = g.s_nxt.wrapping_add(7_000);
    let d = g.server(&mut t, RST | ACK, b"");
    assert_eq!(
        (d.reason, d.after.to_string().as_str()),
        (Reason::Tracked, "CLOSED:CLOSED")
    );
}

#[test]
fn the_kernel_keeps_handed_off_connections_alive_in_the_engine() {
    let mut t = Harness::allow_all();
    let mut f = Flow::established(&mut t);
    let (c, s) = (f.c, f.s);
    let keep = |t: &Harness, src: std::net::SocketAddr, dst: std::net::SocketAddr, timeout| {
        t.engine.keep_handed_off(
            (src.ip(), src.port()),
            (dst.ip(), dst.port()),
            t.now(),
            timeout,
        )
    };
    let expires = |t: &Harness| t.engine.connections()[0].expires_at_secs as u64;
    // Not handed off yet: its own packets keep it, not the kernel.
    assert!(!keep(&t, c, s, 600));
    let plain = f.builder(Role::Originator, ACK).build();
    assert!(t.engine.hand_off(&plain, Default::default(), t.now(), 600));
    assert_eq!(expires(&t), t.now_secs + 600);
    t.now_secs += 500;
    assert!(keep(&t, c, s, 600));
    assert_eq!(expires(&t), t.now_secs + 600);
    // The kernel's entry may name the responder first (re-created from its side).
    t.now_secs += 1;
    assert!(keep(&t, s, c, 600));
    assert_eq!(expires(&t), t.now_secs + 600);
    // Never shortened.
    assert!(keep(&t, c, s, 10));
    assert_eq!(expires(&t), t.now_secs + 600);
    // Nothing to keep for an unknown connection...
    let other: std::net::SocketAddr = "198.18.0.2:40001".parse().unwrap();
    assert!(!keep(&t, other, s, 600));
    // ...nor once it is closing: the teardown's own timeouts apply.
    f.c_nxt = f.c_nxt.wrapping_add(1_000_000);
    f.s_nxt = f.s_nxt.wrapping_add(1_000_000);
    assert_eq!(f.client(&mut t, FIN | ACK, b"").reason, Reason::Tracked);
    assert!(!keep(&t, c, s, 600));
}

// ---- IPv6 ------------------------------------------------------------------------

#[test]
fn ipv6_connection_lifecycle() {
    let mut t = Harness::allow_all();
    let mut f = Flow::v6();
    assert_eq!(f.client(&mut t, SYN, b"").reason, Reason::NewByDefault);
    f.server(&mut t, SYN | ACK, b"");
    assert_eq!(
        f.client(&mut t, ACK, b"").after.to_string(),
        "ESTABLISHED:ESTABLISHED"
    );
    assert_eq!(
        f.client(&mut t, ACK | PSH, b"GET /").reason,
        Reason::Tracked
    );
    f.client(&mut t, FIN | ACK, b"");
    f.server(&mut t, FIN | ACK, b"");
    assert_eq!(
        f.client(&mut t, ACK, b"").after.to_string(),
        "TIME_WAIT:CLOSED"
    );
    // The client sent its FIN: it may send no more data.
    let d = t.tcp(f.c, f.s, ACK, f.c_nxt, f.s_nxt, b"late");
    assert_eq!(d.reason, Reason::DataAfterFin);
}

// ---- Corner cases real stacks produce, as nf_conntrack decides them -------------

/// A client reconnects on ports for which the server still holds an older
/// connection (client reboot, NAT port reuse). The server answers the new SYN
/// with an RFC 5961 challenge ACK for the old connection; the client answers
/// that with a RST at the ACK's ack number, which makes the server drop the
/// old connection; the client's retransmitted SYN then opens the new one.
#[test]
fn challenge_ack_in_syn_sent_and_the_rst_answering_it_let_a_reconnect_through() {
    for mut f in [Flow::v4(), Flow::v6()] {
        let mut t = Harness::allow_all();
        let isn = f.c_nxt;
        f.client(&mut t, SYN, b"");
        // The old connection's numbers: nothing to do with this SYN.
        let (old_seq, old_ack) = (145_824_453u32, 643_160_523u32);
        let d = t.tcp(f.s, f.c, ACK, old_seq, old_ack, b"");
        assert_eq!(
            (d.reason, show(&d)),
            (
                Reason::ChallengeAck,
                "SYN_SENT:LISTEN -> SYN_SENT:LISTEN".into()
            )
        );
        let d = t.tcp(f.c, f.s, RST, old_ack, 0, b"");
        assert_eq!(
            (d.reason, show(&d)),
            (
                Reason::ChallengeAckRst,
                "SYN_SENT:LISTEN -> SYN_SENT:LISTEN".into()
            )
        );
        // A RST at any other sequence number is not that answer.
        let d = t.tcp(f.c, f.s, RST, old_ack.wrapping_add(1), 0, b"");
        assert_eq!(d.verdict(), conntrackd::Verdict::Drop, "{:?}", d.reason);
        // The retransmitted SYN and the real handshake.
        f.c_nxt = isn;
        let d = f.client(&mut t, SYN, b"");
        assert_eq!(d.reason, Reason::Tracked);
        f.assert_steps(
            &mut t,
            &[
                (
                    Role::Responder,
                    SYN | ACK,
                    "SYN_SENT:LISTEN -> SYN_SENT:SYN_RECV",
                ),
                (
                    Role::Originator,
                    ACK,
                    "SYN_SENT:SYN_RECV -> ESTABLISHED:ESTABLISHED",
                ),
            ],
        );
    }
}

/// A "split handshake": the server sends a bare ACK, then its own SYN, as in
/// a simultaneous open. Both pass.
#[test]
fn split_handshake_passes_like_a_simultaneous_open() {
    let mut t = Harness::allow_all();
    let mut f = Flow::v4();
    f.client(&mut t, SYN, b"");
    let d = t.tcp(f.s, f.c, ACK, f.s_nxt, f.c_nxt, b"");
    assert_eq!(d.reason, Reason::ChallengeAck);
    let d = f.server(&mut t, SYN, b"");
    assert_eq!(
        (d.reason, show(&d)),
        (
            Reason::Tracked,
            "SYN_SENT:LISTEN -> SYN_RECV:SYN_RECV".into()
        )
    );
}

/// Linux 6.1 and later: a segment that starts past the receiver's advertised
/// right edge by no more than the receiver's largest window passes (window
/// probes, a shrinking window, TSO bursts), and the ACK of its data passes
/// too; further out it is dropped.
#[test]
fn a_segment_a_little_past_the_window_passes_and_so_does_its_ack() {
    let mut t = Harness::allow_all();
    let mut f = Flow::established(&mut t);
    // The server advertised 65535 bytes: the client fills them exactly, then
    // probes at the edge (inside: seq = right edge), then sends 100 bytes
    // starting one byte past it.
    f.client(&mut t, ACK | PSH, &vec![1; 40_000]);
    f.client(&mut t, ACK | PSH, &vec![2; 25_535]);
    assert_eq!(f.client(&mut t, ACK, &[3]).reason, Reason::Tracked);
    let d = f.client(&mut t, ACK | PSH, &[4; 100]);
    assert_eq!(
        (d.reason, show(&d)),
        (
            Reason::WindowOvershoot,
            "ESTABLISHED:ESTABLISHED -> ESTABLISHED:ESTABLISHED".into()
        )
    );
    // The server acknowledges all of it.
    let d = f.server(&mut t, ACK, b"");
    assert_eq!(d.reason, Reason::Tracked);
    // Past the edge by more than the largest window: dropped.
    let d = t.tcp(
        f.c,
        f.s,
        ACK | PSH,
        f.c_nxt.wrapping_add(65_535 + 65_536 + 1),
        f.s_nxt,
        b"x",
    );
    assert_eq!(d.reason, Reason::SeqAboveWindow);
}

// ---- Restarts: the table through a state file ------------------------------------

/// A fresh harness, and `f` through its handshake in it.
fn handshake(f: Flow) -> (Harness, Flow) {
    let mut t = Harness::allow_all();
    let f = f.open(&mut t);
    (t, f)
}

/// A connection saved by one engine and restored by another (a restart)
/// goes on, even though both ends kept sending while no engine was judging:
/// each side's first packet re-anchors its window; after that the window is
/// enforced again, and the teardown goes through its states as usual.
#[test]
fn a_restored_connection_goes_on_after_a_gap_and_is_judged_strictly_again() {
    for flow in [Flow::v4(), Flow::v6()] {
        let (mut old, mut f) = handshake(flow);
        f.client(&mut old, ACK | PSH, &[1; 500]);
        f.server(&mut old, ACK, b"");
        let file = old.engine.save_state(old.now(), true, 1_800_000_000);

        // The gap: 5000 bytes each way passed unjudged.
        f.c_nxt = f.c_nxt.wrapping_add(5000);
        f.s_nxt = f.s_nxt.wrapping_add(5000);

        // A fresh engine without the file knows nothing of the connection...
        let mut blank = Harness::allow_all();
        assert_eq!(
            f.client(&mut blank, ACK | PSH, b"x").reason,
            Reason::NoConnection
        );
        f.c_nxt = f.c_nxt.wrapping_sub(1);
        // ...one with it goes on.
        let mut new = Harness::allow_all();
        new.now_secs = 3; // a new process's clock
        let r = new
            .engine
            .restore_state(&file, new.now(), 1_800_000_000)
            .expect("the file loads");
        assert_eq!((r.restored, r.graceful), (1, true));
        let d = f.client(&mut new, ACK | PSH, &[2; 100]);
        assert_eq!(
            (d.reason, d.after.to_string()),
            (Reason::Tracked, "ESTABLISHED:ESTABLISHED".into())
        );
        assert_eq!(
            f.server(&mut new, ACK | PSH, &[3; 100]).reason,
            Reason::Tracked
        );
        assert_eq!(f.client(&mut new, ACK, b"").reason, Reason::Tracked);
        // Re-anchored: the window is enforced again.
        let d = new.tcp(
            f.c,
            f.s,
            ACK | PSH,
            f.c_nxt.wrapping_add(10_000_000),
            f.s_nxt,
            b"x",
        );
        assert_eq!(d.reason, Reason::SeqAboveWindow);
        let d = new.tcp(f.s, f.c, ACK, f.s_nxt, f.c_nxt.wrapping_add(1_000_000), b"");
        assert_eq!(d.reason, Reason::AckAboveSent);
        f.assert_steps(&mut new, &FOUR_WAY_FROM_CLIENT);
    }
}

/// Two restarts in a row: the table saved while a side is re-anchored and
/// not yet confirmed (provisional) loads again, and the connection goes on.
/// (The structure-aware fuzzer found the second restart starting with an
/// empty table: the provisional flag was written but refused on reading.)
#[test]
fn a_connection_survives_a_second_restart_soon_after_the_first() {
    for flow in [Flow::v4(), Flow::v6()] {
        let (old, mut f) = handshake(flow);
        let file = old.engine.save_state(old.now(), true, 1_800_000_000);
        let mut second = Harness::allow_all();
        second
            .engine
            .restore_state(&file, second.now(), 1_800_000_000)
            .expect("the first file loads");
        // The client's first packet re-anchors it: provisional.
        assert_eq!(f.client(&mut second, ACK, b"").reason, Reason::Tracked);
        let file = second.engine.save_state(second.now(), false, 1_800_000_010);
        let mut third = Harness::allow_all();
        let r = third
            .engine
            .restore_state(&file, third.now(), 1_800_000_010)
            .expect("a table with a provisional side loads");
        assert_eq!((r.restored, r.graceful), (1, false));
        assert_eq!(
            f.client(&mut third, ACK | PSH, &[1; 100]).reason,
            Reason::Tracked
        );
        assert_eq!(
            f.server(&mut third, ACK | PSH, &[2; 100]).reason,
            Reason::Tracked
        );
        f.assert_steps(&mut third, &FOUR_WAY_FROM_CLIENT);
    }
}

/// A RST gets no re-anchoring leniency: one far outside the stale window is
/// dropped, even as the side's first packet after the restart.
#[test]
fn a_restored_connection_gives_a_rst_no_leniency() {
    let (old, f) = handshake(Flow::v4());
    let file = old.engine.save_state(old.now(), true, 1_800_000_000);
    let mut new = Harness::allow_all();
    new.engine
        .restore_state(&file, new.now(), 1_800_000_000)
        .unwrap();
    let d = new.tcp(f.s, f.c, RST, f.s_nxt.wrapping_add(1 << 30), 0, b"");
    assert_eq!(d.reason, Reason::RstOutOfWindow);
}

/// After a restore, one forged packet may re-anchor a side (it is that
/// side's first), but it cannot then end the connection: until the peer
/// acknowledges within the window, that side's RST is exact only at what the
/// peer acknowledged, and its FIN moves no state. The real traffic still
/// passes.
#[test]
fn a_forged_first_packet_after_a_restore_cannot_end_the_connection() {
    let (mut old, mut f) = handshake(Flow::v4());
    let file = old.engine.save_state(old.now(), true, 1_800_000_000);
    let mut new = Harness::allow_all();
    new.engine
        .restore_state(&file, new.now(), 1_800_000_000)
        .unwrap();
    let far = (f.c_nxt.wrapping_add(1 << 30), f.s_nxt.wrapping_add(1 << 30));
    // The forged re-anchor passes (it is the client's first packet)...
    assert_eq!(
        new.tcp(f.c, f.s, ACK, far.0, far.1, b"").reason,
        Reason::Tracked
    );
    // ...but a forged RST or FIN at the forged position ends nothing.
    let d = new.tcp(f.c, f.s, RST, far.0, 0, b"");
    assert_eq!(
        d.after.to_string(),
        "ESTABLISHED:ESTABLISHED",
        "{:?}",
        d.reason
    );
    let d = new.tcp(f.c, f.s, FIN | ACK, far.0, far.1, b"");
    assert_eq!(
        d.after.to_string(),
        "ESTABLISHED:ESTABLISHED",
        "{:?}",
        d.reason
    );
    // The real endpoints go on.
    assert_eq!(
        f.server(&mut new, ACK | PSH, b"real").verdict(),
        conntrackd::Verdict::Accept
    );
    assert_eq!(
        f.client(&mut new, ACK, b"").verdict(),
        conntrackd::Verdict::Accept
    );
    let _ = &mut old;
}
