//! What two gateways tell each other about the connections they forward:
//! the cluster's messages, as bytes (sans-IO; the daemon's `cluster` room
//! carries them over NATS).
//!
//! A message is a header, a kind-specific body and a checksum:
//!
//! ```text
//! magic     4  "CTDC"
//! version   2  FORMAT_VERSION
//! kind      1  1 changes, 2 hello, 3 bulk request, 4 bulk chunk
//! flags     1  bulk chunk: bit 0 set on the last chunk of a copy
//! node      1 + n  the sender's name (see `valid_node`)
//! sequence  8  the sender's count of messages of this kind
//! sent_ms   8  the sender's wall clock when it was sent, Unix ms
//! count     4  records in the body
//! body         changes, bulk chunk: `count` records, each an op byte
//!                (1 upsert, 2 remove) and the connection as the state file
//!                keeps it (`conntrack::state::encode_entry`: a connection
//!                the SYN proxy opened with its translation)
//!              hello: the policy digest (32), the sender's connections
//!                (8), ready (1: it holds the table)
//!              bulk request: nothing (the reply goes to NATS's reply subject)
//! crc32     4  of every byte before it
//! ```
//!
//! All integers are little-endian. A message that does not add up (length,
//! checksum, version, a record) is refused whole: nothing of it is applied.

use crate::conntrack::state::{decode_entry, encode_entry, MAX_RECORD};
use crate::conntrack::{Conn, FlowKey};
use crate::synproxy::Translation;
use crate::time::Timestamp;
use sha2::{Digest, Sha256};

pub const MAGIC: [u8; 4] = *b"CTDC";
/// Bumped whenever the layout changes: a node refuses another version.
pub const FORMAT_VERSION: u16 = 1;
/// The largest message a node sends (NATS's default payload limit is 1 MiB;
/// smaller batches keep one message's latency low).
pub const MAX_MESSAGE: usize = 64 * 1024;
/// The longest node name.
pub const MAX_NODE: usize = 32;
const TRAILER: usize = 4;
const F_LAST: u8 = 1;

/// What a message says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Connections the sender forwards changed.
    Changes = 1,
    /// The sender is alive: its policy digest, table size and readiness.
    Hello = 2,
    /// The sender asks for a copy of every connection its peers forward.
    BulkRequest = 3,
    /// One part of such a copy.
    BulkChunk = 4,
}

impl Kind {
    fn from_byte(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Changes,
            2 => Kind::Hello,
            3 => Kind::BulkRequest,
            4 => Kind::BulkChunk,
            _ => return None,
        })
    }
}

/// What a record does to the receiver's copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// The connection exists in this state (new or changed).
    Upsert = 1,
    /// The sender removed it.
    Remove = 2,
}

/// Who sent a message, and when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Header {
    pub kind: Kind,
    pub node: String,
    pub sequence: u64,
    pub sent_ms: u64,
    /// The last chunk of a bulk copy.
    pub last: bool,
}

/// A node's announcement (see [`Kind::Hello`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello {
    /// Of its policy and engine settings (see [`digest`]).
    pub digest: [u8; 32],
    pub connections: u64,
    /// It holds the table (its bulk copy is done).
    pub ready: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// Each with the SYN proxy's translation of a proxied connection.
    Records(Vec<(Op, FlowKey, Conn, Option<Translation>)>),
    Hello(Hello),
    BulkRequest,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub header: Header,
    pub body: Body,
}

/// Why a message was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("not a conntrackd cluster message (bad magic)")]
    Magic,
    #[error("format version {0}, this conntrackd speaks version {FORMAT_VERSION}")]
    Version(u16),
    #[error("truncated")]
    Truncated,
    #[error("checksum mismatch")]
    Checksum,
    #[error("unknown message kind {0}")]
    Kind(u8),
    #[error("invalid node name")]
    Node,
    #[error("record {0} is invalid")]
    Record(u32),
    #[error("bytes left over after the body")]
    Trailing,
}

/// Whether `name` can name a node: 1 to 32 ASCII letters, digits, `-` or
/// `_` (it is part of NATS subjects).
pub fn valid_node(name: &str) -> bool {
    (1..=MAX_NODE).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A digest of what decides packets: two nodes with the same digest judge
/// every packet alike. `judged` is the policy and engine settings as the
/// caller renders them (their `Debug` output in the daemon): nodes of
/// one conntrackd version render alike.
pub fn digest(judged: &str) -> [u8; 32] {
    Sha256::digest(judged.as_bytes()).into()
}

/// Builds one message of records ([`Kind::Changes`] or [`Kind::BulkChunk`])
/// of at most [`MAX_MESSAGE`] bytes.
pub struct Writer {
    buf: Vec<u8>,
    count_at: usize,
    count: u32,
}

impl Writer {
    /// `node` must be valid (see [`valid_node`]).
    pub fn new(kind: Kind, node: &str, sequence: u64, sent_ms: u64) -> Writer {
        debug_assert!(valid_node(node));
        // Grown as records come: most messages are small (a few changes
        // of a millisecond), and a message's buffer goes to the NATS
        // client as it is, capacity and all.
        let mut buf = Vec::with_capacity(256);
        buf.extend_from_slice(&MAGIC);
        buf.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        buf.push(kind as u8);
        buf.push(0);
        buf.push(node.len() as u8);
        buf.extend_from_slice(node.as_bytes());
        buf.extend_from_slice(&sequence.to_le_bytes());
        buf.extend_from_slice(&sent_ms.to_le_bytes());
        let count_at = buf.len();
        buf.extend_from_slice(&0u32.to_le_bytes());
        Writer {
            buf,
            count_at,
            count: 0,
        }
    }

    /// Whether another record surely fits.
    pub fn has_room(&self) -> bool {
        self.buf.len() + 1 + MAX_RECORD + TRAILER <= MAX_MESSAGE
    }

    /// Adds a record (the caller checked [`Writer::has_room`]); its expiry
    /// is counted from `now`. A connection the SYN proxy opened travels with
    /// its `translation`, so that a peer translates it after a failover.
    pub fn push(
        &mut self,
        op: Op,
        key: &FlowKey,
        conn: &Conn,
        translation: Option<&Translation>,
        now: Timestamp,
    ) {
        self.buf.push(op as u8);
        encode_entry(key, conn, translation, now, &mut self.buf);
        self.count += 1;
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    /// The message's bytes; `last` marks the last chunk of a bulk copy.
    pub fn finish(mut self, last: bool) -> Vec<u8> {
        self.buf[self.count_at..self.count_at + 4].copy_from_slice(&self.count.to_le_bytes());
        if last {
            self.buf[7] |= F_LAST;
        }
        seal(self.buf)
    }
}

/// A [`Kind::Hello`] message.
pub fn hello(node: &str, sequence: u64, sent_ms: u64, hello: &Hello) -> Vec<u8> {
    let mut buf = Writer::new(Kind::Hello, node, sequence, sent_ms).buf;
    buf.extend_from_slice(&hello.digest);
    buf.extend_from_slice(&hello.connections.to_le_bytes());
    buf.push(u8::from(hello.ready));
    seal(buf)
}

/// A [`Kind::BulkRequest`] message.
pub fn bulk_request(node: &str, sequence: u64, sent_ms: u64) -> Vec<u8> {
    seal(Writer::new(Kind::BulkRequest, node, sequence, sent_ms).buf)
}

fn seal(mut buf: Vec<u8>) -> Vec<u8> {
    let crc = crc32fast::hash(&buf);
    buf.extend_from_slice(&crc.to_le_bytes());
    buf
}

/// Reads a message; its records' expiries count from `now`.
pub fn decode(bytes: &[u8], now: Timestamp) -> Result<Message, MessageError> {
    if bytes.len() >= 4 && bytes[..4] != MAGIC {
        return Err(MessageError::Magic);
    }
    // magic, version, kind, flags, node length: 9 bytes before the name.
    if bytes.len() < 9 + TRAILER {
        return Err(MessageError::Truncated);
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != FORMAT_VERSION {
        return Err(MessageError::Version(version));
    }
    let (signed, crc) = bytes.split_at(bytes.len() - TRAILER);
    if crc32fast::hash(signed) != u32::from_le_bytes(crc.try_into().expect("4 bytes")) {
        return Err(MessageError::Checksum);
    }
    let kind = Kind::from_byte(bytes[6]).ok_or(MessageError::Kind(bytes[6]))?;
    let flags = bytes[7];
    let node_len = bytes[8] as usize;
    let mut r = Reader {
        b: &signed[9..],
        now,
    };
    let node = std::str::from_utf8(r.take(node_len)?).map_err(|_| MessageError::Node)?;
    if !valid_node(node) {
        return Err(MessageError::Node);
    }
    let header = Header {
        kind,
        node: node.to_string(),
        sequence: r.u64()?,
        sent_ms: r.u64()?,
        last: kind == Kind::BulkChunk && flags & F_LAST != 0,
    };
    let count = r.u32()?;
    let body = match kind {
        Kind::Changes | Kind::BulkChunk => {
            // The smallest record is 22 bytes: no count claims more.
            if count as usize > r.b.len() / 22 {
                return Err(MessageError::Record(0));
            }
            let mut records = Vec::with_capacity(count as usize);
            for i in 0..count {
                records.push(r.record().ok_or(MessageError::Record(i))?);
            }
            Body::Records(records)
        }
        Kind::Hello => Body::Hello(Hello {
            digest: r.take(32)?.try_into().expect("32 bytes"),
            connections: r.u64()?,
            ready: match r.take(1)?[0] {
                0 => false,
                1 => true,
                _ => return Err(MessageError::Trailing),
            },
        }),
        Kind::BulkRequest => Body::BulkRequest,
    };
    if !r.b.is_empty() {
        return Err(MessageError::Trailing);
    }
    Ok(Message { header, body })
}

struct Reader<'a> {
    b: &'a [u8],
    now: Timestamp,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], MessageError> {
        let (head, rest) = self.b.split_at_checked(n).ok_or(MessageError::Truncated)?;
        self.b = rest;
        Ok(head)
    }

    fn u32(&mut self) -> Result<u32, MessageError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    fn u64(&mut self) -> Result<u64, MessageError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }

    fn record(&mut self) -> Option<(Op, FlowKey, Conn, Option<Translation>)> {
        let (&op, rest) = self.b.split_first()?;
        let op = match op {
            1 => Op::Upsert,
            2 => Op::Remove,
            _ => return None,
        };
        let (key, conn, translation, used) = decode_entry(rest, self.now, 0)?;
        self.b = &rest[used..];
        Some((op, key, conn, translation))
    }
}

#[cfg(test)]
mod tests;
