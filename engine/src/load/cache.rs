//! Incremental loading for the daemon: every pass reads the directory, but a file is parsed
//! again only when its content changed since the pass before.

use super::{parse_all_with, parse_read, read_dir_with, LoadError, ParsedFile};
use crate::config::InputLimits;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What each file last parsed to, keyed on its path and the SHA-256 of its text.
///
/// Keyed on content rather than on mtime, size and inode: reading a file costs little beside
/// parsing it, and the content cannot lie, where a timestamp can (a same-size rewrite within
/// the file system's clock tick, `cp -p`, an rsync that keeps times).
#[derive(Debug, Default)]
pub struct ParseCache {
    /// The directory and the limits the entries were read within: with others, all is
    /// read and parsed again.
    source: Option<(PathBuf, InputLimits)>,
    entries: BTreeMap<String, Entry>,
    parses: usize,
}

#[derive(Debug)]
struct Entry {
    digest: [u8; 32],
    parsed: ParsedFile,
}

impl ParseCache {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many files this cache has parsed since it was made.
    pub fn parses(&self) -> usize {
        self.parses
    }

    /// Reads and parses a whole directory as [`super::load_dir_with`] does (same files, same
    /// order, same diagnostics), parsing only the files that are new or changed (on every
    /// core); the others come from the last call. Files no longer there are forgotten.
    pub fn load_dir(
        &mut self,
        dir: &Path,
        limits: &InputLimits,
    ) -> Result<Vec<ParsedFile>, LoadError> {
        let (files, read_errors) = read_dir_with(dir, limits)?;
        let source = (dir.to_path_buf(), *limits);
        if self.source.as_ref() != Some(&source) {
            self.entries.clear();
            self.source = Some(source);
        }
        let digests: Vec<[u8; 32]> = files
            .iter()
            .map(|f| Sha256::digest(f.text.as_bytes()).into())
            .collect();
        let mut kept = BTreeMap::new();
        let mut changed = Vec::new();
        for (file, digest) in files.into_iter().zip(digests) {
            match self.entries.remove(&file.path) {
                Some(entry) if entry.digest == digest => {
                    kept.insert(file.path, entry);
                }
                _ => changed.push((file, digest)),
            }
        }
        let (sources, digests): (Vec<_>, Vec<_>) = changed.into_iter().unzip();
        self.parses += sources.len();
        for (parsed, digest) in parse_all_with(&sources, limits).into_iter().zip(digests) {
            kept.insert(parsed.path.clone(), Entry { digest, parsed });
        }
        self.entries = kept;
        let parsed: Vec<ParsedFile> = self.entries.values().map(|e| e.parsed.clone()).collect();
        Ok(parse_read(parsed, read_errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::load_dir_with;

    fn service(name: &str, port: u32) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  ports:\n  - port: {port}\n"
        )
    }

    #[test]
    fn an_unchanged_file_is_not_parsed_again_and_a_changed_one_is() {
        let dir = tempfile::tempdir().unwrap();
        let limits = InputLimits::default();
        for name in ["a", "b", "c"] {
            std::fs::write(dir.path().join(format!("{name}.yaml")), service(name, 80)).unwrap();
        }
        let mut cache = ParseCache::new();
        let first = cache.load_dir(dir.path(), &limits).unwrap();
        assert_eq!(cache.parses(), 3);
        assert_eq!(first, load_dir_with(dir.path(), &limits).unwrap());

        let again = cache.load_dir(dir.path(), &limits).unwrap();
        assert_eq!(cache.parses(), 3, "nothing changed: nothing parsed");
        assert_eq!(again, first);

        // A new content (here broken), a new file, a file removed: only the first two parse.
        std::fs::write(dir.path().join("b.yaml"), service("b", 99999)).unwrap();
        std::fs::write(dir.path().join("d.yaml"), service("d", 80)).unwrap();
        std::fs::remove_file(dir.path().join("c.yaml")).unwrap();
        let changed = cache.load_dir(dir.path(), &limits).unwrap();
        assert_eq!(cache.parses(), 5);
        assert_eq!(changed, load_dir_with(dir.path(), &limits).unwrap());
        assert!(changed.iter().any(ParsedFile::has_errors));

        // The old content back is a change like any other.
        std::fs::write(dir.path().join("b.yaml"), service("b", 80)).unwrap();
        let fixed = cache.load_dir(dir.path(), &limits).unwrap();
        assert_eq!(cache.parses(), 6);
        assert_eq!(fixed, load_dir_with(dir.path(), &limits).unwrap());
    }

    #[test]
    fn other_limits_parse_every_file_again() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), service("a", 80)).unwrap();
        let mut cache = ParseCache::new();
        let limits = InputLimits::default();
        cache.load_dir(dir.path(), &limits).unwrap();
        let shallow = InputLimits {
            max_nesting_depth: 2,
            ..limits
        };
        let refused = cache.load_dir(dir.path(), &shallow).unwrap();
        assert_eq!(cache.parses(), 2);
        assert!(refused[0].has_errors(), "{:?}", refused[0].diagnostics);
        assert_eq!(refused, load_dir_with(dir.path(), &shallow).unwrap());
    }

    #[test]
    fn another_directory_starts_afresh() {
        let (one, two) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(one.path().join("a.yaml"), service("a", 80)).unwrap();
        std::fs::write(two.path().join("a.yaml"), service("a", 80)).unwrap();
        let limits = InputLimits::default();
        let mut cache = ParseCache::new();
        cache.load_dir(one.path(), &limits).unwrap();
        let loaded = cache.load_dir(two.path(), &limits).unwrap();
        assert_eq!(cache.parses(), 2);
        assert_eq!(loaded, load_dir_with(two.path(), &limits).unwrap());
    }

    #[test]
    fn an_unreadable_file_is_reported_as_load_dir_reports_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), service("a", 80)).unwrap();
        std::fs::write(dir.path().join("bad.yaml"), b"\xff\xfe").unwrap();
        let limits = InputLimits::default();
        let mut cache = ParseCache::new();
        let loaded = cache.load_dir(dir.path(), &limits).unwrap();
        assert_eq!(loaded, load_dir_with(dir.path(), &limits).unwrap());
        assert_eq!(cache.parses(), 1);
    }
}
