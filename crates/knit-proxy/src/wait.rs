//! `knit-proxy await`: blocks until the proxy beside it is ready, for a classic (non-native)
//! sidecar's `postStart` hook, which holds the pod's other containers back until it returns, so
//! an application never starts with no proxy to carry its first connections.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::ExitCode,
    time::{Duration, Instant},
};

const USAGE: &str = "usage: knit-proxy await [--timeout 2m] [--admin 127.0.0.1:4191]";

/// Whether `GET /ready` on the admin server answers 200.
fn ready(admin: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&admin, Duration::from_secs(1)) else { return false };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    if s.write_all(b"GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").is_err() {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

pub fn main(args: &[String]) -> ExitCode {
    let mut timeout = Duration::from_secs(120);
    let mut admin = SocketAddr::from(([127, 0, 0, 1], 4191));
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let value = it.next().map(String::as_str).unwrap_or("");
        let parsed = match flag.as_str() {
            "--timeout" => knit_core::parse::duration(value).map(|d| timeout = d).map_err(|e| e.to_string()),
            "--admin" => value.parse().map(|a| admin = a).map_err(|_| "expected IP:PORT".to_string()),
            _ => Err(format!("unknown flag\n{USAGE}")),
        };
        if let Err(e) = parsed {
            eprintln!("knit-proxy await: {flag} {value:?}: {e}");
            return ExitCode::from(64);
        }
    }
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ready(admin) {
            return ExitCode::SUCCESS;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("knit-proxy await: the proxy's {admin}/ready did not answer 200 within {timeout:?}");
    ExitCode::FAILURE
}
