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
use futures_util::{stream, StreamExt};
use linkerd2_proxy_api::{
    destination::{self as dst, destination_server::Destination, update, Update},
    inbound::{self as inb, inbound_server_policies_server::InboundServerPolicies},
    outbound::{self as outb, outbound_policies_server::OutboundPolicies, traffic_spec},
};
use std::{collections::BTreeMap, convert::Infallible, net::SocketAddr, pin::Pin, sync::Arc};
use tokio::sync::watch;
use tonic::{
    codegen::{BoxFuture, Service},
    Request, Response, Status,
};

/// A response stream: the index's views, as the client reads them.
type Stream<T> = Pin<Box<dyn futures_util::Stream<Item = Result<T, Status>> + Send>>;

/// The largest `Identity.Certify` request read: a CSR and a token are a few KiB.
pub const MAX_CERTIFY_BYTES: usize = 16 * 1024;
/// The largest lookup read (`GetDestination`, `TrafficSpec`, `PortSpec`): names and a context.
pub const MAX_LOOKUP_BYTES: usize = 8 * 1024;
/// A view of the index: `None` once what it describes is gone.
type View<T> = watch::Receiver<Arc<Option<T>>>;

/// Every new value of a view, from the one it has now; ends with NotFound if what it describes
/// goes away, and with the index (knit-control stopping).
///
/// A stream is polled by the task serving its HTTP/2 stream, so a watch costs that task, the
/// receiver and the last message sent: no task or channel of its own.
fn follow<T>(rx: View<T>, what: String) -> Stream<T>
where
    T: Clone + Send + Sync + 'static,
{
    Box::pin(stream::unfold(Some((rx, what, true)), |state| async move {
        let (mut rx, what, first) = state?;
        if !first && rx.changed().await.is_err() {
            return None;
        }
        let view = rx.borrow_and_update().clone();
        match &*view {
            Some(v) => Some((Ok(v.clone()), Some((rx, what, false)))),
            None => Some((Err(Status::not_found(format!("{what} no longer exists"))), None)),
        }
    }))
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
        let rx = self.0.endpoints(&svc);
        if rx.borrow().is_none() {
            return Err(Status::not_found(format!("no {}", svc_name(&svc))));
        }
        // What this client was last sent is the index's own snapshot (shared with every stream
        // that saw it), not a copy per stream.
        let updates = stream::unfold((rx, None::<Arc<EndpointsView>>, true), |(mut rx, sent, first)| async move {
            if !first && rx.changed().await.is_err() {
                return None;
            }
            let view = rx.borrow_and_update().clone();
            let before = sent.as_deref().and_then(Option::as_ref);
            let updates = diff(before, view.as_ref().as_ref(), sent.is_none());
            // After `no_endpoints{exists: false}`, start over as a new stream would.
            let sent = view.is_some().then_some(view);
            Some((updates, (rx, sent, false)))
        });
        let updates = updates.flat_map(|us| stream::iter(us.into_iter().map(|u| Ok(Update { update: Some(u) }))));
        Ok(Response::new(Box::pin(updates)))
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
        Ok(Response::new(follow(rx, req.path.clone())))
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
        Ok(Response::new(follow(rx, what)))
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
        Ok(Response::new(follow(rx, what)))
    }
}

/// A discovery port's services, dispatched by path: `Destination` on one port, both policy
/// services on the other.
///
/// Not linkerd2-proxy-api's generated servers: those fix tonic's codec, whose encoder holds an
/// 8 KiB buffer for as long as its response stream is open, and a proxy keeps a stream open per
/// destination it talks to. Served here with [`Buffers`], a stream holds what its last message
/// needed (a few hundred bytes for most views). The generated servers enable no compression, and
/// neither does this.
#[derive(Clone)]
pub enum Discovery {
    Destination(DestinationService),
    Policy(InboundService, OutboundService),
}

impl Discovery {
    pub fn destination(index: Arc<Index>) -> Self {
        Self::Destination(DestinationService(index))
    }

    pub fn policy(index: Arc<Index>) -> Self {
        Self::Policy(InboundService(index.clone()), OutboundService(index))
    }
}

impl Service<http::Request<tonic::body::Body>> for Discovery {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        // Each arm: tonic's unary or server-streaming handling of one of the service's trait
        // methods, whose future owns a clone of the service (an `Arc`).
        macro_rules! method {
            ($kind:ident, $svc:expr, $method:ident) => {{
                let svc = $svc.clone();
                let method = Method(move |r| {
                    let svc = svc.clone();
                    async move { svc.$method(r).await }
                });
                Box::pin(async move { Ok(grpc().$kind(method, req).await) })
            }};
        }
        match (&*self, req.uri().path()) {
            (Self::Destination(d), "/io.linkerd.proxy.destination.Destination/Get") => method!(server_streaming, d, get),
            (Self::Destination(d), "/io.linkerd.proxy.destination.Destination/GetProfile") => method!(server_streaming, d, get_profile),
            (Self::Policy(i, _), "/io.linkerd.proxy.inbound.InboundServerPolicies/GetPort") => method!(unary, i, get_port),
            (Self::Policy(i, _), "/io.linkerd.proxy.inbound.InboundServerPolicies/WatchPort") => method!(server_streaming, i, watch_port),
            (Self::Policy(_, o), "/io.linkerd.proxy.outbound.OutboundPolicies/Get") => method!(unary, o, get),
            (Self::Policy(_, o), "/io.linkerd.proxy.outbound.OutboundPolicies/Watch") => method!(server_streaming, o, watch),
            (this, path) => {
                let serves = match this {
                    Self::Destination(_) => "Destination",
                    Self::Policy(..) => "InboundServerPolicies and OutboundPolicies",
                };
                let status = Status::unimplemented(format!("no method {path}; this port serves {serves}"));
                Box::pin(async move { Ok(status.into_http()) })
            }
        }
    }
}

/// tonic's per-call gRPC handling with [`Buffers`] and requests cut at [`MAX_LOOKUP_BYTES`].
fn grpc<T, U>() -> tonic::server::Grpc<Buffers<T, U>>
where
    Buffers<T, U>: tonic::codec::Codec,
{
    tonic::server::Grpc::new(Buffers(std::marker::PhantomData)).apply_max_message_size_config(Some(MAX_LOOKUP_BYTES), None)
}

/// One gRPC method as a tower `Service`, which tonic takes as a unary or a server-streaming one.
struct Method<F>(F);

impl<Req, Resp, F, Fut> Service<Request<Req>> for Method<F>
where
    F: FnMut(Request<Req>) -> Fut,
    Fut: std::future::Future<Output = Result<Response<Resp>, Status>>,
{
    type Response = Response<Resp>;
    type Error = Status;
    type Future = Fut;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Status>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Req>) -> Fut {
        (self.0)(req)
    }
}

/// prost's codec with buffers that start empty: tonic's encoder then keeps, between a stream's
/// messages, what the last one needed rather than 8 KiB (its default) or more.
struct Buffers<T, U>(std::marker::PhantomData<fn(T, U)>);

/// No buffer ahead of the first message; output handed on at 32 KiB (tonic's default).
fn buffers() -> tonic::codec::BufferSettings {
    tonic::codec::BufferSettings::new(0, 32 * 1024)
}

impl<T, U> tonic::codec::Codec for Buffers<T, U>
where
    T: tonic_prost::prost::Message + Send + 'static,
    U: tonic_prost::prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = tonic_prost::ProstEncoder<T>;
    type Decoder = tonic_prost::ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        tonic_prost::ProstEncoder::new(buffers())
    }

    fn decoder(&mut self) -> Self::Decoder {
        tonic_prost::ProstDecoder::new(buffers())
    }
}
