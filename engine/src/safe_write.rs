//! The one way portald writes a file: a new temporary file beside it, then a rename over it.
//!
//! portald runs as root and writes into directories users name (the lock next to the
//! services, `plan --out`, `snapshot --out`). Writing to a fixed name there follows any
//! symlink planted under that name into whatever file it points at. Here:
//! - the temporary file is created with `O_CREAT|O_EXCL` under a random name (the `tempfile`
//!   crate: well kept, and it gets the exclusive create and the retry on a taken name
//!   right), so no existing file or link is ever opened for writing;
//! - it is flushed to disk (`fsync`) before `rename(2)` puts it in place: a rename replaces a
//!   symlink at the target name itself and never writes through it, and a crash leaves
//!   either the old file or the new one, never half of one;
//! - a directory others can write to and that is not sticky is refused: there another user
//!   can rename or replace the file between our write and its use, so what portald says it
//!   wrote could be anyone's (a sticky directory such as `/tmp` is fine: only the owner of a
//!   file, root here, may rename or remove it).

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of the files written (before the umask): readable by all, as a lock committed to
/// git or a plan handed to `apply` must be.
const FILE_MODE: u32 = 0o644;

#[derive(Debug, thiserror::Error)]
pub enum SafeWriteError {
    #[error("cannot use directory `{dir}`")]
    Directory {
        dir: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "directory `{dir}` (mode {mode:04o}) is writable by group or others and not sticky: \
         another user could replace the file written there; make it writable by its owner \
         only (`chmod go-w`) or write elsewhere"
    )]
    UnsafeDirectory { dir: String, mode: u32 },
    #[error("cannot write `{path}`")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Replaces `path` with `contents` atomically: readers see the old file or the new one.
/// A symlink at `path` is replaced by the file, its target left untouched.
///
/// Errors: the directory of `path` is missing or refused (see the module doc), or creating,
/// writing, syncing or renaming the temporary file failed (it is removed then).
pub fn write(path: &Path, contents: &[u8]) -> Result<(), SafeWriteError> {
    let dir = directory_of(path);
    check_directory(&dir)?;
    let err = |source| SafeWriteError::Write {
        path: path.display().to_string(),
        source,
    };
    let prefix = temporary_prefix(path);
    let mut file = tempfile::Builder::new()
        .prefix(&prefix)
        .suffix(".tmp")
        .permissions(std::fs::Permissions::from_mode(FILE_MODE))
        .tempfile_in(&dir)
        .map_err(err)?;
    file.write_all(contents).map_err(err)?;
    file.as_file().sync_all().map_err(err)?;
    // Dropping the error's file removes the temporary file.
    file.persist(path).map_err(|e| err(e.error))?;
    // The rename is durable once the directory is synced; a failure here changes nothing
    // for readers, so it is not worth failing the write for.
    if let Ok(d) = std::fs::File::open(&dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Whether `candidate` is a temporary file `write` makes on its way to `target`: same
/// directory, name `.<target name>.<random>.tmp`. The daemon's watcher ignores those.
pub fn is_temporary_of(candidate: &Path, target: &Path) -> bool {
    let Some(name) = candidate.file_name() else {
        return false;
    };
    let prefix = temporary_prefix(target);
    let (name, prefix) = (name.as_encoded_bytes(), prefix.as_encoded_bytes());
    candidate.parent() == target.parent()
        && name.len() > prefix.len() + ".tmp".len()
        && name.starts_with(prefix)
        && name.ends_with(b".tmp")
}

/// `.<name>.`: hidden, so the loader never reads a temporary file as a services file.
fn temporary_prefix(target: &Path) -> OsString {
    let mut prefix = OsString::from(".");
    prefix.push(target.file_name().unwrap_or_default());
    prefix.push(".");
    prefix
}

fn directory_of(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn check_directory(dir: &Path) -> Result<(), SafeWriteError> {
    let meta = std::fs::metadata(dir).map_err(|source| SafeWriteError::Directory {
        dir: dir.display().to_string(),
        source,
    })?;
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(SafeWriteError::UnsafeDirectory {
            dir: dir.display().to_string(),
            mode,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn private_dir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    #[test]
    fn a_symlink_at_the_target_is_replaced_and_its_victim_left_alone() {
        let dir = private_dir();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious\n").unwrap();
        let target = dir.path().join("out.json");
        symlink(&victim, &target).unwrap();

        write(&target, b"{}\n").unwrap();

        assert_eq!(std::fs::read(&victim).unwrap(), b"precious\n");
        assert!(!std::fs::symlink_metadata(&target)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&target).unwrap(), b"{}\n");
    }

    #[test]
    fn no_temporary_file_is_left_behind_and_the_file_is_readable_by_all() {
        let dir = private_dir();
        let target = dir.path().join("portald.lock");
        write(&target, b"one").unwrap();
        write(&target, b"two").unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![OsString::from("portald.lock")]);
        assert_eq!(std::fs::read(&target).unwrap(), b"two");
        let mode = std::fs::metadata(&target).unwrap().mode() & 0o777;
        assert_eq!(mode & 0o444, 0o444, "mode {mode:o}");
    }

    #[test]
    fn a_directory_others_can_write_is_refused_unless_sticky() {
        let dir = private_dir();
        let target = dir.path().join("plan.json");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = write(&target, b"x").unwrap_err();
        assert!(matches!(e, SafeWriteError::UnsafeDirectory { .. }), "{e}");
        assert!(!target.exists());
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o1777)).unwrap();
        write(&target, b"x").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"x");
    }

    #[test]
    fn temporary_names_are_recognised_only_beside_their_target() {
        let target = Path::new("/srv/services/portald.lock");
        assert!(is_temporary_of(
            Path::new("/srv/services/.portald.lock.a1B2c3.tmp"),
            target
        ));
        assert!(!is_temporary_of(
            Path::new("/srv/other/.portald.lock.a1B2c3.tmp"),
            target
        ));
        assert!(!is_temporary_of(
            Path::new("/srv/services/.portald.lock.tmp"),
            target
        ));
        assert!(!is_temporary_of(
            Path::new("/srv/services/web.yaml"),
            target
        ));
    }
}
