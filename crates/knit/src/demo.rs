//! `knit demo`: a small meshed application on this machine, with live golden metrics.
//!
//! Five workloads (web, books v1 and v2, two authors replicas), each behind its own knit-proxy,
//! and knit-control in this process, serving a directory of Kubernetes-shaped manifests (local
//! mode): Services, ExternalWorkloads for the demo's processes, a Server with an
//! AuthorizationPolicy, and the HTTPRoute that splits books 90/10 between v1 and v2. Traffic
//! enters web's proxy; web calls books and authors through its outbound listener, whose routes,
//! split, retries and balancer come from knit-control; every hop between proxies is mutual TLS
//! with identities knit-control issued. The table is read from each proxy's own metrics.

mod apps;
mod traces;

use anyhow::Context as _;
use apps::App;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use knit_proxy::{config::Config, metrics::Metrics, Proxy};
use std::{
    collections::BTreeMap,
    io::IsTerminal,
    net::SocketAddr,
    path::{Path, PathBuf},
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
    /// Write the demo's manifests here and keep them (an existing books-split.yaml is kept, so
    /// your edits survive a restart); default: a temporary directory removed on exit.
    #[arg(long)]
    dir: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    knit_core::parse::duration(s).map_err(|e| e.to_string())
}

const NAMESPACE: &str = "demo";
const APP_MANIFESTS: &str = include_str!("demo/app.yaml");
const SPLIT_MANIFEST: &str = include_str!("demo/books-split.yaml");

/// One workload of the demo: its process, its labels and service account.
struct Spec {
    name: &'static str,
    /// What a cluster would call its Deployment (`linkerd.io/proxy-deployment`).
    deployment: &'static str,
    service_account: &'static str,
    labels: &'static [(&'static str, &'static str)],
}

const WEB: Spec = Spec { name: "web", deployment: "web", service_account: "web", labels: &[("app", "web")] };
const BACKENDS: [(Spec, App); 4] = [
    (
        Spec { name: "books-v1", deployment: "books-v1", service_account: "books", labels: &[("app", "books"), ("version", "v1")] },
        App::Books { min_ms: 5, max_ms: 15, fail_per_mille: 0 },
    ),
    (
        Spec { name: "books-v2", deployment: "books-v2", service_account: "books", labels: &[("app", "books"), ("version", "v2")] },
        App::Books { min_ms: 30, max_ms: 60, fail_per_mille: 50 },
    ),
    (Spec { name: "authors-1", deployment: "authors", service_account: "authors", labels: &[("app", "authors")] }, App::Authors { limited_per_mille: 300 }),
    (Spec { name: "authors-2", deployment: "authors", service_account: "authors", labels: &[("app", "authors")] }, App::Authors { limited_per_mille: 0 }),
];

pub fn main(args: Args) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(run(args))
}

struct Workload {
    name: &'static str,
    metrics: Metrics,
}

/// The demo's manifest directory, identity material and control plane.
struct Mesh {
    /// Identity material and tokens (always temporary).
    secrets: PathBuf,
    manifests: PathBuf,
    keep_manifests: bool,
    control: knit_control::Addrs,
    tokens: knit_identity::token::TokenKey,
}

impl Mesh {
    /// Writes the manifests, creates identity material and binds knit-control (it serves once
    /// `run` is spawned).
    async fn bind(dir: Option<PathBuf>) -> anyhow::Result<(Self, knit_control::Control)> {
        use knit_identity::layout;
        let secrets = std::env::temp_dir().join(format!("knit-demo-{}", std::process::id()));
        let keep_manifests = dir.is_some();
        let manifests = dir.unwrap_or_else(|| secrets.join("manifests"));
        std::fs::create_dir_all(&manifests).with_context(|| format!("creating {}", manifests.display()))?;
        std::fs::write(manifests.join("app.yaml"), APP_MANIFESTS)?;
        let split = manifests.join("books-split.yaml");
        if !split.exists() {
            std::fs::write(&split, SPLIT_MANIFEST)?;
        }
        let day = Duration::from_secs(86_400);
        // Removed when the demo ends; long enough that nothing (the dashboard, knit check, the
        // expiry alerts) warns about it while it runs.
        let params = layout::Params { anchor_lifetime: 365 * day, issuer_lifetime: 90 * day, ..Default::default() };
        let material = layout::init(&secrets.join("identity"), &params).map_err(|e| anyhow::anyhow!("{e}"))?;
        let mut config = knit_control::config::Config::local(knit_control::config::IdentityConfig::for_dir(secrets.join("identity")));
        config.discovery.config_dir = Some(manifests.clone());
        // `knit viz` finds the viz API at its default address, unless another mesh has it.
        config.viz.viz_scrape_interval = Duration::from_secs(2);
        let mut preferred = config.clone();
        preferred.viz.viz_addr = SocketAddr::from(([127, 0, 0, 1], crate::viz::DEFAULT_PORT));
        let control = match knit_control::Control::bind(preferred).await {
            Ok(c) => c,
            Err(_) => knit_control::Control::bind(config).await?,
        };
        let mesh = Self { secrets, manifests, keep_manifests, control: control.addrs(), tokens: material.token_key };
        Ok((mesh, control))
    }

    fn identity_name(service_account: &str) -> String {
        knit_identity::identity_name(service_account, NAMESPACE, "knit", "cluster.local")
    }

    /// A proxy's configuration: identity from knit-control (with a token for its service
    /// account) and discovery from knit-control as the workload `spec.name`.
    fn proxy_config(&self, spec: &Spec, app: SocketAddr, collector: SocketAddr) -> anyhow::Result<Config> {
        let name = Self::identity_name(spec.service_account);
        let expires_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs() as i64 + 86_400;
        let token_file = self.secrets.join(format!("{}.token", spec.name));
        std::fs::write(&token_file, self.tokens.sign(&knit_identity::token::Claims { identity: name.clone(), expires_at }))?;
        let mut config = Config::loopback();
        config.shutdown_grace_period = Duration::from_secs(5);
        // knit-control taps the demo's proxies (`knit viz tap`) as its own identity.
        config.tap = Some(knit_proxy::config::TapConfig {
            listen_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            svc_name: knit_identity::identity_name("knit-control", "knit", "knit", "cluster.local"),
            max_rps: 100,
        });
        config.inbound.target_addr = Some(app);
        config.identity = Some(knit_proxy::identity::IdentityConfig {
            local_name: name,
            trust_anchors: knit_proxy::identity::TrustAnchors::File(self.secrets.join("identity").join(knit_identity::layout::TRUST_ANCHORS)),
            token_file,
            svc_addr: self.control.identity.into(),
            min_refresh: Duration::from_secs(10),
            max_refresh: Duration::from_secs(86_400),
        });
        let d = &mut config.discovery;
        d.destination_addr = Some(self.control.destination.into());
        d.policy_addr = Some(self.control.policy.into());
        d.workload = format!(r#"{{"ns":"{NAMESPACE}","external_workload":"{}"}}"#, spec.name);
        d.inbound_ports = [app.port()].into();
        // Every demo workload shares 127.0.0.1: trusting loopback would let any of them past
        // books' AuthorizationPolicy.
        d.trust_loopback = false;
        // Spans to the demo's collector. Web's proxy, where requests enter the mesh, starts a
        // trace for one request in 20 (Knit's sampling of untraced requests); the others join.
        config.trace = Some(knit_proxy::trace::TraceConfig {
            collector: collector.into(),
            service_name: spec.name.to_string(),
            attributes_path: None,
            extra_attributes: vec![("k8s.deployment.name".into(), spec.deployment.into())],
            otel_resource_attributes: Vec::new(),
            host_name: None,
            sample_untraced: if spec.name == WEB.name { 0.05 } else { 0.0 },
            queue: 1000,
            max_batch: 512,
            flush_interval: Duration::from_millis(500),
            export_timeout: Duration::from_secs(5),
        });
        Ok(config)
    }

    /// The ExternalWorkloads: where each demo process and its proxy listen. Written once the
    /// proxies are bound, because their ports are only known then.
    fn write_workloads(&self, placed: &[(&Spec, SocketAddr, knit_proxy::Addrs)]) -> anyhow::Result<()> {
        let mut out = String::from("# Written by `knit demo` at start-up: where each workload and its proxy listen.\n");
        for (spec, app, proxy) in placed {
            let id = Self::identity_name(spec.service_account);
            let labels: String = spec.labels.iter().map(|(k, v)| format!("    {k}: {v}\n")).collect();
            let (inbound, admin, deployment) = (proxy.inbound.port(), proxy.admin.port(), spec.deployment);
            let tap = proxy.tap.map_or(String::new(), |t| format!("    knit.dev/proxy-tap-port: \"{}\"\n", t.port()));
            out.push_str(&format!(
                "---\napiVersion: workload.linkerd.io/v1beta1\nkind: ExternalWorkload\nmetadata:\n  name: {name}\n  namespace: {NAMESPACE}\n  labels:\n{labels}    linkerd.io/proxy-deployment: {deployment}\n  annotations:\n    knit.dev/proxy-inbound-port: \"{inbound}\"\n    knit.dev/proxy-admin-port: \"{admin}\"\n{tap}spec:\n  meshTLS:\n    identity: {id}\n    serverName: {id}\n  workloadIPs:\n    - ip: {ip}\n  ports:\n    - name: http\n      port: {port}\n",
                name = spec.name,
                ip = app.ip(),
                port = app.port(),
            ));
        }
        let path = self.manifests.join("workloads.yaml");
        std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.secrets);
        if self.keep_manifests {
            let _ = std::fs::remove_file(self.manifests.join("workloads.yaml"));
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    // First: from here a SIGTERM or Ctrl-C stops the demo through the code below, which removes
    // its temporary directory (identity keys included), instead of killing it on the spot.
    let shutdown = knit_proxy::drain::shutdown_signal();
    tokio::pin!(shutdown);
    let (stop_tx, stop_rx) = watch::channel(false);
    let until_stopped = |rx: &watch::Receiver<bool>| {
        let mut rx = rx.clone();
        async move {
            let _ = rx.wait_for(|s| *s).await;
        }
    };
    let (mesh, control) = Mesh::bind(args.dir.clone()).await.context("starting knit-control")?;
    let (collector_addr, collector) = traces::Collector::start().await.context("starting the trace collector")?;

    // Every process and proxy binds first; the workloads manifest then says where they are.
    let web_listener = TcpListener::bind("127.0.0.1:0").await?;
    let web_app = web_listener.local_addr()?;
    let web_proxy = Proxy::bind(mesh.proxy_config(&WEB, web_app, collector_addr)?, None).await.context("starting web's proxy")?;
    let web_addrs = web_proxy.addrs();
    let mut placed = vec![(&WEB, web_app, web_addrs.clone())];
    let mut proxies = vec![(WEB.name, web_proxy)];
    for (spec, app) in &BACKENDS {
        let addr = apps::serve_app(*app).await?;
        let proxy = Proxy::bind(mesh.proxy_config(spec, addr, collector_addr)?, None).await.with_context(|| format!("starting {}'s proxy", spec.name))?;
        placed.push((spec, addr, proxy.addrs()));
        proxies.push((spec.name, proxy));
    }
    tokio::spawn(apps::accept_app(web_listener, App::Web { outbound: web_addrs.outbound }));
    mesh.write_workloads(&placed)?;
    let control_task = tokio::spawn(control.run(until_stopped(&stop_rx)));

    let mut workloads = Vec::new();
    let mut tasks = Vec::new();
    for (name, proxy) in proxies {
        workloads.push(Workload { name, metrics: proxy.metrics().clone() });
        tasks.push(tokio::spawn(proxy.run(until_stopped(&stop_rx))));
    }
    // Proxies serve nothing until certified, and web's routes need knit-control's answers:
    // start the traffic once a request goes through.
    tokio::select! {
        up = warm_up(web_addrs.inbound) => up?,
        signal = &mut shutdown => {
            println!("{signal} while starting: stopping.");
            return Ok(());
        }
    }
    let sent = std::sync::Arc::new(AtomicU64::new(0));
    tokio::spawn(generate(web_addrs.inbound, args.rps, sent.clone(), stop_rx.clone()));
    print_intro(&web_addrs, mesh.control.viz, &mesh.manifests, args.duration);

    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let mut previous: Vec<Snapshot> = workloads.iter().map(|w| Snapshot::read(&w.metrics)).collect();
    let mut last = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(args.interval.max(1)));
    let mut trace_shown: Option<Instant> = None;
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
                // A sampled request end to end, every ten seconds: web's proxy, web's calls to
                // books and authors, and their proxies (ten spans when nothing failed).
                if trace_shown.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                    if let Some(trace) = collector.latest(10, Duration::from_secs(1)) {
                        println!("{}", traces::render(&trace));
                        trace_shown = Some(Instant::now());
                    }
                }
                previous = now;
                last = Instant::now();
            }
            signal = &mut shutdown => {
                println!("\n{signal}: stopping the proxies (each drains its in-flight requests)...");
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
    if let Ok(Err(e)) = control_task.await {
        eprintln!("knit-control: {e:#}");
    }
    println!("stopped cleanly.");
    Ok(())
}

/// Waits until a request through web's proxy succeeds end to end (certificates issued, routes
/// and endpoints discovered), for at most 20 s.
async fn warm_up(web: SocketAddr) -> anyhow::Result<()> {
    let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        let req = Request::get(format!("http://{web}/")).header("host", "web:8080").body(Empty::new()).expect("valid request");
        match client.request(req).await {
            Ok(rsp) if rsp.status().is_success() => return Ok(()),
            Ok(rsp) => {
                last = format!("status {}", rsp.status());
                let _ = rsp.into_body().collect().await;
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!("the demo did not come up within 20s: the last request to web answered {last}")
}

fn print_intro(web: &knit_proxy::Addrs, viz: SocketAddr, manifests: &Path, duration: Option<Duration>) {
    println!("Knit demo: web calls books (split 90% v1 / 10% v2) and authors (two replicas), each workload behind");
    println!("its own knit-proxy, with knit-control serving identity, discovery and policy from a manifest directory.");
    println!("  - traffic enters web's proxy at http://{}; web calls books and authors through its outbound", web.inbound);
    println!("    listener {}: routes, the split, retries and the load balancer come from knit-control.", web.outbound);
    println!("  - every hop between proxies is mutual TLS 1.3 (MTLS% counts inbound requests over mTLS); books only");
    println!("    accepts web's identity (a Server with an AuthorizationPolicy).");
    println!("  - books-v2 is slower and fails 5% of requests (books retries 5xx once); authors-1 answers 30% of");
    println!("    requests with 429 and Retry-After: 1, so the balancer sends most authors traffic to authors-2,");
    println!("    and web's proxy retries a 429 there.");
    println!("  - numbers are the INBOUND golden metrics each proxy exports.");
    println!("  - change the split: edit the weights in {} and save;", manifests.join("books-split.yaml").display());
    println!("    within a second the RPS of books-v1 and books-v2 follows. All manifests: {}", manifests.display());
    println!("  - try: curl -s http://{}/ ; metrics of web's proxy: curl -s http://{}/metrics", web.inbound, web.admin);
    println!("  - tracing: web's proxy starts a W3C trace for one request in 20, web passes `traceparent` on to");
    println!("    books and authors, and every proxy exports its spans over OTLP to a collector in this process;");
    println!("    the newest trace is drawn under the table every 10 s.");
    println!("  - dashboard: http://{viz}/");
    let flag = if viz.port() == crate::viz::DEFAULT_PORT { String::new() } else { format!(" --viz-addr {viz}") };
    println!("  - in another terminal: knit viz stat deploy -n {NAMESPACE}{flag}   (or --to deploy/books-v1, -o wide)");
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
        let text = metrics.encode();
        for sample in knit_control::viz::prom::lines(&text) {
            if sample.label("direction").as_deref() != Some("inbound") {
                continue;
            }
            match sample.name {
                "response_total" => {
                    if sample.label("tls").as_deref() == Some("true") {
                        s.mtls += sample.value;
                    }
                    match sample.label("classification").as_deref() {
                        Some("success") => s.success += sample.value,
                        _ => s.failure += sample.value,
                    }
                }
                "response_latency_ms_bucket" => {
                    let le = sample.label("le").and_then(|v| v.parse::<f64>().ok()).unwrap_or(f64::INFINITY);
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
        let q = |q| knit_control::viz::prom::quantile(q, &buckets).map_or("-".to_string(), |v| format!("{v:.1}"));
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
