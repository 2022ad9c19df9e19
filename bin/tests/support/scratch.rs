//! A directory of the test's own under the system's temporary directory, removed when
//! dropped (also when the test fails): for tests that need no network namespace.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The directory, at `.0`; unique per process and call, so parallel tests never share one.
pub struct Scratch(pub PathBuf);

impl Scratch {
    /// A new, empty `portald-test-WHAT-PID-N`.
    pub fn new(what: &str) -> Scratch {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("portald-test-{what}-{}-{n}", std::process::id()));
        // A leftover from a crashed run with a recycled pid would mix in old files.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    /// Writes `content` to `name` (a relative path; its folders are created).
    pub fn write(&self, name: &str, content: &str) -> &Self {
        let path = self.0.join(name);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("parent dir");
        std::fs::write(path, content).expect("file written");
        self
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The path as a command-line argument.
    pub fn arg(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
