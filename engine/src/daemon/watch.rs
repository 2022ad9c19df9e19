//! Watches the services directory; every event is only a hint to reconcile.

use notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};
use std::path::Path;
use std::time::Duration;

pub type Watcher = Debouncer<notify::RecommendedWatcher, RecommendedCache>;

/// Calls `on_change` (debounced) whenever anything below `dir` changes: editors' atomic
/// renames, partial writes and ConfigMap `..data` swaps all end in one call after the dust
/// settles; the reconciler then reads the whole directory again.
pub fn watch(
    dir: &Path,
    debounce: Duration,
    on_change: impl Fn() + Send + 'static,
) -> notify::Result<Watcher> {
    let mut debouncer = new_debouncer(debounce, None, move |result: DebounceEventResult| {
        match result {
            // Reading the files ourselves makes access events: only changes count.
            Ok(events)
                if events
                    .iter()
                    .all(|e| matches!(e.kind, EventKind::Access(_))) => {}
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
