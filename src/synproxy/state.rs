//! What the proxy keeps of a connection it opened, beside its table entry.

use super::cookie::CookieData;
use super::options::SegmentView;
use super::translate::Translation;
use crate::time::Timestamp;

/// A proxied connection's proxy state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proxied {
    /// The client's ACK brought a valid cookie and the proxy sent the
    /// server its SYN; the server's SYN+ACK is awaited. What the handshake
    /// with the server needs of the client's ACK is kept until then.
    Opening {
        cookie: CookieData,
        client_ack: SegmentView,
        /// When the SYN went to the server (first time).
        since: Timestamp,
        /// When it went last.
        last_syn: Timestamp,
    },
    /// Both handshakes are done: every packet is translated.
    Open(Translation),
}
