//! `portald lock DIR`: write or refresh the shared allocation record (VIPs only).

use crate::args::{LiveArgs, LockArgs};
use anyhow::{Context, Result};
use engine::diagnostics::{render, ReportFormat};

pub fn run(args: LockArgs) -> Result<u8> {
    let config = args.engine.config();
    let files = super::load_files(&args.engine, &args.dir)?;
    let lock = super::load_lock(&args.engine, &args.dir)?;
    let observed = if args.live.is_some() || args.from_kernel {
        let live = LiveArgs {
            live: args.live.clone(),
            no_live: false,
        };
        super::observe(&live, config.backend)?
    } else {
        engine::observe::Observed::default()
    };
    let (new_lock, outcome) = engine::pipeline::relock(&files, &lock, &observed, &config);
    eprint!("{}", render(&outcome.diagnostics, ReportFormat::Text));
    let path = args.engine.lock_path(&args.dir);
    if new_lock == lock {
        println!(
            "{} is up to date ({} VIPs).",
            path.display(),
            new_lock.vips.len()
        );
    } else {
        new_lock
            .write(&path)
            .with_context(|| format!("writing `{}`", path.display()))?;
        println!("wrote {} ({} VIPs).", path.display(), new_lock.vips.len());
    }
    Ok(if outcome.has_errors() { 1 } else { 0 })
}
