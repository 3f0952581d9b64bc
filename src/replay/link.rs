//! Link layers: from a captured frame to the IP packet inside it.
//!
//! Supported: Ethernet (with any number of 802.1Q / 802.1ad / QinQ tags),
//! raw IP (LINKTYPE_RAW 101, LINKTYPE_IPV4 228, LINKTYPE_IPV6 229), Linux
//! cooked capture v1 (SLL, 113) and v2 (SLL2, 276), and BSD loopback (NULL 0,
//! LOOP 108). Frames that do not carry IPv4 or IPv6 (ARP, LLDP, ...) are
//! skipped, not errors.

use pcap_file::DataLink;
use std::fmt;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
/// 802.1Q, 802.1ad (QinQ outer tag) and the two pre-standard QinQ tags.
const VLAN_TAGS: [u16; 4] = [0x8100, 0x88a8, 0x9100, 0x9200];
/// ARPHRD_NETLINK: an SLL "protocol" is then a netlink family, not an ethertype.
const ARPHRD_NETLINK: u16 = 824;

/// A link layer replay can decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    Ethernet,
    /// Raw IP: the version nibble says which.
    Raw,
    Sll,
    Sll2,
    /// BSD loopback: a 4-byte address family in the capturing host's byte order.
    Null,
    /// OpenBSD loopback: the same in network byte order.
    Loop,
}

impl Link {
    /// The decoder for a capture's link type; `Err` names the unsupported type.
    pub fn from_datalink(datalink: DataLink) -> Result<Link, String> {
        Ok(match datalink {
            DataLink::ETHERNET => Link::Ethernet,
            DataLink::RAW | DataLink::IPV4 | DataLink::IPV6 => Link::Raw,
            DataLink::LINUX_SLL => Link::Sll,
            DataLink::LINUX_SLL2 => Link::Sll2,
            DataLink::NULL => Link::Null,
            DataLink::LOOP => Link::Loop,
            other => return Err(link_type_name(other)),
        })
    }
}

/// `105 (IEEE802_11)`, or just the number when pcap-file does not know it.
pub fn link_type_name(datalink: DataLink) -> String {
    let number = u32::from(datalink);
    match datalink {
        DataLink::Unknown(_) => number.to_string(),
        known => format!("{number} ({known:?})"),
    }
}

/// Why a frame was not given to the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Skip {
    /// An Ethernet/SLL frame of another protocol (the ethertype), or an
    /// 802.3 frame with a length field instead (values below 0x0600).
    NonIp(u16),
    /// A loopback frame of another address family.
    NonIpFamily(u32),
    /// An SLL frame of a netlink capture.
    Netlink,
    /// Shorter than its own link-layer header.
    LinkTruncated,
}

impl Skip {
    /// Stable snake_case name, as reasons have.
    pub fn name(self) -> &'static str {
        match self {
            Skip::NonIp(_) | Skip::NonIpFamily(_) | Skip::Netlink => "non_ip",
            Skip::LinkTruncated => "link_truncated",
        }
    }

    /// The ethertype, for `NonIp`.
    pub fn ethertype(self) -> Option<u16> {
        match self {
            Skip::NonIp(t) if t >= 0x0600 => Some(t),
            _ => None,
        }
    }
}

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Skip::NonIp(t) if t < 0x0600 => f.write_str("non-IP frame (802.3 with LLC)"),
            Skip::NonIp(t) => match ethertype_name(t) {
                Some(name) => write!(f, "non-IP frame ({name}, ethertype 0x{t:04x})"),
                None => write!(f, "non-IP frame (ethertype 0x{t:04x})"),
            },
            Skip::NonIpFamily(af) => write!(f, "non-IP frame (address family {af})"),
            Skip::Netlink => f.write_str("non-IP frame (netlink)"),
            Skip::LinkTruncated => f.write_str("frame shorter than its link-layer header"),
        }
    }
}

fn ethertype_name(t: u16) -> Option<&'static str> {
    Some(match t {
        0x0806 => "ARP",
        0x0842 => "Wake-on-LAN",
        0x8035 => "RARP",
        0x809b => "AppleTalk",
        0x8808 => "Ethernet flow control",
        0x8847 | 0x8848 => "MPLS",
        0x8863 => "PPPoE discovery",
        0x8864 => "PPPoE session",
        0x888e => "EAPOL",
        0x88cc => "LLDP",
        0x88e5 => "MACsec",
        0x88f7 => "PTP",
        0x8902 => "CFM",
        _ => return None,
    })
}

/// Where the IP packet sits in a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded {
    /// The IP packet starts `offset` bytes into the frame.
    Ip {
        offset: usize,
    },
    Skip(Skip),
}

impl Link {
    pub fn decode(self, frame: &[u8]) -> Decoded {
        match self {
            Link::Raw => Decoded::Ip { offset: 0 },
            Link::Ethernet => {
                let Some(t) = be16(frame, 12) else {
                    return Decoded::Skip(Skip::LinkTruncated);
                };
                ethertype(frame, 14, t)
            }
            Link::Sll => {
                let (Some(hatype), Some(t)) = (be16(frame, 2), be16(frame, 14)) else {
                    return Decoded::Skip(Skip::LinkTruncated);
                };
                if hatype == ARPHRD_NETLINK {
                    return Decoded::Skip(Skip::Netlink);
                }
                ethertype(frame, 16, t)
            }
            Link::Sll2 => {
                let (Some(t), Some(hatype)) = (be16(frame, 0), be16(frame, 8)) else {
                    return Decoded::Skip(Skip::LinkTruncated);
                };
                if frame.len() < 20 {
                    return Decoded::Skip(Skip::LinkTruncated);
                }
                if hatype == ARPHRD_NETLINK {
                    return Decoded::Skip(Skip::Netlink);
                }
                ethertype(frame, 20, t)
            }
            Link::Null | Link::Loop => {
                let Some(raw) = frame.get(..4) else {
                    return Decoded::Skip(Skip::LinkTruncated);
                };
                let raw = [raw[0], raw[1], raw[2], raw[3]];
                // NULL is in the capturing host's byte order: accept either.
                let candidates = if self == Link::Loop {
                    [u32::from_be_bytes(raw), u32::from_be_bytes(raw)]
                } else {
                    [u32::from_le_bytes(raw), u32::from_be_bytes(raw)]
                };
                for af in candidates {
                    match af {
                        // AF_INET everywhere; AF_INET6 on Linux, NetBSD/OpenBSD, FreeBSD, macOS.
                        2 | 10 | 24 | 28 | 30 => return Decoded::Ip { offset: 4 },
                        _ => {}
                    }
                }
                Decoded::Skip(Skip::NonIpFamily(candidates[0]))
            }
        }
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    let s = b.get(at..at + 2)?;
    Some(u16::from_be_bytes([s[0], s[1]]))
}

/// Follows VLAN tags from `offset`, where the payload of ethertype `t` starts.
fn ethertype(frame: &[u8], mut offset: usize, mut t: u16) -> Decoded {
    while VLAN_TAGS.contains(&t) {
        // Tag: 2 bytes of TCI, then the next ethertype.
        match be16(frame, offset + 2) {
            Some(next) => t = next,
            None => return Decoded::Skip(Skip::LinkTruncated),
        }
        offset += 4;
    }
    match t {
        ETHERTYPE_IPV4 | ETHERTYPE_IPV6 => Decoded::Ip { offset },
        other => Decoded::Skip(Skip::NonIp(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth(tags: &[u16], t: u16) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        for tag in tags {
            f.extend_from_slice(&tag.to_be_bytes());
            f.extend_from_slice(&[0, 7]);
        }
        f.extend_from_slice(&t.to_be_bytes());
        f.extend_from_slice(&[0x45, 0]);
        f
    }

    #[test]
    fn ethernet_and_vlan_tags() {
        assert_eq!(
            Link::Ethernet.decode(&eth(&[], 0x0800)),
            Decoded::Ip { offset: 14 }
        );
        assert_eq!(
            Link::Ethernet.decode(&eth(&[0x8100], 0x86dd)),
            Decoded::Ip { offset: 18 }
        );
        assert_eq!(
            Link::Ethernet.decode(&eth(&[0x88a8, 0x8100], 0x0800)),
            Decoded::Ip { offset: 22 }
        );
        assert_eq!(
            Link::Ethernet.decode(&eth(&[], 0x0806)),
            Decoded::Skip(Skip::NonIp(0x0806))
        );
        assert_eq!(
            Link::Ethernet.decode(&[0; 13]),
            Decoded::Skip(Skip::LinkTruncated)
        );
        // A tag cut short.
        assert_eq!(
            Link::Ethernet.decode(&eth(&[0x8100], 0x0800)[..16]),
            Decoded::Skip(Skip::LinkTruncated)
        );
    }

    #[test]
    fn loopback_families() {
        assert_eq!(
            Link::Null.decode(&[2, 0, 0, 0, 0x45]),
            Decoded::Ip { offset: 4 }
        );
        assert_eq!(
            Link::Null.decode(&[0, 0, 0, 30, 0x60]),
            Decoded::Ip { offset: 4 }
        );
        assert_eq!(
            Link::Loop.decode(&[0, 0, 0, 24, 0x60]),
            Decoded::Ip { offset: 4 }
        );
        assert_eq!(
            Link::Loop.decode(&[7, 0, 0, 0]),
            Decoded::Skip(Skip::NonIpFamily(0x0700_0000))
        );
    }

    #[test]
    fn names() {
        assert_eq!(link_type_name(DataLink::from(105)), "105 (IEEE802_11)");
        assert_eq!(link_type_name(DataLink::from(4000)), "4000");
        assert_eq!(
            Skip::NonIp(0x0806).to_string(),
            "non-IP frame (ARP, ethertype 0x0806)"
        );
    }
}
