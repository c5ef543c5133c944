use super::*;
use linkerd2_proxy_api::{http_route as http_api, inbound as api, meta, net};
use std::collections::HashMap;

const WEB: &str = "web.demo.serviceaccount.identity.knit.cluster.local";

fn client(ip: &str, identity: Option<&str>) -> Client {
    Client { addr: ip.parse().unwrap(), identity: identity.map(str::to_string), tls: identity.is_some() }
}

fn network(cidr: &str, except: &[&str]) -> api::Network {
    let n = |c: &str| net::IpNetwork::from(c.parse::<IpNet>().unwrap());
    api::Network { net: Some(n(cidr)), except: except.iter().map(|e| n(e)).collect() }
}

fn authz(name: &str, networks: Vec<api::Network>, permit: api::authn::Permit) -> api::Authz {
    api::Authz {
        networks,
        authentication: Some(api::Authn { permit: Some(permit) }),
        labels: HashMap::new(),
        metadata: Some(meta::Metadata {
            kind: Some(meta::metadata::Kind::Resource(meta::Resource {
                group: "policy.linkerd.io".into(),
                kind: "authorizationpolicy".into(),
                name: name.into(),
                namespace: "demo".into(),
                ..Default::default()
            })),
        }),
    }
}

fn mesh(identities: &[&str], suffixes: &[&[&str]]) -> api::authn::Permit {
    use api::authn::permit_mesh_tls::{Clients, PermitClientIdentities};
    api::authn::Permit::MeshTls(api::authn::PermitMeshTls {
        clients: Some(Clients::Identities(PermitClientIdentities {
            identities: identities.iter().map(|i| api::Identity { name: i.to_string() }).collect(),
            suffixes: suffixes.iter().map(|s| api::IdentitySuffix { parts: s.iter().map(|p| p.to_string()).collect() }).collect(),
        })),
    })
}

fn server(authorizations: Vec<api::Authz>, routes: Vec<api::HttpRoute>) -> api::Server {
    api::Server {
        protocol: Some(api::ProxyProtocol {
            kind: Some(api::proxy_protocol::Kind::Detect(api::proxy_protocol::Detect {
                timeout: Some(Duration::from_secs(10).try_into().unwrap()),
                http_routes: routes,
                http_local_rate_limit: None,
            })),
        }),
        server_ips: vec![],
        authorizations,
        labels: [("group", "policy.linkerd.io"), ("kind", "server"), ("name", "books-http")].into_iter().map(|(k, v)| (k.into(), v.into())).collect(),
    }
}

fn get(path: &str) -> http::Request<()> {
    http::Request::get(path).header("host", "books").body(()).unwrap()
}

#[test]
fn identities_and_suffixes_are_checked_and_denials_explain_themselves() {
    let p = ServerPolicy::try_from(server(
        vec![authz("books-from-web", vec![network("0.0.0.0/0", &[])], mesh(&[WEB], &[&["admin", "knit", "cluster", "local"]]))],
        vec![],
    ))
    .unwrap();
    let req = get("/");
    let info = RequestInfo::new(&req);
    let ok = p.authorize_http(&info, &client("10.0.0.1", Some(WEB))).unwrap();
    assert_eq!(ok.authz.name, "books-from-web");
    assert_eq!(ok.route.name, "default");
    assert!(p.authorize_http(&info, &client("10.0.0.1", Some("ops.admin.knit.cluster.local"))).is_ok(), "suffix match");
    assert!(p.authorize_http(&info, &client("10.0.0.1", Some("evil.notadmin.knit.cluster.local"))).is_err(), "suffixes match whole labels");
    let Err(Denied::Unauthorized { message, allowed, .. }) =
        p.authorize_http(&info, &client("10.0.0.9", Some("other.demo.serviceaccount.identity.knit.cluster.local")))
    else {
        panic!("denied")
    };
    assert!(message.contains("server books-http") && message.contains("other.demo"), "{message}");
    assert!(!message.contains(WEB), "the client is not told whom to impersonate: {message}");
    assert!(allowed.contains(WEB), "the log is: {allowed}");
    let Err(Denied::Unauthorized { message, .. }) = p.authorize_http(&info, &client("10.0.0.9", None)) else { panic!("denied") };
    assert!(message.contains("without mesh TLS"), "{message}");
    assert!(p.authorize_http(&info, &client("127.0.0.1", None)).is_err(), "loopback is not trusted unless asked");
    assert!(p.with_localhost().authorize_http(&info, &client("127.0.0.1", None)).is_ok(), "trusted loopback passes");
}

#[test]
fn networks_and_their_exceptions() {
    let p = ServerPolicy::try_from(server(
        vec![authz("nets", vec![network("10.0.0.0/8", &["10.1.0.0/16"])], api::authn::Permit::Unauthenticated(Default::default()))],
        vec![],
    ))
    .unwrap();
    let req = get("/");
    let info = RequestInfo::new(&req);
    assert!(p.authorize_http(&info, &client("10.2.3.4", None)).is_ok());
    assert!(p.authorize_http(&info, &client("10.1.3.4", None)).is_err());
    assert!(p.authorize_http(&info, &client("192.168.1.1", None)).is_err());
    assert!(p.authorize_tcp(&client("10.2.3.4", None)).is_ok());
    assert!(p.authorize_tcp(&client("192.168.1.1", None)).is_err());
}

#[test]
fn routes_select_and_extend_authorizations() {
    let route = api::HttpRoute {
        metadata: Some(meta::Metadata {
            kind: Some(meta::metadata::Kind::Resource(meta::Resource {
                group: "policy.linkerd.io".into(),
                kind: "HTTPRoute".into(),
                name: "health".into(),
                ..Default::default()
            })),
        }),
        hosts: vec![],
        authorizations: vec![authz("probes", vec![network("0.0.0.0/0", &[])], api::authn::Permit::Unauthenticated(Default::default()))],
        rules: vec![api::http_route::Rule {
            matches: vec![http_api::HttpRouteMatch {
                path: Some(http_api::PathMatch { kind: Some(http_api::path_match::Kind::Exact("/health".into())) }),
                ..Default::default()
            }],
            filters: vec![],
        }],
    };
    let p = ServerPolicy::try_from(server(vec![authz("web-only", vec![network("0.0.0.0/0", &[])], mesh(&[WEB], &[]))], vec![route])).unwrap();
    let health = get("/health");
    let permit = p.authorize_http(&RequestInfo::new(&health), &client("10.0.0.1", None)).unwrap();
    assert_eq!((permit.route.name.as_str(), permit.authz.name.as_str()), ("health", "probes"));
    let other = get("/books");
    assert!(matches!(p.authorize_http(&RequestInfo::new(&other), &client("10.0.0.1", Some(WEB))), Err(Denied::NoRoute)), "routes are exhaustive once given");
}

#[test]
fn default_policies() {
    let cluster: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
    let req = get("/");
    let info = RequestInfo::new(&req);
    let check = |p: DefaultPolicy, c: &Client| ServerPolicy::default_for(p, &cluster).authorize_http(&info, c).is_ok();
    assert!(check(DefaultPolicy::AllUnauthenticated, &client("192.168.0.1", None)));
    assert!(!check(DefaultPolicy::AllAuthenticated, &client("192.168.0.1", None)));
    assert!(check(DefaultPolicy::AllAuthenticated, &client("192.168.0.1", Some(WEB))));
    assert!(check(DefaultPolicy::ClusterUnauthenticated, &client("10.9.9.9", None)));
    assert!(!check(DefaultPolicy::ClusterUnauthenticated, &client("192.168.0.1", None)));
    assert!(!check(DefaultPolicy::ClusterAuthenticated, &client("10.9.9.9", None)));
    assert!(!check(DefaultPolicy::Deny, &client("10.9.9.9", Some(WEB))));
    assert!(!check(DefaultPolicy::Deny, &client("127.0.0.1", None)));
    assert!(
        ServerPolicy::default_for(DefaultPolicy::Deny, &cluster).with_localhost().authorize_http(&info, &client("127.0.0.1", None)).is_ok(),
        "trusted loopback even under deny"
    );
    assert!(check(DefaultPolicy::Audit, &client("192.168.0.1", None)));
    assert_eq!("cluster-authenticated".parse::<DefaultPolicy>(), Ok(DefaultPolicy::ClusterAuthenticated));
    assert!("allow".parse::<DefaultPolicy>().unwrap_err().contains("all-unauthenticated"));
}

#[test]
fn invalid_messages_are_refused_with_the_field() {
    let mut s = server(vec![], vec![]);
    s.labels.remove("name");
    assert_eq!(ServerPolicy::try_from(s).unwrap_err().to_string(), "labels.name: missing");
    let s = server(vec![authz("x", vec![], api::authn::Permit::Unauthenticated(Default::default()))], vec![]);
    assert!(ServerPolicy::try_from(s).unwrap_err().to_string().starts_with("authorizations[0].networks"));
    let mut s = server(vec![], vec![]);
    s.protocol = Some(api::ProxyProtocol { kind: Some(api::proxy_protocol::Kind::Detect(Default::default())) });
    assert_eq!(ServerPolicy::try_from(s).unwrap_err().to_string(), "protocol.detect.timeout: missing");
    let invalid = ServerPolicy::invalid("bad");
    let req = get("/");
    assert!(invalid.authorize_http(&RequestInfo::new(&req), &client("127.0.0.1", None)).is_err(), "an invalid policy refuses even localhost");
}
