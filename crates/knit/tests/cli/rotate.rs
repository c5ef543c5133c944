//! `knit identity rotate` against a real knit-control and a real proxy: the three steps, the
//! last refused while the proxy's leaf still chains only to the old anchor, and `knit check`
//! naming the step; the identity alert rules under promtool.

use super::{knit, temp_dir};
use std::time::Duration;

/// The body of an HTTP/1 GET.
fn http_body(addr: std::net::SocketAddr, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or(out)
}

fn certs(path: &str) -> usize {
    knit_identity::inspect::pem_certs(&std::fs::read_to_string(path).unwrap()).unwrap().len()
}

#[test]
fn rotate_steps_and_refuses_to_drop_an_anchor_a_proxy_still_depends_on() {
    let dir = temp_dir("rotate");
    let identity = format!("{dir}/identity");
    let (ok, out) = knit(&["identity", "init", "--dir", &identity]);
    assert!(ok, "{out}");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    // Leaves live 3 s (plus 1 s of skew each side): the proxy refreshes about every 3.5 s, and
    // knit-control knows every proxy's leaf 5 s after it starts.
    let (admin, viz) = rt.block_on(async {
        let mut id = knit_control::config::IdentityConfig::for_dir(&identity);
        id.issuance_lifetime = Duration::from_secs(3);
        id.clock_skew = Duration::from_secs(1);
        id.reload_interval = Duration::from_millis(100);
        let control = knit_control::Control::bind(knit_control::config::Config::local(id)).await.unwrap();
        let cp = control.addrs();
        tokio::spawn(control.run(std::future::pending()));
        let name = knit_identity::identity_name("web", "test", "knit", "cluster.local");
        let key = knit_identity::token::TokenKey::new(&std::fs::read(format!("{identity}/token.key")).unwrap()).unwrap();
        let token_file = std::path::PathBuf::from(format!("{dir}/web.token"));
        let expires_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64 + 3600;
        std::fs::write(&token_file, key.sign(&knit_identity::token::Claims { identity: name.clone(), expires_at })).unwrap();
        let mut c = knit_proxy::config::Config::loopback();
        c.identity = Some(knit_proxy::identity::IdentityConfig {
            local_name: name,
            trust_anchors: knit_proxy::identity::TrustAnchors::File(format!("{identity}/trust-anchors.pem").into()),
            token_file,
            svc_addr: cp.identity.into(),
            min_refresh: Duration::from_millis(500),
            max_refresh: Duration::from_secs(86_400),
        });
        let proxy = knit_proxy::Proxy::bind(c, None).await.unwrap();
        tokio::spawn(proxy.run(std::future::pending()));
        (cp.admin, cp.viz)
    });
    let admin = admin.to_string();
    let rotate = |extra: &[&str]| {
        let mut args = vec!["identity", "rotate", "--dir", identity.as_str()];
        args.extend_from_slice(extra);
        knit(&args)
    };
    let bundle = format!("{identity}/trust-anchors.pem");
    let (ok, out) = rotate(&["--status"]);
    assert!(ok && out.contains("no rotation under way"), "{out}");

    // 1. A new anchor joins the bundle.
    let (ok, out) = rotate(&[]);
    assert!(ok && out.contains("step 1 of 3"), "{out}");
    assert_eq!(certs(&bundle), 2);
    let (_, out) = knit(&["check", "--dir", &identity]);
    assert!(out.contains("√ trust-anchor rotation: step 1 of 3 done"), "{out}");

    // 2. The issuer switches to one the new anchor signs; --manifests prints what to apply.
    let (ok, out) = rotate(&["--manifests"]);
    assert!(ok && out.contains("step 2 of 3"), "{out}");
    assert!(out.contains("kind: ConfigMap") && out.contains("name: knit-identity-trust-roots") && out.contains("ca.crt:"), "{out}");

    // 3. Refused without knit-control's word, and at once after the switch: the proxy's leaf
    // still chains to the old anchor (or knit-control is too young to know every leaf).
    let (ok, out) = rotate(&[]);
    assert!(!ok && out.contains("--control-admin"), "{out}");
    let (ok, out) = rotate(&["--control-admin", &admin]);
    assert!(!ok && (out.contains("refusing to remove the old anchor") || out.contains("started too recently")), "{out}");
    assert_eq!(certs(&bundle), 2, "the old anchor stays while a proxy depends on it");
    // knit check names the proxies the rotation waits for (the proxy may have refreshed already:
    // its leaf lives 3 s).
    let (ok, out) = knit(&["check", "--dir", &identity, "--control-admin", &admin]);
    assert!(ok, "{out}");
    let line = out.lines().find(|l| l.starts_with("√ proxy leaves: ")).unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("still chain to an old anchor (web.test.serviceaccount.identity.knit.cluster.local)") || line.contains("all under the issuer's anchor"),
        "{line}"
    );
    // The dashboard's trust panel says the same (knit-control reloads the files within 100 ms).
    let mut trust = serde_json::Value::Null;
    for _ in 0..50 {
        let body = http_body(viz, "/api/identity");
        trust = serde_json::from_str(&body).unwrap();
        if trust["step"] == "issuer_switched" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(trust["step"], "issuer_switched", "{trust}");
    let anchors = trust["anchors"].as_array().unwrap();
    assert_eq!(anchors.iter().filter(|a| a["current"] == true).count(), 1, "{trust}");
    assert_eq!(anchors.len(), 2, "{trust}");
    let behind = trust["leaves"]["behind"].as_u64().unwrap();
    let shown: Vec<&str> = trust["leaves"]["behind_shown"].as_array().unwrap().iter().map(|b| b["identity"].as_str().unwrap()).collect();
    assert!(shown.len() as u64 == behind && shown.iter().all(|i| i.starts_with("web.test.")), "{trust}");
    let (ok, out) = knit(&["check", "--dir", &identity, "--control-admin", "127.0.0.1:1"]);
    assert!(!ok && out.contains("× proxy leaves: knit-control at 127.0.0.1:1"), "{out}");
    // Once the proxy has refreshed under the new issuer, the old anchor goes.
    let mut last = String::new();
    for _ in 0..60 {
        std::thread::sleep(Duration::from_millis(250));
        let (ok, out) = rotate(&["--control-admin", &admin]);
        if ok {
            last = out;
            break;
        }
        assert!(out.contains("refusing to remove the old anchor") || out.contains("started too recently"), "{out}");
        last = out;
    }
    assert!(last.contains("step 3 of 3") && last.contains("complete"), "{last}");
    assert_eq!(certs(&bundle), 1);
    assert!(!std::path::Path::new(&format!("{identity}/next")).exists());
    let (ok, out) = knit(&["check", "--dir", &identity]);
    assert!(ok && out.contains("no rotation under way"), "{out}");
    // The proxy still holds a certificate that chains to the bundle that is left.
    let (ok, out) = knit(&["identity", "issuer", "--dir", &identity]);
    assert!(ok, "the new anchor's key is in place: {out}");
    drop(rt);
}

/// The shipped alert rules parse and fire 30 and 7 days ahead (promtool, from Debian's
/// prometheus package), and `knit install --prometheus-rule` wraps the same rules.
#[test]
fn identity_alert_rules_fire_30_and_7_days_ahead() {
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/prometheus");
    for args in [&["check", "rules", "knit-identity.rules.yml"][..], &["test", "rules", "knit-identity.rules.test.yml"][..]] {
        let out = std::process::Command::new("promtool").args(args).current_dir(&rules).output().expect("promtool (Debian's prometheus package)");
        assert!(out.status.success(), "promtool {args:?}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    let (ok, out) = knit(&["install", "--prometheus-rule"]);
    assert!(ok, "{out}");
    let object: serde_json::Value = serde_yaml::from_str(out.trim_start_matches("---\n")).unwrap();
    let file: serde_json::Value = serde_yaml::from_str(&std::fs::read_to_string(rules.join("knit-identity.rules.yml")).unwrap()).unwrap();
    assert_eq!(object["kind"], "PrometheusRule");
    assert_eq!(object["spec"], file, "the PrometheusRule holds the rules file");
}

/// A cluster as cert-manager and trust-manager keep it, reduced to what a rotation touches: the
/// objects applied, and what the two controllers do with them (trust-manager writes the Bundle's
/// sources into the ConfigMap; cert-manager issues the issuer again when its Certificate's
/// `issuerRef` is not the Issuer that signed the Secret, from that Issuer's CA Secret).
struct CertManagerCluster {
    objects: Vec<serde_json::Value>,
}

impl CertManagerCluster {
    fn apply(&mut self, yaml: &str) {
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let o: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
            let key = |v: &serde_json::Value| (v["kind"].clone(), v["metadata"]["namespace"].clone(), v["metadata"]["name"].clone());
            self.objects.retain(|old| key(old) != key(&o));
            self.objects.push(o);
        }
        self.reconcile();
    }

    fn get(&self, kind: &str, name: &str) -> Option<&serde_json::Value> {
        self.objects.iter().find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
    }

    fn secret(&self, name: &str, key: &str) -> String {
        use base64::Engine;
        let b64 = self.get("Secret", name).unwrap_or_else(|| panic!("no Secret {name}"))["data"][key].as_str().unwrap().to_string();
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap()
    }

    fn reconcile(&mut self) {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let bundle = self.get("Bundle", "knit-identity-trust-roots").unwrap().clone();
        let pem: String = bundle["spec"]["sources"].as_array().unwrap().iter().map(|s| self.secret(s["secret"]["name"].as_str().unwrap(), "tls.crt")).collect();
        let roots = serde_json::json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "knit-identity-trust-roots", "namespace": "knit",
            "labels": {"trust.cert-manager.io/bundle": "knit-identity-trust-roots"}}, "data": {"ca-bundle.crt": pem}});
        self.objects.retain(|o| !(o["kind"] == "ConfigMap" && o["metadata"]["name"] == "knit-identity-trust-roots"));
        self.objects.push(roots);
        let issuer_ref = self.get("Certificate", "knit-identity-issuer").unwrap()["spec"]["issuerRef"]["name"].as_str().unwrap().to_string();
        let signed_by = self.get("Secret", "knit-identity-issuer").map(|s| s["metadata"]["annotations"]["cert-manager.io/issuer-name"].clone());
        if signed_by.as_ref().and_then(|s| s.as_str()) != Some(issuer_ref.as_str()) {
            let ca_secret = self.get("Issuer", &issuer_ref).unwrap()["spec"]["ca"]["secretName"].as_str().unwrap().to_string();
            let ca = knit_identity::create::Credentials { cert_pem: self.secret(&ca_secret, "tls.crt"), key_pem: self.secret(&ca_secret, "tls.key") };
            let issuer = knit_identity::create::issuer("identity.knit.cluster.local", Duration::from_secs(48 * 3600), &ca).unwrap();
            self.objects.retain(|o| !(o["kind"] == "Secret" && o["metadata"]["name"] == "knit-identity-issuer"));
            self.objects.push(serde_json::json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
                "metadata": {"name": "knit-identity-issuer", "namespace": "knit", "annotations": {"cert-manager.io/issuer-name": issuer_ref}},
                "data": {"tls.crt": b64(&issuer.cert_pem), "tls.key": b64(&issuer.key_pem), "ca.crt": b64(&ca.cert_pem)}}));
        }
    }

    /// What `kubectl get -o json` would print, in a file for --from.
    fn save<'a>(&self, path: &'a str) -> &'a str {
        std::fs::write(path, serde_json::json!({"apiVersion": "v1", "kind": "List", "items": self.objects}).to_string()).unwrap();
        path
    }
}

#[test]
fn rotate_with_cert_manager_prints_each_steps_objects() {
    use super::knit_io;
    let dir = temp_dir("rotate-cert-manager");
    std::fs::create_dir_all(&dir).unwrap();
    let anchor = knit_identity::create::trust_anchor("root.knit.cluster.local", Duration::from_secs(3650 * 86_400)).unwrap();
    std::fs::write(format!("{dir}/ca.crt"), &anchor.cert_pem).unwrap();
    // knit install's cert-manager objects, and the anchor Secret the user creates.
    let (ok, out, err) = knit_io(&["install", "--identity-external-issuer", "--identity-trust-anchors-file", &format!("{dir}/ca.crt")], "");
    assert!(ok, "{err}");
    let mut cluster = CertManagerCluster { objects: Vec::new() };
    let installed: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&out).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect();
    cluster.objects.extend(installed.into_iter().filter(|o| ["Issuer", "Certificate", "Bundle"].contains(&o["kind"].as_str().unwrap_or_default())));
    cluster.objects.push(
        serde_json::json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls", "metadata": {"name": "knit-trust-anchor", "namespace": "knit"},
        "data": {"tls.crt": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &anchor.cert_pem),
                 "tls.key": base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &anchor.key_pem)}}),
    );
    cluster.reconcile();
    let state = format!("{dir}/state.json");
    let rotate = |cluster: &CertManagerCluster, extra: &[&str]| {
        let mut args = vec!["identity", "rotate", "--external-issuer", "--from", cluster.save(&state)];
        args.extend_from_slice(extra);
        knit_io(&args, "")
    };
    let anchors = |cluster: &CertManagerCluster| {
        let pem = cluster.get("ConfigMap", "knit-identity-trust-roots").unwrap()["data"]["ca-bundle.crt"].as_str().unwrap().to_string();
        knit_identity::inspect::pem_certs(&pem).unwrap().len()
    };
    let parse =
        |yaml: &str| -> Vec<serde_json::Value> { serde_yaml::Deserializer::from_str(yaml).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect() };
    let kinds = |objects: &[serde_json::Value]| {
        objects.iter().map(|o| format!("{}/{}", o["kind"].as_str().unwrap(), o["metadata"]["name"].as_str().unwrap())).collect::<Vec<_>>()
    };
    let (ok, out, err) = rotate(&cluster, &["--status"]);
    assert!(ok && out.contains("no rotation under way"), "{out}{err}");

    // 1. The new anchor's Secret, and the Bundle with both sources.
    let (ok, out, err) = rotate(&cluster, &[]);
    assert!(ok && err.contains("step 1 of 3"), "{err}");
    let printed = parse(&out);
    let today = time::OffsetDateTime::now_utc().date();
    let secret = format!("knit-trust-anchor-{}{:02}{:02}", today.year(), u8::from(today.month()), today.day());
    assert_eq!(kinds(&printed), [format!("Secret/{secret}"), "Bundle/knit-identity-trust-roots".to_string()]);
    let sources: Vec<&str> = printed[1]["spec"]["sources"].as_array().unwrap().iter().map(|s| s["secret"]["name"].as_str().unwrap()).collect();
    assert_eq!(sources, ["knit-trust-anchor", secret.as_str()]);
    super::kubernetes_validate(&out, "1.33.0", "rotate-cert-manager-1");
    assert_eq!(super::cert_manager_validate(&printed, "rotate-cert-manager-1"), Ok(1));
    cluster.apply(&out);
    assert_eq!(anchors(&cluster), 2);
    let (_, out, _) = rotate(&cluster, &["--status"]);
    assert!(out.contains("step 1 of 3 done"), "{out}");

    // 2. An Issuer of the new Secret, and the Certificate pointed at it: cert-manager issues the
    // issuer again under the new anchor.
    let (ok, out, err) = rotate(&cluster, &[]);
    assert!(ok && err.contains("step 2 of 3"), "{err}");
    let printed = parse(&out);
    assert_eq!(kinds(&printed), [format!("Issuer/{secret}"), "Certificate/knit-identity-issuer".to_string()]);
    assert_eq!(printed[1]["spec"]["issuerRef"]["name"], secret.as_str());
    assert_eq!(super::cert_manager_validate(&printed, "rotate-cert-manager-2"), Ok(2));
    cluster.apply(&out);
    assert_eq!(cluster.secret("knit-identity-issuer", "ca.crt"), cluster.secret(&secret, "tls.crt"), "cert-manager issued it from the new anchor");
    let (_, out, _) = rotate(&cluster, &["--status"]);
    assert!(out.contains("step 2 of 3 done"), "{out}");

    // 3. Refused without knit-control's word; with it, the Bundle keeps the new Secret alone.
    let (ok, _, err) = rotate(&cluster, &[]);
    assert!(!ok && err.contains("--control-admin"), "{err}");
    let identity = format!("{dir}/control");
    knit_identity::layout::init(std::path::Path::new(&identity), &knit_identity::layout::Params::default()).unwrap();
    std::fs::write(
        format!("{identity}/trust-anchors.pem"),
        cluster.get("ConfigMap", "knit-identity-trust-roots").unwrap()["data"]["ca-bundle.crt"].as_str().unwrap(),
    )
    .unwrap();
    let issuer = knit_identity::create::Credentials {
        cert_pem: cluster.secret("knit-identity-issuer", "tls.crt"),
        key_pem: cluster.secret("knit-identity-issuer", "tls.key"),
    };
    knit_identity::layout::write_issuer(std::path::Path::new(&identity), &issuer).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let admin = rt.block_on(async {
        let mut id = knit_control::config::IdentityConfig::for_dir(&identity);
        id.issuance_lifetime = Duration::from_secs(1);
        id.clock_skew = Duration::from_millis(500);
        let control = knit_control::Control::bind(knit_control::config::Config::local(id)).await.unwrap();
        let admin = control.addrs().admin;
        tokio::spawn(control.run(std::future::pending()));
        admin.to_string()
    });
    let mut last = (false, String::new(), String::new());
    for _ in 0..40 {
        last = rotate(&cluster, &["--control-admin", &admin]);
        if last.0 {
            break;
        }
        assert!(last.2.contains("started too recently"), "{}", last.2);
        std::thread::sleep(Duration::from_millis(250));
    }
    let (ok, out, err) = last;
    assert!(ok && err.contains("step 3 of 3"), "{err}");
    assert!(err.contains("kubectl -n knit delete issuer.cert-manager.io/knit-trust-anchor secret/knit-trust-anchor"), "{err}");
    let printed = parse(&out);
    assert_eq!(kinds(&printed), ["Bundle/knit-identity-trust-roots"]);
    assert_eq!(printed[0]["spec"]["sources"], serde_json::json!([{"secret": {"name": secret, "key": "tls.crt"}}]));
    cluster.apply(&out);
    assert_eq!(anchors(&cluster), 1);
    let (_, out, _) = rotate(&cluster, &["--status"]);
    assert!(out.contains("no rotation under way"), "{out}");
    // A second rotation the same day would reuse the Secret's name: refused.
    let (ok, _, err) = rotate(&cluster, &[]);
    assert!(!ok && err.contains("one rotation a day"), "{err}");
    drop(rt);
}
