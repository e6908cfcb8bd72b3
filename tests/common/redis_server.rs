//! A `redis-server` per test (or bench): on a free port, no persistence,
//! stopped by its PID. The Debian package `redis-server` provides it
//! (`scripts/test` installs it).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, wait_until};

/// A `redis-server` of this test's own.
pub struct Redis {
    child: Child,
    port: u16,
}

impl Redis {
    pub fn start_on(port: u16) -> Redis {
        Redis::spawn(port, &["--port", &port.to_string()])
    }

    /// TLS only, on a free port, with this certificate and key (PEM files),
    /// which also stand for the CA: clients must present a certificate it
    /// signed (the same one).
    pub fn start_tls(cert: &std::path::Path, key: &std::path::Path) -> Redis {
        let port = free_port();
        let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
        Redis::spawn(
            port,
            &[
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--tls-cert-file",
                cert,
                "--tls-key-file",
                key,
                "--tls-ca-cert-file",
                cert,
                "--tls-auth-clients",
                "yes",
            ],
        )
    }

    fn spawn(port: u16, listen: &[&str]) -> Redis {
        let child = Command::new("redis-server")
            .args(listen)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server; scripts/test installs it)");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_until(Duration::from_secs(10), "redis-server listens", || {
            std::net::TcpStream::connect(addr).is_ok()
        });
        Redis { child, port }
    }

    pub fn start() -> Redis {
        Redis::start_on(free_port())
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The URL of a TLS server ([`Redis::start_tls`]).
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}/", self.port)
    }

    pub fn stop(mut self) -> u16 {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.port
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
