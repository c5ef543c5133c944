//! `knit demo`: a small meshed application on this machine, with live golden metrics.
//!
//! Four workloads (a web front end, books v1 and v2, authors), each behind its own knit-proxy.
//! Traffic enters web's proxy, web calls books and authors through its outbound listener, and
//! those calls cross the mesh hop (HTTP/1 carried as HTTP/2 with Linkerd's transport header) to
//! the other proxies. The table is read from each proxy's own metrics.
//!
//! knit-control runs in this process too and certifies every proxy, so every hop between proxies
//! is mutual TLS. Until it serves discovery, the destination table stands in for it; the split is
//! 9 books-v1 endpoints to 1 books-v2.

use crate::prom;
use anyhow::Context as _;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper_util::{client::legacy::Client, rt::{TokioExecutor, TokioIo}};
use knit_proxy::{config::Config, metrics::Metrics, Proxy};
use std::{
    collections::BTreeMap,
    convert::Infallible,
    io::IsTerminal,
    net::SocketAddr,
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};
use tokio::{net::TcpListener, sync::watch};

#[derive(clap::Args)]
pub struct Args {
    /// Stop after this long (e.g. 30s, 2m) and exit 0; without it, run until Ctrl-C.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Requests per second the traffic generator sends to web.
    #[arg(long, default_value_t = 40)]
    rps: u32,
    /// Seconds between table refreshes.
    #[arg(long, default_value_t = 2)]
    interval: u64,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    knit_core::parse::duration(s).map_err(|e| e.to_string())
}

/// How a demo application answers.
#[derive(Clone, Copy)]
enum App {
    Web { outbound: SocketAddr },
    Books { min_ms: u64, max_ms: u64, fail_per_mille: u64 },
    Authors { limited_per_mille: u64 },
}

pub fn main(args: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(run(args))
}

struct Workload {
    name: &'static str,
    metrics: Metrics,
}

/// The demo's identity material and control plane.
struct Mesh {
    dir: std::path::PathBuf,
    identity_addr: SocketAddr,
    tokens: knit_identity::token::TokenKey,
}

impl Mesh {
    async fn start(stop: &watch::Receiver<bool>) -> anyhow::Result<Self> {
        use knit_identity::layout;
        let dir = std::env::temp_dir().join(format!("knit-demo-{}", std::process::id()));
        let day = Duration::from_secs(86_400);
        let params = layout::Params { anchor_lifetime: 30 * day, issuer_lifetime: 7 * day, ..Default::default() };
        let material = layout::init(&dir, &params).map_err(|e| anyhow::anyhow!("{e}"))?;
        let config = knit_control::config::Config::local(knit_control::config::IdentityConfig::for_dir(&dir));
        let control = knit_control::Control::bind(config).await?;
        let identity_addr = control.addrs().identity;
        let mut stop = stop.clone();
        tokio::spawn(control.run(async move {
            let _ = stop.wait_for(|s| *s).await;
        }));
        Ok(Self { dir, identity_addr, tokens: material.token_key })
    }

    fn identity_name(workload: &str) -> String {
        knit_identity::identity_name(workload, "demo", "knit", "cluster.local")
    }

    /// Identity settings for a workload's proxy, with a token for it.
    fn proxy_identity(&self, workload: &str) -> anyhow::Result<knit_proxy::identity::IdentityConfig> {
        let name = Self::identity_name(workload);
        let expires_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64 + 86_400;
        let token_file = self.dir.join(format!("{workload}.token"));
        std::fs::write(&token_file, self.tokens.sign(&knit_identity::token::Claims { identity: name.clone(), expires_at }))?;
        Ok(knit_proxy::identity::IdentityConfig {
            local_name: name,
            trust_anchors: self.dir.join(knit_identity::layout::TRUST_ANCHORS),
            token_file,
            svc_addr: self.identity_addr,
            min_refresh: Duration::from_secs(10),
            max_refresh: Duration::from_secs(86_400),
        })
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn start_proxy(name: &'static str, mesh: &Mesh, configure: impl FnOnce(&mut Config), stop: &watch::Receiver<bool>) -> anyhow::Result<(Workload, knit_proxy::Addrs, tokio::task::JoinHandle<bool>)> {
    let mut config = Config::loopback();
    config.shutdown_grace_period = Duration::from_secs(5);
    config.identity = Some(mesh.proxy_identity(name)?);
    configure(&mut config);
    let proxy = Proxy::bind(config, None).await.with_context(|| format!("starting {name}'s proxy"))?;
    let addrs = proxy.addrs();
    let metrics = proxy.metrics().clone();
    let mut stop = stop.clone();
    let task = tokio::spawn(proxy.run(async move {
        let _ = stop.wait_for(|s| *s).await;
    }));
    Ok((Workload { name, metrics }, addrs, task))
}

async fn run(args: Args) -> anyhow::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let mesh = Mesh::start(&stop_rx).await.context("starting knit-control")?;
    let mut workloads = Vec::new();
    let mut tasks = Vec::new();

    let books_v1 = serve_app(App::Books { min_ms: 5, max_ms: 15, fail_per_mille: 0 }).await?;
    let books_v2 = serve_app(App::Books { min_ms: 30, max_ms: 60, fail_per_mille: 50 }).await?;
    let authors = serve_app(App::Authors { limited_per_mille: 100 }).await?;
    let mut meshed = BTreeMap::new();
    for (name, app) in [("books-v1", books_v1), ("books-v2", books_v2), ("authors", authors)] {
        let (w, addrs, task) = start_proxy(name, &mesh, |c| c.inbound.target_addr = Some(app), &stop_rx).await?;
        meshed.insert(name, format!("{app}@{}#{}", addrs.inbound.port(), Mesh::identity_name(name)));
        workloads.push(w);
        tasks.push(task);
    }
    let books = std::iter::repeat_n(meshed["books-v1"].as_str(), 9).chain([meshed["books-v2"].as_str()]).collect::<Vec<_>>().join("|");
    let table = format!("books:8080={books},authors:8080={}", meshed["authors"]);
    // web's outbound listener is known only once its proxy is bound, so web's app learns it then.
    let web_listener = TcpListener::bind("127.0.0.1:0").await?;
    let web_app = web_listener.local_addr()?;
    let (web, web_addrs, task) = start_proxy(
        "web",
        &mesh,
        |c| {
            c.inbound.target_addr = Some(web_app);
            c.outbound.endpoints = table.parse().expect("the demo's table is well-formed");
        },
        &stop_rx,
    )
    .await?;
    tokio::spawn(accept_app(web_listener, App::Web { outbound: web_addrs.outbound }));
    workloads.insert(0, web);
    tasks.push(task);

    // Proxies serve nothing until certified; start the traffic once they are.
    for (i, w) in workloads.iter().enumerate() {
        let deadline = Instant::now() + Duration::from_secs(10);
        while w.metrics.identity.refreshes.get() == 0 {
            anyhow::ensure!(Instant::now() < deadline, "{}'s proxy got no certificate from knit-control within 10s", workloads[i].name);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let sent = std::sync::Arc::new(AtomicU64::new(0));
    tokio::spawn(generate(web_addrs.inbound, args.rps, sent.clone(), stop_rx.clone()));
    print_intro(&web_addrs, args.duration);

    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let mut previous: Vec<Snapshot> = workloads.iter().map(|w| Snapshot::read(&w.metrics)).collect();
    let mut last = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(args.interval.max(1)));
    ticker.tick().await;
    loop {
        let ended = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = ticker.tick() => {
                let now: Vec<Snapshot> = workloads.iter().map(|w| Snapshot::read(&w.metrics)).collect();
                print_table(&workloads, &previous, &now, last.elapsed(), sent.load(Ordering::Relaxed));
                previous = now;
                last = Instant::now();
            }
            _ = tokio::signal::ctrl_c() => {
                println!("\nCtrl-C: stopping the proxies (each drains its in-flight requests)...");
                break;
            }
            _ = ended => {
                println!("\n--duration reached: stopping the proxies...");
                break;
            }
        }
    }
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    println!("stopped cleanly.");
    Ok(())
}

fn print_intro(web: &knit_proxy::Addrs, duration: Option<Duration>) {
    println!("Knit demo: web -> books (v1 90% / v2 10%) and authors, each workload behind its own knit-proxy.");
    println!("  - traffic enters web's proxy at http://{} ; web calls books and authors through its outbound", web.inbound);
    println!("    listener {}, which carries the calls over one HTTP/2 connection per peer proxy.", web.outbound);
    println!("  - knit-control (in this process) certified every proxy: hops between proxies are mutual TLS 1.3,");
    println!("    and each app sees its caller's identity in l5d-client-id (MTLS% counts inbound requests over mTLS).");
    println!("  - books-v2 is slower and fails 5% of requests; authors answers 429 to 10% (rate limited).");
    println!("  - numbers are the INBOUND golden metrics each proxy exports (as `knit viz stat` will show).");
    println!("  - the split is the destination table (KNIT_PROXY_OUTBOUND_ENDPOINTS: 9 v1 endpoints, 1 v2);");
    println!("    once knit-control serves discovery, it comes from a TrafficSplit/HTTPRoute manifest you edit.");
    println!("  - try: curl -s http://{}/ ; metrics of web's proxy: curl -s http://{}/metrics", web.inbound, web.admin);
    match duration {
        Some(d) => println!("  running for {d:?}; Ctrl-C stops earlier.\n"),
        None => println!("  Ctrl-C stops everything.\n"),
    }
}

/// The inbound counters and latency histogram of one proxy at one moment.
#[derive(Default)]
struct Snapshot {
    success: f64,
    failure: f64,
    mtls: f64,
    /// Cumulative bucket counts by upper bound (ms).
    buckets: BTreeMap<u64, f64>,
}

impl Snapshot {
    fn read(metrics: &Metrics) -> Self {
        let mut s = Snapshot::default();
        for sample in prom::parse(&metrics.encode()) {
            if sample.labels.get("direction").map(String::as_str) != Some("inbound") {
                continue;
            }
            match sample.name.as_str() {
                "response_total" => {
                    if sample.labels.get("tls").map(String::as_str) == Some("true") {
                        s.mtls += sample.value;
                    }
                    match sample.labels.get("classification").map(String::as_str) {
                        Some("success") => s.success += sample.value,
                        _ => s.failure += sample.value,
                    }
                }
                "response_latency_ms_bucket" => {
                    let le = sample.labels.get("le").and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::INFINITY);
                    // Bounds are whole milliseconds; +Inf sorts last as u64::MAX.
                    let key = if le.is_finite() { le as u64 } else { u64::MAX };
                    *s.buckets.entry(key).or_default() += sample.value;
                }
                _ => {}
            }
        }
        s
    }
}

fn print_table(workloads: &[Workload], before: &[Snapshot], now: &[Snapshot], elapsed: Duration, sent: u64) {
    let secs = elapsed.as_secs_f64().max(0.001);
    if std::io::stdout().is_terminal() {
        print!("\x1b[2J\x1b[H");
    }
    println!("{:<10} {:>8} {:>8} {:>9} {:>9} {:>9} {:>6}", "WORKLOAD", "SUCCESS", "RPS", "P50_MS", "P95_MS", "P99_MS", "MTLS%");
    for ((w, b), n) in workloads.iter().zip(before).zip(now) {
        let (ok, failed) = (n.success - b.success, n.failure - b.failure);
        let total = ok + failed;
        let buckets: Vec<(f64, f64)> = n
            .buckets
            .iter()
            .map(|(le, count)| {
                let le = if *le == u64::MAX { f64::INFINITY } else { *le as f64 };
                (le, count - b.buckets.get(&(if le.is_finite() { le as u64 } else { u64::MAX })).copied().unwrap_or(0.0))
            })
            .collect();
        let q = |q| prom::quantile(q, &buckets).map_or("-".to_string(), |v| format!("{v:.1}"));
        let rate = if total > 0.0 { format!("{:.2}%", 100.0 * ok / total) } else { "-".into() };
        let mtls = if total > 0.0 { format!("{:.0}", 100.0 * (n.mtls - b.mtls) / total) } else { "-".into() };
        println!("{:<10} {:>8} {:>8.1} {:>9} {:>9} {:>9} {:>6}", w.name, rate, total / secs, q(0.5), q(0.95), q(0.99), mtls);
    }
    println!("(last {:.0}s; {} requests sent by the generator so far)\n", secs, sent);
}

/// Sends `rps` requests per second to web, open loop, until stopped.
async fn generate(web: SocketAddr, rps: u32, sent: std::sync::Arc<AtomicU64>, mut stop: watch::Receiver<bool>) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rps.max(1))));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let client = client.clone();
        let uri = format!("http://{web}/");
        sent.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            if let Ok(rsp) = client.request(Request::get(uri).header("host", "web:8080").body(Empty::new()).expect("valid request")).await {
                let _ = rsp.into_body().collect().await;
            }
        });
    }
}

async fn serve_app(app: App) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(accept_app(listener, app));
    Ok(addr)
}

async fn accept_app(listener: TcpListener, app: App) {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    while let Ok((tcp, _)) = listener.accept().await {
        let client = client.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| answer(app, req, client.clone()));
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), svc).await;
        });
    }
}

static SEED: AtomicU64 = AtomicU64::new(0x9e37_79b9_7f4a_7c15);

/// A cheap pseudo-random number in 0..n (xorshift): the demo needs variety, not statistics.
fn rand_below(n: u64) -> u64 {
    let mut x = SEED.load(Ordering::Relaxed);
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    SEED.store(x, Ordering::Relaxed);
    x % n.max(1)
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r
}

async fn answer(app: App, _req: Request<Incoming>, client: Client<hyper_util::client::legacy::connect::HttpConnector, Empty<Bytes>>) -> Result<Response<Full<Bytes>>, Infallible> {
    Ok(match app {
        App::Books { min_ms, max_ms, fail_per_mille } => {
            tokio::time::sleep(Duration::from_millis(min_ms + rand_below(max_ms - min_ms + 1))).await;
            if rand_below(1000) < fail_per_mille { text(StatusCode::INTERNAL_SERVER_ERROR, "books failed\n") } else { text(StatusCode::OK, "[books]\n") }
        }
        App::Authors { limited_per_mille } => {
            if rand_below(1000) < limited_per_mille {
                let mut r = text(StatusCode::TOO_MANY_REQUESTS, "slow down\n");
                r.headers_mut().insert("retry-after", http::HeaderValue::from_static("1"));
                r
            } else {
                text(StatusCode::OK, "[authors]\n")
            }
        }
        App::Web { outbound } => {
            let call = |host: &'static str, path: &'static str| {
                let client = client.clone();
                async move {
                    let req = Request::get(format!("http://{outbound}{path}")).header("host", host).body(Empty::new()).expect("valid request");
                    match client.request(req).await {
                        Ok(rsp) => {
                            let ok = rsp.status().is_success();
                            let _ = rsp.into_body().collect().await;
                            ok
                        }
                        Err(_) => false,
                    }
                }
            };
            let (books, authors) = tokio::join!(call("books:8080", "/books"), call("authors:8080", "/authors"));
            if books && authors { text(StatusCode::OK, "web page\n") } else { text(StatusCode::BAD_GATEWAY, "a dependency failed\n") }
        }
    })
}
