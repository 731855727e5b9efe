//! `baton serve`: settings (defaults < `--config` file < environment < flags), logging and
//! tracing, then the library's `Application` until SIGINT/SIGTERM.

use baton::app::{Application, LogFormat, Settings};
use baton::telemetry::Telemetry;
use clap::{ArgMatches, Args};
use std::path::PathBuf;
use std::process::ExitCode;

/// `baton serve`'s arguments: the settings, and where else to read them from.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub settings: Settings,
    /// A TOML file of settings (keys: the flags' names with `_` for `-`, e.g.
    /// `database_url`); the environment and flags override it.
    #[arg(long, env = "BATON_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the effective configuration (passwords redacted) as TOML, each value's origin
    /// in a comment, and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// Starts the server; exit 1 with one line on stderr when it cannot start.
pub async fn run(args: ServeArgs, matches: &ArgMatches) -> ExitCode {
    let resolved = match Settings::resolve(matches, args.config.as_deref()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.print_config {
        print!("{}", resolved.to_toml());
        return ExitCode::SUCCESS;
    }
    let settings = resolved.settings;
    let telemetry = match Telemetry::init(settings.log_format == LogFormat::Json, &settings.log_level) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let app = match Application::build(settings).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let served = app.run_until_stopped(shutdown_signal()).await;
    telemetry.shutdown().await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
