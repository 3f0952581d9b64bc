//! `[engine]`: the connection tracker's limits, timeouts and behaviour.
//!
//! Plain data, deserialised by [`crate::config`] from the rules file.

use serde::Deserialize;

pub use crate::conntrack::Timeouts;

/// `[engine]`: the connection tracker's limits and behaviour.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSettings {
    /// Most connections tracked at once (nf_conntrack_max).
    pub max_connections: usize,
    /// Most connections still in the handshake (SYN-flood cap).
    pub max_half_open: usize,
    /// Pick up TCP connections mid-stream from a non-SYN packet (nf_conntrack_tcp_loose).
    pub loose_pickup: bool,
    pub timeouts: Timeouts,
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            max_connections: 262_144,
            max_half_open: 65_536,
            loose_pickup: false,
            timeouts: Timeouts::default(),
        }
    }
}
