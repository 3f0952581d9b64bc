use super::build;
use super::*;
use proptest::prelude::*;

fn sa(s: &str) -> std::net::SocketAddr {
    s.parse().unwrap()
}

#[test]
fn parses_a_syn_with_its_options() {
    let bytes = build::tcp(sa("198.18.0.2:40000"), sa("198.19.0.2:80"))
        .flags(TcpFlags::SYN)
        .seq(u32::MAX)
        .window(29200)
        .mss(1460)
        .sack_permitted()
        .window_scale(7)
        .build();
    let p = parse(&bytes, Framing::default()).unwrap();
    assert_eq!(p.src, "198.18.0.2".parse::<IpAddr>().unwrap());
    assert_eq!(p.protocol, PROTO_TCP);
    let t = p.tcp().unwrap();
    assert_eq!((t.src_port, t.dst_port), (40000, 80));
    assert_eq!(t.seq, SeqNum(u32::MAX));
    assert_eq!(t.window, 29200);
    assert_eq!(t.payload_len, 0);
    assert_eq!(t.seq_len(), 1);
    assert_eq!(
        t.options,
        SynOptions {
            window_scale: Some(7),
            mss: Some(1460),
            sack_permitted: true
        }
    );
}

#[test]
fn payload_length_comes_from_the_ip_header() {
    let bytes = build::tcp(sa("[2001:db8:1::2]:1"), sa("[2001:db8:2::2]:2"))
        .payload(&[0; 300])
        .build();
    let p = parse(
        &bytes[..100],
        Framing {
            wire_len: Some(bytes.len() as u32),
            checksums: Checksums::Verify,
        },
    )
    .unwrap();
    assert_eq!(p.tcp().unwrap().payload_len, 300);
    // Without the true length the missing bytes are a truncation.
    assert_eq!(
        parse(&bytes[..100], Framing::default()),
        Err(Reason::Truncated)
    );
}

#[test]
fn icmp_error_quotes_are_decoded() {
    let udp = build::udp(sa("198.18.0.2:5000"), sa("198.19.0.2:53"), b"q");
    let err = build::icmp_unreachable(
        "198.19.0.1".parse().unwrap(),
        "198.18.0.2".parse().unwrap(),
        &udp,
    );
    let p = parse(&err, Framing::default()).unwrap();
    let Transport::Icmp(Icmp {
        kind: IcmpKind::Error(e),
        ..
    }) = p.transport
    else {
        panic!("not an ICMP error: {p:?}");
    };
    assert_eq!((e.protocol, e.src_port, e.dst_port), (PROTO_UDP, 5000, 53));
}

#[test]
fn udp_length_must_fit() {
    let mut v = build::udp(sa("198.18.0.2:1"), sa("198.19.0.2:2"), b"abc");
    v[24..26].copy_from_slice(&100u16.to_be_bytes());
    assert_eq!(
        parse(
            &v,
            Framing {
                checksums: Checksums::NotComputed,
                ..Framing::default()
            }
        ),
        Err(Reason::BadUdpLength)
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), wire_extra in 0u32..100) {
        let _ = parse(&bytes, Framing::default());
        let _ = parse(&bytes, Framing { wire_len: Some(bytes.len() as u32 + wire_extra), checksums: Checksums::NotComputed });
    }

    #[test]
    fn mutated_valid_packets_never_panic(
        v6 in any::<bool>(),
        flips in proptest::collection::vec((0usize..120, any::<u8>()), 1..6),
        cut in 0usize..130,
    ) {
        let (c, s) = if v6 { (sa("[2001:db8:1::2]:1"), sa("[2001:db8:2::2]:2")) } else { (sa("198.18.0.2:1"), sa("198.19.0.2:2")) };
        let mut bytes = build::tcp(c, s).flags(TcpFlags::SYN).window_scale(3).mss(1400).payload(&[1; 40]).build();
        for (at, val) in flips {
            if at < bytes.len() {
                bytes[at] = val;
            }
        }
        bytes.truncate(cut.max(1));
        let _ = parse(&bytes, Framing::default());
    }

    #[test]
    fn valid_segments_round_trip(seq: u32, ack: u32, window: u16, len in 0usize..100, flags_index in 0usize..9) {
        let valid = [0x02, 0x22, 0x12, 0x04, 0x14, 0x11, 0x31, 0x10, 0x30];
        let flags = valid[flags_index];
        let bytes = build::tcp(sa("198.18.0.2:7"), sa("198.19.0.2:8")).flags(flags).seq(seq).ack(ack).window(window).payload(&vec![0; len]).build();
        let p = parse(&bytes, Framing::default()).unwrap();
        let t = p.tcp().unwrap();
        prop_assert_eq!(t.flags, TcpFlags(flags));
        prop_assert_eq!((t.seq, t.ack, t.window, t.payload_len), (SeqNum(seq), SeqNum(ack), window, len as u32));
    }
}
