//! The load generator.

use anyhow::Context as _;
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{Request, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::{sync::mpsc, time::Instant};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// `http://IP:PORT/path`: where to connect and what to ask for.
    #[arg(long)]
    url: Uri,
    /// Host header / :authority to send (defaults to the URL's).
    #[arg(long)]
    host: Option<String>,
    /// HTTP/2 with prior knowledge; requests are multiplexed on each connection.
    #[arg(long)]
    http2: bool,
    /// gRPC-shaped unary calls over HTTP/2; success needs trailers `grpc-status: 0`.
    #[arg(long)]
    grpc: bool,
    #[arg(long, default_value_t = 10)]
    connections: usize,
    /// Requests per second in total, on a fixed schedule (open loop).
    #[arg(long, conflicts_with = "max")]
    rate: Option<f64>,
    /// As fast as possible (closed loop): HTTP/1 one request in flight per connection, HTTP/2 ten.
    #[arg(long)]
    max: bool,
    /// The measured window.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Sent before the window and not recorded.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    warmup: Duration,
    /// Worker threads.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().map_err(|_| format!("bad duration {s:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("bad duration {s:?}: use ms, s or m")),
    }
}

pub fn main(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(args.rate.is_some() || args.max, "give --rate RPS or --max");
    anyhow::ensure!(args.connections > 0, "--connections must be positive");
    let rt = if args.threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.threads).enable_all().build()?
    };
    let (report, ok) = rt.block_on(run(args))?;
    println!("{report}");
    // A run in which nothing succeeded measured nothing: say so with the exit status too.
    anyhow::ensure!(ok > 0, "no request succeeded");
    Ok(())
}

struct Target {
    addr: SocketAddr,
    authority: String,
    path: String,
    http2: bool,
    grpc: bool,
}

enum Conn {
    H1(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Full<Bytes>>),
}

impl Target {
    async fn connect(&self) -> anyhow::Result<Conn> {
        let tcp = tokio::net::TcpStream::connect(self.addr).await.with_context(|| format!("connecting to {}", self.addr))?;
        tcp.set_nodelay(true)?;
        let io = TokioIo::new(tcp);
        if self.http2 {
            let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io).await?;
            tokio::spawn(conn);
            Ok(Conn::H2(send))
        } else {
            let (send, conn) = hyper::client::conn::http1::handshake(io).await?;
            tokio::spawn(conn);
            Ok(Conn::H1(send))
        }
    }

    fn request(&self) -> Request<Full<Bytes>> {
        let b = if self.http2 {
            Request::builder().uri(format!("http://{}{}", self.authority, self.path))
        } else {
            Request::builder().uri(self.path.as_str()).header("host", self.authority.as_str())
        };
        if self.grpc {
            b.method("POST")
                .header("content-type", "application/grpc")
                .header("te", "trailers")
                .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 4, 0x0a, 0x02, b'h', b'i'])))
                .expect("valid request")
        } else {
            b.body(Full::new(Bytes::new())).expect("valid request")
        }
    }
}

/// Sends one request and reads the whole response; true when it succeeded.
async fn exchange(conn: &mut Conn, target: &Target) -> bool {
    let rsp = match conn {
        Conn::H1(s) => match s.ready().await {
            Ok(()) => s.send_request(target.request()).await,
            Err(e) => Err(e),
        },
        Conn::H2(s) => s.clone().send_request(target.request()).await,
    };
    let Ok(rsp) = rsp else { return false };
    let status_ok = rsp.status().is_success();
    match rsp.into_body().collect().await {
        Ok(body) if target.grpc => status_ok && body.trailers().and_then(|t| t.get("grpc-status")).is_some_and(|v| v == "0"),
        Ok(_) => status_ok,
        Err(_) => false,
    }
}

/// One sample: latency in microseconds (from the intended send time) and success.
type Sample = (u64, bool);

async fn run(args: Args) -> anyhow::Result<(String, u64)> {
    let addr: SocketAddr =
        format!("{}:{}", args.url.host().context("url needs a host")?, args.url.port_u16().unwrap_or(80)).parse().context("url host must be an IP")?;
    let target = Arc::new(Target {
        addr,
        authority: args.host.clone().unwrap_or_else(|| args.url.authority().map(|a| a.to_string()).unwrap_or_default()),
        path: args.url.path_and_query().map(|p| p.to_string()).unwrap_or_else(|| "/".into()),
        http2: args.http2 || args.grpc,
        grpc: args.grpc,
    });
    let start = Instant::now() + Duration::from_millis(100);
    let record_from = start + args.warmup;
    let end = record_from + args.duration;
    let (tx, mut rx) = mpsc::unbounded_channel::<Sample>();
    // Open loop: one OS thread walks the global schedule with std::thread::sleep (sub-100 µs
    // precision, where tokio's timer wheel has 1 ms) and hands each intended send time to its
    // connection. Latency is always measured from the intended time.
    let mut schedules = Vec::new();
    for _ in 0..args.connections {
        let (target, tx, args) = (target.clone(), tx.clone(), args.clone());
        let (sched_tx, sched_rx) = mpsc::unbounded_channel::<Instant>();
        schedules.push(sched_tx);
        tokio::spawn(async move {
            let conn = match target.connect().await {
                Ok(conn) => conn,
                Err(e) => {
                    eprintln!("knit-loadgen: {e:#}");
                    let _ = tx.send((0, false));
                    return;
                }
            };
            let window = Window { record_from, end };
            match args.rate {
                Some(_) => open_loop(conn, target, sched_rx, window, tx).await,
                None => closed_loop(conn, target, window, tx).await,
            }
        });
    }
    if let Some(rate) = args.rate {
        let (start_std, connections) = (start.into_std(), args.connections);
        let total = ((args.warmup + args.duration).as_secs_f64() * rate) as u64;
        std::thread::spawn(move || {
            for k in 0..total {
                let at = start_std + Duration::from_secs_f64(k as f64 / rate);
                let now = std::time::Instant::now();
                if at > now {
                    std::thread::sleep(at - now);
                }
                if schedules[(k % connections as u64) as usize].send(Instant::from_std(at)).is_err() {
                    break;
                }
            }
        });
    } else {
        drop(schedules);
    }
    drop(tx);
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds");
    let (mut ok, mut errors) = (0u64, 0u64);
    // Responses still outstanding long after the window are counted as errors by omission.
    let deadline = end + Duration::from_secs(10);
    while let Ok(Some((us, success))) = tokio::time::timeout_at(deadline, rx.recv()).await {
        hist.saturating_record(us.max(1));
        if success {
            ok += 1
        } else {
            errors += 1
        }
    }
    let ms = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    let total = ok + errors;
    Ok((
        format!(
            "{{\"requests\":{total},\"errors\":{errors},\"rps\":{:.1},\"p50_ms\":{:.3},\"p90_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3}}}",
            total as f64 / args.duration.as_secs_f64(),
            ms(0.5),
            ms(0.9),
            ms(0.99),
            hist.max() as f64 / 1000.0
        ),
        ok,
    ))
}

#[derive(Clone, Copy)]
struct Window {
    record_from: Instant,
    end: Instant,
}

fn record(tx: &mpsc::UnboundedSender<Sample>, window: Window, intended: Instant, success: bool) {
    if intended >= window.record_from {
        let _ = tx.send((Instant::now().saturating_duration_since(intended).as_micros() as u64, success));
    }
}

/// Sends at the intended times the scheduler hands over. HTTP/1 has one request in flight: a late
/// response delays the next send, and that delay is part of the next request's latency (the
/// coordinated-omission correction). HTTP/2 sends each request at its time on the shared
/// connection.
async fn open_loop(mut conn: Conn, target: Arc<Target>, mut schedule: mpsc::UnboundedReceiver<Instant>, window: Window, tx: mpsc::UnboundedSender<Sample>) {
    while let Some(intended) = schedule.recv().await {
        match &mut conn {
            Conn::H2(send) => {
                let (send, target, tx) = (send.clone(), target.clone(), tx.clone());
                tokio::spawn(async move {
                    let success = exchange(&mut Conn::H2(send), &target).await;
                    record(&tx, window, intended, success);
                });
            }
            Conn::H1(_) => {
                let success = exchange(&mut conn, &target).await;
                record(&tx, window, intended, success);
                if !success {
                    if let Ok(c) = target.connect().await {
                        conn = c;
                    }
                }
            }
        }
    }
}

/// Back to back until the window ends; latency is from the actual send.
async fn closed_loop(conn: Conn, target: Arc<Target>, window: Window, tx: mpsc::UnboundedSender<Sample>) {
    let lanes = if target.http2 { 10 } else { 1 };
    let mut tasks = Vec::new();
    let mut h1 = Some(conn);
    for _ in 0..lanes {
        let mut conn = match h1.as_ref() {
            Some(Conn::H2(s)) => Conn::H2(s.clone()),
            _ => h1.take().expect("one HTTP/1 lane"),
        };
        let (target, tx) = (target.clone(), tx.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < window.end {
                let sent = Instant::now();
                let success = exchange(&mut conn, &target).await;
                record(&tx, window, sent, success);
                if !success && !target.http2 {
                    match target.connect().await {
                        Ok(c) => conn = c,
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}
