//! The SYN proxy's core must never panic, whatever the bytes: reading a
//! segment, translating it both ways, checking a cookie; and a translation
//! without window rescaling, undone, gives the packet back (unless its
//! checksum field held 0xffff, which no sender computes: RFC 1624's update
//! gives back 0x0000, the same value in ones' complement).
#![no_main]

use conntrackd::synproxy::cookie::{self, CookieKeys};
use conntrackd::synproxy::translate::{Translation, WindowScales};
use conntrackd::synproxy::{options, read_segment};
use conntrackd::wire::SeqNum;
use conntrackd::Timestamp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let (head, bytes) = data.split_at(9);
    let word = |i: usize| u32::from_be_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    let shift = head[8] % 15;
    let t = Translation::new(
        SeqNum(word(0)),
        SeqNum(0),
        Some((word(4), 0)),
        WindowScales {
            client: Some(shift),
            told_client: Some(shift),
            server: Some(shift),
        },
    );
    let _ = options::parse_options(bytes);
    if let Ok(seg) = read_segment(bytes) {
        let keys = CookieKeys::new([head[8]; 32]);
        let now = Timestamp::from_secs(word(0) as u64);
        let _ = cookie::check(&keys, &seg.tuple_from_client(), seg.ack, seg.seq, now);
        let _ = cookie::decode_timestamp(seg.options.timestamps.map(|t| t.echo));
    }
    for to_client in [true, false] {
        let mut p = bytes.to_vec();
        let r = if to_client {
            t.server_to_client(&mut p)
        } else {
            t.client_to_server(&mut p)
        };
        if r.is_err() {
            assert_eq!(p, bytes, "a refused packet is left untouched");
            continue;
        }
        let back = t.reversed();
        if to_client {
            back.server_to_client(&mut p).unwrap();
        } else {
            back.client_to_server(&mut p).unwrap();
        }
        if p != bytes {
            // Only a checksum of 0xffff may come back as 0x0000.
            let differ: Vec<usize> = (0..p.len()).filter(|&i| p[i] != bytes[i]).collect();
            let minus_zero = matches!(differ[..], [i, j] if j == i + 1
                && bytes[i..=j] == [0xff, 0xff] && p[i..=j] == [0, 0]);
            assert!(minus_zero, "translate and back is the identity");
        }
    }
});
