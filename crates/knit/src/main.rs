//! `knit`: Knit's command-line interface.

mod demo;
mod identity;
mod prom;

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
    /// Check the local installation: trust anchors, issuer, chain and expiry.
    Check(identity::CheckArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::main(args),
        Command::Identity(cmd) => identity::main(cmd),
        Command::Check(args) => identity::check(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("knit: {e:#}");
            ExitCode::FAILURE
        }
    }
}
