//! The `knit` binary as a person uses it.

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
    let (ok, out) = knit(&["demo", "--duration", "4s", "--interval", "1"]);
    assert!(ok, "{out}");
    assert!(out.contains("WORKLOAD") && out.contains("books-v1") && out.contains("stopped cleanly"), "{out}");
    // Traffic flowed: web's row shows a success rate, not a dash.
    let web = out.lines().rev().find(|l| l.starts_with("web ")).expect("a web row");
    assert!(web.contains('%'), "{web}");
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
    let row = |name: &str| text.lines().rev().find(|l| l.starts_with(name)).unwrap_or_default().split_whitespace().nth(2).and_then(|r| r.parse::<f64>().ok()).unwrap_or(0.0);
    assert!(row("books-v1 ") == 0.0 && row("books-v2 ") > 10.0, "after the edit: v1 {} rps, v2 {} rps\n{text}", row("books-v1 "), row("books-v2 "));
}
