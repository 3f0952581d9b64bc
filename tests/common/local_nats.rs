//! A nats-server on 127.0.0.1 for the cluster's tests and benchmarks that
//! need no namespace (tests/cluster_nats.rs, benches/cluster_lag.rs): found,
//! started with a login, waited for, and killed when dropped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The login every server started here takes.
pub const USER: &str = "ctd";
pub const PASSWORD: &str = "s3cret-lab";

/// A server, killed when it is dropped however the test ends.
pub struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Where nats-server is: `NATS_SERVER`, else Debian's /usr/bin or /usr/sbin.
pub fn nats_server() -> Result<PathBuf, String> {
    let candidates: Vec<PathBuf> = match std::env::var_os("NATS_SERVER") {
        Some(p) => vec![p.into()],
        None => vec![
            "/usr/bin/nats-server".into(),
            "/usr/sbin/nats-server".into(),
        ],
    };
    candidates
        .iter()
        .find(|p| p.exists())
        .cloned()
        .ok_or_else(|| format!("no nats-server ({candidates:?}; apt-get install nats-server)"))
}

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A server on `port`, once it listens (10 s at most); with `cluster`, its
/// own route port and the other server's.
pub fn start_server(binary: &Path, port: u16, cluster: Option<(u16, u16)>) -> Server {
    let mut command = Command::new(binary);
    command
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .args(["--user", USER, "--pass", PASSWORD]);
    if let Some((own, other)) = cluster {
        command
            .args(["--cluster_name", "ctd-local"])
            .args(["--cluster", &format!("nats://127.0.0.1:{own}")])
            .args(["--routes", &format!("nats://127.0.0.1:{other}")]);
    }
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting nats-server");
    let server = Server(child);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let until = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
        assert!(
            Instant::now() < until,
            "nats-server did not listen on {addr}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    server
}
