//! `portald lock DIR`: write or refresh the shared allocation record (VIPs only).

use crate::args::{LiveArgs, LockArgs};
use anyhow::{Context, Result};
use engine::allocate::Lock;
use engine::diagnostics::{render, ReportFormat};
use engine::load::ParsedFile;

/// The lock `portald lock` writes for `files`: every service without an explicit
/// `clusterIP` keeps its entry in `lock` and a newcomer gets the first address no entry
/// holds. A pure function of the directory, the lock and the CIDR unless `observed`
/// carries live state (`--live`, `--from-kernel`). Strict mode does not apply: this is the
/// command that creates the entries.
pub fn expected(
    files: &[ParsedFile],
    lock: &Lock,
    observed: &engine::observe::Observed,
    config: &engine::config::Config,
) -> (Lock, engine::pipeline::Outcome) {
    let config = engine::config::Config {
        require_lock: false,
        ..config.clone()
    };
    let outcome = engine::pipeline::run(files, &repaired(lock, &config), observed, &config, false);
    (outcome.allocation.lock.shared(), outcome)
}

/// `lock` without the entries no host can honour, so that the services they name get a
/// fresh address: a VIP outside the portal CIDR (or its network or broadcast address),
/// and every entry but the first (in key order) of a VIP several entries hold.
fn repaired(lock: &Lock, config: &engine::config::Config) -> Lock {
    let cidr = config.portal_cidr;
    let mut seen = std::collections::BTreeSet::new();
    let mut out = lock.clone();
    out.vips.retain(|key, ip| {
        let usable = cidr.contains(*ip) && *ip != cidr.network() && *ip != cidr.broadcast();
        let keep = usable && seen.insert(*ip);
        if !keep {
            eprintln!("note: lock entry `{key}` ({ip}) cannot be honoured; it gets a new VIP");
        }
        keep
    });
    out
}

pub fn run(args: LockArgs) -> Result<u8> {
    let config = args.engine.config();
    let files = super::load_files(&args.dir)?;
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
    let (new_lock, outcome) = expected(&files, &lock, &observed, &config);
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
