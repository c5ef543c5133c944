//! Hands-off rotation as a cluster runs it: the trust bundle in a ConfigMap volume and the issuer
//! in a `kubernetes.io/tls` Secret volume, both updated the kubelet's way (a new timestamped
//! directory, then the `..data` symlink swapped over it), the control plane serving TLS and the
//! proxies discovering through it. Under steady traffic: a full trust-anchor rotation and an
//! issuer renewal, with zero failed requests and no process restarted; then a control-plane
//! restart, after which the proxies' discovery channels reconnect under the new bundle alone.

use super::fixture::{count_from, send, service, Backend, Behaviour, LocalMesh};
use crate::harness::{get, request, scrape, sum_metric};
use knit_identity::create;
use std::{
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

const YEAR: Duration = Duration::from_secs(365 * 86_400);

/// A volume as the kubelet writes it: `KEY -> ..data/KEY`, `..data -> ..<generation>`; an
/// update writes a new generation and renames a new `..data` link over the old one.
struct KubeletVolume(PathBuf);

impl KubeletVolume {
    fn write(&self, files: &[(&str, &str)]) {
        let dir = &self.0;
        std::fs::create_dir_all(dir).unwrap();
        let generation = format!("..{}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos());
        std::fs::create_dir(dir.join(&generation)).unwrap();
        for (key, contents) in files {
            std::fs::write(dir.join(&generation).join(key), contents).unwrap();
        }
        let old = std::fs::read_link(dir.join("..data")).ok();
        std::os::unix::fs::symlink(&generation, dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        for (key, _) in files {
            let link = dir.join(key);
            if std::fs::symlink_metadata(&link).is_err() {
                std::os::unix::fs::symlink(Path::new("..data").join(key), &link).unwrap();
            }
        }
        if let Some(old) = old {
            std::fs::remove_dir_all(dir.join(old)).unwrap();
        }
    }
}

fn tls_secret(issuer: &create::Credentials, ca: &create::Credentials) -> [(&'static str, String); 3] {
    [("tls.crt", issuer.cert_pem.clone()), ("tls.key", issuer.key_pem.clone()), ("ca.crt", ca.cert_pem.clone())]
}

fn pairs<'a>(files: &'a [(&'static str, String); 3]) -> Vec<(&'static str, &'a str)> {
    files.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// knit-control's leaves, as `knit identity rotate` reads them.
async fn leaves(admin: std::net::SocketAddr) -> knit_control::identity::LeavesReport {
    let (status, body) = get(admin, "/identity/leaves").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anchor_rotation_and_issuer_renewal_through_kubelet_volumes_drop_no_request() {
    // The volumes are made from the identity `knit identity init` wrote, on knit-control's first
    // start; it reads them as a cluster's knit-control does. Leaves live 4 s.
    let configure: super::fixture::ControlConfigure = Arc::new(|c: &mut knit_control::config::Config| {
        let id = c.identity.identity_dir.clone();
        let base = id.parent().unwrap().to_path_buf();
        let (roots, issuer) = (KubeletVolume(base.join("trust-roots")), KubeletVolume(base.join("issuer")));
        if !roots.0.exists() {
            let read = |f: &str| std::fs::read_to_string(id.join(f)).unwrap();
            roots.write(&[("ca-bundle.crt", &read(knit_identity::layout::TRUST_ANCHORS))]);
            let files = [
                ("tls.crt", read(knit_identity::layout::ISSUER_CERT)),
                ("tls.key", read(knit_identity::layout::ISSUER_KEY)),
                ("ca.crt", read(knit_identity::layout::TRUST_ANCHORS)),
            ];
            issuer.write(&pairs(&files));
        }
        c.identity.trust_anchors = Some(roots.0.join("ca-bundle.crt"));
        c.identity.issuer_cert = Some(issuer.0.join("tls.crt"));
        c.identity.issuer_key = Some(issuer.0.join("tls.key"));
        c.identity.issuer_ca = Some(issuer.0.join("ca.crt"));
        c.identity.issuance_lifetime = Duration::from_secs(4);
        c.identity.clock_skew = Duration::from_secs(1);
        c.identity.reload_interval = Duration::from_millis(100);
    });
    let mut mesh = LocalMesh::start_tls_configured("rotation-volumes", configure).await;
    let roots = KubeletVolume(mesh.dir.join("trust-roots"));
    let roots_dir = &roots.0;
    let issuer_volume = KubeletVolume(mesh.dir.join("issuer"));
    mesh.anchors_file = roots.0.join("ca-bundle.crt");
    mesh.min_refresh = Duration::from_millis(500);
    let old_anchor = create::Credentials {
        cert_pem: std::fs::read_to_string(mesh.dir.join("identity").join(knit_identity::layout::TRUST_ANCHORS)).unwrap(),
        key_pem: std::fs::read_to_string(mesh.dir.join("identity").join(knit_identity::layout::ANCHOR_KEY)).unwrap(),
    };

    let books = Backend::start("books", Behaviour::Ok).await;
    let books_proxy = mesh.workload(&books, "books", &[("app", "books")]).await;
    mesh.write("services.yaml", &service("books", &[("app", "books")], &[])).await;
    let web = mesh.proxy("web", "web", None).await;
    assert_eq!(count_from(&send(web.addrs.outbound, "books:8080", "/", 5).await, "books"), 5);
    let admins = [web.addrs.admin, books_proxy.addrs.admin];

    // Steady traffic, about 100 requests a second, for the whole rotation.
    let (ok, failed, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let load = {
        let (ok, failed, stop, outbound) = (ok.clone(), failed.clone(), stop.clone(), web.addrs.outbound);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(10));
            let mut inflight = tokio::task::JoinSet::new();
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let (ok, failed) = (ok.clone(), failed.clone());
                inflight.spawn(async move {
                    let (status, body) = request(outbound, "GET", "/", "books:8080", "").await;
                    let counter = if status == 200 { ok } else { failed };
                    if status != 200 {
                        eprintln!("failed: {status} {body}");
                    }
                    counter.fetch_add(1, Ordering::Relaxed);
                });
            }
            while inflight.join_next().await.is_some() {}
        })
    };
    // Each proxy reads the bundle when it changes and at every refresh (whichever comes first
    // sees a new bundle): the sum of both counts moves once it has read the bundle written.
    let bundle_reads = || async move {
        let mut v = Vec::new();
        for a in admins {
            let m = scrape(a).await;
            v.push(sum_metric(&m, "identity_trust_anchor_reloads_total", &[r#"result="ok""#]) + sum_metric(&m, "identity_cert_refreshes_total", &[]));
        }
        v
    };
    // Writes the bundle, and returns once every proxy has read it.
    let write_bundle = |pem: String| async move {
        let before = bundle_reads().await;
        KubeletVolume(roots_dir.clone()).write(&[("ca-bundle.crt", &pem)]);
        crate::harness::eventually(Duration::from_secs(30), || async { bundle_reads().await.iter().zip(&before).all(|(now, b)| now > b) }).await
    };
    // knit-control knows every proxy's leaf and each chains to `anchor` under `issuer`.
    let control_admin = mesh.control.admin;
    let leaves_under = |anchor: String, issuer: String| async move {
        crate::harness::eventually(Duration::from_secs(30), || {
            let (anchor, issuer) = (anchor.clone(), issuer.clone());
            async move {
                let r = leaves(control_admin).await;
                let ours: Vec<_> = r.leaves.iter().filter(|l| l.identity.contains(".test.serviceaccount.")).collect();
                r.complete && ours.len() >= 2 && ours.iter().all(|l| l.anchor.contains(&anchor) && l.issuer.contains(&issuer))
            }
        })
        .await
    };
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 1. The new anchor joins the bundle (kubectl apply of the ConfigMap, then the kubelet).
    let new_anchor = create::trust_anchor("root-2.knit.cluster.local", 10 * YEAR).unwrap();
    assert!(write_bundle(format!("{}{}", old_anchor.cert_pem, new_anchor.cert_pem)).await, "every proxy read the two-anchor bundle");
    // 2. The issuer Secret switches to an issuer under the new anchor.
    let issuer_2 = create::issuer("identity-2.knit.cluster.local", YEAR, &new_anchor).unwrap();
    issuer_volume.write(&pairs(&tls_secret(&issuer_2, &new_anchor)));
    assert!(leaves_under("root-2".into(), "identity-2".into()).await, "every leaf chains to the new anchor: {:?}", leaves(control_admin).await);
    // 3. The old anchor leaves the bundle.
    assert!(write_bundle(new_anchor.cert_pem.clone()).await, "every proxy read the bundle without the old anchor");
    // 4. cert-manager renews the issuer (a new key under the same anchor).
    let issuer_3 = create::issuer("identity-3.knit.cluster.local", YEAR, &new_anchor).unwrap();
    issuer_volume.write(&pairs(&tls_secret(&issuer_3, &new_anchor)));
    assert!(leaves_under("root-2".into(), "identity-3".into()).await, "every leaf comes from the renewed issuer");
    // A broken update (a key for another certificate) keeps the renewed issuer, and says so.
    let stray = create::issuer("stray", YEAR, &new_anchor).unwrap();
    issuer_volume.write(&[("tls.crt", &issuer_3.cert_pem), ("tls.key", &stray.key_pem), ("ca.crt", &new_anchor.cert_pem)]);
    crate::assert_eventually!(sum_metric(&scrape(control_admin).await, "identity_reloads_total", &[r#"result="error""#]) >= 1.0, "the bad update is counted");
    tokio::time::sleep(Duration::from_secs(5)).await; // more than one leaf lifetime on the kept issuer
    issuer_volume.write(&pairs(&tls_secret(&issuer_3, &new_anchor)));

    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("rotation through kubelet volumes: {ok} requests succeeded, {failed} failed");
    assert!(ok > 500, "traffic flowed throughout: {ok}");
    assert_eq!(failed, 0, "no request failed during the rotation and the renewal");
    for a in admins {
        assert_eq!(sum_metric(&scrape(a).await, "tls_handshake_failures_total", &[]), 0.0, "no mesh handshake failed");
    }

    // The control plane restarts: the proxies' destination and policy channels reconnect, their
    // TLS checked against the bundle of now (the new anchor alone), and discovery goes on.
    mesh.restart_control(Duration::from_millis(200)).await;
    mesh.write("services-2.yaml", &service("books-v2", &[("app", "books")], &[])).await;
    crate::assert_eventually!(
        count_from(&send(web.addrs.outbound, "books-v2:8080", "/", 3).await, "books") == 3,
        "a Service created after the restart is discovered over the reconnected channel"
    );
}
