//! How long each connection state lives without traffic (`[engine.timeouts]`).

use serde::Deserialize;

/// Seconds each connection state lives without traffic. Defaults are
/// nf_conntrack's.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    pub syn_sent: u32,
    pub syn_recv: u32,
    pub established: u32,
    pub fin_wait: u32,
    pub close_wait: u32,
    pub last_ack: u32,
    /// 2MSL.
    pub time_wait: u32,
    pub close: u32,
    /// Cap while data is in flight unacknowledged (nf_conntrack's "unacknowledged").
    pub unacknowledged: u32,
    pub udp_unreplied: u32,
    pub udp_replied: u32,
    pub icmp: u32,
    pub other: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            syn_sent: 120,
            syn_recv: 60,
            established: 432_000,
            fin_wait: 120,
            close_wait: 60,
            last_ack: 30,
            time_wait: 120,
            close: 10,
            unacknowledged: 300,
            udp_unreplied: 30,
            udp_replied: 120,
            icmp: 30,
            other: 600,
        }
    }
}
