#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
//! `warren`: one binary for every role. This file only wires parts together; the logic
//! lives in warren-controller, warren-node and warren-core.

mod allocator;
mod calls;
mod cli;
mod http;
mod kind;
mod metrics;
mod node_side;
mod replicated_stats;
mod replicated_view;
mod replication;
mod serve;
mod volume_stats;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let format = match &cli.mode {
        cli::Mode::All(a) => a.common.log_format,
        cli::Mode::Edge(e) => e.common.log_format,
        cli::Mode::Controller(c) => c.common.log_format,
        cli::Mode::Node(n) => n.common.log_format,
        cli::Mode::Replica(r) => r.log_format,
        cli::Mode::Volume(v) => v.log_format,
    };
    init_logging(format);
    // Few threads: a CSI driver is I/O bound, and memory matters on edge nodes.
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(16)
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "cannot start the async runtime");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve::run(cli.mode)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "warren stopped with an error");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: cli::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WARREN_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal: not in files, journald or `kubectl logs`.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        cli::LogFormat::Text => builder.init(),
        cli::LogFormat::Json => builder.json().init(),
    }
}
