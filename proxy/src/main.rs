//! The `veneer` binary: loads the configuration, starts logging and the runtime, runs the proxy until
//! SIGINT or SIGTERM.

use std::process::ExitCode;

use veneer_config::{Config, ConfigError};
use veneer_proxy::Proxy;

fn main() -> ExitCode {
    let config = match Config::load() {
        Ok(config) => config,
        // clap's own errors know how to print help and version and with which exit code.
        Err(ConfigError::Cli(e)) => e.exit(),
        Err(e) => {
            eprintln!("veneer: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = veneer_proxy::logging::init(&config) {
        eprintln!("veneer: {e}");
        return ExitCode::from(2);
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(workers) = config.workers {
        runtime.worker_threads(workers);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("veneer: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let served = runtime.block_on(async {
        let (listen, upstream) = (config.listen, config.upstream.clone());
        let proxy = Proxy::bind(config).await?;
        tracing::info!(%listen, %upstream, "veneer listening");
        proxy.run(shutdown_signal()).await
    });
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "veneer stopped");
            eprintln!("veneer: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; only SIGINT will stop veneer");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}
