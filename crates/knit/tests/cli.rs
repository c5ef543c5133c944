//! The `knit` binary as a person uses it.

// Helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::process::Command;

fn knit(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_knit")).args(args).output().expect("run knit");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

fn temp_dir(name: &str) -> String {
    let d = std::env::temp_dir().join(format!("knit-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d.to_string_lossy().into_owned()
}

#[test]
fn identity_init_check_token_and_rotation() {
    let dir = temp_dir("identity");
    let (ok, out) = knit(&["identity", "init", "--dir", &dir]);
    assert!(ok, "{out}");
    assert!(out.contains("root.knit.cluster.local") && out.contains("identity.knit.cluster.local"), "{out}");
    let (ok, out) = knit(&["identity", "init", "--dir", &dir]);
    assert!(!ok && out.contains("--force"), "existing material is not overwritten: {out}");
    let (ok, out) = knit(&["check", "--dir", &dir]);
    assert!(ok && out.contains("chains to the trust anchors"), "{out}");
    let (ok, token) = knit(&["identity", "token", "--dir", &dir, "--service-account", "web", "--namespace", "default"]);
    assert!(ok && token.starts_with("knit1."), "{token}");
    let (ok, out) = knit(&["identity", "show", &format!("{dir}/issuer/crt.pem")]);
    assert!(ok && out.contains("CA certificate") && out.contains("ECDSA P-256"), "{out}");
    // Replacing the anchors without a matching issuer is caught, with the fix.
    let other = temp_dir("identity-other");
    assert!(knit(&["identity", "init", "--dir", &other]).0);
    std::fs::copy(format!("{other}/trust-anchors.pem"), format!("{dir}/trust-anchors.pem")).unwrap();
    let (ok, out) = knit(&["check", "--dir", &dir]);
    assert!(!ok && out.contains("does not chain") && out.contains("fix:"), "{out}");
}

#[test]
fn check_reads_a_proxys_certificate_expiry() {
    // A stand-in admin server exporting what a certified proxy exports.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let expiry = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 86_000;
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for stream in listener.incoming().take(2) {
            let mut s = stream.unwrap();
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let body = format!("identity_cert_expiration_timestamp_seconds {expiry}\n# EOF\n");
            let _ = write!(s, "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
        }
    });
    let dir = temp_dir("proxycheck");
    assert!(knit(&["identity", "init", "--dir", &dir]).0);
    let (ok, out) = knit(&["check", "--dir", &dir, "--proxy", &addr.to_string()]);
    assert!(ok, "{out}");
    assert!(out.contains(&format!("proxy {addr} certificate: valid, expires in 23h")), "{out}");
    let (ok, out) = knit(&["check", "--dir", &dir, "--proxy", "127.0.0.1:1"]);
    assert!(!ok && out.contains("cannot reach the admin server"), "{out}");
}

#[test]
fn check_reports_missing_material() {
    let (ok, out) = knit(&["check", "--dir", &temp_dir("missing")]);
    assert!(!ok);
    assert!(out.contains("trust-anchors.pem"), "{out}");
}

#[test]
fn demo_runs_for_a_duration_and_exits_cleanly() {
    let (ok, out) = knit(&["demo", "--duration", "6s", "--interval", "1"]);
    assert!(ok, "{out}");
    assert!(out.contains("WORKLOAD") && out.contains("books-v1") && out.contains("stopped cleanly"), "{out}");
    // Traffic flowed: web's row shows a success rate, not a dash.
    let web = out.lines().rev().find(|l| l.starts_with("web ")).expect("a web row");
    assert!(web.contains('%'), "{web}");
    // A trace was drawn end to end: web's proxy, then books' and authors' under web's calls.
    let tree: Vec<&str> = out.lines().skip_while(|l| !l.starts_with("trace ")).take_while(|l| !l.trim().is_empty()).collect();
    assert!(tree.len() >= 12, "a trace of at least ten spans:\n{out}");
    for hop in
        ["web inbound server", "web outbound client GET /books", "inbound server GET /books", "web outbound client GET /authors", "inbound client GET /authors"]
    {
        assert!(tree.iter().any(|l| l.contains(hop)), "{hop} in\n{}", tree.join("\n"));
    }
}

/// The demo's promise: edit the split manifest while it runs, and the traffic follows.
#[test]
fn demo_follows_an_edited_split() {
    let dir = temp_dir("demo-split");
    let child = Command::new(env!("CARGO_BIN_EXE_knit"))
        .args(["demo", "--duration", "9s", "--interval", "1", "--dir", &dir])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run knit demo");
    let split = std::path::Path::new(&dir).join("books-split.yaml");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !split.exists() {
        assert!(std::time::Instant::now() < deadline, "the demo writes its manifests into --dir");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_secs(3));
    let text = std::fs::read_to_string(&split).unwrap().replace("weight: 90", "weight: 0").replace("weight: 10", "weight: 100");
    std::fs::write(&split, text).unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    // The last table: books-v1 gets nothing, books-v2 everything.
    let row = |name: &str| {
        text.lines().rev().find(|l| l.starts_with(name)).unwrap_or_default().split_whitespace().nth(2).and_then(|r| r.parse::<f64>().ok()).unwrap_or(0.0)
    };
    assert!(row("books-v1 ") == 0.0 && row("books-v2 ") > 10.0, "after the edit: v1 {} rps, v2 {} rps\n{text}", row("books-v1 "), row("books-v2 "));
}

/// Sends SIGTERM to `child` and waits (at most 20 s) for it to exit; returns whether it exited
/// successfully and removed its `knit-demo-PID` temporary directory.
fn terminate_demo(child: &mut std::process::Child) -> (bool, bool) {
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("knit demo did not stop within 20s of SIGTERM");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    (status.success(), !std::env::temp_dir().join(format!("knit-demo-{pid}")).exists())
}

/// SIGTERM (`kill`, systemd, a test harness) stops the demo as Ctrl-C does, removing its
/// temporary directory with the identity keys, also while it is still starting.
#[test]
fn demo_stops_on_sigterm_and_removes_its_keys() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_knit")).args(["demo", "--interval", "1"]).stdout(std::process::Stdio::null()).spawn().unwrap();
    let dir = std::env::temp_dir().join(format!("knit-demo-{}", child.id()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !dir.join("identity").exists() {
        assert!(std::time::Instant::now() < deadline, "the demo creates {}", dir.display());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert_eq!(terminate_demo(&mut child), (true, true), "stopped while starting: exit status and {} removed", dir.display());
}

/// Runs knit with `stdin`, returning success, stdout and stderr apart.
fn knit_io(args: &[&str], stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_knit"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run knit");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Validates a YAML stream strictly against the Kubernetes schemas of `version` with the PyPI
/// package kubernetes-validate (scripts/test.sh installs it).
fn kubernetes_validate(yaml: &str, version: &str, name: &str) {
    let file = format!("{}.yaml", temp_dir(name));
    std::fs::write(&file, yaml).unwrap();
    let out = Command::new("kubernetes-validate")
        .args(["-k", version, "--strict", "--quiet", &file])
        .output()
        .expect("kubernetes-validate is installed (scripts/test.sh installs it)");
    assert!(out.status.success(), "{file} against {version}:\n{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

/// Validates the cert-manager and trust-manager objects among `objects` against those projects'
/// CRD schemas (tests/k8s/cert-manager: Node and the npm package scripts/test.sh installs there).
/// The number of objects checked, or what failed.
fn cert_manager_validate(objects: &[serde_json::Value], name: &str) -> Result<usize, String> {
    let file = format!("{}.json", temp_dir(name));
    std::fs::write(&file, serde_json::to_string(objects).unwrap()).unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/k8s/cert-manager/validate.mjs");
    let out = Command::new("node").arg(&script).arg(&file).output().expect("node is installed (scripts/test.sh installs it)");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if !out.status.success() {
        return Err(format!("{stdout}{stderr}"));
    }
    let counted = stdout.split_whitespace().next().and_then(|n| n.parse().ok());
    counted.ok_or_else(|| format!("unexpected output: {stdout}{stderr}"))
}

fn injector_corpus() -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../knit-control/tests/inject");
    ["pod", "deployment", "statefulset", "job", "cronjob", "hostnetwork", "traced"]
        .iter()
        .map(|f| format!("---\n{}", std::fs::read_to_string(dir.join(format!("{f}.yaml"))).unwrap()))
        .collect()
}

#[test]
fn multicluster_install_validates_against_kubernetes_1_29_and_newer() {
    let (ok, out, err) = knit_io(&["multicluster", "install"], "");
    assert!(ok, "{err}");
    for version in ["1.29.0", "1.37.0"] {
        kubernetes_validate(&out, version, &format!("multicluster-install-{version}"));
    }
    // `link --kubeconfig`: the credentials Secret and the Link.
    let kubeconfig = format!("{}.kubeconfig", temp_dir("multicluster-link"));
    std::fs::write(&kubeconfig, "apiVersion: v1\nkind: Config\nclusters:\n- name: east\n  cluster: {server: 'https://203.0.113.7:6443'}\ncontexts:\n- name: east\n  context: {cluster: east, user: mirror}\ncurrent-context: east\nusers:\n- name: mirror\n  user: {token: t}\n").unwrap();
    let args = [
        "multicluster",
        "link",
        "--cluster-name",
        "east",
        "--gateway-address",
        "203.0.113.8",
        "--gateway-identity",
        "linkerd-gateway.linkerd-multicluster.serviceaccount.identity.knit.cluster.local",
        "--kubeconfig",
        &kubeconfig,
    ];
    let (ok, out, err) = knit_io(&args, "");
    assert!(ok, "{err}");
    assert!(out.contains("kind: Secret") && out.contains("clusterCredentialsSecret: cluster-credentials-east"), "{out}");
    kubernetes_validate(&out, "1.37.0", "multicluster-link");
}

#[test]
fn install_validates_against_kubernetes_1_29_and_newer() {
    for (mode, args) in [("default", vec!["install"]), ("ha", vec!["install", "--ha"])] {
        let (ok, out, err) = knit_io(&args, "");
        assert!(ok, "{err}");
        for version in ["1.29.0", "1.33.0", "1.37.0"] {
            kubernetes_validate(&out, version, &format!("install-{mode}-{version}"));
        }
    }
    // With cert-manager and trust-manager: the Kubernetes objects validate (kubernetes-validate
    // has no schemas for cert-manager's kinds: it skips them with a warning, and
    // cert_manager_validate checks them); the issuer Secret and the bundle's ConfigMap are theirs
    // to write, the proxies' ConfigMap volume reads it.
    let dir = temp_dir("install-external");
    std::fs::create_dir_all(&dir).unwrap();
    let anchor = knit_identity::create::trust_anchor("root.knit.cluster.local", std::time::Duration::from_secs(86_400)).unwrap();
    std::fs::write(format!("{dir}/ca.crt"), &anchor.cert_pem).unwrap();
    let (ok, out, err) = knit_io(&["install", "--identity-external-issuer", "--identity-trust-anchors-file", &format!("{dir}/ca.crt")], "");
    assert!(ok, "{err}");
    kubernetes_validate(&out, "1.33.0", "install-external");
    let objects: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&out).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect();
    let kind = |k: &str| objects.iter().filter(|o| o["kind"] == k).map(|o| o["metadata"]["name"].as_str().unwrap_or_default().to_string()).collect::<Vec<_>>();
    assert_eq!(kind("Certificate"), ["knit-identity-issuer"]);
    assert_eq!(kind("Bundle"), ["knit-identity-trust-roots"]);
    assert!(!kind("Secret").contains(&"knit-identity-issuer".to_string()) && !kind("ConfigMap").contains(&"knit-identity-trust-roots".to_string()));
    assert_eq!(cert_manager_validate(&objects, "install-external"), Ok(3), "the Issuer, the Certificate and the Bundle");
    let mut broken = objects.clone();
    let at = broken.iter().position(|o| o["kind"] == "Certificate").unwrap();
    broken[at]["spec"]["privateKey"]["algorithm"] = "EC".into();
    let err = cert_manager_validate(&broken, "install-external-broken").unwrap_err();
    assert!(err.contains("Certificate knit/knit-identity-issuer") && err.contains("privateKey/algorithm"), "{err}");
    let certificate = objects.iter().find(|o| o["kind"] == "Certificate").unwrap();
    assert_eq!(certificate["spec"]["isCA"], true);
    assert_eq!(certificate["spec"]["privateKey"]["encoding"], "PKCS8", "knit-control reads PKCS#8 keys");
    let deployment = objects.iter().find(|o| o["kind"] == "Deployment").unwrap();
    assert!(!deployment.to_string().contains("--distribute-trust-roots"), "trust-manager writes the bundle's copies");
    let (ok, _, err) = knit_io(&["install", "--identity-external-issuer"], "");
    assert!(!ok && err.contains("--identity-trust-anchors-file"), "{err}");
    // Linkerd's two steps: the CRDs alone, then the rest (which holds them too).
    let (ok, crds, err) = knit_io(&["install", "--crds"], "");
    assert!(ok, "{err}");
    let kinds = |yaml: &str| -> Vec<String> {
        serde_yaml::Deserializer::from_str(yaml)
            .map(|d| serde::Deserialize::deserialize(d).unwrap())
            .map(|o: serde_json::Value| o["kind"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(kinds(&crds).len() >= 9 && kinds(&crds).iter().all(|k| k == "CustomResourceDefinition"), "{crds}");
    kubernetes_validate(&crds, "1.29.0", "install-crds");
}

#[test]
fn inject_meshes_a_corpus_that_stays_valid_and_uninject_restores_it() {
    let (ok, install, err) = knit_io(&["install"], "");
    assert!(ok, "{err}");
    let dir = temp_dir("inject");
    std::fs::create_dir_all(&dir).unwrap();
    let install_file = format!("{dir}/install.yaml");
    std::fs::write(&install_file, &install).unwrap();
    let corpus = injector_corpus();
    let (ok, injected, err) = knit_io(&["inject", "-", "--from", &install_file], &corpus);
    assert!(ok, "{err}");
    assert!(err.contains("6 workload(s) injected") && err.contains("skipped DaemonSet node-agent") && err.contains("hostNetwork"), "{err}");
    // Containers (they have an image) named knit-proxy, wherever the pod template is.
    fn proxies(v: &serde_json::Value) -> usize {
        match v {
            serde_json::Value::Object(m) => {
                usize::from(m.get("name").is_some_and(|n| n == "knit-proxy") && m.contains_key("image")) + m.values().map(proxies).sum::<usize>()
            }
            serde_json::Value::Array(a) => a.iter().map(proxies).sum(),
            _ => 0,
        }
    }
    let parse = |s: &str| -> Vec<serde_json::Value> {
        serde_yaml::Deserializer::from_str(s).map(|d| serde::Deserialize::deserialize(d).unwrap()).filter(|v: &serde_json::Value| !v.is_null()).collect()
    };
    assert_eq!(parse(&injected).iter().map(proxies).sum::<usize>(), 6, "{injected}");
    for version in ["1.29.0", "1.33.0", "1.37.0"] {
        kubernetes_validate(&injected, version, &format!("injected-{version}"));
    }
    // Injecting again changes nothing; uninjecting gives the original documents back.
    let (ok, twice, _) = knit_io(&["inject", "-", "--from", &install_file], &injected);
    assert!(ok && twice == injected);
    let (ok, restored, _) = knit_io(&["uninject", "-"], &injected);
    assert!(ok);
    assert_eq!(parse(&restored), parse(&corpus));
}

#[test]
fn inject_and_upgrade_refuse_bad_input_by_name() {
    let (ok, _, err) = knit_io(&["inject", "-", "--identity-trust-anchors-file", "/dev/null"], "kind: Pod\nmetadata: {name: a}\n---\n: [\n");
    assert!(!ok && err.contains("-: document 2"), "{err}");
    let bad = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  annotations: {config.linkerd.io/proxy-cpu-request: lots}\nspec:\n  containers: [{name: app, image: x}]\n";
    let (ok, _, err) = knit_io(&["inject", "-", "--identity-trust-anchors-file", "/dev/null"], bad);
    assert!(!ok && err.contains("Pod web") && err.contains("config.linkerd.io/proxy-cpu-request"), "{err}");
    let (ok, _, err) = knit_io(&["inject", "-"], bad);
    assert!(!ok && err.contains("--from"), "{err}");
    let (ok, _, err) = knit_io(&["upgrade", "--from", "-"], "kind: ConfigMap\nmetadata: {name: other, namespace: knit}\n");
    assert!(!ok && err.contains("knit-identity-trust-roots"), "{err}");
}

#[test]
fn upgrade_keeps_the_trust_anchor_and_issuer_and_uninstall_lists_everything() {
    let (ok, install, _) = knit_io(&["install"], "");
    assert!(ok);
    let (ok, upgraded, err) = knit_io(&["upgrade", "--from", "-", "--image-version", "0.2.0"], &install);
    assert!(ok, "{err}");
    let secret = |s: &str, name: &str| -> String {
        let start = s.find(&format!("name: {name}\n")).unwrap_or_else(|| panic!("{name}"));
        s[start..].split("---").next().unwrap().to_string()
    };
    for kept in ["knit-identity-issuer", "knit-identity-trust-roots", "knit-proxy-injector-tls"] {
        assert_eq!(secret(&upgraded, kept), secret(&install, kept), "{kept} is kept");
    }
    assert!(upgraded.contains("knit-control:0.2.0"));
    let (ok, uninstall, err) = knit_io(&["uninstall"], "");
    assert!(ok && err.contains("CRDs"), "{err}");
    for kind in ["Namespace", "ClusterRole", "ClusterRoleBinding", "MutatingWebhookConfiguration", "CustomResourceDefinition", "Deployment"] {
        assert!(uninstall.contains(&format!("kind: {kind}\n")), "{kind}: {uninstall}");
    }
    assert!(!uninstall.contains("BEGIN CERTIFICATE"));
}

/// A stand-in Kubernetes API server on 127.0.0.1: answers GETs of the objects it holds by their
/// API path, 404 (a real Status) otherwise, and SelfSubjectAccessReviews with `allowed`. Real
/// HTTP/1.1 with keep-alive, as kube's client speaks it.
struct FakeApi {
    addr: std::net::SocketAddr,
}

impl FakeApi {
    fn start(objects: std::collections::HashMap<String, serde_json::Value>, allowed: bool) -> Self {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let objects = std::sync::Arc::new(objects);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let objects = objects.clone();
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut out = stream;
                    loop {
                        let mut line = String::new();
                        if reader.read_line(&mut line).unwrap_or(0) == 0 {
                            return;
                        }
                        let mut parts = line.split_whitespace();
                        let (method, path) = (parts.next().unwrap_or("").to_string(), parts.next().unwrap_or("").split('?').next().unwrap_or("").to_string());
                        let mut length = 0;
                        loop {
                            let mut h = String::new();
                            reader.read_line(&mut h).unwrap();
                            if h == "\r\n" || h.is_empty() {
                                break;
                            }
                            if let Some(v) = h.to_ascii_lowercase().strip_prefix("content-length:") {
                                length = v.trim().parse().unwrap();
                            }
                        }
                        let mut body = vec![0; length];
                        reader.read_exact(&mut body).unwrap();
                        let (status, json) = if method == "POST" && path.ends_with("/selfsubjectaccessreviews") {
                            let mut review: serde_json::Value = serde_json::from_slice(&body).unwrap();
                            review["status"] = serde_json::json!({"allowed": allowed});
                            (201, review)
                        } else if let Some(o) = objects.get(&path) {
                            (200, o.clone())
                        } else {
                            (
                                404,
                                serde_json::json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": format!("{path} not found"), "reason": "NotFound", "code": 404}),
                            )
                        };
                        let body = json.to_string();
                        let _ = write!(out, "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}", body.len());
                    }
                });
            }
        });
        Self { addr }
    }

    fn kubeconfig(&self, name: &str) -> String {
        let path = format!("{}.kubeconfig", temp_dir(name));
        let config = format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: fake, cluster: {{server: \"http://{}\"}}}}]\nusers: [{{name: me, user: {{token: t}}}}]\ncontexts: [{{name: fake, context: {{cluster: fake, user: me}}}}]\ncurrent-context: fake\n",
            self.addr
        );
        std::fs::write(&path, config).unwrap();
        path
    }
}

/// The API path of an object as `kubectl get` would fetch it.
fn api_path(o: &serde_json::Value) -> String {
    let (api_version, kind, name) = (o["apiVersion"].as_str().unwrap(), o["kind"].as_str().unwrap(), o["metadata"]["name"].as_str().unwrap());
    let plural = match kind {
        "CustomResourceDefinition" => "customresourcedefinitions".to_string(),
        "MutatingWebhookConfiguration" => "mutatingwebhookconfigurations".to_string(),
        "PodDisruptionBudget" => "poddisruptionbudgets".to_string(),
        k => format!("{}s", k.to_ascii_lowercase()),
    };
    let prefix = if api_version == "v1" { "/api/v1".to_string() } else { format!("/apis/{api_version}") };
    match o["metadata"]["namespace"].as_str() {
        Some(ns) => format!("{prefix}/namespaces/{ns}/{plural}/{name}"),
        None => format!("{prefix}/{plural}/{name}"),
    }
}

fn knit_with_kubeconfig(args: &[&str], kubeconfig: &str) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_knit")).args(args).env("KUBECONFIG", kubeconfig).output().expect("run knit");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn check_reads_a_cluster_and_says_how_to_fix_what_is_wrong() {
    let (ok, install, _) = knit_io(&["install"], "");
    assert!(ok);
    let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&install).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect();
    let mut objects: std::collections::HashMap<String, serde_json::Value> = docs.iter().map(|o| (api_path(o), o.clone())).collect();
    objects.insert("/version".into(), serde_json::json!({"major": "1", "minor": "31", "gitVersion": "v1.31.4", "gitCommit": "a", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.23", "compiler": "gc", "platform": "linux/amd64"}));
    let deployment = "/apis/apps/v1/namespaces/knit/deployments/knit-control".to_string();
    objects.get_mut(&deployment).unwrap()["status"] = serde_json::json!({"replicas": 1, "readyReplicas": 1});
    let tap_api = "/apis/apiregistration.k8s.io/v1/apiservices/v1alpha1.tap.knit.dev";
    objects.get_mut(tap_api).unwrap()["status"] =
        serde_json::json!({"conditions": [{"type": "Available", "status": "True", "reason": "Passed", "message": "all checks passed"}]});

    let healthy = FakeApi::start(objects.clone(), true);
    let (ok, out) = knit_with_kubeconfig(&["check"], &healthy.kubeconfig("check-healthy"));
    assert!(ok, "{out}");
    for line in [
        "√ Kubernetes API: reachable, version v1.31.4",
        "√ CRD servers.policy.linkerd.io: installed",
        "√ knit-control: 1/1 replicas ready",
        "√ identity issuer: chains to the trust anchors",
        "its caBundle signs the serving certificate",
        "√ tap API: registered, and the API server reaches it",
    ] {
        assert!(out.contains(line), "{line}\n{out}");
    }

    // Not ready, a CRD missing, a webhook whose caBundle is someone else's.
    let mut broken = objects.clone();
    broken.get_mut(&deployment).unwrap()["status"] = serde_json::json!({"replicas": 1, "readyReplicas": 0});
    broken.remove("/apis/apiextensions.k8s.io/v1/customresourcedefinitions/servers.policy.linkerd.io");
    let hook = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/knit-proxy-injector-knit";
    broken.get_mut(hook).unwrap()["webhooks"][0]["clientConfig"]["caBundle"] = serde_json::json!("LS0tLS1CRUdJTg==");
    broken.get_mut(tap_api).unwrap()["status"] = serde_json::json!({"conditions": [{"type": "Available", "status": "False", "reason": "FailedDiscoveryCheck", "message": "failing or missing response from https://10.96.7.7:443/apis/tap.knit.dev/v1alpha1"}]});
    let api = FakeApi::start(broken, true);
    let (ok, out) = knit_with_kubeconfig(&["check"], &api.kubeconfig("check-broken"));
    assert!(!ok && out.contains("4 check(s) failed"), "{out}");
    assert!(out.contains("× tap API: the API server cannot reach it (FailedDiscoveryCheck: failing or missing response"), "{out}");
    assert!(out.contains("× CRD servers.policy.linkerd.io: not found; fix: knit install"), "{out}");
    assert!(out.contains("× knit-control: 0/1 replicas ready; fix: kubectl -n knit describe deployment knit-control"), "{out}");
    assert!(out.contains("× proxy injector webhook: its caBundle is not the CA"), "{out}");

    // Before installing: no namespace yet, and the permissions installing needs.
    let fresh = FakeApi::start([("/version".to_string(), objects["/version"].clone())].into(), true);
    let (ok, out) = knit_with_kubeconfig(&["check", "--pre"], &fresh.kubeconfig("check-pre"));
    assert!(ok && out.contains("√ control-plane namespace: knit does not exist yet") && out.contains("√ may create customresourcedefinitions: yes"), "{out}");
    let denied = FakeApi::start([("/version".to_string(), objects["/version"].clone())].into(), false);
    let (ok, out) = knit_with_kubeconfig(&["check", "--pre"], &denied.kubeconfig("check-denied"));
    assert!(!ok && out.contains("× may create clusterroles: no; fix: installing needs cluster-admin"), "{out}");

    // No cluster at all.
    let (ok, out) = knit_with_kubeconfig(&["check"], "/nonexistent/kubeconfig");
    assert!(!ok && out.contains("× Kubernetes API") && out.contains("fix:"), "{out}");
}

/// `knit inject app.yaml` with no --from reads the installation from the cluster, as `linkerd
/// inject` does: the same output as --from the install manifests. Offline it names what to pass.
#[test]
fn inject_reads_the_installation_from_the_cluster() {
    let (ok, install, _) = knit_io(&["install"], "");
    assert!(ok);
    let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&install).map(|d| serde::Deserialize::deserialize(d).unwrap()).collect();
    let config = docs.iter().find(|o| o["kind"] == "ConfigMap" && o["metadata"]["name"] == "knit-config").expect("knit install renders knit-config");
    let api = FakeApi::start([(api_path(config), config.clone())].into(), true);
    let app = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: demo}\nspec:\n  selector: {matchLabels: {app: web}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: app, image: web}]\n";
    let home = temp_dir("inject-home");
    std::fs::create_dir_all(&home).unwrap();
    let inject = |args: &[&str], kubeconfig: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_knit"));
        cmd.args(["inject", "-"]).args(args).env("HOME", &home).env_remove("KUBECONFIG").env_remove("KUBERNETES_SERVICE_HOST");
        if let Some(k) = kubeconfig {
            cmd.env("KUBECONFIG", k);
        }
        let mut child = cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
        std::io::Write::write_all(&mut child.stdin.take().unwrap(), app.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (ok, from_cluster, err) = inject(&[], Some(&api.kubeconfig("inject-cluster")));
    assert!(ok && err.contains("1 workload(s) injected"), "{err}");
    let install_file = format!("{}.yaml", temp_dir("inject-install"));
    std::fs::write(&install_file, &install).unwrap();
    let (ok, from_file, err) = inject(&["--from", &install_file], None);
    assert!(ok, "{err}");
    assert!(from_cluster.contains("knit-proxy") && from_cluster == from_file, "{from_cluster}");
    // Installed elsewhere, or not at all: the namespace and the fix are named.
    let (ok, _, err) = inject(&["--namespace", "mesh"], Some(&api.kubeconfig("inject-elsewhere")));
    assert!(!ok && err.contains("no ConfigMap mesh/knit-config") && err.contains("--from"), "{err}");
    // No cluster at all: what to pass.
    let (ok, _, err) = inject(&[], None);
    assert!(!ok && err.contains("no cluster") && err.contains("--from install.yaml") && err.contains("--identity-trust-anchors-file"), "{err}");
}

#[path = "cli/viz.rs"]
mod viz;

#[path = "cli/rotate.rs"]
mod rotate;

/// The Helm chart (charts/knit) against `knit install`: the same objects, field for field. In a
/// module, so its helpers keep short names beside the rest of this file.
mod chart {
    use super::{temp_dir, Command};
    use serde_json::Value;
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::PathBuf;

    /// A certificate `knit install` takes as a file and the chart as a `--set-file` value, and the
    /// object and key of `knit install`'s output it ends up in.
    struct Certificate {
        flag: &'static str,
        value: &'static str,
        kind: &'static str,
        name: &'static str,
        key: &'static str,
    }

    const CERTIFICATES: [Certificate; 6] = [
        Certificate {
            flag: "--identity-trust-anchors-file",
            value: "identityTrustAnchorsPEM",
            kind: "ConfigMap",
            name: "knit-identity-trust-roots",
            key: "ca-bundle.crt",
        },
        Certificate {
            flag: "--identity-issuer-certificate-file",
            value: "identity.issuer.tls.crtPEM",
            kind: "Secret",
            name: "knit-identity-issuer",
            key: "tls.crt",
        },
        Certificate { flag: "--identity-issuer-key-file", value: "identity.issuer.tls.keyPEM", kind: "Secret", name: "knit-identity-issuer", key: "tls.key" },
        Certificate { flag: "--webhook-ca-file", value: "webhook.caPEM", kind: "Secret", name: "knit-proxy-injector-tls", key: "ca.crt" },
        Certificate { flag: "--webhook-cert-file", value: "webhook.crtPEM", kind: "Secret", name: "knit-proxy-injector-tls", key: "tls.crt" },
        Certificate { flag: "--webhook-key-file", value: "webhook.keyPEM", kind: "Secret", name: "knit-proxy-injector-tls", key: "tls.key" },
    ];

    fn repo() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    /// Helm: $KNIT_HELM, else target/tools/helm (scripts/install-tools.sh), else `helm` on PATH.
    fn helm() -> PathBuf {
        if let Some(path) = std::env::var_os("KNIT_HELM") {
            return path.into();
        }
        let tools = repo().join("target/tools/helm");
        if tools.exists() {
            return tools;
        }
        if Command::new("helm").arg("version").output().is_ok_and(|o| o.status.success()) {
            return "helm".into();
        }
        panic!("no helm: run scripts/install-tools.sh (it installs helm into target/tools), or set KNIT_HELM to a helm binary");
    }

    /// stdout of a command that must succeed. Not `knit()`: that one mixes stderr into the YAML.
    fn stdout_of(cmd: &mut Command) -> String {
        let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
        assert!(out.status.success(), "{cmd:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    /// The objects of a YAML stream by (kind, namespace, name); empty documents (Helm's templates
    /// that render nothing) left out. Comments, Helm's `# Source:` lines among them, are not data.
    fn objects(stream: &str) -> BTreeMap<(String, String, String), Value> {
        let mut out = BTreeMap::new();
        for doc in serde_yaml::Deserializer::from_str(stream) {
            let v: Value = serde::Deserialize::deserialize(doc).expect("a YAML document");
            if v.is_null() {
                continue;
            }
            let field = |f: &str| v["metadata"][f].as_str().unwrap_or_default().to_string();
            let key = (v["kind"].as_str().unwrap_or_default().to_string(), field("namespace"), field("name"));
            assert!(out.insert(key.clone(), v).is_none(), "{key:?} twice");
        }
        out
    }

    /// Writes the certificates of a fresh `knit install` into `dir`: flag, chart value and file of each.
    fn write_certificates(dir: &str) -> Vec<(&'static str, &'static str, String)> {
        use base64::Engine;
        std::fs::create_dir_all(dir).unwrap();
        let installed = objects(&stdout_of(Command::new(env!("CARGO_BIN_EXE_knit")).args(["install", "--skip-crds"])));
        CERTIFICATES
            .iter()
            .map(|c| {
                let object = installed
                    .get(&(c.kind.to_string(), "knit".to_string(), c.name.to_string()))
                    .unwrap_or_else(|| panic!("knit install renders no {} {}", c.kind, c.name));
                let data = object["data"][c.key].as_str().unwrap_or_else(|| panic!("{} {} has no {}", c.kind, c.name, c.key));
                let pem = if c.kind == "Secret" { base64::engine::general_purpose::STANDARD.decode(data).expect("base64") } else { data.as_bytes().to_vec() };
                let path = format!("{dir}/{}.pem", c.value);
                std::fs::write(&path, pem).unwrap();
                (c.flag, c.value, path)
            })
            .collect()
    }

    /// Where `a` (knit install's) and `b` (the chart's) first differ, as a JSON path and both values;
    /// for multi-line strings (the knit-config values.yaml) the first differing line.
    fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => x.keys().chain(y.keys()).collect::<BTreeSet<_>>().into_iter().find_map(|k| {
                let p = format!("{path}/{k}");
                match (x.get(k), y.get(k)) {
                    (Some(u), Some(v)) => first_difference(u, v, &p),
                    (u, v) => Some(format!(
                        "{p}: knit install has {}, helm template has {}",
                        u.map_or("nothing".into(), Value::to_string),
                        v.map_or("nothing".into(), Value::to_string)
                    )),
                }
            }),
            (Value::Array(x), Value::Array(y)) => x
                .iter()
                .zip(y)
                .enumerate()
                .find_map(|(i, (u, v))| first_difference(u, v, &format!("{path}/{i}")))
                .or_else(|| (x.len() != y.len()).then(|| format!("{path}: knit install has {} items, helm template has {}", x.len(), y.len()))),
            (Value::String(x), Value::String(y)) if x.contains('\n') && x != y => Some(match x.lines().zip(y.lines()).enumerate().find(|(_, (u, v))| u != v) {
                Some((n, (u, v))) => format!("{path}, line {}: knit install has {u:?}, helm template has {v:?}", n + 1),
                None => format!("{path}: knit install has {x:?}, helm template has {y:?}"),
            }),
            _ => (a != b).then(|| format!("{path}: knit install has {a}, helm template has {b}")),
        }
    }

    #[test]
    fn helm_chart_renders_what_knit_install_renders() {
        let helm = helm();
        let certificates = write_certificates(&temp_dir("helm-chart"));
        // (knit install flags, helm template flags): the defaults, --ha, and every other flag changed.
        let tracing = "proxy.tracing.enabled=true,proxy.tracing.collector.endpoint=otel.observability:4317,proxy.tracing.collector.meshIdentity.serviceAccountName=otel,proxy.tracing.sampleUntraced=0.01";
        let cases: [(&[&str], &[&str]); 5] = [
            (&[], &[]),
            // The same --set for both.
            (&["--set", tracing], &["--set-string", tracing]),
            (&["--ha"], &["--set", "ha=true"]),
            // cert-manager and trust-manager write the issuer and the bundle: no issuer files.
            (&["--identity-external-issuer"], &["--set", "identity.externalIssuer=true"]),
            (
                &[
                    "--namespace=mesh",
                    "--cluster-domain=corp.example",
                    "--identity-trust-domain=id.example",
                    "--controller-image=registry.example/control",
                    "--proxy-image=registry.example/proxy",
                    "--image-version=1.10",
                    "--default-inbound-policy=deny",
                    "--cluster-networks=10.0.0.0/8,fd00::/8",
                    "--controller-log-level=debug",
                    "--disable-native-sidecar",
                    "--identity-trust-anchors-inline",
                ],
                &[
                    "--set-string",
                    "namespace=mesh,clusterDomain=corp.example,identityTrustDomain=id.example,controllerImage=registry.example/control",
                    "--set-string",
                    "proxyImage=registry.example/proxy,imageVersion=1.10,defaultInboundPolicy=deny,controllerLogLevel=debug",
                    "--set-string",
                    r"clusterNetworks=10.0.0.0/8\,fd00::/8",
                    "--set",
                    "disableNativeSidecar=true,identity.trustAnchorsInline=true",
                ],
            ),
        ];
        for (knit_flags, helm_flags) in cases {
            let mut knit = Command::new(env!("CARGO_BIN_EXE_knit"));
            knit.arg("install").args(knit_flags);
            let mut chart = Command::new(&helm);
            chart.args(["template", "knit"]).arg(repo().join("charts/knit")).arg("--include-crds").args(helm_flags);
            let external = knit_flags.contains(&"--identity-external-issuer");
            for (flag, value, path) in &certificates {
                if external && value.starts_with("identity.issuer") {
                    continue;
                }
                knit.arg(flag).arg(path);
                chart.args(["--set-file", &format!("{value}={path}")]);
            }
            let (want, got) = (objects(&stdout_of(&mut knit)), objects(&stdout_of(&mut chart)));
            assert!(
                want.keys().any(|(kind, ..)| kind == "Deployment") && want.keys().any(|(kind, ..)| kind == "CustomResourceDefinition"),
                "knit install {knit_flags:?} renders the control plane and the CRDs"
            );
            let (only_knit, only_chart): (Vec<_>, Vec<_>) =
                (want.keys().filter(|k| !got.contains_key(*k)).collect(), got.keys().filter(|k| !want.contains_key(*k)).collect());
            assert!(
                only_knit.is_empty() && only_chart.is_empty(),
                "with {knit_flags:?}: only knit install renders {only_knit:?}; only the chart renders {only_chart:?}"
            );
            for (key, object) in &want {
                if let Some(d) = first_difference(object, &got[key], "") {
                    panic!("with {knit_flags:?}, {} {}/{}: {d}", key.0, key.1, key.2);
                }
            }
        }
    }

    /// charts/knit-multicluster against `knit multicluster install`, with the defaults and with every flag changed.
    #[test]
    fn helm_multicluster_chart_renders_what_knit_multicluster_install_renders() {
        let helm = helm();
        let cases: [(&[&str], &[&str]); 2] = [
            (&[], &[]),
            (
                &[
                    "--namespace=mc",
                    "--gateway-image=registry.example/pause:1",
                    "--gateway-service-type=NodePort",
                    "--control-plane-namespace=mesh",
                    "--identity-trust-domain=id.example",
                    "--probe-period-seconds=7",
                ],
                &[
                    "--set-string",
                    "namespace=mc,gateway.image=registry.example/pause:1,gateway.serviceType=NodePort,controlPlaneNamespace=mesh,identityTrustDomain=id.example",
                    "--set",
                    "gateway.probePeriodSeconds=7",
                ],
            ),
        ];
        for (knit_flags, helm_flags) in cases {
            let want = objects(&stdout_of(Command::new(env!("CARGO_BIN_EXE_knit")).args(["multicluster", "install"]).args(knit_flags)));
            let got = objects(&stdout_of(Command::new(&helm).args(["template", "mc"]).arg(repo().join("charts/knit-multicluster")).args(helm_flags)));
            assert_eq!(want.keys().collect::<Vec<_>>(), got.keys().collect::<Vec<_>>(), "with {knit_flags:?}: the same objects");
            for (key, object) in &want {
                if let Some(d) = first_difference(object, &got[key], "") {
                    panic!("with {knit_flags:?}, {key:?}: {d}");
                }
            }
        }
    }

    #[test]
    fn helm_chart_refuses_missing_certificates() {
        let helm = helm();
        let render = |sets: &[String]| {
            let out = Command::new(&helm)
                .args(["template", "knit"])
                .arg(repo().join("charts/knit"))
                .args(sets)
                .output()
                .unwrap_or_else(|e| panic!("run {}: {e}", helm.display()));
            (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
        };
        let (ok, err) = render(&[]);
        assert!(!ok && err.contains("the certificates are required") && err.contains("knit install") && err.contains("openssl"), "{err}");
        for c in &CERTIFICATES {
            assert!(err.contains(&format!("--set-file {}=", c.value)), "every missing certificate is named at once: {err}");
        }
        // All but the webhook key: only that one is asked for.
        let certificates = write_certificates(&temp_dir("helm-chart-missing"));
        let sets: Vec<String> = certificates
            .iter()
            .filter(|(_, value, _)| *value != "webhook.keyPEM")
            .flat_map(|(_, value, path)| ["--set-file".to_string(), format!("{value}={path}")])
            .collect();
        let (ok, err) = render(&sets);
        assert!(!ok && err.contains("--set-file webhook.keyPEM=") && !err.contains("identityTrustAnchorsPEM="), "{err}");
    }
}

/// `knit check --config-dir` reads a manifest directory as knit-control does: unknown fields are
/// warnings naming the file, document and field (failures with --strict-fields), an invalid
/// document fails.
#[test]
fn check_warns_of_unknown_manifest_fields() {
    let dir = temp_dir("check-fields");
    std::fs::create_dir_all(&dir).unwrap();
    let route = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: books, namespace: demo}\nspec:\n  parentRefs: [{kind: Service, name: books, port: 8080}]\n  rules:\n    - backendRefs:\n        - {name: books-v2, port: 8080, retries: 3}\n";
    std::fs::write(format!("{dir}/route.yaml"), route).unwrap();
    let (ok, out) = knit(&["check", "--config-dir", &dir]);
    assert!(ok, "{out}");
    assert!(out.contains(r#"‼ manifest route.yaml: document 1 (HTTPRoute demo/books): unknown field "spec.rules[0].backendRefs[0].retries""#), "{out}");
    assert!(out.contains("1 resource(s) in 1 file(s), 1 unknown field(s) ignored"), "{out}");
    let (ok, out) = knit(&["check", "--config-dir", &dir, "--strict-fields"]);
    assert!(!ok && out.contains("× manifest route.yaml: document 1") && out.contains("1 check(s) failed"), "{out}");
    std::fs::write(format!("{dir}/bad.yaml"), "apiVersion: policy.linkerd.io/v1beta3\nkind: Server\nmetadata: {name: s}\nspec: {port: -1}\n").unwrap();
    let (ok, out) = knit(&["check", "--config-dir", &dir]);
    assert!(!ok && out.contains("× manifest bad.yaml: document 1 (Server default/s)"), "{out}");
}
