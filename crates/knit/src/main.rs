//! `knit`: Knit's command-line interface.

mod check;
mod demo;
mod identity;
mod inject;
mod install;
mod multicluster;
mod rotate;
mod viz;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "knit", version, about = "Knit, a service mesh in Rust")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a small meshed application on this machine and show its golden metrics live.
    Demo(demo::Args),
    /// Trust anchors, issuers and local-mode tokens.
    #[command(subcommand)]
    Identity(identity::Command),
    /// Check an installation: in a cluster (--pre before installing), or local mode's (--dir,
    /// --config-dir).
    Check(identity::CheckArgs),
    /// Print the control plane's Kubernetes manifests: `knit install | kubectl apply -f -`.
    Install(install::InstallArgs),
    /// Print the manifests of a new version that keep the installation's trust anchors and issuer.
    Upgrade(install::UpgradeArgs),
    /// Print what removes Knit: `knit uninstall | kubectl delete -f -`.
    Uninstall(install::UninstallArgs),
    /// Mesh the workloads of a manifest as the proxy injector would: `knit inject app.yaml | kubectl apply -f -`.
    Inject(inject::InjectArgs),
    /// Remove what `knit inject` (or the injector) added.
    Uninject(inject::UninjectArgs),
    /// Golden metrics of the mesh: `knit viz stat deploy -n demo`.
    #[command(subcommand)]
    Viz(viz::Command),
    /// Link clusters (a Link per linked cluster), and see their gateways and mirrors.
    #[command(subcommand)]
    Multicluster(multicluster::Command),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::main(args),
        Command::Identity(cmd) => identity::main(cmd),
        Command::Check(args) => identity::check(args),
        Command::Install(args) => install::install(args),
        Command::Upgrade(args) => install::upgrade(args),
        Command::Uninstall(args) => install::uninstall(args),
        Command::Inject(args) => inject::inject(args),
        Command::Uninject(args) => inject::uninject_cmd(args),
        Command::Viz(cmd) => viz::main(cmd),
        Command::Multicluster(cmd) => multicluster::main(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("knit: {e:#}");
            ExitCode::FAILURE
        }
    }
}
