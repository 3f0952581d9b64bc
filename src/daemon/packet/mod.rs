//! The packet path: each worker owns a queue, decides every packet it reads
//! through the engine and sends the verdicts; rejected packets are answered
//! after their batch. Nothing here blocks, allocates or logs per packet:
//! what others need (counters, drops, notices, events) goes through
//! [`super::shared`].

pub mod proxy;
pub mod reject;
pub mod worker;
