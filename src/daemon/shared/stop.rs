//! The daemon's one way to stop. Every thread holds a [`Stop`] and returns
//! soon after [`StopSwitch::trip`]: loops look at it between rounds, and
//! threads that would sleep or wait on a client wait on it instead, so a
//! stop wakes them at once. Who joins them, and in what order, is the
//! lifecycle's business (`lifecycle::Daemon::stop`).

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A thread's view of the stop.
#[derive(Clone, Debug)]
pub struct Stop {
    flag: Arc<AtomicBool>,
    /// Never sent on: disconnected when the switch trips, which wakes every
    /// thread waiting on it.
    woken: Receiver<()>,
}

/// The switch, held by the lifecycle (and by tests).
#[derive(Debug)]
pub struct StopSwitch {
    flag: Arc<AtomicBool>,
    wake: Mutex<Option<Sender<()>>>,
    stop: Stop,
}

impl Default for StopSwitch {
    fn default() -> StopSwitch {
        let (wake, woken) = crossbeam_channel::bounded(0);
        let flag = Arc::new(AtomicBool::new(false));
        StopSwitch {
            stop: Stop {
                flag: flag.clone(),
                woken,
            },
            flag,
            wake: Mutex::new(Some(wake)),
        }
    }
}

impl StopSwitch {
    /// A view for a thread.
    pub fn stop(&self) -> Stop {
        self.stop.clone()
    }

    /// Stops every thread holding a view; waiting ones wake now.
    pub fn trip(&self) {
        self.flag.store(true, Ordering::Relaxed);
        self.wake.lock().unwrap_or_else(|e| e.into_inner()).take();
    }
}

impl Stop {
    /// Whether the daemon is stopping (one relaxed load: cheap in a loop).
    #[inline]
    pub fn is_set(&self) -> bool {
        self.flag.load(Ordering::Relaxed)
    }

    /// Sleeps for `d`, or less if the daemon stops meanwhile; whether it stops.
    pub fn wait(&self, d: Duration) -> bool {
        if self.is_set() {
            return true;
        }
        match self.woken.recv_timeout(d) {
            Err(RecvTimeoutError::Disconnected) => true,
            _ => self.is_set(),
        }
    }

    /// The channel a `select!` can wait on beside others: it disconnects at
    /// the stop.
    pub fn woken(&self) -> &Receiver<()> {
        &self.woken
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_trip_wakes_a_waiting_thread_at_once() {
        let switch = StopSwitch::default();
        let stop = switch.stop();
        assert!(!stop.is_set());
        assert!(!stop.wait(Duration::from_millis(1)), "not stopping yet");
        let waiter = std::thread::spawn(move || {
            let started = Instant::now();
            let stopped = stop.wait(Duration::from_secs(60));
            (stopped, started.elapsed())
        });
        std::thread::sleep(Duration::from_millis(20));
        switch.trip();
        let (stopped, waited) = waiter.join().unwrap();
        assert!(stopped);
        assert!(
            waited < Duration::from_secs(30),
            "woken, not timed out: {waited:?}"
        );
        let late = switch.stop();
        assert!(late.is_set() && late.wait(Duration::from_secs(60)));
    }
}
