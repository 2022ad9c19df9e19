//! `portald`: Kubernetes-style services (portal IPs) for any Linux host.

mod args;
mod commands;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    init_logging(&cli.log_format);
    engine::exec::set_timeout(seconds(cli.exec_timeout_seconds));
    match commands::dispatch(cli.command) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("portald: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// A duration from seconds given on the command line; negative or not a number is zero.
pub fn seconds(value: f64) -> std::time::Duration {
    std::time::Duration::try_from_secs_f64(value).unwrap_or_default()
}

fn init_logging(format: &args::LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        args::LogFormat::Json => builder.json().init(),
        args::LogFormat::Text => builder.init(),
    }
}
