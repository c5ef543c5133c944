use super::*;
use crate::resources::parse;
use linkerd2_proxy_api::{
    destination::protocol_hint,
    inbound::{authn, proxy_protocol as inbound_protocol},
    outbound::{backend, http_route::distribution, proxy_protocol},
};

fn index() -> Index {
    Index::new(IndexConfig::for_tests())
}

fn load(index: &Index, source: &str, yaml: &str) {
    let (resources, errors) = parse(source, yaml);
    assert!(errors.is_empty(), "{errors:?}");
    index.reset(source, resources);
}

fn workload(name: &str, labels: &str, ip: &str, inbound: u16) -> String {
    format!("---\napiVersion: workload.linkerd.io/v1beta1\nkind: ExternalWorkload\nmetadata:\n  name: {name}\n  namespace: demo\n  labels: {{{labels}}}\n  annotations: {{knit.dev/proxy-inbound-port: \"{inbound}\"}}\nspec:\n  meshTLS: {{identity: {name}.demo.serviceaccount.identity.knit.cluster.local}}\n  workloadIPs: [{{ip: {ip}}}]\n  ports: [{{name: http, port: 7000}}]\n")
}

const SERVICES: &str = "
apiVersion: v1
kind: Service
metadata: {name: books, namespace: demo, annotations: {retry.linkerd.io/http: 5xx, timeout.linkerd.io/request: 3s, balancer.alpha.linkerd.io/penalize-failures: 'true'}}
spec: {selector: {app: books}, clusterIP: 10.96.0.20, ports: [{port: 8080, targetPort: http}]}
---
apiVersion: v1
kind: Service
metadata: {name: books-v1, namespace: demo}
spec: {selector: {app: books, version: v1}, ports: [{port: 8080, targetPort: http}]}
";

fn books() -> SvcPort {
    SvcPort { ns: "demo".into(), name: "books".into(), port: 8080 }
}

#[test]
fn endpoints_follow_workloads_and_only_their_changes_publish() {
    let index = index();
    load(&index, "svc.yaml", SERVICES);
    load(&index, "w.yaml", &(workload("b1", "app: books, version: v1", "10.0.0.1", 4143) + &workload("b2", "app: books, version: v2", "10.0.0.2", 4200)));
    let mut rx = index.endpoints(&books());
    let second = index.endpoints(&books());
    let eps = rx.borrow_and_update().as_ref().clone().expect("the Service exists");
    assert_eq!(eps.addrs.keys().map(|a| a.to_string()).collect::<Vec<_>>(), ["10.0.0.1:7000", "10.0.0.2:7000"]);
    let b2 = &eps.addrs[&"10.0.0.2:7000".parse().unwrap()];
    let hint = b2.protocol_hint.as_ref().unwrap();
    assert_eq!(hint.opaque_transport.as_ref().map(|o| o.inbound_port), Some(4200));
    assert!(matches!(hint.protocol, Some(protocol_hint::Protocol::H2(_))));
    assert_eq!(b2.metric_labels["serviceaccount"], "b2");
    assert_eq!((b2.metric_labels["pod"].as_str(), b2.metric_labels["deployment"].as_str()), ("b2", "b2"), "a workload without a deployment label is its own");
    assert_eq!(eps.labels["service"], "books");
    assert_eq!(index.stats().views["endpoints"], (1, 2), "one view, two subscribers");

    // A workload in another namespace does not touch the view.
    let before = index.stats().published;
    load(&index, "other.yaml", &workload("x", "app: books", "10.0.0.9", 4143).replace("namespace: demo", "namespace: other"));
    assert_eq!(index.stats().published, before);
    assert!(!rx.has_changed().unwrap());

    // The Services find their workloads by label (an index of them): relabelling moves b2 out
    // of books-v1's view and back, and a relabelled workload leaves the views it no longer
    // matches.
    let v1 = |index: &Index| {
        let rx = index.endpoints(&SvcPort { ns: "demo".into(), name: "books-v1".into(), port: 8080 });
        let ips: Vec<String> = rx.borrow().as_ref().as_ref().unwrap().addrs.keys().map(|a| a.ip().to_string()).collect();
        ips
    };
    assert_eq!(v1(&index), ["10.0.0.1"]);
    load(&index, "w.yaml", &(workload("b1", "app: books, version: v1", "10.0.0.1", 4143) + &workload("b2", "app: books, version: v1", "10.0.0.2", 4200)));
    assert_eq!(v1(&index), ["10.0.0.1", "10.0.0.2"]);
    load(&index, "w.yaml", &(workload("b1", "app: authors, version: v1", "10.0.0.1", 4143) + &workload("b2", "app: books, version: v2", "10.0.0.2", 4200)));
    assert_eq!(v1(&index), Vec::<String>::new());
    assert_eq!(rx.borrow_and_update().as_ref().as_ref().unwrap().addrs.keys().map(|a| a.to_string()).collect::<Vec<_>>(), ["10.0.0.2:7000"]);
    load(&index, "w.yaml", &(workload("b1", "app: books, version: v1", "10.0.0.1", 4143) + &workload("b2", "app: books, version: v2", "10.0.0.2", 4200)));

    // Removing b2 from the file removes the endpoint.
    load(&index, "w.yaml", &workload("b1", "app: books, version: v1", "10.0.0.1", 4143));
    assert!(rx.has_changed().unwrap());
    assert_eq!(rx.borrow_and_update().as_ref().as_ref().unwrap().addrs.len(), 1);

    // Views nobody watches are dropped at the next change.
    drop((rx, second));
    load(&index, "w.yaml", "");
    assert_eq!(index.stats().views["endpoints"], (0, 0));
}

fn outbound_http(index: &Index) -> (Vec<linkerd2_proxy_api::outbound::HttpRoute>, proxy_protocol::Detect) {
    let policy = index.outbound(&OutboundKey::Service(books())).borrow().as_ref().clone().expect("a policy");
    let Some(proxy_protocol::Kind::Detect(d)) = policy.protocol.unwrap().kind else { panic!("detect expected") };
    assert!(d.timeout.is_some() && d.opaque.is_some() && d.http1.is_some() && d.http2.is_some(), "all four detect fields are required");
    (d.http1.clone().unwrap().routes, d)
}

fn weights(route: &linkerd2_proxy_api::outbound::HttpRoute) -> Vec<(String, u32)> {
    let Some(distribution::Kind::RandomAvailable(r)) = route.rules[0].backends.clone().unwrap().kind else { panic!("random_available expected") };
    r.backends
        .iter()
        .map(|w| {
            let b = w.backend.as_ref().unwrap().backend.as_ref().unwrap();
            let name = match &b.kind {
                Some(backend::Kind::Balancer(p)) => match &p.discovery.as_ref().unwrap().kind {
                    Some(backend::endpoint_discovery::Kind::Dst(d)) => d.path.clone(),
                    None => String::new(),
                },
                _ => "no kind".into(),
            };
            (name, w.weight)
        })
        .collect()
}

#[test]
fn outbound_policy_default_route_split_and_httproute() {
    let index = index();
    load(&index, "svc.yaml", SERVICES);
    let (routes, _) = outbound_http(&index);
    assert_eq!(routes.len(), 1);
    let rule = &routes[0].rules[0];
    assert_eq!(rule.retry.as_ref().unwrap().conditions.as_ref().unwrap().status_ranges[0].start, 500);
    assert_eq!(rule.timeouts.as_ref().unwrap().request, Some(prost_types::Duration { seconds: 3, nanos: 0 }));
    let Some(distribution::Kind::FirstAvailable(f)) = rule.backends.clone().unwrap().kind else { panic!() };
    let b = f.backends[0].backend.as_ref().unwrap();
    assert_eq!(b.queue.as_ref().unwrap().capacity, 100);
    let Some(backend::Kind::Balancer(p2c)) = &b.kind else { panic!() };
    assert!(matches!(p2c.load, Some(backend::balance_p2c::Load::PenaltyPeakEwma(_))), "penalize-failures asks for penalties");

    let split = "apiVersion: split.smi-spec.io/v1alpha2\nkind: TrafficSplit\nmetadata: {name: s, namespace: demo}\nspec: {service: books, backends: [{service: books-v1, weight: 90}, {service: books-v2, weight: 10}]}\n";
    load(&index, "split.yaml", split);
    let (routes, _) = outbound_http(&index);
    assert_eq!(weights(&routes[0]), [("books-v1.demo.svc.cluster.local:8080".to_string(), 90), ("no kind".to_string(), 10)]);
    let missing = &routes[0].rules[0].backends.clone().unwrap();
    let Some(distribution::Kind::RandomAvailable(r)) = &missing.kind else { panic!() };
    assert_eq!(r.backends[1].backend.as_ref().unwrap().filters.len(), 1, "a missing backend fails with a failure injector");

    // An HTTPRoute wins over the split; a change to it is published to the watcher.
    let mut rx = index.outbound(&OutboundKey::Service(books()));
    rx.borrow_and_update();
    let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: demo}\nspec:\n  parentRefs: [{kind: Service, name: books, port: 8080}]\n  rules: [{matches: [{path: {type: Exact, value: /x}}], backendRefs: [{name: books-v1, port: 8080, weight: 3}]}]\n";
    load(&index, "route.yaml", route);
    assert!(rx.has_changed().unwrap());
    let (routes, _) = outbound_http(&index);
    assert_eq!(weights(&routes[0]), [("books-v1.demo.svc.cluster.local:8080".to_string(), 3)]);
    assert!(routes[0].metadata.is_some());
    // The cluster IP resolves to the same Service.
    assert_eq!(index.resolve(&names::Target::Addr("10.96.0.20:8080".parse().unwrap())), Some(books()));
}

#[test]
fn inbound_default_and_server_policies() {
    let index = index();
    load(&index, "w.yaml", &workload("books-v1", "app: books", "10.0.0.1", 4143));
    let key = WorkloadPort { ns: "demo".into(), workload: "books-v1".into(), port: 7000 };
    let rx = index.inbound(&key);
    let default = rx.borrow().as_ref().clone().unwrap();
    assert_eq!(default.labels["kind"], "default");
    assert_eq!(default.labels["name"], "all-unauthenticated");
    assert!(!default.authorizations[0].networks.is_empty());

    let policy = "
apiVersion: policy.linkerd.io/v1beta3
kind: Server
metadata: {name: books-http, namespace: demo}
spec: {externalWorkloadSelector: {matchLabels: {app: books}}, port: http, proxyProtocol: HTTP/1}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: MeshTLSAuthentication
metadata: {name: web, namespace: demo}
spec: {identities: ['*.web.example'], identityRefs: [{kind: ServiceAccount, name: web}]}
---
apiVersion: policy.linkerd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: books-from-web, namespace: demo}
spec:
  targetRef: {group: policy.linkerd.io, kind: Server, name: books-http}
  requiredAuthenticationRefs: [{group: policy.linkerd.io, kind: MeshTLSAuthentication, name: web}]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: HTTPLocalRateLimitPolicy
metadata: {name: books-limit, namespace: demo}
spec: {targetRef: {group: policy.linkerd.io, kind: Server, name: books-http}, total: {requestsPerSecond: 100}, identity: {requestsPerSecond: 20}}
";
    load(&index, "policy.yaml", policy);
    let server = rx.borrow().as_ref().clone().unwrap();
    assert_eq!(server.labels["name"], "books-http");
    assert_eq!(server.authorizations.len(), 1);
    let a = &server.authorizations[0];
    assert_eq!(a.labels["name"], "books-from-web");
    let Some(authn::Permit::MeshTls(m)) = a.authentication.clone().unwrap().permit else { panic!() };
    let Some(authn::permit_mesh_tls::Clients::Identities(ids)) = m.clients else { panic!() };
    assert_eq!(ids.identities[0].name, "web.demo.serviceaccount.identity.knit.cluster.local");
    assert_eq!(ids.suffixes[0].parts, ["web", "example"]);
    let Some(inbound_protocol::Kind::Http1(h)) = server.protocol.unwrap().kind else { panic!() };
    assert_eq!(h.local_rate_limit.unwrap().identity.unwrap().requests_per_second, 20);

    // Another port of the workload is not the Server's.
    let other = index.inbound(&WorkloadPort { port: 9000, ..key });
    assert_eq!(other.borrow().as_ref().as_ref().unwrap().labels["kind"], "default");
}

#[test]
fn a_grpcroute_makes_the_service_grpc_with_rpc_matches_and_grpc_retries() {
    let index = index();
    let svc = "apiVersion: v1\nkind: Service\nmetadata: {name: books, namespace: demo, annotations: {retry.linkerd.io/grpc: 'unavailable,resource-exhausted'}}\nspec: {selector: {app: books}, ports: [{port: 8080}]}\n";
    let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g, namespace: demo}\nspec:\n  parentRefs: [{kind: Service, name: books, port: 8080}]\n  rules: [{matches: [{method: {service: books.Books, method: List}}]}]\n";
    load(&index, "svc.yaml", svc);
    load(&index, "route.yaml", route);
    let policy = index.outbound(&OutboundKey::Service(books())).borrow().as_ref().clone().unwrap();
    let Some(proxy_protocol::Kind::Grpc(g)) = policy.protocol.unwrap().kind else { panic!("grpc expected") };
    let rule = &g.routes[0].rules[0];
    let rpc = rule.matches[0].rpc.as_ref().unwrap();
    assert_eq!((rpc.service.as_str(), rpc.method.as_str()), ("books.Books", "List"));
    let c = rule.retry.as_ref().unwrap().conditions.as_ref().unwrap();
    assert!(c.unavailable && c.resource_exhausted && !c.internal);
    assert!(g.routes[0].metadata.is_some());
}

#[test]
fn apply_delete_and_a_resource_two_sources_define() {
    let index = index();
    let (resources, _) = parse("a.yaml", SERVICES);
    let svc = resources[0].clone();
    index.apply("kubernetes", svc.clone());
    let mut rx = index.endpoints(&books());
    assert!(rx.borrow_and_update().is_some());
    // A second source defines the same Service: the later definition owns it, so the first
    // source's delete leaves it in place and only the owner's removes it.
    index.apply("files", svc.clone());
    index.delete("kubernetes", &svc.key());
    assert!(!rx.has_changed().unwrap() && rx.borrow().is_some());
    index.delete("files", &svc.key());
    assert!(rx.has_changed().unwrap());
    assert!(rx.borrow_and_update().is_none(), "the Service is gone");
    assert_eq!(index.stats().resources.get("Service"), None);
}

#[test]
fn egress_networks_pick_the_most_specific_in_scope_and_refuse_cluster_overlap() {
    let index = index();
    let en = |name: &str, ns: &str, nets: &str, created: &str| {
        format!("---\napiVersion: policy.linkerd.io/v1alpha1\nkind: EgressNetwork\nmetadata: {{name: {name}, namespace: {ns}, creationTimestamp: \"{created}\"}}\nspec:\n  {nets}\n  trafficPolicy: Allow\n")
    };
    let yaml = [
        en("wide", "demo", "networks: [{cidr: 0.0.0.0/0, except: [10.0.0.0/8]}]", "2024-01-01T00:00:00Z"),
        en("narrow-new", "demo", "networks: [{cidr: 203.0.113.0/24}]", "2024-03-01T00:00:00Z"),
        en("narrow-old", "demo", "networks: [{cidr: 203.0.113.0/24}]", "2024-02-01T00:00:00Z"),
        en("global", "linkerd-egress", "networks: [{cidr: 198.51.100.0/24}]", "2024-01-01T00:00:00Z"),
        en("overlapping", "lonely", "networks: [{cidr: 10.2.0.0/16}]", "2024-01-01T00:00:00Z"),
    ]
    .concat();
    load(&index, "egress.yaml", &yaml);
    let state = index.lock();
    let pick = |ns: &str, ip: &str| network_for(&state.model, index.config(), ns, ip.parse().unwrap()).map(|e| e.metadata.name.clone());
    assert_eq!(pick("demo", "203.0.113.5").as_deref(), Some("narrow-old"), "the most specific CIDR, then the oldest");
    assert_eq!(pick("demo", "8.8.8.8").as_deref(), Some("wide"));
    assert_eq!(pick("demo", "198.51.100.1").as_deref(), Some("wide"), "a namespace with its own never falls back to the global ones");
    assert_eq!(pick("other", "198.51.100.1").as_deref(), Some("global"));
    assert_eq!(pick("other", "8.8.8.8"), None);
    assert_eq!(pick("lonely", "10.2.0.1"), None, "an EgressNetwork over the cluster networks is never used");
    let overlapping = state.model.of_kind(Kind::EgressNetwork, Some("lonely")).find_map(|r| match r {
        Resource::EgressNetwork(e) => Some(e.clone()),
        _ => None,
    });
    let why = overlapping.unwrap().overlap(&index.config().cluster_networks).expect("refused");
    assert!(why.contains("10.2.0.0/16 overlaps the cluster network 10.0.0.0/8"), "{why}");
}

/// A Service mirrored from cluster `east` through its gateway, as Linkerd's service mirror
/// writes it (LINKERD-WIRE.md §12.1): Destination answers with the gateway's address, the
/// remote Service in `authority_override`, the gateway's identity and an HTTP/2 hint.
const MIRROR: &str = "
apiVersion: v1
kind: Service
metadata:
  name: books-east
  namespace: demo
  labels: {mirror.linkerd.io/mirrored-service: 'true', mirror.linkerd.io/cluster-name: east}
  annotations: {mirror.linkerd.io/remote-svc-fq-name: books.demo.svc.east.local}
spec: {selector: {knit.dev/gateway: east}, clusterIP: 10.96.0.30, ports: [{name: http, port: 8080, targetPort: 4143}, {name: redis, port: 6379, targetPort: 4143}]}
---
apiVersion: workload.linkerd.io/v1beta1
kind: ExternalWorkload
metadata:
  name: gateway-east
  namespace: demo
  labels: {knit.dev/gateway: east}
  annotations: {mirror.linkerd.io/remote-gateway-identity: linkerd-gateway.linkerd-multicluster.serviceaccount.identity.linkerd.east.local}
spec:
  workloadIPs: [{ip: 10.2.0.9}]
  ports: [{name: mc-gateway, port: 4143}]
";

#[test]
fn a_gateway_mirror_resolves_to_the_gateway_with_the_remote_authority() {
    use linkerd2_proxy_api::destination::{tls_identity::Strategy, AuthorityOverride};
    let index = index();
    load(&index, "mirror.yaml", MIRROR);
    for port in [8080, 6379] {
        let rx = index.endpoints(&SvcPort { ns: "demo".into(), name: "books-east".into(), port });
        let eps = rx.borrow().as_ref().clone().expect("the mirror exists");
        let (addr, a) = eps.addrs.iter().next().unwrap();
        assert_eq!((eps.addrs.len(), addr.to_string()), (1, "10.2.0.9:4143".to_string()), "the gateway, on its port");
        assert_eq!(a.authority_override, Some(AuthorityOverride { authority_override: format!("books.demo.svc.east.local:{port}") }));
        let id = a.tls_identity.as_ref().unwrap();
        assert!(
            matches!(&id.strategy, Some(Strategy::DnsLikeIdentity(d)) if d.name == "linkerd-gateway.linkerd-multicluster.serviceaccount.identity.linkerd.east.local")
        );
        assert_eq!(id.server_name, None, "the identity is the SNI");
        let hint = a.protocol_hint.as_ref().unwrap();
        assert!(matches!(hint.protocol, Some(protocol_hint::Protocol::H2(_))) && hint.opaque_transport.is_none(), "{hint:?}");
        assert_eq!(a.metric_labels, HashMap::from([("zone_locality".to_string(), "unknown".to_string())]));
        let set: BTreeMap<_, _> = eps.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            set,
            BTreeMap::from([
                ("namespace", "demo"),
                ("service", "books-east"),
                ("target_cluster", "east"),
                ("target_service", "books"),
                ("target_service_namespace", "demo")
            ])
        );
    }
    // Without the gateway's identity: the override alone, no TLS and no hint.
    load(&index, "mirror.yaml", &MIRROR.replace("mirror.linkerd.io/remote-gateway-identity", "other"));
    let rx = index.endpoints(&SvcPort { ns: "demo".into(), name: "books-east".into(), port: 8080 });
    let eps = rx.borrow().as_ref().clone().unwrap();
    let a = eps.addrs.values().next().unwrap();
    assert!(a.authority_override.is_some() && a.tls_identity.is_none() && a.protocol_hint.is_none(), "{a:?}");
}

#[test]
fn a_federated_service_follows_its_local_and_remote_members() {
    let index = index();
    let local = "apiVersion: v1\nkind: Service\nmetadata: {name: books, namespace: demo, labels: {mirror.linkerd.io/federated: member}}\nspec: {selector: {app: books}, ports: [{port: 8080}]}\n";
    load(&index, "local.yaml", &(local.to_string() + &workload("b1", "app: books", "10.0.0.1", 4143).replace("port: 7000", "port: 8080")));
    let federated = "apiVersion: v1\nkind: Service\nmetadata: {name: books-federated, namespace: demo, annotations: {multicluster.linkerd.io/local-discovery: books, multicluster.linkerd.io/remote-discovery: books@east}}\nspec: {ports: [{port: 8080}]}\n";
    load(&index, "federated", federated);
    let remote = "apiVersion: workload.linkerd.io/v1beta1\nkind: ExternalWorkload\nmetadata: {name: mirror/books-federated/east/10.1.0.9, namespace: demo, labels: {knit.dev/endpointslice-service: books-federated}}\nspec: {workloadIPs: [{ip: 10.1.0.9}], ports: [{port: 8080}]}\n";
    let mut rx = index.endpoints(&SvcPort { ns: "demo".into(), name: "books-federated".into(), port: 8080 });
    let addrs =
        |rx: &mut watch::Receiver<Arc<EndpointsView>>| rx.borrow_and_update().as_ref().clone().unwrap().addrs.keys().map(|a| a.to_string()).collect::<Vec<_>>();
    assert_eq!(addrs(&mut rx), ["10.0.0.1:8080"]);
    for round in 0..2 {
        load(&index, "mirror", remote);
        assert_eq!(addrs(&mut rx), ["10.0.0.1:8080", "10.1.0.9:8080"], "round {round}: the remote member joins");
        index.reset("mirror", vec![]);
        assert_eq!(addrs(&mut rx), ["10.0.0.1:8080"], "round {round}: and leaves");
    }
    // The local member's endpoints follow its workloads.
    load(&index, "mirror", remote);
    load(&index, "local.yaml", local);
    assert_eq!(addrs(&mut rx), ["10.1.0.9:8080"]);
}
