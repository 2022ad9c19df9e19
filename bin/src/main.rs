//! `portald`: Kubernetes-style services (portal IPs) for any Linux host.

mod args;
mod commands;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = args::Cli::parse();
    if !serves_sockets(&cli.command) {
        quiet_on_closed_stdout();
    }
    // The daemon says what it does (start, each change, each problem); one-shot commands
    // print their result and log only warnings.
    let default_level = if matches!(cli.command, args::Command::Run(_)) {
        "info"
    } else {
        "warn"
    };
    init_logging(&cli.log_format, default_level);
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

/// Commands that proxy or serve sockets keep SIGPIPE ignored (Rust's default): there a peer
/// closing its end must be an `EPIPE` error on that one connection, never the end of the
/// process.
fn serves_sockets(command: &args::Command) -> bool {
    matches!(
        command,
        args::Command::Run(_) | args::Command::Demo(_) | args::Command::Backend(_)
    )
}

/// `portald plan | head -1`: when the reader goes away, end quietly as `cat` or `ls` do (killed
/// by SIGPIPE, exit status 141 in a shell), instead of `println!` panicking on `EPIPE`.
/// Rust ignores SIGPIPE before `main`; this restores the kernel's default disposition.
fn quiet_on_closed_stdout() {
    // SAFETY: `signal` with SIG_DFL installs no handler (no Rust code runs in signal
    // context); it runs before any thread is spawned.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn init_logging(format: &args::LogFormat, default_level: &str) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colour codes only for a person at a terminal, never into a journal or a file.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        args::LogFormat::Json => builder.json().init(),
        args::LogFormat::Text => builder.init(),
    }
}
