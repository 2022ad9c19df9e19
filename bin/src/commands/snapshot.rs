//! `portald snapshot`: capture the live state for `plan --live FILE`.

use crate::args::SnapshotArgs;
use anyhow::{Context, Result};
use engine::exec::SystemExec;
use engine::observe::{observe, Snapshot};

pub fn run(args: SnapshotArgs) -> Result<u8> {
    let backend = super::backend(args.backend);
    let observed =
        observe(backend, &SystemExec, Default::default()).context("observing the kernel")?;
    let text = Snapshot::from_observed(backend, &observed).render();
    match &args.out {
        Some(path) => engine::safe_write::write(path, text.as_bytes())
            .with_context(|| format!("writing snapshot `{}`", path.display()))?,
        None => print!("{text}"),
    }
    Ok(0)
}
