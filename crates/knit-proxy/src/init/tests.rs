use super::*;

fn argv(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

#[test]
fn defaults_match_linkerd() {
    let cfg = parse_args(&[]).unwrap();
    let (inbound, output) = chain_rules(&cfg);
    assert_eq!(inbound[0][..6], argv("-p tcp -m multiport --dports 4190,4191"));
    assert!(inbound.last().unwrap().join(" ").starts_with("-p tcp -m addrtype --dst-type LOCAL -j REDIRECT --to-ports 4143"));
    assert!(output[0].join(" ").starts_with("-m owner --uid-owner 2102 -j RETURN"));
    assert!(output[1].join(" ").starts_with("-o lo -j RETURN"));
    assert!(output.last().unwrap().join(" ").starts_with("-p tcp -j REDIRECT --to-ports 4140"));
}

#[test]
fn skips_ports_and_subnets() {
    let cfg = parse_args(&argv("--skip-inbound-ports 22,8000-8010 --skip-outbound-ports=443 --skip-subnets 10.0.0.0/8 --proxy-gid 7")).unwrap();
    let (inbound, output) = chain_rules(&cfg);
    let inbound: Vec<String> = inbound.iter().map(|r| r.join(" ")).collect();
    let output: Vec<String> = output.iter().map(|r| r.join(" ")).collect();
    assert!(inbound[0].contains("--dports 4190,4191,22,8000:8010"), "{inbound:?}");
    assert!(inbound[1].starts_with("-s 10.0.0.0/8 -j RETURN"), "{inbound:?}");
    assert!(output.iter().any(|r| r.starts_with("-m owner --gid-owner 7")), "{output:?}");
    assert!(output.iter().any(|r| r.contains("--dports 443 -j RETURN")), "{output:?}");
    assert!(output.iter().any(|r| r.starts_with("-d 10.0.0.0/8 -j RETURN")), "{output:?}");
}

#[test]
fn many_ports_are_split_across_multiport_rules() {
    let ports: Vec<String> = (1000..1020).map(|p| p.to_string()).collect();
    let cfg = parse_args(&argv(&format!("--skip-outbound-ports {}", ports.join(",")))).unwrap();
    let (_, output) = chain_rules(&cfg);
    let multiport = output.iter().filter(|r| r.contains(&"multiport".to_string())).count();
    assert_eq!(multiport, 3);
}

#[test]
fn plan_is_idempotent_by_construction() {
    let steps = plan(&InitConfig::default());
    // Chains are created (tolerating "exists") and flushed before rules are appended...
    assert_eq!(steps[0].args, argv("-t nat -N KNIT_PROXY_INBOUND"));
    assert!(steps[0].may_fail);
    assert_eq!(steps[1].args, argv("-t nat -F KNIT_PROXY_INBOUND"));
    // ...and jumps are appended only when a check finds them missing.
    let jumps: Vec<_> = steps.iter().filter(|s| s.then.is_some()).collect();
    assert_eq!(jumps.len(), 2);
    assert_eq!(jumps[0].args, argv("-t nat -C PREROUTING -p tcp -j KNIT_PROXY_INBOUND"));
    assert_eq!(jumps[0].then.as_ref().unwrap(), &argv("-t nat -A PREROUTING -p tcp -j KNIT_PROXY_INBOUND"));
}

#[test]
fn removal_unhooks_then_deletes() {
    let cfg = InitConfig { remove: true, ..Default::default() };
    let steps: Vec<String> = plan(&cfg).iter().map(|s| s.args.join(" ")).collect();
    assert_eq!(steps[0], "-t nat -D PREROUTING -p tcp -j KNIT_PROXY_INBOUND");
    assert!(steps.contains(&"-t nat -X KNIT_PROXY_OUTPUT".to_string()));
}

#[test]
fn bad_flags_are_all_reported() {
    let errors = parse_args(&argv("--inbound-port 0 --skip-subnets 10.0.0.0/33 --bogus 1 --proxy-uid")).unwrap_err();
    assert_eq!(errors.len(), 4, "{errors:?}");
}
