//! The injector webhook over real HTTPS on 127.0.0.1, called by curl as the API server would call
//! it: a recorded AdmissionReview of a Deployment's pod in, an AdmissionReview with a JSON patch
//! out. The namespace opts in through `--inject-values`-free defaults plus pod annotations; the
//! serving certificate is signed by a CA the client is given, as `caBundle` would be.

use super::pki;
use base64::Engine;
use knit_control::{
    config::{Config, IdentityConfig},
    Control,
};
use knit_identity::create;
use serde_json::{json, Value};
use std::{path::Path, time::Duration};

fn review(mutate: impl FnOnce(&mut Value)) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/inject/admission-review.json");
    let mut review: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    mutate(&mut review["request"]["object"]);
    review
}

/// POSTs `body` with curl (checking the server against `ca`), returns the status and JSON body.
async fn post(addr: std::net::SocketAddr, ca: &Path, body: String) -> (u16, Value) {
    let ca = ca.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "10", "-o", "-", "-w", "\n%{http_code}", "--cacert"])
            .arg(&ca)
            .args(["--resolve", &format!("knit-proxy-injector.knit.svc:{}:127.0.0.1", addr.port())])
            .args(["-H", "Content-Type: application/json", "--data-binary", "@-"])
            .arg(format!("https://knit-proxy-injector.knit.svc:{}/inject", addr.port()))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(body.as_bytes())?;
                child.wait_with_output()
            })
            .expect("curl runs");
        let text = String::from_utf8(out.stdout).unwrap();
        let (json, code) = text.trim_end().rsplit_once('\n').unwrap_or(("", text.trim()));
        (code.parse().unwrap_or(0), serde_json::from_str(json).unwrap_or(Value::Null))
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn injects_pods_over_https_and_refuses_bad_annotations() {
    let pki = pki("webhook");
    let ca = create::trust_anchor("webhook-ca", Duration::from_secs(3600)).unwrap();
    let serving = create::server(&["knit-proxy-injector.knit.svc".to_string()], Duration::from_secs(3600), &ca).unwrap();
    for (file, text) in [("ca.pem", &ca.cert_pem), ("tls.crt", &serving.cert_pem), ("tls.key", &serving.key_pem)] {
        std::fs::write(pki.dir.join(file), text).unwrap();
    }
    let mut config = Config::local(IdentityConfig::for_dir(&pki.dir));
    config.webhook.webhook_tls_cert = Some(pki.dir.join("tls.crt"));
    config.webhook.webhook_tls_key = Some(pki.dir.join("tls.key"));
    let control = Control::bind(config).await.expect("control plane starts");
    let addr = control.addrs().webhook.expect("the webhook listens");
    tokio::spawn(control.run(std::future::pending()));
    let ca = pki.dir.join("ca.pem");

    // A Deployment's pod that opts in: allowed, with a patch that meshes it.
    let pod = review(|p| {
        p["metadata"]["annotations"]["linkerd.io/inject"] = json!("enabled");
    });
    let (status, rsp) = post(addr, &ca, pod.to_string()).await;
    assert_eq!(status, 200, "{rsp}");
    let r = &rsp["response"];
    assert_eq!(r["uid"], pod["request"]["uid"]);
    assert_eq!(r["allowed"], true, "{rsp}");
    assert_eq!(r["patchType"], "JSONPatch");
    let encoded = r["patch"].as_str().unwrap_or_else(|| panic!("no patch in {rsp}"));
    let patch: json_patch::Patch = serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(encoded).unwrap()).unwrap();
    let mut patched = pod["request"]["object"].clone();
    json_patch::patch(&mut patched, &patch).expect("the patch applies to the pod it was made for");
    assert_eq!(patched["spec"]["initContainers"][1]["name"], "knit-proxy");
    assert_eq!(patched["spec"]["initContainers"][1]["resources"]["requests"]["cpu"], "150m");
    assert_eq!(patched["metadata"]["labels"]["linkerd.io/proxy-deployment"], "books", "the ReplicaSet's Deployment");
    assert_eq!(patched["metadata"]["labels"]["linkerd.io/workload-ns"], "shop", "the namespace comes from the request");
    // The proxy follows its namespace's copy of the bundle; the pod is annotated with the digest
    // of the control plane's bundle at injection time.
    let anchors = std::fs::read_to_string(pki.dir.join(knit_identity::layout::TRUST_ANCHORS)).unwrap();
    let env = patched["spec"]["initContainers"][1]["env"].as_array().unwrap();
    assert!(env.iter().any(|e| e["name"] == "KNIT_PROXY_IDENTITY_TRUST_ANCHORS_FILE" && e["value"] == "/var/run/knit/identity/trust-roots/ca-bundle.crt"));
    assert!(patched["spec"]["volumes"].as_array().unwrap().iter().any(|v| v["configMap"]["name"] == "knit-identity-trust-roots"));
    let digest = knit_identity::inspect::fingerprint(anchors.as_bytes());
    assert_eq!(patched["metadata"]["annotations"]["linkerd.io/trust-root-sha256"], digest.as_str(), "the control plane's anchors");

    // Not opted in: allowed unchanged.
    let (status, rsp) = post(addr, &ca, review(|_| {}).to_string()).await;
    assert_eq!((status, &rsp["response"]["allowed"], rsp["response"].get("patch")), (200, &json!(true), None));

    // An annotation that cannot be honoured: refused with the reason.
    let bad = review(|p| {
        p["metadata"]["annotations"]["linkerd.io/inject"] = json!("enabled");
        p["metadata"]["annotations"]["config.linkerd.io/proxy-memory-limit"] = json!("a lot");
    });
    let (status, rsp) = post(addr, &ca, bad.to_string()).await;
    assert_eq!(status, 200);
    assert_eq!(rsp["response"]["allowed"], false);
    let message = rsp["response"]["status"]["message"].as_str().unwrap();
    assert!(message.contains("shop/books-6f8d9c7b5d-") && message.contains("config.linkerd.io/proxy-memory-limit"), "{message}");

    // Not an AdmissionReview: 400 with the reason.
    let (status, rsp) = post(addr, &ca, "{\"kind\":".into()).await;
    assert_eq!(status, 400);
    assert!(rsp["error"].as_str().unwrap().contains("not an AdmissionReview"), "{rsp}");
}
