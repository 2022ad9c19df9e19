//! Watches the services directory; every event is only a hint to reconcile.

use notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub type Watcher = Debouncer<notify::RecommendedWatcher, RecommendedCache>;

/// Calls `on_change` (debounced) whenever anything below `dir` changes: editors' atomic
/// renames, partial writes and ConfigMap `..data` swaps all end in one call after the dust
/// settles; the reconciler then reads the whole directory again. Changes only to the
/// `own` files (the daemon's allocation record and the temporary files
/// [`crate::safe_write`] makes on the way to it) are not a reason to look again: the daemon
/// wrote them itself.
pub fn watch(
    dir: &Path,
    own: &[PathBuf],
    debounce: Duration,
    on_change: impl Fn() + Send + 'static,
) -> notify::Result<Watcher> {
    let own: Vec<PathBuf> = own.iter().map(|p| absolute(p)).collect();
    let mut debouncer = new_debouncer(debounce, None, move |result: DebounceEventResult| {
        match result {
            Ok(events) if events.iter().all(|e| !is_change(e, &own)) => {}
            Ok(_) => on_change(),
            Err(errors) => {
                for e in errors {
                    tracing::warn!(error = %e, "watching the services directory");
                }
                // The resync will catch what the watcher missed; still, look now.
                on_change();
            }
        }
    })?;
    debouncer.watch(dir, RecursiveMode::Recursive)?;
    Ok(debouncer)
}

/// Whether `event` may change what the directory says. Reading the files ourselves makes
/// access events; writing the allocation record makes events on `own` paths only.
fn is_change(event: &notify::Event, own: &[PathBuf]) -> bool {
    if matches!(event.kind, EventKind::Access(_)) {
        return false;
    }
    // An event without paths (a rescan) may be anything.
    event.paths.is_empty() || event.paths.iter().any(|p| !is_own(&absolute(p), own))
}

fn is_own(path: &Path, own: &[PathBuf]) -> bool {
    own.iter()
        .any(|o| path == o || crate::safe_write::is_temporary_of(path, o))
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}
