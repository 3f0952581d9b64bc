//! Adapters to the kernel, and nothing else: the NFQUEUE queues and their
//! protocol, the conntrack table over ctnetlink (read, and written for a
//! proxied connection handed over), iptables, interface names,
//! the raw sockets that send reject answers.
//!
//! These modules speak the kernel's protocols; they know nothing of the
//! daemon that runs them. They may use the sans-IO core's types (a verdict,
//! a protocol number), never the other way round.

pub mod ctnetlink;
pub mod handover;
pub mod ifnames;
pub mod iptables;
pub mod netlink;
pub mod nfqueue;
pub mod reject;
