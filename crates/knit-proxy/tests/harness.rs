//! The in-process harness: a test server, proxies on 127.0.0.1:0, metric reads, and polling
//! assertions instead of sleeps.

#![allow(dead_code)]

pub mod server;

use knit_proxy::{config::Config, Addrs, Proxy};
use std::{future::Future, net::SocketAddr, path::PathBuf, time::Duration};
use tokio::{sync::oneshot, task::JoinHandle};

/// A proxy running in this process until dropped or shut down.
pub struct TestProxy {
    pub addrs: Addrs,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<bool>>,
}

impl TestProxy {
    pub async fn start(configure: impl FnOnce(&mut Config)) -> Self {
        let mut config = Config::loopback();
        configure(&mut config);
        // A test that restarts a proxy on its old ports can find one taken meanwhile by another
        // test's ephemeral port (a client's, briefly): it tries again for a while.
        let mut tries = 0;
        let proxy = loop {
            match Proxy::bind(config.clone(), None).await {
                Ok(p) => break p,
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 50 => tries += 1,
                Err(e) => panic!("bind proxy: {e}"),
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        let addrs = proxy.addrs();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(proxy.run(async move {
            let _ = rx.await;
        }));
        Self { addrs, shutdown: Some(tx), task: Some(task) }
    }

    /// Starts draining and waits for the proxy to stop; returns whether it drained in time.
    pub async fn shutdown(mut self) -> bool {
        let _ = self.shutdown.take().expect("not yet shut down").send(());
        self.task.take().expect("running").await.expect("proxy task")
    }

    /// Starts draining without waiting.
    pub fn begin_shutdown(&mut self) -> JoinHandle<bool> {
        let _ = self.shutdown.take().expect("not yet shut down").send(());
        self.task.take().expect("running")
    }

    pub async fn metrics(&self) -> String {
        scrape(self.addrs.admin).await
    }

    /// The sum of every sample of `name` whose labels contain all of `labels` (`k="v"` strings).
    pub async fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        sum_metric(&self.metrics().await, name, labels)
    }
}

pub async fn scrape(admin: SocketAddr) -> String {
    let (status, body) = get(admin, "/metrics").await;
    assert_eq!(status, 200);
    body
}

pub fn sum_metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            (metric == name && labels.iter().all(|want| rest.contains(want))).then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// A GET with a fresh HTTP/1 connection; returns status and body.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    request(addr, "GET", path, "localhost", "").await
}

pub async fn request(addr: SocketAddr, method: &str, path: &str, host: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}", body.len());
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await.expect("response in time").expect("read");
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// Polls `check` until it returns true or `timeout` passes.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr, $($msg:tt)+) => {
        assert!($crate::harness::eventually(std::time::Duration::from_secs(10), || async { $cond }).await, $($msg)+)
    };
}

/// The repository root, for scripts under `tests/`.
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("repo root")
}

/// Runs a command with a time bound; returns (success, stdout, stderr).
pub async fn run(cmd: &str, args: &[&str]) -> (bool, String, String) {
    let out = tokio::time::timeout(Duration::from_secs(60), tokio::process::Command::new(cmd).args(args).kill_on_drop(true).output())
        .await
        .unwrap_or_else(|_| panic!("{cmd} {args:?} timed out"))
        .unwrap_or_else(|e| panic!("running {cmd}: {e} (scripts/test.sh installs it)"));
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// Two proxies joined as the mesh joins them: the client side's outbound names the server side's
/// app as `name:port`, meshed through the server proxy's inbound port.
pub struct Mesh {
    pub client: TestProxy,
    pub server: TestProxy,
}

impl Mesh {
    pub async fn start(authority: &str, app: SocketAddr) -> Self {
        let server = TestProxy::start(|_| {}).await;
        let table = format!("{authority}={app}@{}", server.addrs.inbound.port());
        let client = TestProxy::start(|c| c.outbound.endpoints = table.parse().expect("table")).await;
        Self { client, server }
    }
}

/// The `knit-proxy` binary, started with `env` and every listener on 127.0.0.1:0.
pub struct BinProxy {
    pub child: tokio::process::Child,
    pub inbound: SocketAddr,
    pub outbound: SocketAddr,
    pub admin: SocketAddr,
    /// What the proxy wrote to stderr so far (read by a task, so it may lag the process).
    pub log: std::sync::Arc<std::sync::Mutex<String>>,
    /// The task reading stderr: it ends at EOF, once the process has exited.
    log_reader: Option<JoinHandle<()>>,
}

impl BinProxy {
    pub async fn spawn(env: &[(&str, &str)]) -> Self {
        Self::spawn_with_nofile(env, None).await
    }

    /// With `RLIMIT_NOFILE` set to `nofile` (through util-linux's `prlimit`).
    pub async fn spawn_with_nofile(env: &[(&str, &str)], nofile: Option<u64>) -> Self {
        use tokio::io::AsyncBufReadExt;
        let mut cmd = match nofile {
            Some(n) => {
                let mut c = tokio::process::Command::new("prlimit");
                c.arg(format!("--nofile={n}:{n}")).arg("--").arg(env!("CARGO_BIN_EXE_knit-proxy"));
                c
            }
            None => tokio::process::Command::new(env!("CARGO_BIN_EXE_knit-proxy")),
        };
        cmd.env_clear()
            .env("KNIT_PROXY_INBOUND_LISTEN_ADDR", "127.0.0.1:0")
            .env("KNIT_PROXY_OUTBOUND_LISTEN_ADDR", "127.0.0.1:0")
            .env("KNIT_PROXY_ADMIN_LISTEN_ADDR", "127.0.0.1:0")
            .envs(env.iter().copied())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn knit-proxy");
        let mut lines = tokio::io::BufReader::new(child.stderr.take().expect("stderr")).lines();
        let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        // The "serving" line names the bound addresses, as `key=addr` (plain) or fields (JSON).
        let field = |line: &str, key: &str| -> Option<SocketAddr> {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
                return v["fields"][key].as_str()?.parse().ok();
            }
            line.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        };
        let serving = tokio::time::timeout(Duration::from_secs(10), async {
            while let Ok(Some(line)) = lines.next_line().await {
                log.lock().unwrap().push_str(&format!("{line}\n"));
                if line.contains("serving") {
                    return Some(line);
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| panic!("knit-proxy did not start:\n{}", log.lock().unwrap()));
        let (inbound, outbound, admin) = (
            field(&serving, "inbound").expect("inbound addr"),
            field(&serving, "outbound").expect("outbound addr"),
            field(&serving, "admin").expect("admin addr"),
        );
        let sink = log.clone();
        let log_reader = tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                sink.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        Self { child, inbound, outbound, admin, log, log_reader: Some(log_reader) }
    }

    /// Waits, at most `timeout`, for the process to exit and then for its whole log: a log read
    /// right after the exit could still miss the last lines in the pipe.
    pub async fn exit(&mut self, timeout: Duration) -> (std::process::ExitStatus, String) {
        let status = tokio::time::timeout(timeout, self.child.wait()).await.expect("the proxy exits in time").unwrap();
        if let Some(reader) = self.log_reader.take() {
            tokio::time::timeout(Duration::from_secs(5), reader).await.expect("stderr closes after exit").unwrap();
        }
        (status, self.log.lock().unwrap().clone())
    }

    /// Open file descriptors of the process.
    pub fn fds(&self) -> usize {
        let pid = self.child.id().expect("running");
        std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
    }

    /// Peak resident memory (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let pid = self.child.id().expect("running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
        let kb: u64 = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).expect("VmHWM");
        kb * 1024
    }

    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("running").to_string();
        let ok = std::process::Command::new("kill").args(["-s", sig, &pid]).status().expect("kill").success();
        assert!(ok, "kill -s {sig} {pid}");
    }
}

/// A port on 127.0.0.1 that is free now (for port forwards, which need one each), taken below
/// the kernel's ephemeral range (32768 and up): every listener the tests bind to port 0 and
/// every outgoing connection land there, so a port from here is not taken by another test
/// between this check and the proxy's bind. Each port is handed out once per process.
pub async fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    const LOW: u16 = 20_000;
    const SPAN: u16 = 12_000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    // A different start per process, so that concurrent test binaries rarely meet.
    let _ = NEXT.compare_exchange(0, (std::process::id() % u32::from(SPAN)) as u16 + 1, Ordering::Relaxed, Ordering::Relaxed);
    loop {
        let port = LOW + NEXT.fetch_add(1, Ordering::Relaxed) % SPAN;
        if tokio::net::TcpListener::bind(("127.0.0.1", port)).await.is_ok() {
            return port;
        }
    }
}
