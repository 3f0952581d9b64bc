//! The TCP transition grid, rendered and compared with a checked-in snapshot:
//! any change to the state machine shows up as a reviewed diff of
//! tests/snapshots/tcp_grid.txt. Regenerate with UPDATE_SNAPSHOTS=1.

use conntrackd::conntrack::tcp::grid;

#[test]
fn grid_matches_snapshot() {
    let rendered = grid::render();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/snapshots/tcp_grid.txt");
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(path, &rendered).unwrap();
    }
    let expected =
        std::fs::read_to_string(path).expect("snapshot missing: run with UPDATE_SNAPSHOTS=1");
    assert_eq!(
        rendered, expected,
        "the TCP grid changed: review, then UPDATE_SNAPSHOTS=1"
    );
}
