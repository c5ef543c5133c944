//! `knit viz stat` against known traffic: knit-control in local mode knows two workloads (web and
//! books) and scrapes their proxies; a client sends a known number of requests through web's
//! proxy to books, whose backend fails every 4th. Then a real Prometheus, configured with the
//! shipped `viz/prometheus-local.yml`, scrapes the same proxies, and `knit viz stat --prometheus`
//! must agree with the built-in store, and the shipped Grafana dashboards' queries must run there.

use super::temp_dir;
use std::{
    net::SocketAddr,
    process::Command,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// web and books, each behind a knit-proxy, and knit-control watching them.
struct Mesh {
    rt: tokio::runtime::Runtime,
    viz: SocketAddr,
    web_outbound: SocketAddr,
    dir: String,
}

/// Answers 500 to every 4th request, 200 otherwise.
async fn backend() -> SocketAddr {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req: http::Request<hyper::body::Incoming>| {
                    let n = count.fetch_add(1, Ordering::Relaxed) + 1;
                    let status = if n.is_multiple_of(4) { 500 } else { 200 };
                    async move { http::Response::builder().status(status).body(http_body_util::Full::new(bytes::Bytes::from_static(b"book\n"))) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(tcp), svc).await;
            });
        }
    });
    addr
}

impl Mesh {
    /// knit-control first, then the two proxies, certified by it and discovering from it (so
    /// outbound metrics carry the `dst_*` labels discovery gives), then the manifests that say
    /// where they listen. Returns once both proxies are certified and knows both workloads.
    fn start(name: &str) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let dir = temp_dir(name);
        let (viz, web_outbound) = rt.block_on(async {
            let manifests = format!("{dir}/manifests");
            std::fs::create_dir_all(&manifests).unwrap();
            let identity_dir = std::path::PathBuf::from(format!("{dir}/identity"));
            let material = knit_identity::layout::init(&identity_dir, &Default::default()).unwrap();
            let mut config = knit_control::config::Config::local(knit_control::config::IdentityConfig::for_dir(&identity_dir));
            config.discovery.config_dir = Some(manifests.clone().into());
            config.viz.viz_scrape_interval = Duration::from_millis(250);
            let control = knit_control::Control::bind(config).await.unwrap();
            let cp = control.addrs();
            tokio::spawn(control.run(std::future::pending()));

            let id = |sa: &str| knit_identity::identity_name(sa, "test", "knit", "cluster.local");
            let proxy = |name: &str, app: Option<SocketAddr>| {
                let token_file = std::path::PathBuf::from(format!("{dir}/{name}.token"));
                let expires_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64 + 3600;
                std::fs::write(&token_file, material.token_key.sign(&knit_identity::token::Claims { identity: id(name), expires_at })).unwrap();
                let mut c = knit_proxy::config::Config::loopback();
                c.inbound.target_addr = app;
                c.identity = Some(knit_proxy::identity::IdentityConfig {
                    local_name: id(name),
                    trust_anchors: knit_proxy::identity::TrustAnchors::File(identity_dir.join(knit_identity::layout::TRUST_ANCHORS)),
                    token_file,
                    svc_addr: cp.identity.into(),
                    min_refresh: Duration::from_secs(10),
                    max_refresh: Duration::from_secs(86_400),
                });
                c.discovery.destination_addr = Some(cp.destination.into());
                c.discovery.policy_addr = Some(cp.policy.into());
                c.discovery.workload = format!(r#"{{"ns":"test","external_workload":"{name}-0"}}"#);
                c.discovery.inbound_ports = app.map(|a| a.port()).into_iter().collect();
                c
            };
            let books_app = backend().await;
            let books = knit_proxy::Proxy::bind(proxy("books", Some(books_app)), None).await.unwrap();
            let web = knit_proxy::Proxy::bind(proxy("web", None), None).await.unwrap();
            let (books_addrs, web_addrs) = (books.addrs(), web.addrs());
            tokio::spawn(books.run(std::future::pending()));
            tokio::spawn(web.run(std::future::pending()));

            let workload = |name: &str, app: SocketAddr, proxy: &knit_proxy::Addrs| {
                format!(
                    "apiVersion: workload.linkerd.io/v1beta1\nkind: ExternalWorkload\nmetadata:\n  name: {name}-0\n  namespace: test\n  labels:\n    app: {name}\n    linkerd.io/proxy-deployment: {name}\n  annotations:\n    knit.dev/proxy-admin-port: \"{admin}\"\n    knit.dev/proxy-inbound-port: \"{inbound}\"\nspec:\n  meshTLS:\n    identity: {id}\n  workloadIPs:\n    - ip: 127.0.0.1\n  ports:\n    - name: http\n      port: {port}\n",
                    admin = proxy.admin.port(),
                    inbound = proxy.inbound.port(),
                    id = id(name),
                    port = app.port()
                )
            };
            let service = "apiVersion: v1\nkind: Service\nmetadata:\n  name: books\n  namespace: test\nspec:\n  selector:\n    app: books\n  ports:\n    - name: http\n      port: 8080\n      targetPort: http\n";
            // books admits web only (a Server and an AuthorizationPolicy), and web calls it
            // through an HTTPRoute: what `stat srv`, `stat authorizationpolicy` and
            // `stat httproute` count.
            let policy = format!(
                "apiVersion: policy.linkerd.io/v1beta3\nkind: Server\nmetadata:\n  name: books-http\n  namespace: test\nspec:\n  externalWorkloadSelector:\n    matchLabels:\n      app: books\n  port: http\n  proxyProtocol: HTTP/1\n---\napiVersion: policy.linkerd.io/v1alpha1\nkind: MeshTLSAuthentication\nmetadata:\n  name: web-only\n  namespace: test\nspec:\n  identities:\n    - {web}\n---\napiVersion: policy.linkerd.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata:\n  name: books-from-web\n  namespace: test\nspec:\n  targetRef:\n    group: policy.linkerd.io\n    kind: Server\n    name: books-http\n  requiredAuthenticationRefs:\n    - group: policy.linkerd.io\n      kind: MeshTLSAuthentication\n      name: web-only\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: books-route\n  namespace: test\nspec:\n  parentRefs:\n    - group: core\n      kind: Service\n      name: books\n      port: 8080\n  rules:\n    - backendRefs:\n        - name: books\n          port: 8080\n",
                web = id("web")
            );
            // And a workload without a proxy: listed, but not meshed.
            let legacy = "apiVersion: workload.linkerd.io/v1beta1\nkind: ExternalWorkload\nmetadata:\n  name: legacy-0\n  namespace: test\n  labels:\n    linkerd.io/proxy-deployment: legacy\nspec:\n  workloadIPs:\n    - ip: 127.0.0.1\n  ports:\n    - name: http\n      port: 10\n";
            let doc = [workload("books", books_app, &books_addrs), workload("web", SocketAddr::from(([127, 0, 0, 1], 9)), &web_addrs), service.to_string(), policy, legacy.to_string()].join("---\n");
            std::fs::write(format!("{manifests}/workloads.yaml"), doc).unwrap();
            for admin in [books_addrs.admin, web_addrs.admin] {
                ready(admin).await;
            }
            // Both scraped once before any traffic, so every series the traffic creates is born
            // between two scrapes and counted from zero.
            poll(&format!("http://{}/api/scrapes", cp.viz), |scrapes| scrapes["targets"].as_array().is_some_and(|t| t.len() == 2 && t.iter().all(|t| t["health"]["up"] == true))).await;
            (cp.viz, web_addrs.outbound)
        });
        Self { rt, viz, web_outbound, dir }
    }

    /// Sends `n` requests for books through web's proxy at `rps`; returns (ok, failed).
    fn send(&self, n: u64, rps: u64) -> (u64, u64) {
        self.rt.block_on(send(self.web_outbound, n, rps))
    }

    fn stat(&self, args: &[&str]) -> serde_json::Value {
        let viz = self.viz.to_string();
        let out = Command::new(env!("CARGO_BIN_EXE_knit")).args(["viz", "stat"]).args(args).args(["-o", "json", "--viz-addr", &viz]).output().unwrap();
        assert!(out.status.success(), "knit viz stat {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

/// Waits (up to 10 s) until the proxy whose admin server is at `admin` is certified.
async fn ready(admin: SocketAddr) {
    poll(&format!("http://{admin}/ready"), |_| true).await;
}

/// Polls `uri` (up to 10 s) until it answers 200 with a body for which `check` holds (JSON, or
/// null when the body is not JSON).
async fn poll(uri: &str, check: impl Fn(&serde_json::Value) -> bool) {
    use http_body_util::BodyExt;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(rsp) = client.get(uri.parse().unwrap()).await {
            let ok = rsp.status() == 200;
            let body = rsp.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            if ok && check(&serde_json::from_slice(&body).unwrap_or_default()) {
                return;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "{uri} did not answer as expected within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `GET path` on the viz API: the status and the JSON body.
fn api(viz: SocketAddr, path: &str) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let mut tcp = std::net::TcpStream::connect(viz).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(tcp, "GET {path} HTTP/1.1\r\nhost: viz\r\nconnection: close\r\n\r\n").unwrap();
    let mut rsp = String::new();
    tcp.read_to_string(&mut rsp).unwrap();
    let (head, body) = rsp.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {body}")))
}

async fn send(outbound: SocketAddr, n: u64, rps: u64) -> (u64, u64) {
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / rps));
    let (mut ok, mut failed) = (0, 0);
    for _ in 0..n {
        ticker.tick().await;
        let req =
            http::Request::get(format!("http://{outbound}/")).header("host", "books.test.svc.cluster.local:8080").body(http_body_util::Empty::new()).unwrap();
        use http_body_util::BodyExt;
        // Read every body to its end, as a well-behaved client does.
        let answered = match client.request(req).await {
            Ok(rsp) => {
                let status = rsp.status();
                rsp.into_body().collect().await.is_ok() && status == 200
            }
            Err(_) => false,
        };
        if answered {
            ok += 1;
        } else {
            failed += 1;
        }
    }
    (ok, failed)
}

/// The `name`s of a JSON list of rows.
fn json_names(out: &str) -> Vec<String> {
    let rows: serde_json::Value = serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"));
    rows.as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap_or_default().to_string()).collect()
}

fn row<'a>(rows: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    rows.as_array().unwrap().iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("no row {name} in {rows:#}"))
}

/// Waits (up to 10 s) until `check` holds for the rows of `args`.
fn eventually(mesh: &Mesh, args: &[&str], check: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = mesh.stat(args);
        if check(&rows) || Instant::now() > deadline {
            return rows;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn stat_counts_known_traffic() {
    let mesh = Mesh::start("viz-known");
    let (ok, failed) = mesh.send(400, 200);
    assert_eq!((ok, failed), (300, 100), "the backend fails every 4th request");

    let args = ["deploy", "-n", "test", "-t", "60s"];
    let rows = eventually(&mesh, &args, |rows| row(rows, "books")["requests"] == 400.0);
    let books = row(&rows, "books");
    assert_eq!(books["requests"], 400.0, "{rows:#}");
    assert_eq!(books["success_rate"], 0.75);
    assert_eq!(books["mtls_rate"], 1.0, "mesh TLS between the proxies, with identities from knit-control");
    assert!(books["latency_ms_p50"].as_f64().is_some() && books["tcp_connections"].as_f64() >= Some(1.0), "{books}");
    assert_eq!(row(&rows, "web")["requests"], 0.0, "web received nothing: its row is listed, empty");
    assert_eq!(books["pods"], serde_json::json!({"meshed": 1, "total": 1}));
    assert_eq!(row(&rows, "legacy")["pods"], serde_json::json!({"meshed": 0, "total": 1}), "a workload without a proxy is listed, unmeshed");

    // web's outbound traffic, named by where it went.
    // Waited for as books' inbound rows were: web's proxy records a response when its body
    // ends, and a scrape between books' and web's may hold one request less.
    let to = eventually(&mesh, &["deploy", "-n", "test", "--to", "deploy/books", "-t", "60s"], |rows| row(rows, "web")["requests"] == 400.0);
    assert_eq!(to.as_array().unwrap().len(), 1, "{to:#}");
    assert_eq!((row(&to, "web")["requests"].clone(), row(&to, "web")["success_rate"].clone()), (400.0.into(), 0.75.into()));
    let from = mesh.stat(&["deploy", "--from", "deploy/web", "-t", "60s"]);
    assert_eq!(row(&from, "books")["requests"], 400.0, "{from:#}");
    // The --to and --from resources are looked up in -n's namespace unless told otherwise.
    assert_eq!(mesh.stat(&["deploy", "-n", "test", "--to", "deploy/books", "--to-namespace", "elsewhere", "-t", "60s"]), serde_json::json!([]));
    assert_eq!(mesh.stat(&["deploy", "-n", "test", "--from", "deploy/web", "--from-namespace", "test", "-t", "60s"]), from);
    assert_eq!(mesh.stat(&["deploy", "--from", "deploy/web", "--from-namespace", "elsewhere", "-t", "60s"]), serde_json::json!([]));
    let pods = mesh.stat(&["po", "-n", "test", "-t", "60s"]);
    assert_eq!(row(&pods, "books-0")["requests"], 400.0);
    // The dashboard's view of one deployment's pods.
    let (status, books_pods) = api(mesh.viz, "/api/stat?kind=pod&namespace=test&deployment=books&window=60s");
    assert_eq!(status, 200);
    assert_eq!(books_pods["rows"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect::<Vec<_>>(), ["books-0"], "{books_pods}");
    assert!(books_pods["as_of"].as_f64().is_some_and(|t| t > 1.7e9), "when the data was scraped: {books_pods}");
    let (_, edges) = api(mesh.viz, "/api/edges?namespace=test&window=60s&sort=requests&limit=1");
    assert_eq!(
        (edges["total"].clone(), edges["edges"][0]["src"].clone(), edges["edges"][0]["dst"].clone()),
        (1.into(), "web".into(), "books".into()),
        "{edges}"
    );
    let (_, certs) = api(mesh.viz, "/api/certificates?namespace=test&deployment=books");
    assert_eq!((certs["total"].clone(), certs["certificates"][0]["pod"].clone()), (1.into(), "books-0".into()), "{certs}");
    assert!(certs["certificates"][0]["expires_at"].as_f64().is_some(), "{certs}");
    assert_eq!(edges["nodes"], 2);
    let (_, soon) = api(mesh.viz, "/api/certificates?expiring_within=1m");
    assert_eq!((soon["proxies"].clone(), soon["total"].clone()), (2.into(), 0.into()), "fresh certificates: none expire within a minute: {soon}");
    let (status, error) = api(mesh.viz, "/api/certificates?expiring_within=soon");
    assert_eq!((status, error["error"].as_str().unwrap()), (400, "expiring_within: \"soon\" is not a duration (e.g. 6h)"));
    let (status, error) = api(mesh.viz, "/api/certificates?sort=age");
    assert_eq!((status, error["error"].as_str().unwrap()), (400, "sort: \"age\": expected one of name, expires_at"));
    let (status, error) = api(mesh.viz, "/api/stat?kind=deployment&deployment=books");
    assert_eq!((status, error["error"].as_str().unwrap()), (400, "deployment narrows pods: use it with `stat po`"));

    // The table a person reads.
    let viz = mesh.viz.to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_knit")).args(["viz", "stat", "deploy", "-n", "test", "-t", "60s", "--viz-addr", &viz]).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    let books_line = table.lines().find(|l| l.starts_with("books")).unwrap_or_else(|| panic!("{table}"));
    assert!(table.starts_with("NAME") && books_line.contains("75.00%") && books_line.contains(" 1/1 "), "{table}");
    assert!(table.lines().any(|l| l.starts_with("legacy") && l.contains(" 0/1 ")), "{table}");

    // Bad input: said clearly, nothing served is lost.
    let bad = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_knit")).args(["viz", "stat"]).args(args).output().unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert!(bad(&["deploy", "-t", "10m", "--viz-addr", &viz]).contains("longer than the store keeps"));
    assert!(bad(&["replicaset", "--viz-addr", &viz]).contains("unknown resource kind"));
    assert!(bad(&["srv", "--from", "deploy/web", "--viz-addr", &viz]).contains("stat server takes neither --to nor --from"));
    assert!(bad(&["deploy", "--to", "srv/books-http", "--viz-addr", &viz]).contains("--to/--from a server: name a namespace, deployment or pod"));
    assert!(bad(&["deploy", "--viz-addr", "127.0.0.1:1"]).contains("cannot reach knit-control's viz API"));
    assert!(bad(&["deploy", "--prometheus", "127.0.0.1:9090"]).contains("expected http://HOST:PORT"));
    assert_eq!(mesh.stat(&["deploy", "-n", "test", "-t", "60s"]), rows, "still served");
    let _ = std::fs::remove_dir_all(&mesh.dir);
}

/// Debian's Prometheus, with the shipped configuration pointed at this mesh's knit-control.
struct Prometheus {
    child: std::process::Child,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn prometheus(dir: &str, viz: SocketAddr) -> Prometheus {
    let shipped = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../viz/prometheus-local.yml")).unwrap();
    let config = shipped.replace("127.0.0.1:8084", &viz.to_string()).replace("10s", "1s");
    let path = format!("{dir}/prometheus.yml");
    std::fs::write(&path, config).unwrap();
    let check =
        Command::new("promtool").args(["check", "config", &path]).output().expect("promtool (Debian's prometheus package; scripts/test.sh installs it)");
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = Command::new("prometheus")
        .args([
            &format!("--config.file={path}"),
            &format!("--storage.tsdb.path={dir}/tsdb"),
            &format!("--web.listen-address=127.0.0.1:{port}"),
            "--log.level=warn",
        ])
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prometheus (Debian's package; scripts/test.sh installs it)");
    Prometheus { child, url: format!("http://127.0.0.1:{port}") }
}

#[test]
fn prometheus_with_the_shipped_configuration_agrees_with_the_built_in_store() {
    let mesh = Mesh::start("viz-prometheus");
    let prom = prometheus(&mesh.dir, mesh.viz);
    // Steady traffic (40 rps, one in four failing) in the background, long enough to fill the
    // 10 s window on both sides.
    let traffic = mesh.rt.spawn(send(mesh.web_outbound, 40 * 20, 40));
    std::thread::sleep(Duration::from_secs(15));
    let viz = mesh.viz.to_string();
    let both = |args: &[&str]| {
        let builtin = mesh.stat(args);
        let out = Command::new(env!("CARGO_BIN_EXE_knit"))
            .args(["viz", "stat"])
            .args(args)
            .args(["-o", "json", "--viz-addr", &viz, "--prometheus", &prom.url])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        (builtin, serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap())
    };
    let near = |x: &serde_json::Value, y: &serde_json::Value, tolerance: f64| {
        let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
        (x - y).abs() <= tolerance * x.abs().max(y.abs())
    };
    // Both see 40 rps with 75% success; Prometheus extrapolates increase() to the window's edges,
    // the store does not, so rates agree within 15%.
    let agree = |b: &serde_json::Value, p: &serde_json::Value| {
        eprintln!("built-in: {b}\nprometheus: {p}");
        assert!(
            near(&b["success_rate"], &p["success_rate"], 0.05) && near(&b["success_rate"], &0.75.into(), 0.05),
            "success rates: built-in {b}, prometheus {p}"
        );
        assert!(near(&b["rps"], &p["rps"], 0.15) && near(&b["rps"], &40.0.into(), 0.15), "rps: built-in {b}, prometheus {p}");
        assert!(near(&b["latency_ms_p50"], &p["latency_ms_p50"], 0.5), "p50: built-in {b}, prometheus {p}");
        assert_eq!(b["mtls_rate"], p["mtls_rate"]);
    };
    let (builtin, from_prometheus) = both(&["deploy", "-n", "test", "-t", "10s"]);
    let (b, p) = (row(&builtin, "books"), row(&from_prometheus, "books"));
    agree(b, p);
    assert_eq!(b["tcp_connections"], p["tcp_connections"]);
    // The callers' side: outbound series named by the dst_* labels the proxies take from
    // discovery, the same in both.
    let (builtin, from_prometheus) = both(&["deploy", "-n", "test", "--to", "deploy/books", "-t", "10s"]);
    agree(row(&builtin, "web"), row(&from_prometheus, "web"));
    let (builtin, from_prometheus) = both(&["deploy", "--from", "deploy/web", "-t", "10s"]);
    agree(row(&builtin, "books"), row(&from_prometheus, "books"));
    // The same requests by the Server that checked them, the AuthorizationPolicy that allowed
    // them (the srv_*/authz_* labels of books' inbound series) and the HTTPRoute web sent them
    // through (web's route metrics, after retries). This test, not the one above, because the
    // traffic here starts once the proxies have had time to take the policies, which are
    // written with the workloads.
    for args in
        [&["srv", "-n", "test"][..], &["authorizationpolicy", "-n", "test"], &["httproute", "-n", "test"], &["route", "-n", "test", "--from", "deploy/web"]]
    {
        let name = match args[0] {
            "srv" => "books-http",
            "authorizationpolicy" => "books-from-web",
            _ => "books-route",
        };
        let (builtin, from_prometheus) = both(&[args, &["-t", "10s"]].concat());
        assert_eq!(builtin.as_array().map(Vec::len), Some(1), "{args:?}: {builtin:#}");
        agree(row(&builtin, name), row(&from_prometheus, name));
    }
    let source = knit_control::viz::query::Source::Prometheus(Arc::new(knit_control::viz::query::Prometheus::new(&prom.url).unwrap()));
    let edges = mesh
        .rt
        .block_on(knit_control::viz::edges::edges(
            &source,
            knit_control::viz::edges::By::Deployment,
            Some("test"),
            Duration::from_secs(10),
            &Default::default(),
        ))
        .unwrap();
    assert_eq!(edges.iter().map(|e| (e.src.as_str(), e.dst.as_str(), e.secured)).collect::<Vec<_>>(), [("web", "books", true)], "{edges:?}");
    assert_eq!(edges[0].server_id.as_deref(), Some("books.test.serviceaccount.identity.knit.cluster.local"));
    let _ = mesh.rt.block_on(traffic);
    // The traffic ended a moment ago: still inside the dashboards' 10 s rate windows.
    grafana_queries_run(&prom.url);
}

/// Every PromQL expression of the shipped Grafana dashboards as Grafana sends it for namespace
/// test and `deployment`: (dashboard file, panel title, expression).
fn grafana_queries(deployment: &str) -> Vec<(&'static str, String, String)> {
    let mut out = Vec::new();
    for file in ["knit-mesh.json", "knit-deployment.json"] {
        let path = format!("{}/../../viz/grafana/{file}", env!("CARGO_MANIFEST_DIR"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let board: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut panels: Vec<&serde_json::Value> = board["panels"].as_array().unwrap_or_else(|| panic!("{path}: no panels")).iter().collect();
        while let Some(panel) = panels.pop() {
            // A collapsed row keeps its panels inside it.
            panels.extend(panel["panels"].as_array().into_iter().flatten());
            let title = panel["title"].as_str().unwrap_or_default();
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap_or_else(|| panic!("{file}: a target of {title:?} has no expr"));
                let expr = expr.replace("$namespace", "test").replace("$deployment", deployment).replace("$__rate_interval", "10s").replace("$__range", "1m");
                out.push((file, title.to_string(), expr));
            }
        }
    }
    out
}

/// The series of an instant query, or Prometheus' reason for refusing it.
fn prometheus_query(url: &str, promql: &str) -> Result<Vec<serde_json::Value>, String> {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-G", &format!("{url}/api/v1/query"), "--data-urlencode"])
        .arg(format!("query={promql}"))
        .output()
        .expect("curl");
    if !out.status.success() {
        return Err(format!("curl: {}", String::from_utf8_lossy(&out.stderr)));
    }
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).map_err(|e| format!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))?;
    if json["status"] != "success" {
        return Err(format!("{}: {}", json["errorType"], json["error"]));
    }
    Ok(json["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// The value of one series of an instant query's result.
fn sample(series: &serde_json::Value) -> f64 {
    series["value"][1].as_str().and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
}

/// The shipped Grafana dashboards against this Prometheus: it accepts every panel's query, and
/// the golden panels show the traffic (books' inbound; web's outbound, by authority).
fn grafana_queries_run(url: &str) {
    let golden = [
        ("knit-mesh.json", "Success rate"),
        ("knit-mesh.json", "Requests per second"),
        ("knit-mesh.json", "Latency p50"),
        ("knit-mesh.json", "Success rate by deployment"),
        ("knit-mesh.json", "Requests per second by deployment"),
        ("knit-mesh.json", "Latency by deployment"),
        ("knit-mesh.json", "Deployments over the time range"),
        ("knit-deployment.json", "Inbound success rate"),
        ("knit-deployment.json", "Inbound requests per second"),
        ("knit-deployment.json", "Inbound latency p50"),
        ("knit-deployment.json", "Inbound latency"),
    ];
    let outbound = ["Outbound success rate by authority", "Outbound requests per second by authority", "Outbound authorities over the time range"];
    let books = grafana_queries("books");
    let web: Vec<_> = grafana_queries("web").into_iter().filter(|(_, title, _)| outbound.contains(&title.as_str())).collect();
    for (file, title) in golden.iter().copied().chain(outbound.iter().map(|t| ("knit-deployment.json", *t))) {
        assert!(books.iter().any(|(f, t, _)| *f == file && t == title), "{file} has no panel {title:?}");
    }
    for (file, title, expr) in &books {
        let series = prometheus_query(url, expr).unwrap_or_else(|e| panic!("{file}, {title:?}: Prometheus refused {expr}: {e}"));
        if !golden.contains(&(*file, title.as_str())) {
            continue;
        }
        assert!(!series.is_empty(), "{file}, {title:?}: no data for {expr}");
        if title.to_lowercase().contains("success rate") {
            assert!(series.iter().all(|s| (sample(s) - 0.75).abs() < 0.05), "{file}, {title:?}: one in four failed, yet {expr} gives {series:?}");
        }
    }
    // web called books: its outbound panels name the authority.
    for (file, title, expr) in &web {
        let series = prometheus_query(url, expr).unwrap_or_else(|e| panic!("{file}, {title:?} for web: Prometheus refused {expr}: {e}"));
        assert!(
            !series.is_empty() && series.iter().all(|s| s["metric"]["authority"] == "books.test.svc.cluster.local:8080"),
            "{file}, {title:?} for web: {expr} gives {series:?}"
        );
    }
    eprintln!("grafana: {} queries accepted, {} golden panels with data", books.len() + web.len(), golden.len() + outbound.len());
}

/// `knit viz tap`, `top`, `edges`, `routes`, `authz` and `stat svc` against `knit demo`, whose
/// proxies knit-control taps over mTLS.
#[test]
fn tap_top_edges_routes_and_authz_on_the_demo() {
    use std::io::BufRead;
    let mut demo = Command::new(env!("CARGO_BIN_EXE_knit"))
        .args(["demo", "--duration", "30s", "--interval", "10"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(demo.stdout.take().unwrap()).lines();
    let viz = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|l| l.trim().strip_prefix("- dashboard: http://").map(|a| a.trim_end_matches('/').to_string()))
        .expect("the demo prints its dashboard address");
    // Keep reading the demo's output so it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let knit = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_knit")).args(["viz"]).args(args).args(["--viz-addr", &viz]).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };

    let (ok, out, err) = knit(&["tap", "deploy/books-v1", "-n", "demo", "--duration", "3s"]);
    assert!(ok, "{err}");
    let line = out.lines().find(|l| l.contains(":path=/books")).unwrap_or_else(|| panic!("books-v1's requests: {out}{err}"));
    assert!(line.starts_with("in  demo/books-v1") && line.contains("tls=true") && line.contains(":status="), "{line}");

    let (ok, out, err) = knit(&["tap", "deploy/web", "-n", "demo", "--path", "/authors", "-o", "json", "--duration", "3s"]);
    assert!(ok, "{err}");
    let tapped: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(!tapped.is_empty() && tapped.iter().all(|t| t["path"].as_str().is_some_and(|p| p.starts_with("/authors"))), "{out}");
    assert!(tapped.iter().any(|t| t["direction"] == "outbound" && t["destination_identity"].as_str().is_some_and(|i| i.starts_with("authors."))), "{out}");

    let (ok, out, err) = knit(&["top", "deploy/books-v1", "-n", "demo", "--duration", "3s"]);
    assert!(ok, "{err}");
    assert!(out.contains("COUNT") && out.lines().any(|l| l.starts_with("web") && l.contains("/books")), "{out}");

    let (ok, out, err) = knit(&["edges", "-n", "demo", "-o", "json"]);
    assert!(ok, "{err}");
    let edges: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let web_books = edges.iter().find(|e| e["src"] == "web" && e["dst"] == "books-v1").unwrap_or_else(|| panic!("{out}"));
    assert_eq!(web_books["secured"], true);
    assert!(web_books["client_id"].as_str().is_some_and(|c| c.starts_with("web.demo.")), "{web_books}");

    let json = |args: &[&str]| {
        let (ok, out, err) = knit(args);
        assert!(ok, "{args:?}: {err}");
        serde_json::from_str::<serde_json::Value>(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
    };
    let routes = json(&["routes", "deploy/web", "-n", "demo", "-o", "json"]);
    let split = routes.as_array().unwrap().iter().find(|r| r["route"] == "HTTPRoute/books-split").unwrap_or_else(|| panic!("{routes:#}"));
    assert!(split["parent"] == "demo/books:8080" && split["requests"].as_f64() > Some(0.0), "{split}");
    let authz = json(&["authz", "deploy/books-v1", "-n", "demo", "-o", "json"]);
    let allowed = authz.as_array().unwrap().iter().find(|r| r["authorization"] == "authorizationpolicy/books-from-web").unwrap_or_else(|| panic!("{authz:#}"));
    assert!(allowed["allowed_rps"].as_f64() > Some(0.0) && allowed["server"] == "server/books-http", "{allowed}");
    let services = json(&["stat", "svc", "-n", "demo", "-o", "json"]);
    for name in ["books:8080", "authors:8080"] {
        let row = services.as_array().unwrap().iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("{name}: {services:#}"));
        assert!(row["namespace"] == "demo" && row["requests"].as_f64() > Some(0.0), "{row}");
    }

    // The examples of Linkerd's `viz stat`, `edges`, `routes` and `authz` reference pages, as
    // written there (`linkerd` → `knit`, their namespaces and deployments → the demo's): each
    // runs and shows what it names. (`tap` and `top` are above, with --duration to end them.)
    for (args, shows) in [
        ("stat deployments -n demo", "books-v1"),
        ("stat deploy web -n demo", "web"),
        ("stat namespaces", "demo"),
        ("stat deploy/books-v1 -n demo", "books-v1"),
        ("stat deploy/books-v1 --from deploy/web -n demo", "books-v1"),
        ("stat pods --to deploy/books-v1 --to-namespace demo --all-namespaces", "web"),
        // The demo's authors deployment has two pods, authors-1 and authors-2.
        ("stat po -n demo", "authors-2"),
        ("stat svc/books -n demo", "books:8080"),
        ("edges po -n demo", "authors-2"),
        ("edges deployment -n demo", "books-v1"),
        ("edges deploy --all-namespaces", "authors"),
        ("routes deploy/web -n demo", "books-split"),
        ("authz -n demo deploy/books-v1", "books-from-web"),
    ] {
        let (ok, out, err) = knit(&args.split(' ').collect::<Vec<_>>());
        assert!(ok && out.contains(shows), "knit viz {args}: {out}{err}");
    }
    let (ok, out, err) = knit(&["stat", "deploy/web", "-n", "demo", "-o", "json"]);
    assert!(ok && json_names(&out) == ["web"], "one deployment by name: {out}{err}");
    let (ok, _, err) = knit(&["edges", "svc", "-n", "demo"]);
    assert!(!ok && err.contains("deployments or pods"), "{err}");

    let (ok, _, err) = knit(&["tap", "deploy/nope", "-n", "demo", "--duration", "1s"]);
    assert!(!ok && err.contains("no meshed workload matches"), "{err}");
    assert_eq!(super::terminate_demo(&mut demo), (true, true), "knit demo stops on SIGTERM and removes its temporary directory");
}

/// `knit viz tap --kubernetes` asks the Kubernetes API server for the tap API's path with the
/// user's credentials and prints what streams back; a refusal is the API server's own message.
/// The API server here is a stand-in that answers the tap API's path as the aggregation layer
/// relays it (knit-control's side of that path is tested with real proxies in knit-proxy's
/// `discovery::tap_api`).
#[test]
fn tap_through_the_kubernetes_api_server() {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let api = listener.local_addr().unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut s = stream.unwrap();
            let mut reader = BufReader::new(s.try_clone().unwrap());
            let mut head = Vec::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                head.push(line.trim_end().to_string());
            }
            let request_line = head.first().cloned().unwrap_or_default();
            log.lock().unwrap().push(request_line.clone());
            let token = head.iter().find_map(|h| h.strip_prefix("authorization: ").or_else(|| h.strip_prefix("Authorization: "))).unwrap_or("").to_string();
            let path = request_line.split(' ').nth(1).unwrap_or("").to_string();
            let expected = "/apis/tap.knit.dev/v1alpha1/watch/namespaces/demo/deployments/books/tap?max_rps=100&path=%2Fbooks";
            let (status, body) = if path != expected {
                ("404 Not Found", r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"the server could not find the requested resource","reason":"NotFound","code":404}"#.to_string())
            } else if token == "Bearer alice" {
                let t = knit_control::viz::tap::Tapped {
                    direction: "inbound".into(),
                    namespace: "demo".into(),
                    pod: "books-1".into(),
                    method: "GET".into(),
                    authority: "books:8080".into(),
                    path: "/books/1".into(),
                    status: Some(200),
                    ..Default::default()
                };
                ("200 OK", format!("{}\n{}\n", serde_json::to_string(&t).unwrap(), serde_json::to_string(&t).unwrap()))
            } else {
                ("403 Forbidden", r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"user \"bob\" cannot watch resource \"deployments/tap\" \"books\" in API group \"tap.knit.dev\" in the namespace \"demo\"","reason":"Forbidden","code":403}"#.to_string())
            };
            let _ = write!(s, "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
        }
    });
    let dir = std::path::PathBuf::from(super::temp_dir("tap-kube"));
    std::fs::create_dir_all(&dir).unwrap();
    let kubeconfig = |user: &str| {
        let path = dir.join(format!("{user}.kubeconfig"));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster: {{server: \"http://{api}\"}}\nusers:\n- name: {user}\n  user: {{token: {user}}}\ncontexts:\n- name: c\n  context: {{cluster: c, user: {user}}}\ncurrent-context: c\n"
        );
        std::fs::write(&path, text).unwrap();
        path
    };
    let tap = |user: &str, args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_knit"))
            .args(["viz", "tap", "--kubernetes"])
            .args(args)
            .env("KUBECONFIG", kubeconfig(user))
            .env_remove("KUBERNETES_SERVICE_HOST")
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, out, err) = tap("alice", &["deploy/books", "-n", "demo", "--path", "/books", "--duration", "2s"]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().filter(|l| l.starts_with("in  demo/books-1") && l.contains(":path=/books/1 :status=200")).count(), 2, "{out}");
    let (ok, _, err) = tap("bob", &["deploy/books", "-n", "demo", "--path", "/books", "--duration", "2s"]);
    assert!(!ok && err.contains("403") && err.contains(r#"user "bob" cannot watch resource "deployments/tap""#), "{err}");
    let (ok, _, err) = tap("alice", &["deploy/books", "-n", "demo", "--duration", "2s"]);
    assert!(!ok && err.contains("is the tap APIService installed?"), "an API server without the tap API says so: {err}");
    let (ok, _, err) = tap("alice", &["deploy/books", "--duration", "2s"]);
    assert!(!ok && err.contains("-n"), "a deployment needs its namespace: {err}");
    assert_eq!(seen.lock().unwrap().len(), 3, "{:?}", seen.lock().unwrap());
}
