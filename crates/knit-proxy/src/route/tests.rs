use super::*;
use linkerd2_proxy_api::{grpc_route::GrpcRpcMatch, http_types};

/// Routes as plain vectors: (hosts, rules), a rule being its matches.
struct Table(Vec<(Vec<HostMatch>, Vec<Vec<RouteMatch>>)>);

impl Routes for Table {
    fn route_count(&self) -> usize {
        self.0.len()
    }
    fn hosts(&self, route: usize) -> &[HostMatch] {
        &self.0[route].0
    }
    fn rule_count(&self, route: usize) -> usize {
        self.0[route].1.len()
    }
    fn matches(&self, route: usize, rule: usize) -> &[RouteMatch] {
        &self.0[route].1[rule]
    }
}

fn any() -> RouteMatch {
    RouteMatch { path: None, headers: vec![], query_params: vec![], method: None }
}

fn path(kind: api::path_match::Kind) -> RouteMatch {
    let m = api::HttpRouteMatch { path: Some(api::PathMatch { kind: Some(kind) }), ..Default::default() };
    RouteMatch::try_from(&m).unwrap()
}

fn exact(p: &str) -> RouteMatch {
    path(api::path_match::Kind::Exact(p.into()))
}

fn prefix(p: &str) -> RouteMatch {
    path(api::path_match::Kind::Prefix(p.into()))
}

fn regex(p: &str) -> RouteMatch {
    path(api::path_match::Kind::Regex(p.into()))
}

fn header(name: &str, value: api::header_match::Value) -> api::HeaderMatch {
    api::HeaderMatch { name: name.into(), value: Some(value) }
}

fn query(name: &str, value: api::query_param_match::Value) -> api::QueryParamMatch {
    api::QueryParamMatch { name: name.into(), value: Some(value) }
}

fn host_exact(h: &str) -> HostMatch {
    HostMatch::try_from(&api::HostMatch { r#match: Some(api::host_match::Match::Exact(h.into())) }).unwrap()
}

fn host_suffix(s: &str) -> HostMatch {
    let reverse_labels = s.trim_start_matches("*.").rsplit('.').map(String::from).collect();
    HostMatch::try_from(&api::HostMatch { r#match: Some(api::host_match::Match::Suffix(api::host_match::Suffix { reverse_labels })) }).unwrap()
}

fn req(method: Method, uri: &str, headers: &[(&str, &str)]) -> http::Request<()> {
    let mut b = http::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap()
}

fn pick(t: &Table, r: &http::Request<()>) -> Option<(usize, usize)> {
    select(t, &RequestInfo::new(r))
}

fn get(uri: &str) -> http::Request<()> {
    req(Method::GET, uri, &[])
}

#[test]
fn request_info_normalises_host_and_path() {
    let r = get("http://Books.Default.:8080/a?x=1");
    let info = RequestInfo::new(&r);
    assert_eq!(info.host.as_deref(), Some("books.default"));
    assert_eq!((info.path, info.query), ("/a", Some("x=1")));

    let r = req(Method::GET, "/p", &[("host", "WEB.example.com:80")]);
    assert_eq!(RequestInfo::new(&r).host.as_deref(), Some("web.example.com"));
    let r = req(Method::GET, "/p", &[("host", "[::1]:80")]);
    assert_eq!(RequestInfo::new(&r).host.as_deref(), Some("[::1]"));
    let r = get("/p");
    assert_eq!(RequestInfo::new(&r).host, None);
}

#[test]
fn prefix_matches_whole_segments() {
    let m = prefix("/foo");
    for (p, ok) in [("/foo", true), ("/foo/", true), ("/foo/bar", true), ("/foobar", false), ("/fo", false), ("/", false)] {
        assert_eq!(m.path.as_ref().unwrap().score(p).is_some(), ok, "/foo vs {p}");
    }
    // A trailing slash in the prefix changes nothing.
    let m = prefix("/foo/");
    assert!(m.path.as_ref().unwrap().score("/foo").is_some());
    assert!(m.path.as_ref().unwrap().score("/foobar").is_none());
    let root = prefix("/");
    for p in ["/", "/x", "/x/y", "*"] {
        assert!(root.path.as_ref().unwrap().score(p).is_some(), "/ vs {p}");
    }
}

#[test]
fn exact_and_regex_paths_match_the_whole_path() {
    assert!(exact("/a").path.unwrap().score("/a/").is_none());
    let r = regex("/users/[0-9]+");
    let p = r.path.as_ref().unwrap();
    assert!(p.score("/users/42").is_some());
    assert!(p.score("/users/42/x").is_none(), "regexes are anchored at the end");
    assert!(p.score("/v1/users/42").is_none(), "regexes are anchored at the start");
}

#[test]
fn path_precedence_exact_then_longest_prefix_then_regex() {
    let t = Table(vec![(vec![], vec![vec![regex("/a/.*")], vec![prefix("/a")], vec![prefix("/a/b")], vec![exact("/a/b/c")]])]);
    assert_eq!(pick(&t, &get("/a/b/c")), Some((0, 3)));
    assert_eq!(pick(&t, &get("/a/b/d")), Some((0, 2)));
    assert_eq!(pick(&t, &get("/a/x")), Some((0, 1)));
    assert_eq!(pick(&t, &get("/b")), None);
    // Longer regexes win among regexes.
    let t = Table(vec![(vec![], vec![vec![regex("/.*")], vec![regex("/a/[a-z]+")]])]);
    assert_eq!(pick(&t, &get("/a/b")), Some((0, 1)));
}

#[test]
fn then_method_then_headers_then_query_params() {
    let with = |method: Option<Method>, headers: Vec<api::HeaderMatch>, params: Vec<api::QueryParamMatch>| {
        let m = api::HttpRouteMatch {
            path: Some(api::PathMatch { kind: Some(api::path_match::Kind::Prefix("/".into())) }),
            headers,
            query_params: params,
            method: method.map(http_types::HttpMethod::from),
        };
        RouteMatch::try_from(&m).unwrap()
    };
    use api::{header_match::Value as H, query_param_match::Value as Q};
    let t = Table(vec![(
        vec![],
        vec![
            vec![with(None, vec![], vec![query("a", Q::Exact("1".into())), query("b", Q::Exact("2".into()))])],
            vec![with(None, vec![header("x", H::Exact(b"1".to_vec()))], vec![])],
            vec![with(Some(Method::POST), vec![], vec![])],
        ],
    )]);
    assert_eq!(pick(&t, &req(Method::POST, "/?a=1&b=2", &[("x", "1")])), Some((0, 2)), "method beats headers");
    assert_eq!(pick(&t, &req(Method::GET, "/?a=1&b=2", &[("x", "1")])), Some((0, 1)), "headers beat query params");
    assert_eq!(pick(&t, &get("/?a=1&b=2")), Some((0, 0)));
    assert_eq!(pick(&t, &get("/?a=1")), None);
    // A longer path beats everything else.
    let t = Table(vec![(vec![], vec![vec![with(Some(Method::GET), vec![header("x", H::Exact(b"1".to_vec()))], vec![])], vec![prefix("/a")]])]);
    assert_eq!(pick(&t, &req(Method::GET, "/a", &[("x", "1")])), Some((0, 1)));
}

#[test]
fn ties_go_to_the_earlier_route_then_rule() {
    let t = Table(vec![(vec![], vec![vec![prefix("/")], vec![prefix("/")]]), (vec![], vec![vec![prefix("/")]])]);
    assert_eq!(pick(&t, &get("/x")), Some((0, 0)));
    // A rule without matches matches everything, like `PathPrefix /`.
    let t = Table(vec![(vec![], vec![vec![]]), (vec![], vec![vec![prefix("/")]])]);
    assert_eq!(pick(&t, &get("/x")), Some((0, 0)));
    let t = Table(vec![(vec![], vec![vec![]]), (vec![], vec![vec![prefix("/x")]])]);
    assert_eq!(pick(&t, &get("/x")), Some((1, 0)));
}

#[test]
fn the_best_match_of_a_rule_counts() {
    let t = Table(vec![(vec![], vec![vec![prefix("/a")]]), (vec![], vec![vec![prefix("/"), exact("/a")]])]);
    assert_eq!(pick(&t, &get("/a")), Some((1, 0)));
    assert_eq!(pick(&t, &get("/a/b")), Some((0, 0)));
}

#[test]
fn hosts_exact_beats_longest_suffix_beats_any() {
    let t = Table(vec![
        (vec![], vec![vec![exact("/x")]]),
        (vec![host_suffix("*.example.com")], vec![vec![]]),
        (vec![host_suffix("*.a.example.com")], vec![vec![]]),
        (vec![host_exact("b.a.example.com"), host_suffix("*.example.com")], vec![vec![]]),
    ]);
    assert_eq!(pick(&t, &get("http://b.a.example.com/x")), Some((3, 0)), "host precedence comes before path");
    assert_eq!(pick(&t, &get("http://c.a.example.com/x")), Some((2, 0)));
    assert_eq!(pick(&t, &get("http://c.example.com/x")), Some((1, 0)));
    assert_eq!(pick(&t, &get("http://other.org/x")), Some((0, 0)));
    assert_eq!(pick(&t, &get("http://other.org/y")), None);
    assert_eq!(pick(&t, &get("/y")), None, "routes with hosts need a request host");
}

#[test]
fn suffix_needs_a_label_of_its_own() {
    let m = host_suffix("*.example.com");
    assert_eq!(m.score("example.com"), None);
    assert_eq!(m.score("xexample.com"), None);
    assert_eq!(m.score("a.example.com"), Some(HostScore::Suffix(2)));
    assert_eq!(m.score("a.b.example.com"), Some(HostScore::Suffix(2)));
    assert_eq!(host_exact("Example.COM.").score("example.com"), Some(HostScore::Exact));
}

#[test]
fn headers_exact_bytes_or_anchored_regex_on_any_value() {
    use api::header_match::Value;
    let m = api::HttpRouteMatch {
        headers: vec![header("X-User", Value::Exact(b"alice".to_vec())), header("x-ver", Value::Regex("v[12]".into()))],
        ..Default::default()
    };
    let m = RouteMatch::try_from(&m).unwrap();
    let score = |h: &[(&str, &str)]| m.score(&RequestInfo::new(&req(Method::GET, "/", h))).is_some();
    assert!(score(&[("x-user", "alice"), ("x-ver", "v2")]));
    assert!(score(&[("x-user", "bob"), ("x-user", "alice"), ("x-ver", "v1")]), "any value of a repeated header");
    assert!(!score(&[("x-user", "Alice"), ("x-ver", "v1")]), "values are exact bytes");
    assert!(!score(&[("x-user", "alice"), ("x-ver", "v12")]), "regex is anchored");
    assert!(!score(&[("x-user", "alice")]), "every header match must hold");
}

#[test]
fn query_params_exact_or_regex_on_raw_values() {
    use api::query_param_match::Value;
    let m = api::HttpRouteMatch { query_params: vec![query("q", Value::Exact("a b".into())), query("n", Value::Regex("[0-9]+".into()))], ..Default::default() };
    let m = RouteMatch::try_from(&m).unwrap();
    let score = |uri: &str| m.score(&RequestInfo::new(&get(uri))).is_some();
    assert!(!score("/?n=12&q=a%20b"), "values are compared raw, not decoded");
    let m2 = api::HttpRouteMatch { query_params: vec![query("q", Value::Exact("a%20b".into())), query("flag", Value::Exact("".into()))], ..Default::default() };
    let m2 = RouteMatch::try_from(&m2).unwrap();
    assert!(m2.score(&RequestInfo::new(&get("/?q=a%20b&flag"))).is_some(), "a bare name has the empty value");
    assert!(!score("/?q=x&n=1"));
    let m3 = api::HttpRouteMatch { query_params: vec![query("n", Value::Regex("[0-9]+".into()))], ..Default::default() };
    let m3 = RouteMatch::try_from(&m3).unwrap();
    let s3 = |uri: &str| m3.score(&RequestInfo::new(&get(uri))).is_some();
    assert!(s3("/?a=x&n=1&b=y"));
    assert!(s3("/?n=x&n=7"), "any occurrence");
    assert!(!s3("/?n=1x"));
    assert!(!s3("/?nn=1"));
    assert!(!s3("/"));
}

#[test]
fn method_must_be_equal() {
    let m = api::HttpRouteMatch { method: Some(http_types::HttpMethod::from(Method::DELETE)), ..Default::default() };
    let m = RouteMatch::try_from(&m).unwrap();
    assert!(m.score(&RequestInfo::new(&req(Method::DELETE, "/", &[]))).is_some());
    assert!(m.score(&RequestInfo::new(&req(Method::GET, "/", &[]))).is_none());
}

#[test]
fn grpc_matches_become_paths() {
    let m = |service: &str, method: &str| {
        let g = grpc_api::GrpcRouteMatch { rpc: Some(GrpcRpcMatch { service: service.into(), method: method.into() }), headers: vec![] };
        RouteMatch::try_from(&g)
    };
    let full = m("books.Library", "Get").unwrap();
    let service = m("books.Library", "").unwrap();
    let hits = |m: &RouteMatch, p: &str| m.score(&RequestInfo::new(&req(Method::POST, p, &[]))).is_some();
    assert!(hits(&full, "/books.Library/Get"));
    assert!(!hits(&full, "/books.Library/List"));
    assert!(hits(&service, "/books.Library/List"));
    assert!(!hits(&service, "/books.LibraryX/List"));
    assert!(m("", "").unwrap().path.is_none());
    assert_eq!(m("", "Get").unwrap_err(), InvalidRoute::GrpcMethodWithoutService("Get".into()));
}

#[test]
fn invalid_inputs_are_rejected_with_a_reason() {
    use api::path_match::Kind;
    let route = |m: api::HttpRouteMatch| RouteMatch::try_from(&m).unwrap_err();
    assert_eq!(route(api::HttpRouteMatch { path: Some(api::PathMatch { kind: None }), ..Default::default() }), InvalidRoute::MissingPathKind);
    assert_eq!(
        route(api::HttpRouteMatch { path: Some(api::PathMatch { kind: Some(Kind::Prefix("foo".into())) }), ..Default::default() }),
        InvalidRoute::RelativePath("foo".into())
    );
    let bad_regex = route(api::HttpRouteMatch { path: Some(api::PathMatch { kind: Some(Kind::Regex("(".into())) }), ..Default::default() });
    assert!(matches!(&bad_regex, InvalidRoute::Regex { pattern, .. } if pattern == "("), "{bad_regex}");
    assert_eq!(
        route(api::HttpRouteMatch { headers: vec![header("bad header", api::header_match::Value::Exact(vec![]))], ..Default::default() }),
        InvalidRoute::HeaderName("bad header".into())
    );
    assert_eq!(
        route(api::HttpRouteMatch { headers: vec![api::HeaderMatch { name: "x".into(), value: None }], ..Default::default() }),
        InvalidRoute::MissingHeaderValue("x".into())
    );
    assert_eq!(
        route(api::HttpRouteMatch { query_params: vec![query("", api::query_param_match::Value::Exact("1".into()))], ..Default::default() }),
        InvalidRoute::QueryParam("".into())
    );
    let method = http_types::HttpMethod { r#type: Some(http_types::http_method::Type::Unregistered("BAD METHOD".into())) };
    assert!(matches!(route(api::HttpRouteMatch { method: Some(method), ..Default::default() }), InvalidRoute::Method(_)));

    let host = |m| HostMatch::try_from(&api::HostMatch { r#match: m }).unwrap_err();
    assert_eq!(host(None), InvalidRoute::MissingHostMatch);
    assert_eq!(host(Some(api::host_match::Match::Exact("a..b".into()))), InvalidRoute::InvalidHost("a..b".into()));
    assert!(matches!(host(Some(api::host_match::Match::Suffix(api::host_match::Suffix { reverse_labels: vec![] }))), InvalidRoute::InvalidHost(_)));
    assert!(bad_regex.to_string().contains("fix the route"), "{bad_regex}");
}

#[test]
fn no_routes_select_nothing() {
    assert_eq!(pick(&Table(vec![]), &get("/")), None);
    assert_eq!(pick(&Table(vec![(vec![], vec![])]), &get("/")), None, "a route without rules matches nothing");
    assert_eq!(pick(&Table(vec![(vec![], vec![vec![any()]])]), &get("/anything")), Some((0, 0)));
}
