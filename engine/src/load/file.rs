//! Reading one input file (a services file or the lock) within a size limit, regular files
//! only: a FIFO, a device or a socket under a services name would hang the reader or feed
//! it forever, and a huge file would hold the daemon's memory.

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("not a regular file ({kind})")]
    NotRegular { kind: &'static str },
    #[error("file is {size} bytes, over the limit of {limit} bytes (`--max-file-bytes`)")]
    TooLarge { size: u64, limit: u64 },
    #[error("cannot read file: {0}")]
    Io(#[from] std::io::Error),
}

impl ReadError {
    /// Whether the file is not there (a missing lock is an empty one).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ReadError::Io(e) if e.kind() == std::io::ErrorKind::NotFound)
    }
}

/// The bytes of the regular file at `path` (symlinks followed, as a ConfigMap's are), at
/// most `limit` bytes of them.
///
/// The type is checked before opening (opening a device can have effects of its own) and
/// again on the opened handle, in case the name was swapped in between; the open is
/// non-blocking so that a FIFO swapped in cannot hang it. The size is checked from the
/// metadata and again while reading (at most `limit + 1` bytes are read: the file may grow).
pub fn read_limited(path: &Path, limit: u64) -> Result<Vec<u8>, ReadError> {
    check(&std::fs::metadata(path)?, limit)?;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let meta = file.metadata()?;
    check(&meta, limit)?;
    let mut bytes = Vec::with_capacity(meta.len().min(limit) as usize + 1);
    (&mut file).take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(ReadError::TooLarge {
            size: bytes.len() as u64,
            limit,
        });
    }
    Ok(bytes)
}

fn check(meta: &std::fs::Metadata, limit: u64) -> Result<(), ReadError> {
    let t = meta.file_type();
    let kind = if t.is_file() {
        None
    } else if t.is_fifo() {
        Some("a FIFO")
    } else if t.is_char_device() {
        Some("a character device")
    } else if t.is_block_device() {
        Some("a block device")
    } else if t.is_socket() {
        Some("a socket")
    } else if t.is_dir() {
        Some("a directory")
    } else {
        Some("not a file")
    };
    if let Some(kind) = kind {
        return Err(ReadError::NotRegular { kind });
    }
    if meta.len() > limit {
        return Err(ReadError::TooLarge {
            size: meta.len(),
            limit,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("svc.yaml");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let e = read_limited(&fifo, 1024).unwrap_err();
        assert!(matches!(e, ReadError::NotRegular { kind: "a FIFO" }), "{e}");
    }

    #[test]
    fn dev_zero_behind_a_symlink_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("portald.lock");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let e = read_limited(&link, 1024).unwrap_err();
        assert!(
            matches!(
                e,
                ReadError::NotRegular {
                    kind: "a character device"
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn a_file_over_the_limit_is_refused_and_one_at_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("svc.yaml");
        std::fs::write(&path, b"12345").unwrap();
        assert_eq!(read_limited(&path, 5).unwrap(), b"12345");
        let e = read_limited(&path, 4).unwrap_err();
        assert!(
            matches!(e, ReadError::TooLarge { size: 5, limit: 4 }),
            "{e}"
        );
    }
}
