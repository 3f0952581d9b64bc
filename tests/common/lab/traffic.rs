//! The client side of real traffic through the gateway: TCP connections to
//! the echo servers, UDP probes and ICMP echo (ping).

use super::ns::Ns;
use super::raw::send_to;
use socket2::{Domain, Protocol, Socket, Type};
use std::io::{Read, Write};
use std::net::{IpAddr, Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

/// Connects from inside `ns`.
pub fn connect(ns: &Ns, to: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let s = ns.enter(move || TcpStream::connect_timeout(&to, timeout))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    Ok(s)
}

fn pattern(i: usize, salt: u8) -> u8 {
    ((i * 31 + 7) as u8) ^ salt
}

/// Sends `n` bytes through an echo connection and checks they all come back
/// (both directions at once: a writer thread and this reader), within 15 s.
pub fn exchange(stream: &TcpStream, n: usize, salt: u8) -> std::io::Result<()> {
    // Generous for the sizes used (a few MB take well under a second), but
    // bounded: a connection limping on retransmissions fails the test.
    exchange_within(stream, n, salt, Duration::from_secs(15))
}

/// [`exchange`] that gives up after `limit` (a `TimedOut` error; the
/// connection is then shut down both ways). Each read waits at most until
/// the deadline; the stream's own read timeout is restored afterwards.
pub fn exchange_within(
    stream: &TcpStream,
    n: usize,
    salt: u8,
    limit: Duration,
) -> std::io::Result<()> {
    let read_timeout = stream.read_timeout()?;
    let result = exchange_until(stream, n, salt, limit);
    let _ = stream.set_read_timeout(read_timeout);
    result
}

fn exchange_until(stream: &TcpStream, n: usize, salt: u8, limit: Duration) -> std::io::Result<()> {
    let mut w = stream.try_clone()?;
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let chunk: Vec<u8> = (0..n).map(|i| pattern(i, salt)).collect();
        for part in chunk.chunks(32 * 1024) {
            w.write_all(part)?;
        }
        Ok(())
    });
    let mut r = stream.try_clone()?;
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + limit;
    while got < n {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let _ = stream.shutdown(Shutdown::Both);
            let _ = writer.join();
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("only {got} of {n} bytes came back within {limit:?}"),
            ));
        }
        r.set_read_timeout(Some(left.max(Duration::from_millis(1))))?;
        let k = match r.read(&mut buf) {
            Ok(k) => k,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::Interrupted
                        | std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        if k == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("connection closed after {got} of {n} bytes"),
            ));
        }
        for (j, b) in buf[..k].iter().enumerate() {
            if *b != pattern(got + j, salt) {
                return Err(std::io::Error::other(format!("byte {} differs", got + j)));
            }
        }
        got += k;
    }
    writer.join().expect("writer thread")?;
    Ok(())
}

/// Closes an echo connection cleanly: FIN from us, then the peer's FIN.
pub fn close(stream: TcpStream) -> std::io::Result<()> {
    stream.shutdown(Shutdown::Write)?;
    let mut rest = Vec::new();
    (&stream).read_to_end(&mut rest)?;
    if !rest.is_empty() {
        return Err(std::io::Error::other("unexpected data before EOF"));
    }
    Ok(())
}

/// Ends a connection with a RST instead of a FIN (SO_LINGER 0, then close).
pub fn abort(stream: TcpStream) {
    socket2::SockRef::from(&stream)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER");
}

/// Connect, exchange `n` bytes both ways, close: the whole life of a connection.
pub fn tcp_session(ns: &Ns, to: SocketAddr, n: usize) -> std::io::Result<()> {
    // 5 s: room for two lost SYNs (retransmitted after 1 and 3 s).
    let s = connect(ns, to, Duration::from_secs(5))?;
    exchange(&s, n, 0x5a)?;
    close(s)
}

/// Sends a datagram from `ns` and waits for its echo (a few tries).
pub fn udp_roundtrip(ns: &Ns, to: SocketAddr, timeout: Duration) -> bool {
    let any: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse().unwrap()
    } else {
        "[::]:0".parse().unwrap()
    };
    let sock = ns.enter(move || UdpSocket::bind(any).expect("bind udp"));
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + timeout;
    let msg = b"conntrackd udp probe";
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        let _ = sock.send_to(msg, to);
        if let Ok((n, from)) = sock.recv_from(&mut buf) {
            if from == to && &buf[..n] == msg {
                return true;
            }
        }
    }
    false
}

/// Sends datagrams from a connected UDP socket in `ns` to a closed port until
/// the ICMP port unreachable comes back (as ECONNREFUSED).
pub fn udp_refused(ns: &Ns, to: SocketAddr, timeout: Duration) -> bool {
    let sock = ns.enter(move || {
        let any: SocketAddr = if to.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let s = UdpSocket::bind(any).expect("bind udp");
        s.connect(to).expect("connect udp");
        s
    });
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        if let Err(e) = sock.send(b"anyone?") {
            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
        if let Err(e) = sock.recv(&mut buf) {
            if e.kind() == std::io::ErrorKind::ConnectionRefused {
                return true;
            }
        }
    }
    false
}

/// ICMP (v4 or v6) echo from `ns` through a ping socket (SOCK_DGRAM ICMP,
/// allowed by the namespace's `net.ipv4.ping_group_range`); true when answered.
pub fn ping(ns: &Ns, to: IpAddr, timeout: Duration) -> bool {
    let v6 = to.is_ipv6();
    let sock = ns.enter(move || {
        let (domain, proto) = if v6 {
            (Domain::IPV6, Protocol::ICMPV6)
        } else {
            (Domain::IPV4, Protocol::ICMPV4)
        };
        Socket::new(domain, Type::DGRAM, Some(proto)).expect("ping socket")
    });
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("SO_RCVTIMEO");
    let deadline = Instant::now() + timeout;
    let mut seq = 0u16;
    while Instant::now() < deadline {
        seq += 1;
        // type, code, checksum (kernel), id (kernel), seq, payload
        let mut msg = vec![if v6 { 128 } else { 8 }, 0, 0, 0, 0, 0];
        msg.extend_from_slice(&seq.to_be_bytes());
        msg.extend_from_slice(b"conntrackd ping");
        send_to(&sock, &msg, to);
        let mut buf = [0u8; 256];
        // A timeout (no reply within 200 ms) reads as nothing.
        let n = (&sock).read(&mut buf).unwrap_or(0);
        if n >= 8 && buf[0] == if v6 { 129 } else { 0 } {
            return true;
        }
    }
    false
}
