use super::*;
use crate::conntrack::table::Proto;
use crate::conntrack::tcp::TcpConn;
use crate::conntrack::Side;
use crate::wire::{build, parse, Framing};

const NOW: Timestamp = Timestamp::from_secs(1_000);

/// A TCP connection in ESTABLISHED as a handshake leaves it, and a UDP
/// one, v4 and v6.
fn entries() -> Vec<(FlowKey, Conn)> {
    let mut out = Vec::new();
    for (c, s) in [
        ("198.18.0.2:50000", "198.19.0.2:80"),
        ("[2001:db8:1::2]:50001", "[2001:db8:2::2]:443"),
    ] {
        let (c, s) = (c.parse().unwrap(), s.parse().unwrap());
        let bytes = build::tcp(c, s).seq(7).ack(9).payload(b"data").build();
        let p = parse(&bytes, Framing::default()).unwrap();
        let seg = p.tcp().unwrap();
        let (key, side) = FlowKey::new(6, c.ip(), c.port(), s.ip(), s.port());
        let mut conn = Conn::new(Proto::Tcp(TcpConn::from_midstream(seg)), side, false);
        conn.set_timeout(NOW, 300);
        conn.set_assured();
        out.push((key, conn));
        let (key, side) = FlowKey::new(17, c.ip(), 5353, s.ip(), 53);
        let mut conn = Conn::new(Proto::Udp, side, true);
        conn.set_timeout(NOW, 30);
        out.push((key, conn));
    }
    out
}

fn changes(entries: &[(FlowKey, Conn)]) -> Vec<u8> {
    let mut w = Writer::new(Kind::Changes, "gw-a", 42, 1_700_000_000_000);
    for (i, (key, conn)) in entries.iter().enumerate() {
        let op = if i == 1 { Op::Remove } else { Op::Upsert };
        w.push(op, key, conn, None, NOW);
    }
    w.finish(false)
}

#[test]
fn records_come_back_as_they_were_sent() {
    let sent = entries();
    let m = decode(&changes(&sent), NOW).unwrap();
    assert_eq!(
        m.header,
        Header {
            kind: Kind::Changes,
            node: "gw-a".into(),
            sequence: 42,
            sent_ms: 1_700_000_000_000,
            last: false,
        }
    );
    let Body::Records(got) = m.body else {
        panic!("not records: {:?}", m.body)
    };
    assert_eq!(got.len(), sent.len());
    for (i, ((op, key, conn, _), (k, c))) in got.iter().zip(&sent).enumerate() {
        assert_eq!(*op, if i == 1 { Op::Remove } else { Op::Upsert });
        assert_eq!(key, k);
        assert_eq!(conn.state(), c.state());
        assert_eq!(conn.originator, c.originator);
        assert_eq!(conn.expires_at_secs(), c.expires_at_secs());
        assert_eq!(conn.assured(), c.assured());
        assert_eq!(conn.log(), c.log());
    }
}

#[test]
fn a_hello_and_a_bulk_request_come_back() {
    let h = Hello {
        digest: digest("policy"),
        connections: 12_345,
        ready: true,
    };
    let m = decode(&hello("b", 3, 9, &h), NOW).unwrap();
    assert_eq!(m.body, Body::Hello(h));
    assert_eq!((m.header.kind, m.header.node.as_str()), (Kind::Hello, "b"));
    let m = decode(&bulk_request("b", 4, 10), NOW).unwrap();
    assert_eq!(m.body, Body::BulkRequest);
    assert_ne!(digest("policy"), digest("policy "));
}

#[test]
fn the_last_chunk_of_a_bulk_copy_says_so() {
    let w = Writer::new(Kind::BulkChunk, "a", 1, 1);
    assert!(decode(&w.finish(true), NOW).unwrap().header.last);
    let w = Writer::new(Kind::BulkChunk, "a", 1, 1);
    assert!(!decode(&w.finish(false), NOW).unwrap().header.last);
}

#[test]
fn a_message_cut_anywhere_is_refused() {
    let bytes = changes(&entries());
    for cut in 0..bytes.len() {
        assert!(decode(&bytes[..cut], NOW).is_err(), "cut at {cut} accepted");
    }
}

#[test]
fn any_changed_byte_is_refused() {
    let bytes = changes(&entries());
    for at in 0..bytes.len() {
        let mut forged = bytes.clone();
        forged[at] ^= 0x20;
        assert!(decode(&forged, NOW).is_err(), "byte {at} changed, accepted");
    }
}

/// A forger who recomputes the checksum is still checked field by field.
#[test]
fn a_sealed_forgery_is_refused_for_what_it_gets_wrong() {
    let reseal = |mut b: Vec<u8>| {
        b.truncate(b.len() - TRAILER);
        seal(b)
    };
    let good = changes(&entries());
    let mut v = good.clone();
    v[4] = 2;
    assert_eq!(decode(&reseal(v), NOW), Err(MessageError::Version(2)));
    let mut v = good.clone();
    v[6] = 9;
    assert_eq!(decode(&reseal(v), NOW), Err(MessageError::Kind(9)));
    let mut v = good.clone();
    v[9] = b'.'; // "gw-a" -> ".w-a": not a node name (a NATS subject token)
    assert_eq!(decode(&reseal(v), NOW), Err(MessageError::Node));
    // A count that claims more records than there are.
    let count_at = 9 + 4 + 16;
    let mut v = good.clone();
    v[count_at] = 200;
    assert!(matches!(
        decode(&reseal(v), NOW),
        Err(MessageError::Record(_))
    ));
    // A record whose key is stored out of order (lo and hi swapped).
    let mut v = good.clone();
    let first = count_at + 4 + 1 + 2;
    let (lo, hi) = (first..first + 6, first + 6..first + 12);
    let (a, b) = (v[lo.clone()].to_vec(), v[hi.clone()].to_vec());
    v[lo].copy_from_slice(&b);
    v[hi].copy_from_slice(&a);
    assert_eq!(decode(&reseal(v), NOW), Err(MessageError::Record(0)));
    // Bytes after the body.
    let mut v = good.clone();
    v.truncate(v.len() - TRAILER);
    v.push(0);
    assert_eq!(decode(&seal(v), NOW), Err(MessageError::Trailing));
    assert_eq!(decode(b"NATS\x01\x00", NOW), Err(MessageError::Magic));
}

#[test]
fn a_writer_stays_under_the_message_limit() {
    let (key, conn) = entries()[2];
    let mut w = Writer::new(Kind::BulkChunk, "a-node-with-a-long-name_32_bytes", 1, 1);
    while w.has_room() {
        w.push(Op::Upsert, &key, &conn, None, NOW);
    }
    let n = w.count();
    let bytes = w.finish(true);
    assert!(bytes.len() <= MAX_MESSAGE, "{} bytes", bytes.len());
    assert!(n > 500, "only {n} IPv6 TCP records in a message");
    let Body::Records(r) = decode(&bytes, NOW).unwrap().body else {
        panic!()
    };
    assert_eq!(r.len() as u32, n);
}

#[test]
fn node_names_are_subject_tokens() {
    for ok in ["a", "gw-a", "GW_2", &"x".repeat(32)] {
        assert!(valid_node(ok), "{ok}");
    }
    for bad in ["", "gw.a", "gw a", "gw*", ">", "é", &"x".repeat(33)] {
        assert!(!valid_node(bad), "{bad}");
    }
}

#[test]
fn a_record_keeps_which_side_opened_the_connection() {
    let (key, mut conn) = entries()[0];
    conn.originator = Side::Hi;
    let mut w = Writer::new(Kind::Changes, "a", 1, 1);
    w.push(Op::Upsert, &key, &conn, None, NOW);
    let Body::Records(r) = decode(&w.finish(false), NOW).unwrap().body else {
        panic!()
    };
    assert_eq!(r[0].2.originator, Side::Hi);
}

proptest::proptest! {
    /// Whatever arrives on the subject, decoding answers and never panics.
    #[test]
    fn any_bytes_get_an_answer(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
        let _ = decode(&bytes, NOW);
    }

    /// Random bytes under a valid header and checksum: refused or read, never a panic.
    #[test]
    fn any_sealed_body_gets_an_answer(kind in 1u8..=4, count in 0u32..20,
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..300)) {
        let mut w = Writer::new(Kind::from_byte(kind).unwrap(), "a", 1, 1);
        w.count = count;
        let mut b = w.buf.clone();
        b[w.count_at..w.count_at + 4].copy_from_slice(&count.to_le_bytes());
        b.extend_from_slice(&body);
        let _ = decode(&seal(b), NOW);
    }
}
