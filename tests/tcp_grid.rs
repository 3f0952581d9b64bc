//! The TCP state machine, rendered and compared with checked-in snapshots:
//! the grid's cells (tests/snapshots/tcp_grid.txt), and what the whole
//! machine (grid, exceptions, window check) decides for every pair of
//! endpoint states, flag class and ack relation
//! (tests/snapshots/tcp_outcomes.txt). Any change to the state machine shows
//! up as a reviewed diff of one or both. Regenerate with
//! `UPDATE_GOLDEN=1 cargo test --test tcp_grid`: that run writes the file and
//! fails (it compared nothing); review the diff, then rerun without it.

use conntrackd::conntrack::tcp::{grid, render_outcomes};

fn updating() -> bool {
    std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v != "0" && !v.is_empty())
}

/// Compares `rendered` with the checked-in `snapshot`, or, under
/// UPDATE_GOLDEN, writes it and fails.
fn check_snapshot(snapshot: &str, rendered: &str) {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(snapshot);
    if updating() {
        let changed = std::fs::read_to_string(&path).ok().as_deref() != Some(rendered);
        std::fs::write(&path, rendered).unwrap();
        panic!(
            "updated {snapshot} ({}); review git diff {snapshot}, then rerun without UPDATE_GOLDEN \
             (an updating run compares nothing)",
            if changed { "changed" } else { "unchanged" }
        );
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{snapshot}: {e}; generate it with UPDATE_GOLDEN=1"));
    assert_eq!(
        rendered, expected,
        "the TCP state machine changed: review, then regenerate {snapshot} with UPDATE_GOLDEN=1"
    );
}

#[test]
fn grid_matches_snapshot() {
    check_snapshot("tests/snapshots/tcp_grid.txt", &grid::render());
}

#[test]
fn outcomes_match_snapshot() {
    let rendered = render_outcomes();
    // Every combination, and not all the same answer. 101 pairs of states:
    // 11 x 11 less the 20 with a LISTEN no connection can have (an originator
    // never listens, a responder only while the originator is in SYN_SENT).
    assert_eq!(rendered.lines().count(), 1 + 2 * 101 * 5 * 2);
    for reason in ["tracked", "bad_transition", "tcp_ignored", "challenge_ack"] {
        assert!(
            rendered.contains(reason),
            "no {reason} in the outcome table"
        );
    }
    check_snapshot("tests/snapshots/tcp_outcomes.txt", &rendered);
}
