//! TCP listeners: accept, dial an endpoint with retries, and copy both ways with half-close.

use super::activity::Activity;
use super::copy::{forward, Link};
use super::limits::{is_resource_shortage, Backoff, Budget, EpisodeLog};
use super::sockopt::{original_dst, reset, set_keepalive, Keepalive};
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

/// Longest wait for a connection slot, once the data plane holds as many connections or
/// descriptors as it may: short, since a slot frees as soon as any connection ends.
const FULL_WAIT: Duration = Duration::from_millis(50);

/// Binds the listening socket on `addr` and returns it once per data-plane worker (the
/// same socket, duplicated descriptors): every worker waits on it in its own epoll set and
/// whichever is free accepts, so a busy worker never holds new connections back.
/// With `keepalive`, accepted sockets inherit it from the listener: no setsockopt per
/// connection on the client side.
pub(super) fn bind(
    addr: SocketAddr,
    count: usize,
    keepalive: Option<&Keepalive>,
) -> io::Result<Vec<std::net::TcpListener>> {
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
    if let Some(keepalive) = keepalive {
        set_keepalive(socket2::SockRef::from(&socket), keepalive)?;
    }
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
    let worker = Arc::new(Worker {
        config: DataPlaneConfig::clone(&ctx.config),
        budget: ctx.budget.clone(),
    });
    let budget = &ctx.budget;
    let mut backoff = Backoff::new();
    // Whether this loop is waiting for a slot, or backing off after failed accepts; the log
    // lines are the budget's, one for all listeners and workers (see `Budget::note_full`).
    let mut waiting = false;
    let mut failing = false;
    loop {
        // At the bound, new connections wait in the kernel's backlog (HAProxy's `maxconn`
        // does the same) rather than being accepted and dropped.
        if !budget.has_room() {
            if !waiting && budget.note_full() {
                let (held, may) = budget.fds();
                tracing::warn!(listener = %shared.id, fds_held = held, fds_budget = may, "connection limit reached; new connections wait in the backlog");
            }
            waiting = true;
            let wait = backoff.next_wait().min(FULL_WAIT);
            tokio::select! {
                _ = &mut stop => break,
                _ = &mut stopped => break,
                _ = sleep(wait) => continue,
            }
        }
        if std::mem::take(&mut waiting) {
            backoff.reset();
            if budget.note_room() {
                tracing::warn!(listener = %shared.id, "below the connection limit again; accepting");
            }
        }
        let accepted = tokio::select! {
            _ = &mut stop => break,
            _ = &mut stopped => break,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                if std::mem::take(&mut failing) {
                    backoff.reset();
                    if let Some((failures, lasted)) = budget.note_recovered() {
                        tracing::warn!(listener = %shared.id, failures, lasted_ms = crate::log_fields::millis(lasted), "accept recovered");
                    }
                }
                // This loop may have been waiting in accept since before the last slot went:
                // then the connection waits in hand for a slot, out of the reserve, unless
                // too many already do.
                if !budget.try_connection() {
                    if !budget.hold_in_hand() {
                        shared.rejected();
                        reset(stream);
                        continue;
                    }
                    let mut slot = false;
                    while !slot {
                        let wait = backoff.next_wait().min(FULL_WAIT);
                        tokio::select! {
                            _ = &mut stop => break,
                            _ = &mut stopped => break,
                            _ = sleep(wait) => slot = budget.try_connection(),
                        }
                    }
                    budget.release_in_hand();
                    if !slot {
                        break;
                    }
                    backoff.reset();
                }
                tokio::spawn(connection(stream, peer, shared.clone(), worker.clone()));
            }
            Err(e) => {
                failing = true;
                let shortage = is_resource_shortage(&e);
                match shortage.then(|| budget.note_shortage()).flatten() {
                    Some(EpisodeLog::Started) => {
                        tracing::warn!(listener = %shared.id, error = %e, "accept failed; backing off");
                    }
                    Some(EpisodeLog::Continues { failures, elapsed }) => {
                        tracing::warn!(listener = %shared.id, error = %e, failures, elapsed_ms = crate::log_fields::millis(elapsed), "accepts still failing");
                    }
                    // A connection reset or aborted while queued is that client's trouble
                    // only; still backed off, so that an unforeseen lasting error cannot spin.
                    None if !shortage => {
                        tracing::debug!(listener = %shared.id, error = %e, "accept failed");
                    }
                    None => {}
                }
                let wait = backoff.next_wait();
                tokio::select! {
                    _ = &mut stop => break,
                    _ = &mut stopped => break,
                    _ = sleep(wait) => {}
                }
            }
        }
    }
}

/// What every connection of one worker reads: its own copy of the config, so that cloning
/// the `Arc` per connection touches no cache line shared with the other workers, and the
/// data plane's budget, given back to when a connection ends.
struct Worker {
    config: DataPlaneConfig,
    budget: Arc<Budget>,
}

/// One connection's slot in the budget, given back when the connection task ends.
struct Slot<'a>(&'a Budget);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.release_connection();
    }
}

/// One proxied connection. Shutdown needs no signal here: it drops this worker's runtime,
/// which drops the task and closes both sockets.
async fn connection(client: TcpStream, peer: SocketAddr, shared: Arc<Shared>, worker: Arc<Worker>) {
    let _slot = Slot(&worker.budget);
    let _active = shared.activate();
    proxy(client, peer, &shared, &worker.config).await;
}

async fn proxy(client: TcpStream, peer: SocketAddr, shared: &Shared, config: &DataPlaneConfig) {
    let id = &shared.id;
    if tracing::enabled!(tracing::Level::DEBUG) {
        // A getsockopt per connection, only worth it when someone reads it.
        let original = original_dst(&client);
        // No field when the socket has no NAT destination to tell.
        tracing::debug!(listener = %id, client = %peer, original_dst = original.map(tracing::field::display), "connection accepted");
    }

    let plan = shared.plan(peer.ip(), config.max_attempts);
    if plan.is_empty() {
        tracing::debug!(listener = %id, client = %peer, "no endpoints; resetting client");
        shared.rejected();
        reset(client);
        return;
    }
    let Some((endpoint, upstream)) = dial(&plan, shared, config).await else {
        let tried = crate::log_fields::texts(&plan);
        tracing::warn!(listener = %id, client = %peer, tried = crate::log_fields::list(&tried), "no endpoint answered; resetting client");
        shared.balancer().failed(peer.ip());
        shared.rejected();
        reset(client);
        return;
    };
    {
        let mut balancer = shared.balancer();
        balancer.succeeded(endpoint);
        balancer.established(peer.ip(), endpoint, Instant::now());
    }
    shared.sent_to(endpoint);
    tracing::debug!(listener = %id, client = %peer, %endpoint, "connection proxied");
    #[cfg(test)]
    shared.record_sockets(&client, &upstream);
    let outcome = relay(client, upstream, shared, config.half_close_timeout).await;
    tracing::debug!(listener = %id, client = %peer, %endpoint, %outcome, "connection ended");
}

/// Tries the planned endpoints in order, each within its attempt's timeout; each failure
/// counts towards that endpoint's ejection.
async fn dial(
    plan: &[SocketAddr],
    shared: &Shared,
    config: &DataPlaneConfig,
) -> Option<(SocketAddr, TcpStream)> {
    for (attempt, &endpoint) in plan.iter().enumerate() {
        let limit = config.dial_timeout(attempt);
        let error = match timeout(limit, connect(endpoint, config.keepalive.as_ref())).await {
            Ok(Ok(stream)) => return Some((endpoint, stream)),
            Ok(Err(e)) => {
                shared.dial_failed(endpoint, &e);
                e.to_string()
            }
            Err(_) => {
                let error = format!("no answer within {limit:?}");
                shared.dial_failed_with(endpoint, &error);
                error
            }
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
/// once, so Nagle's algorithm would only add latency to small writes. With `keepalive`, an
/// endpoint that vanishes mid-stream (no FIN, no RST) ends the connection in bounded time.
async fn connect(endpoint: SocketAddr, keepalive: Option<&Keepalive>) -> io::Result<TcpStream> {
    let socket = Socket::new(
        Domain::for_address(endpoint),
        Type::STREAM.nonblocking(),
        Some(SockProtocol::TCP),
    )?;
    socket.set_tcp_nodelay(true)?;
    if let Some(keepalive) = keepalive {
        set_keepalive(socket2::SockRef::from(&socket), keepalive)?;
    }
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
