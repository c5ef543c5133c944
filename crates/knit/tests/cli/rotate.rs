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
