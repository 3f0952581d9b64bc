//! The connection key: one per connection, whichever direction a packet goes.
//!
//! IPv4 and IPv6 keys are separate types so that the table can keep IPv4
//! connections in compact entries (a 16-byte key instead of 40): most of a
//! gateway's table is IPv4, and entry size is memory per connection.

use std::hash::{Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// An IPv4 5-tuple, lower (address, port) first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Key4 {
    lo_addr: u32,
    hi_addr: u32,
    lo_port: u16,
    hi_port: u16,
    protocol: u8,
}

/// An IPv6 5-tuple, lower (address, port) first.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Key6 {
    lo_addr: [u8; 16],
    hi_addr: [u8; 16],
    lo_port: u16,
    hi_port: u16,
    protocol: u8,
}

/// A direction-independent connection key: both directions of a connection
/// give the same key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlowKey {
    V4(Key4),
    V6(Key6),
}

/// Which end of the key, the lower (address, port) or the higher: the
/// sender of a packet, or the originator of a connection (its
/// [`Role`](super::Role) is another matter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Lo,
    Hi,
}

impl Side {
    /// The other end of the key.
    #[inline]
    pub const fn other(self) -> Side {
        match self {
            Side::Lo => Side::Hi,
            Side::Hi => Side::Lo,
        }
    }
}

impl FlowKey {
    /// The key of a packet from `(src, src_port)` to `(dst, dst_port)`, and the side the sender is on.
    #[inline]
    pub fn new(
        protocol: u8,
        src: IpAddr,
        src_port: u16,
        dst: IpAddr,
        dst_port: u16,
    ) -> (FlowKey, Side) {
        // Compare addresses as numbers: byte-array ordering is a slow element-wise loop.
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let (s, d) = (u32::from(s), u32::from(d));
                let lo_first = s < d || (s == d && src_port <= dst_port);
                let (lo_addr, hi_addr, lo_port, hi_port, side) = if lo_first {
                    (s, d, src_port, dst_port, Side::Lo)
                } else {
                    (d, s, dst_port, src_port, Side::Hi)
                };
                let key = Key4 {
                    lo_addr,
                    hi_addr,
                    lo_port,
                    hi_port,
                    protocol,
                };
                (FlowKey::V4(key), side)
            }
            _ => {
                let (s, d) = (number(src), number(dst));
                let lo_first = s < d || (s == d && src_port <= dst_port);
                let (lo, hi, lo_port, hi_port, side) = if lo_first {
                    (s, d, src_port, dst_port, Side::Lo)
                } else {
                    (d, s, dst_port, src_port, Side::Hi)
                };
                let key = Key6 {
                    lo_addr: lo.to_be_bytes(),
                    hi_addr: hi.to_be_bytes(),
                    lo_port,
                    hi_port,
                    protocol,
                };
                (FlowKey::V6(key), side)
            }
        }
    }

    pub fn protocol(&self) -> u8 {
        match self {
            FlowKey::V4(k) => k.protocol,
            FlowKey::V6(k) => k.protocol,
        }
    }

    /// The (address, port) of one side.
    pub fn endpoint(&self, side: Side) -> (IpAddr, u16) {
        match (self, side) {
            (FlowKey::V4(k), Side::Lo) => (IpAddr::V4(Ipv4Addr::from(k.lo_addr)), k.lo_port),
            (FlowKey::V4(k), Side::Hi) => (IpAddr::V4(Ipv4Addr::from(k.hi_addr)), k.hi_port),
            (FlowKey::V6(k), Side::Lo) => (IpAddr::V6(Ipv6Addr::from(k.lo_addr)), k.lo_port),
            (FlowKey::V6(k), Side::Hi) => (IpAddr::V6(Ipv6Addr::from(k.hi_addr)), k.hi_port),
        }
    }
}

/// The address as a number; an IPv4 address (only in a mixed pair, which
/// parsing never produces) as IPv4-mapped.
#[inline]
fn number(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => 0xffff_0000_0000 | u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

impl Hash for Key4 {
    // Two wide writes instead of five small ones.
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64((self.lo_addr as u64) << 32 | self.hi_addr as u64);
        state.write_u64(
            (self.lo_port as u64) << 24 | (self.hi_port as u64) << 8 | self.protocol as u64,
        );
    }
}

impl Hash for Key6 {
    #[inline]
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u128(u128::from_ne_bytes(self.lo_addr));
        state.write_u128(u128::from_ne_bytes(self.hi_addr));
        state.write_u64(
            (self.lo_port as u64) << 24 | (self.hi_port as u64) << 8 | self.protocol as u64,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ipv4_keys_are_compact() {
        assert!(std::mem::size_of::<Key4>() <= 16);
    }

    proptest! {
        #[test]
        fn both_directions_share_one_key(a: [u8; 4], b: [u8; 4], pa: u16, pb: u16, v6: bool) {
            let (src, dst): (IpAddr, IpAddr) = if v6 {
                let mut x = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
                let mut y = x;
                x[12..].copy_from_slice(&a);
                y[12..].copy_from_slice(&b);
                (IpAddr::from(x), IpAddr::from(y))
            } else {
                (IpAddr::from(a), IpAddr::from(b))
            };
            let (k1, s1) = FlowKey::new(6, src, pa, dst, pb);
            let (k2, s2) = FlowKey::new(6, dst, pb, src, pa);
            prop_assert_eq!(k1, k2);
            if (src, pa) != (dst, pb) {
                prop_assert_ne!(s1, s2);
            }
            prop_assert_eq!(k1.endpoint(s1), (src, pa));
        }
    }
}
