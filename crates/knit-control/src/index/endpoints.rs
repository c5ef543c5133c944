//! The endpoints of a Service port (`Destination.Get`) and profiles (`Destination.GetProfile`).
//!
//! An endpoint is each IP of each ExternalWorkload the Service selects, on the target port (a
//! number, or the name of one of the workload's ports). A Service without a selector takes the
//! workloads made of its EndpointSlices (labelled [`ENDPOINT_SLICE_LABEL`]), on the slice port
//! named as the Service port. A workload with `meshTLS` is meshed: the
//! proxy connects to its proxy's inbound port (annotation `knit.dev/proxy-inbound-port`, default
//! 4143, LINKERD-WIRE.md §3.1 `opaque_transport`) with mTLS to its identity.

use super::{names::ProfileKey, Change, IndexConfig, Model, SvcPort};
use crate::resources::{ExternalWorkload, Kind, PortRef, Resource, Service};
use linkerd2_proxy_api::destination::{protocol_hint, tls_identity, AuthorityOverride, DestinationProfile, ProtocolHint, TlsIdentity, WeightedAddr};
use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
};

/// The annotation that says where a workload's proxy listens for meshed traffic.
pub const INBOUND_PORT_ANNOTATION: &str = "knit.dev/proxy-inbound-port";
/// The label of the workloads the Kubernetes source makes of EndpointSlices: their Service.
pub const ENDPOINT_SLICE_LABEL: &str = "knit.dev/endpointslice-service";
const DEFAULT_INBOUND_PORT: u32 = 4143;
/// What Linkerd sends; the proxy's balancer does not read it.
const WEIGHT: u32 = 10_000;

#[derive(Clone, Debug, PartialEq)]
pub struct Endpoints {
    pub addrs: BTreeMap<SocketAddr, WeightedAddr>,
    /// Set-level labels: `namespace`, `service`.
    pub labels: HashMap<String, String>,
}

pub fn compute(model: &Model, cfg: &IndexConfig, key: &SvcPort) -> Option<Endpoints> {
    let svc = model.service(&key.ns, &key.name)?;
    let port = svc.spec.ports.iter().find(|p| p.port == key.port)?;
    let remote = svc.metadata.annotations.get(REMOTE_SVC_FQ_NAME);
    let mut addrs = BTreeMap::new();
    for w in model.selected(&key.ns, svc) {
        let Some(target) = target_port(svc, port, w) else { continue };
        let opaque = cfg.is_opaque(svc, key.port);
        for ip in &w.spec.workload_ips {
            let addr = SocketAddr::new(ip.ip, target);
            let weighted = match remote {
                Some(fq_name) => gateway_addr(w, addr, fq_name, key.port),
                None => weighted_addr(w, addr, opaque),
            };
            addrs.insert(addr, weighted);
        }
    }
    // A federated Service (§12.3): the local member's endpoints join the remote members'.
    if let Some(member) = svc.metadata.annotations.get(LOCAL_DISCOVERY).filter(|m| **m != key.name) {
        let member = SvcPort { ns: key.ns.clone(), name: member.clone(), port: key.port };
        if model.service(&member.ns, &member.name).is_some_and(|m| !m.metadata.annotations.contains_key(LOCAL_DISCOVERY)) {
            addrs.extend(compute(model, cfg, &member).map(|e| e.addrs).unwrap_or_default());
        }
    }
    let mut labels = HashMap::from([("namespace".to_string(), key.ns.clone()), ("service".to_string(), key.name.clone())]);
    if let Some(fq_name) = remote {
        labels.extend(remote_labels(svc, fq_name));
    }
    Some(Endpoints { addrs, labels })
}

/// The annotation of a Service mirrored from another cluster through its gateway: the remote
/// Service's fully qualified name (LINKERD-WIRE.md §12.1).
pub const REMOTE_SVC_FQ_NAME: &str = "mirror.linkerd.io/remote-svc-fq-name";
/// The annotation of a mirror's endpoints (the gateway's addresses): the identity the gateway proves.
pub const REMOTE_GATEWAY_IDENTITY: &str = "mirror.linkerd.io/remote-gateway-identity";
/// The annotation of a federated Service naming its local member (`multicluster/federation.rs`).
pub const LOCAL_DISCOVERY: &str = "multicluster.linkerd.io/local-discovery";
/// The label of every mirrored Service.
pub const MIRRORED_SERVICE_LABEL: &str = "mirror.linkerd.io/mirrored-service";
/// The label of a mirrored Service, and of a remote pod's endpoint: the cluster it comes from.
pub const CLUSTER_NAME_LABEL: &str = "mirror.linkerd.io/cluster-name";
/// The annotations of a remote pod's endpoint (flat and federated): its pod and deployment there.
pub const REMOTE_POD: &str = "knit.dev/remote-pod";
pub const REMOTE_DEPLOYMENT: &str = "knit.dev/remote-deployment";

/// An endpoint of a gateway-mirrored Service, as Linkerd's destination controller sends it: the
/// gateway's address, `authority_override` naming the remote Service and the port asked for, the
/// gateway's identity as a DNS-like identity without `server_name`, an HTTP/2 hint and no
/// `opaque_transport` (the client proxy dials the gateway port itself). Without the gateway's
/// identity, neither TLS nor a hint.
fn gateway_addr(gateway: &ExternalWorkload, addr: SocketAddr, fq_name: &str, port: u16) -> WeightedAddr {
    let identity = gateway.metadata.annotations.get(REMOTE_GATEWAY_IDENTITY).filter(|id| !id.is_empty());
    let tls_identity = identity.map(|name| TlsIdentity {
        strategy: Some(tls_identity::Strategy::DnsLikeIdentity(tls_identity::DnsLikeIdentity { name: name.clone() })),
        server_name: None,
    });
    let protocol_hint = identity.map(|_| ProtocolHint { protocol: Some(protocol_hint::Protocol::H2(protocol_hint::H2 {})), opaque_transport: None });
    WeightedAddr {
        addr: Some(addr.into()),
        weight: WEIGHT,
        metric_labels: HashMap::from([("zone_locality".to_string(), "unknown".to_string())]),
        tls_identity,
        protocol_hint,
        authority_override: Some(AuthorityOverride { authority_override: format!("{fq_name}:{port}") }),
        ..Default::default()
    }
}

/// A gateway mirror's set labels: its cluster, and the remote Service's name and namespace
/// (the first two labels of its fully qualified name).
fn remote_labels(svc: &Service, fq_name: &str) -> impl Iterator<Item = (String, String)> {
    let mut parts = fq_name.split('.');
    let (name, ns) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    let cluster = svc.metadata.labels.get(CLUSTER_NAME_LABEL).cloned().unwrap_or_default();
    [("target_cluster", cluster), ("target_service", name.to_string()), ("target_service_namespace", ns.to_string())]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
}

/// A Service with a selector selects workloads by label; one without, its EndpointSlices'.
pub(super) fn selects(svc: &Service, w: &ExternalWorkload) -> bool {
    if svc.spec.selector.is_empty() {
        return w.metadata.labels.get(ENDPOINT_SLICE_LABEL) == Some(&svc.metadata.name);
    }
    svc.spec.selector.iter().all(|(k, v)| w.metadata.labels.get(k) == Some(v))
}

fn target_port(svc: &Service, port: &crate::resources::ServicePort, w: &ExternalWorkload) -> Option<u16> {
    if svc.spec.selector.is_empty() {
        // An EndpointSlice names its ports as the Service does (an unnamed one when it has one).
        return w
            .spec
            .ports
            .iter()
            .find(|p| p.name == port.name || (p.name.as_deref().unwrap_or("").is_empty() && port.name.as_deref().unwrap_or("").is_empty()))
            .map(|p| p.port);
    }
    match port.target_port.as_ref() {
        None => Some(port.port),
        Some(PortRef::Number(n)) => Some(*n),
        Some(PortRef::Name(name)) => w.spec.ports.iter().find(|p| p.name.as_deref() == Some(name)).map(|p| p.port),
    }
}

pub fn weighted_addr(w: &ExternalWorkload, addr: SocketAddr, opaque: bool) -> WeightedAddr {
    // `pod` and `deployment` as Linkerd names a Pod's endpoint: what `stat --to`, `--from` and
    // edges group by in Prometheus. Every workload is a pod to viz, local mode's included.
    let mut labels = HashMap::from([("pod".to_string(), w.metadata.name.clone()), ("deployment".to_string(), w.deployment().to_string())]);
    // A remote pod (flat and federated endpoints): named as there, with its cluster.
    if let Some(cluster) = w.metadata.labels.get(CLUSTER_NAME_LABEL) {
        labels.insert("target_cluster".to_string(), cluster.clone());
        for (label, annotation) in [("pod", REMOTE_POD), ("deployment", REMOTE_DEPLOYMENT)] {
            if let Some(v) = w.metadata.annotations.get(annotation) {
                labels.insert(label.to_string(), v.clone());
            }
        }
    }
    let (tls_identity, protocol_hint) = match &w.spec.mesh_tls {
        None => (None, None),
        Some(tls) => {
            // `SA.NS.serviceaccount.identity...`: the first label names the service account.
            if tls.identity.contains(".serviceaccount.") {
                if let Some(sa) = tls.identity.split('.').next() {
                    labels.insert("serviceaccount".to_string(), sa.to_string());
                }
            }
            let inbound_port = w.metadata.annotations.get(INBOUND_PORT_ANNOTATION).and_then(|p| p.parse::<u16>().ok()).map_or(DEFAULT_INBOUND_PORT, u32::from);
            let identity = TlsIdentity {
                strategy: Some(tls_identity::Strategy::DnsLikeIdentity(tls_identity::DnsLikeIdentity { name: tls.identity.clone() })),
                server_name: Some(tls_identity::DnsLikeIdentity { name: tls.server_name.clone().unwrap_or_else(|| tls.identity.clone()) }),
            };
            let protocol = if opaque { protocol_hint::Protocol::Opaque(protocol_hint::Opaque {}) } else { protocol_hint::Protocol::H2(protocol_hint::H2 {}) };
            let hint = ProtocolHint { protocol: Some(protocol), opaque_transport: Some(protocol_hint::OpaqueTransport { inbound_port }) };
            (Some(identity), Some(hint))
        }
    };
    WeightedAddr { addr: Some(addr.into()), weight: WEIGHT, metric_labels: labels, tls_identity, protocol_hint, ..Default::default() }
}

/// Whether `change` can alter the endpoints of `key`: its Service changed, or a workload in its
/// namespace that the Service selects (before or after the change).
pub fn affects(model: &Model, change: &Change, key: &SvcPort) -> bool {
    // A federated Service follows its local member too.
    let member = model.service(&key.ns, &key.name).and_then(|s| s.metadata.annotations.get(LOCAL_DISCOVERY)).filter(|m| **m != key.name);
    let named = |name: &str| name == key.name || member.is_some_and(|m| m == name);
    match change.key.kind {
        Kind::Service => change.key.namespace == key.ns && named(&change.key.name),
        Kind::ExternalWorkload if change.key.namespace == key.ns => {
            let services: Vec<_> =
                [Some(key.name.as_str()), member.map(String::as_str)].into_iter().flatten().filter_map(|n| model.service(&key.ns, n)).collect();
            [&change.before, &change.after]
                .into_iter()
                .flatten()
                .any(|r| matches!(r, Resource::ExternalWorkload(w) if services.iter().any(|svc| selects(svc, w))))
        }
        _ => false,
    }
}

/// A profile: the Service's fully qualified name and whether its port is opaque, or for a
/// workload's address, that endpoint with its TLS identity and hints. `None`: no profile.
pub fn profile(model: &Model, cfg: &IndexConfig, key: &ProfileKey) -> Option<DestinationProfile> {
    match key {
        ProfileKey::Service(svc) => {
            let s = model.service(&svc.ns, &svc.name)?;
            Some(DestinationProfile {
                fully_qualified_name: format!("{}.{}.svc.{}", svc.name, svc.ns, cfg.cluster_domain),
                opaque_protocol: cfg.is_opaque(s, svc.port),
                ..Default::default()
            })
        }
        ProfileKey::Addr(addr) => {
            let w = model.of_kind(Kind::ExternalWorkload, None).find_map(|r| match r {
                Resource::ExternalWorkload(w)
                    if w.spec.workload_ips.iter().any(|ip| ip.ip == addr.ip()) && w.spec.ports.iter().any(|p| p.port == addr.port()) =>
                {
                    Some(w)
                }
                _ => None,
            })?;
            Some(DestinationProfile { endpoint: Some(weighted_addr(w, *addr, false)), ..Default::default() })
        }
    }
}
