//! The remote of a Kubernetes-mode Link, followed through real `kube::Client`s and sockets: a
//! fake API server for each cluster (this one holds the credentials Secret; the linked one lists
//! and watches recorded objects, `tests/k8s/*.json`), the mirrors made from what it exports, and
//! what Destination answers for them.

use super::*;
use crate::{
    index::SvcPort,
    multicluster::{mirror::mirrors, LinkSettings},
    resources::{parse, Resource},
};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use std::{
    collections::BTreeMap,
    convert::Infallible,
    sync::{Arc, Mutex},
};
use tokio::sync::broadcast;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A fake API server: named objects, collections listed and watched, events pushed by the test.
#[derive(Clone)]
struct Api {
    /// Collection path (`/api/v1/services`) -> objects by `namespace/name`.
    objects: Arc<Mutex<BTreeMap<String, BTreeMap<String, Value>>>>,
    events: broadcast::Sender<(String, Value)>,
    version: Arc<Mutex<u64>>,
    url: String,
}

const COLLECTIONS: [(&str, &str); 4] = [
    ("/api/v1/namespaces", "NamespaceList"),
    ("/api/v1/services", "ServiceList"),
    ("/api/v1/pods", "PodList"),
    ("/apis/discovery.k8s.io/v1/endpointslices", "EndpointSliceList"),
];

impl Api {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = Api {
            objects: Default::default(),
            events: broadcast::channel(64).0,
            version: Arc::new(Mutex::new(100)),
            url: format!("http://{}", listener.local_addr().unwrap()),
        };
        let served = api.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let api = served.clone();
                let svc = service_fn(move |req: Request<Incoming>| {
                    let api = api.clone();
                    async move { Ok::<_, Infallible>(api.answer(&req)) }
                });
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(tcp), svc));
            }
        });
        api
    }

    fn collection(kind: &str) -> &'static str {
        match kind {
            "Namespace" => COLLECTIONS[0].0,
            "Service" => COLLECTIONS[1].0,
            "Pod" => COLLECTIONS[2].0,
            "EndpointSlice" => COLLECTIONS[3].0,
            "Secret" => "/api/v1/secrets",
            other => panic!("the fake API has no {other}"),
        }
    }

    fn key(o: &Value) -> String {
        format!("{}/{}", o["metadata"]["namespace"].as_str().unwrap_or_default(), o["metadata"]["name"].as_str().unwrap())
    }

    fn bump(&self, o: &mut Value) {
        let mut v = self.version.lock().unwrap();
        *v += 1;
        o["metadata"]["resourceVersion"] = json!(v.to_string());
    }

    /// Creates or replaces an object, telling watchers.
    fn apply(&self, mut o: Value) {
        self.bump(&mut o);
        let path = Self::collection(o["kind"].as_str().unwrap());
        let added = self.objects.lock().unwrap().entry(path.to_string()).or_default().insert(Self::key(&o), o.clone()).is_none();
        let _ = self.events.send((path.to_string(), json!({"type": if added { "ADDED" } else { "MODIFIED" }, "object": o})));
    }

    fn delete(&self, kind: &str, namespace: &str, name: &str) {
        let path = Self::collection(kind);
        let removed = self.objects.lock().unwrap().get_mut(path).and_then(|m| m.remove(&format!("{namespace}/{name}")));
        if let Some(mut o) = removed {
            self.bump(&mut o);
            let _ = self.events.send((path.to_string(), json!({"type": "DELETED", "object": o})));
        }
    }

    fn answer(&self, req: &Request<Incoming>) -> Response<Body> {
        let path = req.uri().path();
        let watch = req.uri().query().unwrap_or_default().split('&').any(|q| q == "watch=true" || q == "watch=1");
        let json_rsp = |status: u16, v: Value| {
            Response::builder().status(status).header("content-type", "application/json").body(Full::new(Bytes::from(v.to_string())).boxed()).unwrap()
        };
        // GET /api/v1/namespaces/NS/secrets/NAME
        if let Some(rest) = path.strip_prefix("/api/v1/namespaces/") {
            if let Some((ns, name)) = rest.split_once("/secrets/") {
                let found = self.objects.lock().unwrap().get("/api/v1/secrets").and_then(|m| m.get(&format!("{ns}/{name}")).cloned());
                return match found {
                    Some(o) => json_rsp(200, o),
                    None => json_rsp(
                        404,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
                        "message": format!("secrets \"{name}\" not found")}),
                    ),
                };
            }
        }
        let Some((_, list_kind)) = COLLECTIONS.iter().find(|(p, _)| *p == path) else {
            return json_rsp(
                404,
                json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
            );
        };
        if watch {
            let mut events = self.events.subscribe();
            let path = path.to_string();
            let stream = async_stream(move |tx| async move {
                while let Ok((p, e)) = events.recv().await {
                    if p == path && tx.send(Ok(hyper::body::Frame::data(Bytes::from(format!("{e}\n"))))).await.is_err() {
                        return;
                    }
                }
            });
            return Response::builder().header("content-type", "application/json").body(StreamBody::new(stream).boxed()).unwrap();
        }
        let items: Vec<Value> = self.objects.lock().unwrap().get(path).map(|m| m.values().cloned().collect()).unwrap_or_default();
        let version = self.version.lock().unwrap().to_string();
        json_rsp(200, json!({"kind": list_kind, "apiVersion": "v1", "metadata": {"resourceVersion": version}, "items": items}))
    }

    /// A kubeconfig for this server.
    fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: east\n  cluster: {{server: '{}'}}\ncontexts:\n- name: east\n  context: {{cluster: east, user: mirror}}\ncurrent-context: east\nusers:\n- name: mirror\n  user: {{token: remote-access-token}}\n",
            self.url
        )
    }

    fn client(&self) -> kube::Client {
        kube::Client::try_from(kube::Config::new(self.url.parse().unwrap())).unwrap()
    }
}

/// The body of a watch: frames sent by `f` through a channel.
fn async_stream<F, Fut>(f: F) -> impl futures_util::Stream<Item = Result<hyper::body::Frame<Bytes>, Infallible>>
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<hyper::body::Frame<Bytes>, Infallible>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(f(tx));
    tokio_stream_from(rx)
}

fn tokio_stream_from<T: Send + 'static>(mut rx: tokio::sync::mpsc::Receiver<T>) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn recorded(file: &str) -> Value {
    let path = format!("{}/tests/k8s/{file}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The credentials Secret as `linkerd multicluster link` writes it.
fn secret(kubeconfig: &str, trust_domain: Option<&str>) -> Value {
    use base64::Engine;
    let mut s = json!({
        "apiVersion": "v1", "kind": "Secret", "type": "mirror.linkerd.io/remote-kubeconfig",
        "metadata": {"name": "cluster-credentials-east", "namespace": "linkerd-multicluster",
            "labels": {"multicluster.linkerd.io/cluster-name": "east"},
            "annotations": {"multicluster.linkerd.io/cluster-domain": "cluster.local"}},
        "data": {"kubeconfig": base64::engine::general_purpose::STANDARD.encode(kubeconfig)},
    });
    if let Some(d) = trust_domain {
        s["metadata"]["annotations"][TRUST_DOMAIN_ANNOTATION] = json!(d);
    }
    s
}

const LINK: &str = "apiVersion: multicluster.linkerd.io/v1alpha3
kind: Link
metadata: {name: east, namespace: linkerd-multicluster}
spec:
  targetClusterName: east
  targetClusterDomain: cluster.local
  clusterCredentialsSecret: cluster-credentials-east
  gatewayAddress: 172.18.0.40
  gatewayIdentity: linkerd-gateway.linkerd-multicluster.serviceaccount.identity.linkerd.east.local
  selector: {matchLabels: {mirror.linkerd.io/exported: 'true'}}
  remoteDiscoverySelector: {matchLabels: {mirror.linkerd.io/exported: remote-discovery}}
";

fn link() -> LinkSettings {
    let (resources, errors) = parse("link.yaml", LINK);
    match resources.first() {
        Some(Resource::Link(l)) => LinkSettings::of(l).unwrap(),
        _ => panic!("{errors:?}"),
    }
}

fn request(l: &LinkSettings) -> ExportRequest {
    ExportRequest { selector: l.selector.clone(), remote_discovery_selector: l.remote_discovery_selector.clone(), federated_service_selector: None }
}

/// The remote: the demo Namespace, `books` exported through the gateway with one ready pod, and
/// `authors` exported flat with one ready pod.
fn remote_objects(api: &Api) {
    api.apply(recorded("namespace.json"));
    let mut books = recorded("service.json");
    books["metadata"]["labels"]["mirror.linkerd.io/exported"] = json!("true");
    api.apply(books);
    let mut authors = recorded("service.json");
    authors["metadata"]["name"] = json!("authors");
    authors["metadata"]["labels"] = json!({"app": "authors", "mirror.linkerd.io/exported": "remote-discovery"});
    authors["spec"]["selector"] = json!({"app": "authors"});
    api.apply(authors);
    api.apply(recorded("pod-books-1.json"));
    let mut pod = recorded("pod-books-2.json");
    pod["metadata"]["name"] = json!("authors-0");
    pod["metadata"]["labels"]["app"] = json!("authors");
    pod["spec"]["serviceAccountName"] = json!("authors");
    api.apply(pod);
}

#[derive(Default)]
struct Seen {
    snapshots: Mutex<Vec<Snapshot>>,
    connected: Mutex<Vec<Option<String>>>,
}

impl Sink for Arc<Seen> {
    fn snapshot(&self, s: Snapshot) {
        self.snapshots.lock().unwrap().push(s);
    }
    fn connected(&self, e: Option<String>) {
        self.connected.lock().unwrap().push(e);
    }
}

impl Seen {
    async fn until<T>(&self, what: &str, f: impl Fn(&Self) -> Option<T>) -> T {
        for _ in 0..200 {
            if let Some(t) = f(self) {
                return t;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("waited 5 s for {what}; snapshots {:?}, connected {:?}", self.snapshots.lock().unwrap(), self.connected.lock().unwrap());
    }

    fn last(&self) -> Option<Snapshot> {
        self.snapshots.lock().unwrap().last().cloned()
    }
}

fn local_index() -> Arc<Index> {
    Arc::new(Index::new(IndexConfig::for_tests()))
}

/// What Destination answers for a Service port, as of now.
fn resolved(index: &Index, name: &str) -> crate::index::Endpoints {
    let rx = index.endpoints(&SvcPort { ns: "demo".into(), name: name.into(), port: 8080 });
    let view = rx.borrow().as_ref().clone();
    view.unwrap_or_else(|| panic!("{name} does not resolve"))
}

#[tokio::test]
async fn a_linked_cluster_is_mirrored_from_its_api_server() {
    let (local, remote) = (Api::start().await, Api::start().await);
    local.apply(secret(&remote.kubeconfig(), Some("east.local")));
    remote_objects(&remote);
    let l = link();
    let index = local_index();
    let seen = Arc::new(Seen::default());
    let follower = {
        let (client, config, request, seen, l) = (local.client(), index.config().clone(), request(&l), seen.clone(), l.clone());
        tokio::spawn(async move { follow(&client, ("linkerd-multicluster", "cluster-credentials-east"), &l.cluster_domain, &config, &request, &seen).await })
    };
    let first = seen.until("both exports", |s| s.last().filter(|x| x.services.len() == 2)).await;
    assert_eq!(seen.connected.lock().unwrap().last(), Some(&None), "connected once listed");
    let by_name = |s: &Snapshot, n: &str| s.services.iter().find(|e| e.name == n).cloned().unwrap();
    let books = by_name(&first, "books");
    assert!(books.gateway && books.ready && !books.remote_discovery && books.endpoints.is_empty(), "{books:?}");
    let authors = by_name(&first, "authors");
    assert!(authors.remote_discovery && authors.ready, "{authors:?}");
    // The remote pod, with the identity its proxy proves: its account, this control plane's
    // namespace and the Secret's trust domain.
    assert_eq!(authors.endpoints.len(), 1);
    assert_eq!(authors.endpoints[0].identity.as_deref(), Some("authors.demo.serviceaccount.identity.knit.east.local"));

    // The mirrors, in this cluster's index: Destination answers for them.
    index.reset("multicluster/linkerd-multicluster/east", mirrors(&l, &first, true, &l.gateways));
    let books_east = resolved(&index, "books-east");
    let addr = books_east.addrs.values().next().expect("the gateway mirror has the gateway");
    assert_eq!(addr.authority_override.as_ref().unwrap().authority_override, "books.demo.svc.cluster.local:8080");
    let authors_east = resolved(&index, "authors-east");
    let pod_ip = authors.endpoints[0].ip;
    assert!(authors_east.addrs.keys().any(|a| a.ip() == pod_ip), "{:?}", authors_east.addrs.keys());

    // A Service unexported on the remote leaves the exports; a deleted one too.
    let mut books = recorded("service.json");
    books["metadata"]["labels"]["mirror.linkerd.io/exported"] = json!("false");
    remote.apply(books);
    seen.until("books unexported", |s| s.last().filter(|x| x.services.iter().all(|e| e.name != "books"))).await;
    remote.delete("Service", "demo", "authors");
    seen.until("authors deleted", |s| s.last().filter(|x| x.services.is_empty())).await;
    follower.abort();
}

#[tokio::test]
async fn bad_credentials_are_reported_and_nothing_is_exported() {
    let local = Api::start().await;
    let l = link();
    let (config, request) = (local_index().config().clone(), request(&l));
    let seen = Arc::new(Seen::default());
    let run = |local: kube::Client| {
        let (config, request, seen, domain) = (config.clone(), request.clone(), seen.clone(), l.cluster_domain.clone());
        async move { follow(&local, ("linkerd-multicluster", "cluster-credentials-east"), &domain, &config, &request, &seen).await.unwrap_err().to_string() }
    };
    // No Secret.
    let e = run(local.client()).await;
    assert!(e.contains("cluster-credentials-east") && e.contains("not found"), "{e}");
    // A Secret without a kubeconfig, or with one that is not YAML.
    let mut s = secret("", None);
    s["data"] = json!({"token": "eA=="});
    local.apply(s);
    let e = run(local.client()).await;
    assert!(e.contains("has no \"kubeconfig\" key"), "{e}");
    local.apply(secret("clusters: [not, a, kubeconfig", None));
    let e = run(local.client()).await;
    assert!(e.contains("kubeconfig"), "{e}");
    assert!(seen.snapshots.lock().unwrap().is_empty());
}

#[tokio::test]
async fn an_unreachable_remote_is_reported_while_its_watches_retry() {
    let local = Api::start().await;
    // A port nothing listens on.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let kubeconfig = format!("apiVersion: v1\nkind: Config\nclusters:\n- name: east\n  cluster: {{server: 'http://{closed}'}}\ncontexts:\n- name: east\n  context: {{cluster: east, user: u}}\ncurrent-context: east\nusers:\n- name: u\n  user: {{token: t}}\n");
    local.apply(secret(&kubeconfig, None));
    let l = link();
    let seen = Arc::new(Seen::default());
    let follower = {
        let (client, config, request, seen, l) = (local.client(), local_index().config().clone(), request(&l), seen.clone(), l.clone());
        tokio::spawn(async move { follow(&client, ("linkerd-multicluster", "cluster-credentials-east"), &l.cluster_domain, &config, &request, &seen).await })
    };
    let error = seen.until("the watch error", |s| s.connected.lock().unwrap().iter().flatten().find(|e| e.contains("watching")).cloned()).await;
    assert!(error.contains("kubernetes/"), "{error}");
    assert!(seen.snapshots.lock().unwrap().is_empty(), "nothing exported before a complete listing");
    follower.abort();
}

#[test]
fn a_recorded_credentials_secret_is_read() {
    let c = credentials(
        &serde_json::from_value(secret(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: east\n  cluster: {server: 'https://10.0.0.1:6443'}\n",
            Some("east.local."),
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(c.trust_domain.as_deref(), Some("east.local"));
    assert_eq!(c.kubeconfig.clusters[0].name, "east");
    let e = credentials(&serde_json::from_value(secret("apiVersion: v1\nkind: Config\nclusters: []\n", None)).unwrap()).unwrap_err();
    assert!(e.to_string().contains("names no cluster"), "{e}");
    let e = credentials(
        &serde_json::from_value(secret("apiVersion: v1\nkind: Config\nclusters:\n- name: e\n  cluster: {server: 'https://x'}\n", Some("a b"))).unwrap(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("is not a domain"), "{e}");
    // Nothing that runs a program here or reads a file here (to send it to the server named).
    let cluster = "apiVersion: v1\nkind: Config\nclusters:\n- name: e\n  cluster: {server: 'https://x'}\n";
    for (user, field) in [
        ("exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/sh, args: [-c, id]}", "exec"),
        ("tokenFile: /var/run/knit/identity/issuer/key.pem", "tokenFile"),
        ("client-certificate: /etc/passwd", "client-certificate"),
        ("client-key: /etc/shadow", "client-key"),
        ("auth-provider: {name: oidc}", "auth-provider"),
    ] {
        let yaml = format!("{cluster}users:\n- name: u\n  user: {{{user}}}\n");
        let e = credentials(&serde_json::from_value(secret(&yaml, None)).unwrap()).unwrap_err().to_string();
        assert!(e.contains(field) && e.contains("only inline credentials"), "{field}: {e}");
    }
    let ca_file = "apiVersion: v1\nkind: Config\nclusters:\n- name: e\n  cluster: {server: 'https://x', certificate-authority: /etc/ssl/ca.pem}\n";
    let e = credentials(&serde_json::from_value(secret(ca_file, None)).unwrap()).unwrap_err().to_string();
    assert!(e.contains("certificate-authority file"), "{e}");
}
