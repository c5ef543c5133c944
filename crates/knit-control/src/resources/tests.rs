use super::*;
use std::time::Duration;

const ROUTES: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: books
  namespace: demo
  annotations:
    retry.linkerd.io/http: 5xx,429
    retry.linkerd.io/limit: "2"
    timeout.linkerd.io/request: 2s
    balancer.alpha.linkerd.io/penalize-failures: "true"
spec:
  selector: {app: books}
  ports: [{name: http, port: 8080, targetPort: http}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: books, namespace: demo}
spec:
  parentRefs: [{kind: Service, name: books, port: 8080}]
  rules:
    - backendRefs:
        - {name: books-v1, port: 8080, weight: 90}
        - {name: books-v2, port: 8080, weight: ten}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: not-ours}
---
"#;

#[test]
fn a_bad_document_is_reported_with_file_document_kind_name_field_and_reason() {
    let (resources, errors) = parse("routes.yaml", ROUTES);
    assert_eq!(resources.len(), 1, "the Service is kept, the Deployment is not ours: {resources:?}");
    assert_eq!(
        errors,
        vec![r#"routes.yaml: document 2 (HTTPRoute demo/books): spec.rules[0].backendRefs[1].weight: invalid type: string "ten", expected u32"#.to_string()]
    );
    let Resource::Service(s) = &resources[0] else { panic!("{resources:?}") };
    assert_eq!(s.spec.ports[0].target_port, Some(PortRef::Name("http".into())));
    let retry = s.config.retry.as_ref().unwrap();
    assert_eq!((retry.http.clone(), retry.limit), (vec![(500, 599), (429, 429)], 2));
    assert_eq!(s.config.timeouts.request, Some(Duration::from_secs(2)));
    assert_eq!(s.config.penalty, Some(Penalty { penalty: Duration::from_secs(5), max_retry_after: Duration::from_secs(300) }));
}

#[test]
fn semantic_errors_name_the_field() {
    let cases = [
        ("apiVersion: v1\nkind: Service\nmetadata: {name: a, annotations: {retry.linkerd.io/http: \"700\"}}\nspec: {}\n", "metadata.annotations[retry.linkerd.io/http]: expected a status code from 100 to 599, found \"700\""),
        ("apiVersion: v1\nkind: Service\nmetadata: {name: a, annotations: {balancer.linkerd.io/failure-accrual: sometimes}}\nspec: {}\n", "expected consecutive or unified"),
        ("apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}, {port: 80}]}\n", "spec.ports[1].port: port 80 is listed twice"),
        ("apiVersion: policy.linkerd.io/v1beta3\nkind: Server\nmetadata: {name: s}\nspec: {port: 80, proxyProtocol: HTTP/3, podSelector: {}}\n", "spec.proxyProtocol: expected one of"),
        ("apiVersion: policy.linkerd.io/v1beta3\nkind: Server\nmetadata: {name: s}\nspec: {port: 80}\n", "exactly one of podSelector and externalWorkloadSelector"),
        ("apiVersion: policy.linkerd.io/v1alpha1\nkind: MeshTLSAuthentication\nmetadata: {name: m}\nspec: {identities: [\"a*b\"]}\n", "spec.identities[0]: expected an identity"),
        ("apiVersion: policy.linkerd.io/v1alpha1\nkind: NetworkAuthentication\nmetadata: {name: n}\nspec: {networks: [{cidr: 10.0.0.0/33}]}\n", "spec.networks[0].cidr"),
        ("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec: {rules: [{matches: [{path: {type: RegularExpression, value: \"(\"}}]}]}\n", "spec.rules[0].matches[0].path.value: invalid regular expression"),
        ("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec: {rules: [{timeouts: {request: soon}}]}\n", "spec.rules[0].timeouts.request"),
        ("apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec: {rules: [{filters: [{type: URLRewrite}]}]}\n", "spec.rules[0].filters[0].type: expected RequestHeaderModifier"),
        ("apiVersion: v1\nkind: Service\nmetadata: {namespace: x}\nspec: {}\n", "(Service x/?): metadata: missing field `name`"),
        ("kind: Service\n", "document 1: apiVersion and kind are required"),
    ];
    for (doc, expected) in cases {
        let (resources, errors) = parse("f.yaml", doc);
        assert!(resources.is_empty(), "{doc}");
        assert_eq!(errors.len(), 1, "{doc}: {errors:?}");
        assert!(errors[0].contains(expected), "{doc}\n  got: {}\n  expected: {expected}", errors[0]);
    }
}

#[test]
fn a_syntax_error_keeps_the_documents_before_it() {
    let text = "apiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {}\n---\nkind: [unclosed\n";
    let (resources, errors) = parse("f.yaml", text);
    assert_eq!(resources.len(), 1);
    assert!(errors[0].starts_with("f.yaml: document 2: "), "{errors:?}");
}

#[test]
fn every_kind_is_recognised_by_group_and_kind() {
    assert_eq!(Kind::from_manifest("v1", "Service"), Some(Kind::Service));
    assert_eq!(Kind::from_manifest("policy.linkerd.io/v1beta3", "HTTPRoute"), Some(Kind::PolicyHttpRoute));
    assert_eq!(Kind::from_manifest("gateway.networking.k8s.io/v1", "HTTPRoute"), Some(Kind::HttpRoute));
    assert_eq!(Kind::from_manifest("split.smi-spec.io/v1alpha2", "TrafficSplit"), Some(Kind::TrafficSplit));
    assert_eq!(Kind::from_manifest("apps/v1", "Service"), None);
}

#[test]
fn selectors_with_expressions() {
    let sel = LabelSelector {
        match_labels: BTreeMap::from([("app".into(), "books".into())]),
        match_expressions: vec![
            LabelExpression { key: "version".into(), operator: SelectorOp::In, values: vec!["v1".into(), "v2".into()] },
            LabelExpression { key: "canary".into(), operator: SelectorOp::DoesNotExist, values: vec![] },
        ],
    };
    let labels = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>();
    assert!(sel.matches(&labels(&[("app", "books"), ("version", "v2")])));
    assert!(!sel.matches(&labels(&[("app", "books"), ("version", "v3")])));
    assert!(!sel.matches(&labels(&[("app", "books"), ("version", "v1"), ("canary", "yes")])));
    assert!(!sel.matches(&labels(&[("version", "v1")])));
}

#[test]
fn status_ranges_in_linkerd_syntax() {
    assert_eq!(annotations::status_ranges("5xx"), Ok(vec![(500, 599)]));
    assert_eq!(annotations::status_ranges("gateway-error, 429"), Ok(vec![(502, 504), (429, 429)]));
    assert_eq!(annotations::status_ranges("500-504"), Ok(vec![(500, 504)]));
    assert!(annotations::status_ranges("504-500").is_err());
    assert!(annotations::status_ranges("5xx,abc").is_err());
}

/// A tutorial's HTTPRoute with `retries` and `timeouts` inside a backendRef (fields Gateway API
/// does not have there): served, with a warning naming the file, document and field path;
/// refused with `strict`.
#[test]
fn unknown_fields_are_warned_by_path_and_refused_when_strict() {
    let yaml = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: books, namespace: demo, uid: x1, resourceVersion: '7'}\n\
                spec:\n  parentRefs: [{kind: Service, name: books, port: 8080}]\n  rules:\n    - backendRefs:\n        - {name: books-v1, port: 8080}\n        - {name: books-v2, port: 8080, retries: 3, timeouts: {request: 1s}}\n\
                status: {parents: []}\n---\n\
                apiVersion: v1\nkind: Service\nmetadata: {name: books, namespace: demo}\nspec:\n  type: LoadBalancer\n  ports: [{port: 8080}]\n";
    let parsed = parse_file("routes.yaml", yaml, false);
    assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
    assert_eq!(parsed.resources.len(), 2);
    assert_eq!(
        parsed.warnings,
        [
            r#"routes.yaml: document 1 (HTTPRoute demo/books): unknown field "spec.rules[0].backendRefs[1].retries""#,
            r#"routes.yaml: document 1 (HTTPRoute demo/books): unknown field "spec.rules[0].backendRefs[1].timeouts""#,
        ],
        "metadata and status are the API server's, and a Service's other fields are Kubernetes' own"
    );
    let strict = parse_file("routes.yaml", yaml, true);
    assert_eq!(strict.resources.len(), 1, "only the Service is served");
    assert!(strict.errors.len() == 1 && strict.errors[0].starts_with("routes.yaml: document 1 (HTTPRoute demo/books): unknown field"), "{:?}", strict.errors);
}

/// The manifests this repository ships and tests with use no field Knit ignores.
#[test]
fn shipped_manifests_have_no_unknown_fields() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dirs = ["crates/knit-control/tests/manifests", "crates/knit/src/demo", "fuzz/seeds/manifest"];
    let mut read = 0;
    for dir in dirs {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            let parsed = parse_file(&path.display().to_string(), &text, false);
            assert!(parsed.warnings.is_empty(), "{:#?}", parsed.warnings);
            read += parsed.resources.len();
        }
    }
    assert!(read > 20, "{read} resources read");
}

#[test]
fn a_file_splits_at_its_document_markers_only() {
    let text = "# head\na: 1\n---\nb: 2\n--- |\n  x\n  ---\n----\n---\t# c\nc: 3\n";
    let parts: Vec<&str> = documents(text).collect();
    assert_eq!(parts, ["# head\na: 1\n", "---\nb: 2\n", "--- |\n  x\n  ---\n----\n", "---\t# c\nc: 3\n"]);
    assert_eq!(documents("").count(), 1);
    assert_eq!(documents("---\na: 1\n").collect::<Vec<_>>(), ["---\na: 1\n"]);
}

/// Parsing with the documents of an earlier version of the file gives what parsing afresh gives:
/// the same resources, errors and warnings, numbered where they are now.
#[test]
fn a_rewrite_reuses_the_unchanged_documents_and_reads_like_a_fresh_parse() {
    const ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: d, namespace: demo}\nspec: {bogus: 1}\n";
    let svc = |name: &str| format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: demo}}\nspec: {{ports: [{{port: 80}}]}}\n");
    let versions = [
        format!("{}---\n{}---\n{}", svc("a"), svc("b"), svc("c")),
        // b changed, a document added before c, one broken, one unknown field, an empty one.
        format!("{}---\n{}---\n---\nkind: [unclosed\n---\n{ROUTE}---\n{}", svc("a"), svc("b2"), svc("c")),
        format!("{}---\n{}", svc("c"), svc("a")),
        String::new(),
        format!("{}---\n{}", svc("a"), svc("a")),
    ];
    for strict in [false, true] {
        let mut cache = DocCache::default();
        for text in versions.iter().chain(versions.iter().rev()) {
            let cached = parse_file_cached("f.yaml", text, strict, &mut cache);
            let fresh = parse_file("f.yaml", text, strict);
            assert_eq!(cached.resources, fresh.resources, "{text}");
            assert_eq!((cached.errors, cached.warnings), (fresh.errors, fresh.warnings), "{text}");
        }
    }
    let broken = parse_file("f.yaml", &versions[1], false);
    assert_eq!(broken.resources.len(), 4, "a syntax error loses its own document only: {:?}", broken.errors);
    assert!(broken.errors[0].starts_with("f.yaml: document 4: "), "{:?}", broken.errors);
    assert!(broken.warnings[0].starts_with("f.yaml: document 5 (HTTPRoute demo/d): unknown field"), "{:?}", broken.warnings);
}
