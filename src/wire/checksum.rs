//! The Internet checksum (RFC 1071) over a pseudo-header and a segment.
//! Hand-written: it is on the hot path and trivially small.

#[derive(Clone, Copy, Debug)]
pub(super) struct Pseudo {
    pub v6: bool,
    /// Sum of the pseudo-header without the length.
    partial: u64,
}

fn sum_bytes(mut acc: u64, bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let v = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        // Add the two 32-bit halves separately so the 64-bit accumulator never overflows.
        acc += v >> 32;
        acc += v & 0xffff_ffff;
    }
    let mut rest = chunks.remainder();
    while rest.len() >= 2 {
        acc += u16::from_be_bytes([rest[0], rest[1]]) as u64;
        rest = &rest[2..];
    }
    if let [last] = rest {
        acc += (*last as u64) << 8;
    }
    acc
}

fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

impl Pseudo {
    pub fn v4(src: [u8; 4], dst: [u8; 4], protocol: u8) -> Self {
        let partial = sum_bytes(sum_bytes(protocol as u64, &src), &dst);
        Pseudo { v6: false, partial }
    }

    pub fn v6(src: [u8; 16], dst: [u8; 16], next_header: u8) -> Self {
        let partial = sum_bytes(sum_bytes(next_header as u64, &src), &dst);
        Pseudo { v6: true, partial }
    }

    /// True when the segment (with its checksum field) sums to all ones.
    pub fn verify(&self, segment: &[u8]) -> bool {
        fold(sum_bytes(self.partial + segment.len() as u64, segment)) == 0xffff
    }
}

/// ICMPv4: no pseudo-header.
pub(super) fn verify_plain(bytes: &[u8]) -> bool {
    fold(sum_bytes(0, bytes)) == 0xffff
}
