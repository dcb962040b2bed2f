//! The `veneer` binary: loads the configuration, starts logging and the runtime, runs the proxy until
//! SIGINT or SIGTERM.

use std::process::ExitCode;

use veneer_config::{Config, ConfigError};
use veneer_proxy::Proxy;

fn main() -> ExitCode {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let command = match args.get(1).and_then(|a| a.to_str()) {
        Some(name @ ("setup" | "uninstall")) => Some(name.to_owned()),
        _ => None,
    };
    if command.is_some() {
        args.remove(1);
    }
    let config = match Config::load_from(args) {
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
    let runtime = match veneer_config::runtime(config.workers) {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("veneer: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(command) = command {
        return runtime.block_on(run_command(&command, &config));
    }
    let served = runtime.block_on(async {
        let (listen, upstream) = (config.listen, config.upstream.clone());
        let metrics = config.metrics_listen;
        let prometheus = match metrics.map(veneer_proxy::metrics::install).transpose() {
            Ok(handle) => handle,
            Err(e) => {
                tracing::warn!(error = %e, "metrics not recorded");
                None
            }
        };
        let proxy = Proxy::bind(config).await?;
        if let (Some(addr), Some(prometheus)) = (metrics, prometheus) {
            // The status pages are an aid, not the service: a taken port is reported and the
            // proxy serves on.
            match proxy.serve_status(addr, prometheus).await {
                Ok(bound) => tracing::info!(addr = %bound,
                    "status page at /, metrics at /metrics, probes at /healthz and /readyz"),
                Err(e) => tracing::warn!(error = %e, "status pages and metrics not served"),
            }
        }
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

/// `veneer setup` (installs the DDL event trigger in every database) or `veneer uninstall` (removes
/// what Veneer created): says what was done in each database.
async fn run_command(command: &str, config: &Config) -> ExitCode {
    let tls = match veneer_proxy::tls::upstream_connector(config) {
        Ok(tls) => tls,
        Err(e) => {
            eprintln!("veneer {command}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let done = if command == "setup" {
        veneer_proxy::setup::install(config, tls.as_ref()).await
    } else {
        veneer_proxy::setup::uninstall(config, tls.as_ref()).await
    };
    let done = match done {
        Ok(done) => done,
        Err(e) => {
            eprintln!("veneer {command}: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = false;
    for (database, outcome) in done {
        match outcome {
            Ok(lines) if lines.is_empty() => {
                println!("veneer {command}: nothing of Veneer's in database {database}")
            }
            Ok(lines) => {
                for line in lines {
                    println!("veneer {command}: {line} in database {database}");
                }
            }
            Err(e) => {
                failed = true;
                eprintln!("veneer {command}: {e}");
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// One thread on machines of two cores or fewer, where the proxy shares the cores with its clients and
/// the database and extra threads only add wake-ups (measured in bench/: about 15 % less proxy CPU per
/// transaction than two workers on 2 cores); one per core on larger machines.
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
