//! `knit viz`: golden metrics from knit-control's viz API (or straight from Prometheus).

use anyhow::Context;
use knit_control::viz::{query, stat};
use std::{net::SocketAddr, sync::Arc, time::Duration};

/// knit-control's viz API port.
pub const DEFAULT_PORT: u16 = 8084;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Success rate, requests per second, latency and TCP connections per resource.
    Stat(StatArgs),
    /// Who talks to whom, and whether it is mutual TLS, with the identities.
    Edges(EdgesArgs),
    /// A live stream of requests through the proxies of a resource.
    Tap(TapArgs),
    /// A live table of a resource's busiest paths.
    Top(TapArgs),
    /// The HTTP routes a deployment calls: success rate, rps and latency after retries.
    Routes(PolicyArgs),
    /// A deployment's inbound authorization decisions per server, route and authorization.
    Authz(PolicyArgs),
    /// What a deployment sent outside the cluster, per EgressNetwork, route and hostname, and
    /// whether the egress policy allowed it.
    Egress(PolicyArgs),
}

/// Where knit-control's viz API is, for every `knit viz` command.
#[derive(clap::Args)]
pub struct Api {
    /// knit-control's viz API.
    #[arg(long, env = "KNIT_VIZ_ADDR", default_value_t = SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)))]
    viz_addr: SocketAddr,
}

#[derive(clap::Args)]
pub struct PolicyArgs {
    /// deploy/NAME
    resource: stat::Resource,
    #[arg(short, long, default_value = "default")]
    namespace: String,
    #[arg(short = 't', long = "time-window", default_value = "30s", value_parser = parse_duration)]
    window: Duration,
    /// table or json.
    #[arg(short, long, default_value = "table")]
    output: Output,
    #[command(flatten)]
    api: Api,
}

#[derive(clap::Args)]
pub struct EdgesArgs {
    /// What the edges join: deployment (deploy) or pod (po).
    #[arg(default_value = "deployment")]
    kind: String,
    /// Only edges touching this namespace.
    #[arg(short, long)]
    namespace: Option<String>,
    /// Edges in every namespace (the default without --namespace).
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    all_namespaces: bool,
    #[arg(short = 't', long = "time-window", default_value = "30s", value_parser = parse_duration)]
    window: Duration,
    /// table or json.
    #[arg(short, long, default_value = "table")]
    output: Output,
    #[command(flatten)]
    api: Api,
}

#[derive(clap::Args)]
pub struct TapArgs {
    /// What to tap: KIND/NAME (deploy/web, po/web-0, ns/demo).
    resource: stat::Resource,
    #[arg(short, long)]
    namespace: Option<String>,
    /// Only requests with this method.
    #[arg(long)]
    method: Option<String>,
    /// Only requests whose path starts with this.
    #[arg(long)]
    path: Option<String>,
    /// Only requests whose authority starts with this.
    #[arg(long)]
    authority: Option<String>,
    /// At most this many requests per second are shown.
    #[arg(long, default_value_t = 100)]
    max_rps: u32,
    /// Stop after this long (runs until Ctrl-C otherwise).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// table or json (tap: one line per request either way).
    #[arg(short, long, default_value = "table")]
    output: Output,
    /// Tap through the Kubernetes API server (KUBECONFIG or in-cluster), which authenticates you
    /// and lets knit-control ask whether you may: `knit install`'s tap APIService. Needs
    /// `watch` on `tap.knit.dev` (bind the ClusterRole knit-tap-NS) and --namespace.
    #[arg(long)]
    kubernetes: bool,
    #[command(flatten)]
    api: Api,
}

#[derive(clap::Args)]
pub struct StatArgs {
    /// What to list: deploy (deployment), po (pod), ns (namespace), svc (service), srv (server),
    /// authorizationpolicy or httproute (route); KIND/NAME for one of them (deploy/web).
    kind: String,
    /// One resource of KIND by name (`knit viz stat deploy web`, as KIND/NAME).
    name: Option<String>,
    /// Only resources of this namespace.
    #[arg(short, long)]
    namespace: Option<String>,
    /// Resources of every namespace (the default without --namespace).
    #[arg(short = 'A', long, conflicts_with = "namespace")]
    all_namespaces: bool,
    /// Outbound traffic of the listed resources to this one (KIND/NAME, e.g. deploy/books).
    #[arg(long)]
    to: Option<stat::Resource>,
    /// Outbound traffic from this resource (KIND/NAME), one row per destination.
    #[arg(long)]
    from: Option<stat::Resource>,
    /// The namespace of the --to resource (default: --namespace).
    #[arg(long)]
    to_namespace: Option<String>,
    /// The namespace of the --from resource (default: --namespace).
    #[arg(long)]
    from_namespace: Option<String>,
    /// The window the numbers cover.
    #[arg(short = 't', long = "time-window", default_value = "30s", value_parser = parse_duration)]
    window: Duration,
    /// table, wide or json.
    #[arg(short, long, default_value = "table")]
    output: Output,
    #[command(flatten)]
    api: Api,
    /// Query this Prometheus (http://HOST:PORT) directly, with the PromQL of Linkerd's viz.
    #[arg(long)]
    prometheus: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Output {
    Table,
    Wide,
    Json,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    knit_core::parse::duration(s).map_err(|e| e.to_string())
}

pub fn main(cmd: Command) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match cmd {
        Command::Stat(args) => rt.block_on(stat_cmd(args)),
        Command::Edges(args) => rt.block_on(edges_cmd(args)),
        Command::Tap(args) => rt.block_on(tap_cmd(args, false)),
        Command::Top(args) => rt.block_on(tap_cmd(args, true)),
        Command::Routes(args) => rt.block_on(policy_cmd(args, "routes")),
        Command::Authz(args) => rt.block_on(policy_cmd(args, "authz")),
        Command::Egress(args) => rt.block_on(policy_cmd(args, "egress")),
    }
}

async fn stat_cmd(args: StatArgs) -> anyhow::Result<()> {
    // `deploy/web` lists one deployment (as `linkerd viz stat deploy/web`).
    let (kind, name) = match (args.kind.contains('/'), args.name.clone()) {
        (true, Some(_)) => anyhow::bail!("{:?} names a resource already: give KIND/NAME or KIND NAME", args.kind),
        (true, None) => {
            let r: stat::Resource = args.kind.parse().map_err(anyhow::Error::msg)?;
            (r.kind, Some(r.name))
        }
        (false, name) => (stat::Kind::parse(&args.kind).map_err(anyhow::Error::msg)?, name),
    };
    let q = stat::Query {
        to: args.to.clone(),
        from: args.from.clone(),
        to_namespace: args.to_namespace.clone(),
        from_namespace: args.from_namespace.clone(),
        // -A is every namespace, as no --namespace is (clap refuses both together).
        ..stat::Query::new(kind, args.namespace.clone().filter(|_| !args.all_namespaces), args.window)
    };
    let rows = match &args.prometheus {
        Some(url) => stat::stat(&query::Source::Prometheus(Arc::new(query::Prometheus::new(url)?)), &q, &Default::default()).await?,
        None => fetch(args.api.viz_addr, &q).await?,
    };
    // A Service's rows are per port (books:8080): svc/books names them all.
    let named = |r: &stat::Row, n: &str| r.name == n || r.name.split_once(':').is_some_and(|(svc, _)| svc == n);
    let rows: Vec<stat::Row> = rows.into_iter().filter(|r| name.as_deref().is_none_or(|n| named(r, n))).collect();
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Output::Table | Output::Wide => print!("{}", table(&rows, &q, args.output == Output::Wide)),
    }
    Ok(())
}

/// Sends `GET /api/{path}?{params}` to knit-control's viz API; the response head.
async fn get(viz: SocketAddr, path: &str, params: &[(&str, String)]) -> anyhow::Result<http::Response<hyper::body::Incoming>> {
    use http_body_util::Empty;
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={}", query::form_encode(v))).collect();
    let client: hyper_util::client::legacy::Client<_, Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let uri = format!("http://{viz}/api/{path}?{}", query.join("&"));
    let req = http::Request::get(&uri).body(Empty::new())?;
    tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| anyhow::anyhow!("knit-control's viz API at {viz} did not answer within 10s"))?
        .with_context(|| format!("cannot reach knit-control's viz API at {viz} (is knit-control or `knit demo` running? --viz-addr)"))
}

/// A JSON answer of the viz API, or its error.
async fn get_json(viz: SocketAddr, path: &str, params: &[(&str, String)]) -> anyhow::Result<serde_json::Value> {
    use http_body_util::BodyExt;
    let rsp = get(viz, path, params).await?;
    let status = rsp.status();
    let body = rsp.into_body().collect().await?.to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).with_context(|| format!("/api/{path}: HTTP {status}, not JSON"))?;
    if !status.is_success() {
        anyhow::bail!("{}", json["error"].as_str().unwrap_or("the viz API refused the query"));
    }
    Ok(json)
}

/// The rows from knit-control's `/api/stat`.
async fn fetch(viz: SocketAddr, q: &stat::Query) -> anyhow::Result<Vec<stat::Row>> {
    let mut params = vec![("kind", q.kind.label().to_string()), ("window", format!("{}s", q.window.as_secs_f64()))];
    for (k, v) in [("namespace", &q.namespace), ("to_namespace", &q.to_namespace), ("from_namespace", &q.from_namespace)] {
        if let Some(v) = v {
            params.push((k, v.clone()));
        }
    }
    for (k, r) in [("to", &q.to), ("from", &q.from)] {
        if let Some(r) = r {
            params.push((k, format!("{}/{}", r.kind.label(), r.name)));
        }
    }
    let json = get_json(viz, "stat", &params).await?;
    Ok(serde_json::from_value(json["rows"].clone())?)
}

async fn edges_cmd(args: EdgesArgs) -> anyhow::Result<()> {
    let by = knit_control::viz::edges::By::parse(&args.kind).map_err(anyhow::Error::msg)?;
    let kind = if by == knit_control::viz::edges::By::Pod { "pod" } else { "deployment" };
    let mut params = vec![("window", format!("{}s", args.window.as_secs_f64())), ("kind", kind.to_string())];
    if let Some(ns) = args.namespace.as_ref().filter(|_| !args.all_namespaces) {
        params.push(("namespace", ns.clone()));
    }
    let json = get_json(args.api.viz_addr, "edges", &params).await?;
    let edges: Vec<knit_control::viz::edges::Edge> = serde_json::from_value(json["edges"].clone())?;
    if args.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&edges)?);
        return Ok(());
    }
    if edges.is_empty() {
        println!("No edges found.");
        return Ok(());
    }
    // Linked clusters' destinations add a column (a gateway's is the remote Service, `svc/NAME`).
    let clusters = edges.iter().any(|e| e.dst_cluster.is_some());
    let mut header = vec!["SRC", "DST", "SRC_NS", "DST_NS"];
    if clusters {
        header.push("DST_CLUSTER");
    }
    header.extend(["SECURED", "CLIENT_ID", "SERVER_ID"]);
    let mut lines = vec![header.into_iter().map(String::from).collect::<Vec<_>>()];
    for e in &edges {
        let mut line =
            vec![e.src.clone(), if e.via_gateway { format!("svc/{}", e.dst) } else { e.dst.clone() }, e.src_namespace.clone(), e.dst_namespace.clone()];
        if clusters {
            line.push(e.dst_cluster.clone().unwrap_or_else(|| "-".into()));
        }
        line.extend([
            if e.secured { "√".into() } else { "×".into() },
            e.client_id.clone().unwrap_or_else(|| "-".into()),
            e.server_id.clone().unwrap_or_else(|| "-".into()),
        ]);
        lines.push(line);
    }
    print!("{}", columns(&lines));
    Ok(())
}

async fn policy_cmd(args: PolicyArgs, view: &str) -> anyhow::Result<()> {
    use knit_control::viz::routes::{AuthzRow, EgressRow, RouteRow};
    if args.resource.kind != stat::Kind::Deployment {
        anyhow::bail!("{view} takes a deployment: deploy/NAME");
    }
    let params = [("namespace", args.namespace.clone()), ("deployment", args.resource.name.clone()), ("window", format!("{}s", args.window.as_secs_f64()))];
    let json = get_json(args.api.viz_addr, view, &params).await?;
    if args.output == Output::Json {
        println!("{}", serde_json::to_string_pretty(&json["rows"])?);
        return Ok(());
    }
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.2}%", 100.0 * v));
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.0}ms"));
    let mut lines: Vec<Vec<String>>;
    if view == "routes" {
        let rows: Vec<RouteRow> = serde_json::from_value(json["rows"].clone())?;
        lines = vec![["PARENT", "ROUTE", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99"].map(String::from).to_vec()];
        lines.extend(rows.iter().map(|r| {
            let g = &r.golden;
            vec![
                r.parent.clone(),
                r.route.clone(),
                pct(g.success_rate),
                format!("{:.1}rps", g.rps),
                ms(g.latency_ms_p50),
                ms(g.latency_ms_p95),
                ms(g.latency_ms_p99),
            ]
        }));
    } else if view == "egress" {
        let rows: Vec<EgressRow> = serde_json::from_value(json["rows"].clone())?;
        lines = vec![["DESTINATION", "HOSTNAME", "PROTOCOL", "ROUTE", "DECISION", "RATE"].map(String::from).to_vec()];
        lines.extend(rows.iter().map(|r| {
            let hostname = if r.hostname.is_empty() { "-".to_string() } else { r.hostname.clone() };
            vec![r.destination.clone(), hostname, r.protocol.clone(), r.route.clone(), r.decision.clone(), format!("{:.1}/s", r.rate)]
        }));
    } else {
        let rows: Vec<AuthzRow> = serde_json::from_value(json["rows"].clone())?;
        lines = vec![["SERVER", "ROUTE", "AUTHORIZATION", "ALLOWED_RPS", "DENIED_RPS"].map(String::from).to_vec()];
        lines.extend(
            rows.iter()
                .map(|r| vec![r.server.clone(), r.route.clone(), r.authorization.clone(), format!("{:.1}", r.allowed_rps), format!("{:.1}", r.denied_rps)]),
        );
    }
    if lines.len() == 1 {
        println!("No traffic found.");
    } else {
        print!("{}", columns(&lines));
    }
    Ok(())
}

type TapBody = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, anyhow::Error>;

/// The tap stream from knit-control's viz API, or through the Kubernetes API server.
async fn tap_stream(args: &TapArgs) -> anyhow::Result<TapBody> {
    use http_body_util::BodyExt;
    let mut params = vec![("max_rps", args.max_rps.to_string())];
    for (k, v) in [("method", &args.method), ("path", &args.path), ("authority", &args.authority)] {
        if let Some(v) = v {
            params.push((k, v.clone()));
        }
    }
    if !args.kubernetes {
        params.push(("resource", format!("{}/{}", args.resource.kind.label(), args.resource.name)));
        if let Some(ns) = &args.namespace {
            params.push(("namespace", ns.clone()));
        }
        let rsp = get(args.api.viz_addr, "tap", &params).await?;
        let status = rsp.status();
        let body = rsp.into_body().map_err(anyhow::Error::from).boxed_unsync();
        if !status.is_success() {
            let body = body.collect().await?.to_bytes();
            let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            anyhow::bail!("{}", json["error"].as_str().map_or_else(|| format!("HTTP {status}"), str::to_string));
        }
        return Ok(body);
    }
    let path = kubernetes_tap_path(&args.resource, args.namespace.as_deref())?;
    let query: Vec<String> = params.iter().map(|(k, v)| format!("{k}={}", query::form_encode(v))).collect();
    let client = kube::Client::try_default().await.context("connecting to the Kubernetes API (KUBECONFIG or in-cluster)")?;
    let req = http::Request::get(format!("{path}?{}", query.join("&"))).body(kube::client::Body::empty())?;
    let rsp = tokio::time::timeout(Duration::from_secs(30), client.send(req))
        .await
        .map_err(|_| anyhow::anyhow!("the Kubernetes API server did not answer within 30s"))?
        .context("tapping through the Kubernetes API server")?;
    let status = rsp.status();
    let body = rsp.into_body().map_err(anyhow::Error::from).boxed_unsync();
    if !status.is_success() {
        let body = body.collect().await?.to_bytes();
        // A Kubernetes Status, from the API server or from knit-control's tap API.
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let message = json["message"].as_str().map_or_else(|| String::from_utf8_lossy(&body).trim().to_string(), str::to_string);
        let hint = if status == http::StatusCode::NOT_FOUND && message.contains("the server could not find the requested resource") {
            " (is the tap APIService installed? knit install renders it: v1alpha1.tap.knit.dev)"
        } else {
            ""
        };
        anyhow::bail!("HTTP {status}: {message}{hint}");
    }
    Ok(body)
}

/// The tap API's path for a resource, under the API server.
fn kubernetes_tap_path(resource: &stat::Resource, namespace: Option<&str>) -> anyhow::Result<String> {
    let base = format!("/apis/{}/{}/watch/namespaces", knit_control::viz::apiservice::GROUP, knit_control::viz::apiservice::VERSION);
    Ok(match resource.kind {
        stat::Kind::Namespace => format!("{base}/{}/tap", resource.name),
        stat::Kind::Deployment | stat::Kind::Pod => {
            let ns = namespace.ok_or_else(|| anyhow::anyhow!("--kubernetes: say which namespace with -n"))?;
            let kind = if resource.kind == stat::Kind::Deployment { "deployments" } else { "pods" };
            format!("{base}/{ns}/{kind}/{}/tap", resource.name)
        }
        _ => anyhow::bail!("tap a deployment, pod or namespace"),
    })
}

async fn tap_cmd(args: TapArgs, top: bool) -> anyhow::Result<()> {
    use http_body_util::BodyExt;
    let mut body = tap_stream(&args).await?;
    let deadline = args.duration.map(|d| tokio::time::Instant::now() + d);
    let mut buf = Vec::new();
    let mut table = top::Table::default();
    let mut redraw = tokio::time::interval(Duration::from_secs(1));
    loop {
        let ended = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = redraw.tick(), if top => {
                table.print();
                continue;
            }
            () = ended => break,
            _ = tokio::signal::ctrl_c() => break,
        };
        let Some(frame) = frame else { break };
        let Ok(data) = frame?.into_data() else { continue };
        buf.extend_from_slice(&data);
        while let Some(i) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            let json: serde_json::Value = serde_json::from_slice(&line)?;
            if let Some(e) = json["error"].as_str() {
                eprintln!("tap: {e}");
                continue;
            }
            let t: knit_control::viz::tap::Tapped = serde_json::from_value(json)?;
            if top {
                table.add(&t);
            } else if args.output == Output::Json {
                println!("{}", serde_json::to_string(&t)?);
            } else {
                println!("{}", tap_line(&t));
            }
        }
    }
    if top {
        table.print();
    }
    Ok(())
}

/// One request as a line: who, what, and how it went.
fn tap_line(t: &knit_control::viz::tap::Tapped) -> String {
    let dir = if t.direction == "inbound" { "in " } else { "out" };
    let tls = if t.source_identity.is_some() && t.destination_identity.is_some() { "tls=true" } else { "tls=no_identity" };
    let status = t.status.map_or("-".to_string(), |s| s.to_string());
    let grpc = t.grpc_status.map_or(String::new(), |g| format!(" grpc-status={g}"));
    let error = t.error.as_deref().map_or(String::new(), |e| format!(" error={e:?}"));
    let dst_res = match (&t.destination_namespace, &t.destination_deployment) {
        (Some(ns), Some(d)) => format!(" dst_res={ns}/deploy/{d}"),
        _ => String::new(),
    };
    format!(
        "{dir} {}/{} src={} dst={}{dst_res} {tls} :method={} :authority={} :path={} :status={status}{grpc} latency={:.1}ms bytes={}{error}",
        t.namespace, t.pod, t.source, t.destination, t.method, t.authority, t.path, t.latency_ms, t.response_bytes
    )
}

/// Pads columns to their widest cell.
fn columns(lines: &[Vec<String>]) -> String {
    let widths: Vec<usize> = (0..lines[0].len()).map(|i| lines.iter().map(|l| l[i].chars().count()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for l in lines {
        let cells: Vec<String> = l.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(cells.join("   ").trim_end());
        out.push('\n');
    }
    out
}

mod top {
    use knit_control::viz::tap::Tapped;
    use std::{collections::HashMap, io::IsTerminal};

    #[derive(Default)]
    struct Path {
        count: u64,
        success: u64,
        best: f64,
        worst: f64,
        last: f64,
    }

    /// Requests by (source, destination, method, path), busiest first.
    #[derive(Default)]
    pub struct Table(HashMap<(String, String, String, String), Path>);

    impl Table {
        pub fn add(&mut self, t: &Tapped) {
            let source = t.source_identity.as_deref().map_or_else(|| t.source.clone(), |id| id.split('.').next().unwrap_or(id).to_string());
            let destination = t.destination_identity.as_deref().map_or_else(|| t.destination.clone(), |id| id.split('.').next().unwrap_or(id).to_string());
            let p = self.0.entry((source, destination, t.method.clone(), t.path.clone())).or_default();
            let ok = t.error.is_none() && t.status.is_some_and(|s| s < 500) && t.grpc_status.is_none_or(|g| g == 0);
            p.count += 1;
            p.success += u64::from(ok);
            p.best = if p.count == 1 { t.latency_ms } else { p.best.min(t.latency_ms) };
            p.worst = p.worst.max(t.latency_ms);
            p.last = t.latency_ms;
        }

        pub fn print(&self) {
            let mut rows: Vec<_> = self.0.iter().collect();
            rows.sort_by(|a, b| b.1.count.cmp(&a.1.count).then(a.0.cmp(b.0)));
            if std::io::stdout().is_terminal() {
                print!("\x1b[2J\x1b[H");
            }
            let mut lines = vec![["SOURCE", "DESTINATION", "METHOD", "PATH", "COUNT", "BEST", "WORST", "LAST", "SUCCESS_RATE"].map(String::from).to_vec()];
            for ((src, dst, method, path), p) in rows.into_iter().take(40) {
                lines.push(vec![
                    src.clone(),
                    dst.clone(),
                    method.clone(),
                    path.clone(),
                    p.count.to_string(),
                    format!("{:.1}ms", p.best),
                    format!("{:.1}ms", p.worst),
                    format!("{:.1}ms", p.last),
                    format!("{:.2}%", 100.0 * p.success as f64 / p.count.max(1) as f64),
                ]);
            }
            print!("{}", super::columns(&lines));
            println!();
        }
    }
}

/// A row's clusters for the CLUSTER column: `local` for this one, `-` when none is known.
fn cluster_names(clusters: &[String]) -> String {
    if clusters.is_empty() {
        return "-".into();
    }
    clusters.iter().map(|c| if c.is_empty() { "local" } else { c.as_str() }).collect::<Vec<_>>().join(",")
}

fn table(rows: &[stat::Row], q: &stat::Query, wide: bool) -> String {
    if rows.is_empty() {
        return "No traffic found.\n".to_string();
    }
    let all_namespaces = q.namespace.is_none() && q.kind != stat::Kind::Namespace;
    let mut header = vec![];
    if all_namespaces {
        header.push("NAMESPACE");
    }
    header.push("NAME");
    // Traffic to linked clusters (mirrored and federated Services) says where it went.
    let clusters = rows.iter().any(|r| !r.clusters.is_empty());
    if clusters {
        header.push("CLUSTER");
    }
    header.extend(["MESHED", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99", "TCP_CONN"]);
    if wide {
        header.extend(["MTLS", "READ_BYTES/SEC", "WRITE_BYTES/SEC"]);
    }
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.2}%", 100.0 * v));
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| if v < 10.0 { format!("{v:.1}ms") } else { format!("{v:.0}ms") });
    // Connections and bytes are counted per workload and per service, not per policy or route.
    let tcp = q.kind.is_workload() || q.kind == stat::Kind::Service;
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for r in rows {
        let mut line = vec![];
        if all_namespaces {
            line.push(r.namespace.clone());
        }
        let traffic = r.requests > 0.0;
        line.push(r.name.clone());
        if clusters {
            line.push(cluster_names(&r.clusters));
        }
        line.extend([
            r.pods.map_or("-".into(), |p| format!("{}/{}", p.meshed, p.total)),
            pct(r.success_rate),
            if traffic { format!("{:.1}rps", r.rps) } else { "-".into() },
            ms(r.latency_ms_p50),
            ms(r.latency_ms_p95),
            ms(r.latency_ms_p99),
            if tcp { format!("{:.0}", r.tcp_connections) } else { "-".into() },
        ]);
        if wide {
            let rate = |v: f64| if tcp { format!("{v:.1}B/s") } else { "-".into() };
            line.extend([pct(r.mtls_rate), rate(r.read_bytes_per_sec), rate(r.write_bytes_per_sec)]);
        }
        lines.push(line);
    }
    columns(&lines)
}
