//! Zero-copy forwarding of bulk transfers: splice(2) from one socket into a pipe and from
//! the pipe into the other socket, so the bytes never cross into user space.
//!
//! Used once a direction of a connection shows it moves bulk data (see [`super::copy`]);
//! small request/response traffic keeps the plain copy, which needs fewer syscalls. Like
//! the copy buffers, pipes are held only while bytes are in flight and come from a small
//! shared pool, so an idle connection holds none.
//!
//! This is the data plane's only `unsafe`: `pipe2`, `splice` and `fcntl` have no safe
//! wrapper among the crates portald uses; each call is commented.

#![allow(unsafe_code)]

use super::copy::Activity;
use super::lock;
use std::future::poll_fn;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
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
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two new descriptors into the two-element array on success.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created and are owned by nothing else.
        let pipe = unsafe { Pipe(OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: F_SETPIPE_SZ on our own pipe; failure only leaves the default size.
        unsafe { libc::fcntl(pipe.1.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
        Ok(pipe)
    }
}

/// A pipe on loan from the pool, counted in the listener's `held` while it lives. Bytes
/// still in it when it is dropped (a failed or cancelled transfer) make it unfit for
/// reuse: it is closed instead of pooled.
struct Held<'a> {
    pipe: Option<Pipe>,
    in_pipe: usize,
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
            in_pipe: 0,
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
            if self.in_pipe == 0 && pool.len() < POOLED {
                pool.push(pipe);
            }
        }
    }
}

/// Moves up to `len` bytes from `from` to `to` without blocking; `Ok(0)` at EOF of `from`.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    // SAFETY: splice on descriptors the caller keeps open for the call; null offsets are
    // required for sockets and pipes.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Forwards `from` to `to` until EOF of `from` (`Ok(())`), through a pipe taken for each
/// burst of readable data and given back once `from` would block.
pub(super) async fn forward(
    from: &mut ReadHalf<'_>,
    to: &mut WriteHalf<'_>,
    activity: &Activity,
    held: &AtomicUsize,
) -> io::Result<()> {
    let source = from.as_ref();
    let sink = to.as_ref();
    loop {
        // Spends cooperative budget, so a busy connection yields to the others in time.
        poll_fn(|cx| source.poll_read_ready(cx)).await?;
        let mut pipe = Held::take(held)?;
        let (pipe_read, pipe_write) = (pipe.pipe().0.as_raw_fd(), pipe.pipe().1.as_raw_fd());
        loop {
            // The pipe is empty here, so EAGAIN can only mean the socket has nothing.
            let read = source.try_io(Interest::READABLE, || {
                splice(source.as_raw_fd(), pipe_write, PIPE_SIZE as usize)
            });
            let n = match read {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            };
            activity.touch();
            pipe.in_pipe = n;
            while pipe.in_pipe > 0 {
                let left = pipe.in_pipe;
                // The pipe holds data here, so EAGAIN can only mean the socket is full.
                let written = sink.try_io(Interest::WRITABLE, || {
                    splice(pipe_read, sink.as_raw_fd(), left)
                });
                match written {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(m) => pipe.in_pipe -= m,
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
