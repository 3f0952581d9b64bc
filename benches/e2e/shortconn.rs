//! Short TCP connections per second, for the end-to-end benchmark.
//!
//!   shortconn server ADDR                      accept, echo 4 bytes, wait for the client's close
//!   shortconn client ADDR THREADS SECONDS [SRC,...]
//!                                              connect, send 4 bytes, read 4, close; repeat
//!
//! With source addresses, thread i binds its k-th connection to
//! SRC[(i + k) % n]: the kernel's `--queue-balance` hashes addresses only, so
//! one address pair would put every connection on one queue, and a fixed
//! address per thread would load the queues as unevenly as the hash falls.
//!
//! The client prints `connections_per_second N errors E`. Every load is
//! bounded by SECONDS; each connection by a 2 s timeout.

#![allow(clippy::disallowed_methods)] // not the core: tests, benchmarks and tools read clocks and start threads

use socket2::{Domain, Protocol, Socket, Type};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Threads that accept: more than the client's, since each serves one
/// connection at a time until the client closes it.
const SERVER_THREADS: usize = 16;

fn server(addr: SocketAddr) {
    let listener = Arc::new(TcpListener::bind(addr).expect("bind"));
    let workers: Vec<_> = (0..SERVER_THREADS)
        .map(|_| {
            let listener = listener.clone();
            std::thread::spawn(move || loop {
                let Ok((mut s, _)) = listener.accept() else {
                    continue;
                };
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 4];
                if s.read_exact(&mut buf).is_ok() && s.write_all(&buf).is_ok() {
                    // The client closes first, so TIME_WAIT stays on its side,
                    // where tcp_tw_reuse lets new connections reuse its ports.
                    let _ = s.read(&mut buf);
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
}

/// One connection from `src` (any port), or from the kernel's choice.
fn connect(addr: SocketAddr, src: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if let Some(ip) = src {
        // IP_BIND_ADDRESS_NO_PORT: the port is chosen at connect() with the
        // whole 4-tuple known, so TIME_WAIT ports are reused as without bind.
        let one: libc::c_int = 1;
        // SAFETY: `one` outlives the call and its size is passed.
        let r = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        socket.bind(&SocketAddr::new(ip, 0).into())?;
    }
    socket.connect_timeout(&addr.into(), Duration::from_secs(2))?;
    Ok(socket.into())
}

fn client(addr: SocketAddr, threads: usize, seconds: u64, sources: Vec<IpAddr>) {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let (stop, done, errors) = (stop.clone(), done.clone(), errors.clone());
            let sources = sources.clone();
            std::thread::spawn(move || {
                for k in 0.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let src = (!sources.is_empty()).then(|| sources[(i + k) % sources.len()]);
                    let ok = (|| -> std::io::Result<()> {
                        let mut s = connect(addr, src)?;
                        s.set_read_timeout(Some(Duration::from_secs(2)))?;
                        s.set_nodelay(true)?;
                        s.write_all(b"ping")?;
                        let mut buf = [0u8; 4];
                        s.read_exact(&mut buf)?;
                        Ok(())
                    })();
                    match ok {
                        Ok(()) => done.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs(seconds));
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        let _ = h.join();
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "connections_per_second {:.0} errors {}",
        done.load(Ordering::Relaxed) as f64 / secs,
        errors.load(Ordering::Relaxed)
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: shortconn server ADDR | shortconn client ADDR THREADS SECONDS [SRC,...]";
    match args.get(1).map(String::as_str) {
        Some("server") => server(args.get(2).expect(usage).parse().expect("ADDR")),
        Some("client") => client(
            args.get(2).expect(usage).parse().expect("ADDR"),
            args.get(3).expect(usage).parse().expect("THREADS"),
            args.get(4)
                .expect(usage)
                .parse::<u64>()
                .expect("SECONDS")
                .min(600),
            args.get(5)
                .map(|list| list.split(',').map(|a| a.parse().expect("SRC")).collect())
                .unwrap_or_default(),
        ),
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
}
