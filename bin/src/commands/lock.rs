//! `portald lock DIR`: write or refresh the allocation record.

use crate::args::LockArgs;
use anyhow::{Context, Result};
use engine::diagnostics::{render, ReportFormat};

pub fn run(args: LockArgs) -> Result<u8> {
    let config = args.engine.config();
    let files = super::load_files(&args.engine, &args.dir)?;
    let lock = super::load_lock(&args.engine, &args.dir)?;
    let observed = super::observe(&args.live, config.backend)?;
    let outcome = engine::pipeline::run(&files, &lock, &observed, &config, false);
    eprint!("{}", render(&outcome.diagnostics, ReportFormat::Text));
    let path = args.engine.lock_path(&args.dir);
    let new_lock = &outcome.allocation.lock;
    if *new_lock == lock {
        println!(
            "{} is up to date ({} VIPs, {} proxy ports).",
            path.display(),
            new_lock.vips.len(),
            new_lock.proxy_ports.len()
        );
    } else {
        new_lock
            .write(&path)
            .with_context(|| format!("writing `{}`", path.display()))?;
        println!(
            "wrote {} ({} VIPs, {} proxy ports).",
            path.display(),
            new_lock.vips.len(),
            new_lock.proxy_ports.len()
        );
    }
    Ok(if outcome.has_errors() { 1 } else { 0 })
}
