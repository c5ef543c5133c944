//! The Translator over a real Index, fed with events built from Kubernetes API JSON
//! (`tests/k8s/*.json`, as `kubectl get -o json` prints them).

use super::*;
use crate::index::{IndexConfig, SvcPort, WorkloadPort};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use linkerd2_proxy_api::{destination::tls_identity::Strategy, inbound::proxy_protocol};

const ID: &str = "books.demo.serviceaccount.identity.knit.cluster.local";
const POD1: &str = "books-5f7c9d8b6-2xk4p";

fn load<T: serde::de::DeserializeOwned>(file: &str) -> T {
    let path = format!("{}/tests/k8s/{file}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn pod(n: u8) -> Pod {
    load(&format!("pod-books-{n}.json"))
}

fn server() -> DynamicObject {
    load("server.json")
}

fn namespace(policy: Option<&str>) -> Namespace {
    let mut ns: Namespace = load("namespace.json");
    let annotations = ns.metadata.annotations.get_or_insert_default();
    annotations.remove("config.linkerd.io/default-inbound-policy");
    annotations.extend(policy.map(|p| ("config.linkerd.io/default-inbound-policy".to_string(), p.to_string())));
    ns
}

/// A watch (re)starting and listing `objects`.
fn list<T>(t: &mut Translator, wrap: impl Fn(Event<T>) -> Input, objects: Vec<T>) {
    t.handle(wrap(Event::Init));
    for o in objects {
        t.handle(wrap(Event::InitApply(o)));
    }
    t.handle(wrap(Event::InitDone));
}

fn custom(kind: Watched) -> impl Fn(Event<DynamicObject>) -> Input {
    move |e| Input::Custom(kind, e)
}

fn config() -> IndexConfig {
    IndexConfig::for_tests()
}

fn index() -> Arc<Index> {
    Arc::new(Index::new(config()))
}

/// The namespace, the Service and both pods, listed.
fn started() -> (Translator, Arc<Index>) {
    let index = index();
    let mut t = Translator::new(index.clone(), Status::default());
    list(&mut t, Input::Namespace, vec![namespace(Some("all-authenticated"))]);
    list(&mut t, Input::Service, vec![load("service.json")]);
    list(&mut t, Input::Pod, vec![pod(1), pod(2)]);
    (t, index)
}

/// The Service port's endpoints with their identities; empty when the Service does not exist.
fn endpoints(index: &Index) -> Vec<(String, Option<String>)> {
    let rx = index.endpoints(&SvcPort { ns: "demo".into(), name: "books".into(), port: 8080 });
    let eps = rx.borrow().as_ref().clone();
    let identity = |a: &linkerd2_proxy_api::destination::WeightedAddr| match a.tls_identity.as_ref()?.strategy.as_ref()? {
        Strategy::DnsLikeIdentity(d) => Some(d.name.clone()),
        Strategy::UriLikeIdentity(u) => Some(u.uri.clone()),
    };
    eps.map(|e| e.addrs.iter().map(|(addr, a)| (addr.to_string(), identity(a))).collect()).unwrap_or_default()
}

fn ips(index: &Index) -> Vec<String> {
    endpoints(index).into_iter().map(|(addr, _)| addr).collect()
}

/// Which policy a pod's port gets, as `KIND:NAME` (`default:deny`, `server:books-http`).
fn inbound(index: &Index, pod: &str, port: u16) -> String {
    let rx = index.inbound(&WorkloadPort { ns: "demo".into(), workload: pod.into(), port });
    let server = rx.borrow().as_ref().clone().expect("the pod is in the index");
    format!("{}:{}", server.labels["kind"], server.labels["name"])
}

#[test]
fn pods_become_endpoints_with_their_identity() {
    let (_, index) = started();
    let id = Some(ID.to_string());
    assert_eq!(endpoints(&index), [("10.244.1.12:7000".to_string(), id.clone()), ("10.244.2.9:7000".to_string(), id)]);
}

#[test]
fn an_uninjected_pod_belongs_to_the_deployment_that_owns_it() {
    let mut plain = pod(1);
    plain.metadata.labels.as_mut().unwrap().remove(crate::resources::DEPLOYMENT_LABEL);
    let w = crate::k8s::convert::pod(&plain, &config()).unwrap();
    assert_eq!(w.deployment(), "books", "from its ReplicaSet books-HASH");
    plain.metadata.owner_references = None;
    let w = crate::k8s::convert::pod(&plain, &config()).unwrap();
    assert_eq!(w.deployment(), w.metadata.name, "no owner: its own");
}

#[test]
fn an_unready_pod_leaves_the_endpoints_and_comes_back() {
    let (mut t, index) = started();
    let mut unready = pod(2);
    let conditions = unready.status.as_mut().unwrap().conditions.as_mut().unwrap();
    conditions.iter_mut().filter(|c| c.type_ == "Ready").for_each(|c| c.status = "False".into());
    t.handle(Input::Pod(Event::Apply(unready)));
    assert_eq!(ips(&index), ["10.244.1.12:7000"]);
    t.handle(Input::Pod(Event::Apply(pod(2))));
    assert_eq!(ips(&index).len(), 2);
}

#[test]
fn a_terminating_pod_leaves_the_endpoints() {
    let (mut t, index) = started();
    let mut terminating = pod(1);
    terminating.metadata.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH));
    t.handle(Input::Pod(Event::Apply(terminating)));
    assert_eq!(ips(&index), ["10.244.2.9:7000"]);
}

#[test]
fn a_relist_deletes_what_is_gone() {
    let (mut t, index) = started();
    list(&mut t, Input::Pod, vec![pod(1)]);
    assert_eq!(ips(&index), ["10.244.1.12:7000"]);
}

#[test]
fn delete_removes() {
    let (mut t, index) = started();
    t.handle(Input::Pod(Event::Delete(pod(1))));
    assert_eq!(ips(&index), ["10.244.2.9:7000"]);
    t.handle(Input::Service(Event::Delete(load("service.json"))));
    assert!(index.endpoints(&SvcPort { ns: "demo".into(), name: "books".into(), port: 8080 }).borrow().is_none());
}

#[test]
fn namespace_annotations_set_the_default_inbound_policy() {
    let (mut t, index) = started();
    assert_eq!(inbound(&index, POD1, 7000), "default:all-authenticated");
    t.handle(Input::Namespace(Event::Apply(namespace(Some("deny")))));
    assert_eq!(inbound(&index, POD1, 7000), "default:deny");
    // The pod's own annotation wins over its namespace's.
    let mut own = pod(1);
    own.metadata.annotations.get_or_insert_default().insert("config.linkerd.io/default-inbound-policy".into(), "cluster-authenticated".into());
    t.handle(Input::Pod(Event::Apply(own)));
    assert_eq!(inbound(&index, POD1, 7000), "default:cluster-authenticated");
    // Without the namespace's annotation, the control plane's default applies.
    t.handle(Input::Namespace(Event::Apply(namespace(None))));
    assert_eq!(inbound(&index, "books-5f7c9d8b6-q8zrt", 7000), "default:all-unauthenticated");
}

#[test]
fn namespace_annotations_reach_services() {
    let (mut t, index) = started();
    let mut ns = namespace(Some("all-authenticated"));
    ns.metadata.annotations.as_mut().unwrap().insert("config.linkerd.io/opaque-ports".into(), "8080".into());
    t.handle(Input::Namespace(Event::Apply(ns)));
    let profile = index.profile(&crate::index::names::ProfileKey::Service(SvcPort { ns: "demo".into(), name: "books".into(), port: 8080 }));
    assert!(profile.borrow().as_ref().as_ref().unwrap().opaque_protocol);
}

#[test]
fn services_and_pods_wait_for_the_namespaces() {
    let index = index();
    let mut t = Translator::new(index.clone(), Status::default());
    list(&mut t, Input::Service, vec![load("service.json")]);
    list(&mut t, Input::Pod, vec![pod(1), pod(2)]);
    assert!(index.stats().resources.is_empty(), "nothing is served before the namespaces are known");
    list(&mut t, Input::Namespace, vec![namespace(Some("deny"))]);
    assert_eq!(ips(&index).len(), 2);
    assert_eq!(inbound(&index, POD1, 7000), "default:deny");
}

#[test]
fn a_server_and_its_route_make_the_inbound_policy() {
    let (mut t, index) = started();
    list(&mut t, custom(Watched::Server), vec![server()]);
    list(&mut t, custom(Watched::PolicyHttpRoute), vec![load("httproute.json")]);
    assert_eq!(inbound(&index, POD1, 7000), "server:books-http");
    let policy = index.inbound(&WorkloadPort { ns: "demo".into(), workload: POD1.into(), port: 7000 }).borrow().as_ref().clone().unwrap();
    let Some(proxy_protocol::Kind::Http1(http)) = policy.protocol.and_then(|p| p.kind) else { panic!("HTTP/1 expected") };
    assert_eq!(http.routes.len(), 1);
}

#[test]
fn an_invalid_server_is_counted_and_the_served_version_stays() {
    let (mut t, index) = started();
    list(&mut t, custom(Watched::Server), vec![server()]);
    let mut bad = server();
    bad.data["spec"].as_object_mut().unwrap().remove("podSelector");
    t.handle(Input::Custom(Watched::Server, Event::Apply(bad.clone())));
    assert_eq!(t.status().invalid(), 1);
    assert_eq!(inbound(&index, POD1, 7000), "server:books-http");
    // A relist that finds it still invalid keeps it too.
    list(&mut t, custom(Watched::Server), vec![bad]);
    assert_eq!(t.status().invalid(), 2);
    assert_eq!(inbound(&index, POD1, 7000), "server:books-http");
    // Deleting it is always honoured.
    t.handle(Input::Custom(Watched::Server, Event::Delete(server())));
    assert_eq!(inbound(&index, POD1, 7000), "default:all-authenticated");
}

#[test]
fn ready_once_every_watch_has_listed() {
    let (mut t, _) = started();
    assert!(!t.status().ready());
    assert!(t.status().pending().contains(&"kubernetes/Server"));
    assert!(t.status().pending().contains(&"kubernetes/EndpointSlice"));
    list(&mut t, Input::EndpointSlice, vec![]);
    for kind in Watched::ALL.into_iter().filter(|k| k.custom().is_some()) {
        if kind == Watched::TrafficSplit {
            t.missing(kind);
        } else {
            list(&mut t, custom(kind), vec![]);
        }
    }
    assert!(t.status().ready(), "pending: {:?}", t.status().pending());
}

#[test]
fn pods_that_cannot_take_traffic_are_not_workloads() {
    let cfg = index().config().clone();
    let w = convert::pod(&pod(1), &cfg).expect("a ready pod");
    let ports: Vec<_> = w.spec.ports.iter().map(|p| (p.name.as_deref().unwrap_or(""), p.port)).collect();
    assert_eq!(ports, [("http", 7000), ("knit-proxy", 4143), ("knit-admin", 4191)], "TCP ports of containers and native sidecars");
    assert_eq!(w.spec.mesh_tls.clone().map(|m| m.identity).as_deref(), Some(ID));
    let target = crate::viz::store::Target::of(&w).expect("viz scrapes the proxy's admin port");
    assert_eq!((target.admin.port(), target.namespace.as_str()), (4191, w.metadata.namespace.as_str()));
    let changes: [fn(&mut Pod); 4] = [
        |p| p.spec.as_mut().unwrap().host_network = Some(true),
        |p| p.status.as_mut().unwrap().phase = Some("Succeeded".into()),
        |p| p.status.as_mut().unwrap().conditions = None,
        |p| (p.status.as_mut().unwrap().pod_ip, p.status.as_mut().unwrap().pod_ips) = (None, None),
    ];
    for (i, change) in changes.iter().enumerate() {
        let mut p = pod(1);
        change(&mut p);
        assert!(convert::pod(&p, &cfg).is_none(), "change {i}");
    }
}

#[test]
fn the_proxy_port_says_where_meshed_traffic_goes() {
    let (mut t, index) = started();
    let mut moved = pod(2);
    moved.spec.as_mut().unwrap().init_containers.as_mut().unwrap()[0].ports.as_mut().unwrap()[0].container_port = 4200;
    t.handle(Input::Pod(Event::Apply(moved)));
    let rx = index.endpoints(&SvcPort { ns: "demo".into(), name: "books".into(), port: 8080 });
    let eps = rx.borrow().as_ref().clone().unwrap();
    let inbound = |ip: &str| eps.addrs[&format!("{ip}:7000").parse().unwrap()].protocol_hint.as_ref().unwrap().opaque_transport.as_ref().unwrap().inbound_port;
    assert_eq!((inbound("10.244.1.12"), inbound("10.244.2.9")), (4143, 4200));
}

#[test]
fn unmeshed_pods_have_no_identity() {
    let cfg = index().config().clone();
    let mut p = pod(1);
    let spec = p.spec.as_mut().unwrap();
    spec.init_containers.as_mut().unwrap()[0].name = "log-shipper".into();
    let status = p.status.as_mut().unwrap();
    status.pod_ips = None;
    let w = convert::pod(&p, &cfg).expect("podIP still counts");
    assert!(w.spec.mesh_tls.is_none());
    assert_eq!(w.spec.workload_ips.len(), 1);
}

#[test]
fn only_linkerd_annotations_are_inherited() {
    let ns: Annotations = [
        ("config.linkerd.io/opaque-ports", "3306"),
        ("balancer.alpha.linkerd.io/penalize-failures", "true"),
        ("balancer.linkerd.io/failure-accrual", "consecutive"),
        ("retry.linkerd.io/http", "5xx"),
        ("timeout.linkerd.io/request", "2s"),
        ("linkerd.io/inject", "enabled"),
        ("kubectl.kubernetes.io/last-applied-configuration", "{}"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(convert::inherited(Some(&ns)).len(), 5);
}

fn slice() -> EndpointSlice {
    load("endpointslice-legacy-db.json")
}

/// The endpoints of legacy-db:5432, a Service without a selector.
fn legacy_db(index: &Index) -> Vec<(String, Option<String>)> {
    let rx = index.endpoints(&SvcPort { ns: "demo".into(), name: "legacy-db".into(), port: 5432 });
    let eps = rx.borrow().as_ref().clone();
    eps.map(|e| e.addrs.iter().map(|(addr, a)| (addr.to_string(), a.tls_identity.as_ref().map(|_| "meshed".to_string()))).collect()).unwrap_or_default()
}

#[test]
fn a_service_without_a_selector_takes_its_endpoint_slices() {
    let (mut t, index) = started();
    list(&mut t, Input::Service, vec![load("service.json"), load("service-legacy-db.json")]);
    // The controller's slice of books, a Service with a selector, changes nothing: its Pods count.
    list(&mut t, Input::EndpointSlice, vec![slice(), load("endpointslice-books.json")]);
    assert_eq!(
        legacy_db(&index),
        [("192.168.40.11:5432".to_string(), None), ("192.168.40.14:5432".to_string(), None)],
        "ready endpoints only (no conditions means ready), not meshed"
    );
    assert_eq!(ips(&index), ["10.244.1.12:7000", "10.244.2.9:7000"], "books keeps its two Pods, not doubled by its slice");

    // The not-ready endpoint becomes ready; then the slice is deleted; then a relist brings it back.
    let mut updated = slice();
    updated.endpoints[1].conditions.as_mut().unwrap().ready = Some(true);
    t.handle(Input::EndpointSlice(Event::Apply(updated)));
    assert_eq!(legacy_db(&index).len(), 3);
    t.handle(Input::EndpointSlice(Event::Delete(slice())));
    assert!(legacy_db(&index).is_empty());
    list(&mut t, Input::EndpointSlice, vec![slice()]);
    assert_eq!(legacy_db(&index).len(), 2);

    // A slice without its Service's label, or of FQDNs, gives nothing.
    let mut orphan = slice();
    orphan.metadata.labels = None;
    assert!(convert::endpoint_slice(&orphan).is_none());
    let mut fqdn = slice();
    fqdn.address_type = "FQDN".into();
    assert!(convert::endpoint_slice(&fqdn).is_none());
}

/// A Service Linkerd's service mirror wrote for `books` in cluster `east`, and the slice
/// Kubernetes mirrored from its Endpoints (the gateway's address on the gateway port, the
/// gateway's identity annotated): Destination answers as for any gateway mirror.
#[test]
fn a_mirrored_service_resolves_to_the_remote_gateway() {
    let (mut t, index) = started();
    list(&mut t, Input::Service, vec![load("service-books-east.json")]);
    list(&mut t, Input::EndpointSlice, vec![load("endpointslice-books-east.json")]);
    let rx = index.endpoints(&SvcPort { ns: "demo".into(), name: "books-east".into(), port: 8080 });
    let eps = rx.borrow().as_ref().clone().expect("the mirror Service");
    let (addr, a) = eps.addrs.iter().next().expect("the gateway");
    assert_eq!(addr.to_string(), "172.18.0.40:4143");
    assert_eq!(a.authority_override.as_ref().map(|o| o.authority_override.as_str()), Some("books.demo.svc.cluster.local:8080"));
    let id = a.tls_identity.as_ref().and_then(|i| i.strategy.as_ref());
    assert!(matches!(id, Some(Strategy::DnsLikeIdentity(d)) if d.name.starts_with("linkerd-gateway.linkerd-multicluster.")), "{id:?}");
    assert_eq!(eps.labels.get("target_cluster").map(String::as_str), Some("east"));
}
