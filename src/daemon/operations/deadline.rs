//! A client's socket under a deadline and the daemon's stop: the control
//! socket and the metrics endpoint serve one client at a time, so a client
//! that says nothing must cost neither more than its deadline nor a prompt
//! stop. Each read or write waits at most [`POLL`], then looks at the stop
//! and the deadline before it waits again.

use super::super::shared::Stop;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// How long one wait for a client lasts before the stop is looked at.
pub const POLL: Duration = Duration::from_millis(100);

/// A stream whose blocking reads and writes can time out.
pub trait Timed {
    fn set_timeouts(&self, d: Duration) -> std::io::Result<()>;
}

impl Timed for UnixStream {
    fn set_timeouts(&self, d: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(d))?;
        self.set_write_timeout(Some(d))
    }
}

impl Timed for TcpStream {
    fn set_timeouts(&self, d: Duration) -> std::io::Result<()> {
        self.set_read_timeout(Some(d))?;
        self.set_write_timeout(Some(d))
    }
}

/// `stream`, until `until` or the stop, whichever comes first.
pub struct Deadline<'a, S> {
    pub stream: &'a S,
    pub until: Instant,
    pub stop: &'a Stop,
}

impl<'a, S: Timed> Deadline<'a, S>
where
    &'a S: Read + Write,
{
    /// Runs `op` until it does not time out, the deadline passes or the daemon stops.
    fn retry<T>(&self, mut op: impl FnMut(&'a S) -> std::io::Result<T>) -> std::io::Result<T> {
        loop {
            if self.stop.is_set() {
                // Not `Interrupted`: readers such as `BufRead` retry that.
                return Err(std::io::Error::new(
                    ErrorKind::ConnectionAborted,
                    "the daemon is stopping",
                ));
            }
            let left = self.until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(std::io::Error::new(
                    ErrorKind::TimedOut,
                    "client deadline passed",
                ));
            }
            self.stream.set_timeouts(left.min(POLL))?;
            match op(self.stream) {
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                other => return other,
            }
        }
    }
}

impl<'a, S: Timed> Read for Deadline<'a, S>
where
    &'a S: Read + Write,
{
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.retry(|mut s| s.read(buf))
    }
}

impl<'a, S: Timed> Write for Deadline<'a, S>
where
    &'a S: Read + Write,
{
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.retry(|mut s| s.write(buf))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::super::shared::StopSwitch;
    use super::*;

    #[test]
    fn a_silent_client_is_left_at_its_deadline_or_at_the_stop() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let switch = StopSwitch::default();
        let stop = switch.stop();
        let started = Instant::now();
        let mut d = Deadline {
            stream: &ours,
            until: started + Duration::from_millis(250),
            stop: &stop,
        };
        let e = d.read(&mut [0u8; 8]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::TimedOut);
        assert!(started.elapsed() >= Duration::from_millis(250));

        let mut d = Deadline {
            stream: &ours,
            until: Instant::now() + Duration::from_secs(3600),
            stop: &stop,
        };
        let tripper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            switch.trip();
        });
        let e = d.read(&mut [0u8; 8]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConnectionAborted, "left at the stop");
        tripper.join().unwrap();
    }

    #[test]
    fn what_the_client_sends_is_read_whole() {
        let (ours, mut theirs) = UnixStream::pair().unwrap();
        let stop = StopSwitch::default().stop();
        theirs.write_all(b"hello\n").unwrap();
        let mut d = Deadline {
            stream: &ours,
            until: Instant::now() + Duration::from_secs(5),
            stop: &stop,
        };
        let mut buf = [0u8; 16];
        assert_eq!(d.read(&mut buf).unwrap(), 6);
        assert_eq!(&buf[..6], b"hello\n");
    }
}
