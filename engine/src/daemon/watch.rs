//! Watches the services directory; every event is only a hint to reconcile.

use crate::escape::Text;
use notify::{EventKind, RecursiveMode};
use notify_debouncer_full::{new_debouncer, DebounceEventResult, Debouncer, RecommendedCache};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One debounced watch; dropping it stops it.
pub type Debounced = Debouncer<notify::RecommendedWatcher, RecommendedCache>;

/// The watches of a services path; dropping it stops them.
pub struct Watcher {
    /// The parent's entries: the services path replaced, renamed over or (a symlink)
    /// pointed elsewhere. `None` for a path without a parent (`/`).
    _parent: Option<Debounced>,
    /// Everything below the directory the path leads to now; re-armed on each replacement.
    _dir: Arc<Mutex<Option<Debounced>>>,
}

/// Calls `on_change` (debounced) whenever anything below `dir` changes: editors' atomic
/// renames, partial writes and ConfigMap `..data` swaps all end in one call after the dust
/// settles; the reconciler then reads the whole directory again. Changes only to the
/// `own` files (the daemon's node state, should it be kept inside `dir`, and the temporary
/// files [`crate::safe_write`] makes on the way to it) are not a reason to look again: the
/// daemon wrote them itself. The lock is not among them: it is an input. `on_change` is
/// given when the earliest change of the burst was seen (the start of the network
/// programming latency).
///
/// The path itself may be replaced: removed and made again (`rm -rf svc && mkdir svc`), a
/// directory renamed over it (`mv svc.new svc`), or, when it is a symlink, swapped
/// atomically to a new target (`ln -s new tmp && mv -T tmp svc`, as git-sync publishes a
/// commit). A kernel watch follows the inode it was put on, not the name, so the parent
/// directory is watched too: an event on the name moves the watch to what the name leads
/// to now, then calls `on_change`.
pub fn watch(
    dir: &Path,
    own: &[PathBuf],
    debounce: Duration,
    on_change: impl Fn(Instant) + Send + Sync + 'static,
) -> notify::Result<Watcher> {
    let own: Arc<Vec<PathBuf>> = Arc::new(own.iter().map(|p| absolute(p)).collect());
    let on_change: Arc<dyn Fn(Instant) + Send + Sync> = Arc::new(on_change);
    let dir = absolute(dir);
    let watched = Arc::new(Mutex::new(Some(watch_dir(
        &dir,
        own.clone(),
        debounce,
        on_change.clone(),
    )?)));
    let parent = match dir.parent() {
        Some(parent) => {
            let watched = watched.clone();
            let name = dir.clone();
            let mut debouncer =
                new_debouncer(debounce, None, move |result: DebounceEventResult| {
                    let replaced = match &result {
                        Ok(events) => events.iter().any(|e| names(e, &name)),
                        Err(_) => true,
                    };
                    if replaced {
                        rearm(&name, &watched, &own, debounce, &on_change);
                    }
                })?;
            debouncer.watch(parent, RecursiveMode::NonRecursive)?;
            Some(debouncer)
        }
        None => None,
    };
    Ok(Watcher {
        _parent: parent,
        _dir: watched,
    })
}

/// The recursive watch of what `dir` leads to now.
fn watch_dir(
    dir: &Path,
    own: Arc<Vec<PathBuf>>,
    debounce: Duration,
    on_change: Arc<dyn Fn(Instant) + Send + Sync>,
) -> notify::Result<Debounced> {
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

/// Moves the recursive watch to what `dir` leads to now and asks for a reconcile; when
/// nothing is there (removed, not yet made again) waits for the event that brings it back:
/// until then the last good state stays in force.
fn rearm(
    dir: &Path,
    watched: &Mutex<Option<Debounced>>,
    own: &Arc<Vec<PathBuf>>,
    debounce: Duration,
    on_change: &Arc<dyn Fn(Instant) + Send + Sync>,
) {
    let mut slot = watched.lock().expect("directory watch lock");
    // The old watch first: it may hold the replaced directory's inode.
    *slot = None;
    if !dir.is_dir() {
        tracing::warn!(path = %dir.display(), "the services directory is gone; serving what it last said until it is back");
        return;
    }
    match watch_dir(dir, own.clone(), debounce, on_change.clone()) {
        Ok(debouncer) => {
            tracing::info!(path = %dir.display(), target = %std::fs::canonicalize(dir).unwrap_or_default().display(), "the services directory was replaced; watching the new one");
            *slot = Some(debouncer);
        }
        // The resync still reads the directory; the next event on the name tries again.
        Err(e) => {
            tracing::warn!(path = %dir.display(), error = %e, "cannot watch the new services directory")
        }
    }
    drop(slot);
    on_change(Instant::now());
}

/// Whether `event` (in the parent directory) is about the entry `name`. An event without
/// paths (a rescan) may be.
fn names(event: &notify::Event, name: &Path) -> bool {
    !matches!(event.kind, EventKind::Access(_))
        && (event.paths.is_empty() || event.paths.iter().any(|p| absolute(p) == name))
}

/// Whether `event` may change what the directory says. Reading the files ourselves makes
/// access events; writing the node state makes events on `own` paths only.
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

/// Whether `path` lies inside `dir` (both made absolute, not resolved).
pub fn is_below(path: &Path, dir: &Path) -> bool {
    absolute(path).starts_with(absolute(dir))
}

/// Calls `on_change` (debounced) whenever the file `path` is written, replaced (a rename
/// over it, as `git checkout` and `portald lock` do), created or removed. Watches its parent
/// directory, since a watch on the file itself would end with the first rename over it.
pub fn watch_file(
    path: &Path,
    debounce: Duration,
    on_change: impl Fn() + Send + 'static,
) -> notify::Result<Debounced> {
    let file = absolute(path);
    let parent = file
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/"));
    let mut debouncer =
        new_debouncer(
            debounce,
            None,
            move |result: DebounceEventResult| match result {
                Ok(events) => {
                    let touched = events.iter().any(|e| {
                        !matches!(e.kind, EventKind::Access(_))
                            && (e.paths.is_empty() || e.paths.iter().any(|p| absolute(p) == file))
                    });
                    if touched {
                        on_change();
                    }
                }
                Err(errors) => {
                    for e in errors {
                        tracing::warn!(error = %e, "watching the lock file");
                    }
                    on_change();
                }
            },
        )?;
    debouncer.watch(&parent, RecursiveMode::NonRecursive)?;
    Ok(debouncer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn a_lock_outside_the_directory_replaced_by_a_rename_is_seen_and_its_neighbours_are_not() {
        let dir = std::env::temp_dir().join(format!("portald-watch-file-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let lock = dir.join("portald.lock");
        std::fs::write(&lock, "{}").unwrap();
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = calls.clone();
        let _watcher = watch_file(&lock, Duration::from_millis(50), move || {
            seen.fetch_add(1, Ordering::SeqCst);
        })
        .unwrap();
        let wait = |want: usize| {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while calls.load(Ordering::SeqCst) < want && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            calls.load(Ordering::SeqCst)
        };
        // A neighbour changes: no call.
        std::fs::write(dir.join("other.txt"), "x").unwrap();
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        // `git checkout` style: a new file renamed over the lock.
        std::fs::write(dir.join(".lock.new"), "{\"a\": 1}").unwrap();
        std::fs::rename(dir.join(".lock.new"), &lock).unwrap();
        assert!(wait(1) >= 1, "the replaced lock was not seen");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
