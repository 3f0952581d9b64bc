//! TCP flags and the table of combinations a correct stack can send.

use crate::reason::Reason;
use std::fmt;

/// The TCP flag byte (CWR ECE URG ACK PSH RST SYN FIN).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;

    #[inline]
    pub const fn has(self, bits: u8) -> bool {
        self.0 & bits == bits
    }
    #[inline]
    pub const fn fin(self) -> bool {
        self.has(Self::FIN)
    }
    #[inline]
    pub const fn syn(self) -> bool {
        self.has(Self::SYN)
    }
    #[inline]
    pub const fn rst(self) -> bool {
        self.has(Self::RST)
    }
    #[inline]
    pub const fn ack(self) -> bool {
        self.has(Self::ACK)
    }

    /// Checks the combination against nf_conntrack's `tcp_valid_flags` list
    /// (PSH, ECE and CWR masked out): SYN, SYN|URG, SYN|ACK, RST, RST|ACK,
    /// FIN|ACK, FIN|ACK|URG, ACK, ACK|URG. Anything else is named.
    #[inline]
    pub fn validate(self) -> Result<(), Reason> {
        const S: u8 = TcpFlags::SYN;
        const F: u8 = TcpFlags::FIN;
        const R: u8 = TcpFlags::RST;
        const A: u8 = TcpFlags::ACK;
        const U: u8 = TcpFlags::URG;
        const P: u8 = TcpFlags::PSH;
        let core = self.0 & (S | F | R | A | U);
        match core {
            x if x == S || x == S | U || x == S | A => Ok(()),
            x if x == R || x == R | A => Ok(()),
            x if x == F | A || x == F | A | U => Ok(()),
            x if x == A || x == A | U => Ok(()),
            _ => Err(self.name_invalid()),
        }
        .map_err(|r| {
            // Keep the more specific PSH-only name even though PSH is masked.
            if r == Reason::NullFlags && self.0 & P != 0 {
                Reason::PshOnly
            } else {
                r
            }
        })
    }

    fn name_invalid(self) -> Reason {
        let f = self.0;
        let has = |b: u8| f & b != 0;
        if has(Self::SYN) && has(Self::FIN) {
            Reason::SynFin
        } else if has(Self::SYN) && has(Self::RST) {
            Reason::SynRst
        } else if has(Self::FIN) && has(Self::RST) {
            Reason::FinRst
        } else if !has(Self::ACK) && has(Self::FIN) && has(Self::PSH) && has(Self::URG) {
            Reason::Xmas
        } else if f & (Self::SYN | Self::FIN | Self::RST | Self::ACK | Self::URG) == 0 {
            Reason::NullFlags
        } else if has(Self::FIN) && !has(Self::ACK) {
            Reason::FinWithoutAck
        } else if f & (Self::SYN | Self::FIN | Self::RST | Self::ACK | Self::URG) == Self::URG {
            Reason::UrgOnly
        } else {
            Reason::InvalidFlags
        }
    }
}

impl fmt::Display for TcpFlags {
    /// tcpdump-like letters: `S`, `S.`, `F.`, `R`, `P.`, `.` for a bare ACK.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::with_capacity(8);
        for (bit, c) in [
            (Self::SYN, 'S'),
            (Self::FIN, 'F'),
            (Self::RST, 'R'),
            (Self::PSH, 'P'),
            (Self::URG, 'U'),
            (Self::ECE, 'E'),
            (Self::CWR, 'W'),
            (Self::ACK, '.'),
        ] {
            if self.0 & bit != 0 {
                s.push(c);
            }
        }
        if s.is_empty() {
            s.push_str("none");
        }
        f.write_str(&s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const S: u8 = TcpFlags::SYN;
    const F: u8 = TcpFlags::FIN;
    const R: u8 = TcpFlags::RST;
    const A: u8 = TcpFlags::ACK;
    const U: u8 = TcpFlags::URG;
    const P: u8 = TcpFlags::PSH;
    const E: u8 = TcpFlags::ECE;
    const W: u8 = TcpFlags::CWR;

    #[test]
    fn nf_conntrack_valid_list_is_exact() {
        // Exhaustive over the five flags that matter, with every PSH/ECE/CWR mix.
        let valid = [S, S | U, S | A, R, R | A, F | A, F | A | U, A, A | U];
        for core in 0u8..=0x3f {
            if core & P != 0 {
                continue;
            }
            for extra in [0, P, E, W, P | E | W] {
                let flags = TcpFlags(core | extra);
                assert_eq!(
                    flags.validate().is_ok(),
                    valid.contains(&core),
                    "flags {flags} ({:#04x})",
                    flags.0
                );
            }
        }
    }

    #[test]
    fn invalid_combinations_are_named() {
        let cases = [
            (S | F, Reason::SynFin),
            (S | F | P, Reason::SynFin),
            (S | F | R, Reason::SynFin),
            (S | F | U, Reason::SynFin),
            (S | F | A, Reason::SynFin),
            (S | R, Reason::SynRst),
            (F | R, Reason::FinRst),
            (F | R | A, Reason::FinRst),
            (F | P | U, Reason::Xmas),
            (0, Reason::NullFlags),
            (E | W, Reason::NullFlags),
            (F, Reason::FinWithoutAck),
            (F | P, Reason::FinWithoutAck),
            (U, Reason::UrgOnly),
            (P, Reason::PshOnly),
            (S | A | U, Reason::InvalidFlags),
            (R | A | U, Reason::InvalidFlags),
        ];
        for (bits, reason) in cases {
            assert_eq!(TcpFlags(bits).validate(), Err(reason), "{}", TcpFlags(bits));
        }
    }
}
