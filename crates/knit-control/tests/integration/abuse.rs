//! knit-control against callers with no credentials (docs/security.md): oversized messages,
//! clients that connect and stall, lookups of made-up names, hostile identity names and a YAML
//! alias bomb. Each test checks what the caller gets and that everyone else is still served.

use super::{metrics, pki};
use knit_control::{
    config::{Config, IdentityConfig},
    Control,
};
use linkerd2_proxy_api::{
    destination::{destination_client::DestinationClient, GetDestination},
    identity::{identity_client::IdentityClient, CertifyRequest},
    inbound::{inbound_server_policies_client::InboundServerPoliciesClient, PortSpec},
    outbound::{outbound_policies_client::OutboundPoliciesClient, traffic_spec, TrafficSpec},
};
use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tonic::{transport::Channel, Code};

struct Running {
    addrs: knit_control::Addrs,
    index: std::sync::Arc<knit_control::index::Index>,
    manifests: std::path::PathBuf,
}

async fn start(name: &str) -> Running {
    let pki = pki(name);
    let manifests = pki.dir.join("manifests");
    std::fs::create_dir_all(&manifests).unwrap();
    std::fs::copy(std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/manifests/app.yaml"), manifests.join("app.yaml")).unwrap();
    let mut config = Config::local(IdentityConfig::for_dir(&pki.dir));
    config.discovery.config_dir = Some(manifests.clone());
    config.discovery.config_poll_interval = Duration::from_millis(20);
    let control = Control::bind(config).await.expect("control plane starts");
    let (addrs, index) = (control.addrs(), control.index().clone());
    tokio::spawn(control.run(std::future::pending()));
    Running { addrs, index, manifests }
}

async fn channel(addr: SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap()
}

const BIG: usize = 200 * 1024;

#[tokio::test]
async fn oversized_messages_are_refused_by_every_grpc_service() {
    let cp = start("abuse-size").await;
    let big = "x".repeat(BIG);
    let mut identity = IdentityClient::new(channel(cp.addrs.identity).await);
    let e = identity
        .certify(CertifyRequest {
            identity: "web.demo.serviceaccount.identity.knit.cluster.local".into(),
            token: big.clone().into_bytes(),
            certificate_signing_request: vec![0; 16],
        })
        .await
        .unwrap_err();
    assert!(matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted), "{e:?}");
    let mut dst = DestinationClient::new(channel(cp.addrs.destination).await);
    let e = dst.get(GetDestination { path: big.clone(), ..Default::default() }).await.unwrap_err();
    assert!(matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted), "{e:?}");
    let mut outbound = OutboundPoliciesClient::new(channel(cp.addrs.policy).await);
    let spec = TrafficSpec { source_workload: big.clone(), target: Some(traffic_spec::Target::Authority("books.demo:8080".into())) };
    let e = outbound.watch(spec).await.unwrap_err();
    assert!(matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted), "{e:?}");
    let mut inbound = InboundServerPoliciesClient::new(channel(cp.addrs.policy).await);
    let e = inbound.watch_port(PortSpec { workload: big, port: 8080 }).await.unwrap_err();
    assert!(matches!(e.code(), Code::OutOfRange | Code::ResourceExhausted), "{e:?}");
    // The same clients are still served.
    let ok = outbound
        .get(TrafficSpec {
            source_workload: r#"{"ns":"demo","external_workload":"web"}"#.into(),
            target: Some(traffic_spec::Target::Authority("books.demo:8080".into())),
        })
        .await;
    assert!(ok.is_ok(), "{ok:?}");
}

#[tokio::test]
async fn hostile_identity_names_are_refused_before_any_work() {
    let cp = start("abuse-identity").await;
    let mut identity = IdentityClient::new(channel(cp.addrs.identity).await);
    for name in ["web\nlevel=error msg=forged", &"a".repeat(300), "UPPER.case", "web..demo"] {
        let e = identity.certify(CertifyRequest { identity: name.into(), token: b"t".to_vec(), certificate_signing_request: vec![1] }).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{name:?}: {e:?}");
    }
    let text = metrics(cp.addrs.admin).await;
    assert!(text.contains(r#"identity_certify_failures_total{reason="invalid_identity"} 4"#), "{text}");
}

#[tokio::test]
async fn lookups_of_made_up_names_leave_no_state_behind() {
    let cp = start("abuse-lookups").await;
    let before = cp.index.stats();
    let mut dst = DestinationClient::new(channel(cp.addrs.destination).await);
    let mut outbound = OutboundPoliciesClient::new(channel(cp.addrs.policy).await);
    let ctx = r#"{"ns":"demo","external_workload":"web"}"#;
    for i in 0..2_000 {
        let path = format!("made-up-{i}.demo.svc.cluster.local:80");
        assert_eq!(dst.get(GetDestination { path: path.clone(), context_token: ctx.into(), ..Default::default() }).await.unwrap_err().code(), Code::NotFound);
        let spec = TrafficSpec { source_workload: ctx.into(), target: Some(traffic_spec::Target::Authority(path)) };
        assert_eq!(outbound.watch(spec).await.unwrap_err().code(), Code::NotFound);
        // In-cluster addresses that are no Service's.
        let addr: SocketAddr = format!("10.{}.{}.1:80", i / 250, i % 250).parse().unwrap();
        let spec = TrafficSpec { source_workload: ctx.into(), target: Some(traffic_spec::Target::Addr(addr.into())) };
        assert_eq!(outbound.watch(spec).await.unwrap_err().code(), Code::NotFound);
    }
    let after = cp.index.stats();
    for view in ["endpoints", "outbound", "profile"] {
        assert_eq!(after.views[view].0, before.views[view].0, "{view} views: {:?} -> {:?}", before.views[view], after.views[view]);
    }
}

#[tokio::test]
async fn clients_that_connect_and_stall_are_closed_while_others_are_served() {
    let cp = start("abuse-slow").await;
    let stall = |addr: SocketAddr, bytes: &'static [u8]| async move {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(bytes).await.unwrap();
        let started = Instant::now();
        let mut buf = Vec::new();
        // Closed by the server (its timeout is 10 s), not by this client.
        let r = tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut buf)).await;
        assert!(r.is_ok(), "{addr}: still open after 20 s");
        started.elapsed()
    };
    let silent = [cp.addrs.identity, cp.addrs.destination, cp.addrs.policy].map(|a| tokio::spawn(stall(a, b"")));
    // A few bytes of the HTTP/2 preface, then nothing: the preface has a deadline too.
    let partial = [cp.addrs.identity, cp.addrs.policy].map(|a| tokio::spawn(stall(a, b"PRI * HTTP/2.0")));
    let heads = [cp.addrs.admin, cp.addrs.viz].map(|a| tokio::spawn(stall(a, b"GET /metrics HTTP/1.1\r\nHost: x\r\n")));
    // Meanwhile, a proxy's lookup is answered.
    let mut outbound = OutboundPoliciesClient::new(channel(cp.addrs.policy).await);
    let ctx = r#"{"ns":"demo","external_workload":"web"}"#;
    let spec = TrafficSpec { source_workload: ctx.into(), target: Some(traffic_spec::Target::Authority("books.demo:8080".into())) };
    assert!(outbound.get(spec).await.is_ok());
    for s in silent.into_iter().chain(partial).chain(heads) {
        let took = s.await.unwrap();
        assert!(took >= Duration::from_secs(9) && took < Duration::from_secs(15), "closed after {took:?}, expected about 10 s");
    }
}

#[tokio::test]
async fn a_yaml_alias_bomb_is_refused_and_takes_nothing_down() {
    let cp = start("abuse-yaml").await;
    let mut bomb = String::from("apiVersion: v1\nkind: Service\nmetadata: {name: bomb, namespace: demo}\nspec:\n  a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for i in 1..10 {
        let p = i - 1;
        bomb.push_str(&format!("  a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"));
    }
    std::fs::write(cp.manifests.join("bomb.yaml"), bomb).unwrap();
    let started = Instant::now();
    let mut text = String::new();
    while started.elapsed() < Duration::from_secs(10) {
        text = metrics(cp.addrs.admin).await;
        if text.contains(r#"manifest_invalid_documents{file="bomb.yaml"} 1"#) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(text.contains(r#"manifest_invalid_documents{file="bomb.yaml"} 1"#), "{text}");
    // What the other file serves is untouched.
    let mut outbound = OutboundPoliciesClient::new(channel(cp.addrs.policy).await);
    let spec = TrafficSpec {
        source_workload: r#"{"ns":"demo","external_workload":"web"}"#.into(),
        target: Some(traffic_spec::Target::Authority("books.demo:8080".into())),
    };
    assert!(outbound.get(spec).await.is_ok());
    // The test process (knit-control in it) did not expand a billion values.
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let hwm_kb: u64 = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok()).unwrap();
    assert!(hwm_kb < 1024 * 1024, "peak RSS {} MiB", hwm_kb / 1024);
}
