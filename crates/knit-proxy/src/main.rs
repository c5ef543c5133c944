//! The `knit-proxy` binary: `knit-proxy` runs the proxy from `KNIT_PROXY_*` variables;
//! `knit-proxy init` programs iptables for transparent interception; `knit-proxy await` waits
//! for a running proxy to be ready.

use knit_proxy::{config, init, log, wait, Proxy};
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("init") => init::main(&args[1..]),
        Some("await") => wait::main(&args[1..]),
        Some("--version" | "-V") => {
            println!("knit-proxy {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some("--help" | "-h") => {
            println!("usage: knit-proxy            run the proxy, configured by KNIT_PROXY_* variables\n       knit-proxy init --help  program iptables for transparent interception\n       knit-proxy await [--timeout 2m] [--admin 127.0.0.1:4191]  wait until the proxy is ready");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("knit-proxy: unknown argument {other:?}; see knit-proxy --help");
            ExitCode::from(64)
        }
        None => run(),
    }
}

fn run() -> ExitCode {
    let config = match config::Config::from_env(&config::OsEnv) {
        Ok(c) => c,
        Err(e) => {
            eprint!("knit-proxy: {e}");
            return ExitCode::from(64);
        }
    };
    let log = log::init(&config.log);
    let runtime = if config.cores == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(config.cores).thread_name("knit-proxy").enable_all().build()
    };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("knit-proxy: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let proxy = match Proxy::bind(config, Some(log)).await {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let shutdown = knit_proxy::drain::shutdown_signal();
        let stopped = async move {
            // Awaited outside the log macro, which skips its arguments at levels below info.
            let signal = shutdown.await;
            tracing::info!("{signal} received");
        };
        if proxy.run(stopped).await {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    })
}
