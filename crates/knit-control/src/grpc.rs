//! The discovery gRPC services: `Destination` (8086), and `InboundServerPolicies` with
//! `OutboundPolicies` (8090), streaming the index's views (LINKERD-WIRE.md §3, §4).
//!
//! Each stream is a task that follows one watch channel of the index and forwards what changes;
//! it ends when the client goes away. Error codes follow what linkerd2-proxy expects: NotFound
//! for what the index does not know (the proxy falls back), InvalidArgument for a malformed
//! request (the proxy stops asking).

use crate::index::{
    names::{self, ProfileKey, Target},
    Endpoints, EndpointsView, Index, OutboundKey, SvcPort, WorkloadPort,
};
use linkerd2_proxy_api::{
    destination::{self as dst, destination_server::Destination, update, Update},
    inbound::{self as inb, inbound_server_policies_server::InboundServerPolicies},
    outbound::{self as outb, outbound_policies_server::OutboundPolicies, traffic_spec},
};
use std::{collections::BTreeMap, convert::Infallible, net::SocketAddr, sync::Arc};
use tokio::sync::{mpsc, watch};
use tonic::{
    codegen::{tokio_stream::wrappers::ReceiverStream, BoxFuture, Service},
    Request, Response, Status,
};

type Stream<T> = ReceiverStream<Result<T, Status>>;

/// The largest `Identity.Certify` request read: a CSR and a token are a few KiB.
pub const MAX_CERTIFY_BYTES: usize = 16 * 1024;
/// The largest lookup read (`GetDestination`, `TrafficSpec`, `PortSpec`): names and a context.
pub const MAX_LOOKUP_BYTES: usize = 8 * 1024;
/// A view of the index: `None` once what it describes is gone.
type View<T> = watch::Receiver<Arc<Option<T>>>;

/// Forwards every new value of a view; ends the stream with NotFound if what it describes goes away.
fn follow<T, M>(mut rx: View<T>, what: String, to_message: impl Fn(&T) -> M + Send + 'static) -> Stream<M>
where
    T: Send + Sync + 'static,
    M: Send + 'static,
{
    let (tx, out) = mpsc::channel(2);
    tokio::spawn(async move {
        loop {
            let view = rx.borrow_and_update().clone();
            let message = match &*view {
                Some(v) => Ok(to_message(v)),
                None => Err(Status::not_found(format!("{what} no longer exists"))),
            };
            let end = message.is_err();
            if tx.send(message).await.is_err() || end {
                return;
            }
            tokio::select! {
                changed = rx.changed() => if changed.is_err() { return },
                _ = tx.closed() => return,
            }
        }
    });
    ReceiverStream::new(out)
}

fn svc_name(svc: &SvcPort) -> String {
    format!("Service {}/{} port {}", svc.ns, svc.name, svc.port)
}

#[derive(Clone)]
pub struct DestinationService(pub Arc<Index>);

#[tonic::async_trait]
impl Destination for DestinationService {
    type GetStream = Stream<Update>;
    type GetProfileStream = Stream<dst::DestinationProfile>;

    async fn get(&self, req: Request<dst::GetDestination>) -> Result<Response<Self::GetStream>, Status> {
        let req = req.into_inner();
        let ns = names::source_namespace(&req.context_token);
        let target = names::parse_target(&req.path, &ns, &self.0.config().cluster_domain).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let Target::Name(svc) = target else {
            return Err(Status::invalid_argument(format!(
                "Destination.Get resolves Service names (NAME.NS.svc.DOMAIN:PORT), not addresses; found {:?}",
                req.path
            )));
        };
        let mut rx = self.0.endpoints(&svc);
        if rx.borrow().is_none() {
            return Err(Status::not_found(format!("no {}", svc_name(&svc))));
        }
        let (tx, out) = mpsc::channel(4);
        tokio::spawn(async move {
            // What this client was last sent is the index's own snapshot (shared with every
            // stream that saw it), not a copy per stream.
            let mut sent: Option<Arc<EndpointsView>> = None;
            loop {
                let view = rx.borrow_and_update().clone();
                let before = sent.as_deref().and_then(Option::as_ref);
                for u in diff(before, view.as_ref().as_ref(), sent.is_none()) {
                    if tx.send(Ok(Update { update: Some(u) })).await.is_err() {
                        return;
                    }
                }
                // After `no_endpoints{exists: false}`, start over as a new stream would.
                sent = view.is_some().then_some(view);
                tokio::select! {
                    changed = rx.changed() => if changed.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(out)))
    }

    async fn get_profile(&self, req: Request<dst::GetDestination>) -> Result<Response<Self::GetProfileStream>, Status> {
        let req = req.into_inner();
        let ns = names::source_namespace(&req.context_token);
        let no_profile = || Status::invalid_argument(format!("no profile for {:?}", req.path));
        let target = names::parse_target(&req.path, &ns, &self.0.config().cluster_domain).map_err(|_| no_profile())?;
        let key = match self.0.resolve(&target) {
            Some(svc) => ProfileKey::Service(svc),
            None => match target {
                Target::Addr(addr) => ProfileKey::Addr(addr),
                Target::Name(_) => return Err(no_profile()),
            },
        };
        let rx = self.0.profile(&key);
        if rx.borrow().is_none() {
            return Err(no_profile());
        }
        Ok(Response::new(follow(rx, req.path.clone(), Clone::clone)))
    }
}

/// The updates that take a client from `before` (what it was sent) to `now`.
///
/// The first message is always an `add`, even of no addresses: the API asks for a message at once
/// and for no `no_endpoints` before an `add`, and an empty `add` satisfies both. A Service that
/// goes away becomes `no_endpoints{exists: false}`.
pub fn diff(before: Option<&Endpoints>, now: Option<&Endpoints>, first: bool) -> Vec<update::Update> {
    let Some(now) = now else {
        return vec![update::Update::NoEndpoints(dst::NoEndpoints { exists: false })];
    };
    let nothing = BTreeMap::new();
    let sent = before.map_or(&nothing, |b| &b.addrs);
    let mut out = Vec::new();
    let removed: Vec<_> = sent.keys().filter(|a| !now.addrs.contains_key(a)).map(|a| (*a).into()).collect();
    if !removed.is_empty() {
        out.push(update::Update::Remove(dst::AddrSet { addrs: removed }));
    }
    let added: Vec<dst::WeightedAddr> = now.addrs.iter().filter(|(a, w)| sent.get(a) != Some(w)).map(|(_, w)| w.clone()).collect();
    if !added.is_empty() || first {
        out.push(update::Update::Add(dst::WeightedAddrSet { addrs: added, metric_labels: now.labels.clone() }));
    }
    out
}

#[derive(Clone)]
pub struct OutboundService(pub Arc<Index>);

impl OutboundService {
    fn subscribe(&self, spec: outb::TrafficSpec) -> Result<(View<outb::OutboundPolicy>, String), Status> {
        let ns = names::source_namespace(&spec.source_workload);
        let target = match spec.target {
            Some(traffic_spec::Target::Authority(a)) => names::parse_target(&a, &ns, &self.0.config().cluster_domain)
                // Not a Service name (an external host): not ours to answer; the proxy falls back.
                .map_err(|e| Status::not_found(e.to_string()))?,
            Some(traffic_spec::Target::Addr(a)) => Target::Addr(SocketAddr::try_from(a).map_err(|e| Status::invalid_argument(format!("target.addr: {e}")))?),
            None => return Err(Status::invalid_argument("target is required (authority or addr)")),
        };
        let key = self.0.resolve_outbound(&target, &ns).ok_or_else(|| Status::not_found(format!("{target:?} is not a known Service")))?;
        let what = match &key {
            OutboundKey::Service(svc) => svc_name(svc),
            OutboundKey::Addr { addr, .. } => format!("egress to {addr}"),
        };
        let rx = self.0.outbound(&key);
        if rx.borrow().is_none() {
            return Err(Status::not_found(format!("no policy for {what}: an address inside the cluster networks that is no Service's")));
        }
        Ok((rx, what))
    }
}

#[tonic::async_trait]
impl OutboundPolicies for OutboundService {
    type WatchStream = Stream<outb::OutboundPolicy>;

    async fn get(&self, req: Request<outb::TrafficSpec>) -> Result<Response<outb::OutboundPolicy>, Status> {
        let (rx, what) = self.subscribe(req.into_inner())?;
        let policy = rx.borrow().as_ref().clone().ok_or_else(|| Status::not_found(format!("no {what}")))?;
        Ok(Response::new(policy))
    }

    async fn watch(&self, req: Request<outb::TrafficSpec>) -> Result<Response<Self::WatchStream>, Status> {
        let (rx, what) = self.subscribe(req.into_inner())?;
        Ok(Response::new(follow(rx, what, Clone::clone)))
    }
}

#[derive(Clone)]
pub struct InboundService(pub Arc<Index>);

impl InboundService {
    fn subscribe(&self, spec: inb::PortSpec) -> Result<(View<inb::Server>, String), Status> {
        let (ns, workload) = names::parse_workload(&spec.workload).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let port = u16::try_from(spec.port).ok().filter(|p| *p != 0).ok_or_else(|| Status::invalid_argument(format!("port {} is out of range", spec.port)))?;
        let what = format!("workload {ns}/{workload}");
        let rx = self.0.inbound(&WorkloadPort { ns, workload, port });
        if rx.borrow().is_none() {
            return Err(Status::not_found(format!("no {what}")));
        }
        Ok((rx, what))
    }
}

#[tonic::async_trait]
impl InboundServerPolicies for InboundService {
    type WatchPortStream = Stream<inb::Server>;

    async fn get_port(&self, req: Request<inb::PortSpec>) -> Result<Response<inb::Server>, Status> {
        let (rx, what) = self.subscribe(req.into_inner())?;
        let server = rx.borrow().as_ref().clone().ok_or_else(|| Status::not_found(format!("no {what}")))?;
        Ok(Response::new(server))
    }

    async fn watch_port(&self, req: Request<inb::PortSpec>) -> Result<Response<Self::WatchPortStream>, Status> {
        let (rx, what) = self.subscribe(req.into_inner())?;
        Ok(Response::new(follow(rx, what, Clone::clone)))
    }
}

/// Both policy services on one port, dispatched by path. (tonic's router would do this, at the
/// price of its `router` feature and axum behind it.)
#[derive(Clone)]
pub struct PolicyServers {
    inbound: inb::inbound_server_policies_server::InboundServerPoliciesServer<InboundService>,
    outbound: outb::outbound_policies_server::OutboundPoliciesServer<OutboundService>,
}

impl PolicyServers {
    pub fn new(index: Arc<Index>) -> Self {
        Self {
            inbound: inb::inbound_server_policies_server::InboundServerPoliciesServer::new(InboundService(index.clone()))
                .max_decoding_message_size(MAX_LOOKUP_BYTES),
            outbound: outb::outbound_policies_server::OutboundPoliciesServer::new(OutboundService(index)).max_decoding_message_size(MAX_LOOKUP_BYTES),
        }
    }
}

impl Service<http::Request<tonic::body::Body>> for PolicyServers {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let path = req.uri().path();
        if path.starts_with("/io.linkerd.proxy.inbound.InboundServerPolicies/") {
            Box::pin(self.inbound.call(req))
        } else if path.starts_with("/io.linkerd.proxy.outbound.OutboundPolicies/") {
            Box::pin(self.outbound.call(req))
        } else {
            let status = Status::unimplemented(format!("no service for {path}; this port serves InboundServerPolicies and OutboundPolicies"));
            Box::pin(async move { Ok(status.into_http()) })
        }
    }
}
