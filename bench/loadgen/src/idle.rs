//! Idle connections: open many, make one exchange on each, then hold them open and quiet, so that
//! the benchmark can read what each costs a proxy (its RSS before and after, divided by the
//! count).

use anyhow::Context as _;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    sync::Semaphore,
    task::JoinSet,
};

#[derive(clap::Args)]
pub struct Args {
    /// Where to connect.
    #[arg(long)]
    addr: SocketAddr,
    /// Host header / :authority of the one request (h1, h2).
    #[arg(long, default_value = "backend")]
    host: String,
    /// `h1` (one GET, then keep-alive), `h2` (prior knowledge, one GET, then the connection
    /// stays open) or `redis` (one PING, for opaque TCP).
    #[arg(long, value_parser = ["h1", "h2", "redis"])]
    protocol: String,
    #[arg(long)]
    connections: usize,
    /// Connections being opened at once.
    #[arg(long, default_value_t = 200)]
    parallel: usize,
    /// Written (with the number of connections held) once every connection has made its
    /// exchange.
    #[arg(long)]
    ready_file: PathBuf,
    /// How long to hold the connections after that.
    #[arg(long, default_value = "30s", value_parser = crate::load::parse_duration)]
    hold: Duration,
}

/// What keeps a connection open: the client half, while the connection's task runs.
enum Held {
    H1(#[allow(dead_code)] hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(#[allow(dead_code)] hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
    Tcp(#[allow(dead_code)] TcpStream),
}

async fn open(args: &Args) -> anyhow::Result<Held> {
    let tcp = TcpStream::connect(args.addr).await.with_context(|| format!("connecting to {}", args.addr))?;
    tcp.set_nodelay(true)?;
    match args.protocol.as_str() {
        "redis" => {
            let mut tcp = tcp;
            tcp.write_all(b"PING\r\n").await?;
            let mut buf = [0u8; 7];
            tcp.read_exact(&mut buf).await?;
            anyhow::ensure!(&buf == b"+PONG\r\n", "unexpected answer {buf:?}");
            Ok(Held::Tcp(tcp))
        }
        "h2" => {
            let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            let req = Request::builder().uri(format!("http://{}/", args.host)).body(Empty::new())?;
            let rsp = send.send_request(req).await?;
            anyhow::ensure!(rsp.status().is_success(), "status {}", rsp.status());
            rsp.into_body().collect().await?;
            Ok(Held::H2(send))
        }
        _ => {
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
            tokio::spawn(conn);
            let req = Request::builder().uri("/").header("host", &args.host).body(Empty::new())?;
            let rsp = send.send_request(req).await?;
            anyhow::ensure!(rsp.status().is_success(), "status {}", rsp.status());
            rsp.into_body().collect().await?;
            Ok(Held::H1(send))
        }
    }
}

pub fn main(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.connections > 0 && args.parallel > 0, "--connections and --parallel must be positive");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async move {
        let args = Arc::new(args);
        let gate = Arc::new(Semaphore::new(args.parallel));
        let mut tasks = JoinSet::new();
        for _ in 0..args.connections {
            let (args, gate) = (args.clone(), gate.clone());
            tasks.spawn(async move {
                let _permit = gate.acquire_owned().await.expect("the gate stays open");
                tokio::time::timeout(Duration::from_secs(10), open(&args)).await.context("timed out")?
            });
        }
        let mut held = Vec::with_capacity(args.connections);
        let mut first_error = None;
        while let Some(r) = tasks.join_next().await {
            match r? {
                Ok(h) => held.push(h),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let failed = args.connections - held.len();
        if let Some(e) = &first_error {
            eprintln!("knit-loadgen idle: {failed} of {} failed, the first: {e:#}", args.connections);
        }
        std::fs::write(&args.ready_file, format!("{}\n", held.len())).context("writing the ready file")?;
        println!("{{\"held\":{},\"failed\":{failed}}}", held.len());
        tokio::time::sleep(args.hold).await;
        drop(held);
        anyhow::ensure!(failed == 0, "{failed} connections failed");
        Ok(())
    })
}
