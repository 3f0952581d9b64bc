use super::*;
use crate::synproxy::options::{read_segment, Timestamps};
use crate::synproxy::testing::{checksums, sa, tcp};
use etherparse::TcpOptionElement as E;
use proptest::prelude::*;
use std::net::SocketAddr;

const ACK: u8 = 0x10;
const PSH: u8 = 0x08;

fn scales(client: u8, told: u8, server: u8) -> WindowScales {
    WindowScales {
        client: Some(client),
        told_client: Some(told),
        server: Some(server),
    }
}

/// Cookie 0xfffffff0, server ISN 0x100: the delta wraps.
fn wrapping() -> Translation {
    Translation::new(
        SeqNum(0xffff_fff0),
        SeqNum(0x100),
        Some((1_000, 4_000_000_000)),
        scales(7, 7, 7),
    )
}

fn client() -> SocketAddr {
    sa("10.0.0.2:40000")
}

fn server() -> SocketAddr {
    sa("203.0.113.5:80")
}

#[test]
fn a_server_packet_gets_the_client_s_sequence_numbers_and_clock() {
    let t = wrapping();
    let mut p = tcp(
        server(),
        client(),
        ACK | PSH,
        0x1000,
        777,
        1000,
        &[E::Noop, E::Noop, E::Timestamp(4_000_000_100, 5_000)],
        b"data from the server",
    );
    assert_eq!(t.server_to_client(&mut p), Ok(true));
    assert!(checksums(&p).correct());
    let v = read_segment(&p).unwrap();
    assert_eq!(v.seq, SeqNum(0x1000u32.wrapping_add(0xffff_fff0 - 0x100)));
    assert_eq!(v.ack, SeqNum(777), "the client's numbers are its own");
    assert_eq!(v.window, 1000, "same scale on both sides");
    assert_eq!(
        v.options.timestamps,
        Some(Timestamps {
            value: 1_100,
            echo: 5_000
        })
    );
}

#[test]
fn a_client_packet_gets_the_server_s_ack_sack_and_echo() {
    let t = wrapping();
    let delta = 0xffff_fff0u32.wrapping_sub(0x100);
    let sack = E::SelectiveAcknowledgement((10, 20), [Some((0xffff_fff8, 8)), None, None]);
    let mut p = tcp(
        client(),
        server(),
        ACK,
        555,
        5,
        300,
        &[
            E::Noop,
            E::Noop,
            E::Timestamp(6_000, 1_100),
            E::Noop,
            E::Noop,
            sack,
        ],
        b"",
    );
    assert_eq!(t.client_to_server(&mut p), Ok(true));
    assert!(checksums(&p).correct());
    let v = read_segment(&p).unwrap();
    assert_eq!(
        (v.seq, v.ack),
        (SeqNum(555), SeqNum(5u32.wrapping_sub(delta)))
    );
    assert_eq!(
        v.options.timestamps,
        Some(Timestamps {
            value: 6_000,
            echo: 4_000_000_100
        })
    );
    let sliced = etherparse::SlicedPacket::from_ip(&p).unwrap();
    let Some(etherparse::TransportSlice::Tcp(tcp)) = sliced.transport else {
        panic!()
    };
    let blocks: Vec<_> = tcp
        .options_iterator()
        .filter_map(|o| match o.unwrap() {
            E::SelectiveAcknowledgement(first, rest) => Some((first, rest)),
            _ => None,
        })
        .collect();
    let d = |x: u32| x.wrapping_sub(delta);
    assert_eq!(
        blocks,
        [((d(10), d(20)), [Some((d(0xffff_fff8), d(8))), None, None])]
    );
}

#[test]
fn nothing_to_change_leaves_the_packet_as_it_was() {
    let t = Translation::new(SeqNum(5), SeqNum(5), Some((9, 9)), scales(7, 7, 7));
    let p = tcp(
        client(),
        server(),
        ACK,
        1,
        2,
        3,
        &[E::Timestamp(1, 2)],
        b"x",
    );
    let mut q = p.clone();
    assert_eq!(t.client_to_server(&mut q), Ok(false));
    assert_eq!(t.server_to_client(&mut q), Ok(false));
    assert_eq!(p, q);
}

#[test]
fn a_timestamp_at_an_odd_offset_is_summed_right() {
    // One NOP before the timestamp: its values straddle checksum words.
    let t = wrapping();
    let options = [E::Noop, E::Timestamp(0x1234_5678, 0x9abc_def0), E::Noop];
    for (from, to) in [(server(), client()), (client(), server())] {
        let mut p = tcp(
            from,
            to,
            ACK,
            0xdead_beef,
            0xfeed_face,
            77,
            &options,
            b"odd",
        );
        let at = read_segment(&p).unwrap();
        assert!(at.options.timestamps.is_some());
        if from == server() {
            t.server_to_client(&mut p).unwrap();
        } else {
            t.client_to_server(&mut p).unwrap();
        }
        assert!(checksums(&p).correct());
    }
}

#[test]
fn windows_are_rescaled_between_what_the_client_was_told_and_what_the_server_does() {
    // Told 9, the server scales by 6: its windows shrink by 2^3 for the client.
    let t = Translation::new(SeqNum(0), SeqNum(0), None, scales(7, 9, 6));
    assert_eq!(t.window_to_client(8000), 1000);
    assert_eq!(t.window_to_client(7), 0, "below one unit of the client's");
    assert_eq!(
        t.window_to_server(502),
        502,
        "the client's scale reached the server"
    );
    // Told 2, the server scales by 6: the client's view saturates.
    let t = Translation::new(SeqNum(0), SeqNum(0), None, scales(7, 2, 6));
    assert_eq!(t.window_to_client(100), 1600);
    assert_eq!(t.window_to_client(5000), 0xffff);
    // The server does not scale (no option in its SYN+ACK): the client does,
    // so its windows are unscaled for the server, and the server's scaled
    // for the client.
    let t = Translation::new(
        SeqNum(0),
        SeqNum(0),
        None,
        WindowScales {
            client: Some(7),
            told_client: Some(7),
            server: None,
        },
    );
    assert_eq!(t.window_to_server(100), 12800);
    assert_eq!(t.window_to_server(1000), 0xffff);
    assert_eq!(t.window_to_client(12800), 100);
    // The client does not scale: nobody does.
    let t = Translation::new(
        SeqNum(0),
        SeqNum(0),
        None,
        WindowScales {
            client: None,
            told_client: None,
            server: Some(7),
        },
    );
    assert!(!t.rescales());
    assert_eq!(t.window_to_client(1234), 1234);
    // A SYN+ACK's window is unscaled.
    let t = Translation::new(SeqNum(0), SeqNum(0), None, scales(7, 9, 6));
    assert_eq!(t.unscaled_window_to_client(65535), 127);
}

#[test]
fn a_rescaled_window_is_written_and_summed() {
    let t = Translation::new(SeqNum(0), SeqNum(0), None, scales(7, 9, 6));
    let mut p = tcp(server(), client(), ACK, 1, 2, 8000, &[], b"");
    assert_eq!(t.server_to_client(&mut p), Ok(true));
    assert!(checksums(&p).correct());
    assert_eq!(read_segment(&p).unwrap().window, 1000);
    // A SYN's window is not scaled: left alone.
    let mut syn = tcp(server(), client(), 0x12, 1, 2, 8000, &[], b"");
    assert_eq!(t.server_to_client(&mut syn), Ok(false));
}

#[test]
fn a_checksum_left_to_offload_is_left_alone_and_finishes_right() {
    use crate::wire::offloaded_checksum;
    let t = wrapping();
    for (from, to, direction) in [
        (server(), client(), Direction::ServerToClient),
        (
            sa("[2001:db8::1]:443"),
            sa("[2001:db8::2]:50000"),
            Direction::ClientToServer,
        ),
    ] {
        let mut p = tcp(from, to, ACK, 9, 10, 11, &[E::Timestamp(1, 2)], b"payload");
        // What a sending host with offload leaves: the pseudo-header sum.
        let l4 = if from.is_ipv4() { 20 } else { 40 };
        let len = p.len() - l4;
        let seed = crate::synproxy::packet::fold(crate::synproxy::packet::pseudo_header_sum(
            from.ip(),
            to.ip(),
            len,
        ));
        p[l4 + 16..l4 + 18].copy_from_slice(&seed.to_be_bytes());
        assert!(offloaded_checksum(&p, None));
        assert_eq!(
            t.rewrite(&mut p, direction, Checksums::NotComputed),
            Ok(true)
        );
        assert!(offloaded_checksum(&p, None), "still the seed, for the NIC");
        // The NIC's part: the checksum of the rewritten bytes.
        p[l4 + 16..l4 + 18].copy_from_slice(&[0, 0]);
        let c = checksums(&p);
        p[l4 + 16..l4 + 18].copy_from_slice(&c.tcp_computed.to_be_bytes());
        assert!(checksums(&p).correct());
    }
}

#[test]
fn malformed_packets_are_refused_and_left_untouched() {
    let t = wrapping();
    let good = tcp(
        server(),
        client(),
        ACK,
        1,
        2,
        3,
        &[E::Timestamp(1, 2)],
        b"abc",
    );
    let mut cut = good[..30].to_vec();
    let before = cut.clone();
    assert_eq!(t.server_to_client(&mut cut), Err(PacketError::Truncated));
    assert_eq!(cut, before);
    let mut udp = crate::wire::build::udp(server(), client(), b"x");
    let before = udp.clone();
    assert_eq!(t.server_to_client(&mut udp), Err(PacketError::NotTcp));
    assert_eq!(udp, before);
    let mut fragment = good.clone();
    fragment[7] = 1;
    let before = fragment.clone();
    assert_eq!(
        t.client_to_server(&mut fragment),
        Err(PacketError::Fragment)
    );
    assert_eq!(fragment, before);
    assert_eq!(t.client_to_server(&mut []), Err(PacketError::Truncated));
}

#[test]
fn the_state_file_bytes_round_trip_and_refuse_what_is_not_theirs() {
    let t = Translation::new(
        SeqNum(0x8000_0001),
        SeqNum(2),
        Some((3, 0xffff_fffe)),
        scales(14, 3, 0),
    );
    let b = t.to_bytes();
    assert_eq!(b[0], 1, "version");
    assert_eq!(Translation::from_bytes(&b), Some(t));
    let mut other_version = b;
    other_version[0] = 2;
    assert_eq!(Translation::from_bytes(&other_version), None);
    // Handed to the kernel: the version byte's high bit, kept through the file.
    let handed = t.in_kernel(true);
    assert_eq!(handed.to_bytes()[0], 0x81);
    assert_eq!(Translation::from_bytes(&handed.to_bytes()), Some(handed));
    assert!(Translation::from_bytes(&handed.to_bytes()).is_some_and(|h| h.by_kernel()));
    let (_, closing) = handed.rewritten_here(0x11); // FIN+ACK
    assert_eq!(closing.to_bytes()[0], 0xc1);
    assert_eq!(Translation::from_bytes(&closing.to_bytes()), Some(closing));
    // The teardown flag means nothing without the kernel's: refused.
    let mut stray = b;
    stray[0] = 0x41;
    assert_eq!(Translation::from_bytes(&stray), None);
    let mut big_shift = b;
    big_shift[10] = 15;
    assert_eq!(Translation::from_bytes(&big_shift), None);
    assert_eq!(Translation::from_bytes(&b[..12]), None);
    assert_eq!(
        Translation::from_bytes(&[b.as_slice(), &[0]].concat()),
        None
    );
}

#[test]
fn once_in_the_kernel_only_plain_packets_before_the_teardown_are_rewritten_here() {
    let t = Translation::new(SeqNum(1), SeqNum(2), None, scales(7, 7, 7));
    // Not handed off: every packet.
    assert_eq!(t.rewritten_here(0x11), (true, t));
    let k = t.in_kernel(true);
    // Plain ones: queued before the hand-over, or invalid to the kernel.
    assert_eq!(k.rewritten_here(0x10), (true, k));
    assert_eq!(k.rewritten_here(0x18), (true, k));
    // A SYN (refused anyway on an open connection) changes nothing.
    assert_eq!(k.rewritten_here(0x02), (true, k));
    // FIN, RST: the kernel's; and everything after.
    for flags in [0x11, 0x01, 0x04, 0x14] {
        let (here, after) = k.rewritten_here(flags);
        assert!(!here, "{flags:#x}");
        assert_eq!(after.rewritten_here(0x10), (false, after));
    }
    // Back here (the kernel refused): every packet again.
    let (_, after) = k.rewritten_here(0x11);
    assert!(after.in_kernel(false).rewritten_here(0x10).0);
}

/// A packet of either direction and family, with any numbers, any payload,
/// and a timestamp and SACK blocks or not (at an odd offset or not).
#[derive(Debug, Clone)]
struct Case {
    from: SocketAddr,
    to: SocketAddr,
    flags: u8,
    seq: u32,
    ack: u32,
    window: u16,
    ts: Option<(u32, u32)>,
    sack: Vec<(u32, u32)>,
    odd: bool,
    payload: Vec<u8>,
}

impl Case {
    fn packet(&self) -> Vec<u8> {
        let mut options = Vec::new();
        if self.odd {
            options.push(E::Noop);
        }
        if let Some((v, e)) = self.ts {
            options.push(E::Timestamp(v, e));
        }
        if let Some((&first, rest)) = self.sack.split_first() {
            let mut more = [None; 3];
            for (m, r) in more.iter_mut().zip(rest) {
                *m = Some(*r);
            }
            options.push(E::SelectiveAcknowledgement(first, more));
        }
        tcp(
            self.from,
            self.to,
            self.flags,
            self.seq,
            self.ack,
            self.window,
            &options,
            &self.payload,
        )
    }
}

fn arb_case() -> impl Strategy<Value = Case> {
    (
        any::<bool>(),
        any::<(u32, u32, u128, u128, u16, u16)>(),
        prop_oneof![
            Just(ACK),
            Just(ACK | PSH),
            Just(0x11),
            Just(0x04),
            Just(0x14)
        ],
        any::<(u32, u32, u16)>(),
        proptest::option::of(any::<(u32, u32)>()),
        proptest::collection::vec(any::<(u32, u32)>(), 0..=3),
        any::<bool>(),
        proptest::collection::vec(any::<u8>(), 0..64),
    )
        .prop_map(
            |(six, (a4, b4, a6, b6, pa, pb), flags, (seq, ack, window), ts, sack, odd, payload)| {
                let (from, to) = if six {
                    (
                        SocketAddr::new(std::net::IpAddr::from(a6.to_be_bytes()), pa),
                        SocketAddr::new(std::net::IpAddr::from(b6.to_be_bytes()), pb),
                    )
                } else {
                    (
                        SocketAddr::new(std::net::IpAddr::from(a4.to_be_bytes()), pa),
                        SocketAddr::new(std::net::IpAddr::from(b4.to_be_bytes()), pb),
                    )
                };
                // The options must fit in 40 bytes: 1 + 10 + (2 + 8n) <= 40.
                let sack = if ts.is_some() {
                    sack.into_iter().take(2).collect()
                } else {
                    sack
                };
                Case {
                    from,
                    to,
                    flags,
                    seq,
                    ack,
                    window,
                    ts,
                    sack,
                    odd,
                    payload,
                }
            },
        )
}

/// Deltas anywhere, and often near 0 and 2^32, where the arithmetic wraps.
fn arb_delta() -> impl Strategy<Value = u32> {
    prop_oneof![
        any::<u32>(),
        (0u32..1024).prop_map(|d| d.wrapping_neg()),
        0u32..1024,
        Just(1 << 31),
    ]
}

proptest! {
    #[test]
    fn translating_and_back_is_the_identity_across_wraparound(
        case in arb_case(), seq_delta in arb_delta(), ts_delta in arb_delta(), shift in 0u8..=14,
    ) {
        let t = Translation::new(
            SeqNum(seq_delta),
            SeqNum(0),
            Some((ts_delta, 0)),
            scales(shift, shift, shift),
        );
        let original = case.packet();
        for to_client in [true, false] {
            let mut p = original.clone();
            let changed = if to_client { t.server_to_client(&mut p) } else { t.client_to_server(&mut p) };
            prop_assert!(changed.is_ok());
            // The incremental checksum is the one a full computation gives.
            let c = checksums(&p);
            prop_assert_eq!(c.tcp_stored, c.tcp_computed);
            prop_assert_eq!(changed.unwrap(), p != original);
            let back = t.reversed();
            let r = if to_client { back.server_to_client(&mut p) } else { back.client_to_server(&mut p) };
            prop_assert!(r.is_ok());
            prop_assert_eq!(&p, &original);
        }
    }

    #[test]
    fn rescaled_windows_keep_the_checksum_and_follow_the_formula(
        case in arb_case(), seq_delta in arb_delta(),
        client in 0u8..=14, told in 0u8..=14, server in 0u8..=14,
    ) {
        let t = Translation::new(SeqNum(seq_delta), SeqNum(0), None, scales(client, told, server));
        let mut p = case.packet();
        t.server_to_client(&mut p).unwrap();
        let c = checksums(&p);
        prop_assert_eq!(c.tcp_stored, c.tcp_computed);
        let expected = ((case.window as u64) << server >> told).min(0xffff) as u16;
        prop_assert_eq!(read_segment(&p).unwrap().window, expected);
        // From a smaller scale to a larger one and back, only the cut low bits are lost.
        if told >= server {
            let mut q = p.clone();
            t.reversed().server_to_client(&mut q).unwrap();
            let w = read_segment(&q).unwrap().window;
            prop_assert_eq!(w as u64, ((case.window as u64) >> (told - server)) << (told - server));
        }
    }

    #[test]
    fn any_bytes_are_refused_or_translated_without_panicking(
        case in arb_case(), at in 0usize..200, byte: u8, cut in 0usize..200,
    ) {
        let t = wrapping();
        let mut p = case.packet();
        let i = at % p.len();
        p[i] = byte;
        p.truncate(cut.max(1).min(p.len()));
        let before = p.clone();
        if t.server_to_client(&mut p).is_err() {
            prop_assert_eq!(&p, &before);
        }
        let before = p.clone();
        if t.client_to_server(&mut p).is_err() {
            prop_assert_eq!(&p, &before);
        }
    }

    #[test]
    fn the_state_file_bytes_round_trip(
        a: u32, b: u32, ts in proptest::option::of(any::<(u32, u32)>()),
        client in proptest::option::of(0u8..=20), told in proptest::option::of(0u8..=20),
        server in proptest::option::of(0u8..=20),
    ) {
        let t = Translation::new(SeqNum(a), SeqNum(b), ts, WindowScales { client, told_client: told, server });
        prop_assert_eq!(Translation::from_bytes(&t.to_bytes()), Some(t));
    }
}

#[test]
fn a_partial_checksum_is_finished_afresh() {
    for (c, s) in [
        (client(), server()),
        (sa("[2001:db8:1::2]:40000"), sa("[2001:db8:2::2]:80")),
    ] {
        let mut p = crate::wire::build::tcp(c, s)
            .flags(ACK | PSH)
            .seq(7)
            .ack(9)
            .payload(&[5; 301])
            .build();
        let good = p.clone();
        // What offload leaves: only the pseudo-header's part, or anything.
        let at = if c.is_ipv4() { 20 + 16 } else { 40 + 16 };
        p[at..at + 2].copy_from_slice(&[0x12, 0x34]);
        assert!(crate::wire::parse(&p, Default::default()).is_err());
        finish_checksum(&mut p).unwrap();
        assert_eq!(p, good);
    }
    let mut short = vec![0x45, 0, 0, 20];
    assert!(finish_checksum(&mut short).is_err());
}
