//! `[engine]`: the connection tracker's limits, timeouts and behaviour.
//!
//! Plain data, deserialised by [`crate::config`] from the rules file.

use serde::Deserialize;

pub use crate::conntrack::Timeouts;

/// `[engine]`: the connection tracker's limits and behaviour.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct EngineSettings {
    /// Most connections tracked at once (nf_conntrack_max).
    pub max_connections: usize,
    /// Most connections still in the handshake (SYN-flood cap).
    pub max_half_open: usize,
    /// Pick up TCP connections mid-stream from a non-SYN packet (nf_conntrack_tcp_loose).
    pub loose_pickup: bool,
    pub timeouts: Timeouts,
    pub adaptive: Adaptive,
    /// Where the SYN proxy answers new TCP connections with SYN cookies:
    /// besides the rules that say `synproxy = true`, every accepted one
    /// (`always`), or every one while half-open connections are many
    /// (`adaptive`, see [`SynproxyAdaptive`]).
    pub synproxy: SynproxyMode,
    pub synproxy_adaptive: SynproxyAdaptive,
    /// What the proxy tells a client before the server has answered, for a
    /// server it has not seen yet (it learns each server's own options).
    pub synproxy_defaults: SynproxyDefaults,
}

/// `[engine] synproxy`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SynproxyMode {
    /// Only the rules that say `synproxy = true`.
    #[default]
    Off,
    /// Every TCP connection the policy accepts.
    Always,
    /// Every accepted TCP connection while the half-open connections are
    /// above `start` of `max_half_open`, until they fall below `end` (pf's
    /// `set syncookies adaptive`).
    Adaptive,
}

/// `[engine.synproxy_adaptive]`: fractions of `max_half_open`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SynproxyAdaptive {
    pub start: f64,
    pub end: f64,
}

impl Default for SynproxyAdaptive {
    fn default() -> Self {
        // pf's defaults: on at 25 %, off again at 12.5 %.
        SynproxyAdaptive {
            start: 0.25,
            end: 0.125,
        }
    }
}

/// `[engine.synproxy_defaults]`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct SynproxyDefaults {
    /// The MSS the proxy announces (never more than the client's).
    pub mss: u16,
    /// The window scale the proxy announces (when the client scales).
    pub wscale: u8,
}

impl Default for SynproxyDefaults {
    fn default() -> Self {
        // Ethernet's MSS and Linux's usual scale for a 4-6 MB window.
        SynproxyDefaults {
            mss: 1460,
            wscale: 7,
        }
    }
}

/// `[engine.adaptive]`: adaptive timeouts, as pf's `adaptive.start` and
/// `adaptive.end`. While the table fills, the timeouts of unassured entries
/// (SYN_SENT, SYN_RECV, a loose pickup not yet answered, UDP/ICMP/other
/// flows never replied to) shrink, so that flood entries make room sooner:
/// unchanged up to `start`, then linearly down to `floor` seconds, reached at
/// `end`. The fill is the larger of entries / `max_connections` and, for a
/// half-open connection, half-open / `max_half_open`. Assured entries keep
/// their timeouts. `start = 1.0` turns it off.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Adaptive {
    pub start: f64,
    pub end: f64,
    /// Seconds; also the least an unassured entry gets at any fill.
    pub floor: u32,
}

impl Default for Adaptive {
    fn default() -> Self {
        // From 50 % full, down to 5 s at 90 %: 5 s leave a client's first two
        // SYN retransmissions (1 s, then 3 s) their chance.
        Adaptive {
            start: 0.5,
            end: 0.9,
            floor: 5,
        }
    }
}

impl Adaptive {
    /// `base` seconds at fill fraction `fill`.
    pub fn scale(&self, base: u32, fill: f64) -> u32 {
        if fill <= self.start {
            return base;
        }
        let floor = self.floor.min(base);
        let left = ((self.end - fill) / (self.end - self.start)).clamp(0.0, 1.0);
        floor + (f64::from(base - floor) * left) as u32
    }
}

impl Default for EngineSettings {
    fn default() -> Self {
        EngineSettings {
            max_connections: 262_144,
            max_half_open: 65_536,
            loose_pickup: false,
            timeouts: Timeouts::default(),
            adaptive: Adaptive::default(),
            synproxy: SynproxyMode::Off,
            synproxy_adaptive: SynproxyAdaptive::default(),
            synproxy_defaults: SynproxyDefaults::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adaptive_timeouts_shrink_linearly_between_start_and_end() {
        let a = Adaptive::default();
        assert_eq!(a.scale(120, 0.0), 120);
        assert_eq!(a.scale(120, 0.5), 120);
        // Halfway: halfway between 120 and the 5 s floor.
        assert_eq!(a.scale(120, 0.7), 62);
        assert_eq!(a.scale(120, 0.9), 5);
        assert_eq!(a.scale(120, 1.5), 5);
        // Never above the base, never below the floor (or the base, if smaller).
        assert_eq!(a.scale(3, 0.95), 3);
        let off = Adaptive { start: 1.0, ..a };
        assert_eq!(off.scale(120, 1.0), 120);
    }
}
