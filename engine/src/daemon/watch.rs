//! Watches the services directory; every event is only a hint to reconcile.

use crate::escape::Text;
use notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub type Watcher = Debouncer<notify::RecommendedWatcher, RecommendedCache>;

/// Calls `on_change` (debounced) whenever anything below `dir` changes: editors' atomic
/// renames, partial writes and ConfigMap `..data` swaps all end in one call after the dust
/// settles; the reconciler then reads the whole directory again. Changes only to the
/// `own` files (the daemon's allocation record and its temporary file) are not a reason to
/// look again: the daemon wrote them itself. `on_change` is given when the earliest change
/// of the burst was seen (the start of the network programming latency).
pub fn watch(
    dir: &Path,
    own: &[PathBuf],
    debounce: Duration,
    on_change: impl Fn(Instant) + Send + 'static,
) -> notify::Result<Watcher> {
    let own: Vec<PathBuf> = own.iter().map(|p| absolute(p)).collect();
    let mut debouncer = new_debouncer(debounce, None, move |result: DebounceEventResult| {
        match result {
            Ok(events) => {
                let changes = events.iter().filter(|e| is_change(e, &own));
                if let Some(first) = changes.map(|e| e.time).min() {
                    on_change(first);
                }
            }
            Err(errors) => {
                for e in errors {
                    tracing::warn!(error = %Text(&e.to_string()), "watching the services directory");
                }
                // The resync will catch what the watcher missed; still, look now.
                on_change(Instant::now());
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
    event.paths.is_empty() || event.paths.iter().any(|p| !own.contains(&absolute(p)))
}

fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf())
}
