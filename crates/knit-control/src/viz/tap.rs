//! Tap, the control plane's side: knit-control calls `Tap.Observe` on the proxies of the selected
//! workloads over mTLS as its own identity (which injected proxies are told to allow with
//! `KNIT_PROXY_TAP_SVC_NAME`), joins each request's init, response and end events, and hands out
//! one JSON object per completed request (`/api/tap`, newline-delimited).

use super::store::Target;
use crate::identity::Service;
use linkerd2_proxy_api::tap::{
    observe_request::{self, r#match as m},
    tap_client::TapClient,
    tap_event::{self, http::Event as HttpEvent},
    ObserveRequest, TapEvent,
};
use rustls::{pki_types::ServerName, ClientConfig};
use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant, SystemTime},
};
use tokio::sync::mpsc;

/// What to tap, beyond which proxies.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub method: Option<String>,
    pub path_prefix: Option<String>,
    pub authority_prefix: Option<String>,
    /// Requests to tap from each proxy before its stream ends; 0 for no limit.
    pub limit: u32,
}

impl Filter {
    fn to_match(&self) -> Option<observe_request::Match> {
        let mut all = Vec::new();
        let http = |m: m::http::Match| observe_request::Match { r#match: Some(m::Match::Http(m::Http { r#match: Some(m) })) };
        if let Some(method) = &self.method {
            all.push(http(m::http::Match::Method(http::Method::from_bytes(method.as_bytes()).unwrap_or(http::Method::GET).into())));
        }
        if let Some(p) = &self.path_prefix {
            all.push(http(m::http::Match::Path(m::http::StringMatch { r#match: Some(m::http::string_match::Match::Prefix(p.clone())) })));
        }
        if let Some(a) = &self.authority_prefix {
            all.push(http(m::http::Match::Authority(m::http::StringMatch { r#match: Some(m::http::string_match::Match::Prefix(a.clone())) })));
        }
        (!all.is_empty()).then_some(observe_request::Match { r#match: Some(m::Match::All(m::Seq { matches: all })) })
    }
}

/// One completed request, as `/api/tap` hands it out.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Tapped {
    /// Unix milliseconds of the request's start.
    pub at: u128,
    pub direction: String,
    pub source: String,
    pub destination: String,
    pub source_identity: Option<String>,
    pub destination_identity: Option<String>,
    /// Outbound: where the request went, as discovery names the endpoint.
    pub destination_namespace: Option<String>,
    pub destination_deployment: Option<String>,
    /// The workload whose proxy saw it.
    pub namespace: String,
    pub deployment: String,
    pub pod: String,
    pub method: String,
    pub scheme: String,
    pub authority: String,
    pub path: String,
    pub status: Option<u32>,
    pub grpc_status: Option<u32>,
    pub latency_ms: f64,
    pub response_bytes: u64,
    /// Set when the stream did not end cleanly.
    pub error: Option<String>,
}

/// knit-control's tap client: mTLS as its own identity (`tls::ClientTls`).
pub struct Client {
    tls: crate::tls::ClientTls,
}

impl Client {
    pub fn new(service: Arc<Service>, identity: String) -> Self {
        Self { tls: crate::tls::ClientTls::new(service, identity) }
    }

    pub fn identity(&self) -> &str {
        self.tls.identity()
    }

    /// Taps `targets` with `filter` until `out` closes, at most `max_rps` requests per second in
    /// all. A target that cannot be tapped is reported once as an error line.
    pub async fn run(self: Arc<Self>, targets: Vec<Target>, filter: Filter, max_rps: u32, out: mpsc::Sender<Result<Tapped, String>>) {
        let (tx, mut rx) = mpsc::channel::<Result<Tapped, String>>(256);
        let mut tasks = Vec::new();
        for target in targets {
            let (this, filter, tx) = (self.clone(), filter.clone(), tx.clone());
            tasks.push(tokio::spawn(async move {
                if let Err(e) = this.observe(&target, &filter, &tx).await {
                    let _ = tx.send(Err(format!("{}/{}: {e}", target.namespace, target.pod))).await;
                }
            }));
        }
        drop(tx);
        let (mut second, mut sent) = (Instant::now(), 0u32);
        loop {
            let next = tokio::select! {
                n = rx.recv() => n,
                () = out.closed() => break,
            };
            let Some(item) = next else { break };
            if second.elapsed() >= Duration::from_secs(1) {
                (second, sent) = (Instant::now(), 0);
            }
            if item.is_ok() {
                if sent >= max_rps {
                    continue;
                }
                sent += 1;
            }
            if out.send(item).await.is_err() {
                break;
            }
        }
        for t in tasks {
            t.abort();
        }
    }

    async fn observe(&self, target: &Target, filter: &Filter, tx: &mpsc::Sender<Result<Tapped, String>>) -> anyhow::Result<()> {
        let name = target.identity.clone().ok_or_else(|| anyhow::anyhow!("not meshed (no identity): its proxy cannot be tapped"))?;
        let connector = Connect { config: self.tls.config()?, name: ServerName::try_from(name.clone())?, addr: target.tap };
        let channel = tonic::transport::Endpoint::from_static("http://tap.knit")
            .connect_with_connector(connector)
            .await
            .map_err(|e| anyhow::anyhow!("connecting to its tap server at {}: {}", target.tap, source_chain(&e)))?;
        let req = ObserveRequest { limit: filter.limit, r#match: filter.to_match(), extract: None };
        let mut stream = TapClient::new(channel).observe(req).await.map_err(|s| anyhow::anyhow!("{}: {}", target.tap, s.message()))?.into_inner();
        let mut open: HashMap<u64, Tapped> = HashMap::new();
        while let Some(event) = stream.message().await.map_err(|s| anyhow::anyhow!("{}: {}", target.tap, s.message()))? {
            if let Some(done) = join(&mut open, event, target) {
                if tx.send(Ok(done)).await.is_err() {
                    return Ok(());
                }
            }
            // A request whose end never comes (its stream lost) is not kept forever.
            if open.len() > 10_000 {
                open.clear();
            }
        }
        Ok(())
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(&format!(": {c}"));
        cur = c.source();
    }
    s
}

/// Folds one event into the requests in flight; returns a request once it ended.
fn join(open: &mut HashMap<u64, Tapped>, event: TapEvent, target: &Target) -> Option<Tapped> {
    let Some(tap_event::Event::Http(http)) = event.event else { return None };
    let addr = |a: &Option<linkerd2_proxy_api::net::TcpAddress>| {
        a.as_ref().and_then(|a| Some(SocketAddr::new(a.ip?.try_into().ok()?, a.port as u16).to_string())).unwrap_or_default()
    };
    let label = |m: &Option<tap_event::EndpointMeta>, k: &str| m.as_ref().and_then(|m| m.labels.get(k).cloned());
    match http.event? {
        HttpEvent::RequestInit(init) => {
            let id = init.id?.stream;
            let method = init.method.and_then(|m| http::Method::try_from(m).ok()).map(|m| m.to_string()).unwrap_or_default();
            let scheme = init.scheme.and_then(|s| http::uri::Scheme::try_from(s).ok()).map(|s| s.to_string()).unwrap_or_default();
            let direction = match event.proxy_direction {
                1 => "inbound",
                2 => "outbound",
                _ => "unknown",
            };
            let at = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis());
            open.insert(
                id,
                Tapped {
                    at,
                    direction: direction.into(),
                    source: addr(&event.source),
                    destination: addr(&event.destination),
                    source_identity: label(&event.source_meta, "client_id"),
                    destination_identity: label(&event.destination_meta, "server_id"),
                    destination_namespace: label(&event.destination_meta, "namespace"),
                    destination_deployment: label(&event.destination_meta, "deployment"),
                    namespace: target.namespace.clone(),
                    deployment: target.deployment.clone(),
                    pod: target.pod.clone(),
                    method,
                    scheme,
                    authority: init.authority,
                    path: init.path,
                    ..Default::default()
                },
            );
            None
        }
        HttpEvent::ResponseInit(rsp) => {
            if let Some(t) = open.get_mut(&rsp.id?.stream) {
                t.status = Some(rsp.http_status);
            }
            None
        }
        HttpEvent::ResponseEnd(end) => {
            let mut t = open.remove(&end.id?.stream)?;
            let d = end.since_request_init.unwrap_or_default();
            t.latency_ms = d.seconds as f64 * 1e3 + f64::from(d.nanos) / 1e6;
            t.response_bytes = end.response_bytes;
            match end.eos.and_then(|e| e.end) {
                Some(linkerd2_proxy_api::tap::eos::End::GrpcStatusCode(c)) => t.grpc_status = Some(c),
                Some(linkerd2_proxy_api::tap::eos::End::ResetErrorCode(c)) => t.error = Some(format!("stream reset (h2 error {c})")),
                None => {}
            }
            Some(t)
        }
    }
}

/// Dials a proxy's tap port with mTLS as knit-control, checking the proxy's identity.
#[derive(Clone)]
struct Connect {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    addr: SocketAddr,
}

type Io = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

impl tower_service::Service<http::Uri> for Connect {
    type Response = Io;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Io, std::io::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: http::Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let timeout = |what: &str| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("{what} {} timed out", this.addr));
            let tcp = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(this.addr)).await.map_err(|_| timeout("connecting to"))??;
            tcp.set_nodelay(true)?;
            let tls = tokio::time::timeout(Duration::from_secs(5), tokio_rustls::TlsConnector::from(this.config).connect(this.name, tcp))
                .await
                .map_err(|_| timeout("TLS with"))??;
            Ok(hyper_util::rt::TokioIo::new(tls))
        })
    }
}
