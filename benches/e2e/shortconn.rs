//! Short TCP connections per second, for the end-to-end benchmark.
//!
//!   shortconn server ADDR                      accept, echo 4 bytes, close
//!   shortconn client ADDR THREADS SECONDS      connect, send 4 bytes, read 4, close; repeat
//!
//! The client prints `connections_per_second N errors E`. Every load is
//! bounded by SECONDS; each connection by a 2 s timeout.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn server(addr: SocketAddr) {
    let listener = TcpListener::bind(addr).expect("bind");
    for stream in listener.incoming() {
        let Ok(mut s) = stream else { continue };
        std::thread::spawn(move || {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 4];
            if s.read_exact(&mut buf).is_ok() {
                let _ = s.write_all(&buf);
            }
        });
    }
}

fn client(addr: SocketAddr, threads: usize, seconds: u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (stop, done, errors) = (stop.clone(), done.clone(), errors.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let ok = (|| -> std::io::Result<()> {
                        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
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
    let usage = "usage: shortconn server ADDR | shortconn client ADDR THREADS SECONDS";
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
        ),
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
}
