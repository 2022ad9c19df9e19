//! One module per command; shared loading of inputs here.

mod apply;
mod backend;
mod check;
mod cleanup;
mod demo;
mod docs;
mod lock;
mod plan;
#[cfg(test)]
mod render_props;
mod run;
mod schema;
mod snapshot;
mod status;
mod switch;
mod udp_probe;

use crate::args::{BackendArg, Command, EngineArgs, LiveArgs};
use anyhow::{Context, Result};
use engine::allocate::Lock;
use engine::config::Backend;
use engine::exec::SystemExec;
use engine::load::ParsedFile;
use engine::observe::Observed;
use std::path::Path;

pub fn dispatch(command: Command) -> Result<u8> {
    match command {
        Command::Check(args) => check::run(args),
        Command::Plan(args) => plan::run(args),
        Command::Lock(args) => lock::run(args),
        Command::Snapshot(args) => snapshot::run(args),
        Command::Apply(args) => apply::run(args),
        Command::Run(args) => run::run(args),
        Command::Status(args) => status::run(args),
        Command::Cleanup(args) => cleanup::run(args),
        Command::Switch(args) => switch::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Completions(args) => docs::completions(args),
        Command::Man => docs::man(),
        Command::Schema(args) => schema::run(args),
        Command::Backend(args) => backend::run(args),
        Command::UdpProbe(args) => udp_probe::run(args),
    }
}

/// Reads and parses the services directory within the limits of `engine`'s flags.
pub fn load_files(engine: &EngineArgs, dir: &Path) -> Result<Vec<ParsedFile>> {
    engine::load::load_dir_with(dir, &engine.input_limits())
        .with_context(|| format!("loading services from `{}`", dir.display()))
}

pub fn load_lock(engine: &EngineArgs, dir: &Path) -> Result<Lock> {
    let path = engine.lock_path(dir);
    Lock::read_limited(&path, engine.max_file_bytes)
        .with_context(|| format!("reading the allocation record `{}`", path.display()))
}

/// This host's node state (`--state-file`); a missing file is an empty state.
pub fn load_state(engine: &EngineArgs) -> Result<Lock> {
    let path = &engine.state_file;
    // Read like the lock: a FIFO or device there is an error, never a hang.
    Lock::read_limited(path, engine.max_file_bytes)
        .with_context(|| format!("reading the node state `{}`", path.display()))
}

/// The running daemon's status, or `None` when no daemon answers; an error when the socket
/// is there but this user may not use it (then whether a daemon runs is unknown).
pub fn daemon_status(socket: &Path) -> Result<Option<engine::daemon::control::Status>> {
    use engine::daemon::control::{request, ControlError, Request};
    match request(socket, &Request::Status, std::time::Duration::from_secs(5)) {
        Ok(response) => Ok(response.status.map(|s| *s)),
        Err(e @ ControlError::PermissionDenied { .. }) => Err(e.into()),
        Err(_) => Ok(None),
    }
}

/// The live state: from `--live FILE`, empty with `--no-live`, else from the kernel (and
/// the daemon's listeners when `listeners` is given).
pub fn observe(live: &LiveArgs, backend: Backend) -> Result<Observed> {
    if live.no_live {
        return Ok(Observed::default());
    }
    if let Some(path) = &live.live {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading live state `{}`", path.display()))?;
        return engine::observe::from_file_text(backend, &text, &path.display().to_string())
            .with_context(|| format!("reading live state `{}`", path.display()));
    }
    let mut observed = engine::observe::observe(backend, &SystemExec, Default::default()).context(
        "observing the kernel (use --live FILE or --no-live to plan without kernel access)",
    )?;
    observed.other = engine::observe::observe_other(backend, &SystemExec);
    observed.companions =
        engine::observe::companion::observe_companions(backend, &observed.dump, &SystemExec);
    let other_flavour =
        engine::observe::observe_other_flavour(backend, &observed.dump, &SystemExec);
    observed.live.foreign.extend(other_flavour);
    Ok(observed)
}

pub fn backend(arg: BackendArg) -> Backend {
    match arg {
        BackendArg::Iptables => Backend::Iptables,
        BackendArg::Nftables => Backend::Nftables,
    }
}

/// The daemon's open listeners in the engine's terms, from its status.
pub fn listeners_of(
    status: &engine::daemon::control::Status,
) -> std::collections::BTreeMap<engine::listeners::ListenerKey, engine::listeners::Listener> {
    status
        .open
        .iter()
        .map(|e| (e.key, e.listener.clone()))
        .collect()
}
