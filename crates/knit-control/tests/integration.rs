//! knit-control's integration tests: the identity service over real gRPC on 127.0.0.1, with
//! identity material written to a temporary directory as `knit identity init` writes it.

// Helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use knit_control::{
    config::{Config, IdentityConfig},
    Control,
};
use knit_identity::{
    create, csr,
    inspect::CertInfo,
    layout,
    token::{Claims, TokenKey},
};
use linkerd2_proxy_api::identity::{identity_client::IdentityClient, CertifyRequest};
use std::{
    path::{Path, PathBuf},
    time::Duration,
};
use tonic::Code;

const ID: &str = "web.default.serviceaccount.identity.knit.cluster.local";
const DAY: Duration = Duration::from_secs(86_400);

struct Pki {
    dir: PathBuf,
    anchor: create::Credentials,
    key: TokenKey,
}

fn pki(name: &str) -> Pki {
    let dir = std::env::temp_dir().join(format!("knit-control-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let m = layout::init(&dir, &layout::Params::default()).unwrap();
    Pki { dir, anchor: m.anchor, key: m.token_key }
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn token(key: &TokenKey, identity: &str, ttl: i64) -> Vec<u8> {
    key.sign(&Claims { identity: identity.into(), expires_at: now() + ttl }).into_bytes()
}

async fn start(dir: &Path) -> (knit_control::Addrs, IdentityClient<tonic::transport::Channel>) {
    let mut identity = IdentityConfig::for_dir(dir);
    identity.reload_interval = Duration::from_millis(100);
    let config = Config::local(identity);
    let control = Control::bind(config).await.expect("control plane starts");
    let addrs = control.addrs();
    tokio::spawn(control.run(std::future::pending()));
    let client = IdentityClient::connect(format!("http://{}", addrs.identity)).await.expect("connect");
    (addrs, client)
}

async fn metrics(addr: std::net::SocketAddr) -> String {
    admin_get(addr, "/metrics").await
}

/// The whole HTTP/1 answer (status line, headers, body) of an admin GET.
async fn admin_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

fn request(identity: &str, token: Vec<u8>, csr: Vec<u8>) -> CertifyRequest {
    CertifyRequest { identity: identity.into(), token, certificate_signing_request: csr }
}

#[tokio::test]
async fn certifies_a_proxy_and_serves_expiry_metrics() {
    let pki = pki("happy");
    let (addrs, mut client) = start(&pki.dir).await;
    let local = csr::generate(ID).unwrap();
    let rsp = client.certify(request(ID, token(&pki.key, ID, 600), local.csr_der.clone())).await.expect("certified").into_inner();
    let leaf = CertInfo::from_der(&rsp.leaf_certificate).unwrap();
    assert_eq!(leaf.dns_sans, [ID]);
    assert_eq!(rsp.intermediate_certificates.len(), 1);
    let issuer = CertInfo::from_der(&rsp.intermediate_certificates[0]).unwrap();
    assert_eq!(leaf.issuer, issuer.subject);
    let valid_until = rsp.valid_until.unwrap().seconds;
    assert!((valid_until - now() - 86_400).abs() <= 30, "24 h leaf (+ skew)");
    let m = metrics(addrs.admin).await;
    assert!(m.contains("identity_certificates_issued_total 1"), "{m}");
    assert!(m.contains("identity_issuer_expiry_timestamp_seconds "), "{m}");
    let anchor = CertInfo::from_pem(&pki.anchor.cert_pem).unwrap();
    let sha256 = knit_identity::inspect::fingerprint(&knit_identity::inspect::pem_certs(&pki.anchor.cert_pem).unwrap()[0]);
    assert!(
        m.contains(&format!(
            "identity_trust_anchor_expiry_timestamp_seconds{{subject=\"{}\",sha256=\"{sha256}\"}} {}",
            anchor.subject,
            anchor.not_after.unix_timestamp()
        )),
        "{m}"
    );
    // The leaf just signed, counted under the anchor it chains to; listed to loopback callers.
    assert!(m.contains(&format!("identity_leaves{{anchor=\"{}\",sha256=\"{sha256}\"}} 1", anchor.subject)), "{m}");
    let answer = admin_get(addrs.admin, "/identity/leaves").await;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{answer}");
    let report: knit_control::identity::LeavesReport = serde_json::from_str(body).unwrap();
    assert_eq!(report.leaves.len(), 1);
    assert_eq!(report.leaves[0].anchor_sha256, sha256);
    // The dashboard's trust panel: the same anchor, its expiry, and the leaf under it.
    let answer = admin_get(addrs.viz, "/api/identity").await;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{answer}");
    let trust: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(trust["step"], "steady", "{trust}");
    assert_eq!(trust["anchors"].as_array().unwrap().len(), 1, "{trust}");
    let a = &trust["anchors"][0];
    assert_eq!(
        (a["sha256"].as_str(), a["not_after"].as_i64(), a["current"].as_bool(), a["leaves"].as_u64()),
        (Some(sha256.as_str()), Some(anchor.not_after.unix_timestamp()), Some(true), Some(1))
    );
    assert_eq!(trust["issuer"]["subject"], issuer.subject.as_str());
    assert_eq!((trust["leaves"]["total"].as_u64(), trust["leaves"]["behind"].as_u64()), (Some(1), Some(0)));
    assert_eq!(trust["warn_secs"], 30 * 86_400);
}

#[tokio::test]
async fn bad_requests_fail_clearly_and_are_counted() {
    let pki = pki("bad");
    let (addrs, mut client) = start(&pki.dir).await;
    let csr_der = csr::generate(ID).unwrap().csr_der;
    let cases: Vec<(CertifyRequest, Code, &str)> = vec![
        (request(ID, Vec::new(), csr_der.clone()), Code::InvalidArgument, "token is empty"),
        (
            request(ID, token(&pki.key, "db.default.serviceaccount.identity.knit.cluster.local", 600), csr_der.clone()),
            Code::PermissionDenied,
            "the token vouches for",
        ),
        (request(ID, token(&pki.key, ID, -10), csr_der.clone()), Code::Unauthenticated, "expired"),
        (request(ID, token(&TokenKey::new(&[9; 32]).unwrap(), ID, 600), csr_der.clone()), Code::Unauthenticated, "does not verify"),
        (request(ID, b"knit1.garbage".to_vec(), csr_der.clone()), Code::Unauthenticated, "not a Knit local-mode token"),
        (
            request(ID, token(&pki.key, ID, 600), csr::generate("other.default.serviceaccount.identity.knit.cluster.local").unwrap().csr_der),
            Code::FailedPrecondition,
            "exactly one DNS SAN",
        ),
        (request(ID, token(&pki.key, ID, 600), b"junk".to_vec()), Code::FailedPrecondition, "not a DER"),
    ];
    for (req, code, text) in cases {
        let status = client.certify(req).await.expect_err("refused");
        assert_eq!(status.code(), code, "{status:?}");
        assert!(status.message().contains(text), "{:?} should mention {text:?}", status.message());
    }
    let m = metrics(addrs.admin).await;
    for reason in ["missing_field", "identity_mismatch", "token_expired", "token_invalid", "csr_identity", "csr_invalid"] {
        assert!(m.contains(&format!("identity_certify_failures_total{{reason=\"{reason}\"}}")), "{reason} missing in\n{m}");
    }
    // And a good request still works.
    assert!(client.certify(request(ID, token(&pki.key, ID, 600), csr_der)).await.is_ok());
}

#[tokio::test]
async fn issuer_rotation_is_picked_up_without_a_restart() {
    let pki = pki("rotate");
    let (addrs, mut client) = start(&pki.dir).await;
    let certify = |mut client: IdentityClient<tonic::transport::Channel>, key: &TokenKey| {
        let req = request(ID, token(key, ID, 600), csr::generate(ID).unwrap().csr_der);
        async move { client.certify(req).await.map(|r| CertInfo::from_der(&r.into_inner().leaf_certificate).unwrap().issuer) }
    };
    let first = certify(client.clone(), &pki.key).await.unwrap();
    // A broken issuer file is refused and the old issuer keeps signing.
    std::fs::write(pki.dir.join(layout::ISSUER_CERT), "not a certificate").unwrap();
    let mut refused = false;
    for _ in 0..100 {
        if metrics(addrs.admin).await.contains("identity_reloads_total{result=\"error\"}") {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused, "the broken issuer file was read and refused");
    assert_eq!(certify(client.clone(), &pki.key).await.unwrap(), first);
    // A new issuer from the same anchor takes over.
    let next = create::issuer("identity-2.knit.cluster.local", 365 * DAY, &pki.anchor).unwrap();
    layout::write_issuer(&pki.dir, &next).unwrap();
    let mut rotated = false;
    for _ in 0..50 {
        if certify(client.clone(), &pki.key).await.unwrap().contains("identity-2") {
            rotated = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(rotated, "new leaves come from the new issuer");
    let _ = client.certify(request(ID, token(&pki.key, ID, 600), csr::generate(ID).unwrap().csr_der)).await.unwrap();
}

/// The issuer Secret as cert-manager writes it for a CA Issuer whose own Secret holds only an
/// intermediate: `tls.crt` is the issuer alone and `ca.crt` the intermediate, which
/// `--issuer-ca` adds to the chain every leaf is served with. (The recorded Secret is the
/// CLI's fixture; its `tls.crt` carries the chain, which is split here into the two files.)
#[tokio::test]
async fn the_issuer_secrets_ca_crt_completes_the_chain() {
    use base64::Engine;
    let pki = pki("issuer-ca");
    let recorded: serde_json::Value = serde_json::from_str(include_str!("../../knit/tests/k8s/cert-manager-identity.json")).unwrap();
    let data = |key: &str| {
        let b64 = recorded["items"][0]["data"][key].as_str().unwrap();
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap()
    };
    let chain = knit_identity::inspect::pem_certs(&data("tls.crt")).unwrap();
    let secret = pki.dir.join("issuer-secret");
    std::fs::create_dir_all(&secret).unwrap();
    std::fs::write(secret.join("tls.crt"), knit_identity::inspect::cert_pem(&chain[0])).unwrap();
    std::fs::write(secret.join("tls.key"), data("tls.key")).unwrap();
    std::fs::write(secret.join("ca.crt"), knit_identity::inspect::cert_pem(&chain[1])).unwrap();
    std::fs::write(pki.dir.join(layout::TRUST_ANCHORS), data("ca.crt")).unwrap();
    let mut identity = IdentityConfig::for_dir(&pki.dir);
    identity.issuer_cert = Some(secret.join("tls.crt"));
    identity.issuer_key = Some(secret.join("tls.key"));
    // Without ca.crt the issuer does not reach the anchor: start-up is refused.
    let err = Control::bind(Config::local(identity.clone())).await.err().expect("refused without ca.crt");
    assert!(format!("{err:#}").contains("does not chain to any trust anchor"), "{err:#}");
    identity.issuer_ca = Some(secret.join("ca.crt"));
    let control = Control::bind(Config::local(identity)).await.expect("control plane starts");
    let addrs = control.addrs();
    tokio::spawn(control.run(std::future::pending()));
    let mut client = IdentityClient::connect(format!("http://{}", addrs.identity)).await.unwrap();
    let rsp = client.certify(request(ID, token(&pki.key, ID, 600), csr::generate(ID).unwrap().csr_der)).await.expect("certified").into_inner();
    assert_eq!(rsp.intermediate_certificates, chain, "the leaf is served with the issuer and the intermediate");
}

#[tokio::test]
async fn an_untrusted_issuer_stops_start_up_with_the_reason() {
    let pki = pki("untrusted");
    let other = create::trust_anchor("someone-else", DAY).unwrap();
    std::fs::write(pki.dir.join(layout::TRUST_ANCHORS), &other.cert_pem).unwrap();
    let config = Config::local(IdentityConfig::for_dir(&pki.dir));
    let err = Control::bind(config).await.err().expect("refused");
    let msg = format!("{err:#}");
    assert!(msg.contains("does not chain to any trust anchor") && msg.contains("someone-else"), "{msg}");
}

#[path = "integration/abuse.rs"]
mod abuse;

#[path = "integration/discovery.rs"]
mod discovery;

#[path = "integration/webhook.rs"]
mod webhook;

#[test]
fn kubernetes_mode_without_a_cluster_stops_with_the_reason() {
    let pki = pki("nocluster");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_knit-control"))
        .args(["--kubernetes", "--identity-dir"])
        .arg(&pki.dir)
        .env("KUBECONFIG", pki.dir.join("no-such-kubeconfig"))
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("connecting to the Kubernetes API (in-cluster config or KUBECONFIG)"), "{err}");
}

/// A first run without an identity names the command that makes one.
#[test]
fn no_identity_says_how_to_make_one() {
    let dir = std::env::temp_dir().join(format!("knit-control-no-identity-{}", std::process::id()));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_knit-control")).arg("--identity-dir").arg(&dir).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("no identity in {0}: create one with `knit identity init --dir {0}`", dir.display())), "{err}");
    assert!(err.contains("No such file or directory"), "the cause is kept: {err}");
}
