//! The state file on disk: read at start (before any queue is bound), and
//! written at a graceful stop (after the queues stopped delivering) and by
//! periodic snapshots, atomically: a temporary file beside it, fsync,
//! rename, fsync of the directory. The bytes are the engine's
//! ([`crate::Engine::save_state`], [`crate::Engine::restore_state`]).

use crate::Engine;
use anyhow::Context as _;
use std::io::Write as _;
use std::path::Path;
use std::time::Instant;
use tracing::{info, warn};

/// Loads `path` into the engine. A missing file is a first start; a file
/// that does not check out is named in one warning and ignored (the table
/// starts empty, the file is kept beside as `FILE.bad`): never a reason not
/// to start.
/// After a start from a periodic snapshot, TCP connections it missed are
/// picked up mid-stream for `crash_pickup`.
///
/// Once the daemon has started, [`mark_running`] makes the file say so.
pub fn load(
    path: &Path,
    engine: &Engine,
    now: crate::time::Timestamp,
    crash_pickup: std::time::Duration,
) -> Loaded {
    let started = Instant::now();
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            info!(state_file = %path.display(), "no state file yet: starting with an empty table");
            return Loaded::Nothing;
        }
        Err(e) => {
            warn!(state_file = %path.display(), "cannot read the state file ({e}): starting with an empty table");
            return Loaded::Nothing;
        }
    };
    match engine.restore_state(&bytes, now, unix_now()) {
        Ok(r) => {
            if !r.graceful && !crash_pickup.is_zero() {
                engine.allow_pickup_until(crate::time::Timestamp::from_secs(
                    now.as_secs() + crash_pickup.as_secs(),
                ));
                info!(
                    seconds = crash_pickup.as_secs(),
                    "the last stop was not graceful: TCP connections opened after the last \
                     snapshot are picked up mid-stream for {} s (daemon.crash_pickup)",
                    crash_pickup.as_secs()
                );
            }
            info!(
            state_file = %path.display(),
            restored = r.restored,
            expired = r.expired,
            over_limit = r.over_limit,
            graceful = r.graceful,
            bytes = bytes.len(),
            ms = started.elapsed().as_secs_f64() * 1e3,
            "restored {} connections{}",
            r.restored,
            if r.graceful {
                ""
            } else {
                " from a periodic snapshot (the last stop was not graceful: connections \
                 opened after that snapshot are unknown)"
                }
            );
            if r.graceful {
                Loaded::Graceful
            } else {
                Loaded::Snapshot
            }
        }
        Err(e) => {
            // Kept for a look, out of the way of the snapshots.
            let mut bad = path.as_os_str().to_owned();
            bad.push(".bad");
            let kept = std::fs::rename(path, &bad).is_ok();
            warn!(
                state_file = %path.display(),
                "state file not used ({e}): starting with an empty table{}",
                if kept {
                    format!(" (the file is kept as {})", Path::new(&bad).display())
                } else {
                    String::new()
                }
            );
            Loaded::Nothing
        }
    }
}

/// Makes the state file say "running, not stopped gracefully" once the
/// daemon has started (a loaded complete table is marked so; otherwise the
/// table as it is now is written as a snapshot): a crash before the first
/// periodic snapshot is told from a first start, and opens the pickup window
/// too. Not before the start succeeded: a start refused (a bad address, a
/// queue another program holds) leaves the file as it found it.
pub fn mark_running(path: &Path, engine: &Engine, now: crate::time::Timestamp, loaded: Loaded) {
    match loaded {
        Loaded::Graceful => {
            // No longer a complete table (see state::not_graceful_flags).
            if let Err(e) = mark_not_graceful(path) {
                warn!(state_file = %path.display(), "cannot mark the state file as loaded: {e}");
            }
        }
        Loaded::Snapshot => {}
        Loaded::Nothing => match save(path, engine, now, false) {
            Ok(_) => info!(
                state_file = %path.display(),
                "wrote a first snapshot: a crash before the next one is told from a first start"
            ),
            Err(e) => warn!(
                state_file = %path.display(),
                "{e:#}: a crash before the first periodic snapshot will look like a first start"
            ),
        },
    }
}

/// What [`load`] found.
pub enum Loaded {
    /// A complete table, saved at a graceful stop.
    Graceful,
    /// A periodic snapshot (or the first one a start writes).
    Snapshot,
    /// No file, or none that could be used.
    Nothing,
}

/// Writes the engine's table to `path` atomically; returns (connections, bytes).
pub fn save(
    path: &Path,
    engine: &Engine,
    now: crate::time::Timestamp,
    graceful: bool,
) -> anyhow::Result<(usize, usize)> {
    let bytes = engine.save_state(now, graceful, unix_now());
    let count = engine.table().len();
    write_atomically(path, &bytes)
        .with_context(|| format!("writing the state file {}", path.display()))?;
    Ok((count, bytes.len()))
}

/// The wall clock in Unix seconds (the state file's age is counted by it).
fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn mark_not_graceful(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path)?;
    f.write_all_at(
        &crate::conntrack::state::not_graceful_flags(),
        crate::conntrack::state::FLAGS_AT as u64,
    )?;
    f.sync_all()
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // Started by hand, /var/lib/conntrackd may not exist yet (systemd's
    // StateDirectory= makes it for the unit).
    std::fs::create_dir_all(dir)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = Path::new(&tmp);
    let mut f = std::fs::File::create(tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(tmp, path)?;
    // The rename itself is durable only once the directory is.
    std::fs::File::open(dir)?.sync_all()
}
