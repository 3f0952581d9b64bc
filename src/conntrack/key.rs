//! The connection key: one per connection, whichever direction a packet goes.

use std::hash::{Hash, Hasher};
use std::net::IpAddr;

/// A 5-tuple ordered so both directions give the same key: the lower
/// (address, port) pair comes first. IPv4 addresses are stored IPv4-mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowKey {
    lo_addr: [u8; 16],
    hi_addr: [u8; 16],
    lo_port: u16,
    hi_port: u16,
    protocol: u8,
}

/// Which end of the key sent the packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Lo,
    Hi,
}

/// The address as an IPv4-mapped IPv6 number (one comparison orders it).
#[inline]
fn number(addr: IpAddr) -> u128 {
    match addr {
        IpAddr::V4(a) => 0xffff_0000_0000 | u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
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
        let (s, d) = (number(src), number(dst));
        // Compare as numbers: byte-array ordering is a slow element-wise loop.
        if s < d || (s == d && src_port <= dst_port) {
            (
                FlowKey {
                    lo_addr: s.to_be_bytes(),
                    hi_addr: d.to_be_bytes(),
                    lo_port: src_port,
                    hi_port: dst_port,
                    protocol,
                },
                Side::Lo,
            )
        } else {
            (
                FlowKey {
                    lo_addr: d.to_be_bytes(),
                    hi_addr: s.to_be_bytes(),
                    lo_port: dst_port,
                    hi_port: src_port,
                    protocol,
                },
                Side::Hi,
            )
        }
    }

    pub fn protocol(&self) -> u8 {
        self.protocol
    }

    /// The (address, port) of one side.
    pub fn endpoint(&self, side: Side) -> (IpAddr, u16) {
        let (addr, port) = match side {
            Side::Lo => (self.lo_addr, self.lo_port),
            Side::Hi => (self.hi_addr, self.hi_port),
        };
        let v6 = std::net::Ipv6Addr::from(addr);
        let ip = match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        };
        (ip, port)
    }
}

impl Hash for FlowKey {
    // Four wide writes instead of a byte-by-byte slice hash.
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
