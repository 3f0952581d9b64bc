//! The running firewall, in four rooms:
//!
//! - [`packet`]: the packet path. One worker thread per queue (recv →
//!   decide → verdict), and the answers to rejected packets.
//! - [`operations`]: operating it. The control socket, the event stream,
//!   the metrics endpoint and the logging thread.
//! - [`lifecycle`]: settings, the state file, housekeeping (expiry,
//!   snapshots, the watchdog), start, reload and stop.
//! - [`shared`]: what the packet path and the operations both touch. The
//!   workers' counters and heartbeats, the drops ring, the event hub, the
//!   cluster's outbox and state, the log notices, the one rate limit and the
//!   one stop.
//! - [`cluster`]: with a `[cluster]` table, the thread that shares the
//!   connection table with the peer gateways over NATS.
//!
//! Arrows go one way (`tests/layers.rs` checks them). `shared` reaches no
//! other room. `packet`, `operations` and `cluster` reach only `shared`,
//! never each other. `lifecycle` starts and stops them all.

pub mod cluster;
pub mod lifecycle;
pub mod operations;
pub mod packet;
pub mod shared;

pub use cluster::ClusterSettings;
pub use lifecycle::daemon_table::{DaemonSettings, MetricsListen, Overflow, QueueSpec};
pub use lifecycle::settings::{DaemonArgs, LogFormatArg};
pub use lifecycle::{run, uninstall_iptables};
