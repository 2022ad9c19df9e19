//! One module per command; shared loading of inputs here.

mod check;
mod lock;
mod plan;
mod snapshot;

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
    }
}

/// Reads and parses the services directory.
pub fn load_files(dir: &Path) -> Result<Vec<ParsedFile>> {
    engine::load::load_dir(dir)
        .with_context(|| format!("loading services from `{}`", dir.display()))
}

pub fn load_lock(engine: &EngineArgs, dir: &Path) -> Result<Lock> {
    let path = engine.lock_path(dir);
    Lock::read(&path).with_context(|| format!("reading the allocation record `{}`", path.display()))
}

/// The live state: from `--live FILE`, empty with `--no-live`, else from the kernel.
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
    engine::observe::observe(backend, &SystemExec, Default::default()).context(
        "observing the kernel (use --live FILE or --no-live to plan without kernel access)",
    )
}

pub fn backend(arg: BackendArg) -> Backend {
    match arg {
        BackendArg::Iptables => Backend::Iptables,
        BackendArg::Nftables => Backend::Nftables,
    }
}
