//! `portald`: Kubernetes-style services (portal IPs) for any Linux host.

mod args;
mod commands;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    init_logging(&cli.log_format);
    match commands::dispatch(cli.command) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // One line, escaped: the chain may quote a file name or a kernel tool's output.
            let message = format!("{e:#}");
            eprintln!(
                "portald: error: {}",
                engine::escape::Text(message.trim_end())
            );
            ExitCode::from(1)
        }
    }
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
