//! Discovery over real gRPC: knit-control in local mode on 127.0.0.1 serving the manifests in
//! `tests/manifests`. The messages are checked whole (golden) where the wire contract fixes
//! them, and for every field LINKERD-WIRE.md marks required where they are large; manifest edits
//! must reach open streams (the delay is printed, not asserted).

use super::{metrics, pki};
use knit_control::{
    config::{Config, IdentityConfig},
    Control,
};
use linkerd2_proxy_api::{
    destination::{self as dst, destination_client::DestinationClient, protocol_hint, tls_identity, update},
    inbound::{self as inb, authn, inbound_server_policies_client::InboundServerPoliciesClient},
    meta::{metadata, Metadata, Resource},
    net::TcpAddress,
    outbound::{self as outb, backend, http_route::distribution, outbound_policies_client::OutboundPoliciesClient, proxy_protocol, traffic_spec},
};
use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};
use tonic::{transport::Channel, Code, Streaming};

struct Local {
    addrs: knit_control::Addrs,
    manifests: PathBuf,
}

impl Local {
    async fn start(name: &str) -> Self {
        Self::start_polling(name, Duration::from_millis(20)).await
    }

    async fn start_polling(name: &str, poll: Duration) -> Self {
        let pki = pki(name);
        let manifests = pki.dir.join("manifests");
        std::fs::create_dir_all(&manifests).unwrap();
        for f in ["app.yaml", "workloads.yaml", "policy.yaml"] {
            std::fs::copy(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/manifests").join(f), manifests.join(f)).unwrap();
        }
        let mut config = Config::local(IdentityConfig::for_dir(&pki.dir));
        config.discovery.config_dir = Some(manifests.clone());
        config.discovery.config_poll_interval = poll;
        let control = Control::bind(config).await.expect("control plane starts");
        let addrs = control.addrs();
        tokio::spawn(control.run(std::future::pending()));
        Self { addrs, manifests }
    }

    async fn channel(addr: SocketAddr) -> Channel {
        Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
    }

    /// Rewrites a manifest file through a rename, as editors and `kubectl`-style tools do.
    fn edit(&self, file: &str, f: impl FnOnce(String) -> String) -> Instant {
        let path = self.manifests.join(file);
        let text = f(std::fs::read_to_string(&path).unwrap());
        let tmp = self.manifests.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        let at = Instant::now();
        std::fs::rename(&tmp, &path).unwrap();
        at
    }
}

async fn next<T>(stream: &mut Streaming<T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), stream.message()).await.expect("an update within 5s").expect("stream ok").expect("stream open")
}

fn resource(group: &str, kind: &str, name: &str, port: u32) -> Option<Metadata> {
    let r = Resource { group: group.into(), kind: kind.into(), name: name.into(), namespace: "demo".into(), section: String::new(), port };
    Some(Metadata { kind: Some(metadata::Kind::Resource(r)) })
}

fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

const BOOKS_ID: &str = "books.demo.serviceaccount.identity.knit.cluster.local";

#[tokio::test]
async fn destination_streams_endpoints_and_their_changes() {
    let cp = Local::start("dst").await;
    let mut client = DestinationClient::new(Local::channel(cp.addrs.destination).await);
    let get = |path: &str| dst::GetDestination { scheme: String::new(), path: path.into(), context_token: r#"{"ns":"demo"}"#.into() };
    let mut stream = client.get(get("books-v1.demo.svc.cluster.local:8080")).await.unwrap().into_inner();

    let id = || Some(tls_identity::DnsLikeIdentity { name: BOOKS_ID.into() });
    let expected = dst::WeightedAddr {
        addr: Some(TcpAddress::from("10.1.0.1:7001".parse::<SocketAddr>().unwrap())),
        weight: 10_000,
        metric_labels: labels(&[("deployment", "books-v1"), ("pod", "books-v1"), ("serviceaccount", "books")]),
        tls_identity: Some(dst::TlsIdentity { strategy: Some(tls_identity::Strategy::DnsLikeIdentity(id().unwrap())), server_name: id() }),
        protocol_hint: Some(dst::ProtocolHint {
            protocol: Some(protocol_hint::Protocol::H2(protocol_hint::H2 {})),
            opaque_transport: Some(protocol_hint::OpaqueTransport { inbound_port: 4150 }),
        }),
        ..Default::default()
    };
    let first = next(&mut stream).await;
    let set = labels(&[("namespace", "demo"), ("service", "books-v1")]);
    assert_eq!(first.update, Some(update::Update::Add(dst::WeightedAddrSet { addrs: vec![expected.clone()], metric_labels: set.clone() })));

    // An unmeshed endpoint has neither TLS identity nor hints; the short name resolves in the caller's namespace.
    let mut authors = client.get(get("authors:7000")).await.unwrap().into_inner();
    let Some(update::Update::Add(a)) = next(&mut authors).await.update else { panic!("add expected") };
    assert!(a.addrs[0].tls_identity.is_none() && a.addrs[0].protocol_hint.is_none(), "{a:?}");

    // The workload moves: the old address is removed and the new one added.
    let written = cp.edit("workloads.yaml", |t| t.replacen("10.1.0.1", "10.1.0.2", 1));
    let removed = next(&mut stream).await;
    let latency = written.elapsed();
    assert_eq!(removed.update, Some(update::Update::Remove(dst::AddrSet { addrs: vec![TcpAddress::from("10.1.0.1:7001".parse::<SocketAddr>().unwrap())] })));
    let added = next(&mut stream).await;
    let moved = dst::WeightedAddr { addr: Some(TcpAddress::from("10.1.0.2:7001".parse::<SocketAddr>().unwrap())), ..expected };
    assert_eq!(added.update, Some(update::Update::Add(dst::WeightedAddrSet { addrs: vec![moved], metric_labels: set })));
    eprintln!("manifest write -> Destination update: {latency:?} (poll interval 20ms)");

    // Deleting the Service ends in no_endpoints{exists: false}.
    cp.edit("app.yaml", |t| t.replace("name: books-v1,", "name: books-v0,"));
    assert_eq!(next(&mut stream).await.update, Some(update::Update::NoEndpoints(dst::NoEndpoints { exists: false })));

    let err = client.get(get("nothing.demo.svc.cluster.local:80")).await.err().unwrap();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let err = client.get(get("10.1.0.1:7001")).await.err().unwrap();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // A workload address has a profile carrying its endpoint; an unknown one has none.
    let mut profile = client.get_profile(get("10.1.0.3:7000")).await.unwrap().into_inner();
    assert!(next(&mut profile).await.endpoint.is_some());
    assert_eq!(client.get_profile(get("10.200.0.1:80")).await.err().unwrap().code(), Code::InvalidArgument);
}

/// Every field LINKERD-WIRE.md §4.2 says linkerd2-proxy requires.
fn check_required(p: &outb::OutboundPolicy) {
    assert!(p.metadata.is_some(), "policy metadata");
    let check_backend = |b: &outb::Backend| {
        assert!(b.metadata.is_some() && b.queue.as_ref().is_some_and(|q| q.failfast_timeout.is_some()), "backend metadata and queue: {b:?}");
        if let Some(backend::Kind::Balancer(p2c)) = &b.kind {
            assert!(p2c.discovery.is_some(), "discovery");
            match p2c.load.as_ref().expect("load") {
                backend::balance_p2c::Load::PeakEwma(l) => assert!(l.default_rtt.is_some() && l.decay.is_some()),
                backend::balance_p2c::Load::PenaltyPeakEwma(l) => assert!(l.default_rtt.is_some() && l.decay.is_some() && l.penalty.is_some()),
            }
        }
    };
    let check_http = |routes: &[outb::HttpRoute]| {
        assert!(!routes.is_empty());
        for r in routes {
            assert!(r.metadata.is_some(), "route metadata");
            for rule in &r.rules {
                if let Some(retry) = &rule.retry {
                    let ranges = &retry.conditions.as_ref().expect("retry conditions").status_ranges;
                    assert!(ranges.iter().all(|s| (1..600).contains(&s.start) && s.start <= s.end));
                }
                match rule.backends.as_ref().and_then(|b| b.kind.as_ref()).expect("backends") {
                    distribution::Kind::FirstAvailable(f) => f.backends.iter().for_each(|b| check_backend(b.backend.as_ref().unwrap())),
                    distribution::Kind::RandomAvailable(r) => {
                        r.backends.iter().for_each(|b| check_backend(b.backend.as_ref().unwrap().backend.as_ref().unwrap()))
                    }
                    distribution::Kind::Empty(_) => {}
                }
            }
        }
    };
    match p.protocol.as_ref().and_then(|p| p.kind.as_ref()).expect("protocol") {
        proxy_protocol::Kind::Detect(d) => {
            assert!(d.timeout.is_some() && d.opaque.is_some(), "detect timeout and opaque");
            check_http(&d.http1.as_ref().expect("detect.http1").routes);
            check_http(&d.http2.as_ref().expect("detect.http2").routes);
            let opaque = &d.opaque.as_ref().unwrap().routes;
            assert!(opaque.len() == 1 && opaque[0].rules.len() == 1 && opaque[0].metadata.is_some(), "one opaque route with one rule");
        }
        proxy_protocol::Kind::Http1(h) => check_http(&h.routes),
        proxy_protocol::Kind::Http2(h) => check_http(&h.routes),
        other => panic!("unexpected protocol {other:?}"),
    }
}

fn split_weights(p: &outb::OutboundPolicy) -> Vec<u32> {
    let Some(proxy_protocol::Kind::Detect(d)) = p.protocol.as_ref().and_then(|p| p.kind.as_ref()) else { panic!("detect") };
    let Some(distribution::Kind::RandomAvailable(r)) = d.http1.as_ref().unwrap().routes[0].rules[0].backends.as_ref().unwrap().kind.clone() else {
        panic!("random")
    };
    r.backends.iter().map(|b| b.weight).collect()
}

/// With the poll an hour apart, only inotify can bring a change: a rename over the file, a
/// write in place, a kubelet-style volume update (the `..data` symlink swapped to a new
/// directory) and a removal each reach a Destination stream.
#[tokio::test]
async fn changes_are_read_when_they_happen_not_at_the_next_poll() {
    let cp = Local::start_polling("inotify", Duration::from_secs(3600)).await;
    let mut client = DestinationClient::new(Local::channel(cp.addrs.destination).await);
    let get = |path: &str| dst::GetDestination { scheme: String::new(), path: path.into(), context_token: r#"{"ns":"demo"}"#.into() };
    let mut stream = client.get(get("books-v1.demo.svc.cluster.local:8080")).await.unwrap().into_inner();
    let addr = |ip: &str| TcpAddress::from(format!("{ip}:7001").parse::<SocketAddr>().unwrap());
    let added = |u: dst::Update| match u.update {
        Some(update::Update::Add(set)) => set.addrs.into_iter().map(|a| a.addr.unwrap()).collect::<Vec<_>>(),
        other => panic!("an add expected, got {other:?}"),
    };
    let removed = |u: dst::Update| match u.update {
        Some(update::Update::Remove(set)) => set.addrs,
        other => panic!("a remove expected, got {other:?}"),
    };
    assert_eq!(added(next(&mut stream).await), [addr("10.1.0.1")]);

    // A rename over the file (editors, kubectl-style tools).
    cp.edit("workloads.yaml", |t| t.replacen("10.1.0.1", "10.1.0.2", 1));
    assert_eq!(removed(next(&mut stream).await), [addr("10.1.0.1")]);
    assert_eq!(added(next(&mut stream).await), [addr("10.1.0.2")]);

    // A write in place.
    let path = cp.manifests.join("workloads.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replacen("10.1.0.2", "10.1.0.3", 1)).unwrap();
    assert_eq!(removed(next(&mut stream).await), [addr("10.1.0.2")]);
    assert_eq!(added(next(&mut stream).await), [addr("10.1.0.3")]);

    // A ConfigMap volume: the file is a symlink into ..data, which the kubelet points at a new
    // directory in one rename.
    let volume = |version: &str, text: &str| {
        let dir = cp.manifests.join(format!("..{version}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("workloads.yaml"), text).unwrap();
        let tmp = cp.manifests.join("..data_tmp");
        std::os::unix::fs::symlink(format!("..{version}"), &tmp).unwrap();
        std::fs::rename(&tmp, cp.manifests.join("..data")).unwrap();
    };
    let text = std::fs::read_to_string(&path).unwrap();
    volume("2026_12_04_v1", &text.replacen("10.1.0.3", "10.1.0.4", 1));
    let link = cp.manifests.join(".workloads.yaml.link");
    std::os::unix::fs::symlink("..data/workloads.yaml", &link).unwrap();
    std::fs::rename(&link, &path).unwrap();
    assert_eq!(removed(next(&mut stream).await), [addr("10.1.0.3")]);
    assert_eq!(added(next(&mut stream).await), [addr("10.1.0.4")]);
    volume("2026_12_04_v2", &text.replacen("10.1.0.3", "10.1.0.5", 1));
    assert_eq!(removed(next(&mut stream).await), [addr("10.1.0.4")]);
    assert_eq!(added(next(&mut stream).await), [addr("10.1.0.5")]);

    // A removal: the workload's endpoint goes with its file.
    std::fs::remove_file(&path).unwrap();
    assert_eq!(removed(next(&mut stream).await), [addr("10.1.0.5")]);
}

#[tokio::test]
async fn outbound_policies_are_complete_and_follow_edits() {
    let cp = Local::start("outbound").await;
    let mut client = OutboundPoliciesClient::new(Local::channel(cp.addrs.policy).await);
    let spec = |target| outb::TrafficSpec { source_workload: r#"{"ns":"demo","external_workload":"web"}"#.into(), target: Some(target) };
    let mut books = client.watch(spec(traffic_spec::Target::Authority("books.demo.svc.cluster.local:8080".into()))).await.unwrap().into_inner();
    let policy = next(&mut books).await;
    check_required(&policy);
    assert_eq!(policy.metadata, resource("core", "Service", "books", 8080));
    assert_eq!(split_weights(&policy), [90, 10]);
    // The cluster IP names the same Service and gets the same policy.
    let by_ip = client.get(spec(traffic_spec::Target::Addr("10.96.0.20:8080".parse::<SocketAddr>().unwrap().into()))).await.unwrap().into_inner();
    assert_eq!(by_ip, policy);

    // authors: appProtocol http, consecutive failure accrual, penalties.
    let authors = client.get(spec(traffic_spec::Target::Authority("authors:7000".into()))).await.unwrap().into_inner();
    check_required(&authors);
    let Some(proxy_protocol::Kind::Http1(h)) = authors.protocol.unwrap().kind else { panic!("http1") };
    assert!(h.failure_accrual.is_some());

    let written = cp.edit("app.yaml", |t| t.replace("weight: 90}", "weight: 0}").replace("weight: 10}", "weight: 100}"));
    let updated = next(&mut books).await;
    eprintln!("manifest write -> OutboundPolicies update: {:?} (poll interval 20ms)", written.elapsed());
    assert_eq!(split_weights(&updated), [0, 100]);

    for target in [traffic_spec::Target::Authority("nothing.demo.svc.cluster.local:80".into()), traffic_spec::Target::Authority("example.com:443".into())] {
        assert_eq!(client.watch(spec(target)).await.err().unwrap().code(), Code::NotFound);
    }

    // Each port serves its own services only.
    let mut wrong_port = DestinationClient::new(Local::channel(cp.addrs.policy).await);
    let get = dst::GetDestination { path: "books.demo.svc.cluster.local:8080".into(), ..Default::default() };
    let err = wrong_port.get(get).await.expect_err("no Destination on the policy port");
    assert_eq!(err.code(), Code::Unimplemented, "{err:?}");

    // The Service's file goes: its watch ends, saying so.
    std::fs::remove_file(cp.manifests.join("app.yaml")).unwrap();
    let gone = tokio::time::timeout(Duration::from_secs(5), books.message()).await.expect("an answer within 5s").expect_err("the watch ends");
    assert_eq!(gone.code(), Code::NotFound, "{gone:?}");
    assert!(gone.message().contains("no longer exists"), "{gone:?}");
}

#[tokio::test]
async fn inbound_server_policy_golden() {
    let cp = Local::start("inbound").await;
    let mut client = InboundServerPoliciesClient::new(Local::channel(cp.addrs.policy).await);
    let port = |workload: &str, port| inb::PortSpec { workload: workload.into(), port };
    let mut stream = client.watch_port(port(r#"{"ns":"demo","external_workload":"books-v1"}"#, 7001)).await.unwrap().into_inner();
    let net = |s: &str| Some(s.parse::<ipnet::IpNet>().unwrap().into());
    let identities = authn::permit_mesh_tls::PermitClientIdentities {
        identities: vec![inb::Identity { name: "web.demo.serviceaccount.identity.knit.cluster.local".into() }],
        suffixes: vec![],
    };
    let expected = inb::Server {
        protocol: Some(inb::ProxyProtocol {
            kind: Some(inb::proxy_protocol::Kind::Http1(inb::proxy_protocol::Http1 {
                routes: vec![],
                local_rate_limit: Some(inb::HttpLocalRateLimit {
                    metadata: resource("policy.linkerd.io", "HTTPLocalRateLimitPolicy", "books-limit", 0),
                    total: Some(inb::http_local_rate_limit::Limit { requests_per_second: 100 }),
                    identity: None,
                    overrides: vec![],
                }),
            })),
        }),
        server_ips: vec![],
        authorizations: vec![inb::Authz {
            networks: vec![inb::Network { net: net("10.0.0.0/8"), except: vec![net("10.9.0.0/16").unwrap()] }],
            authentication: Some(inb::Authn {
                permit: Some(authn::Permit::MeshTls(authn::PermitMeshTls { clients: Some(authn::permit_mesh_tls::Clients::Identities(identities)) })),
            }),
            labels: labels(&[("group", "policy.linkerd.io"), ("kind", "authorizationpolicy"), ("name", "books-from-web")]),
            metadata: resource("policy.linkerd.io", "authorizationpolicy", "books-from-web", 0),
        }],
        labels: labels(&[("group", "policy.linkerd.io"), ("kind", "server"), ("name", "books-http")]),
    };
    assert_eq!(next(&mut stream).await, expected);

    // Removing the Server falls back to the default policy, which allows everyone.
    cp.edit("policy.yaml", |t| {
        t.replace("name: books-http, namespace", "name: books-old, namespace").replace("matchLabels: {app: books}", "matchLabels: {app: none}")
    });
    let default = next(&mut stream).await;
    assert_eq!(default.labels, labels(&[("group", ""), ("kind", "default"), ("name", "all-unauthenticated")]));
    let Some(inb::proxy_protocol::Kind::Detect(d)) = default.protocol.unwrap().kind else { panic!("detect") };
    assert!(d.timeout.is_some(), "detect timeout is required");
    assert!(default.authorizations.iter().all(|a| !a.networks.is_empty()), "authorizations without networks are invalid");

    assert_eq!(client.watch_port(port("nonsense", 7001)).await.err().unwrap().code(), Code::InvalidArgument);
    assert_eq!(client.watch_port(port(r#"{"ns":"demo","external_workload":"ghost"}"#, 7001)).await.err().unwrap().code(), Code::NotFound);
}

#[tokio::test]
async fn an_invalid_manifest_is_reported_and_takes_nothing_down() {
    let cp = Local::start("invalid").await;
    let mut client = DestinationClient::new(Local::channel(cp.addrs.destination).await);
    let get = dst::GetDestination { path: "books-v1.demo.svc.cluster.local:8080".into(), ..Default::default() };
    let mut stream = client.get(get.clone()).await.unwrap().into_inner();
    next(&mut stream).await;

    // Break the workloads file: its first document gains a bad field, a second one is garbage.
    cp.edit("workloads.yaml", |t| t.replacen("ports: [{name: http, port: 7001}]", "ports: [{name: http, port: seventy}]", 1) + "---\nkind: [oops\n");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !metrics(cp.addrs.admin).await.contains(r#"manifest_invalid_documents{file="workloads.yaml"} 2"#) {
        assert!(Instant::now() < deadline, "the invalid documents are counted: {}", metrics(cp.addrs.admin).await);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The endpoint the broken document described is still served, to open and new streams.
    let mut fresh = client.get(get).await.unwrap().into_inner();
    let Some(update::Update::Add(set)) = next(&mut fresh).await.update else { panic!("add") };
    assert_eq!(set.addrs.len(), 1, "still served while the file is invalid");
    assert!(tokio::time::timeout(Duration::from_millis(300), stream.message()).await.is_err(), "no update reached the open stream");
}

/// Opaque, TLS and egress policies over gRPC, with the fields LINKERD-WIRE.md §4.2 and §13 fix.
#[tokio::test]
async fn tcp_tls_and_egress_policies_golden() {
    let cp = Local::start("opaque-egress").await;
    let extra = r#"
apiVersion: v1
kind: Service
metadata: {name: db, namespace: demo}
spec: {selector: {app: db}, clusterIP: 10.96.0.30, ports: [{port: 5432, targetPort: 5432}]}
---
apiVersion: v1
kind: Service
metadata: {name: db-a, namespace: demo}
spec: {selector: {app: db, shard: a}, ports: [{port: 5432}]}
---
apiVersion: v1
kind: Service
metadata: {name: db-b, namespace: demo}
spec: {selector: {app: db, shard: b}, ports: [{port: 5432}]}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TCPRoute
metadata: {name: db-split, namespace: demo}
spec:
  parentRefs: [{kind: Service, name: db, port: 5432}]
  rules: [{backendRefs: [{name: db-a, port: 5432, weight: 70}, {name: db-b, port: 5432, weight: 30}]}]
---
apiVersion: v1
kind: Service
metadata: {name: front, namespace: demo}
spec: {selector: {app: front}, ports: [{port: 443}]}
---
apiVersion: gateway.networking.k8s.io/v1alpha2
kind: TLSRoute
metadata: {name: secure, namespace: demo}
spec:
  parentRefs: [{kind: Service, name: front}]
  hostnames: ["*.example.com"]
  rules: [{backendRefs: [{name: front, port: 443}]}]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: EgressNetwork
metadata: {name: internet, namespace: demo}
spec: {trafficPolicy: Deny}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api, namespace: demo}
spec:
  parentRefs: [{group: policy.linkerd.io, kind: EgressNetwork, name: internet}]
  hostnames: [api.example.com]
  rules: [{backendRefs: [{group: policy.linkerd.io, kind: EgressNetwork, name: internet}]}]
---
apiVersion: policy.linkerd.io/v1alpha1
kind: EgressNetwork
metadata: {name: partners, namespace: linkerd-egress}
spec: {networks: [{cidr: 198.51.100.0/24}], trafficPolicy: Allow}
"#;
    std::fs::write(cp.manifests.join("extra.yaml"), extra).unwrap();
    let mut client = OutboundPoliciesClient::new(Local::channel(cp.addrs.policy).await);
    let spec = |ns: &str, target| outb::TrafficSpec { source_workload: format!(r#"{{"ns":"{ns}","external_workload":"web"}}"#), target: Some(target) };
    let by_name = |a: &str| traffic_spec::Target::Authority(a.into());
    let by_addr = |a: &str| traffic_spec::Target::Addr(a.parse::<SocketAddr>().unwrap().into());
    // The directory is polled: wait for the file to be read.
    let mut db = None;
    for _ in 0..100 {
        if let Ok(p) = client.get(spec("demo", by_name("db.demo.svc.cluster.local:5432"))).await {
            db = Some(p.into_inner());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let db = db.expect("the db Service's policy");

    // A TCPRoute on a default opaque port: one opaque route, its backends by weight.
    assert_eq!(db.metadata, resource("core", "Service", "db", 5432));
    let Some(proxy_protocol::Kind::Opaque(o)) = db.protocol.and_then(|p| p.kind) else { panic!("opaque") };
    let [route] = &o.routes[..] else { panic!("one route: {:?}", o.routes) };
    assert_eq!(route.metadata, resource("gateway.networking.k8s.io", "TCPRoute", "db-split", 0));
    let [rule] = &route.rules[..] else { panic!("one rule") };
    let Some(outb::opaque_route::distribution::Kind::RandomAvailable(r)) = rule.backends.as_ref().and_then(|b| b.kind.clone()) else { panic!("random") };
    assert_eq!(r.backends.iter().map(|b| b.weight).collect::<Vec<_>>(), [70, 30]);
    for b in &r.backends {
        let backend = b.backend.as_ref().unwrap().backend.as_ref().unwrap();
        assert!(backend.metadata.is_some() && backend.queue.as_ref().is_some_and(|q| q.failfast_timeout.is_some()));
        let Some(backend::Kind::Balancer(p2c)) = &backend.kind else { panic!("balancer") };
        assert!(matches!(p2c.load, Some(backend::balance_p2c::Load::PeakEwma(_))), "opaque balancers see no responses: plain PeakEWMA");
    }
    // The cluster IP answers the same.
    let by_ip = client.get(spec("demo", by_addr("10.96.0.30:5432"))).await.unwrap().into_inner();
    assert_eq!(by_ip.metadata, resource("core", "Service", "db", 5432));

    // A TLSRoute: routes by SNI, each with one rule.
    let front = client.get(spec("demo", by_name("front.demo:443"))).await.unwrap().into_inner();
    let Some(proxy_protocol::Kind::Tls(t)) = front.protocol.and_then(|p| p.kind) else { panic!("tls") };
    let [route] = &t.routes[..] else { panic!("one TLS route") };
    assert_eq!(route.metadata, resource("gateway.networking.k8s.io", "TLSRoute", "secure", 0));
    use linkerd2_proxy_api::tls_route::sni_match::{Match, Suffix};
    assert_eq!(route.snis[0].r#match, Some(Match::Suffix(Suffix { reverse_labels: vec!["com".into(), "example".into()] })));
    assert_eq!(route.rules.len(), 1);

    // Egress from demo: its own EgressNetwork (everything outside the cluster), user routes
    // first, then the default deny route; the default backend forwards to the address.
    let egress = client.get(spec("demo", by_addr("203.0.113.7:443"))).await.unwrap().into_inner();
    assert_eq!(
        egress.metadata,
        Some(Metadata {
            kind: Some(metadata::Kind::Resource(Resource {
                group: "policy.linkerd.io".into(),
                kind: "EgressNetwork".into(),
                name: "internet".into(),
                namespace: "demo".into(),
                section: String::new(),
                port: 443
            }))
        })
    );
    let Some(proxy_protocol::Kind::Detect(d)) = egress.protocol.clone().and_then(|p| p.kind) else { panic!("detect") };
    assert!(d.timeout.is_some());
    let names: Vec<String> = d.http1.as_ref().unwrap().routes.iter().map(|r| format!("{:?}", r.metadata.as_ref().unwrap().kind.as_ref().unwrap())).collect();
    assert!(names[0].contains("\"api\"") && names[1].contains("http-egress-deny"), "{names:?}");
    let deny = &d.http1.as_ref().unwrap().routes[1].rules[0];
    let Some(outb::http_route::filter::Kind::FailureInjector(fi)) = deny.filters[0].kind.clone() else { panic!("failure injector") };
    assert_eq!((fi.status, fi.message.as_str()), (403, "traffic not allowed"));
    let Some(distribution::Kind::FirstAvailable(f)) = deny.backends.as_ref().unwrap().kind.clone() else { panic!("first available") };
    let Some(backend::Kind::Forward(addr)) = f.backends[0].backend.as_ref().unwrap().kind.clone() else { panic!("forward") };
    assert_eq!(addr.addr, Some(TcpAddress::from("203.0.113.7:443".parse::<SocketAddr>().unwrap())));
    assert!(addr.tls_identity.is_none(), "outside the mesh: no identity");
    let opaque = &d.opaque.as_ref().unwrap().routes[0];
    assert!(format!("{:?}", opaque.metadata).contains("tcp-egress-deny"));
    assert!(matches!(opaque.rules[0].filters[0].kind, Some(outb::opaque_route::filter::Kind::Forbidden(_))));

    // From a namespace without EgressNetworks: the global namespace's, then the fallback.
    let partner = client.get(spec("other", by_addr("198.51.100.9:80"))).await.unwrap().into_inner();
    assert!(format!("{:?}", partner.metadata).contains("partners"), "{:?}", partner.metadata);
    let fallback = client.get(spec("other", by_addr("192.0.2.1:80"))).await.unwrap().into_inner();
    assert_eq!(fallback.metadata, Some(Metadata { kind: Some(metadata::Kind::Default("egress-fallback".into())) }));
    // An in-cluster address that is no Service's: the proxy falls back on its own.
    assert_eq!(client.get(spec("demo", by_addr("10.1.2.3:80"))).await.err().unwrap().code(), Code::NotFound);
}
