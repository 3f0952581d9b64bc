//! conntrackd: a stateful TCP connection-tracking firewall for Linux gateways.
//!
//! # The sans-IO contract
//!
//! The engine ([`wire`] → [`conntrack`] → [`policy`], joined in [`engine`])
//! does no I/O and reads no clock. [`Engine::decide`] takes one IP packet as
//! bytes, what the caller knows about it, and the current time, and returns a
//! [`Decision`]: accept or drop, with a [`Reason`] and the state transition.
//! [`Engine::expire`] takes the time too. Only the shells touch sockets,
//! threads and clocks: [`kernel`] (adapters to the kernel's NFQUEUE,
//! ctnetlink and iptables), [`daemon`] (the running firewall, whose workers
//! call the engine) and [`replay`] (captures through the same engine, which
//! is why a replayed capture is a faithful oracle of the live path).
//!
//! The core reads no file either: [`config`] parses the rules file's text
//! it is given, and [`rules_file`] (a shell) reads it from disk.
//!
//! Arrows point down only: the core never names a shell, `tests/layers.rs`
//! checks every module's imports, and `clippy.toml` bans reading a clock or
//! starting a thread outside the shells.

// The sans-IO core. Layers, each using only those below it:
// config → engine → policy → conntrack → wire, with reason and time beside;
// cluster (the gateways' messages about connections) beside the engine;
// synproxy (the SYN proxy's cookies and translation) on wire and time.
pub mod cluster;
pub mod config;
pub mod conntrack;
pub mod engine;
pub mod policy;
pub mod reason;
pub mod synproxy;
pub mod time;
pub mod wire;

// The shells: the only code with sockets, threads, files and clocks. The
// core may not read a clock or start a thread: clippy.toml bans those calls,
// and only these modules are let off.
pub mod cli;
#[allow(clippy::disallowed_methods)]
pub mod daemon;
#[allow(clippy::disallowed_methods)]
pub mod kernel;
#[allow(clippy::disallowed_methods)]
pub mod replay;
pub mod rules_file;

pub use config::{Config, ConfigError, EngineSettings};
pub use engine::{Context, Decision, Engine};
pub use reason::{Counters, Reason, Verdict};
pub use time::Timestamp;
