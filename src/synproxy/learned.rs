//! The servers' handshake options, learned from their SYN+ACKs.
//!
//! The proxy tells a client an MSS and a window scale before the server has
//! said anything. Linux's SYNPROXY and pf take them from the operator and
//! go wrong silently when the server differs; conntrackd sees every
//! server's SYN+ACK, so it remembers what each (address, port) said and
//! falls back to configured defaults for a server it has not seen. A wrong
//! guess is repaired by the translation (it rescales windows), so the cache
//! may forget: it is bounded, allocated once, and evicts in O(1).
//!
//! A 2-way set-associative table: a keyed hash (SipHash-1-3, key from the
//! caller) picks the set, so an attacker who cannot see the key cannot aim
//! servers at one set to evict another; within a set the older entry goes.
//!
//! Learn with [`ServerOptionsCache::learn_from_syn_ack`]: a SYN+ACK's
//! missing option means "not supported" only when the SYN offered it.

use super::options::{SegmentView, TcpOptions};
use siphasher::sip::SipHasher13;
use std::fmt;
use std::net::IpAddr;

/// What a server's SYN+ACK said, or the configured defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LearnedOptions {
    pub mss: u16,
    pub window_scale: Option<u8>,
    pub sack_permitted: bool,
    pub timestamps: bool,
    /// Agreed to ECN (ECE without CWR on the SYN+ACK).
    pub ecn: bool,
}

impl LearnedOptions {
    /// The options of a server's SYN+ACK. Without an MSS option, the
    /// default MSS of RFC 9293 3.7.1 (536) or RFC 8200 (1220 for IPv6).
    pub fn from_syn_ack(syn_ack: &SegmentView) -> Self {
        let default_mss = if syn_ack.src.is_ipv6() { 1220 } else { 536 };
        LearnedOptions {
            mss: syn_ack.options.mss.unwrap_or(default_mss),
            window_scale: syn_ack.options.window_scale,
            sack_permitted: syn_ack.options.sack_permitted,
            timestamps: syn_ack.options.timestamps.is_some(),
            ecn: syn_ack.ecn_setup(),
        }
    }
}

/// A server: address and port, as the hashed and compared key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct ServerKey {
    /// IPv4 in the first 4 bytes, the rest zero; `v6` tells them apart.
    address: [u8; 16],
    port: u16,
    v6: bool,
}

impl ServerKey {
    fn new(address: IpAddr, port: u16) -> Self {
        let mut key = ServerKey {
            address: [0; 16],
            port,
            v6: address.is_ipv6(),
        };
        match address {
            IpAddr::V4(a) => key.address[..4].copy_from_slice(&a.octets()),
            IpAddr::V6(a) => key.address = a.octets(),
        }
        key
    }

    fn bytes(&self) -> [u8; 19] {
        let mut b = [0; 19];
        b[..16].copy_from_slice(&self.address);
        b[16..18].copy_from_slice(&self.port.to_be_bytes());
        b[18] = self.v6 as u8;
        b
    }
}

#[derive(Clone, Copy)]
struct Way {
    key: ServerKey,
    options: LearnedOptions,
    used: bool,
}

#[derive(Clone, Copy)]
struct Set {
    ways: [Way; 2],
    /// The way written last; the other one is evicted first.
    newest: u8,
}

/// A bounded map of server (address, port) to [`LearnedOptions`], with
/// defaults for servers not in it. Lookups and inserts are O(1); nothing is
/// allocated after [`ServerOptionsCache::new`].
pub struct ServerOptionsCache {
    sets: Box<[Set]>,
    /// `sets.len() - 1`; the number of sets is a power of two.
    set_mask: usize,
    hasher: SipHasher13,
    defaults: LearnedOptions,
    len: usize,
}

impl fmt::Debug for ServerOptionsCache {
    // Neither the key nor every entry belongs in a log line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerOptionsCache")
            .field("capacity", &self.capacity())
            .field("len", &self.len)
            .field("defaults", &self.defaults)
            .finish_non_exhaustive()
    }
}

impl ServerOptionsCache {
    /// Room for at least `capacity` servers (rounded up to a power of two,
    /// at least 2), hashed with `key` (secret and random: the daemon's
    /// random source), falling back to `defaults`.
    pub fn new(capacity: usize, key: [u8; 16], defaults: LearnedOptions) -> Self {
        let sets = capacity.div_ceil(2).max(1).next_power_of_two();
        let empty = Way {
            key: ServerKey::default(),
            options: defaults,
            used: false,
        };
        ServerOptionsCache {
            sets: vec![
                Set {
                    ways: [empty; 2],
                    newest: 0
                };
                sets
            ]
            .into_boxed_slice(),
            set_mask: sets - 1,
            hasher: SipHasher13::new_with_key(&key),
            defaults,
            len: 0,
        }
    }

    /// How many servers it can hold.
    pub fn capacity(&self) -> usize {
        self.sets.len() * 2
    }

    /// How many servers it holds.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The options used for servers not learned.
    pub fn defaults(&self) -> LearnedOptions {
        self.defaults
    }

    fn set_of(&self, key: &ServerKey) -> usize {
        self.hasher.hash(&key.bytes()) as usize & self.set_mask
    }

    /// What `server`:`port` was seen to say, if it is remembered.
    pub fn get(&self, server: IpAddr, port: u16) -> Option<LearnedOptions> {
        let key = ServerKey::new(server, port);
        self.sets[self.set_of(&key)]
            .ways
            .iter()
            .find(|w| w.used && w.key == key)
            .map(|w| w.options)
    }

    /// The options to tell a client of `server`:`port`: learned, or the
    /// defaults.
    pub fn options_for(&self, server: IpAddr, port: u16) -> LearnedOptions {
        self.get(server, port).unwrap_or(self.defaults)
    }

    /// Remembers what `server`:`port` said, replacing what it said before,
    /// or the older entry of its set.
    pub fn learn(&mut self, server: IpAddr, port: u16, options: LearnedOptions) {
        let key = ServerKey::new(server, port);
        let index = self.set_of(&key);
        let set = &mut self.sets[index];
        let way = match set.ways.iter().position(|w| w.used && w.key == key) {
            Some(same) => same,
            None => match set.ways.iter().position(|w| !w.used) {
                Some(free) => {
                    self.len += 1;
                    free
                }
                None => 1 - set.newest as usize,
            },
        };
        set.ways[way] = Way {
            key,
            options,
            used: true,
        };
        set.newest = way as u8;
    }
}

impl ServerOptionsCache {
    /// Learns from a server's `syn_ack` answering a SYN that offered
    /// `offered` (and ECN, `offered_ecn`). A server answers window scale,
    /// SACK-permitted, timestamps and ECN only when the SYN offered them
    /// (RFC 7323, RFC 2018, RFC 3168), so their absence says something only
    /// then; otherwise what was known (or the default) stays. The MSS is
    /// always the server's.
    pub fn learn_from_syn_ack(
        &mut self,
        offered: &TcpOptions,
        offered_ecn: bool,
        syn_ack: &SegmentView,
    ) {
        let said = LearnedOptions::from_syn_ack(syn_ack);
        let known = self.options_for(syn_ack.src, syn_ack.src_port);
        let learned = LearnedOptions {
            mss: said.mss,
            window_scale: if offered.window_scale.is_some() {
                said.window_scale
            } else {
                known.window_scale
            },
            sack_permitted: if offered.sack_permitted {
                said.sack_permitted
            } else {
                known.sack_permitted
            },
            timestamps: if offered.timestamps.is_some() {
                said.timestamps
            } else {
                known.timestamps
            },
            ecn: if offered_ecn { said.ecn } else { known.ecn },
        };
        self.learn(syn_ack.src, syn_ack.src_port, learned);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const DEFAULTS: LearnedOptions = LearnedOptions {
        mss: 1460,
        window_scale: Some(7),
        sack_permitted: true,
        timestamps: true,
        ecn: false,
    };

    fn learned(mss: u16) -> LearnedOptions {
        LearnedOptions {
            mss,
            window_scale: Some(9),
            ..DEFAULTS
        }
    }

    fn addr(i: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i))
    }

    #[test]
    fn unknown_servers_get_the_defaults_learned_ones_what_they_said() {
        let mut cache = ServerOptionsCache::new(16, [1; 16], DEFAULTS);
        assert_eq!(cache.options_for(addr(1), 80), DEFAULTS);
        assert!(cache.is_empty());
        cache.learn(addr(1), 80, learned(1400));
        assert_eq!(cache.options_for(addr(1), 80), learned(1400));
        assert_eq!(cache.get(addr(1), 443), None, "another port");
        // The same bytes as IPv6 are another server.
        let mapped = IpAddr::V6(Ipv6Addr::from(0x0a00_0001u128 << 96));
        assert_eq!(cache.get(mapped, 80), None);
        cache.learn(addr(1), 80, learned(1300));
        assert_eq!(cache.get(addr(1), 80), Some(learned(1300)));
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn it_holds_at_most_its_capacity_and_evicts_the_older_of_a_set() {
        let mut cache = ServerOptionsCache::new(100, [2; 16], DEFAULTS);
        assert_eq!(cache.capacity(), 128);
        for i in 0..10_000 {
            cache.learn(addr(i), 80, learned(1000 + (i % 400) as u16));
            // The one just learned is always there.
            assert_eq!(
                cache.get(addr(i), 80),
                Some(learned(1000 + (i % 400) as u16))
            );
        }
        assert!(cache.len() <= cache.capacity());
        let kept = (0..10_000)
            .filter(|&i| cache.get(addr(i), 80).is_some())
            .count();
        assert_eq!(kept, cache.len());
        // Sets fill evenly enough under a keyed hash: most of the room is used.
        assert!(cache.len() > cache.capacity() * 9 / 10, "{}", cache.len());
    }

    #[test]
    fn within_a_set_the_newer_entry_stays() {
        // Capacity 2: one set of two ways; every server lands in it.
        let mut cache = ServerOptionsCache::new(2, [3; 16], DEFAULTS);
        cache.learn(addr(1), 80, learned(1001));
        cache.learn(addr(2), 80, learned(1002));
        cache.learn(addr(3), 80, learned(1003));
        assert_eq!(cache.get(addr(1), 80), None);
        assert_eq!(cache.get(addr(2), 80), Some(learned(1002)));
        // Relearning 2 makes it the newer: 3 goes next.
        cache.learn(addr(2), 80, learned(1012));
        cache.learn(addr(4), 80, learned(1004));
        assert_eq!(cache.get(addr(3), 80), None);
        assert_eq!(cache.get(addr(2), 80), Some(learned(1012)));
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn a_syn_ack_teaches_only_what_the_syn_asked_about() {
        use crate::synproxy::options::read_segment;
        use crate::synproxy::testing::{sa, tcp};
        use etherparse::TcpOptionElement as E;
        let (c, s) = (sa("10.0.0.2:40000"), sa("203.0.113.5:80"));
        let mut cache = ServerOptionsCache::new(16, [6; 16], DEFAULTS);
        // A SYN with MSS only: the server's plain SYN+ACK says nothing of
        // its scale, SACK or timestamps.
        let plain = tcp(s, c, 0x12, 1, 2, 65535, &[E::MaximumSegmentSize(1380)], b"");
        let plain = read_segment(&plain).unwrap();
        let mss_only = TcpOptions {
            mss: Some(1460),
            ..TcpOptions::default()
        };
        cache.learn_from_syn_ack(&mss_only, false, &plain);
        assert_eq!(
            cache.get(s.ip(), 80),
            Some(LearnedOptions {
                mss: 1380,
                ..DEFAULTS
            })
        );
        // A SYN with everything: now the absences count.
        let everything = TcpOptions {
            mss: Some(1460),
            window_scale: Some(7),
            sack_permitted: true,
            timestamps: Some(crate::synproxy::options::Timestamps { value: 1, echo: 0 }),
        };
        let scaled = [E::MaximumSegmentSize(1400), E::Noop, E::WindowScale(5)];
        let scaled = read_segment(&tcp(s, c, 0x52, 1, 2, 65535, &scaled, b"")).unwrap();
        cache.learn_from_syn_ack(&everything, true, &scaled);
        assert_eq!(
            cache.get(s.ip(), 80),
            Some(LearnedOptions {
                mss: 1400,
                window_scale: Some(5),
                sack_permitted: false,
                timestamps: false,
                ecn: true,
            })
        );
        // Without an MSS option: the RFC's default.
        let bare = read_segment(&tcp(s, c, 0x12, 1, 2, 65535, &[], b"")).unwrap();
        cache.learn_from_syn_ack(&mss_only, false, &bare);
        assert_eq!(cache.get(s.ip(), 80).map(|o| o.mss), Some(536));
    }

    #[test]
    fn the_key_decides_the_sets() {
        // With another key the same servers spread over other sets: which
        // of a crowd survive depends on the key.
        let survivors = |key: [u8; 16]| {
            let mut cache = ServerOptionsCache::new(64, key, DEFAULTS);
            for i in 0..1000 {
                cache.learn(addr(i), 80, learned(1200));
            }
            (0..1000)
                .filter(|&i| cache.get(addr(i), 80).is_some())
                .collect::<Vec<_>>()
        };
        assert_ne!(survivors([4; 16]), survivors([5; 16]));
    }
}
