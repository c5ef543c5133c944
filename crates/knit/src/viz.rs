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
}

#[derive(clap::Args)]
pub struct StatArgs {
    /// What to list: deploy (deployment), po (pod) or ns (namespace).
    kind: String,
    /// Only resources of this namespace.
    #[arg(short, long)]
    namespace: Option<String>,
    /// Outbound traffic of the listed resources to this one (KIND/NAME, e.g. deploy/books).
    #[arg(long)]
    to: Option<stat::Resource>,
    /// Outbound traffic from this resource (KIND/NAME), one row per destination.
    #[arg(long)]
    from: Option<stat::Resource>,
    /// The window the numbers cover.
    #[arg(short = 't', long = "time-window", default_value = "30s", value_parser = parse_duration)]
    window: Duration,
    /// table, wide or json.
    #[arg(short, long, default_value = "table")]
    output: Output,
    /// knit-control's viz API.
    #[arg(long, env = "KNIT_VIZ_ADDR", default_value_t = SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)))]
    viz_addr: SocketAddr,
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
    }
}

async fn stat_cmd(args: StatArgs) -> anyhow::Result<()> {
    let kind = stat::Kind::parse(&args.kind).map_err(anyhow::Error::msg)?;
    let q = stat::Query { kind, namespace: args.namespace.clone(), window: args.window, to: args.to.clone(), from: args.from.clone() };
    let rows = match &args.prometheus {
        Some(url) => stat::stat(&query::Source::Prometheus(Arc::new(query::Prometheus::new(url)?)), &q, &[]).await?,
        None => fetch(args.viz_addr, &q).await?,
    };
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&rows)?),
        Output::Table | Output::Wide => print!("{}", table(&rows, &q, args.output == Output::Wide)),
    }
    Ok(())
}

/// The rows from knit-control's `/api/stat`.
async fn fetch(viz: SocketAddr, q: &stat::Query) -> anyhow::Result<Vec<stat::Row>> {
    use http_body_util::{BodyExt, Empty};
    let mut params = vec![format!("kind={}", q.kind.label()), format!("window={}s", q.window.as_secs_f64())];
    if let Some(ns) = &q.namespace {
        params.push(format!("namespace={ns}"));
    }
    for (k, r) in [("to", &q.to), ("from", &q.from)] {
        if let Some(r) = r {
            params.push(format!("{k}={}/{}", r.kind.label(), r.name));
        }
    }
    let client: hyper_util::client::legacy::Client<_, Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    let uri = format!("http://{viz}/api/stat?{}", params.join("&"));
    let req = http::Request::get(&uri).body(Empty::new())?;
    let rsp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| anyhow::anyhow!("knit-control's viz API at {viz} did not answer within 10s"))?
        .with_context(|| format!("cannot reach knit-control's viz API at {viz} (is knit-control or `knit demo` running? --viz-addr)"))?;
    let status = rsp.status();
    let body = rsp.into_body().collect().await?.to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).with_context(|| format!("{uri}: HTTP {status}, not JSON"))?;
    if !status.is_success() {
        anyhow::bail!("{}", json["error"].as_str().unwrap_or("the viz API refused the query"));
    }
    Ok(serde_json::from_value(json["rows"].clone())?)
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
    header.extend(["NAME", "SUCCESS", "RPS", "LATENCY_P50", "LATENCY_P95", "LATENCY_P99", "TCP_CONN"]);
    if wide {
        header.extend(["MTLS", "READ_BYTES/SEC", "WRITE_BYTES/SEC"]);
    }
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.2}%", 100.0 * v));
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| if v < 10.0 { format!("{v:.1}ms") } else { format!("{v:.0}ms") });
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for r in rows {
        let mut line = vec![];
        if all_namespaces {
            line.push(r.namespace.clone());
        }
        let traffic = r.requests > 0.0;
        line.extend([
            r.name.clone(),
            pct(r.success_rate),
            if traffic { format!("{:.1}rps", r.rps) } else { "-".into() },
            ms(r.latency_ms_p50),
            ms(r.latency_ms_p95),
            ms(r.latency_ms_p99),
            format!("{:.0}", r.tcp_connections),
        ]);
        if wide {
            line.extend([pct(r.mtls_rate), format!("{:.1}B/s", r.read_bytes_per_sec), format!("{:.1}B/s", r.write_bytes_per_sec)]);
        }
        lines.push(line);
    }
    let widths: Vec<usize> = (0..header.len()).map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for l in lines {
        let cells: Vec<String> = l.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(cells.join("   ").trim_end());
        out.push('\n');
    }
    out
}
