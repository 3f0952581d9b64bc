//! The SYN proxy's arithmetic (issue 21): the pure core, no I/O.
//!
//! A SYN proxy answers a client's SYN itself with a SYN+ACK whose initial
//! sequence number is a SYN cookie ([`cookie`]), keeps nothing for it, and
//! opens the connection to the server only when the client's ACK returns a
//! valid cookie: then it sends the server a SYN with the client's options,
//! answers the server's SYN+ACK with an ACK, and tells the client the
//! server's window ([`options`] builds those four packets). The client and
//! the server chose different initial sequence numbers (the cookie, the
//! server's own), so every later packet of the connection is translated
//! ([`translate`]). The window scale and MSS the client is told before the
//! server has said anything come from what earlier handshakes with that
//! server showed ([`learned`]).
//!
//! Like the rest of the core, nothing here reads a clock, a file or a random
//! source: the time is an argument ([`Timestamp`](crate::time::Timestamp))
//! and so are the keys (the daemon draws them from the kernel's random
//! source). The sending belongs to the daemon.

pub mod cookie;
pub mod learned;
pub mod options;
mod packet;
pub mod state;
#[cfg(test)]
mod testing;
pub mod translate;

pub use cookie::{Cookie, CookieData, CookieError, CookieKeys, TimestampOptions, Tuple};
pub use learned::{LearnedOptions, ServerOptionsCache};
pub use options::{parse_options, SEGMENT_MAX};
pub use options::{read_segment, BuildError, Segment, SegmentView, TcpOptions, Timestamps};
pub use packet::PacketError;
pub use state::Proxied;
pub use translate::{Direction, TranslateError, Translation, WindowScales};
