//! One direction of a proxied TCP connection: copy from one socket to the other until EOF,
//! holding a copy buffer only while bytes are in flight.
//!
//! An idle connection owns no buffer: each direction waits for readability with no memory
//! of its own, takes a buffer from a small shared pool when the socket has data, reads and
//! writes until the reader has nothing more, and gives the buffer back. Thousands of idle
//! connections thus cost their sockets and a task each, not 2 × 16 KiB.

use super::activity::Activity;
use super::splice;
use socket2::SockRef;
use std::cell::RefCell;
use std::future::poll_fn;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::Poll;
use tokio::io::{AsyncRead, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

/// Bytes one read may take. Large enough that a bulk transfer makes few syscalls; it costs
/// nothing while a connection is idle.
pub(super) const BUFFER: usize = 64 * 1024;

/// Buffers kept for reuse, so a busy proxy neither allocates nor zeroes one per read burst.
/// Bounded: at most `POOLED × BUFFER` (1 MiB) per worker stays allocated once traffic stops.
const POOLED: usize = 16;

thread_local! {
    /// One pool per worker thread: a connection never leaves the worker that accepted it,
    /// so its buffers need no lock and no cache line shared with the other workers.
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A copy buffer on loan from the pool, counted in the listener's `held` while it lives.
pub(super) struct Held<'a> {
    buf: Box<[u8]>,
    held: &'a AtomicUsize,
}

impl<'a> Held<'a> {
    pub(super) fn take(held: &'a AtomicUsize) -> Self {
        let buf = POOL
            .try_with(|pool| pool.borrow_mut().pop())
            .ok()
            .flatten()
            .unwrap_or_else(|| vec![0; BUFFER].into_boxed_slice());
        held.fetch_add(1, Ordering::Relaxed);
        Held { buf, held }
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.held.fetch_sub(1, Ordering::Relaxed);
        let buf = std::mem::take(&mut self.buf);
        // Past the pool's bound (or while the thread ends) the buffer is simply freed.
        let _ = POOL.try_with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.len() < POOLED {
                pool.push(buf);
            }
        });
    }
}

/// What the two directions of one proxied connection share.
pub(super) struct Link {
    pub(super) activity: Activity,
    /// Set by the first direction to reach EOF.
    ended: AtomicBool,
}

impl Link {
    pub(super) fn new() -> Self {
        Link {
            activity: Activity::new(),
            ended: AtomicBool::new(false),
        }
    }
}

/// Copies `from` to `to` until `from` reaches EOF, then half-closes `to` (SHUT_WR), so the
/// peer of `to` sees the end of the stream while the other direction goes on. A direction
/// that turns out to carry bulk data continues with splice(2) (see [`splice`]). The
/// direction that ends last skips the shutdown, as closing both sockets right after sends
/// the same FIN for one syscall less.
pub(super) async fn forward(
    from: &mut ReadHalf<'_>,
    to: &mut WriteHalf<'_>,
    link: &Link,
    held: &AtomicUsize,
    bytes: &AtomicU64,
) -> io::Result<()> {
    let activity = &link.activity;
    loop {
        // Optimistic first: a fresh connection's request has usually arrived already.
        match burst(from, to, activity, held, bytes).await? {
            Burst::Drained => {}
            Burst::Eof => break,
            // Without a pipe to be had, the copy goes on; the next bulk burst tries again.
            Burst::Bulk => {
                if splice::forward(from, to, activity, held, bytes).await? {
                    break;
                }
            }
        }
        // Waiting takes no buffer. Unlike `readable()`, `poll_read_ready` spends cooperative
        // budget: a read refused for want of budget must yield here, not spin.
        poll_fn(|cx| from.as_ref().poll_read_ready(cx)).await?;
    }
    if link.ended.swap(true, Ordering::Relaxed) {
        return Ok(());
    }
    to.shutdown().await
}

/// How a burst of copying ended.
enum Burst {
    /// `from` has nothing more to read right now.
    Drained,
    Eof,
    /// A read filled the whole buffer: a bulk transfer, better spliced from here on.
    Bulk,
}

/// Copies while `from` has data. The buffer is held for this burst only.
async fn burst(
    from: &mut ReadHalf<'_>,
    to: &mut WriteHalf<'_>,
    activity: &Activity,
    held: &AtomicUsize,
    bytes: &AtomicU64,
) -> io::Result<Burst> {
    let mut buf = Held::take(held);
    loop {
        // One poll, no waiting: tokio's read clears the socket's readiness on a short read,
        // which spares the extra read that would only return EAGAIN. It also spends the
        // task's cooperative budget, so a connection that always has data yields in time.
        let mut read = ReadBuf::new(&mut buf.buf);
        let polled = poll_fn(|cx| Poll::Ready(Pin::new(&mut *from).poll_read(cx, &mut read)));
        match polled.await {
            Poll::Pending => return Ok(Burst::Drained),
            Poll::Ready(result) => result?,
        }
        let n = read.filled().len();
        activity.touch();
        if n == 0 {
            return Ok(Burst::Eof);
        }
        if n < BUFFER && finished(from.as_ref()).await {
            // The last bytes before `from`'s EOF: held back (MSG_MORE) so that the FIN which
            // follows at once leaves in the same segment, which spares the peer an ACK. The
            // FIN was in before this short read drained the socket, so the read that would
            // only return 0 is skipped.
            write_all_more(to.as_ref(), &buf.buf[..n]).await?;
            bytes.fetch_add(n as u64, Ordering::Relaxed);
            activity.touch();
            return Ok(Burst::Eof);
        }
        to.write_all(&buf.buf[..n]).await?;
        bytes.fetch_add(n as u64, Ordering::Relaxed);
        activity.touch();
        if n == BUFFER {
            return Ok(Burst::Bulk);
        }
    }
}

/// Whether the peer of `stream` has already ended its stream cleanly (a FIN, no reset);
/// looks at the readiness tokio already has, no syscall. Readiness is only updated between
/// polls of this worker's tasks, so a FIN seen here arrived before any read this task just
/// made.
async fn finished(stream: &TcpStream) -> bool {
    let ready = std::pin::pin!(stream.ready(Interest::READABLE | Interest::ERROR));
    let mut ready = ready;
    match poll_fn(|cx| Poll::Ready(ready.as_mut().poll(cx))).await {
        Poll::Ready(Ok(ready)) => ready.is_read_closed() && !ready.is_error(),
        _ => false,
    }
}

/// Writes `data` with MSG_MORE: the kernel queues it without sending until the next write,
/// shutdown or close, whichever the caller does right after.
async fn write_all_more(to: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        let sent = to.try_io(Interest::WRITABLE, || {
            SockRef::from(to).send_with_flags(data, libc::MSG_MORE)
        });
        match sent {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                poll_fn(|cx| to.poll_write_ready(cx)).await?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
