//! The table as bytes: what a graceful stop (or a periodic snapshot) writes
//! and a start reads back, so that connections survive a restart.
//!
//! Sans-IO: [`encode`] and [`decode`] work on bytes; the daemon reads and
//! writes the file (atomically: temporary file, fsync, rename).
//!
//! ```text
//! header (40 bytes, little-endian)
//!   magic    8  "CTDTABLE"
//!   version  4  FORMAT_VERSION
//!   flags    4  bit 0: written by a graceful stop (else a periodic snapshot)
//!   count    8  connections that follow
//!   length   4  bytes that follow
//!   crc32    4  of those bytes
//!   saved    8  wall-clock time of writing, Unix seconds
//! each connection
//!   family   1  4 or 6
//!   protocol 1
//!   lo addr, lo port, hi addr, hi port   (4 or 16 bytes, then 2, each)
//!   the connection (Conn::encode): kind, both TCP endpoints, seconds left,
//!   originator, flags
//!   with flag 0x80 (opened by the SYN proxy): its translation, 13 bytes
//!   (Translation::to_bytes)
//! ```
//!
//! Expiry is stored as seconds left, since the engine's clock starts at zero
//! in every process; the time that passed since the file was written (by
//! the wall clock the caller passes in) is taken off when it is read, and a
//! file older than [`MAX_AGE`] is refused: its connections are long gone or
//! went on unseen for too long to be trusted. A file of another version is refused, not guessed at;
//! so is one whose length, checksum or any record does not add up.

use super::key::{FlowKey, Side};
use super::table::Conn;
use crate::synproxy::translate::TRANSLATION_BYTES;
use crate::synproxy::Translation;
use crate::time::Timestamp;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const MAGIC: [u8; 8] = *b"CTDTABLE";
/// Bumped whenever a record's layout changes.
pub const FORMAT_VERSION: u32 = 1;
const HEADER: usize = 40;
/// The oldest state file a start uses, in seconds.
pub const MAX_AGE: u64 = 3600;
/// Where the flags word lies in the header (see [`mark_not_graceful`]).
pub const FLAGS_AT: usize = 12;
const F_GRACEFUL: u32 = 1;
/// The most bytes one connection takes (IPv6 key and a TCP connection).
pub const MAX_RECORD: usize = 2 + 2 * (16 + 2) + Conn::RECORD + TRANSLATION_BYTES;

/// Why a state file was not used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("not a conntrackd state file (bad magic)")]
    Magic,
    #[error("state file format version {0}, this conntrackd reads version {FORMAT_VERSION}")]
    Version(u32),
    #[error("truncated: {0}")]
    Truncated(&'static str),
    #[error("checksum mismatch: the file is corrupted")]
    Checksum,
    #[error("connection record {0} is invalid")]
    Record(u64),
    #[error("written {0} s ago (more than {MAX_AGE} s): its connections cannot be trusted")]
    TooOld(u64),
}

/// A decoded state file.
#[derive(Debug)]
pub struct State {
    pub entries: Vec<(FlowKey, Conn)>,
    /// Written by a graceful stop (else by a periodic snapshot: connections
    /// opened after it are missing).
    pub graceful: bool,
    /// Records dropped because they had expired by `now`.
    pub expired: u64,
    /// The translations of the connections the SYN proxy opened.
    pub translations: Vec<(FlowKey, Translation)>,
}

/// The bytes of a state file holding `entries`, with their expiry counted
/// from `now`.
///
/// `unix_now`: the wall clock, in Unix seconds.
/// `translation`: a proxied connection's translation.
pub fn encode(
    entries: &[(FlowKey, Conn)],
    translation: impl Fn(&FlowKey) -> Option<Translation>,
    now: Timestamp,
    graceful: bool,
    unix_now: u64,
) -> Vec<u8> {
    let mut body = Vec::with_capacity(entries.len() * (MAX_RECORD / 2));
    for (key, conn) in entries {
        let t = if conn.proxied() {
            translation(key)
        } else {
            None
        };
        encode_entry(key, conn, t.as_ref(), now, &mut body);
    }
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(if graceful { F_GRACEFUL } else { 0 }).to_le_bytes());
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    out.extend_from_slice(&(body.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&unix_now.to_le_bytes());
    out.extend_from_slice(&body);
    out
}

/// One connection as a record (at most [`MAX_RECORD`] bytes): its key,
/// then the connection with its expiry counted from `now`. The cluster's
/// messages carry the same records.
///
/// A connection the SYN proxy opened carries its `translation`; without
/// one (its server has not answered yet) it is written as any other, and
/// read back as a plain connection in SYN_SENT.
pub fn encode_entry(
    key: &FlowKey,
    conn: &Conn,
    translation: Option<&Translation>,
    now: Timestamp,
    out: &mut Vec<u8>,
) {
    let (lo, hi) = (key.endpoint(Side::Lo), key.endpoint(Side::Hi));
    out.push(if lo.0.is_ipv4() { 4 } else { 6 });
    out.push(key.protocol());
    for (addr, port) in [lo, hi] {
        match addr {
            IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
            IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
        }
        out.extend_from_slice(&port.to_le_bytes());
    }
    match translation {
        Some(t) if conn.proxied() => {
            conn.encode(now, out);
            out.extend_from_slice(&t.to_bytes());
        }
        _ => {
            let mut plain = *conn;
            plain.clear_proxied();
            plain.encode(now, out);
        }
    }
}

/// The 4 flag bytes to write over [`FLAGS_AT`] once a file has been loaded:
/// it is then no longer a graceful stop's complete table (a crash before the
/// next snapshot must not bring back connections closed since as if nothing
/// happened, nor skip the crash pickup).
pub fn not_graceful_flags() -> [u8; 4] {
    0u32.to_le_bytes()
}

/// Reads a state file; connections expire relative to `now`, less the time
/// since the file was written (`unix_now`: the wall clock, Unix seconds),
/// and those already expired are left out.
pub fn decode(bytes: &[u8], now: Timestamp, unix_now: u64) -> Result<State, StateError> {
    if bytes.len() < HEADER {
        if bytes.len() >= 8 && bytes[..8] != MAGIC {
            return Err(StateError::Magic);
        }
        return Err(StateError::Truncated("header"));
    }
    let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
    if bytes[..8] != MAGIC {
        return Err(StateError::Magic);
    }
    let version = u32_at(8);
    if version != FORMAT_VERSION {
        return Err(StateError::Version(version));
    }
    let graceful = u32_at(12) & F_GRACEFUL != 0;
    let count = u64::from_le_bytes(bytes[16..24].try_into().expect("8 bytes"));
    let length = u32_at(24) as usize;
    let saved = u64::from_le_bytes(bytes[32..40].try_into().expect("8 bytes"));
    let age = unix_now.saturating_sub(saved);
    if age > MAX_AGE {
        return Err(StateError::TooOld(age));
    }
    let body = &bytes[HEADER..];
    if body.len() < length {
        return Err(StateError::Truncated("connections"));
    }
    let body = &body[..length];
    if crc32fast::hash(body) != u32_at(28) {
        return Err(StateError::Checksum);
    }
    // The count cannot claim more records than the bytes can hold (the
    // smallest record is 21 bytes).
    if count > (length / 21) as u64 {
        return Err(StateError::Record(0));
    }
    let mut entries = Vec::with_capacity(count as usize);
    let mut translations = Vec::new();
    let mut expired = 0;
    let mut at = 0usize;
    for i in 0..count {
        let (key, conn, translation, used) =
            decode_entry(&body[at..], now, age).ok_or(StateError::Record(i))?;
        at += used;
        if conn.expired(now) {
            expired += 1;
        } else {
            entries.push((key, conn));
            if let Some(t) = translation {
                translations.push((key, t));
            }
        }
    }
    if at != body.len() {
        return Err(StateError::Record(count));
    }
    Ok(State {
        entries,
        graceful,
        expired,
        translations,
    })
}

/// One connection record from the front of `b` (see [`encode_entry`]),
/// expiring relative to `now` less `age` seconds; with the bytes it used.
/// `None` if the bytes are not a valid record.
pub fn decode_entry(
    b: &[u8],
    now: Timestamp,
    age: u64,
) -> Option<(FlowKey, Conn, Option<Translation>, usize)> {
    let (&family, rest) = b.split_first()?;
    let (&protocol, mut rest) = rest.split_first()?;
    let width = match family {
        4 => 4,
        6 => 16,
        _ => return None,
    };
    let mut ends = [(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0u16); 2];
    for end in &mut ends {
        let (a, r) = rest.split_at_checked(width + 2)?;
        let addr = if width == 4 {
            IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&a[..4]).ok()?))
        } else {
            IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&a[..16]).ok()?))
        };
        *end = (addr, u16::from_le_bytes([a[width], a[width + 1]]));
        rest = r;
    }
    let [lo, hi] = ends;
    let (key, _) = FlowKey::new(protocol, lo.0, lo.1, hi.0, hi.1);
    // A key stored out of order would turn the originator around.
    if key.endpoint(Side::Lo) != lo || key.endpoint(Side::Hi) != hi {
        return None;
    }
    let (mut conn, mut used) = Conn::decode(rest, now)?;
    let translation = if conn.proxied() {
        let t = Translation::from_bytes(rest.get(used..used + TRANSLATION_BYTES)?)?;
        used += TRANSLATION_BYTES;
        Some(t)
    } else {
        None
    };
    // The kind must be the key's protocol's.
    let kind_ok = match conn.proto {
        super::table::Proto::Tcp(_) => protocol == crate::wire::PROTO_TCP,
        super::table::Proto::Udp => protocol == crate::wire::PROTO_UDP,
        super::table::Proto::Icmp => {
            protocol == crate::wire::PROTO_ICMP || protocol == crate::wire::PROTO_ICMPV6
        }
        super::table::Proto::Other => !matches!(protocol, 1 | 6 | 17 | 58),
    };
    if !kind_ok {
        return None;
    }
    // Time passed since the file was written counts against each entry.
    let left = u64::from(conn.expires_at_secs()).saturating_sub(now.as_secs());
    conn.set_timeout(
        now,
        left.saturating_sub(age).min(u64::from(u32::MAX)) as u32,
    );
    Some((key, conn, translation, b.len() - rest.len() + used))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conntrack::table::Proto;
    use crate::conntrack::tcp::TcpConn;
    use crate::wire::{build, parse, Checksums, Framing, Transport};
    use proptest::prelude::*;

    /// A wall clock for the tests.
    const T0: u64 = 1_800_000_000;

    fn tcp_syn(src: &str, dst: &str) -> (FlowKey, Conn) {
        let (s, d) = (src.parse().unwrap(), dst.parse().unwrap());
        let bytes = build::tcp(s, d)
            .flags(0x02)
            .seq(1000)
            .window_scale(7)
            .build();
        let p = parse(
            &bytes,
            Framing {
                wire_len: None,
                checksums: Checksums::Verify,
            },
        )
        .unwrap();
        let Transport::Tcp(seg) = p.transport else {
            unreachable!()
        };
        let (key, side) = FlowKey::new(6, p.src, seg.src_port, p.dst, seg.dst_port);
        let mut conn = Conn::new(Proto::Tcp(TcpConn::from_syn(&seg)), side, true);
        conn.set_timeout(Timestamp::from_secs(100), 120);
        (key, conn)
    }

    fn sample() -> Vec<(FlowKey, Conn)> {
        let mut v = vec![
            tcp_syn("198.18.0.2:40000", "198.19.0.2:80"),
            tcp_syn("[2001:db8:1::2]:40000", "[2001:db8:2::2]:443"),
        ];
        for (proto, kind) in [(17u8, Proto::Udp), (1, Proto::Icmp), (47, Proto::Other)] {
            let (key, side) = FlowKey::new(
                proto,
                "198.19.0.9".parse().unwrap(),
                53,
                "198.18.0.3".parse().unwrap(),
                5353,
            );
            let mut conn = Conn::new(kind, side, false);
            conn.set_replied();
            conn.set_assured();
            conn.set_timeout(Timestamp::from_secs(100), 30);
            v.push((key, conn));
        }
        v
    }

    #[test]
    fn every_kind_of_connection_round_trips() {
        let entries = sample();
        let bytes = encode(&entries, |_| None, Timestamp::from_secs(100), true, T0);
        // A new process: its clock starts again near zero.
        let later = Timestamp::from_secs(5);
        let state = decode(&bytes, later, T0).unwrap();
        assert!(state.graceful);
        assert_eq!(state.entries.len(), entries.len());
        for ((k0, c0), (k1, c1)) in entries.iter().zip(&state.entries) {
            assert_eq!(k0, k1);
            assert_eq!(c0.state(), c1.state());
            assert_eq!(c0.originator, c1.originator);
            assert_eq!(
                (c0.replied(), c0.assured(), c0.log()),
                (c1.replied(), c1.assured(), c1.log())
            );
            // The same seconds left.
            assert_eq!(
                c0.expires_at_secs() - 100,
                c1.expires_at_secs() - 5,
                "{k0:?}"
            );
        }
    }

    #[test]
    fn expired_entries_are_left_out() {
        let bytes = encode(&sample(), |_| None, Timestamp::from_secs(100), false, T0);
        let state = decode(&bytes, Timestamp::from_secs(0), T0).unwrap();
        assert!(!state.graceful);
        assert_eq!(state.expired, 0);
        // Seconds left are counted from the writer's now: 30 s UDP entries
        // written at 100 with expiry 130 have 30 s left.
        let mut old = sample();
        for (_, c) in &mut old {
            c.set_timeout(Timestamp::from_secs(0), 0);
        }
        let state = decode(
            &encode(&old, |_| None, Timestamp::from_secs(100), true, T0),
            Timestamp::from_secs(1),
            T0,
        )
        .unwrap();
        assert_eq!((state.entries.len(), state.expired), (0, 5));
    }

    #[test]
    fn time_since_writing_counts_and_an_old_file_is_refused() {
        let bytes = encode(&sample(), |_| None, Timestamp::from_secs(100), true, T0);
        // 20 s later: the 30 s UDP-style entries have 10 s left, TCP 100.
        let st = decode(&bytes, Timestamp::from_secs(0), T0 + 20).unwrap();
        let lefts: Vec<u32> = st
            .entries
            .iter()
            .map(|(_, c)| c.expires_at_secs())
            .collect();
        assert_eq!(lefts, vec![100, 100, 10, 10, 10]);
        // 31 s later they have expired.
        let st = decode(&bytes, Timestamp::from_secs(0), T0 + 31).unwrap();
        assert_eq!((st.entries.len(), st.expired), (2, 3));
        assert_eq!(
            decode(&bytes, Timestamp::from_secs(0), T0 + MAX_AGE + 1).unwrap_err(),
            StateError::TooOld(MAX_AGE + 1)
        );
    }

    #[test]
    fn a_record_whose_kind_is_not_its_protocols_is_refused() {
        let (key, _) = FlowKey::new(
            17,
            "198.19.0.9".parse().unwrap(),
            53,
            "198.18.0.3".parse().unwrap(),
            5353,
        );
        let (_, tcp) = tcp_syn("198.18.0.2:40000", "198.19.0.2:80");
        let bytes = encode(&[(key, tcp)], |_| None, Timestamp::from_secs(100), true, T0);
        assert_eq!(
            decode(&bytes, Timestamp::from_secs(0), T0).unwrap_err(),
            StateError::Record(0)
        );
    }

    #[test]
    fn an_impossible_pair_of_tcp_states_is_refused() {
        let (key, conn) = tcp_syn("198.18.0.2:40000", "198.19.0.2:80");
        let good = encode(
            &[(key, conn)],
            |_| None,
            Timestamp::from_secs(100),
            true,
            T0,
        );
        assert!(decode(&good, Timestamp::from_secs(0), T0).is_ok());
        // The originator's state byte (the last of its endpoint record):
        // SYN_SENT -> ESTABLISHED makes ESTABLISHED:LISTEN.
        let mut bad = good.clone();
        let at = HEADER + 2 + 2 * (4 + 2) + 1 + 18;
        assert_eq!(bad[at], EndpointStateByte::SYN_SENT);
        bad[at] = EndpointStateByte::ESTABLISHED;
        let crc = crc32fast::hash(&bad[HEADER..]);
        bad[28..32].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode(&bad, Timestamp::from_secs(0), T0).unwrap_err(),
            StateError::Record(0)
        );
    }

    /// Endpoint states as a state file stores them.
    struct EndpointStateByte;
    impl EndpointStateByte {
        const SYN_SENT: u8 = crate::conntrack::tcp::EndpointState::SynSent as u8;
        const ESTABLISHED: u8 = crate::conntrack::tcp::EndpointState::Established as u8;
    }

    #[test]
    fn another_version_bad_magic_truncation_and_corruption_are_refused() {
        let bytes = encode(&sample(), |_| None, Timestamp::from_secs(100), true, T0);
        let now = Timestamp::from_secs(1);
        let mut v2 = bytes.clone();
        v2[8] = 2;
        assert_eq!(decode(&v2, now, T0).unwrap_err(), StateError::Version(2));
        let mut magic = bytes.clone();
        magic[0] = b'X';
        assert_eq!(decode(&magic, now, T0).unwrap_err(), StateError::Magic);
        for cut in [0, 10, HEADER, bytes.len() - 1] {
            assert!(
                matches!(
                    decode(&bytes[..cut], now, T0),
                    Err(StateError::Truncated(_))
                ),
                "cut {cut}"
            );
        }
        let mut flipped = bytes.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(decode(&flipped, now, T0).unwrap_err(), StateError::Checksum);
    }

    proptest! {
        /// Whatever the bytes, decoding answers and never panics; a file
        /// with its checksum and header fixed up still has every record checked.
        #[test]
        fn garbage_never_panics(mut junk in proptest::collection::vec(any::<u8>(), 0..600), at in 0usize..600) {
            let _ = decode(&junk, Timestamp::from_secs(1), T0);
            let mut file = encode(&sample(), |_| None, Timestamp::from_secs(100), true, T0);
            let i = HEADER + at % (file.len() - HEADER);
            file[i] = junk.pop().unwrap_or(0xff);
            let body_crc = crc32fast::hash(&file[HEADER..]);
            file[28..32].copy_from_slice(&body_crc.to_le_bytes());
            let _ = decode(&file, Timestamp::from_secs(1), T0);
        }
    }
}
