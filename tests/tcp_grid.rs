//! The TCP transition grid, rendered and compared with a checked-in snapshot:
//! any change to the state machine shows up as a reviewed diff of
//! tests/snapshots/tcp_grid.txt. Regenerate with
//! `UPDATE_GOLDEN=1 cargo test --test tcp_grid`: that run writes the file and
//! fails (it compared nothing); review the diff, then rerun without it.

use conntrackd::conntrack::tcp::grid;

const SNAPSHOT: &str = "tests/snapshots/tcp_grid.txt";

fn updating() -> bool {
    std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v != "0" && !v.is_empty())
}

#[test]
fn grid_matches_snapshot() {
    let rendered = grid::render();
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(SNAPSHOT);
    if updating() {
        let changed = std::fs::read_to_string(&path).ok().as_deref() != Some(rendered.as_str());
        std::fs::write(&path, &rendered).unwrap();
        panic!(
            "updated {SNAPSHOT} ({}); review git diff {SNAPSHOT}, then rerun without UPDATE_GOLDEN \
             (an updating run compares nothing)",
            if changed { "changed" } else { "unchanged" }
        );
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{SNAPSHOT}: {e}; generate it with UPDATE_GOLDEN=1"));
    assert_eq!(
        rendered, expected,
        "the TCP grid changed: review, then regenerate {SNAPSHOT} with UPDATE_GOLDEN=1"
    );
}
