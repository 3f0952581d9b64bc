//! Connection tracking: the key, the table, and per-protocol state.

pub mod key;
mod role;
pub mod sources;
pub mod state;
pub mod table;
pub mod tcp;
mod timeouts;

pub use key::{FlowKey, Key4, Key6, Side};
pub use role::Role;
pub use table::{Conn, ConnState, Table, Traffic};
pub use timeouts::Timeouts;
