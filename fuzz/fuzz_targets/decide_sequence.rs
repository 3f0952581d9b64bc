//! A sequence of packets through one engine: no panic, and the table's
//! counters stay consistent (half-open never exceeds the connection count).
#![no_main]

use conntrackd::engine::Context;
use conntrackd::policy::Policy;
use conntrackd::{Engine, EngineSettings, Timestamp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let settings = EngineSettings {
        max_connections: 64,
        max_half_open: 16,
        ..EngineSettings::default()
    };
    let engine = Engine::new(settings, Policy::allow_all());
    let ctx = Context::default();
    let mut now = 0u64;
    // Records: [len, time step, bytes...]
    let mut rest = data;
    while rest.len() >= 2 {
        let len = rest[0] as usize;
        now += rest[1] as u64;
        rest = &rest[2..];
        let take = len.min(rest.len());
        let (packet, tail) = rest.split_at(take);
        rest = tail;
        let _ = engine.decide(packet, &ctx, Timestamp::from_secs(now));
        assert!(engine.table().half_open() <= engine.table().len());
        assert!(engine.table().len() <= 64);
    }
    engine.expire(Timestamp::from_secs(now + 1_000_000));
    assert_eq!(engine.table().len(), 0);
    assert_eq!(engine.table().half_open(), 0);
});
