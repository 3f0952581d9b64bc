//! The only code that touches sockets, threads and clocks.

pub mod daemon;
pub mod replay;
