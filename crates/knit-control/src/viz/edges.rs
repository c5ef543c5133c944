//! `edges`: who talks to whom, and whether the traffic crossed mutual TLS, from the callers'
//! outbound series (as `linkerd viz edges`).

use super::query::{QueryError, Source};
use std::{collections::BTreeMap, time::Duration};

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Edge {
    pub src_namespace: String,
    pub src: String,
    pub dst_namespace: String,
    pub dst: String,
    /// HTTP responses and TCP bytes seen on the edge in the window.
    pub requests: f64,
    pub bytes: f64,
    /// Whether everything on the edge in the window was mutual TLS.
    pub secured: bool,
    pub client_id: Option<String>,
    pub server_id: Option<String>,
}

/// The deployment-to-deployment edges seen in `window`, limited to those touching `namespace`.
/// `identities`: each (namespace, deployment)'s proxy identity, for the client side.
pub async fn edges(
    source: &Source,
    namespace: Option<&str>,
    window: Duration,
    identities: &BTreeMap<(String, String), String>,
) -> Result<Vec<Edge>, QueryError> {
    let source = source.snapshot();
    let by = ["namespace", "deployment", "dst_namespace", "dst_deployment", "tls", "server_id"];
    let http = source.increase("response_total", &[("direction", "outbound")], &by, window).await?;
    let tcp = source.increase("tcp_write_bytes_total", &[("direction", "outbound"), ("peer", "dst")], &by, window).await?;
    let mut out: BTreeMap<[String; 4], Edge> = BTreeMap::new();
    for (grouped, is_http) in [(&http, true), (&tcp, false)] {
        for (g, v) in grouped {
            let [ns, src, dst_ns, dst, tls, server_id] = <[String; 6]>::try_from(g.clone()).expect("grouped by six labels");
            if dst.is_empty() || *v <= 0.0 || namespace.is_some_and(|n| n != ns && n != dst_ns) {
                continue;
            }
            let client_id = identities.get(&(ns.clone(), src.clone())).cloned();
            let edge = out.entry([ns.clone(), src.clone(), dst_ns.clone(), dst.clone()]).or_insert_with(|| Edge {
                src_namespace: ns,
                src,
                dst_namespace: dst_ns,
                dst,
                requests: 0.0,
                bytes: 0.0,
                secured: true,
                client_id,
                server_id: None,
            });
            if is_http {
                edge.requests += v;
            } else {
                edge.bytes += v;
            }
            edge.secured &= tls == "true";
            if !server_id.is_empty() {
                edge.server_id = Some(server_id);
            }
        }
    }
    Ok(out.into_values().collect())
}
