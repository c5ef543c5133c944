use super::*;

/// `kubectl get -n kube-system configmap extension-apiserver-authentication -o yaml` on a
/// kubeadm cluster (1.33), certificates shortened.
const KUBEADM: &str = r#"
apiVersion: v1
kind: ConfigMap
metadata:
  name: extension-apiserver-authentication
  namespace: kube-system
data:
  client-ca-file: |
    -----BEGIN CERTIFICATE-----
    MIIDBTCCAe2gAwIBAgIIKubernetesCA
    -----END CERTIFICATE-----
  requestheader-allowed-names: '["front-proxy-client"]'
  requestheader-client-ca-file: |
    -----BEGIN CERTIFICATE-----
    MIIDETCCAfmgAwIBAgIIFrontProxyCA
    -----END CERTIFICATE-----
  requestheader-extra-headers-prefix: '["X-Remote-Extra-"]'
  requestheader-group-headers: '["X-Remote-Group"]'
  requestheader-uid-headers: '["X-Remote-Uid"]'
  requestheader-username-headers: '["X-Remote-User"]'
"#;

fn kubeadm() -> RequestHeader {
    RequestHeader::from_configmap(&serde_yaml::from_str(KUBEADM).unwrap()).unwrap()
}

#[test]
fn the_request_header_settings_come_from_the_api_servers_configmap() {
    let h = kubeadm();
    assert!(h.client_ca_pem.contains("FrontProxyCA") && !h.client_ca_pem.contains("KubernetesCA"), "the front proxy's CA, not the clients'");
    assert_eq!(h.allowed_names, ["front-proxy-client"]);
    assert_eq!((h.username_headers.as_slice(), h.group_headers.as_slice()), (&["X-Remote-User".to_string()][..], &["X-Remote-Group".to_string()][..]));
    assert!(h.allows(Some("front-proxy-client")));
    assert!(!h.allows(Some("system:kube-controller-manager")) && !h.allows(None), "another client of the same CA names nobody");
    let any = RequestHeader { allowed_names: vec![], ..h };
    assert!(any.allows(Some("anything")), "no allowed names: any certificate from the CA");

    // An API server without a front proxy: the reason, not a tap API that lets nobody in.
    let mut cm: ConfigMap = serde_yaml::from_str(KUBEADM).unwrap();
    cm.data.as_mut().unwrap().remove("requestheader-client-ca-file");
    assert!(RequestHeader::from_configmap(&cm).unwrap_err().contains("--requestheader-client-ca-file"));
    let mut cm: ConfigMap = serde_yaml::from_str(KUBEADM).unwrap();
    cm.data.as_mut().unwrap().insert("requestheader-group-headers".into(), "X-Remote-Group".into());
    assert!(RequestHeader::from_configmap(&cm).unwrap_err().contains("not a JSON list"));
}

#[test]
fn the_user_is_read_from_the_headers_the_api_server_names() {
    let h = kubeadm();
    let mut headers = HeaderMap::new();
    assert_eq!(h.user(&headers), None, "no user header: nobody");
    headers.insert("x-remote-user", "alice".parse().unwrap());
    headers.append("x-remote-group", "devs".parse().unwrap());
    headers.append("x-remote-group", "system:authenticated".parse().unwrap());
    headers.insert("x-remote-uid", "4c1f".parse().unwrap());
    headers.insert("x-remote-extra-scopes", "view".parse().unwrap());
    headers.insert("x-remote-extra-acme.com%2fproject", "tap".parse().unwrap());
    headers.insert("x-forwarded-user", "root".parse().unwrap());
    let user = h.user(&headers).unwrap();
    assert_eq!(user.name, "alice");
    assert_eq!(user.uid.as_deref(), Some("4c1f"));
    assert_eq!(user.groups, ["devs", "system:authenticated"]);
    assert_eq!(user.extra.get("scopes").unwrap(), &["view"]);
    assert_eq!(user.extra.get("acme.com/project").unwrap(), &["tap"], "extra keys are unescaped");
}

#[test]
fn paths_name_a_namespace_deployment_or_pod() {
    assert_eq!(parse_path("/apis/tap.knit.dev/v1alpha1"), Ok(None));
    assert_eq!(parse_path("/apis/tap.knit.dev/v1alpha1/"), Ok(None));
    let t = parse_path("/apis/tap.knit.dev/v1alpha1/watch/namespaces/demo/deployments/web/tap").unwrap().unwrap();
    assert_eq!(t, TapTarget { namespace: "demo".into(), resource: "deployments", name: "web".into() });
    assert_eq!(t.viz_resource(), "deploy/web");
    let t = parse_path("/apis/tap.knit.dev/v1alpha1/watch/namespaces/demo/pods/web-0/tap").unwrap().unwrap();
    assert_eq!((t.resource, t.viz_resource().as_str()), ("pods", "po/web-0"));
    let t = parse_path("/apis/tap.knit.dev/v1alpha1/watch/namespaces/demo/tap").unwrap().unwrap();
    assert_eq!((t.resource, t.viz_resource().as_str()), ("namespaces", "ns/demo"));
    for bad in [
        "/apis/tap.knit.dev/v1alpha1/watch/namespaces/demo/services/web/tap",
        "/apis/tap.knit.dev/v1alpha1/watch/namespaces//tap",
        "/apis/tap.knit.dev/v1alpha1/namespaces/demo/tap",
        "/apis/tap.linkerd.io/v1alpha1/watch/namespaces/demo/tap",
        "/api/tap",
    ] {
        assert!(parse_path(bad).is_err(), "{bad}");
    }
}

#[test]
fn the_review_asks_for_watch_on_the_tap_subresource() {
    let user = User { name: "alice".into(), uid: None, groups: vec!["devs".into()], extra: BTreeMap::new() };
    let target = TapTarget { namespace: "demo".into(), resource: "deployments", name: "web".into() };
    let json = serde_json::to_value(review(&user, &target)).unwrap();
    assert_eq!(json["apiVersion"], "authorization.k8s.io/v1");
    assert_eq!(json["kind"], "SubjectAccessReview");
    assert_eq!(json["spec"]["user"], "alice");
    assert_eq!(json["spec"]["groups"], serde_json::json!(["devs"]));
    assert_eq!(
        json["spec"]["resourceAttributes"],
        serde_json::json!({"group": "tap.knit.dev", "version": "v1alpha1", "resource": "deployments", "subresource": "tap", "verb": "watch", "namespace": "demo", "name": "web"})
    );
    // A namespace's tap names the namespace as the review's namespace too, so that a
    // RoleBinding there can grant it.
    let ns = TapTarget { namespace: "demo".into(), resource: "namespaces", name: "demo".into() };
    let json = serde_json::to_value(review(&user, &ns)).unwrap();
    assert_eq!(
        (json["spec"]["resourceAttributes"]["resource"].as_str(), json["spec"]["resourceAttributes"]["namespace"].as_str()),
        (Some("namespaces"), Some("demo"))
    );
}

#[test]
fn answers_are_judged_as_the_api_server_gives_them() {
    let user = User { name: "bob".into(), ..Default::default() };
    let target = TapTarget { namespace: "demo".into(), resource: "deployments", name: "web".into() };
    let answer = |status: serde_json::Value| -> SubjectAccessReview {
        serde_json::from_value(
            serde_json::json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": {"user": "bob"}, "status": status}),
        )
        .unwrap()
    };
    let allowed =
        answer(serde_json::json!({"allowed": true, "reason": "RBAC: allowed by ClusterRoleBinding \"bob-tap\" of ClusterRole \"knit-tap\" to User \"bob\""}));
    assert_eq!(judge(&allowed, &user, &target), Ok(()));
    let denied = judge(&answer(serde_json::json!({"allowed": false})), &user, &target).unwrap_err();
    assert_eq!(denied, r#"user "bob" cannot watch resource "deployments/tap" "web" in API group "tap.knit.dev" in the namespace "demo""#);
    let explicit = judge(&answer(serde_json::json!({"allowed": false, "denied": true, "reason": "webhook said no"})), &user, &target).unwrap_err();
    assert!(explicit.ends_with(": webhook said no"), "{explicit}");
    let no_status: SubjectAccessReview = serde_json::from_value(serde_json::json!({"spec": {}})).unwrap();
    assert!(judge(&no_status, &user, &target).is_err(), "no status is no permission");
}
