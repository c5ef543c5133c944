//! `knit-loadgen`: the benchmark's backend and load generator.
//!
//! `run` is open-loop: every request has an intended send time on a fixed schedule, and its
//! latency is measured from that time, so a slow response delays no measurement out of the
//! histogram (no coordinated omission). `--max` is closed-loop, for throughput. `control`
//! measures knit-control's discovery under endpoint churn; `idle` holds connections open.

mod control;
mod idle;
mod load;
mod serve;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "knit-loadgen")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// A small HTTP/1.1 + HTTP/2 server answering "ok" (and gRPC-shaped responses).
    Serve(serve::Args),
    /// Send load and print one JSON line of results.
    Run(load::Args),
    /// Open many connections, one exchange each, and hold them idle (per-connection memory).
    Idle(idle::Args),
    /// knit-control under churn: write manifests, or watch streams while rewriting them.
    Control(control::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve(args) => serve::main(args),
        Command::Run(args) => load::main(args),
        Command::Idle(args) => idle::main(args),
        Command::Control(args) => control::main(args),
    }
}
