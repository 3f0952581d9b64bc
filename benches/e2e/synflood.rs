//! A small spoofed SYN flood sender, for the flood benchmark (benches/flood.sh).
//!
//!   synflood DST_IP:PORT SRC_CIDR RATE COUNT [--seconds S]
//!
//! Sends COUNT TCP SYNs to DST_IP:PORT over a raw socket (IPPROTO_RAW, which
//! implies IP_HDRINCL), each from a random address of SRC_CIDR, a random source
//! port (1024-65535) and a random initial sequence number, with the options of
//! an ordinary SYN (MSS 1460, SACK permitted, window scale 7). RATE is in
//! packets per second; 0 sends as fast as the socket takes them. It stops after
//! COUNT packets or S seconds (default 10, at most 600), whichever comes first,
//! and prints one line:
//!
//!   sent N errors E seconds T rate R target_rate RATE dst DST src SRC_CIDR
//!
//! (`errors`: sends the kernel refused, e.g. ENOBUFS; they count toward COUNT.)
//!
//! IPv4 or IPv6 (both addresses of one family). For the lab only: the source
//! range and the destination must lie in the benchmarking ranges,
//! 198.18.0.0/15 (RFC 2544) or 2001:2::/48 (RFC 5180). Needs CAP_NET_RAW.

#![allow(clippy::disallowed_methods)] // not the core: tests, benchmarks and tools read clocks and start threads

#[path = "../support/mod.rs"]
mod support;

use conntrackd::wire::{build, TcpFlags};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::exit;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use support::Rng;

const USAGE: &str = "usage: synflood DST_IP:PORT SRC_CIDR RATE COUNT [--seconds S]";
/// Most packets sent between two looks at the clock.
const BATCH: u64 = 256;

/// An address range: `base` with its host bits cleared, and the prefix length.
#[derive(Clone, Copy, Debug)]
struct Cidr {
    base: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn parse(s: &str) -> Result<Cidr, String> {
        let (addr, len) = s.split_once('/').ok_or("SRC_CIDR: ADDR/LEN expected")?;
        let addr: IpAddr = addr.parse().map_err(|e| format!("SRC_CIDR address: {e}"))?;
        let prefix: u8 = len.parse().map_err(|e| format!("SRC_CIDR length: {e}"))?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        if prefix > bits {
            return Err(format!("SRC_CIDR length {prefix} > {bits}"));
        }
        let base = match addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(prefix))),
        };
        Ok(Cidr { base, prefix })
    }

    /// Whether all of `self` lies inside `outer`.
    fn within(&self, outer: &Cidr) -> bool {
        self.prefix >= outer.prefix && outer.contains(self.base)
    }

    fn contains(&self, a: IpAddr) -> bool {
        match (self.base, a) {
            (IpAddr::V4(b), IpAddr::V4(a)) => u32::from(a) & mask32(self.prefix) == u32::from(b),
            (IpAddr::V6(b), IpAddr::V6(a)) => u128::from(a) & mask128(self.prefix) == u128::from(b),
            _ => false,
        }
    }

    /// A random address of the range.
    fn pick(&self, rng: &mut Rng) -> IpAddr {
        match self.base {
            IpAddr::V4(b) => {
                let host = rng.next_u64() as u32 & !mask32(self.prefix);
                IpAddr::V4(Ipv4Addr::from(u32::from(b) | host))
            }
            IpAddr::V6(b) => {
                let r = (u128::from(rng.next_u64()) << 64) | u128::from(rng.next_u64());
                IpAddr::V6(Ipv6Addr::from(u128::from(b) | (r & !mask128(self.prefix))))
            }
        }
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.base, self.prefix)
    }
}

fn mask32(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask128(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

/// The benchmarking ranges: the only addresses this tool sends from or to.
fn lab_ranges() -> [Cidr; 2] {
    [
        Cidr::parse("198.18.0.0/15").expect("constant"),
        Cidr::parse("2001:2::/48").expect("constant"),
    ]
}

struct Args {
    dst: SocketAddr,
    src: Cidr,
    rate: u64,
    count: u64,
    seconds: f64,
}

fn parse_args() -> Result<Args, String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut positional = Vec::new();
    let mut seconds = 10.0_f64;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--seconds" {
            let s = it.next().ok_or("--seconds needs a value")?;
            seconds = s.parse().map_err(|e| format!("--seconds: {e}"))?;
        } else if a == "-h" || a == "--help" {
            return Err(String::new());
        } else {
            positional.push(a.as_str());
        }
    }
    let [dst, src, rate, count] = positional[..] else {
        return Err("four arguments expected".into());
    };
    let dst: SocketAddr = dst.parse().map_err(|e| format!("DST_IP:PORT: {e}"))?;
    let src = Cidr::parse(src)?;
    let rate: u64 = rate.parse().map_err(|e| format!("RATE: {e}"))?;
    let count: u64 = count.parse().map_err(|e| format!("COUNT: {e}"))?;
    if !(seconds > 0.0 && seconds <= 600.0) {
        return Err("--seconds: more than 0 and at most 600".into());
    }
    if src.base.is_ipv4() != dst.is_ipv4() {
        return Err("DST_IP and SRC_CIDR: one address family".into());
    }
    let ranges = lab_ranges();
    if !ranges.iter().any(|r| src.within(r)) {
        return Err(format!(
            "SRC_CIDR {src} is not inside 198.18.0.0/15 or 2001:2::/48"
        ));
    }
    if !ranges.iter().any(|r| r.contains(dst.ip())) {
        return Err(format!(
            "DST_IP {} is not inside 198.18.0.0/15 or 2001:2::/48",
            dst.ip()
        ));
    }
    Ok(Args {
        dst,
        src,
        rate,
        count,
        seconds,
    })
}

fn main() {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("synflood: {e}");
            }
            eprintln!("{USAGE}");
            exit(2);
        }
    };
    let domain = if a.dst.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    // IPPROTO_RAW: send-only, and the packet carries its own IP header
    // (IP_HDRINCL / IPV6_HDRINCL implied), so the source can be any address.
    let socket = match Socket::new(
        domain,
        Type::from(libc::SOCK_RAW),
        Some(Protocol::from(libc::IPPROTO_RAW)),
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("synflood: raw socket: {e} (needs CAP_NET_RAW)");
            exit(1);
        }
    };
    let _ = socket.set_send_buffer_size(4 << 20);
    // For a raw socket the port field of the address is not a port (IPv6 reads
    // it as the protocol): 0.
    let to = SockAddr::from(SocketAddr::new(a.dst.ip(), 0));

    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ (u64::from(std::process::id()) << 32);
    let mut rng = Rng(seed);
    let limit = Duration::from_secs_f64(a.seconds);
    let (mut sent, mut errors) = (0u64, 0u64);
    let mut first_error: Option<std::io::Error> = None;
    let start = Instant::now();
    loop {
        let attempted = sent + errors;
        if attempted >= a.count {
            break;
        }
        let elapsed = start.elapsed();
        if elapsed >= limit {
            break;
        }
        // Packets due by now: the pacing is on the total since the start, so a
        // late wake-up is caught up on, not lost.
        let due = if a.rate == 0 {
            a.count
        } else {
            ((elapsed.as_secs_f64() * a.rate as f64) as u64 + 1).min(a.count)
        };
        if attempted >= due {
            let next = Duration::from_secs_f64(due as f64 / a.rate as f64);
            std::thread::sleep(next.saturating_sub(elapsed).min(limit - elapsed));
            continue;
        }
        for _ in 0..(due - attempted).min(BATCH) {
            let r = rng.next_u64();
            let sport = 1024 + (r as u16) % (65535 - 1024 + 1);
            let isn = (r >> 32) as u32;
            let src = SocketAddr::new(a.src.pick(&mut rng), sport);
            let packet = build::tcp(src, a.dst)
                .flags(TcpFlags::SYN)
                .seq(isn)
                .window(64240)
                .mss(1460)
                .sack_permitted()
                .window_scale(7)
                .build();
            match socket.send_to(&packet, &to) {
                Ok(_) => sent += 1,
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if let Some(e) = first_error {
        eprintln!("synflood: {errors} sends failed, the first with: {e}");
    }
    println!(
        "sent {sent} errors {errors} seconds {secs:.3} rate {:.0} target_rate {} dst {} src {}",
        sent as f64 / secs.max(1e-9),
        a.rate,
        a.dst,
        a.src
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let lab = lab_ranges();
        let c = Cidr::parse("198.18.128.0/17").unwrap();
        assert!(c.within(&lab[0]));
        assert!(!c.contains("198.18.0.2".parse().unwrap()));
        assert!(!Cidr::parse("10.0.0.0/8").unwrap().within(&lab[0]));
        assert!(!Cidr::parse("198.18.0.0/14").unwrap().within(&lab[0]));
        let mut rng = Rng(1);
        for _ in 0..1000 {
            assert!(c.contains(c.pick(&mut rng)));
        }
        let six = Cidr::parse("2001:2:0:8000::/65").unwrap();
        assert!(six.within(&lab[1]));
        assert!(six.contains(six.pick(&mut rng)));
        assert_eq!(
            Cidr::parse("198.18.0.7/32").unwrap().pick(&mut rng),
            "198.18.0.7".parse::<IpAddr>().unwrap()
        );
    }
}
