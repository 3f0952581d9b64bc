//! The only code that touches sockets, threads and clocks.

pub mod ctnetlink;
pub mod daemon;
pub mod ifnames;
pub mod iptables;
pub mod logging;
pub mod netlink;
pub mod nfqueue;
pub mod replay;
