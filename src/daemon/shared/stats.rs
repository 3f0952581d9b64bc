//! What each worker counts, published to a slot of [`super::Shared`] about
//! once a second and merged by whoever reads them (status, metrics, the log).

use crate::reason::{Counters, Verdict};

/// What a worker counts besides verdict reasons.
#[derive(Clone, Debug, Default)]
pub struct WorkerStats {
    pub counters: Counters,
    /// recv failures other than timeouts (ENOBUFS included).
    pub recv_errors: u64,
    /// Of those, socket buffer overruns.
    pub enobufs: u64,
    pub verdict_errors: u64,
    /// Verdict sends that failed: their verdicts were kept and sent again
    /// (never lost, see `codec::Verdicts`).
    pub verdict_send_failures: u64,
    /// Backlogs of unsendable verdicts replaced by one batch drop.
    pub verdict_backlogs_dropped: u64,
    /// Log events dropped because the logging thread lagged behind.
    pub events_lost: u64,
    /// Packets whose checksum was not computed yet (GSO or offload).
    pub csum_not_ready: u64,
    /// Packets longer than the copy range (only their headers were copied).
    pub truncated_copies: u64,
    /// Packets whose decision panicked (an engine bug): dropped.
    pub engine_panics: u64,
    /// Receive system calls that returned packets.
    pub reads: u64,
    /// Verdict messages sent (a batch verdict answers several packets).
    pub verdict_messages: u64,
    /// Hand-off mode: packets whose verdict carried the hand-off mark (their
    /// connection was handed to the kernel).
    pub handoff_marked: u64,
    /// Per rule of the policy of `rules_generation` (by index): [packets the
    /// rule decided, new connections it admitted]. A reload starts afresh.
    pub rule_hits: Vec<[u64; 2]>,
    pub rules_generation: u16,
    /// `rules_generation` has been set (a fresh total has none yet, and
    /// takes its first merge's).
    pub rules_set: bool,
    /// Answers to rejected packets sent, over `reject_rate` (not sent), and
    /// failed (no raw socket, or the send failed). See `daemon::reject`.
    pub rejects_sent: u64,
    pub rejects_rate_limited: u64,
    pub rejects_failed: u64,
    /// The SYN proxy's packets sent (cookies, SYNs and ACKs to servers,
    /// window updates and RSTs to clients) and those that failed; packets
    /// of proxied connections rewritten, and those that could not be (not
    /// copied whole: dropped).
    pub synproxy_sent: u64,
    pub synproxy_send_failures: u64,
    pub synproxy_rewritten: u64,
    pub synproxy_rewrite_failures: u64,
    /// Hand-off mode: proxied connections handed to the kernel (its
    /// conntrack translates them), and those it could not take (they stay
    /// here).
    pub synproxy_handed_off: u64,
    pub synproxy_handoff_failures: u64,
    /// Hand-off mode: packets of proxied connections that reached the queue
    /// and were left to the kernel's translation (a FIN, say).
    pub synproxy_left_to_kernel: u64,
}

impl WorkerStats {
    pub fn merge(&mut self, o: &WorkerStats) {
        self.counters.merge(&o.counters);
        self.recv_errors += o.recv_errors;
        self.enobufs += o.enobufs;
        self.verdict_errors += o.verdict_errors;
        self.verdict_send_failures += o.verdict_send_failures;
        self.verdict_backlogs_dropped += o.verdict_backlogs_dropped;
        self.events_lost += o.events_lost;
        self.csum_not_ready += o.csum_not_ready;
        self.truncated_copies += o.truncated_copies;
        self.engine_panics += o.engine_panics;
        self.reads += o.reads;
        self.verdict_messages += o.verdict_messages;
        self.handoff_marked += o.handoff_marked;
        self.merge_rule_hits(o);
        self.rejects_sent += o.rejects_sent;
        self.rejects_rate_limited += o.rejects_rate_limited;
        self.rejects_failed += o.rejects_failed;
        self.synproxy_sent += o.synproxy_sent;
        self.synproxy_send_failures += o.synproxy_send_failures;
        self.synproxy_rewritten += o.synproxy_rewritten;
        self.synproxy_rewrite_failures += o.synproxy_rewrite_failures;
        self.synproxy_handed_off += o.synproxy_handed_off;
        self.synproxy_handoff_failures += o.synproxy_handoff_failures;
        self.synproxy_left_to_kernel += o.synproxy_left_to_kernel;
    }

    /// Rule hits add up only within one policy generation: the newer one
    /// (by wrapping distance) wins, so a worker that has not published since
    /// a reload cannot hold the totals back at the old policy.
    fn merge_rule_hits(&mut self, o: &WorkerStats) {
        let newer = o.rules_generation.wrapping_sub(self.rules_generation);
        if !self.rules_set || (newer != 0 && newer < u16::MAX / 2) {
            self.reset_rules(o.rules_generation);
        } else if newer != 0 {
            return;
        }
        if self.rule_hits.len() < o.rule_hits.len() {
            self.rule_hits.resize(o.rule_hits.len(), [0; 2]);
        }
        for (mine, theirs) in self.rule_hits.iter_mut().zip(&o.rule_hits) {
            mine[0] += theirs[0];
            mine[1] += theirs[1];
        }
    }

    /// Starts the rule hits afresh for the policy of `generation` (a reload
    /// renumbers rules); nothing when they are of it already.
    pub fn reset_rules(&mut self, generation: u16) {
        if self.rules_generation != generation || !self.rules_set {
            self.rules_generation = generation;
            self.rules_set = true;
            self.rule_hits.clear();
        }
    }

    pub fn packets(&self) -> u64 {
        self.counters.total(Verdict::Accept) + self.counters.total(Verdict::Drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hits(generation: u16, hits: &[[u64; 2]]) -> WorkerStats {
        WorkerStats {
            rules_generation: generation,
            rules_set: true,
            rule_hits: hits.to_vec(),
            ..WorkerStats::default()
        }
    }

    /// After a reload, a worker that has published under the new policy
    /// (even with no hits yet) wins over one still at the old policy,
    /// whatever the order they are merged in.
    #[test]
    fn rule_hits_add_up_within_the_newest_policy_only() {
        let fresh = hits(3, &[]);
        let stale = hits(2, &[[7, 7]]);
        let current = hits(3, &[[1, 0], [2, 1]]);
        for order in [[&fresh, &stale, &current], [&stale, &current, &fresh]] {
            let mut total = WorkerStats::default();
            for w in order {
                total.merge(w);
            }
            assert_eq!(total.rules_generation, 3);
            assert_eq!(total.rule_hits, [[1, 0], [2, 1]]);
        }
        // A fresh total takes any first generation, however large.
        let mut total = WorkerStats::default();
        total.merge(&hits(40_000, &[[4, 4]]));
        assert_eq!((total.rules_generation, total.rule_hits.len()), (40_000, 1));
        // Across the wrap: 0 is newer than u16::MAX.
        let mut total = hits(u16::MAX, &[[5, 5]]);
        total.merge(&hits(0, &[[1, 1]]));
        assert_eq!((total.rules_generation, total.rule_hits), (0, vec![[1, 1]]));
    }
}
