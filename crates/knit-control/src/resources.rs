//! The resources the control plane understands, in their Kubernetes API shapes, and the parser
//! that reads them from YAML manifests (several documents per file).
//!
//! A document that cannot be used is reported as `FILE: document N (KIND NS/NAME): FIELD: REASON`
//! and skipped; the file's other documents still count. Besides what serde checks (types, required
//! fields), each resource is validated for what the wire needs (weights, durations, status
//! ranges, annotation values), so that a bad manifest is refused here, with its name, rather than
//! producing a policy the proxies reject.

mod annotations;
mod bounded;
mod validate;

pub use annotations::{Accrual, Penalty, RetryConfig, ServiceConfig, Timeouts};
use serde::Deserialize;
use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Arc,
};
pub use validate::DEFAULT_POLICIES;

#[cfg(test)]
mod tests;

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339; routes are ordered by it, then by name.
    #[serde(default)]
    pub creation_timestamp: Option<String>,
}

fn default_namespace() -> String {
    "default".to_string()
}

/// A port given as a number or as the name of a workload's port.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum PortRef {
    Number(u16),
    Name(String),
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Service {
    pub metadata: ObjectMeta,
    pub spec: ServiceSpec,
    /// The Linkerd annotations, parsed.
    #[serde(skip)]
    pub config: ServiceConfig,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    #[serde(default, rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default)]
    pub name: Option<String>,
    pub port: u16,
    #[serde(default)]
    pub target_port: Option<PortRef>,
    #[serde(default)]
    pub app_protocol: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ExternalWorkload {
    pub metadata: ObjectMeta,
    pub spec: ExternalWorkloadSpec,
}

/// The label Linkerd's injector gives a Deployment's pods.
pub const DEPLOYMENT_LABEL: &str = "linkerd.io/proxy-deployment";

impl ExternalWorkload {
    /// The deployment it belongs to, as metrics name it (`deployment`, `dst_deployment`): its
    /// `linkerd.io/proxy-deployment` label, or else its own name (a workload written by hand in
    /// local mode is its own deployment).
    pub fn deployment(&self) -> &str {
        self.metadata.labels.get(DEPLOYMENT_LABEL).unwrap_or(&self.metadata.name)
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExternalWorkloadSpec {
    #[serde(default, rename = "meshTLS")]
    pub mesh_tls: Option<MeshTls>,
    #[serde(default)]
    pub ports: Vec<WorkloadPort>,
    #[serde(default, rename = "workloadIPs")]
    pub workload_ips: Vec<WorkloadIp>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MeshTls {
    pub identity: String,
    #[serde(default)]
    pub server_name: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct WorkloadPort {
    #[serde(default)]
    pub name: Option<String>,
    pub port: u16,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct WorkloadIp {
    pub ip: IpAddr,
}

#[derive(Clone, Debug, Default, Deserialize, serde::Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<LabelExpression>,
}

#[derive(Clone, Debug, Deserialize, serde::Serialize, PartialEq)]
pub struct LabelExpression {
    pub key: String,
    pub operator: SelectorOp,
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Clone, Copy, Debug, Deserialize, serde::Serialize, PartialEq, Eq)]
pub enum SelectorOp {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

impl LabelSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
            && self.match_expressions.iter().all(|e| {
                let value = labels.get(&e.key);
                match e.operator {
                    SelectorOp::In => value.is_some_and(|v| e.values.contains(v)),
                    SelectorOp::NotIn => value.is_none_or(|v| !e.values.contains(v)),
                    SelectorOp::Exists => value.is_some(),
                    SelectorOp::DoesNotExist => value.is_none(),
                }
            })
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Server {
    pub metadata: ObjectMeta,
    pub spec: ServerSpec,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServerSpec {
    #[serde(default)]
    pub pod_selector: Option<LabelSelector>,
    #[serde(default)]
    pub external_workload_selector: Option<LabelSelector>,
    pub port: PortRef,
    /// unknown (detect), HTTP/1, HTTP/2, gRPC, opaque, TLS.
    #[serde(default)]
    pub proxy_protocol: Option<String>,
    /// The default policy for traffic no authorization matches (Linkerd: deny).
    #[serde(default)]
    pub access_policy: Option<String>,
}

/// A reference to another resource: `targetRef`, `parentRefs`, `requiredAuthenticationRefs`,
/// `identityRefs`, `clientRefs`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct Ref {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
}

impl Ref {
    pub fn kind_is(&self, kind: &str) -> bool {
        self.kind.as_deref().is_some_and(|k| k.eq_ignore_ascii_case(kind))
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct AuthorizationPolicy {
    pub metadata: ObjectMeta,
    pub spec: AuthorizationPolicySpec,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    pub target_ref: Ref,
    #[serde(default)]
    pub required_authentication_refs: Vec<Ref>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct MeshTlsAuthentication {
    pub metadata: ObjectMeta,
    pub spec: MeshTlsAuthenticationSpec,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MeshTlsAuthenticationSpec {
    /// Exact identities, `*` for any, or `*.suffix`.
    #[serde(default)]
    pub identities: Vec<String>,
    #[serde(default)]
    pub identity_refs: Vec<Ref>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct NetworkAuthentication {
    pub metadata: ObjectMeta,
    pub spec: NetworkAuthenticationSpec,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct NetworkAuthenticationSpec {
    pub networks: Vec<Network>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Network {
    pub cidr: ipnet::IpNet,
    #[serde(default)]
    pub except: Vec<ipnet::IpNet>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct RateLimitPolicy {
    pub metadata: ObjectMeta,
    pub spec: RateLimitSpec,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitSpec {
    pub target_ref: Ref,
    #[serde(default)]
    pub total: Option<Limit>,
    #[serde(default)]
    pub identity: Option<Limit>,
    #[serde(default)]
    pub overrides: Vec<RateLimitOverride>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Limit {
    pub requests_per_second: u32,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitOverride {
    pub requests_per_second: u32,
    pub client_refs: Vec<Ref>,
}

/// `HTTPRoute` (gateway.networking.k8s.io or policy.linkerd.io) and `GRPCRoute`: one shape, the
/// gRPC rules' `method` matches read from `GrpcMethod`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Route {
    pub metadata: ObjectMeta,
    pub spec: RouteSpec,
    /// The retry and timeout annotations, which override the parent Service's.
    #[serde(skip)]
    pub config: ServiceConfig,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<Ref>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<RouteRule>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteRule {
    #[serde(default)]
    pub matches: Vec<RouteMatch>,
    #[serde(default)]
    pub filters: Vec<RouteFilter>,
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    #[serde(default)]
    pub timeouts: Option<RouteTimeouts>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteMatch {
    #[serde(default)]
    pub path: Option<PathMatch>,
    #[serde(default)]
    pub headers: Vec<ValueMatch>,
    #[serde(default)]
    pub query_params: Vec<ValueMatch>,
    /// HTTP: a method name. gRPC: `{service, method}`.
    #[serde(default)]
    pub method: Option<MethodMatch>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum MethodMatch {
    Http(String),
    Grpc(GrpcMethod),
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct GrpcMethod {
    #[serde(default)]
    pub service: Option<String>,
    #[serde(default)]
    pub method: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct PathMatch {
    #[serde(rename = "type", default = "path_prefix")]
    pub kind: String,
    #[serde(default = "slash")]
    pub value: String,
}

fn path_prefix() -> String {
    "PathPrefix".to_string()
}
fn slash() -> String {
    "/".to_string()
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct ValueMatch {
    #[serde(rename = "type", default = "exact")]
    pub kind: String,
    pub name: String,
    pub value: String,
}

fn exact() -> String {
    "Exact".to_string()
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteFilter {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub request_header_modifier: Option<HeaderModifier>,
    #[serde(default)]
    pub response_header_modifier: Option<HeaderModifier>,
    #[serde(default)]
    pub request_redirect: Option<Redirect>,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct HeaderModifier {
    #[serde(default)]
    pub set: Vec<Header>,
    #[serde(default)]
    pub add: Vec<Header>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Header {
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Redirect {
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub path: Option<RedirectPath>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub status_code: Option<u16>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RedirectPath {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub replace_full_path: Option<String>,
    #[serde(default)]
    pub replace_prefix_match: Option<String>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackendRef {
    /// Empty or `core` for a Service; `policy.linkerd.io` for an EgressNetwork.
    #[serde(default)]
    pub group: Option<String>,
    /// `Service` (the default) or, in a route of an EgressNetwork, that `EgressNetwork`.
    #[serde(default)]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default = "one")]
    pub weight: u32,
    #[serde(default)]
    pub filters: Vec<RouteFilter>,
}

fn one() -> u32 {
    1
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RouteTimeouts {
    #[serde(default)]
    pub request: Option<String>,
    #[serde(default)]
    pub backend_request: Option<String>,
}

/// `Link` (multicluster.linkerd.io; v1alpha3 stored, v1alpha1 and v1alpha2 served): another
/// cluster whose exported Services this control plane mirrors (LINKERD-WIRE.md §12). In local
/// mode the remote is a knit-control named by the `knit.dev/remote-control-plane` (address) and
/// `knit.dev/remote-control-plane-identity` annotations, in place of a kubeconfig Secret.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Link {
    pub metadata: ObjectMeta,
    pub spec: LinkSpec,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LinkSpec {
    pub target_cluster_name: String,
    #[serde(default = "default_cluster_domain")]
    pub target_cluster_domain: String,
    #[serde(default)]
    pub target_cluster_linkerd_namespace: Option<String>,
    #[serde(default)]
    pub cluster_credentials_secret: Option<String>,
    /// Comma-separated addresses (IPs here; Linkerd resolves names too).
    #[serde(default)]
    pub gateway_address: String,
    #[serde(default)]
    pub gateway_port: Option<IntOrString>,
    #[serde(default)]
    pub gateway_identity: String,
    #[serde(default)]
    pub probe_spec: Option<ProbeSpec>,
    /// Unset or empty: matches nothing (Linkerd's `isExported`).
    #[serde(default)]
    pub selector: Option<LabelSelector>,
    #[serde(default)]
    pub remote_discovery_selector: Option<LabelSelector>,
    #[serde(default)]
    pub federated_service_selector: Option<LabelSelector>,
    #[serde(default)]
    pub excluded_annotations: Vec<String>,
    #[serde(default)]
    pub excluded_labels: Vec<String>,
}

fn default_cluster_domain() -> String {
    "cluster.local".into()
}

/// A number that Linkerd's CRDs write as a string (`gatewayPort: "4143"`) or a number.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum IntOrString {
    Int(i64),
    String(String),
}

impl IntOrString {
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            IntOrString::Int(n) => u64::try_from(*n).ok(),
            IntOrString::String(s) => s.trim().parse().ok(),
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProbeSpec {
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub port: Option<IntOrString>,
    /// A duration (`3s`); Linkerd's older Links write seconds as a number.
    #[serde(default)]
    pub period: Option<IntOrString>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub failure_threshold: Option<IntOrString>,
}

/// `EgressNetwork` (policy.linkerd.io v1alpha1): traffic to networks outside the cluster, allowed
/// or denied by default, with routes (`parentRefs` of kind EgressNetwork) for the exceptions
/// (LINKERD-WIRE.md §13).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct EgressNetwork {
    pub metadata: ObjectMeta,
    pub spec: EgressNetworkSpec,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EgressNetworkSpec {
    /// `None`: everything outside the cluster networks.
    #[serde(default)]
    pub networks: Option<Vec<Network>>,
    pub traffic_policy: TrafficPolicy,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum TrafficPolicy {
    Allow,
    Deny,
}

impl EgressNetwork {
    /// The networks it covers: its own, or everything outside `cluster` when it names none.
    pub fn networks(&self, cluster: &[ipnet::IpNet]) -> Vec<Network> {
        if let Some(n) = &self.spec.networks {
            return n.clone();
        }
        let except = |v4: bool| cluster.iter().filter(|c| matches!(c, ipnet::IpNet::V4(_)) == v4).copied().collect();
        let all = |s: &str| s.parse::<ipnet::IpNet>().expect("a literal network");
        vec![Network { cidr: all("0.0.0.0/0"), except: except(true) }, Network { cidr: all("::/0"), except: except(false) }]
    }

    /// Why the resource cannot be used with these cluster networks: an egress network never
    /// covers the cluster's own (Linkerd refuses it with `Accepted=False`).
    pub fn overlap(&self, cluster: &[ipnet::IpNet]) -> Option<String> {
        let nets = self.spec.networks.as_ref()?;
        for (i, n) in nets.iter().enumerate() {
            for c in cluster {
                let overlaps = n.cidr.contains(&c.network()) || c.contains(&n.cidr.network());
                let excepted = n.except.iter().any(|e| e.contains(&c.network()) && e.prefix_len() <= c.prefix_len());
                if overlaps && !excepted {
                    return Some(format!("spec.networks[{i}]: {} overlaps the cluster network {c}; an EgressNetwork covers only addresses outside the cluster (list the cluster network under except, or narrow the CIDR)", n.cidr));
                }
            }
        }
        None
    }
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct TrafficSplit {
    pub metadata: ObjectMeta,
    pub spec: TrafficSplitSpec,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct TrafficSplitSpec {
    /// The apex Service that clients address.
    pub service: String,
    pub backends: Vec<SplitBackend>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct SplitBackend {
    pub service: String,
    pub weight: u32,
}

/// What a resource is; with the namespace and name, it identifies the resource in the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Service,
    ExternalWorkload,
    Server,
    AuthorizationPolicy,
    MeshTlsAuthentication,
    NetworkAuthentication,
    RateLimitPolicy,
    /// gateway.networking.k8s.io
    HttpRoute,
    /// policy.linkerd.io
    PolicyHttpRoute,
    GrpcRoute,
    /// gateway.networking.k8s.io v1alpha2: opaque TCP routes (one rule, weighted backends).
    TcpRoute,
    /// gateway.networking.k8s.io v1alpha2: TLS routes matched by SNI (`hostnames`).
    TlsRoute,
    TrafficSplit,
    EgressNetwork,
    /// multicluster.linkerd.io
    Link,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Service => "Service",
            Kind::ExternalWorkload => "ExternalWorkload",
            Kind::Server => "Server",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::MeshTlsAuthentication => "MeshTLSAuthentication",
            Kind::NetworkAuthentication => "NetworkAuthentication",
            Kind::RateLimitPolicy => "HTTPLocalRateLimitPolicy",
            Kind::HttpRoute | Kind::PolicyHttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
            Kind::TcpRoute => "TCPRoute",
            Kind::TlsRoute => "TLSRoute",
            Kind::TrafficSplit => "TrafficSplit",
            Kind::EgressNetwork => "EgressNetwork",
            Kind::Link => "Link",
        }
    }

    /// The API group, as the wire's metadata carries it.
    pub fn group(self) -> &'static str {
        match self {
            Kind::Service => "core",
            Kind::ExternalWorkload => "workload.linkerd.io",
            Kind::HttpRoute | Kind::GrpcRoute | Kind::TcpRoute | Kind::TlsRoute => "gateway.networking.k8s.io",
            Kind::TrafficSplit => "split.smi-spec.io",
            Kind::Link => "multicluster.linkerd.io",
            _ => "policy.linkerd.io",
        }
    }

    /// From a manifest's `apiVersion` and `kind`; `None` for kinds Knit does not serve.
    pub fn from_manifest(api_version: &str, kind: &str) -> Option<Kind> {
        let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
        Some(match (group, kind) {
            ("", "Service") => Kind::Service,
            ("workload.linkerd.io", "ExternalWorkload") => Kind::ExternalWorkload,
            ("policy.linkerd.io", "Server") => Kind::Server,
            ("policy.linkerd.io", "AuthorizationPolicy") => Kind::AuthorizationPolicy,
            ("policy.linkerd.io", "MeshTLSAuthentication") => Kind::MeshTlsAuthentication,
            ("policy.linkerd.io", "NetworkAuthentication") => Kind::NetworkAuthentication,
            ("policy.linkerd.io", "HTTPLocalRateLimitPolicy") => Kind::RateLimitPolicy,
            ("gateway.networking.k8s.io", "HTTPRoute") => Kind::HttpRoute,
            ("policy.linkerd.io", "HTTPRoute") => Kind::PolicyHttpRoute,
            ("gateway.networking.k8s.io", "GRPCRoute") => Kind::GrpcRoute,
            ("gateway.networking.k8s.io", "TCPRoute") => Kind::TcpRoute,
            ("gateway.networking.k8s.io", "TLSRoute") => Kind::TlsRoute,
            ("split.smi-spec.io", "TrafficSplit") => Kind::TrafficSplit,
            ("policy.linkerd.io", "EgressNetwork") => Kind::EgressNetwork,
            ("multicluster.linkerd.io", "Link") => Kind::Link,
            _ => return None,
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Resource {
    Service(Arc<Service>),
    ExternalWorkload(Arc<ExternalWorkload>),
    Server(Arc<Server>),
    AuthorizationPolicy(Arc<AuthorizationPolicy>),
    MeshTlsAuthentication(Arc<MeshTlsAuthentication>),
    NetworkAuthentication(Arc<NetworkAuthentication>),
    RateLimitPolicy(Arc<RateLimitPolicy>),
    Route(Kind, Arc<Route>),
    TrafficSplit(Arc<TrafficSplit>),
    EgressNetwork(Arc<EgressNetwork>),
    Link(Arc<Link>),
}

impl Resource {
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Service(_) => Kind::Service,
            Resource::ExternalWorkload(_) => Kind::ExternalWorkload,
            Resource::Server(_) => Kind::Server,
            Resource::AuthorizationPolicy(_) => Kind::AuthorizationPolicy,
            Resource::MeshTlsAuthentication(_) => Kind::MeshTlsAuthentication,
            Resource::NetworkAuthentication(_) => Kind::NetworkAuthentication,
            Resource::RateLimitPolicy(_) => Kind::RateLimitPolicy,
            Resource::Route(kind, _) => *kind,
            Resource::TrafficSplit(_) => Kind::TrafficSplit,
            Resource::EgressNetwork(_) => Kind::EgressNetwork,
            Resource::Link(_) => Kind::Link,
        }
    }

    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Resource::Service(r) => &r.metadata,
            Resource::ExternalWorkload(r) => &r.metadata,
            Resource::Server(r) => &r.metadata,
            Resource::AuthorizationPolicy(r) => &r.metadata,
            Resource::MeshTlsAuthentication(r) => &r.metadata,
            Resource::NetworkAuthentication(r) => &r.metadata,
            Resource::RateLimitPolicy(r) => &r.metadata,
            Resource::Route(_, r) => &r.metadata,
            Resource::TrafficSplit(r) => &r.metadata,
            Resource::EgressNetwork(r) => &r.metadata,
            Resource::Link(r) => &r.metadata,
        }
    }

    pub fn key(&self) -> Key {
        let m = self.meta();
        Key { kind: self.kind(), namespace: m.namespace.clone(), name: m.name.clone() }
    }
}

/// A resource's identity in the index.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}/{}", self.kind.name(), self.namespace, self.name)
    }
}

/// What one manifest file holds.
#[derive(Debug, Default)]
pub struct Parsed {
    pub resources: Vec<Resource>,
    /// Its invalid documents: `FILE: document N (KIND NS/NAME): FIELD: REASON`.
    pub errors: Vec<String>,
    /// Fields Knit does not know in its valid documents, which have no effect (as kubectl's
    /// field validation warns): `FILE: document N (KIND NS/NAME): unknown field "PATH"`.
    pub warnings: Vec<String>,
}

/// Parses every document of one manifest file. `file` names it in error messages.
pub fn parse(file: &str, text: &str) -> (Vec<Resource>, Vec<String>) {
    let parsed = parse_file(file, text, false);
    (parsed.resources, parsed.errors)
}

/// Parses every document of one manifest file, with its unknown fields; `strict` makes a
/// document with an unknown field invalid.
pub fn parse_file(file: &str, text: &str, strict: bool) -> Parsed {
    parse_file_cached(file, text, strict, &mut DocCache::default())
}

/// What one document gave, without its place in the file (added when it is reported).
#[derive(Clone, Debug)]
enum Doc {
    /// An empty document (counted, as the YAML stream numbers it).
    Empty,
    /// A kind Knit does not serve.
    Skipped,
    /// A resource, and the fields of it Knit does not know (` (KIND NS/NAME): unknown field ...`).
    Resource(Resource, Vec<String>),
    Invalid(String),
    /// YAML that does not parse: the rest of its document text is not read.
    Syntax(String),
}

/// The documents of a file as last parsed, by the SHA-256 of their text: a rewrite of a file
/// parses again only the documents whose text changed (a churning endpoint rewrites one document
/// of thousands). The digest, not the text, is kept: no copy of the file stays in memory.
#[derive(Default)]
pub struct DocCache {
    docs: HashMap<[u8; 32], Vec<Doc>>,
}

fn digest(text: &str) -> [u8; 32] {
    let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, text.as_bytes());
    d.as_ref().try_into().expect("SHA-256 is 32 bytes")
}

/// As [`parse_file`], reusing the documents `cache` parsed from the file before (and leaving in
/// it those of `text`). The file is split at its `---` lines (a document marker at the start of
/// a line always ends a document, even inside a block scalar), and each part parsed alone: a
/// syntax error loses only its own document.
pub fn parse_file_cached(file: &str, text: &str, strict: bool, cache: &mut DocCache) -> Parsed {
    let mut out = Parsed::default();
    let mut next: HashMap<[u8; 32], Vec<Doc>> = HashMap::new();
    let mut n = 0;
    for part in documents(text) {
        let key = digest(part);
        let docs = match cache.docs.remove(&key).or_else(|| next.get(&key).cloned()) {
            Some(docs) => docs,
            None => parse_part(part),
        };
        for doc in &docs {
            n += 1;
            match doc {
                Doc::Empty | Doc::Skipped => {}
                Doc::Resource(_, unknown) if strict && !unknown.is_empty() => {
                    out.errors.push(format!("{file}: document {n}{}: unknown field(s), refused by --strict-fields", unknown.join("; ")));
                }
                Doc::Resource(r, unknown) => {
                    out.warnings.extend(unknown.iter().map(|u| format!("{file}: document {n}{u}")));
                    out.resources.push(r.clone());
                }
                Doc::Invalid(e) | Doc::Syntax(e) => out.errors.push(format!("{file}: document {n}{e}")),
            }
        }
        next.insert(key, docs);
    }
    cache.docs = next;
    out
}

/// The parts of a YAML stream between `---` lines (each line starting one, kept with it).
fn documents(text: &str) -> impl Iterator<Item = &str> {
    let mut starts: Vec<usize> = vec![0];
    let mut at = 0;
    for line in text.split_inclusive('\n') {
        let marker = line.strip_prefix("---").is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\n', '\r']));
        if marker && at > 0 {
            starts.push(at);
        }
        at += line.len();
    }
    starts.push(text.len());
    let parts: Vec<&str> = starts.windows(2).map(|w| &text[w[0]..w[1]]).collect();
    parts.into_iter()
}

/// The documents of one part (one, unless the part holds `...` markers or none at all).
fn parse_part(part: &str) -> Vec<Doc> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(part) {
        let budget = std::cell::Cell::new(bounded::MAX_NODES);
        let value = match serde::de::DeserializeSeed::deserialize(bounded::Bounded { budget: &budget }, doc) {
            Ok(v) => v,
            Err(e) => {
                // A syntax error ends the part: the YAML stream cannot be resynchronised.
                docs.push(Doc::Syntax(format!(": {e}")));
                break;
            }
        };
        if value.is_null() {
            docs.push(Doc::Empty);
            continue;
        }
        let mut unknown = Vec::new();
        docs.push(match parse_object(value, &mut unknown) {
            Ok(None) => Doc::Skipped,
            Ok(Some(r)) => Doc::Resource(r, unknown),
            Err(e) => Doc::Invalid(e),
        });
    }
    docs
}

/// Parses one object in its Kubernetes API shape (a manifest document, or an object from the
/// Kubernetes API): `Ok(None)` for a kind Knit does not serve (Deployments and the like live in
/// the same files), `Err` with ` (KIND NS/NAME): FIELD: REASON` for one it cannot use. Fields it
/// does not know are logged (an API server has already checked them against its schema).
pub fn parse_document(value: serde_json::Value) -> Result<Option<Resource>, String> {
    let mut unknown = Vec::new();
    let parsed = parse_object(value, &mut unknown);
    for u in unknown {
        tracing::warn!("ignored{u}");
    }
    parsed
}

/// As `parse_document`, with each field of the spec that Knit does not read added to
/// `unknown` as ` (KIND NS/NAME): unknown field "spec.rules[0].retries"`. Services are core
/// Kubernetes objects of which Knit reads a part, and metadata and status are the API server's:
/// only the specs of the kinds Knit owns or implements are held to every field.
pub fn parse_object(value: serde_json::Value, unknown: &mut Vec<String>) -> Result<Option<Resource>, String> {
    let text = |field: &str| value.get(field).and_then(|v| v.as_str()).map(str::to_string);
    let (Some(api_version), Some(kind_name)) = (text("apiVersion"), text("kind")) else {
        return Err(": apiVersion and kind are required".to_string());
    };
    let meta = value.get("metadata");
    let name = meta.and_then(|m| m.get("name")).and_then(|v| v.as_str()).unwrap_or("?");
    let ns = meta.and_then(|m| m.get("namespace")).and_then(|v| v.as_str()).unwrap_or("default");
    let label = format!(" ({kind_name} {ns}/{name})");
    let Some(kind) = Kind::from_manifest(&api_version, &kind_name) else {
        tracing::debug!("skipping {api_version} {kind_name}: not a kind Knit serves");
        return Ok(None);
    };
    fn de<T: serde::de::DeserializeOwned>(v: serde_json::Value, ignored: &mut Vec<String>) -> Result<T, String> {
        let mut note = |path: serde_ignored::Path<'_>| ignored.push(field_path(&path));
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(v, &mut note)).map_err(|e| format!("{}: {}", e.path(), e.inner()))
    }
    let mut ignored = Vec::new();
    let i = &mut ignored;
    let resource = match kind {
        Kind::Service => de(value, i).map(|r| Resource::Service(Arc::new(r))),
        Kind::ExternalWorkload => de(value, i).map(|r| Resource::ExternalWorkload(Arc::new(r))),
        Kind::Server => de(value, i).map(|r| Resource::Server(Arc::new(r))),
        Kind::AuthorizationPolicy => de(value, i).map(|r| Resource::AuthorizationPolicy(Arc::new(r))),
        Kind::MeshTlsAuthentication => de(value, i).map(|r| Resource::MeshTlsAuthentication(Arc::new(r))),
        Kind::NetworkAuthentication => de(value, i).map(|r| Resource::NetworkAuthentication(Arc::new(r))),
        Kind::RateLimitPolicy => de(value, i).map(|r| Resource::RateLimitPolicy(Arc::new(r))),
        Kind::HttpRoute | Kind::PolicyHttpRoute | Kind::GrpcRoute | Kind::TcpRoute | Kind::TlsRoute => de(value, i).map(|r| Resource::Route(kind, Arc::new(r))),
        Kind::TrafficSplit => de(value, i).map(|r| Resource::TrafficSplit(Arc::new(r))),
        Kind::EgressNetwork => de(value, i).map(|r| Resource::EgressNetwork(Arc::new(r))),
        Kind::Link => de(value, i).map(|r| Resource::Link(Arc::new(r))),
    };
    if kind != Kind::Service {
        unknown.extend(ignored.into_iter().filter(|p| p.starts_with("spec.") || p.starts_with("spec[")).map(|p| format!("{label}: unknown field {p:?}")));
    }
    let resource = resource.map_err(|e| format!("{label}: {e}"))?;
    validate::validate(resource).map(Some).map_err(|(field, reason)| format!("{label}: {field}: {reason}"))
}

/// A field's path as kubectl writes it: `spec.rules[0].backendRefs[1].retries`.
fn field_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", field_path(parent)),
        Path::Map { parent, key } => match field_path(parent) {
            p if p.is_empty() => key.clone(),
            p => format!("{p}.{key}"),
        },
        Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => field_path(parent),
    }
}
