//! wire::parse must never panic, whatever the bytes and framing.
#![no_main]

use conntrackd::wire::{parse, Checksums, Framing};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let (head, bytes) = data.split_at(1);
    let framing = Framing {
        wire_len: (head[0] & 1 == 1).then(|| bytes.len() as u32 + (head[0] >> 1) as u32),
        checksums: if head[0] & 0x80 != 0 {
            Checksums::Verify
        } else {
            Checksums::NotComputed
        },
    };
    let _ = parse(bytes, framing);
});
