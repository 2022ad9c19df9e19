//! `portald`: Kubernetes-style services (portal IPs) for any Linux host.
//!
//! The thin shell over the `engine` crate: settings, commands, output and exit codes. It
//! names `planners` and `dataplane` types only for flags and output, and `testbed` only for
//! `portald demo`.

mod args;
mod commands;
mod settings;

use clap::FromArgMatches;
use std::process::ExitCode;

// mimalloc: about a quarter of a 10,000-service `plan` was glibc's malloc/free under
// serde_yaml's many small allocations; with mimalloc the plan took 1.72 s of CPU instead of
// 2.80 s (medians of paired runs, bench/scale.sh's input).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("portald: error: {e:#}");
            return ExitCode::from(2);
        }
    };
    let Some(cli) = cli else {
        return ExitCode::SUCCESS;
    };
    if !serves_sockets(&cli.command) {
        quiet_on_closed_stdout();
    }
    // The daemon says what it does (start, each change, each problem); one-shot commands
    // print their result and log only warnings.
    // A one-shot apply may run minutes of kernel work: it says what it is doing too.
    let default_level = if matches!(cli.command, args::Command::Run(_) | args::Command::Apply(_)) {
        "info"
    } else {
        "warn"
    };
    init_logging(&cli.log_format, default_level);
    engine::exec::set_timeout(seconds(cli.exec_timeout_seconds));
    let json_logs = matches!(cli.log_format, args::LogFormat::Json);
    match commands::dispatch(cli.command) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // One line, escaped: the chain may quote a file name or a kernel tool's output.
            let message = format!("{e:#}");
            let message = engine::escape::Text(message.trim_end());
            if json_logs {
                // A log collector reads the end of the daemon like the rest of its log.
                tracing::error!(error = %message, "portald: error");
            } else {
                eprintln!("portald: error: {message}");
            }
            ExitCode::from(1)
        }
    }
}

/// A duration from seconds given on the command line; negative or not a number is zero.
pub fn seconds(value: f64) -> std::time::Duration {
    std::time::Duration::try_from_secs_f64(value).unwrap_or_default()
}

/// The process's command line with the config file's (`--config`, `PORTALD_CONFIG`) and the
/// environment's (`PORTALD_*`) settings put in front of the user's own arguments of
/// `subcommand` (when `None`, the one the command line names).
fn layered(subcommand: Option<&str>) -> anyhow::Result<settings::Layered> {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // A first look, errors ignored: which command, which config file (a setting such as the
    // directory may still be missing from the flags alone).
    let first = args::command()
        .ignore_errors(true)
        .try_get_matches_from(&argv)
        .ok();
    let name = subcommand.map(str::to_string).or_else(|| {
        first
            .as_ref()
            .and_then(|m| m.subcommand_name().map(str::to_string))
    });
    let config = first
        .as_ref()
        .and_then(|m| m.get_one::<std::path::PathBuf>("config").cloned())
        .or_else(|| std::env::var_os("PORTALD_CONFIG").map(Into::into));
    let env: std::collections::BTreeMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("PORTALD_"))
        .collect();
    match name {
        Some(name) => settings::layer(&args::command(), &argv, &name, config.as_deref(), &env),
        None => Ok(settings::Layered {
            argv,
            injected: Default::default(),
        }),
    }
}

/// The command line with settings from `--config` and `PORTALD_*` put in; `None` when
/// `--print-config` printed them instead. Usage errors, `--help` and `--version` end the
/// process here, as clap does.
fn parse() -> anyhow::Result<Option<args::Cli>> {
    let layered = layered(None)?;
    let matches = args::command().get_matches_from(&layered.argv);
    if matches.get_flag("print_config") {
        if let Some((name, sub)) = matches.subcommand() {
            let root = args::command();
            let command = root
                .find_subcommand(name)
                .ok_or_else(|| anyhow::anyhow!("no command `{name}`"))?;
            print!("{}", settings::render(command, sub, &layered.injected));
        }
        return Ok(None);
    }
    match args::Cli::from_arg_matches(&matches) {
        Ok(cli) => Ok(Some(cli)),
        Err(e) => e.exit(),
    }
}

/// The `run` command's arguments as the command line, the environment and the config file
/// give them now: what a reload (SIGHUP) takes.
pub fn reparse_run() -> anyhow::Result<args::RunArgs> {
    let layered = layered(Some("run"))?;
    let matches = args::command().try_get_matches_from(&layered.argv)?;
    match args::Cli::from_arg_matches(&matches)?.command {
        args::Command::Run(args) => Ok(args),
        _ => anyhow::bail!("not the `run` command"),
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
