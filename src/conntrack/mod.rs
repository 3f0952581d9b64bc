//! Connection tracking: the key, the table, and per-protocol state.

pub mod key;
pub mod table;
pub mod tcp;

pub use key::{FlowKey, Key4, Key6, Side};
pub use table::{Conn, ConnState, Table};
