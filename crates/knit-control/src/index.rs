//! The control plane's one index of resources and the views computed from it.
//!
//! Sources (a directory of manifests today, the Kubernetes API next) feed it `reset`, `apply` and
//! `delete` events. The index keeps one copy of each resource. A gRPC stream subscribes to a
//! *view* (the endpoints of a Service port, the outbound policy of a Service port, the inbound
//! policy of a workload port, a profile): the first subscriber computes it into a
//! `watch::Sender<Arc<..>>`, later subscribers of the same key share it, and a change recomputes
//! only the live views it can affect, publishing only when the answer really changed. Memory is
//! therefore one copy of the resources plus one copy of each distinct answer, however many proxies
//! watch (Linkerd's destination controller keeps state per subscriber, and runs out of memory
//! under churn). Views whose last subscriber left are dropped at the next change.
//!
//! Everything here is synchronous and pure apart from the watch channels: the gRPC layer
//! (`grpc.rs`) turns views into streams, the sources (`local.rs`) turn files into events.

mod egress;
mod endpoints;
mod inbound;
pub mod names;
mod outbound;

pub use egress::network_for;
pub use names::{SvcPort, WorkloadPort};
pub use outbound::OutboundKey;

use crate::resources::{ExternalWorkload, Key, Kind, Resource, Service};
use linkerd2_proxy_api::{destination, inbound as inbound_api, outbound as outbound_api};
use std::{
    collections::{BTreeMap, HashMap},
    hash::Hash,
    sync::{Arc, Mutex},
};
use tokio::sync::watch;

#[cfg(test)]
mod tests;

/// How the index names and authorizes things.
#[derive(Clone, Debug)]
pub struct IndexConfig {
    pub cluster_domain: String,
    /// The last part of identity names (Linkerd's identityTrustDomain), usually the cluster domain.
    pub trust_domain: String,
    /// The control plane's namespace: part of every identity name (`SA.NS.serviceaccount.identity.CP_NS.DOMAIN`).
    pub control_plane_ns: String,
    pub cluster_networks: Vec<ipnet::IpNet>,
    /// For workloads without a Server on a port and without `config.linkerd.io/default-inbound-policy`.
    pub default_inbound_policy: String,
    /// Ports that are opaque (never detected) unless a `config.linkerd.io/opaque-ports`
    /// annotation lists others: Linkerd's `proxy.opaquePorts`.
    pub default_opaque_ports: std::collections::BTreeSet<u16>,
    /// Whose EgressNetworks apply to clients in namespaces that have none of their own.
    pub global_egress_namespace: String,
}

impl IndexConfig {
    /// The settings the unit tests share: Linkerd's defaults, `cluster.local`, control plane `knit`.
    #[cfg(test)]
    pub fn for_tests() -> Self {
        Self {
            cluster_domain: "cluster.local".into(),
            trust_domain: "cluster.local".into(),
            control_plane_ns: "knit".into(),
            cluster_networks: vec!["10.0.0.0/8".parse().expect("a CIDR")],
            default_inbound_policy: "all-unauthenticated".into(),
            default_opaque_ports: knit_core::parse::port_set(crate::config::DEFAULT_OPAQUE_PORTS).expect("the default opaque ports parse"),
            global_egress_namespace: "linkerd-egress".into(),
        }
    }

    pub fn identity(&self, service_account: &str, ns: &str) -> String {
        format!("{service_account}.{ns}.serviceaccount.identity.{}.{}", self.control_plane_ns, self.trust_domain)
    }

    pub fn authority(&self, svc: &SvcPort) -> String {
        format!("{}.{}.svc.{}:{}", svc.name, svc.ns, self.cluster_domain, svc.port)
    }

    /// Whether a Service port is opaque: `appProtocol: linkerd.io/opaque` (or `linkerd.io/tcp`),
    /// or listed by its `config.linkerd.io/opaque-ports`, or, without that annotation, one of
    /// the default opaque ports.
    pub fn is_opaque(&self, svc: &Service, port: u16) -> bool {
        let by_protocol = svc.spec.ports.iter().any(|p| p.port == port && matches!(p.app_protocol.as_deref(), Some("linkerd.io/opaque" | "linkerd.io/tcp")));
        by_protocol || svc.config.opaque_ports.as_ref().unwrap_or(&self.default_opaque_ports).contains(&port)
    }

    /// Whether a workload port is opaque: its own `config.linkerd.io/opaque-ports` annotation, or
    /// the default opaque ports.
    pub fn workload_port_opaque(&self, w: &ExternalWorkload, port: u16) -> bool {
        match w.metadata.annotations.get("config.linkerd.io/opaque-ports") {
            Some(v) => knit_core::parse::port_set(v).is_ok_and(|p| p.contains(&port)),
            None => self.default_opaque_ports.contains(&port),
        }
    }
}

/// The resources, by kind, namespace and name (so that one kind, or one kind in one namespace,
/// is a range).
#[derive(Default)]
pub struct Model {
    resources: BTreeMap<Key, Resource>,
    /// The names of each namespace's workloads that carry each label, by a hash of namespace,
    /// label and value (a collision only adds a candidate, which the selector then refuses): a
    /// Service's endpoints are found without reading every workload of its namespace.
    by_label: HashMap<u64, std::collections::BTreeSet<String>>,
    hasher: std::hash::RandomState,
}

impl Model {
    fn label_hash(&self, ns: &str, label: &str, value: &str) -> u64 {
        std::hash::BuildHasher::hash_one(&self.hasher, (ns, label, value))
    }

    fn index_labels(&mut self, r: &Resource, add: bool) {
        let Resource::ExternalWorkload(w) = r else { return };
        for (label, value) in &w.metadata.labels {
            let h = self.label_hash(&w.metadata.namespace, label, value);
            if add {
                self.by_label.entry(h).or_default().insert(w.metadata.name.clone());
            } else if let Some(names) = self.by_label.get_mut(&h) {
                names.remove(&w.metadata.name);
                if names.is_empty() {
                    self.by_label.remove(&h);
                }
            }
        }
    }

    fn insert(&mut self, key: Key, r: Resource) -> Option<Resource> {
        let before = self.remove(&key);
        self.index_labels(&r, true);
        self.resources.insert(key, r);
        before
    }

    fn remove(&mut self, key: &Key) -> Option<Resource> {
        let before = self.resources.remove(key);
        if let Some(b) = &before {
            self.index_labels(b, false);
        }
        before
    }

    /// The workloads of `ns` that `svc` selects (by its selector, or for a Service without one,
    /// those its EndpointSlices name).
    pub fn selected<'a>(&'a self, ns: &'a str, svc: &'a Service) -> impl Iterator<Item = &'a Arc<ExternalWorkload>> + 'a {
        let name_label = [(ENDPOINT_SLICE_LABEL, svc.metadata.name.as_str())];
        let pairs: Vec<(&str, &str)> =
            if svc.spec.selector.is_empty() { name_label.to_vec() } else { svc.spec.selector.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect() };
        // The rarest label: the fewest candidates.
        let candidates = pairs.iter().map(|(k, v)| self.by_label.get(&self.label_hash(ns, k, v))).min_by_key(|names| names.map_or(0, |n| n.len())).flatten();
        candidates.into_iter().flatten().filter_map(move |name| self.workload(ns, name)).filter(move |w| endpoints::selects(svc, w))
    }
    fn range<'a>(&'a self, kind: Kind, ns: Option<&'a str>) -> impl Iterator<Item = &'a Resource> + 'a {
        let start = Key { kind, namespace: ns.unwrap_or("").to_string(), name: String::new() };
        self.resources.range(start..).take_while(move |(k, _)| k.kind == kind && ns.is_none_or(|ns| k.namespace == ns)).map(|(_, r)| r)
    }

    pub fn get(&self, kind: Kind, ns: &str, name: &str) -> Option<&Resource> {
        self.resources.get(&Key { kind, namespace: ns.to_string(), name: name.to_string() })
    }

    pub fn service(&self, ns: &str, name: &str) -> Option<&Arc<Service>> {
        match self.get(Kind::Service, ns, name) {
            Some(Resource::Service(s)) => Some(s),
            _ => None,
        }
    }

    pub fn workload(&self, ns: &str, name: &str) -> Option<&Arc<ExternalWorkload>> {
        match self.get(Kind::ExternalWorkload, ns, name) {
            Some(Resource::ExternalWorkload(w)) => Some(w),
            _ => None,
        }
    }

    pub fn workloads<'a>(&'a self, ns: &'a str) -> impl Iterator<Item = &'a Arc<ExternalWorkload>> + 'a {
        self.range(Kind::ExternalWorkload, Some(ns)).filter_map(|r| match r {
            Resource::ExternalWorkload(w) => Some(w),
            _ => None,
        })
    }

    pub fn of_kind<'a>(&'a self, kind: Kind, ns: Option<&'a str>) -> impl Iterator<Item = &'a Resource> + 'a {
        self.range(kind, ns)
    }

    pub fn services(&self) -> impl Iterator<Item = &Arc<Service>> {
        self.range(Kind::Service, None).filter_map(|r| match r {
            Resource::Service(s) => Some(s),
            _ => None,
        })
    }
}

/// What one event changed: the resources before and after, to decide which views it affects.
struct Change {
    key: Key,
    before: Option<Resource>,
    after: Option<Resource>,
}

/// Live views of one kind, shared by every subscriber of the same key.
struct Views<K, T> {
    live: HashMap<K, watch::Sender<Arc<T>>>,
    /// Views are swept of those nobody watches when there are this many.
    sweep_at: usize,
}

impl<K: Eq + Hash + Clone, T: PartialEq> Views<K, Option<T>> {
    fn new() -> Self {
        Self { live: HashMap::new(), sweep_at: 1024 }
    }

    /// The view of `key`, shared. A view of nothing (a name or address the index does not know)
    /// is not kept: lookups of made-up names leave no state behind. Views whose subscribers all
    /// left are swept here too, not only when the index changes.
    fn subscribe(&mut self, key: &K, compute: impl FnOnce() -> Option<T>) -> watch::Receiver<Arc<Option<T>>> {
        if let Some(tx) = self.live.get(key) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(Arc::new(compute()));
        if rx.borrow().is_none() {
            return rx;
        }
        if self.live.len() >= self.sweep_at {
            self.live.retain(|_, tx| tx.receiver_count() > 0);
            self.sweep_at = (self.live.len() * 2).max(1024);
        }
        self.live.insert(key.clone(), tx);
        rx
    }

    /// Recomputes the views `affected` says may have changed; returns how many were published.
    fn refresh(&mut self, affected: impl Fn(&K) -> bool, compute: impl Fn(&K) -> Option<T>) -> u64 {
        let mut published = 0;
        self.live.retain(|key, tx| {
            if tx.receiver_count() == 0 {
                return false;
            }
            if affected(key) {
                let new = compute(key);
                if **tx.borrow() != new {
                    tx.send_replace(Arc::new(new));
                    published += 1;
                }
            }
            true
        });
        published
    }

    fn subscribers(&self) -> usize {
        self.live.values().map(|tx| tx.receiver_count()).sum()
    }
}

/// A Service another cluster may mirror (`Index::exported`).
pub struct Exported {
    pub service: Arc<Service>,
    pub ready: bool,
    /// Mirrored through the gateway.
    pub gateway: bool,
    /// Remote discovery (flat mode): its endpoints go with it, by Service port.
    pub flat: bool,
    /// A member of `<name>-federated` (its endpoints go with it too).
    pub federated: bool,
    pub endpoints: BTreeMap<u16, BTreeMap<std::net::SocketAddr, destination::WeightedAddr>>,
}

/// The endpoints of a Service port: `None` when the Service or the port does not exist.
pub type EndpointsView = Option<endpoints::Endpoints>;
pub use endpoints::{
    Endpoints, CLUSTER_NAME_LABEL, ENDPOINT_SLICE_LABEL, INBOUND_PORT_ANNOTATION, LOCAL_DISCOVERY, MIRRORED_SERVICE_LABEL, REMOTE_DEPLOYMENT,
    REMOTE_GATEWAY_IDENTITY, REMOTE_POD, REMOTE_SVC_FQ_NAME,
};

struct State {
    model: Model,
    /// Which source each resource came from, and each source's resources.
    owners: HashMap<Key, String>,
    sources: HashMap<String, Vec<Key>>,
    endpoints: Views<SvcPort, EndpointsView>,
    outbound: Views<OutboundKey, Option<outbound_api::OutboundPolicy>>,
    inbound: Views<WorkloadPort, Option<inbound_api::Server>>,
    profiles: Views<names::ProfileKey, Option<destination::DestinationProfile>>,
    published: u64,
}

pub struct Index {
    config: IndexConfig,
    state: Mutex<State>,
    /// Bumped by every change: for readers of the whole index (a linked cluster's exports, the
    /// service mirror's Links) rather than of one view.
    generation: watch::Sender<u64>,
}

/// Counts for metrics and logs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub resources: BTreeMap<&'static str, usize>,
    /// Live views and their subscribers, by view kind.
    pub views: BTreeMap<&'static str, (usize, usize)>,
    pub published: u64,
}

impl Index {
    pub fn new(config: IndexConfig) -> Self {
        let state = State {
            model: Model::default(),
            owners: HashMap::new(),
            sources: HashMap::new(),
            endpoints: Views::new(),
            outbound: Views::new(),
            inbound: Views::new(),
            profiles: Views::new(),
            published: 0,
        };
        Self { config, state: Mutex::new(state), generation: watch::channel(0).0 }
    }

    pub fn config(&self) -> &IndexConfig {
        &self.config
    }

    /// Every workload of every namespace, as of now.
    pub fn workloads_all(&self) -> Vec<Arc<ExternalWorkload>> {
        self.lock()
            .model
            .of_kind(Kind::ExternalWorkload, None)
            .filter_map(|r| match r {
                Resource::ExternalWorkload(w) => Some(w.clone()),
                _ => None,
            })
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces everything `source` contributed with `resources`.
    pub fn reset(&self, source: &str, resources: Vec<Resource>) {
        let mut state = self.lock();
        let old = state.sources.remove(source).unwrap_or_default();
        let mut changes = Vec::new();
        let new_keys: Vec<Key> = resources.iter().map(Resource::key).collect();
        // A set: a file holds thousands of resources, and every key of the old ones is looked up.
        let kept: std::collections::HashSet<&Key> = new_keys.iter().collect();
        for key in old.iter().filter(|k| !kept.contains(k)) {
            if state.owners.get(key).map(String::as_str) == Some(source) {
                state.owners.remove(key);
                let before = state.model.remove(key);
                changes.push(Change { key: key.clone(), before, after: None });
            }
        }
        for r in resources {
            if let Some(c) = insert(&mut state, source, r) {
                changes.push(c);
            }
        }
        state.sources.insert(source.to_string(), new_keys);
        self.publish(&mut state, &changes);
    }

    /// Adds or replaces one resource.
    pub fn apply(&self, source: &str, resource: Resource) {
        let mut state = self.lock();
        let key = resource.key();
        let change = insert(&mut state, source, resource);
        let keys = state.sources.entry(source.to_string()).or_default();
        if !keys.contains(&key) {
            keys.push(key);
        }
        self.publish(&mut state, change.as_slice());
    }

    pub fn delete(&self, source: &str, key: &Key) {
        let mut state = self.lock();
        if let Some(keys) = state.sources.get_mut(source) {
            keys.retain(|k| k != key);
        }
        if state.owners.get(key).map(String::as_str) != Some(source) {
            return;
        }
        state.owners.remove(key);
        let before = state.model.remove(key);
        self.publish(&mut state, &[Change { key: key.clone(), before, after: None }]);
    }

    fn publish(&self, state: &mut State, changes: &[Change]) {
        if changes.is_empty() {
            return;
        }
        let cfg = &self.config;
        let State { model, endpoints, outbound, inbound, profiles, .. } = state;
        let mut n = endpoints.refresh(|k| changes.iter().any(|c| endpoints::affects(model, c, k)), |k| endpoints::compute(model, cfg, k));
        // Outbound policy reads Services and the route and split resources, never workloads.
        let policy_changed = changes.iter().any(|c| c.key.kind != Kind::ExternalWorkload);
        n += outbound.refresh(|_| policy_changed, |k| outbound::compute(model, cfg, k));
        n += inbound.refresh(|k| changes.iter().any(|c| inbound::affects(c, k)), |k| inbound::compute(model, cfg, k));
        let backends_changed = changes.iter().any(|c| matches!(c.key.kind, Kind::Service | Kind::ExternalWorkload));
        n += profiles.refresh(|_| backends_changed, |k| endpoints::profile(model, cfg, k));
        state.published += n;
        self.generation.send_modify(|g| *g += 1);
        tracing::debug!(changes = changes.len(), published = n, "index updated");
    }

    /// Changes whenever the index does.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The Services another cluster may mirror: those `selector` picks (through a gateway) and
    /// those `remote_discovery` picks (flat: with their endpoints, by Service port). Each says
    /// whether it has a ready endpoint (its first port's). Mirrors are never exported again: two
    /// linked clusters would mirror each other's mirrors for ever.
    pub fn exported(&self, selectors: [Option<&crate::resources::LabelSelector>; 3]) -> Vec<Exported> {
        let [selector, remote_discovery, federated] = selectors;
        let state = self.lock();
        let model = &state.model;
        let picks = |sel: Option<&crate::resources::LabelSelector>, s: &Service| sel.is_some_and(|sel| sel.matches(&s.metadata.labels));
        model
            .services()
            .filter(|s| !s.metadata.labels.contains_key(MIRRORED_SERVICE_LABEL))
            .filter_map(|s| {
                let (gateway, flat, member) = (picks(selector, s), picks(remote_discovery, s), picks(federated, s));
                if !gateway && !flat && !member {
                    return None;
                }
                let key = |port: u16| SvcPort { ns: s.metadata.namespace.clone(), name: s.metadata.name.clone(), port };
                let ready = s.spec.ports.first().and_then(|p| endpoints::compute(model, &self.config, &key(p.port))).is_some_and(|e| !e.addrs.is_empty());
                let endpoints = if flat || member {
                    s.spec.ports.iter().filter_map(|p| Some((p.port, endpoints::compute(model, &self.config, &key(p.port))?.addrs))).collect()
                } else {
                    BTreeMap::new()
                };
                Some(Exported { service: s.clone(), ready, gateway, flat, federated: member, endpoints })
            })
            .collect()
    }

    /// The source a resource came from, if the index has it.
    pub fn source_of(&self, key: &crate::resources::Key) -> Option<String> {
        self.lock().owners.get(key).cloned()
    }

    /// The Services `f` picks, as of now.
    pub fn services_where(&self, f: impl Fn(&Service) -> bool) -> Vec<Arc<Service>> {
        self.lock().model.services().filter(|s| f(s)).cloned().collect()
    }

    /// Every Link, as of now.
    pub fn links(&self) -> Vec<Arc<crate::resources::Link>> {
        self.lock()
            .model
            .of_kind(Kind::Link, None)
            .filter_map(|r| match r {
                Resource::Link(l) => Some(l.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn endpoints(&self, key: &SvcPort) -> watch::Receiver<Arc<EndpointsView>> {
        let mut state = self.lock();
        let State { model, endpoints: views, .. } = &mut *state;
        views.subscribe(key, || endpoints::compute(model, &self.config, key))
    }

    pub fn outbound(&self, key: &OutboundKey) -> watch::Receiver<Arc<Option<outbound_api::OutboundPolicy>>> {
        let mut state = self.lock();
        let State { model, outbound: views, .. } = &mut *state;
        views.subscribe(key, || outbound::compute(model, &self.config, key))
    }

    pub fn inbound(&self, key: &WorkloadPort) -> watch::Receiver<Arc<Option<inbound_api::Server>>> {
        let mut state = self.lock();
        let State { model, inbound: views, .. } = &mut *state;
        views.subscribe(key, || inbound::compute(model, &self.config, key))
    }

    pub fn profile(&self, key: &names::ProfileKey) -> watch::Receiver<Arc<Option<destination::DestinationProfile>>> {
        let mut state = self.lock();
        let State { model, profiles: views, .. } = &mut *state;
        views.subscribe(key, || endpoints::profile(model, &self.config, key))
    }

    /// Resolves a name or a cluster IP to a Service port (see `names`).
    pub fn resolve(&self, target: &names::Target) -> Option<SvcPort> {
        names::resolve(&self.lock().model, target)
    }

    /// What an outbound lookup from `source_ns` answers for: a Service (a name, or a cluster
    /// IP), or, for any other address, egress. `None`: a name that is no Service.
    pub fn resolve_outbound(&self, target: &names::Target, source_ns: &str) -> Option<OutboundKey> {
        match (self.resolve(target), target) {
            (Some(svc), _) => Some(OutboundKey::Service(svc)),
            (None, names::Target::Addr(addr)) => Some(OutboundKey::Addr { source_ns: source_ns.to_string(), addr: *addr }),
            (None, names::Target::Name(_)) => None,
        }
    }

    pub fn stats(&self) -> Stats {
        let state = self.lock();
        let mut resources = BTreeMap::new();
        for key in state.model.resources.keys() {
            *resources.entry(key.kind.name()).or_default() += 1;
        }
        let mut views = BTreeMap::new();
        views.insert("endpoints", (state.endpoints.live.len(), state.endpoints.subscribers()));
        views.insert("outbound", (state.outbound.live.len(), state.outbound.subscribers()));
        views.insert("inbound", (state.inbound.live.len(), state.inbound.subscribers()));
        views.insert("profile", (state.profiles.live.len(), state.profiles.subscribers()));
        Stats { resources, views, published: state.published }
    }
}

/// Inserts `r` unless an identical copy is already there.
fn insert(state: &mut State, source: &str, r: Resource) -> Option<Change> {
    let key = r.key();
    match state.owners.get(&key) {
        Some(owner) if owner != source => {
            tracing::warn!(resource = %key, first = %owner, now = %source, "a resource is defined twice; the later definition wins");
            if let Some(keys) = state.sources.get_mut(owner) {
                keys.retain(|k| *k != key);
            }
        }
        _ => {}
    }
    state.owners.insert(key.clone(), source.to_string());
    if state.model.resources.get(&key) == Some(&r) {
        return None;
    }
    let before = state.model.insert(key.clone(), r.clone());
    Some(Change { key, before, after: Some(r) })
}
