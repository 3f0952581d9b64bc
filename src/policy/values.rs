//! Value types of the rules file: CIDRs, port ranges, protocols, lists.

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;
use std::fmt;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::str::FromStr;

/// An IPv4 or IPv6 network, `198.18.0.0/15` or `2001:db8::/32` (a bare address is a /32 or /128).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?}: prefix length must be 0..={max}"))?,
            None => max,
        };
        // Host bits are cleared: 198.18.1.5/15 is 198.18.0.0/15, as
        // iptables, pf and nftables read it (a rules file warns of it:
        // `Cidr::host_bits`).
        let cidr = Cidr { addr, prefix };
        Ok(Cidr {
            addr: cidr.network(),
            prefix,
        })
    }
}

impl Cidr {
    /// Why `s` is worth a warning: it has host bits set (`198.18.1.5/15`
    /// matches all of 198.18.0.0/15, almost always a typo for one host or
    /// a smaller network). `None` when it is a network, a host, or not a
    /// CIDR at all (the parse says why then).
    pub fn host_bits(s: &str) -> Option<String> {
        let (addr, prefix) = s.split_once('/')?;
        let addr: IpAddr = addr.trim().parse().ok()?;
        let prefix: u8 = prefix.trim().parse().ok()?;
        let network = s.parse::<Cidr>().ok()?.addr;
        (network != addr).then(|| {
            format!(
                "{s:?} has host bits set: it is read as the network {network}/{prefix}; \
                 write that, or {addr} alone for the one host"
            )
        })
    }
}

impl Cidr {
    /// The address with its host bits cleared.
    fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// A port or an inclusive range: `22` or `"8000-8080"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("{s:?} is not a port (0-65535) or a range \"first-last\"");
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let first: u16 = a.trim().parse().map_err(|_| bad())?;
        let last: u16 = b.trim().parse().map_err(|_| bad())?;
        if first > last {
            return Err(format!("port range {s:?} is reversed"));
        }
        Ok(PortRange { first, last })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// `"tcp"`, `"udp"`, `"icmp"`, `"icmpv6"`, `"any"`, or an IP protocol number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtoSpec(Option<u8>);

impl ProtoSpec {
    pub fn number(self) -> Option<u8> {
        self.0
    }
}

impl FromStr for ProtoSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(ProtoSpec(match s.to_ascii_lowercase().as_str() {
            "any" => None,
            "tcp" => Some(6),
            "udp" => Some(17),
            "icmp" => Some(1),
            "icmpv6" | "ipv6-icmp" => Some(58),
            "gre" => Some(47),
            "esp" => Some(50),
            "sctp" => Some(132),
            other => Some(other.parse::<u8>().map_err(|_| {
                format!("unknown protocol {s:?}: use tcp, udp, icmp, icmpv6, any or a number")
            })?),
        }))
    }
}

/// A value written either as a string or an integer in TOML.
trait FromScalar: Sized {
    fn from_text(s: &str) -> Result<Self, String>;
    fn from_int(n: i64) -> Result<Self, String> {
        Self::from_text(&n.to_string())
    }
    const EXPECTING: &'static str;
}

impl FromScalar for Cidr {
    fn from_text(s: &str) -> Result<Self, String> {
        s.parse()
    }
    fn from_int(_: i64) -> Result<Self, String> {
        Err("expected an address or CIDR string".into())
    }
    const EXPECTING: &'static str = "an address or CIDR string, or a list of them";
}

impl FromScalar for PortRange {
    fn from_text(s: &str) -> Result<Self, String> {
        s.parse()
    }
    const EXPECTING: &'static str = "a port, a \"first-last\" range, or a list of them";
}

impl FromScalar for ProtoSpec {
    fn from_text(s: &str) -> Result<Self, String> {
        s.parse()
    }
    const EXPECTING: &'static str = "a protocol name or number";
}

impl FromScalar for String {
    fn from_text(s: &str) -> Result<Self, String> {
        Ok(s.to_string())
    }
    fn from_int(n: i64) -> Result<Self, String> {
        Err(format!("expected a name, found the number {n}"))
    }
    const EXPECTING: &'static str = "a name or a list of names";
}

/// For serde's `deserialize_with`: a list of names, which may be written as
/// one (`hooks = "FORWARD"` or `hooks = ["FORWARD", "INPUT"]`), as every
/// list key of the rules file.
pub fn one_or_many_strings<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    List::<String>::deserialize(d).map(|list| list.0)
}

struct ScalarVisitor<T>(PhantomData<T>);

impl<'de, T: FromScalar> Visitor<'de> for ScalarVisitor<T> {
    type Value = T;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::EXPECTING)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        T::from_text(v).map_err(E::custom)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        T::from_int(v).map_err(E::custom)
    }
}

impl<'de> Deserialize<'de> for ProtoSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor(PhantomData))
    }
}

/// One value or a list of values (`src = "10.0.0.0/8"` or `src = ["10.0.0.0/8", "::1"]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct List<T>(pub Vec<T>);

impl<T> Default for List<T> {
    fn default() -> Self {
        List(Vec::new())
    }
}

struct ListVisitor<T>(PhantomData<T>);

impl<'de, T: FromScalar> Visitor<'de> for ListVisitor<T> {
    type Value = List<T>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::EXPECTING)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<List<T>, E> {
        T::from_text(v).map(|t| List(vec![t])).map_err(E::custom)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<List<T>, E> {
        T::from_int(v).map(|t| List(vec![t])).map_err(E::custom)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<List<T>, A::Error> {
        let mut out = Vec::new();
        while let Some(Scalar(t)) = seq.next_element::<Scalar<T>>()? {
            out.push(t);
        }
        Ok(List(out))
    }
}

struct Scalar<T>(T);

impl<'de, T: FromScalar> Deserialize<'de> for Scalar<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ScalarVisitor(PhantomData)).map(Scalar)
    }
}

impl<'de, T: FromScalar> Deserialize<'de> for List<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ListVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cidr_with_host_bits_set_is_its_network_with_a_warning() {
        let c = "198.18.1.5/15".parse::<Cidr>().unwrap();
        assert_eq!(c.to_string(), "198.18.0.0/15");
        assert!(c.contains([198, 19, 255, 1].into()) && !c.contains([198, 20, 0, 1].into()));
        let e = Cidr::host_bits("198.18.1.5/15").unwrap();
        assert!(e.contains("host bits set"), "{e}");
        assert!(e.contains("the network 198.18.0.0/15"), "{e}");
        assert!(e.contains("198.18.1.5 alone"), "{e}");
        let e = Cidr::host_bits("2001:db8::1/32").unwrap();
        assert!(e.contains("the network 2001:db8::/32"), "{e}");
        // Networks, single hosts and /0 are as before.
        for ok in [
            "198.18.0.0/15",
            "198.18.1.5",
            "198.18.1.5/32",
            "0.0.0.0/0",
            "2001:db8::/32",
            "::/0",
            "2001:db8::1",
        ] {
            assert!(ok.parse::<Cidr>().is_ok(), "{ok}");
            assert_eq!(Cidr::host_bits(ok), None, "{ok}");
        }
        // Even /0 with an address: everything, and a warning.
        assert_eq!(
            "1.2.3.4/0".parse::<Cidr>().unwrap().to_string(),
            "0.0.0.0/0"
        );
        assert!(Cidr::host_bits("1.2.3.4/0").is_some());
        assert!("198.18.1.5/33".parse::<Cidr>().is_err());
    }
}
