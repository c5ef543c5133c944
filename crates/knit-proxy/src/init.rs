//! `knit-proxy init`: programs the nat table so that a workload's TCP traffic passes through its
//! proxy without the application knowing, as Linkerd's proxy-init does.
//!
//! - chain `KNIT_PROXY_INBOUND`, jumped to from `PREROUTING`: ignored ports and source subnets
//!   return; all other TCP is redirected to the inbound port (4143);
//! - chain `KNIT_PROXY_OUTPUT`, jumped to from `OUTPUT`: the proxy's own UID (and GID), loopback,
//!   ignored ports and destination subnets return; all other TCP goes to the outbound port (4140).
//!
//! Running it again rewrites the chains in place (idempotent); `--remove` deletes them. The rules
//! are computed by a pure function and applied by the `iptables` binary, one command at a time, so
//! `--dry-run` prints exactly what would run.

use std::process::{Command, ExitCode};

pub const INBOUND_CHAIN: &str = "KNIT_PROXY_INBOUND";
pub const OUTPUT_CHAIN: &str = "KNIT_PROXY_OUTPUT";
/// iptables' multiport match takes at most 15 ports (a range counts as two).
const MULTIPORT_MAX: usize = 7;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitConfig {
    pub inbound_port: u16,
    pub outbound_port: u16,
    pub proxy_uid: u32,
    pub proxy_gid: Option<u32>,
    pub skip_inbound_ports: Vec<String>,
    pub skip_outbound_ports: Vec<String>,
    pub skip_subnets: Vec<String>,
    pub remove: bool,
    pub dry_run: bool,
    pub iptables: String,
}

impl Default for InitConfig {
    fn default() -> Self {
        Self {
            inbound_port: 4143,
            outbound_port: 4140,
            proxy_uid: 2102,
            proxy_gid: None,
            // The admin and tap ports are the proxy's own and must never be redirected.
            skip_inbound_ports: vec!["4190".into(), "4191".into()],
            skip_outbound_ports: Vec::new(),
            skip_subnets: Vec::new(),
            remove: false,
            dry_run: false,
            iptables: "iptables".into(),
        }
    }
}

const USAGE: &str = "usage: knit-proxy init [--inbound-port 4143] [--outbound-port 4140] [--proxy-uid 2102] [--proxy-gid GID]
                       [--skip-inbound-ports P,A-B] [--skip-outbound-ports P,A-B] [--skip-subnets CIDR,...]
                       [--iptables iptables|iptables-legacy|ip6tables] [--remove] [--dry-run]";

fn list(v: &str) -> Vec<String> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

fn port_spec(p: &str) -> Result<String, String> {
    knit_core::parse::port_set(p).map_err(|e| e.to_string())?;
    Ok(p.replace('-', ":"))
}

fn subnet(s: &str) -> Result<(), String> {
    let (ip, bits) = s.split_once('/').ok_or_else(|| format!("{s:?} is not a CIDR (expected ADDR/BITS)"))?;
    let ip: std::net::IpAddr = ip.parse().map_err(|_| format!("{s:?} is not a CIDR: bad address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match bits.parse::<u8>() {
        Ok(b) if b <= max => Ok(()),
        _ => Err(format!("{s:?} is not a CIDR: prefix length must be 0-{max}")),
    }
}

/// Parses the flags; every bad flag is reported.
pub fn parse_args(args: &[String]) -> Result<InitConfig, Vec<String>> {
    let mut cfg = InitConfig::default();
    let mut errors = Vec::new();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag.as_str(), None),
        };
        if matches!(name, "--remove" | "--dry-run") {
            if name == "--remove" {
                cfg.remove = true
            } else {
                cfg.dry_run = true
            }
            continue;
        }
        let Some(value) = inline.or_else(|| it.next().cloned()) else {
            errors.push(format!("{name} needs a value"));
            continue;
        };
        let num = |what: &str| value.parse::<u32>().map_err(|_| format!("{what} expects a number, found {value:?}"));
        let port = |what: &str| match value.parse::<u16>() {
            Ok(p) if p != 0 => Ok(p),
            _ => Err(format!("{what} expects a port 1-65535, found {value:?}")),
        };
        let result = match name {
            "--inbound-port" => port(name).map(|p| cfg.inbound_port = p),
            "--outbound-port" => port(name).map(|p| cfg.outbound_port = p),
            "--proxy-uid" => num(name).map(|u| cfg.proxy_uid = u),
            "--proxy-gid" => num(name).map(|g| cfg.proxy_gid = Some(g)),
            "--skip-inbound-ports" => list(&value).iter().map(|p| port_spec(p)).collect::<Result<Vec<_>, _>>().map(|mut ps| {
                cfg.skip_inbound_ports.append(&mut ps);
            }),
            "--skip-outbound-ports" => list(&value).iter().map(|p| port_spec(p)).collect::<Result<Vec<_>, _>>().map(|ps| cfg.skip_outbound_ports = ps),
            "--skip-subnets" => {
                let subnets = list(&value);
                subnets.iter().try_for_each(|s| subnet(s)).map(|()| cfg.skip_subnets = subnets)
            }
            "--iptables" => {
                cfg.iptables = value.clone();
                Ok(())
            }
            _ => Err(format!("unknown flag {name}")),
        };
        if let Err(e) = result {
            errors.push(e);
        }
    }
    if errors.is_empty() {
        Ok(cfg)
    } else {
        Err(errors)
    }
}

fn args(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| s.to_string()).collect()
}

fn comment(rule: &mut Vec<String>, text: &str) {
    rule.extend(args(&["-m", "comment", "--comment", &format!("knit/{text}")]));
}

/// The rules inside the two chains, as iptables argument lists (without `-t nat -A CHAIN`).
pub fn chain_rules(cfg: &InitConfig) -> (Vec<Vec<String>>, Vec<Vec<String>>) {
    let mut inbound = Vec::new();
    for chunk in cfg.skip_inbound_ports.chunks(MULTIPORT_MAX) {
        let mut r = args(&["-p", "tcp", "-m", "multiport", "--dports", &chunk.join(","), "-j", "RETURN"]);
        comment(&mut r, "ignore-inbound-ports");
        inbound.push(r);
    }
    for s in &cfg.skip_subnets {
        let mut r = args(&["-s", s, "-j", "RETURN"]);
        comment(&mut r, "ignore-subnet");
        inbound.push(r);
    }
    // Only what is addressed to this pod: a packet for another address that reaches the pod's
    // interface (a neighbour can send one) is dropped by the kernel rather than handed to the
    // proxy to dial out for.
    let mut r = args(&["-p", "tcp", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "REDIRECT", "--to-ports", &cfg.inbound_port.to_string()]);
    comment(&mut r, "redirect-all-incoming-to-proxy");
    inbound.push(r);

    let mut output = Vec::new();
    let mut r = args(&["-m", "owner", "--uid-owner", &cfg.proxy_uid.to_string(), "-j", "RETURN"]);
    comment(&mut r, "ignore-proxy-uid");
    output.push(r);
    if let Some(gid) = cfg.proxy_gid {
        let mut r = args(&["-m", "owner", "--gid-owner", &gid.to_string(), "-j", "RETURN"]);
        comment(&mut r, "ignore-proxy-gid");
        output.push(r);
    }
    let mut r = args(&["-o", "lo", "-j", "RETURN"]);
    comment(&mut r, "ignore-loopback");
    output.push(r);
    for chunk in cfg.skip_outbound_ports.chunks(MULTIPORT_MAX) {
        let mut r = args(&["-p", "tcp", "-m", "multiport", "--dports", &chunk.join(","), "-j", "RETURN"]);
        comment(&mut r, "ignore-outbound-ports");
        output.push(r);
    }
    for s in &cfg.skip_subnets {
        let mut r = args(&["-d", s, "-j", "RETURN"]);
        comment(&mut r, "ignore-subnet");
        output.push(r);
    }
    let mut r = args(&["-p", "tcp", "-j", "REDIRECT", "--to-ports", &cfg.outbound_port.to_string()]);
    comment(&mut r, "redirect-all-outgoing-to-proxy");
    output.push(r);
    (inbound, output)
}

/// One step of the plan: an iptables invocation, and whether its failure is expected (creating a
/// chain that exists, checking for a jump that is missing).
#[derive(Debug, PartialEq, Eq)]
pub struct Step {
    pub args: Vec<String>,
    pub may_fail: bool,
    /// For `-C` checks: run `then` only when the check fails.
    pub then: Option<Vec<String>>,
}

fn nat(rest: &[&str]) -> Vec<String> {
    let mut v = args(&["-t", "nat"]);
    v.extend(args(rest));
    v
}

const JUMPS: [(&str, &str); 2] = [("PREROUTING", INBOUND_CHAIN), ("OUTPUT", OUTPUT_CHAIN)];

/// The whole plan: create (or empty) both chains, fill them, and make sure each is jumped to
/// exactly once; or, with `remove`, unhook and delete them.
pub fn plan(cfg: &InitConfig) -> Vec<Step> {
    let mut steps = Vec::new();
    if cfg.remove {
        for (parent, chain) in JUMPS {
            // -D removes one jump per call; a second one guards against an older duplicate.
            for _ in 0..2 {
                steps.push(Step { args: nat(&["-D", parent, "-p", "tcp", "-j", chain]), may_fail: true, then: None });
            }
            steps.push(Step { args: nat(&["-F", chain]), may_fail: true, then: None });
            steps.push(Step { args: nat(&["-X", chain]), may_fail: true, then: None });
        }
        return steps;
    }
    let (inbound, output) = chain_rules(cfg);
    for (chain, rules) in [(INBOUND_CHAIN, inbound), (OUTPUT_CHAIN, output)] {
        steps.push(Step { args: nat(&["-N", chain]), may_fail: true, then: None });
        steps.push(Step { args: nat(&["-F", chain]), may_fail: false, then: None });
        for rule in rules {
            let mut a = nat(&["-A", chain]);
            a.extend(rule);
            steps.push(Step { args: a, may_fail: false, then: None });
        }
    }
    for (parent, chain) in JUMPS {
        steps.push(Step { args: nat(&["-C", parent, "-p", "tcp", "-j", chain]), may_fail: true, then: Some(nat(&["-A", parent, "-p", "tcp", "-j", chain])) });
    }
    steps
}

fn run(iptables: &str, args: &[String]) -> Result<(), String> {
    let out = Command::new(iptables).args(args).output().map_err(|e| format!("running {iptables}: {e} (is iptables installed?)"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!("{iptables} {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
}

pub fn apply(cfg: &InitConfig) -> Result<(), String> {
    for step in plan(cfg) {
        if cfg.dry_run {
            match &step.then {
                Some(then) => println!("{} {} || {} {}", cfg.iptables, step.args.join(" "), cfg.iptables, then.join(" ")),
                None => println!("{} {}", cfg.iptables, step.args.join(" ")),
            }
            continue;
        }
        match (run(&cfg.iptables, &step.args), &step.then) {
            (Ok(()), _) => {}
            (Err(_), Some(then)) => run(&cfg.iptables, then)?,
            (Err(_), None) if step.may_fail => {}
            (Err(e), None) => return Err(e),
        }
    }
    Ok(())
}

pub fn main(argv: &[String]) -> ExitCode {
    if argv.iter().any(|a| a == "--help" || a == "-h") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let cfg = match parse_args(argv) {
        Ok(c) => c,
        Err(errors) => {
            for e in errors {
                eprintln!("knit-proxy init: {e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(64);
        }
    };
    match apply(&cfg) {
        Ok(()) => {
            if !cfg.dry_run {
                let what = if cfg.remove { "removed" } else { "installed" };
                eprintln!("knit-proxy init: interception rules {what} ({INBOUND_CHAIN}, {OUTPUT_CHAIN})");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("knit-proxy init: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests;
