//! Multicluster, the control plane's half (LINKERD-WIRE.md §12): linked clusters in local mode.
//!
//! - [`exports`]: the API a linked control plane reads. `knit-control --multicluster-addr` serves,
//!   over mTLS (a client certificate under the shared trust anchors, and a control plane's
//!   identity), the Services a selector picks, as a stream of snapshots.
//! - [`mirror`]: the service mirror. For each `Link` whose remote is another knit-control, it
//!   follows that stream and writes, as a source of the index, a mirror Service `<svc>-<cluster>`
//!   for each exported Service, whose endpoint is the remote gateway with its identity (so
//!   Destination answers with `authority_override`, `index/endpoints.rs`); and it probes the
//!   gateway, taking the endpoints away while it is down.
//!
//! Where a Link's exports come from ([`Remote`]):
//! - in Kubernetes mode, as Linkerd's service mirror does it, from the remote cluster's API
//!   server, with the kubeconfig of the Link's `clusterCredentialsSecret` ([`remote`]): its
//!   Services, Pods and EndpointSlices go through the same translation as this cluster's own, into
//!   an index of their own, and the exports are computed from it as the remote's API would;
//! - a local-mode mesh has no API server, so there the remote is a knit-control, named by two
//!   annotations of the Link: `knit.dev/remote-control-plane` (`HOST:PORT` of its multicluster
//!   port) and `knit.dev/remote-control-plane-identity` (the identity it proves).

pub mod exports;
pub mod federation;
pub mod mirror;
pub mod remote;

use crate::resources::{LabelSelector, Link};
use std::{net::IpAddr, net::SocketAddr, time::Duration};

pub const REMOTE_ANNOTATION: &str = "knit.dev/remote-control-plane";
pub const REMOTE_IDENTITY_ANNOTATION: &str = "knit.dev/remote-control-plane-identity";
/// Local mode: the range the mirror Services' ClusterIPs come from (a cluster's API server
/// allocates them; here the Link says where), so that applications can call a mirror by address.
pub const CLUSTER_IPS_ANNOTATION: &str = "knit.dev/mirror-cluster-ips";

/// A Link, checked: what the mirror needs of it.
#[derive(Clone, Debug, PartialEq)]
pub struct LinkSettings {
    /// `namespace/name` of the Link.
    pub key: String,
    pub cluster: String,
    pub cluster_domain: String,
    /// The gateway's addresses given as IPs ...
    pub gateways: Vec<IpAddr>,
    /// ... and as DNS names (resolved before each probe, as Linkerd resolves them).
    pub gateway_names: Vec<String>,
    pub gateway_port: u16,
    pub gateway_identity: String,
    pub probe: Probe,
    /// `None` (unset or empty): nothing is mirrored.
    pub selector: Option<LabelSelector>,
    /// Flat mode: Services mirrored with the remote's endpoints (no gateway in the way).
    pub remote_discovery_selector: Option<LabelSelector>,
    /// Federated members: their endpoints join `<name>-federated`.
    pub federated_selector: Option<LabelSelector>,
    pub excluded_labels: Vec<String>,
    pub excluded_annotations: Vec<String>,
    /// Where the exports come from; `None`: nowhere (the Link is not mirrored).
    pub remote: Option<Remote>,
    /// Where mirrors' ClusterIPs come from; without it, mirrors are reached by name only.
    pub cluster_ips: Option<ipnet::IpNet>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Probe {
    pub path: String,
    pub port: u16,
    pub period: Duration,
    pub timeout: Duration,
    pub failure_threshold: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Remote {
    /// Local mode: another knit-control's exports API, and the identity it must prove.
    ControlPlane { addr: SocketAddr, identity: String },
    /// Kubernetes mode: the linked cluster's API server, through the kubeconfig in this Secret of
    /// the Link's namespace (`clusterCredentialsSecret`).
    Kubernetes { secret: String },
}

impl std::fmt::Display for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Remote::ControlPlane { addr, .. } => write!(f, "{addr}"),
            Remote::Kubernetes { secret } => write!(f, "the API server of Secret {secret}"),
        }
    }
}

type Invalid = (String, String);

fn invalid(field: &str, reason: impl Into<String>) -> Invalid {
    (field.to_string(), reason.into())
}

impl LinkSettings {
    /// Checks a Link the way `linkerd multicluster link` writes one; every field that would make
    /// the mirror fail later is refused here, with its name.
    pub fn of(link: &Link) -> Result<Self, Invalid> {
        let s = &link.spec;
        let label = |v: &str| !v.is_empty() && v.len() <= 63 && v.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
        if !label(&s.target_cluster_name) {
            return Err(invalid("spec.targetClusterName", "expected a DNS label (lower-case letters, digits and '-'), as mirror names end with it"));
        }
        let (mut gateways, mut gateway_names) = (Vec::new(), Vec::new());
        for a in s.gateway_address.split(',').map(str::trim).filter(|a| !a.is_empty()) {
            match a.parse() {
                Ok(ip) => gateways.push(ip),
                // A cloud load balancer's name: resolved by the mirror before each probe.
                Err(_) if dns_name(a) => gateway_names.push(a.trim_end_matches('.').to_ascii_lowercase()),
                Err(_) => return Err(invalid("spec.gatewayAddress", format!("{a:?} is neither an IP address nor a DNS name"))),
            }
        }
        if gateways.is_empty() && gateway_names.is_empty() {
            return Err(invalid("spec.gatewayAddress", "expected the gateway's addresses, comma-separated"));
        }
        let port = |field: &str, v: Option<&crate::resources::IntOrString>, default: u16| -> Result<u16, Invalid> {
            match v {
                None => Ok(default),
                Some(v) => v.as_u64().and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0).ok_or_else(|| invalid(field, "expected a port from 1 to 65535")),
            }
        };
        let gateway_port = port("spec.gatewayPort", s.gateway_port.as_ref(), 4143)?;
        if s.gateway_identity.trim().is_empty() {
            return Err(invalid("spec.gatewayIdentity", "expected the identity the gateway proves"));
        }
        let p = s.probe_spec.clone().unwrap_or_default();
        let period = match &p.period {
            None => Duration::from_secs(3),
            Some(crate::resources::IntOrString::Int(n)) => Duration::from_secs(u64::try_from(*n).unwrap_or(0)),
            Some(crate::resources::IntOrString::String(v)) => knit_core::parse::duration(v)
                .or_else(|_| v.parse::<u64>().map(Duration::from_secs))
                .map_err(|_| invalid("spec.probeSpec.period", "expected a duration like 3s"))?,
        };
        if period.is_zero() {
            return Err(invalid("spec.probeSpec.period", "must be more than zero"));
        }
        let timeout = match &p.timeout {
            None => Duration::from_secs(30),
            Some(v) => knit_core::parse::duration(v).map_err(|_| invalid("spec.probeSpec.timeout", "expected a duration like 30s"))?,
        };
        let failure_threshold = match &p.failure_threshold {
            None => 3,
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n > 0)
                .ok_or_else(|| invalid("spec.probeSpec.failureThreshold", "expected a count of 1 or more"))?,
        };
        let path = p.path.clone().unwrap_or_else(|| "/ready".into());
        if !path.starts_with('/') {
            return Err(invalid("spec.probeSpec.path", "expected a path starting with /"));
        }
        let probe = Probe {
            path,
            port: port("spec.probeSpec.port", p.port.as_ref(), 4191)?,
            period,
            timeout: timeout.min(period.max(Duration::from_secs(1))),
            failure_threshold,
        };
        let annotations = &link.metadata.annotations;
        let secret = s.cluster_credentials_secret.as_deref().map(str::trim).filter(|n| !n.is_empty());
        let remote = match (annotations.get(REMOTE_ANNOTATION), annotations.get(REMOTE_IDENTITY_ANNOTATION)) {
            (None, None) => secret.map(|secret| Remote::Kubernetes { secret: secret.to_string() }),
            (Some(addr), Some(identity)) if !identity.trim().is_empty() => Some(Remote::ControlPlane {
                addr: addr.trim().parse().map_err(|_| invalid(&format!("metadata.annotations.{REMOTE_ANNOTATION}"), format!("{addr:?} is not IP:PORT")))?,
                identity: identity.trim().to_string(),
            }),
            _ => return Err(invalid("metadata.annotations", format!("{REMOTE_ANNOTATION} and {REMOTE_IDENTITY_ANNOTATION} go together"))),
        };
        let cluster_ips = match annotations.get(CLUSTER_IPS_ANNOTATION) {
            None => None,
            Some(v) => Some(
                v.trim()
                    .parse::<ipnet::IpNet>()
                    .map_err(|_| invalid(&format!("metadata.annotations.{CLUSTER_IPS_ANNOTATION}"), format!("{v:?} is not a CIDR")))?,
            ),
        };
        let non_empty = |sel: &Option<LabelSelector>| sel.clone().filter(|sel| !sel.match_labels.is_empty() || !sel.match_expressions.is_empty());
        let (selector, remote_discovery_selector, federated_selector) =
            (non_empty(&s.selector), non_empty(&s.remote_discovery_selector), non_empty(&s.federated_service_selector));
        Ok(Self {
            key: format!("{}/{}", link.metadata.namespace, link.metadata.name),
            cluster: s.target_cluster_name.clone(),
            cluster_domain: s.target_cluster_domain.trim_end_matches('.').to_string(),
            gateways,
            gateway_names,
            gateway_port,
            gateway_identity: s.gateway_identity.trim().to_string(),
            probe,
            selector,
            remote_discovery_selector,
            federated_selector,
            excluded_labels: s.excluded_labels.clone(),
            excluded_annotations: s.excluded_annotations.clone(),
            remote,
            cluster_ips,
        })
    }
}

/// A hostname as DNS has it: dot-separated labels of letters, digits and '-' (not at either end),
/// 253 characters at most, not all digits (that would be a malformed IP).
fn dns_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    let label =
        |l: &str| !l.is_empty() && l.len() <= 63 && !l.starts_with('-') && !l.ends_with('-') && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    name.len() <= 253 && name.split('.').all(label) && !name.bytes().all(|b| b.is_ascii_digit() || b == b'.')
}

/// A ClusterIP for each of `names` (`namespace/name`) in `range`: where its hash lands, or the
/// next free address (stable while the set of names is; collisions move the later name).
pub fn cluster_ips<'a>(range: &ipnet::IpNet, names: impl IntoIterator<Item = &'a str>) -> std::collections::BTreeMap<&'a str, IpAddr> {
    use std::hash::{Hash, Hasher};
    let hosts: Vec<IpAddr> = range.hosts().take(1 << 16).collect();
    let mut taken = std::collections::BTreeSet::new();
    let mut out = std::collections::BTreeMap::new();
    let mut names: Vec<&str> = names.into_iter().collect();
    names.sort_unstable();
    for name in names {
        if hosts.is_empty() || taken.len() == hosts.len() {
            break;
        }
        // FNV-1a: the same on every build and machine (std's hasher is not promised to be).
        let mut h = Fnv(0xcbf2_9ce4_8422_2325);
        name.hash(&mut h);
        let mut i = (h.finish() % hosts.len() as u64) as usize;
        while taken.contains(&i) {
            i = (i + 1) % hosts.len();
        }
        taken.insert(i);
        out.insert(name, hosts[i]);
    }
    out
}

struct Fnv(u64);

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
}

/// Waits for the index to change, then a little longer, so that a burst of changes (a manifest
/// rewrite, endpoint churn) costs one recomputation of a whole-index view, not one per change.
/// `false` once the index is gone.
pub(crate) async fn next_change(changes: &mut tokio::sync::watch::Receiver<u64>) -> bool {
    if changes.changed().await.is_err() {
        return false;
    }
    tokio::time::sleep(COALESCE).await;
    changes.borrow_and_update();
    true
}

/// How long a burst of index changes is gathered before a whole-index view is recomputed.
const COALESCE: Duration = Duration::from_millis(50);

/// Whether `key` is excluded by a list of names and `prefix*` patterns.
fn excluded(patterns: &[String], key: &str) -> bool {
    patterns.iter().any(|p| match p.strip_suffix('*') {
        Some(prefix) => key.starts_with(prefix),
        None => p == key,
    })
}

#[cfg(test)]
mod tests {
    use super::{exports::Snapshot, *};
    use crate::resources::{parse, Resource};

    const LINK: &str = "apiVersion: multicluster.linkerd.io/v1alpha3
kind: Link
metadata:
  name: east
  namespace: linkerd-multicluster
  annotations: {knit.dev/remote-control-plane: '10.1.0.2:8095', knit.dev/remote-control-plane-identity: knit-control.knit.serviceaccount.identity.knit.cluster.local, knit.dev/mirror-cluster-ips: 10.96.200.0/24}
spec:
  targetClusterName: east
  targetClusterDomain: east.local
  gatewayAddress: 10.1.0.5, 10.1.0.6
  gatewayPort: '4143'
  gatewayIdentity: linkerd-gateway.linkerd-multicluster.serviceaccount.identity.linkerd.east.local
  probeSpec: {path: /ready, port: '4191', period: 3s, timeout: 30s, failureThreshold: '3'}
  selector: {matchLabels: {mirror.linkerd.io/exported: 'true'}}
  excludedLabels: [team/*]
";

    fn link(yaml: &str) -> Result<LinkSettings, String> {
        let (resources, errors) = parse("link.yaml", yaml);
        match resources.first() {
            Some(Resource::Link(l)) => Ok(LinkSettings::of(l).expect("parse validated it")),
            _ => Err(errors.join("; ")),
        }
    }

    #[test]
    fn a_link_as_linkerd_writes_it() {
        let s = link(LINK).unwrap();
        assert_eq!((s.key.as_str(), s.cluster.as_str(), s.cluster_domain.as_str()), ("linkerd-multicluster/east", "east", "east.local"));
        assert_eq!(s.gateways, ["10.1.0.5".parse::<IpAddr>().unwrap(), "10.1.0.6".parse().unwrap()]);
        // A load balancer's name is kept, to be resolved.
        let named = link(&LINK.replace("gatewayAddress: 10.1.0.5, 10.1.0.6", "gatewayAddress: 10.1.0.5, A1b2.elb.us-east-1.amazonaws.com.")).unwrap();
        assert_eq!((named.gateways.len(), named.gateway_names.as_slice()), (1, &["a1b2.elb.us-east-1.amazonaws.com".to_string()][..]));
        assert_eq!(s.gateway_port, 4143);
        assert_eq!(s.probe, Probe { path: "/ready".into(), port: 4191, period: Duration::from_secs(3), timeout: Duration::from_secs(3), failure_threshold: 3 });
        assert_eq!(s.remote.as_ref().map(ToString::to_string).as_deref(), Some("10.1.0.2:8095"));
        // Without the local-mode annotations, the credentials Secret names the remote.
        let k8s = LINK.replace("  annotations: {knit.dev/remote-control-plane: '10.1.0.2:8095', knit.dev/remote-control-plane-identity: knit-control.knit.serviceaccount.identity.knit.cluster.local, knit.dev/mirror-cluster-ips: 10.96.200.0/24}\n", "");
        assert_eq!(link(&k8s).unwrap().remote, None);
        let k8s = k8s.replace("  targetClusterName: east\n", "  targetClusterName: east\n  clusterCredentialsSecret: cluster-credentials-east\n");
        assert_eq!(link(&k8s).unwrap().remote, Some(Remote::Kubernetes { secret: "cluster-credentials-east".into() }));
        // Older Links write the period as a number of seconds; an empty selector mirrors nothing.
        let old =
            link(&LINK.replace("period: 3s", "period: 5").replace("selector: {matchLabels: {mirror.linkerd.io/exported: 'true'}}", "selector: {}")).unwrap();
        assert_eq!((old.probe.period, old.selector), (Duration::from_secs(5), None));
    }

    #[test]
    fn cluster_ips_are_distinct_and_stable() {
        let range: ipnet::IpNet = "10.96.200.0/30".parse().unwrap();
        let ips = cluster_ips(&range, ["a/x", "b/y", "c/z"]);
        assert_eq!(ips.len(), 2, "a /30 has two hosts: the third name gets none");
        assert_ne!(ips.values().next(), ips.values().nth(1));
        assert_eq!(cluster_ips(&range, ["b/y", "a/x"]), cluster_ips(&range, ["a/x", "b/y"]));
    }

    #[test]
    fn a_bad_link_is_refused_with_its_field() {
        for (from, to, field) in [
            ("targetClusterName: east", "targetClusterName: East_1", "spec.targetClusterName"),
            ("gatewayAddress: 10.1.0.5, 10.1.0.6", "gatewayAddress: gw_1.example.com", "spec.gatewayAddress"),
            ("gatewayAddress: 10.1.0.5, 10.1.0.6", "gatewayAddress: 10.1.0.300", "spec.gatewayAddress"),
            ("gatewayAddress: 10.1.0.5, 10.1.0.6", "gatewayAddress: ''", "spec.gatewayAddress"),
            ("gatewayPort: '4143'", "gatewayPort: '70000'", "spec.gatewayPort"),
            ("failureThreshold: '3'", "failureThreshold: '0'", "spec.probeSpec.failureThreshold"),
            ("period: 3s", "period: soon", "spec.probeSpec.period"),
            ("'10.1.0.2:8095'", "'knit-control-east'", "knit.dev/remote-control-plane"),
            ("gatewayIdentity: linkerd-gateway", "gatewayIdentity: ''\n  x: linkerd-gateway", "spec.gatewayIdentity"),
            ("10.96.200.0/24", "10.96.200.0/33", "knit.dev/mirror-cluster-ips"),
        ] {
            let e = link(&LINK.replace(from, to)).unwrap_err();
            assert!(e.contains(field), "{to}: {e}");
        }
    }

    #[test]
    fn mirrors_follow_the_exports_and_the_gateway() {
        let s = link(LINK).unwrap();
        let snapshot: Snapshot = serde_json::from_value(serde_json::json!({"services": [{
            "name": "books", "namespace": "shop", "ready": true, "gateway": true,
            "labels": {"app": "books", "team/owner": "x", "mirror.linkerd.io/exported": "true"},
            "annotations": {"config.linkerd.io/opaque-ports": "6379", "service.kubernetes.io/topology-mode": "Auto"},
            "ports": [{"name": "http", "port": 8080}, {"name": "redis", "port": 6379}],
        }]}))
        .unwrap();
        let resources = mirror::mirrors(&s, &snapshot, true, &s.gateways);
        let Some(Resource::Service(svc)) = resources.iter().find(|r| matches!(r, Resource::Service(_))) else { panic!("{resources:?}") };
        assert_eq!((svc.metadata.name.as_str(), svc.metadata.namespace.as_str()), ("books-east", "shop"));
        let labels: Vec<_> = svc.metadata.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(labels, ["app=books", "mirror.linkerd.io/cluster-name=east", "mirror.linkerd.io/mirrored-service=true"]);
        let ip: IpAddr = svc.spec.cluster_ip.as_deref().expect("a ClusterIP from the Link's range").parse().unwrap();
        assert!(s.cluster_ips.unwrap().contains(&ip));
        assert_eq!(
            mirror::mirrors(&s, &snapshot, false, &s.gateways).iter().find_map(|r| match r {
                Resource::Service(s) => s.spec.cluster_ip.clone(),
                _ => None,
            }),
            Some(ip.to_string()),
            "stable"
        );
        assert_eq!(svc.metadata.annotations.get("mirror.linkerd.io/remote-svc-fq-name").map(String::as_str), Some("books.shop.svc.east.local"));
        assert!(!svc.metadata.annotations.contains_key("service.kubernetes.io/topology-mode"));
        assert_eq!(svc.config.opaque_ports.as_ref().map(|p| p.contains(&6379)), Some(true), "annotations are parsed as any Service's");
        let Some(Resource::ExternalWorkload(w)) = resources.iter().find(|r| matches!(r, Resource::ExternalWorkload(_))) else { panic!() };
        assert_eq!(w.spec.workload_ips.len(), 2, "the gateway's addresses");
        assert!(w.spec.ports.iter().all(|p| p.port == 4143));
        // Flat mode: the remote's own endpoints, with their identity and inbound port.
        let flat: Snapshot = serde_json::from_value(serde_json::json!({"services": [{
            "name": "catalog", "namespace": "shop", "ready": true, "remoteDiscovery": true, "labels": {}, "annotations": {},
            "ports": [{"name": "http", "port": 80}],
            "endpoints": [{"ip": "10.1.0.9", "ports": {"80": 8080}, "identity": "catalog.shop.serviceaccount.identity.knit.east.local", "inboundPort": 4143}],
        }]}))
        .unwrap();
        let r = mirror::mirrors(&s, &flat, false, &s.gateways);
        let Some(Resource::Service(svc)) = r.iter().find(|r| matches!(r, Resource::Service(_))) else { panic!() };
        assert_eq!(svc.metadata.labels.get("multicluster.linkerd.io/remote-discovery").map(String::as_str), Some("east"));
        assert!(!svc.metadata.annotations.contains_key("mirror.linkerd.io/remote-svc-fq-name"), "not through the gateway");
        let Some(Resource::ExternalWorkload(w)) = r.iter().find(|r| matches!(r, Resource::ExternalWorkload(_))) else { panic!() };
        assert_eq!(w.spec.workload_ips[0].ip.to_string(), "10.1.0.9");
        assert_eq!((w.spec.ports[0].name.as_deref(), w.spec.ports[0].port), (Some("http"), 8080));
        assert_eq!(
            w.spec.mesh_tls.as_ref().map(|m| m.identity.as_str()),
            Some("catalog.shop.serviceaccount.identity.knit.east.local"),
            "the gateway's liveness does not matter"
        );
        // Down gateway, or no ready endpoint there: the mirror stays, without endpoints.
        for (ready, alive) in [(true, false), (false, true)] {
            let mut snap = snapshot.clone();
            snap.services[0].ready = ready;
            let r = mirror::mirrors(&s, &snap, alive, &s.gateways);
            assert!(r.iter().any(|r| matches!(r, Resource::Service(_))));
            assert!(r.iter().all(|r| !matches!(r, Resource::ExternalWorkload(w) if !w.spec.workload_ips.is_empty())));
        }
    }
}
