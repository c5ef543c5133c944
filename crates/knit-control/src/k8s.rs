//! The Kubernetes source: one watch per kind feeds the index, as the manifest directory does in
//! local mode.
//!
//! - [`run`] (in `watch`, the only I/O here) starts a `kube::runtime::watcher` for every
//!   [`Watched`] kind and merges the streams into one task, so that events, Namespace ones
//!   included, are handled one at a time, in order, by a [`Translator`] that needs no lock.
//! - The [`Translator`] is synchronous and pure apart from the index: a watch's `Init` starts a
//!   relist, `InitApply` buffers, `InitDone` resets the kind's source (`kubernetes/<Kind>`) in the
//!   index to what was listed, so objects deleted while the watch was down disappear; `Apply` and
//!   `Delete` apply and delete single resources.
//! - Objects are converted in [`convert`]: Services and custom resources through
//!   `resources::parse_document`, Pods into workloads while they can take traffic, and
//!   EndpointSlices into workloads holding their ready addresses, which give a Service without a
//!   selector its endpoints (a Service with a selector takes its Pods instead). Services and
//!   Pods inherit their Namespace's Linkerd annotations, so they wait for the Namespaces' first
//!   listing before reaching the index (a namespace-wide `deny` must never be preceded by the
//!   cluster default), and are emitted again when their Namespace's annotations change.
//! - An object `parse_document` refuses is logged and counted ([`Status::invalid`]); whatever
//!   version of it was served before stays served.
//! - [`Status::ready`] says whether every watch has listed its objects once (a custom resource
//!   whose CRD is not installed counts as listed, and empty).

mod convert;
#[cfg(test)]
mod tests;
pub mod trust_roots;
mod watch;

pub use watch::run;

use crate::{index::Index, resources::Resource};
use convert::{Annotations, Object};
use k8s_openapi::api::{
    core::v1::{Namespace, Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    api::{ApiResource, DynamicObject, GroupVersionKind},
    runtime::watcher::Event,
    ResourceExt,
};
use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
};

/// The kinds the source watches. Each is one source of the index (`kubernetes/<Kind>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Watched {
    Namespace,
    Service,
    Pod,
    EndpointSlice,
    Server,
    AuthorizationPolicy,
    MeshTlsAuthentication,
    NetworkAuthentication,
    PolicyHttpRoute,
    RateLimitPolicy,
    HttpRoute,
    GrpcRoute,
    ExternalWorkload,
    TrafficSplit,
    TcpRoute,
    TlsRoute,
    EgressNetwork,
    Link,
}

impl Watched {
    pub const ALL: [Watched; 18] = [
        Watched::Namespace,
        Watched::Service,
        Watched::Pod,
        Watched::EndpointSlice,
        Watched::Server,
        Watched::AuthorizationPolicy,
        Watched::MeshTlsAuthentication,
        Watched::NetworkAuthentication,
        Watched::PolicyHttpRoute,
        Watched::RateLimitPolicy,
        Watched::HttpRoute,
        Watched::GrpcRoute,
        Watched::ExternalWorkload,
        Watched::TrafficSplit,
        Watched::TcpRoute,
        Watched::TlsRoute,
        Watched::EgressNetwork,
        Watched::Link,
    ];

    /// What the service mirror reads of a linked cluster's API (Kubernetes mode): its Services and
    /// what gives them endpoints and identities, with the Namespaces whose annotations they inherit.
    pub const REMOTE: [Watched; 4] = [Watched::Namespace, Watched::Service, Watched::Pod, Watched::EndpointSlice];

    /// Group, version, kind and plural of a custom resource; `None` for the core kinds.
    fn custom(self) -> Option<(&'static str, &'static str, &'static str, &'static str)> {
        Some(match self {
            Watched::Namespace | Watched::Service | Watched::Pod | Watched::EndpointSlice => return None,
            Watched::Server => ("policy.linkerd.io", "v1beta3", "Server", "servers"),
            Watched::AuthorizationPolicy => ("policy.linkerd.io", "v1alpha1", "AuthorizationPolicy", "authorizationpolicies"),
            Watched::MeshTlsAuthentication => ("policy.linkerd.io", "v1alpha1", "MeshTLSAuthentication", "meshtlsauthentications"),
            Watched::NetworkAuthentication => ("policy.linkerd.io", "v1alpha1", "NetworkAuthentication", "networkauthentications"),
            Watched::PolicyHttpRoute => ("policy.linkerd.io", "v1beta3", "HTTPRoute", "httproutes"),
            Watched::RateLimitPolicy => ("policy.linkerd.io", "v1alpha1", "HTTPLocalRateLimitPolicy", "httplocalratelimitpolicies"),
            Watched::HttpRoute => ("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes"),
            Watched::GrpcRoute => ("gateway.networking.k8s.io", "v1", "GRPCRoute", "grpcroutes"),
            Watched::ExternalWorkload => ("workload.linkerd.io", "v1beta1", "ExternalWorkload", "externalworkloads"),
            Watched::TrafficSplit => ("split.smi-spec.io", "v1alpha2", "TrafficSplit", "trafficsplits"),
            Watched::TcpRoute => ("gateway.networking.k8s.io", "v1alpha2", "TCPRoute", "tcproutes"),
            Watched::TlsRoute => ("gateway.networking.k8s.io", "v1alpha2", "TLSRoute", "tlsroutes"),
            Watched::EgressNetwork => ("policy.linkerd.io", "v1alpha1", "EgressNetwork", "egressnetworks"),
            Watched::Link => ("multicluster.linkerd.io", "v1alpha3", "Link", "links"),
        })
    }

    /// The watch's `ApiResource`, for a custom resource.
    pub fn api_resource(self) -> Option<ApiResource> {
        let (group, version, kind, plural) = self.custom()?;
        Some(ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural))
    }

    /// The index source this kind's resources belong to. The two HTTPRoutes carry their group.
    pub fn source(self) -> &'static str {
        match self {
            Watched::Namespace => "kubernetes/Namespace",
            Watched::Service => "kubernetes/Service",
            Watched::Pod => "kubernetes/Pod",
            Watched::EndpointSlice => "kubernetes/EndpointSlice",
            Watched::Server => "kubernetes/Server",
            Watched::AuthorizationPolicy => "kubernetes/AuthorizationPolicy",
            Watched::MeshTlsAuthentication => "kubernetes/MeshTLSAuthentication",
            Watched::NetworkAuthentication => "kubernetes/NetworkAuthentication",
            Watched::PolicyHttpRoute => "kubernetes/HTTPRoute.policy.linkerd.io",
            Watched::RateLimitPolicy => "kubernetes/HTTPLocalRateLimitPolicy",
            Watched::HttpRoute => "kubernetes/HTTPRoute.gateway.networking.k8s.io",
            Watched::GrpcRoute => "kubernetes/GRPCRoute",
            Watched::ExternalWorkload => "kubernetes/ExternalWorkload",
            Watched::TrafficSplit => "kubernetes/TrafficSplit",
            Watched::TcpRoute => "kubernetes/TCPRoute",
            Watched::TlsRoute => "kubernetes/TLSRoute",
            Watched::EgressNetwork => "kubernetes/EgressNetwork",
            Watched::Link => "kubernetes/Link",
        }
    }

    /// Whether the kind inherits its Namespace's annotations.
    fn inherits(self) -> bool {
        matches!(self, Watched::Service | Watched::Pod)
    }
}

/// What the admin server (or the service mirror, of a linked cluster) reads: whether every watch
/// has listed once, how many objects were refused, and the last watch error. Cloning shares it.
#[derive(Clone, Debug)]
pub struct Status(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    /// The kinds watched: all of them for this cluster, [`Watched::REMOTE`] for a linked one.
    kinds: &'static [Watched],
    synced: [AtomicBool; Watched::ALL.len()],
    invalid: AtomicU64,
    /// Why a watch is failing, while one is.
    failing: std::sync::Mutex<BTreeMap<Watched, String>>,
}

impl Default for Status {
    fn default() -> Self {
        Self::of(&Watched::ALL)
    }
}

impl Status {
    /// The status of watches over `kinds`.
    pub fn of(kinds: &'static [Watched]) -> Self {
        Self(Arc::new(Shared { kinds, synced: Default::default(), invalid: AtomicU64::new(0), failing: Default::default() }))
    }

    /// Every watch has delivered its first complete listing (or found its CRD missing).
    pub fn ready(&self) -> bool {
        self.0.kinds.iter().all(|k| self.0.synced[*k as usize].load(Ordering::Acquire))
    }

    /// The watches that have not listed yet, for `/ready`'s answer.
    pub fn pending(&self) -> Vec<&'static str> {
        self.0.kinds.iter().filter(|k| !self.0.synced[**k as usize].load(Ordering::Acquire)).map(|k| k.source()).collect()
    }

    /// A failing watch's error (the first kind's, if several fail), while one is failing.
    pub fn failing(&self) -> Option<String> {
        let failing = self.0.failing.lock().unwrap_or_else(|p| p.into_inner());
        failing.iter().next().map(|(k, e)| format!("watching {}: {e}", k.source()))
    }

    fn set_failing(&self, kind: Watched, error: Option<String>) {
        let mut failing = self.0.failing.lock().unwrap_or_else(|p| p.into_inner());
        match error {
            Some(e) => failing.insert(kind, e),
            None => failing.remove(&kind),
        };
    }

    /// How many times an object was refused as invalid since start-up (a counter).
    pub fn invalid(&self) -> u64 {
        self.0.invalid.load(Ordering::Relaxed)
    }

    fn synced(&self, kind: Watched) {
        self.0.synced[kind as usize].store(true, Ordering::Release);
    }
}

/// One watch event, as the merged stream carries it.
// Events are handled one at a time as they arrive; boxing Pods would only add an allocation each.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Input {
    Namespace(Event<Namespace>),
    Service(Event<Service>),
    Pod(Event<Pod>),
    EndpointSlice(Event<EndpointSlice>),
    Custom(Watched, Event<DynamicObject>),
}

/// One object of a kind, converted; `None` when a Pod must not be served.
struct Item {
    key: (String, String),
    object: Option<Object>,
}

fn item<K: ResourceExt>(o: K, convert: impl FnOnce(K) -> Option<Object>) -> Item {
    let key = (o.namespace().unwrap_or_else(|| "default".to_string()), o.name_any());
    Item { key, object: convert(o) }
}

fn map<T, U>(event: Event<T>, mut f: impl FnMut(T) -> U) -> Event<U> {
    match event {
        Event::Init => Event::Init,
        Event::InitApply(o) => Event::InitApply(f(o)),
        Event::InitDone => Event::InitDone,
        Event::Apply(o) => Event::Apply(f(o)),
        Event::Delete(o) => Event::Delete(f(o)),
    }
}

type Objects = BTreeMap<(String, String), Object>;

/// One kind's objects, by namespace and name.
#[derive(Default)]
struct KindState {
    /// As last seen from the API.
    objects: Objects,
    /// During a relist: what has been listed so far.
    listing: Option<Objects>,
    /// What the index holds from this kind's source.
    served: BTreeMap<(String, String), Resource>,
    synced: bool,
}

/// Turns watch events into index events (see the module's overview).
pub struct Translator {
    index: Arc<Index>,
    status: Status,
    kinds: [KindState; Watched::ALL.len()],
    /// The inherited annotations of each namespace that has some.
    namespaces: BTreeMap<String, Annotations>,
    namespace_listing: Option<BTreeMap<String, Annotations>>,
}

impl Translator {
    pub fn new(index: Arc<Index>, status: Status) -> Self {
        Self { index, status, kinds: Default::default(), namespaces: BTreeMap::new(), namespace_listing: None }
    }

    pub fn status(&self) -> &Status {
        &self.status
    }

    pub fn handle(&mut self, input: Input) {
        match input {
            Input::Namespace(e) => self.namespace_event(e),
            Input::Service(e) => self.event(Watched::Service, map(e, |s| item(s, |s| Some(convert::json(&s))))),
            Input::Pod(e) => {
                let index = self.index.clone();
                self.event(Watched::Pod, map(e, |p| item(p, |p| convert::pod(&p, index.config()).map(Object::Workload))))
            }
            Input::EndpointSlice(e) => self.event(Watched::EndpointSlice, map(e, |s| item(s, |s| convert::endpoint_slice(&s).map(Object::Workload)))),
            Input::Custom(kind, e) => {
                let (group, version, name, _) = kind.custom().unwrap_or_default();
                let api_version = format!("{group}/{version}");
                self.event(kind, map(e, |o| item(o, |o| Some(convert::custom(o, &api_version, name)))))
            }
        }
    }

    /// A custom resource's collection does not exist (its CRD is not installed): it has no
    /// objects, which is a complete listing. The watch keeps retrying, and lists for real once
    /// the CRD appears.
    pub fn missing(&mut self, kind: Watched) {
        let state = &self.kinds[kind as usize];
        if state.synced && state.objects.is_empty() {
            // Already known empty: every backoff retry of the watch would say so again.
            return;
        }
        self.event(kind, Event::Init);
        self.event(kind, Event::InitDone);
    }

    fn event(&mut self, kind: Watched, event: Event<Item>) {
        let state = &mut self.kinds[kind as usize];
        match event {
            Event::Init => state.listing = Some(Objects::new()),
            Event::InitApply(item) => match (&mut state.listing, item.object) {
                (Some(listing), Some(o)) => {
                    listing.insert(item.key, o);
                }
                (Some(_), None) => {}
                (None, object) => self.apply(kind, Item { key: item.key, object }),
            },
            Event::InitDone => {
                if let Some(listed) = state.listing.take() {
                    state.objects = listed;
                }
                state.synced = true;
                self.status.synced(kind);
                self.sync(kind);
            }
            Event::Apply(item) => self.apply(kind, item),
            Event::Delete(item) => {
                state.objects.remove(&item.key);
                self.emit(kind, &item.key);
            }
        }
    }

    fn apply(&mut self, kind: Watched, item: Item) {
        let objects = &mut self.kinds[kind as usize].objects;
        match item.object {
            Some(o) => objects.insert(item.key.clone(), o),
            None => objects.remove(&item.key),
        };
        self.emit(kind, &item.key);
    }

    /// Services and Pods wait for the Namespaces' first listing, whose annotations they inherit.
    fn emitting(&self, kind: Watched) -> bool {
        self.kinds[kind as usize].synced && (!kind.inherits() || self.kinds[Watched::Namespace as usize].synced)
    }

    /// Brings the index in line with one object as last seen.
    fn emit(&mut self, kind: Watched, key: &(String, String)) {
        if !self.emitting(kind) {
            return;
        }
        let inherited = kind.inherits().then(|| self.namespaces.get(&key.0)).flatten();
        let state = &mut self.kinds[kind as usize];
        match state.objects.get(key).map(|o| convert::resolve(o, inherited)) {
            Some(Ok(r)) => {
                state.served.insert(key.clone(), r.clone());
                self.index.apply(kind.source(), r);
            }
            Some(Err(reason)) => refused(&self.status, kind, key, &reason, state.served.contains_key(key)),
            None => {
                if let Some(r) = state.served.remove(key) {
                    self.index.delete(kind.source(), &r.key());
                }
            }
        }
    }

    /// Replaces everything the kind's source holds with its objects as last seen; an object
    /// refused now keeps the version served before, if any.
    fn sync(&mut self, kind: Watched) {
        if !self.emitting(kind) {
            return;
        }
        let state = &mut self.kinds[kind as usize];
        let mut served = BTreeMap::new();
        for (key, o) in &state.objects {
            let inherited = kind.inherits().then(|| self.namespaces.get(&key.0)).flatten();
            match convert::resolve(o, inherited) {
                Ok(r) => {
                    served.insert(key.clone(), r);
                }
                Err(reason) => {
                    let previous = state.served.get(key);
                    refused(&self.status, kind, key, &reason, previous.is_some());
                    served.extend(previous.map(|r| (key.clone(), r.clone())));
                }
            }
        }
        self.index.reset(kind.source(), served.values().cloned().collect());
        state.served = served;
        tracing::info!(kind = kind.source(), resources = state.served.len(), "listed");
    }

    fn namespace_event(&mut self, event: Event<Namespace>) {
        let annotations = |ns: &Namespace| convert::inherited(ns.metadata.annotations.as_ref());
        match event {
            Event::Init => self.namespace_listing = Some(BTreeMap::new()),
            Event::InitApply(ns) => match &mut self.namespace_listing {
                Some(listing) => {
                    listing.insert(ns.name_any(), annotations(&ns));
                }
                None => self.namespace_changed(ns.name_any(), annotations(&ns)),
            },
            Event::InitDone => self.namespaces_listed(),
            Event::Apply(ns) => self.namespace_changed(ns.name_any(), annotations(&ns)),
            Event::Delete(ns) => self.namespace_changed(ns.name_any(), Annotations::new()),
        }
    }

    fn namespaces_listed(&mut self) {
        let mut listed = self.namespace_listing.take().unwrap_or_default();
        listed.retain(|_, a| !a.is_empty());
        let changed: BTreeSet<String> = listed.keys().chain(self.namespaces.keys()).filter(|n| listed.get(*n) != self.namespaces.get(*n)).cloned().collect();
        self.namespaces = listed;
        let first = !self.kinds[Watched::Namespace as usize].synced;
        self.kinds[Watched::Namespace as usize].synced = true;
        self.status.synced(Watched::Namespace);
        if first {
            // Services and Pods listed before now were held back: emit them all.
            self.sync(Watched::Service);
            self.sync(Watched::Pod);
        } else {
            changed.iter().for_each(|ns| self.reemit(ns));
        }
    }

    fn namespace_changed(&mut self, name: String, annotations: Annotations) {
        if self.namespaces.get(&name).map_or(annotations.is_empty(), |a| *a == annotations) {
            return;
        }
        if annotations.is_empty() {
            self.namespaces.remove(&name);
        } else {
            self.namespaces.insert(name.clone(), annotations);
        }
        tracing::debug!(namespace = %name, "namespace annotations changed; emitting its Services and Pods again");
        self.reemit(&name);
    }

    /// Emits the Services and Pods of `ns` again: the index publishes only what really changed.
    fn reemit(&mut self, ns: &str) {
        for kind in [Watched::Service, Watched::Pod] {
            let objects = &self.kinds[kind as usize].objects;
            let keys: Vec<_> = objects.range((ns.to_string(), String::new())..).take_while(|(k, _)| k.0 == ns).map(|(k, _)| k.clone()).collect();
            for key in keys {
                self.emit(kind, &key);
            }
        }
    }
}

fn refused(status: &Status, kind: Watched, (ns, name): &(String, String), reason: &str, kept: bool) {
    status.0.invalid.fetch_add(1, Ordering::Relaxed);
    let what = if kept { "keeping the version served before" } else { "not served" };
    tracing::warn!(kind = kind.source(), namespace = %ns, name = %name, reason, "invalid object refused; {what}");
}
