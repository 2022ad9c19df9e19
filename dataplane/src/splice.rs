//! Zero-copy forwarding of bulk transfers: splice(2) from one socket into a pipe and from
//! the pipe into the other socket, so the bytes never cross into user space.
//!
//! Used once a direction of a connection shows it moves bulk data (see [`super::copy`]);
//! small request/response traffic keeps the plain copy, which needs fewer syscalls. Like
//! the copy buffers, pipes are held only while bytes are in flight and come from a small
//! shared pool, so an idle connection holds none.
//!
//! The system calls (`pipe2`, `splice`, `fcntl`) go through `nix`'s safe wrappers.

use super::activity::Activity;
use super::lock;
use nix::fcntl::{fcntl, FcntlArg, OFlag, SpliceFFlags};
use std::future::poll_fn;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use tokio::io::Interest;
use tokio::net::tcp::{ReadHalf, WriteHalf};

/// Capacity asked of each pipe: more bytes per splice call than the default 64 KiB. A pipe
/// that cannot grow (a lower `fs.pipe-max-size`) keeps the default and works the same.
const PIPE_SIZE: i32 = 512 * 1024;

/// Empty pipes kept for reuse (two descriptors each).
const POOLED: usize = 16;

static POOL: Mutex<Vec<Pipe>> = Mutex::new(Vec::new());

/// A pipe: the read end, then the write end. Both are non-blocking.
struct Pipe(OwnedFd, OwnedFd);

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let (read, write) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC)?;
        // A pipe that cannot grow keeps the default size and works the same.
        let _ = fcntl(write.as_raw_fd(), FcntlArg::F_SETPIPE_SZ(PIPE_SIZE));
        Ok(Pipe(read, write))
    }
}

/// A pipe on loan from the pool, counted in the listener's `held` while it lives. Bytes
/// still in it when it is dropped (a failed or cancelled transfer) make it unfit for
/// reuse: it is closed instead of pooled.
struct Held<'a> {
    pipe: Option<Pipe>,
    /// Bytes in the pipe; atomic only so that the pipe can be lent out while it changes.
    in_pipe: AtomicUsize,
    held: &'a AtomicUsize,
}

impl<'a> Held<'a> {
    fn take(held: &'a AtomicUsize) -> io::Result<Self> {
        let pipe = match lock(&POOL).pop() {
            Some(pipe) => pipe,
            None => Pipe::new()?,
        };
        held.fetch_add(1, Ordering::Relaxed);
        Ok(Held {
            pipe: Some(pipe),
            in_pipe: AtomicUsize::new(0),
            held,
        })
    }

    fn pipe(&self) -> &Pipe {
        self.pipe.as_ref().expect("a held pipe")
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.held.fetch_sub(1, Ordering::Relaxed);
        if let Some(pipe) = self.pipe.take() {
            let mut pool = lock(&POOL);
            if self.in_pipe.load(Ordering::Relaxed) == 0 && pool.len() < POOLED {
                pool.push(pipe);
            }
        }
    }
}

/// Moves up to `len` bytes from `from` to `to` without blocking; `Ok(0)` at EOF of `from`.
/// Sockets and pipes take no offsets.
fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    let flags = SpliceFFlags::SPLICE_F_MOVE | SpliceFFlags::SPLICE_F_NONBLOCK;
    Ok(nix::fcntl::splice(from, None, to, None, len, flags)?)
}

/// Forwards `from` to `to` until EOF of `from` (`Ok(true)`), through a pipe taken for each
/// burst of readable data and given back once `from` would block. `Ok(false)` when no pipe
/// can be had for want of descriptors or memory, with nothing in flight: the caller goes on
/// with the plain copy, which needs none.
pub(super) async fn forward(
    from: &mut ReadHalf<'_>,
    to: &mut WriteHalf<'_>,
    activity: &Activity,
    held: &AtomicUsize,
    bytes: &AtomicU64,
) -> io::Result<bool> {
    let source = from.as_ref();
    let sink = to.as_ref();
    loop {
        // Spends cooperative budget, so a busy connection yields to the others in time.
        poll_fn(|cx| source.poll_read_ready(cx)).await?;
        let pipe = match Held::take(held) {
            Ok(pipe) => pipe,
            Err(e) if super::limits::is_resource_shortage(&e) => return Ok(false),
            Err(e) => return Err(e),
        };
        let (pipe_read, pipe_write) = (pipe.pipe().0.as_fd(), pipe.pipe().1.as_fd());
        loop {
            // The pipe is empty here, so EAGAIN can only mean the socket has nothing.
            let read = source.try_io(Interest::READABLE, || {
                splice(source.as_fd(), pipe_write, PIPE_SIZE as usize)
            });
            let n = match read {
                Ok(0) => return Ok(true),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            };
            activity.touch();
            pipe.in_pipe.store(n, Ordering::Relaxed);
            loop {
                let left = pipe.in_pipe.load(Ordering::Relaxed);
                if left == 0 {
                    break;
                }
                // The pipe holds data here, so EAGAIN can only mean the socket is full.
                let written =
                    sink.try_io(Interest::WRITABLE, || splice(pipe_read, sink.as_fd(), left));
                match written {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(m) => {
                        pipe.in_pipe.fetch_sub(m, Ordering::Relaxed);
                        bytes.fetch_add(m as u64, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        poll_fn(|cx| sink.poll_write_ready(cx)).await?;
                    }
                    Err(e) => return Err(e),
                }
            }
            activity.touch();
            tokio::task::coop::consume_budget().await;
        }
    }
}
