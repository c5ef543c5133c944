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
    /// The linked cluster the destination is in (`dst_target_cluster`); `None`: this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_cluster: Option<String>,
    /// Through the linked cluster's gateway: the destination is the remote Service (`dst` its
    /// name), as the caller cannot know which of its pods answered.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub via_gateway: bool,
}

/// Which resources an edge joins: deployments, or pods (as `linkerd viz edges deployment|pod`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum By {
    Deployment,
    Pod,
}

impl By {
    /// A kind as `linkerd viz edges` takes it (`deploy`, `po`, ...).
    pub fn parse(kind: &str) -> Result<Self, String> {
        match super::stat::Kind::parse(kind)? {
            super::stat::Kind::Deployment => Ok(By::Deployment),
            super::stat::Kind::Pod => Ok(By::Pod),
            other => Err(format!("edges join deployments or pods, not {}s", other.label())),
        }
    }
}

/// The edges between resources of kind `by` seen in `window`, limited to those touching
/// `namespace`. `identities`: each (namespace, deployment)'s proxy identity, for the client side.
pub async fn edges(
    source: &Source,
    by: By,
    namespace: Option<&str>,
    window: Duration,
    identities: &BTreeMap<(String, String), String>,
) -> Result<Vec<Edge>, QueryError> {
    let source = source.snapshot();
    // The caller's deployment comes last, for its identity (for deployments, the same label twice).
    let (src, dst) = match by {
        By::Deployment => ("deployment", "dst_deployment"),
        By::Pod => ("pod", "dst_pod"),
    };
    // A gateway mirror's endpoint is the gateway: no pod or deployment, but the remote Service.
    let by = ["namespace", src, "dst_namespace", dst, "tls", "server_id", "deployment", "dst_target_cluster", "dst_target_service"];
    let http = source.increase("response_total", &[("direction", "outbound")], &by, window).await?;
    let tcp = source.increase("tcp_write_bytes_total", &[("direction", "outbound"), ("peer", "dst")], &by, window).await?;
    let mut out: BTreeMap<([String; 5], bool), Edge> = BTreeMap::new();
    for (grouped, is_http) in [(&http, true), (&tcp, false)] {
        for (g, v) in grouped {
            let [ns, src, dst_ns, dst, tls, server_id, deployment, cluster, target_service] =
                <[String; 9]>::try_from(g.clone()).expect("grouped by nine labels");
            let via_gateway = dst.is_empty() && !cluster.is_empty() && !target_service.is_empty();
            let dst = if via_gateway { target_service } else { dst };
            if dst.is_empty() || *v <= 0.0 || namespace.is_some_and(|n| n != ns && n != dst_ns) {
                continue;
            }
            let client_id = identities.get(&(ns.clone(), deployment)).cloned();
            let dst_cluster = Some(cluster.clone()).filter(|c| !c.is_empty());
            let edge = out.entry(([ns.clone(), src.clone(), dst_ns.clone(), dst.clone(), cluster], via_gateway)).or_insert_with(|| Edge {
                src_namespace: ns,
                src,
                dst_namespace: dst_ns,
                dst,
                requests: 0.0,
                bytes: 0.0,
                secured: true,
                client_id,
                server_id: None,
                dst_cluster,
                via_gateway,
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

#[cfg(test)]
mod tests;
