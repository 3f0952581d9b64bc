//! A bulk copy this node asked for (at start, and after every reconnect):
//! done when every configured peer has sent its last chunk, or when the
//! timeout is over (a peer that is down does not keep the node from
//! becoming ready).

use super::super::shared::cluster::BulkCopy;

#[derive(Debug)]
pub struct BulkWait {
    /// The peers that have not sent their last chunk yet.
    waiting: Vec<String>,
    answered: Vec<String>,
    records: u64,
    /// Engine milliseconds when it was asked for, and when it gives up.
    started_ms: u64,
    deadline_ms: u64,
    started_unix_ms: u64,
}

impl BulkWait {
    pub fn new(peers: &[String], now_ms: u64, timeout_ms: u64, unix_ms: u64) -> BulkWait {
        BulkWait {
            waiting: peers.to_vec(),
            answered: Vec::new(),
            records: 0,
            started_ms: now_ms,
            deadline_ms: now_ms.saturating_add(timeout_ms),
            started_unix_ms: unix_ms,
        }
    }

    /// A chunk of `peer`'s copy, of `records` records.
    pub fn chunk(&mut self, peer: &str, records: usize, last: bool) {
        self.records += records as u64;
        if last {
            if let Some(i) = self.waiting.iter().position(|p| p == peer) {
                self.answered.push(self.waiting.remove(i));
            }
        }
    }

    /// Whether it is over at engine millisecond `now_ms`.
    pub fn done(&self, now_ms: u64) -> bool {
        self.waiting.is_empty() || now_ms >= self.deadline_ms
    }

    /// How it went, at engine millisecond `now_ms`.
    pub fn report(&self, now_ms: u64) -> BulkCopy {
        BulkCopy {
            started_unix_ms: self.started_unix_ms,
            took_ms: now_ms.saturating_sub(self.started_ms),
            answered: self.answered.clone(),
            missing: self.waiting.clone(),
            records: self.records,
        }
    }

    /// When it gives up, in engine milliseconds.
    pub fn deadline_ms(&self) -> u64 {
        self.deadline_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers() -> Vec<String> {
        vec!["gw-b".into(), "gw-c".into()]
    }

    #[test]
    fn done_when_every_peer_sent_its_last_chunk() {
        let mut w = BulkWait::new(&peers(), 1_000, 2_000, 77);
        w.chunk("gw-b", 500, false);
        assert!(!w.done(1_100));
        w.chunk("gw-b", 20, true);
        w.chunk("gw-x", 5, true); // not a peer: changes nothing
        assert!(!w.done(1_200), "gw-c has not answered");
        w.chunk("gw-c", 0, true);
        assert!(w.done(1_300));
        let r = w.report(1_300);
        assert_eq!(r.answered, ["gw-b", "gw-c"]);
        assert!(r.missing.is_empty());
        assert_eq!((r.records, r.took_ms, r.started_unix_ms), (525, 300, 77));
    }

    #[test]
    fn done_at_the_timeout_with_the_peers_that_did_not_answer() {
        let mut w = BulkWait::new(&peers(), 1_000, 2_000, 0);
        w.chunk("gw-c", 3, true);
        assert!(!w.done(2_999));
        assert!(w.done(3_000));
        let r = w.report(3_000);
        assert_eq!(
            (r.answered, r.missing),
            (vec!["gw-c".to_string()], peers()[..1].to_vec())
        );
        // No peer at all (none configured is refused, but alike): done at once.
        assert!(BulkWait::new(&[], 0, 2_000, 0).done(0));
    }
}
