//! Which end of a connection sent a packet: the one that opened it, or the
//! other. (Not the key's [`Side`](super::Side): which address is lower says
//! nothing of who opened the connection.)

/// The role of an endpoint in its connection, and so the direction of a
/// packet by the role of its sender (nf_conntrack's original and reply
/// directions).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// Sent the connection's first packet (a TCP SYN).
    Originator,
    /// The endpoint that first packet went to.
    Responder,
}

impl Role {
    /// Both roles, in the order of per-direction arrays.
    pub const BOTH: [Role; 2] = [Role::Originator, Role::Responder];

    /// The other end.
    #[inline]
    pub const fn other(self) -> Role {
        match self {
            Role::Originator => Role::Responder,
            Role::Responder => Role::Originator,
        }
    }

    /// The index of this role in a per-direction array (`[originator, responder]`).
    #[inline]
    pub const fn index(self) -> usize {
        self as usize
    }
}
