//! TCP listeners: accept, dial an endpoint with retries, and copy both ways with half-close.

use super::copy::{forward, Activity, Link};
use super::sockopt::{original_dst, reset};
use super::{DataPlaneConfig, Shared, TaskCtx};
use socket2::{Domain, Protocol as SockProtocol, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::time::{sleep, sleep_until, timeout, Instant};

/// Pause after a failed accept, so running out of file descriptors does not spin a core.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// Binds the listening socket on `addr` and returns it once per data-plane worker (the
/// same socket, duplicated descriptors): every worker waits on it in its own epoll set and
/// whichever is free accepts, so a busy worker never holds new connections back.
pub(super) fn bind(addr: SocketAddr, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(SockProtocol::TCP),
    )?;
    // A reopened listener must bind while connections of its previous life sit in TIME_WAIT.
    socket.set_reuse_address(true)?;
    // Accepted sockets inherit TCP_NODELAY from the listener on Linux: one setsockopt per
    // listener instead of one per connection.
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    let first: std::net::TcpListener = socket.into();
    let mut listeners = Vec::new();
    for _ in 1..count.max(1) {
        listeners.push(first.try_clone()?);
    }
    listeners.push(first);
    Ok(listeners)
}

/// Accepts until `stop` fires (close) or the data plane shuts down; each connection runs in
/// its own task, which outlives the listener.
pub(super) async fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    ctx: TaskCtx,
    mut stop: oneshot::Receiver<()>,
) {
    // Registered here, with the reactor of the worker that runs this task.
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(listener = %shared.id, error = %e, "cannot serve listener");
            return;
        }
    };
    // Pinned once, not remade for every accept: each remaking would enter and leave the
    // shutdown signal's waiter list.
    let mut stop_all = ctx.clone();
    let stopped = stop_all.stopped();
    tokio::pin!(stopped);
    // This worker's own copy: every connection clones it, and a count shared with the
    // other workers would bounce between their cores on each clone and drop.
    let config = Arc::new(DataPlaneConfig::clone(&ctx.config));
    loop {
        let accepted = tokio::select! {
            _ = &mut stop => break,
            _ = &mut stopped => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                tokio::spawn(connection(stream, peer, shared.clone(), config.clone()));
            }
            Err(e) => {
                tracing::warn!(listener = %shared.id, error = %e, "accept failed");
                sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

/// One proxied connection. Shutdown needs no signal here: it drops this worker's runtime,
/// which drops the task and closes both sockets.
async fn connection(
    client: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    config: Arc<DataPlaneConfig>,
) {
    let _active = shared.activate();
    proxy(client, peer, &shared, &config).await;
}

async fn proxy(client: TcpStream, peer: SocketAddr, shared: &Shared, config: &DataPlaneConfig) {
    let id = &shared.id;
    if tracing::enabled!(tracing::Level::DEBUG) {
        // A getsockopt per connection, only worth it when someone reads it.
        let original = original_dst(&client);
        tracing::debug!(listener = %id, client = %peer, original_dst = ?original, "connection accepted");
    }

    let plan = shared
        .balancer()
        .plan(peer.ip(), Instant::now(), config.max_attempts);
    if plan.is_empty() {
        tracing::debug!(listener = %id, client = %peer, "no endpoints; resetting client");
        shared.rejected();
        reset(client);
        return;
    }
    let Some((endpoint, upstream)) = dial(&plan, shared, config).await else {
        tracing::warn!(listener = %id, client = %peer, tried = ?plan, "no endpoint answered; resetting client");
        shared.balancer().failed(peer.ip());
        shared.rejected();
        reset(client);
        return;
    };
    shared
        .balancer()
        .established(peer.ip(), endpoint, Instant::now());
    shared.sent_to(endpoint);
    tracing::debug!(listener = %id, client = %peer, %endpoint, "connection proxied");
    #[cfg(test)]
    shared.record_sockets(&client, &upstream);
    let outcome = relay(client, upstream, shared, config.half_close_timeout).await;
    tracing::debug!(listener = %id, client = %peer, %endpoint, %outcome, "connection ended");
}

/// Tries the planned endpoints in order, each within its attempt's timeout.
async fn dial(
    plan: &[SocketAddr],
    shared: &Shared,
    config: &DataPlaneConfig,
) -> Option<(SocketAddr, TcpStream)> {
    for (attempt, &endpoint) in plan.iter().enumerate() {
        let limit = config.dial_timeout(attempt);
        let error = match timeout(limit, connect(endpoint)).await {
            Ok(Ok(stream)) => return Some((endpoint, stream)),
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {limit:?}"),
        };
        shared.failed();
        tracing::warn!(
            listener = %shared.id,
            %endpoint,
            attempt = attempt + 1,
            %error,
            "endpoint dial failed"
        );
    }
    None
}

/// Dials `endpoint` with TCP_NODELAY set before the SYN: the proxy forwards what it reads at
/// once, so Nagle's algorithm would only add latency to small writes.
async fn connect(endpoint: SocketAddr) -> io::Result<TcpStream> {
    let socket = Socket::new(
        Domain::for_address(endpoint),
        Type::STREAM.nonblocking(),
        Some(SockProtocol::TCP),
    )?;
    socket.set_tcp_nodelay(true)?;
    match socket.connect(&endpoint.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let stream = TcpStream::from_std(socket.into())?;
    // The handshake's outcome shows in the readiness epoll already reported: writable alone
    // is success, while a refusal or reset also raises EPOLLERR/EPOLLHUP. Reading it spares
    // the getsockopt(SO_ERROR) that tokio's own connect makes on every success.
    let ready = stream.ready(Interest::WRITABLE | Interest::ERROR).await?;
    if ready.is_error() || ready.is_write_closed() {
        return Err(stream.take_error()?.unwrap_or_else(|| {
            io::Error::new(io::ErrorKind::ConnectionAborted, "closed during connect")
        }));
    }
    Ok(stream)
}

/// How a proxied connection ended.
#[derive(Debug)]
enum Outcome {
    /// Both directions reached EOF; both sides got a FIN.
    Closed,
    /// One direction ended and the other stayed silent past the half-close timeout.
    Reaped,
    /// A read or write failed (typically a reset); both sides got an RST.
    Failed(io::Error),
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Closed => f.write_str("closed"),
            Outcome::Reaped => f.write_str("reaped after half-close timeout"),
            Outcome::Failed(e) => write!(f, "aborted: {e}"),
        }
    }
}

/// Copies both ways until both directions end. An EOF in one direction becomes a
/// `shutdown(SHUT_WR)` on the other socket, so a client that half-closes still receives the
/// whole response. Once one direction is done, the other must keep moving: silence for
/// `half_close_timeout` reaps the connection, so neither side lingers in FIN_WAIT2 or
/// CLOSE_WAIT because its peer vanished.
async fn relay(
    mut client: TcpStream,
    mut upstream: TcpStream,
    shared: &Shared,
    half_close_timeout: Duration,
) -> Outcome {
    // A write counts as activity too, so a slow reader draining a long response is not
    // mistaken for silence.
    let link = Link::new();
    let outcome = {
        let (mut client_read, mut client_write) = client.split();
        let (mut upstream_read, mut upstream_write) = upstream.split();
        let buffers = &shared.buffers;
        let bytes = &shared.bytes;
        let to_upstream = forward(
            &mut client_read,
            &mut upstream_write,
            &link,
            buffers,
            &bytes.to_endpoint,
        );
        let to_client = forward(
            &mut upstream_read,
            &mut client_write,
            &link,
            buffers,
            &bytes.to_client,
        );
        tokio::pin!(to_upstream, to_client);
        let (first, remaining) = tokio::select! {
            r = &mut to_upstream => (r, to_client.as_mut()),
            r = &mut to_client => (r, to_upstream.as_mut()),
        };
        match first {
            Err(e) => Outcome::Failed(e),
            Ok(()) => finish(remaining, &link.activity, half_close_timeout).await,
        }
    };
    if matches!(outcome, Outcome::Closed) {
        return outcome;
    }
    reset(client);
    reset(upstream);
    outcome
}

/// Waits for the remaining direction, reaping it once it has been silent too long.
async fn finish<F>(
    mut remaining: std::pin::Pin<&mut F>,
    activity: &Activity,
    half_close_timeout: Duration,
) -> Outcome
where
    F: std::future::Future<Output = io::Result<()>>,
{
    loop {
        let deadline = activity.last() + half_close_timeout;
        tokio::select! {
            r = remaining.as_mut() => {
                return match r {
                    Ok(()) => Outcome::Closed,
                    Err(e) => Outcome::Failed(e),
                };
            }
            _ = sleep_until(deadline) => {
                // Activity since the deadline was computed moved it; wait again.
                if Instant::now() >= activity.last() + half_close_timeout {
                    return Outcome::Reaped;
                }
            }
        }
    }
}
