use super::*;
use crate::synproxy::cookie::{self, CookieKeys};
use crate::synproxy::testing::{checksums, sa, tcp};
use crate::wire::{parse, Framing};
use etherparse::TcpOptionElement as E;
use proptest::prelude::*;

const SYN: u8 = TcpFlags::SYN;
const ACK: u8 = TcpFlags::ACK;

/// Linux's SYN options: MSS, SACK-permitted folded into the timestamp's
/// padding, NOP and window scale.
fn linux_syn_options(tsval: u32) -> Vec<u8> {
    let mut o = vec![
        OPT_MSS,
        4,
        0x05,
        0xb4,
        OPT_SACK_PERMITTED,
        2,
        OPT_TIMESTAMP,
        10,
    ];
    o.extend_from_slice(&tsval.to_be_bytes());
    o.extend_from_slice(&0u32.to_be_bytes());
    o.extend_from_slice(&[OPT_NOP, OPT_WSCALE, 3, 7]);
    o
}

#[test]
fn a_linux_syn_s_options_are_read() {
    let o = parse_options(&linux_syn_options(0xdead_beef));
    assert_eq!(
        o,
        TcpOptions {
            mss: Some(1460),
            window_scale: Some(7),
            sack_permitted: true,
            timestamps: Some(Timestamps {
                value: 0xdead_beef,
                echo: 0
            }),
        }
    );
}

#[test]
fn malformed_options_end_the_list_or_are_skipped() {
    // A length below 2 or past the end: nothing after it can be delimited.
    assert_eq!(
        parse_options(&[OPT_MSS, 0, 0x05, 0xb4]),
        TcpOptions::default()
    );
    assert_eq!(
        parse_options(&[OPT_MSS, 1, 0x05, 0xb4]),
        TcpOptions::default()
    );
    assert_eq!(
        parse_options(&[OPT_MSS, 5, 0x05, 0xb4]),
        TcpOptions::default()
    );
    assert_eq!(parse_options(&[OPT_MSS]), TcpOptions::default());
    // A wrong length for the kind: skipped, the rest read.
    let o = parse_options(&[OPT_MSS, 3, 0x05, OPT_WSCALE, 3, 9, OPT_END, OPT_MSS]);
    assert_eq!(o.mss, None);
    assert_eq!(o.window_scale, Some(9));
    // After END nothing counts.
    assert_eq!(
        parse_options(&[OPT_END, OPT_MSS, 4, 0x05, 0xb4]),
        TcpOptions::default()
    );
    // A shift above 14 is 14 (RFC 7323 2.3).
    assert_eq!(parse_options(&[OPT_WSCALE, 3, 200]).window_scale, Some(14));
    // Unknown kinds are stepped over.
    let o = parse_options(&[30, 4, 1, 2, OPT_SACK_PERMITTED, 2]);
    assert!(o.sack_permitted);
}

#[test]
fn a_segment_is_read_from_ipv4_and_ipv6_packets() {
    for (c, s) in [
        ("10.0.0.2:40000", "203.0.113.5:80"),
        ("[2001:db8:1::2]:40000", "[2001:db8:2::5]:443"),
    ] {
        let (c, s) = (sa(c), sa(s));
        let options = [
            E::MaximumSegmentSize(1400),
            E::SelectiveAcknowledgementPermitted,
            E::Timestamp(77, 0),
            E::Noop,
            E::WindowScale(8),
        ];
        let flags = SYN | TcpFlags::ECE | TcpFlags::CWR;
        let p = tcp(c, s, flags, 1000, 0, 64240, &options, b"");
        let v = read_segment(&p).unwrap();
        assert_eq!((v.src, v.dst), (c.ip(), s.ip()));
        assert_eq!((v.src_port, v.dst_port), (c.port(), s.port()));
        assert_eq!((v.seq, v.window, v.payload_len), (SeqNum(1000), 64240, 0));
        assert_eq!(v.options.mss, Some(1400));
        assert_eq!(v.options.window_scale, Some(8));
        assert!(v.options.sack_permitted && v.ecn_setup());
        assert_eq!(v.options.timestamps.map(|t| t.value), Some(77));
        assert_eq!(v.tuple_from_client().server_port, s.port());
        let data = tcp(c, s, ACK, 1001, 5, 502, &[], b"hello");
        assert_eq!(read_segment(&data).unwrap().payload_len, 5);
    }
}

#[test]
fn what_is_not_a_whole_tcp_header_is_an_error() {
    let p = tcp(
        sa("10.0.0.2:1"),
        sa("10.0.0.3:2"),
        SYN,
        1,
        0,
        1,
        &[E::Noop, E::Noop, E::Noop, E::Noop],
        b"",
    );
    assert_eq!(read_segment(&p[..30]), Err(PacketError::Truncated));
    let mut short_ip = p.clone();
    short_ip[2..4].copy_from_slice(&30u16.to_be_bytes());
    assert_eq!(read_segment(&short_ip), Err(PacketError::Malformed));
    let mut fragment = p.clone();
    fragment[6] |= 0x20;
    assert_eq!(read_segment(&fragment), Err(PacketError::Fragment));
    let udp = crate::wire::build::udp(sa("10.0.0.2:1"), sa("10.0.0.3:2"), b"x");
    assert_eq!(read_segment(&udp), Err(PacketError::NotTcp));
    let mut offset = p.clone();
    offset[20 + 12] = 0x40; // data offset 16 bytes
    assert_eq!(read_segment(&offset), Err(PacketError::Malformed));
}

#[test]
fn a_small_buffer_and_mixed_families_are_errors() {
    let s = Segment {
        src: sa("10.0.0.2:1").ip(),
        dst: sa("[::1]:1").ip(),
        src_port: 1,
        dst_port: 2,
        seq: SeqNum(1),
        ack: SeqNum(0),
        flags: TcpFlags(SYN),
        window: 0,
        options: TcpOptions::default(),
    };
    let mut out = [0u8; SEGMENT_MAX];
    assert_eq!(s.write(&mut out), Err(BuildError::MixedFamilies));
    let s = Segment {
        dst: sa("10.0.0.3:1").ip(),
        ..s
    };
    assert_eq!(s.write(&mut out[..39]), Err(BuildError::BufferTooSmall));
    assert_eq!(s.write(&mut out[..40]), Ok(40));
}

const SERVER: LearnedOptions = LearnedOptions {
    mss: 1400,
    window_scale: Some(9),
    sack_permitted: true,
    timestamps: true,
    ecn: false,
};

/// Checks a packet the proxy wrote: etherparse reads it, its checksums are
/// what etherparse computes, and the engine's own parser (which verifies
/// checksums) accepts it.
fn assert_well_formed(p: &[u8]) {
    let c = checksums(p);
    assert!(
        c.correct(),
        "tcp {:#06x} vs {:#06x}, ip {:?} vs {:?}",
        c.tcp_stored,
        c.tcp_computed,
        c.ip_stored,
        c.ip_computed
    );
    parse(p, Framing::default()).expect("the engine's parser accepts it");
}

/// The whole opening, as the daemon will drive it: client SYN, cookie
/// SYN+ACK, client ACK, server SYN, server SYN+ACK, ACK to the server,
/// window update to the client.
#[test]
fn the_four_packets_of_a_proxied_handshake() {
    let keys = CookieKeys::new([0x42; 32]);
    let now = crate::time::Timestamp::from_secs(1_000_000);
    for (c, s) in [
        ("10.0.0.2:40000", "203.0.113.5:80"),
        ("[2001:db8:1::2]:40000", "[2001:db8:2::5]:443"),
    ] {
        let (c, s) = (sa(c), sa(s));
        let client_isn = 0xffff_fff0u32; // wraps during the connection
        let syn_options = [
            E::MaximumSegmentSize(1460),
            E::SelectiveAcknowledgementPermitted,
            E::Timestamp(5000, 0),
            E::Noop,
            E::WindowScale(7),
        ];
        let syn = tcp(c, s, SYN, client_isn, 0, 64240, &syn_options, b"");
        let syn = read_segment(&syn).unwrap();

        // 1. The cookie SYN+ACK.
        let made = cookie::make(
            &keys,
            &syn.tuple_from_client(),
            syn.seq,
            syn.options.mss,
            now,
        );
        let answer = Segment::cookie_syn_ack(&syn, made.isn, &SERVER, now);
        let mut buf = [0u8; SEGMENT_MAX];
        let n = answer.write(&mut buf).unwrap();
        assert_well_formed(&buf[..n]);
        let synack = read_segment(&buf[..n]).unwrap();
        assert_eq!((synack.src, synack.dst), (s.ip(), c.ip()));
        assert_eq!((synack.src_port, synack.dst_port), (s.port(), c.port()));
        assert_eq!((synack.seq, synack.ack), (made.isn, SeqNum(client_isn) + 1));
        assert_eq!(synack.flags, TcpFlags(SYN | ACK));
        assert_eq!(synack.window, 0);
        assert_eq!(synack.options.mss, Some(1400));
        assert_eq!(synack.options.window_scale, Some(9));
        assert!(synack.options.sack_permitted);
        let told = synack.options.timestamps.unwrap();
        assert_eq!(told.echo, 5000);

        // The client's ACK, echoing the TSval; window 502 << 7.
        let ack = tcp(
            c,
            s,
            ACK,
            client_isn.wrapping_add(1),
            made.isn.0.wrapping_add(1),
            502,
            &[E::Noop, E::Noop, E::Timestamp(5100, told.value)],
            b"",
        );
        let ack = read_segment(&ack).unwrap();
        let checked =
            cookie::check(&keys, &ack.tuple_from_client(), ack.ack, ack.seq, now).unwrap();
        assert_eq!(checked.mss, if c.is_ipv6() { 1440 } else { 1460 });

        // 2. The SYN to the server: the client's ISN and options.
        let n = Segment::server_syn(&ack, &checked).write(&mut buf).unwrap();
        assert_well_formed(&buf[..n]);
        let to_server = read_segment(&buf[..n]).unwrap();
        assert_eq!((to_server.src, to_server.dst), (c.ip(), s.ip()));
        assert_eq!(to_server.seq, SeqNum(client_isn));
        assert_eq!(to_server.flags, TcpFlags(SYN));
        assert_eq!(to_server.window, 502 << 7, "a SYN's window is unscaled");
        assert_eq!(
            to_server.options,
            TcpOptions {
                mss: Some(checked.mss),
                window_scale: Some(7),
                sack_permitted: true,
                timestamps: Some(Timestamps {
                    value: 5100,
                    echo: 0
                }),
            }
        );

        // The server answers with its own ISN, scale 6 (not the 9 told) and clock.
        let server_isn = 0x7000_0000u32;
        let server_synack = tcp(
            s,
            c,
            SYN | ACK,
            server_isn,
            client_isn.wrapping_add(1),
            65160,
            &[
                E::MaximumSegmentSize(1460),
                E::SelectiveAcknowledgementPermitted,
                E::Timestamp(90_000, 5100),
                E::Noop,
                E::WindowScale(6),
            ],
            b"",
        );
        let server_synack = read_segment(&server_synack).unwrap();
        let learned = LearnedOptions::from_syn_ack(&server_synack);
        assert_eq!(learned.window_scale, Some(6));
        let t = Translation::for_handshake(&checked, &ack, &server_synack);
        assert!(t.rescales());

        // 3. The ACK to the server.
        let n = Segment::server_ack(&ack, &server_synack, &t)
            .write(&mut buf)
            .unwrap();
        assert_well_formed(&buf[..n]);
        let v = read_segment(&buf[..n]).unwrap();
        assert_eq!((v.src, v.dst, v.src_port), (c.ip(), s.ip(), c.port()));
        assert_eq!((v.seq, v.ack), (ack.seq, SeqNum(server_isn) + 1));
        assert_eq!(v.flags, TcpFlags(ACK));
        assert_eq!(v.window, 502, "the server applies the client's own scale");
        assert_eq!(
            v.options.timestamps,
            Some(Timestamps {
                value: 5100,
                echo: 90_000
            })
        );

        // 4. The window update to the client, in its sequence space and clock.
        let n = Segment::client_window_update(&ack, &server_synack, &t)
            .write(&mut buf)
            .unwrap();
        assert_well_formed(&buf[..n]);
        let v = read_segment(&buf[..n]).unwrap();
        assert_eq!((v.src, v.dst, v.src_port), (s.ip(), c.ip(), s.port()));
        assert_eq!((v.seq, v.ack), (made.isn + 1, ack.seq));
        assert_eq!(v.window, (65160u32 >> 9) as u16, "in the scale told");
        assert_eq!(
            v.options.timestamps,
            Some(Timestamps {
                value: told.value,
                echo: 5100
            }),
            "the server's clock, continuing from the cookie's TSval"
        );
    }
}

#[test]
fn without_a_client_timestamp_only_the_mss_is_offered() {
    let (c, s) = (sa("10.0.0.2:40000"), sa("203.0.113.5:80"));
    let options = [
        E::MaximumSegmentSize(1460),
        E::SelectiveAcknowledgementPermitted,
        E::Noop,
        E::WindowScale(7),
    ];
    let flags = SYN | TcpFlags::ECE | TcpFlags::CWR;
    let syn = read_segment(&tcp(c, s, flags, 1, 0, 64240, &options, b"")).unwrap();
    let now = crate::time::Timestamp::from_secs(60);
    let answer = Segment::cookie_syn_ack(&syn, SeqNum(99), &SERVER, now);
    assert_eq!(
        answer.options,
        TcpOptions {
            mss: Some(1400),
            ..TcpOptions::default()
        }
    );
    assert_eq!(answer.flags, TcpFlags(SYN | ACK), "no ECN either");
    // Data in the SYN (TCP Fast Open) is not acknowledged.
    let tfo = read_segment(&tcp(c, s, SYN, 1, 0, 64240, &options, b"early data")).unwrap();
    let answer = Segment::cookie_syn_ack(&tfo, SeqNum(99), &SERVER, now);
    assert_eq!(answer.ack, SeqNum(2));
    // With a timestamp, ECN is agreed when the server does it.
    let with_ts = [E::Timestamp(1, 0)];
    let syn = read_segment(&tcp(c, s, flags, 1, 0, 64240, &with_ts, b"")).unwrap();
    let ecn_server = LearnedOptions {
        ecn: true,
        ..SERVER
    };
    let answer = Segment::cookie_syn_ack(&syn, SeqNum(99), &ecn_server, now);
    assert_eq!(answer.flags, TcpFlags(SYN | ACK | TcpFlags::ECE));
    assert_eq!(answer.options.window_scale, None, "the client sent none");
    let carried = cookie::decode_timestamp(answer.options.timestamps.map(|t| t.value));
    assert!(carried.ecn && !carried.sack_permitted);
    assert_eq!(carried.proxy_window_scale, None);
}

fn arb_options() -> impl Strategy<Value = TcpOptions> {
    (
        proptest::option::of(any::<u16>()),
        proptest::option::of(0u8..=14),
        any::<bool>(),
        proptest::option::of((any::<u32>(), any::<u32>())),
    )
        .prop_map(|(mss, window_scale, sack_permitted, ts)| TcpOptions {
            mss,
            window_scale,
            sack_permitted,
            timestamps: ts.map(|(value, echo)| Timestamps { value, echo }),
        })
}

proptest! {
    #[test]
    fn any_option_bytes_are_read_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..44)) {
        let o = parse_options(&bytes);
        prop_assert!(o.window_scale.map_or(true, |s| s <= 14));
    }

    #[test]
    fn any_packet_bytes_are_read_without_panicking(
        bytes in proptest::collection::vec(any::<u8>(), 0..100),
        version in prop_oneof![Just(0x45u8), Just(0x60u8), any::<u8>()],
        at in 0usize..100, byte: u8,
    ) {
        let mut bytes = bytes;
        if let Some(b) = bytes.first_mut() {
            *b = version;
        }
        let _ = read_segment(&bytes);
        // A valid packet with one byte changed.
        let mut p = tcp(sa("10.0.0.2:1"), sa("10.0.0.3:2"), SYN, 1, 0, 1, &[E::Timestamp(1, 2)], b"ab");
        let i = at % p.len();
        p[i] = byte;
        let _ = read_segment(&p);
        let _ = read_segment(&p[..at.min(p.len())]);
    }

    #[test]
    fn written_segments_read_back_and_pass_etherparse_and_the_engine(
        six: bool, a: u128, b: u128, sp: u16, dp: u16, seq: u32, ack: u32,
        flags in prop_oneof![Just(SYN), Just(SYN | ACK), Just(ACK), Just(SYN | TcpFlags::ECE | TcpFlags::CWR)],
        window: u16, options in arb_options(),
    ) {
        let (src, dst) = if six {
            (IpAddr::from(a.to_be_bytes()), IpAddr::from(b.to_be_bytes()))
        } else {
            (IpAddr::from((a as u32).to_be_bytes()), IpAddr::from((b as u32).to_be_bytes()))
        };
        let s = Segment {
            src, dst, src_port: sp, dst_port: dp, seq: SeqNum(seq), ack: SeqNum(ack),
            flags: TcpFlags(flags), window, options,
        };
        let mut buf = [0u8; SEGMENT_MAX];
        let n = s.write(&mut buf).unwrap();
        let c = checksums(&buf[..n]);
        prop_assert!(c.correct());
        let v = read_segment(&buf[..n]).unwrap();
        prop_assert_eq!((v.src, v.dst, v.src_port, v.dst_port), (src, dst, sp, dp));
        prop_assert_eq!((v.seq, v.ack, v.flags, v.window), (SeqNum(seq), SeqNum(ack), TcpFlags(flags), window));
        prop_assert_eq!(v.options, options);
        prop_assert_eq!(v.payload_len, 0);
        // etherparse reads the same options.
        let sliced = etherparse::SlicedPacket::from_ip(&buf[..n]).unwrap();
        let Some(etherparse::TransportSlice::Tcp(t)) = sliced.transport else { panic!() };
        let mut theirs = TcpOptions::default();
        for o in t.options_iterator() {
            match o.unwrap() {
                E::MaximumSegmentSize(m) => theirs.mss = Some(m),
                E::WindowScale(w) => theirs.window_scale = Some(w),
                E::SelectiveAcknowledgementPermitted => theirs.sack_permitted = true,
                E::Timestamp(value, echo) => theirs.timestamps = Some(Timestamps { value, echo }),
                _ => {}
            }
        }
        prop_assert_eq!(theirs, options);
        // The engine's parser, which verifies checksums, accepts it.
        let parsed = parse(&buf[..n], Framing::default());
        prop_assert!(parsed.is_ok(), "{:?}", parsed);
    }
}
