//! Stateless SYN cookies, built as Linux builds them (net/ipv4/syncookies.c,
//! net/ipv6/syncookies.c), so that their strength and limits are the known
//! ones.
//!
//! The initial sequence number sent to the client is
//!
//! ```text
//! cookie = H1(tuple) + client_isn + (count << 24) + ((H2(tuple, count) + mss_index) mod 2^24)
//! ```
//!
//! with `H1`, `H2` SipHash-2-4 under two secret keys, `count` the minute
//! (from the time passed in) and `mss_index` an index into a table of four
//! MSS values. The client's ACK returns `cookie + 1` with its own
//! `client_isn + 1`: subtracting `H1` and the ISN leaves the count in the top
//! 8 bits, and subtracting `H2` at that count leaves the index. A cookie is
//! valid while its count is the current or the previous minute
//! ([`MAX_AGE_MINUTES`]) and the index is in the table: a guess passes with
//! probability 4 in 2^24 per key generation tried (two: current and
//! previous). One whose index checks at an older count is
//! [`CookieError::Expired`], anything else [`CookieError::Invalid`]: a
//! forgery reads as expired with the same small probability. The hashed
//! bytes are laid out as this module likes (addresses, ports, count): the
//! keys are ours, nothing has to match the kernel's.
//!
//! When the client sent a timestamp, its window scale, SACK-permitted and
//! ECN go in the low 6 bits of the TSval of the SYN+ACK
//! ([`encode_timestamp`], as Linux's `cookie_init_timestamp`) and come back
//! in the TSecr of the ACK ([`decode_timestamp`]). Without a timestamp
//! they are lost, as in Linux: the connection runs without them. The next 4
//! bits carry what Linux has no need for: the window scale the proxy told
//! the client (learned per server, so it may change between the SYN and the
//! ACK). The TSval then lags the clock by up to a second, which costs
//! nothing: the client measures its round trips on its own TSvals, and the
//! server's, translated, continue from this one. The TSecr is not under the
//! MAC: a client that forges it only misconfigures its own connection.
//!
//! Keys are the caller's: the daemon draws them from the kernel's random
//! source and rotates them ([`CookieKeys::rotate`]); checking tries the
//! current keys, then the previous ones, so a cookie made just before a
//! rotation still passes.

use crate::time::Timestamp;
use crate::wire::SeqNum;
use siphasher::sip::SipHasher24;
use std::fmt;
use std::net::IpAddr;

/// Linux's `msstab` for IPv4 (net/ipv4/syncookies.c): the MSS values a
/// cookie can carry; the client's MSS is rounded down to one of them.
pub const MSS_TABLE_V4: [u16; 4] = [536, 1300, 1440, 1460];
/// Linux's `msstab` for IPv6 (net/ipv6/syncookies.c): the IPv6 minimum MTU,
/// PPPoE-ish, Ethernet and 9k jumbo frames, each less 60 bytes of headers.
pub const MSS_TABLE_V6: [u16; 4] = [1280 - 60, 1480 - 60, 1500 - 60, 9000 - 60];

/// The top 8 bits carry the minute counter; the low 24 the hashed data.
const COUNT_SHIFT: u32 = 24;
const DATA_MASK: u32 = (1 << COUNT_SHIFT) - 1;
/// Counts are compared modulo 2^8: what fits above the 24 data bits.
const COUNT_MASK: u32 = u32::MAX >> COUNT_SHIFT;
/// Linux's `MAX_SYNCOOKIE_AGE`: a cookie of this minute or the one before.
pub const MAX_AGE_MINUTES: u32 = 2;
/// Linux's `TCP_SYNCOOKIE_PERIOD`.
const PERIOD_SECS: u64 = 60;

/// The connection a cookie is for, as the client's SYN names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub client: IpAddr,
    pub client_port: u16,
    pub server: IpAddr,
    pub server_port: u16,
}

impl Tuple {
    fn is_v6(&self) -> bool {
        self.client.is_ipv6()
    }

    fn mss_table(&self) -> &'static [u16; 4] {
        if self.is_v6() {
            &MSS_TABLE_V6
        } else {
            &MSS_TABLE_V4
        }
    }

    /// The hashed bytes: addresses, ports, count. At most 16 + 16 + 4 + 4.
    fn hash_input(&self, count: u32, out: &mut [u8; 40]) -> usize {
        let mut at = 0;
        let mut put = |bytes: &[u8]| {
            out[at..at + bytes.len()].copy_from_slice(bytes);
            at += bytes.len();
        };
        for addr in [self.client, self.server] {
            match addr {
                IpAddr::V4(a) => put(&a.octets()),
                IpAddr::V6(a) => put(&a.octets()),
            }
        }
        put(&self.client_port.to_be_bytes());
        put(&self.server_port.to_be_bytes());
        put(&count.to_be_bytes());
        at
    }
}

/// Bytes of key material for one generation: two SipHash keys, one for `H1`
/// and one for `H2`.
pub const KEY_MATERIAL_LEN: usize = 32;

#[derive(Clone)]
struct KeyPair {
    tuple_key: SipHasher24,
    count_key: SipHasher24,
}

impl KeyPair {
    fn new(material: &[u8; KEY_MATERIAL_LEN]) -> Self {
        let mut first = [0; 16];
        let mut second = [0; 16];
        first.copy_from_slice(&material[..16]);
        second.copy_from_slice(&material[16..]);
        KeyPair {
            tuple_key: SipHasher24::new_with_key(&first),
            count_key: SipHasher24::new_with_key(&second),
        }
    }

    /// `H1`: the tuple alone (Linux hashes it with count 0).
    fn h1(&self, tuple: &Tuple) -> u32 {
        let mut buf = [0; 40];
        let len = tuple.hash_input(0, &mut buf);
        self.tuple_key.hash(&buf[..len]) as u32
    }

    /// `H2`: the tuple and the minute counter.
    fn h2(&self, tuple: &Tuple, count: u32) -> u32 {
        let mut buf = [0; 40];
        let len = tuple.hash_input(count, &mut buf);
        self.count_key.hash(&buf[..len]) as u32
    }
}

/// The cookie keys: the current generation and the one before it.
///
/// Rotate no more often than every [`MAX_AGE_MINUTES`] (a cookie must
/// outlive its own validity under the previous keys) and well within 256
/// minutes: the counter is compared modulo 2^8, so only a rotation stops a
/// cookie from passing again 256 minutes after it was made. Every 30 to 60
/// minutes is right.
#[derive(Clone)]
pub struct CookieKeys {
    current: KeyPair,
    previous: Option<KeyPair>,
    generation: u64,
}

impl fmt::Debug for CookieKeys {
    // The keys themselves stay out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CookieKeys")
            .field("generation", &self.generation)
            .field("has_previous", &self.previous.is_some())
            .finish_non_exhaustive()
    }
}

impl CookieKeys {
    /// Keys of generation 0 from `material`, which must be secret and
    /// uniformly random (the kernel's `getrandom`): never derived from time
    /// or anything an attacker can see.
    pub fn new(material: [u8; KEY_MATERIAL_LEN]) -> Self {
        CookieKeys {
            current: KeyPair::new(&material),
            previous: None,
            generation: 0,
        }
    }

    /// New current keys from `material`; the current ones become the
    /// previous ones (still accepted), the previous ones are forgotten.
    pub fn rotate(&mut self, material: [u8; KEY_MATERIAL_LEN]) {
        let next = KeyPair::new(&material);
        self.previous = Some(std::mem::replace(&mut self.current, next));
        self.generation += 1;
    }

    /// How many rotations there have been.
    pub fn generation(&self) -> u64 {
        self.generation
    }
}

/// The minute counter at `now`.
fn minute_count(now: Timestamp) -> u32 {
    // Truncated: only the low 8 bits reach the cookie, and H2 sees the same
    // truncation at making and checking.
    (now.as_secs() / PERIOD_SECS) as u32
}

/// What [`make`] chose for a SYN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cookie {
    /// The initial sequence number to send the client.
    pub isn: SeqNum,
    /// The MSS that will come back from the cookie: the largest of the
    /// table's not above the client's.
    pub mss: u16,
    pub mss_index: u8,
}

/// The index of the largest table MSS not above `client_mss`, or 0 (the
/// smallest) when all are above it, as Linux's `__cookie_v4_init_sequence`.
/// A SYN without MSS option: pass `None` (Linux treats it as 536).
pub fn mss_index(table: &[u16; 4], client_mss: Option<u16>) -> u8 {
    let mss = client_mss.unwrap_or(536);
    table.iter().rposition(|&m| m <= mss).unwrap_or(0) as u8
}

/// The cookie answering a SYN of `tuple` with sequence number `client_isn`
/// and MSS option `client_mss`, at `now`.
pub fn make(
    keys: &CookieKeys,
    tuple: &Tuple,
    client_isn: SeqNum,
    client_mss: Option<u16>,
    now: Timestamp,
) -> Cookie {
    let table = tuple.mss_table();
    let index = mss_index(table, client_mss);
    let count = minute_count(now);
    let k = &keys.current;
    let data = k.h2(tuple, count).wrapping_add(index as u32) & DATA_MASK;
    let isn = k
        .h1(tuple)
        .wrapping_add(client_isn.0)
        .wrapping_add(count << COUNT_SHIFT)
        .wrapping_add(data);
    Cookie {
        isn: SeqNum(isn),
        mss: table[index as usize],
        mss_index: index,
    }
}

/// Why an ACK's cookie was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CookieError {
    /// Not a cookie of ours for this tuple: forged, or for another
    /// connection, or made with keys older than the previous ones.
    Invalid,
    /// A cookie of ours, made more than [`MAX_AGE_MINUTES`] ago (the MAC
    /// checks at the count it carries, only the count is too old).
    Expired,
}

impl fmt::Display for CookieError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CookieError::Invalid => "invalid SYN cookie",
            CookieError::Expired => "expired SYN cookie",
        })
    }
}

impl std::error::Error for CookieError {}

/// What a valid cookie gives back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CookieData {
    /// The initial sequence number the client was told (the cookie).
    pub isn: SeqNum,
    /// The client's own initial sequence number.
    pub client_isn: SeqNum,
    /// The client's MSS, rounded down to the table.
    pub mss: u16,
    pub mss_index: u8,
    /// Made with the previous keys (before the last rotation).
    pub previous_keys: bool,
}

/// Checks the cookie in the client's ACK of `tuple`, whose acknowledgement
/// number is `ack` (cookie + 1) and sequence number `seq` (client ISN + 1).
pub fn check(
    keys: &CookieKeys,
    tuple: &Tuple,
    ack: SeqNum,
    seq: SeqNum,
    now: Timestamp,
) -> Result<CookieData, CookieError> {
    let cookie = ack - 1;
    let client_isn = seq - 1;
    let count = minute_count(now);
    let table = tuple.mss_table();
    let mut expired = false;
    let generations = [Some(&keys.current), keys.previous.as_ref()];
    for (previous_keys, k) in generations.into_iter().enumerate() {
        let Some(k) = k else { continue };
        // What is left once the tuple's hash and the client's ISN are taken
        // away: (count << 24) + ((H2 + index) mod 2^24).
        let rest = cookie
            .0
            .wrapping_sub(k.h1(tuple))
            .wrapping_sub(client_isn.0);
        let age = count.wrapping_sub(rest >> COUNT_SHIFT) & COUNT_MASK;
        let made_at = count.wrapping_sub(age);
        let index = rest.wrapping_sub(k.h2(tuple, made_at)) & DATA_MASK;
        if (index as usize) < table.len() {
            if age < MAX_AGE_MINUTES {
                return Ok(CookieData {
                    isn: cookie,
                    client_isn,
                    mss: table[index as usize],
                    mss_index: index as u8,
                    previous_keys: previous_keys == 1,
                });
            }
            // The MAC holds at the count it carries: ours, but too old.
            expired = true;
        }
    }
    Err(if expired {
        CookieError::Expired
    } else {
        CookieError::Invalid
    })
}

/// The options a cookie's timestamp carries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimestampOptions {
    /// The client's window scale (0..=14), `None` when it sent none.
    pub window_scale: Option<u8>,
    pub sack_permitted: bool,
    pub ecn: bool,
    /// The window scale the cookie SYN+ACK told the client, `None` when it
    /// carried none.
    pub proxy_window_scale: Option<u8>,
}

/// Linux's `TSBITS` (6: the client's options), and 4 more for the proxy's
/// window scale.
const TS_BITS: u32 = 10;
const TS_WSCALE_MASK: u32 = 0x0f;
const TS_SACK: u32 = 1 << 4;
const TS_ECN: u32 = 1 << 5;
const TS_PROXY_WSCALE_SHIFT: u32 = 6;
/// RFC 7323 2.3: a larger shift is taken as 14.
const MAX_WINDOW_SCALE: u8 = 14;

/// A window scale in 4 bits, 0xf for none.
fn scale_bits(scale: Option<u8>) -> u32 {
    scale.map_or(TS_WSCALE_MASK, |s| s.min(MAX_WINDOW_SCALE) as u32)
}

fn scale_of(bits: u32) -> Option<u8> {
    let bits = bits & TS_WSCALE_MASK;
    (bits != TS_WSCALE_MASK).then(|| (bits as u8).min(MAX_WINDOW_SCALE))
}

/// The TSval of the cookie SYN+ACK at `now`: a millisecond clock with the
/// low 10 bits replaced by `options`, never ahead of the clock (Linux's
/// `cookie_init_timestamp`, with 4 bits more).
pub fn encode_timestamp(options: TimestampOptions, now: Timestamp) -> u32 {
    let clock = (now.as_nanos() / 1_000_000) as u32;
    let mut bits = scale_bits(options.window_scale)
        | scale_bits(options.proxy_window_scale) << TS_PROXY_WSCALE_SHIFT;
    if options.sack_permitted {
        bits |= TS_SACK;
    }
    if options.ecn {
        bits |= TS_ECN;
    }
    let ts = (clock >> TS_BITS << TS_BITS) | bits;
    // Not ahead of the clock: the next TSval (the server's, translated) must
    // not go backwards from it.
    if ts > clock {
        ts.wrapping_sub(1 << TS_BITS)
    } else {
        ts
    }
}

/// The options of a cookie SYN+ACK's TSval, from the TSecr of the client's
/// ACK (`None`: the ACK has no timestamp, so nothing came back, and the
/// connection runs without them).
pub fn decode_timestamp(tsecr: Option<u32>) -> TimestampOptions {
    let Some(bits) = tsecr else {
        return TimestampOptions::default();
    };
    TimestampOptions {
        window_scale: scale_of(bits),
        sack_permitted: bits & TS_SACK != 0,
        ecn: bits & TS_ECN != 0,
        proxy_window_scale: scale_of(bits >> TS_PROXY_WSCALE_SHIFT),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const KEY_A: [u8; 32] = [7; 32];
    const KEY_B: [u8; 32] = [9; 32];

    fn v4(c: u32, cp: u16, s: u32, sp: u16) -> Tuple {
        Tuple {
            client: IpAddr::V4(Ipv4Addr::from(c)),
            client_port: cp,
            server: IpAddr::V4(Ipv4Addr::from(s)),
            server_port: sp,
        }
    }

    fn v6(c: u128, cp: u16, s: u128, sp: u16) -> Tuple {
        Tuple {
            client: IpAddr::V6(Ipv6Addr::from(c)),
            client_port: cp,
            server: IpAddr::V6(Ipv6Addr::from(s)),
            server_port: sp,
        }
    }

    fn at_minute(m: u64, s: u64) -> Timestamp {
        Timestamp::from_secs(m * 60 + s)
    }

    /// The ACK that answers `cookie` for a SYN with `client_isn`.
    fn ack_of(cookie: Cookie, client_isn: SeqNum) -> (SeqNum, SeqNum) {
        (cookie.isn + 1, client_isn + 1)
    }

    /// A deterministic spread of tuples and ISNs (a 64-bit LCG).
    fn spread(n: usize) -> impl Iterator<Item = (Tuple, SeqNum)> {
        let mut x: u64 = 0x243f_6a88_85a3_08d3;
        (0..n).map(move |i| {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let t = if i % 2 == 0 {
                v4((x >> 32) as u32, x as u16, 0xc633_6405, 80)
            } else {
                v6(
                    0x2001_0db8_u128 << 96 | x as u128,
                    (x >> 48) as u16,
                    0x2001_0db8_0002_u128 << 80 | 5,
                    443,
                )
            };
            (t, SeqNum((x >> 16) as u32))
        })
    }

    #[test]
    fn the_mss_index_is_the_largest_table_entry_not_above_the_clients() {
        assert_eq!(mss_index(&MSS_TABLE_V4, Some(1460)), 3);
        assert_eq!(mss_index(&MSS_TABLE_V4, Some(1459)), 2);
        assert_eq!(mss_index(&MSS_TABLE_V4, Some(9000)), 3);
        assert_eq!(mss_index(&MSS_TABLE_V4, Some(1300)), 1);
        assert_eq!(mss_index(&MSS_TABLE_V4, Some(100)), 0);
        assert_eq!(mss_index(&MSS_TABLE_V4, None), 0);
        assert_eq!(mss_index(&MSS_TABLE_V6, Some(1440)), 2);
        assert_eq!(mss_index(&MSS_TABLE_V6, Some(8960)), 3);
        assert_eq!(mss_index(&MSS_TABLE_V6, None), 0);
        assert_eq!(MSS_TABLE_V6, [1220, 1420, 1440, 8940]);
    }

    #[test]
    fn a_cookie_checks_this_minute_and_the_next_and_expires_after() {
        let keys = CookieKeys::new(KEY_A);
        let t = v4(0x0a00_0002, 40000, 0xcb00_7105, 80);
        let isn = SeqNum(0xffff_fff0);
        let c = make(&keys, &t, isn, Some(1460), at_minute(1000, 59));
        assert_eq!(c.mss, 1460);
        let (ack, seq) = ack_of(c, isn);
        for now in [at_minute(1000, 59), at_minute(1001, 0), at_minute(1001, 59)] {
            let d = check(&keys, &t, ack, seq, now).unwrap();
            assert_eq!(
                (d.mss, d.mss_index, d.isn, d.client_isn),
                (1460, 3, c.isn, isn)
            );
            assert!(!d.previous_keys);
        }
        for minutes in [2, 3, 100, 255] {
            let now = at_minute(1000 + minutes, 0);
            assert_eq!(check(&keys, &t, ack, seq, now), Err(CookieError::Expired));
        }
        // From the future (a clock that went back, or a forgery): not valid.
        assert!(check(&keys, &t, ack, seq, at_minute(999, 0)).is_err());
    }

    #[test]
    fn after_one_rotation_the_old_cookie_passes_after_two_it_does_not() {
        let mut keys = CookieKeys::new(KEY_A);
        let t = v6(1, 50000, 2, 443);
        let isn = SeqNum(12345);
        let now = at_minute(7, 0);
        let (ack, seq) = ack_of(make(&keys, &t, isn, Some(1440), now), isn);
        keys.rotate(KEY_B);
        assert_eq!(keys.generation(), 1);
        let d = check(&keys, &t, ack, seq, now).unwrap();
        assert!(d.previous_keys);
        assert_eq!(d.mss, 1440);
        keys.rotate([3; 32]);
        assert_eq!(check(&keys, &t, ack, seq, now), Err(CookieError::Invalid));
        // And the debug output names no key.
        assert!(!format!("{keys:?}").contains("key:"));
    }

    #[test]
    fn other_keys_tuples_isns_and_forged_acks_do_not_check() {
        let keys = CookieKeys::new(KEY_A);
        let other = CookieKeys::new(KEY_B);
        let now = at_minute(500, 30);
        for (t, isn) in spread(20_000) {
            let c = make(&keys, &t, isn, Some(1460), now);
            let (ack, seq) = ack_of(c, isn);
            assert!(check(&keys, &t, ack, seq, now).is_ok());
            assert_eq!(check(&other, &t, ack, seq, now), Err(CookieError::Invalid));
            let mut moved = t;
            moved.client_port = t.client_port.wrapping_add(1);
            assert_eq!(
                check(&keys, &moved, ack, seq, now),
                Err(CookieError::Invalid)
            );
            // The ISN and the index are added, not hashed (as in Linux): an
            // ISN one more reads as an index one less, a cookie one more as
            // an index one more, four apart as none. Only an observer of the
            // cookie can make use of it, who has no need to.
            let index = check(&keys, &t, ack, seq + 1, now).map(|d| d.mss_index);
            assert!(index.map_or(true, |i| i + 1 == c.mss_index));
            let index = check(&keys, &t, ack + 1, seq, now).map(|d| d.mss_index);
            assert!(index.map_or(true, |i| i == c.mss_index + 1));
            assert_eq!(
                check(&keys, &t, ack, seq + 4, now),
                Err(CookieError::Invalid)
            );
            assert_eq!(
                check(&keys, &t, ack + 4, seq, now),
                Err(CookieError::Invalid)
            );
            // A random cookie, as a flood of forged ACKs would bring.
            let forged = SeqNum(isn.0.rotate_left(13) ^ 0x5bd1_e995);
            assert!(check(&keys, &t, forged, seq, now).is_err());
        }
    }

    #[test]
    fn a_retransmitted_syn_gets_the_same_cookie_within_the_minute() {
        // Stateless, so a retransmission is answered alike, and either
        // answer's ACK checks.
        let keys = CookieKeys::new(KEY_A);
        let t = v4(0x0a00_0002, 40000, 0xcb00_7105, 80);
        let first = make(&keys, &t, SeqNum(77), Some(1460), at_minute(9, 1));
        let again = make(&keys, &t, SeqNum(77), Some(1460), at_minute(9, 59));
        assert_eq!(first, again);
        let next_minute = make(&keys, &t, SeqNum(77), Some(1460), at_minute(10, 0));
        assert_ne!(first.isn, next_minute.isn);
        let now = at_minute(10, 30);
        for c in [first, next_minute] {
            let (ack, seq) = ack_of(c, SeqNum(77));
            assert!(check(&keys, &t, ack, seq, now).is_ok());
        }
    }

    #[test]
    fn a_cookie_is_not_a_constant_plus_the_isn() {
        // Made in the same minute for the same tuple, cookies of ISNs one
        // apart are one apart (as Linux's): the ISN is added, not hashed.
        // What hides them is H1 over the tuple: another port, another offset.
        let keys = CookieKeys::new(KEY_A);
        let now = at_minute(3, 0);
        let t = v4(1, 1000, 2, 80);
        let a = make(&keys, &t, SeqNum(100), Some(1460), now).isn;
        let b = make(&keys, &t, SeqNum(101), Some(1460), now).isn;
        assert_eq!(b, a + 1);
        let u = v4(1, 1001, 2, 80);
        let c = make(&keys, &u, SeqNum(100), Some(1460), now).isn;
        assert_ne!(c, a);
    }

    #[test]
    fn timestamp_options_are_in_the_low_ten_bits_and_never_ahead_of_the_clock() {
        let now = Timestamp::from_nanos(1_000_000 * 1_000_003); // clock 1000003 ms
        let o = TimestampOptions {
            window_scale: Some(7),
            sack_permitted: true,
            ecn: false,
            proxy_window_scale: Some(9),
        };
        let ts = encode_timestamp(o, now);
        // Linux's 6 bits, then the proxy's scale.
        assert_eq!(ts & 0x3f, 0x17);
        assert_eq!(ts >> 6 & 0xf, 9);
        assert!(ts <= 1_000_003 && 1_000_003 - ts < 1024);
        assert_eq!(decode_timestamp(Some(ts)), o);
        let none = TimestampOptions::default();
        assert_eq!(encode_timestamp(none, now) & 0x3ff, 0x3cf);
        assert_eq!(decode_timestamp(Some(encode_timestamp(none, now))), none);
        assert_eq!(decode_timestamp(None), none);
        // A shift above 14 is taken as 14 (RFC 7323 2.3).
        let big = TimestampOptions {
            window_scale: Some(15),
            ..none
        };
        assert_eq!(
            decode_timestamp(Some(encode_timestamp(big, now))).window_scale,
            Some(14)
        );
        // Near the clock's wrap, the TSval wraps too rather than jump ahead.
        let early = Timestamp::from_nanos(1_000_000 * 3);
        let ts = encode_timestamp(o, early);
        assert_eq!(ts, 0u32.wrapping_sub(1024) | 9 << 6 | 0x17);
    }

    proptest! {
        #[test]
        fn make_then_check_round_trips_within_the_age(
            c4: u32, s4: u32, c6: u128, s6: u128, cp: u16, sp: u16, six: bool,
            isn: u32, mss in proptest::option::of(any::<u16>()),
            made in 0u64..(1 << 33), later in 0u64..120, key: [u8; 32],
        ) {
            let keys = CookieKeys::new(key);
            let t = if six { v6(c6, cp, s6, sp) } else { v4(c4, cp, s4, sp) };
            let made = Timestamp::from_secs(made);
            let c = make(&keys, &t, SeqNum(isn), mss, made);
            let (ack, seq) = ack_of(c, SeqNum(isn));
            // Within the current or the next minute of the making.
            let now = Timestamp::from_secs(made.as_secs() / 60 * 60 + later);
            let d = check(&keys, &t, ack, seq, now);
            prop_assert!(d.is_ok(), "{:?}", d);
            let d = d.unwrap();
            prop_assert_eq!(d.mss, c.mss);
            prop_assert_eq!(d.client_isn, SeqNum(isn));
            prop_assert_eq!(d.isn, c.isn);
            let table = if six { MSS_TABLE_V6 } else { MSS_TABLE_V4 };
            prop_assert!(mss.map_or(true, |m| c.mss <= m || c.mss == table[0]));
            // Two minutes after the making's minute: expired.
            let late = Timestamp::from_secs(made.as_secs() / 60 * 60 + 120 + later);
            prop_assert_eq!(check(&keys, &t, ack, seq, late), Err(CookieError::Expired));
        }

        #[test]
        fn timestamp_bits_round_trip(
            scale in proptest::option::of(0u8..=14), sack: bool, ecn: bool,
            proxy in proptest::option::of(0u8..=14), nanos: u64,
        ) {
            let o = TimestampOptions {
                window_scale: scale, sack_permitted: sack, ecn, proxy_window_scale: proxy,
            };
            let now = Timestamp::from_nanos(nanos);
            let ts = encode_timestamp(o, now);
            prop_assert_eq!(decode_timestamp(Some(ts)), o);
            let clock = (nanos / 1_000_000) as u32;
            prop_assert!(clock.wrapping_sub(ts) < 1024);
        }
    }
}
