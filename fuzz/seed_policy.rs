//! Writes the control plane's outbound and inbound policies for the seed manifests, encoded, as
//! the policy target's seeds: real messages are the best place for the fuzzer to start.
//!   seed_policy MANIFEST_DIR OUT_DIR
use knit_control::index::{names::Target, Index, IndexConfig, WorkloadPort};
use prost::Message;
use std::path::PathBuf;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (dir, out) = (PathBuf::from(&args[1]), PathBuf::from(&args[2]));
    let index = Index::new(IndexConfig {
        cluster_domain: "cluster.local".into(),
        trust_domain: "cluster.local".into(),
        control_plane_ns: "knit".into(),
        cluster_networks: vec!["10.0.0.0/8".parse().expect("network")],
        default_inbound_policy: "all-unauthenticated".into(),
        default_opaque_ports: [5432, 6379].into(),
        global_egress_namespace: "linkerd-egress".into(),
    });
    for entry in std::fs::read_dir(&dir).expect("manifest dir") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("manifest");
        let (resources, _) = knit_control::resources::parse(&path.display().to_string(), &text);
        index.reset(&path.display().to_string(), resources);
    }
    std::fs::create_dir_all(&out).expect("out dir");
    let mut n = 0;
    for (ns, name, port) in [("demo", "books", 8080), ("demo", "authors", 7000), ("demo", "web", 8080)] {
        let target = Target::Name(knit_control::index::SvcPort { ns: ns.into(), name: name.into(), port });
        if let Some(key) = index.resolve_outbound(&target, ns) {
            if let Some(p) = index.outbound(&key).borrow().as_ref() {
                std::fs::write(out.join(format!("outbound-{name}")), p.encode_to_vec()).expect("write");
                n += 1;
            }
        }
    }
    let egress = Target::Addr("203.0.113.9:443".parse().expect("addr"));
    if let Some(key) = index.resolve_outbound(&egress, "default") {
        if let Some(p) = index.outbound(&key).borrow().as_ref() {
            std::fs::write(out.join("outbound-egress"), p.encode_to_vec()).expect("write");
            n += 1;
        }
    }
    for (ns, workload, port) in [("demo", "books-v1", 8080), ("demo", "web", 8080)] {
        if let Some(s) = index.inbound(&WorkloadPort { ns: ns.into(), workload: workload.into(), port }).borrow().as_ref() {
            std::fs::write(out.join(format!("inbound-{workload}")), s.encode_to_vec()).expect("write");
            n += 1;
        }
    }
    eprintln!("seed_policy: {n} messages in {}", out.display());
}
