//! Socket options the data plane needs beyond what tokio offers.
//!
//! This is the one place that reaches below tokio's socket API. It needs no `unsafe`:
//! socket2 wraps the raw `getsockopt(SOL_IP, SO_ORIGINAL_DST)`, `setsockopt(SO_LINGER)` and
//! keepalive calls, and borrows the file descriptor without taking it over.

use socket2::{SockRef, TcpKeepalive};
use std::io;
use std::net::SocketAddrV4;
use std::time::Duration;
use tokio::net::TcpStream;

/// The destination the client dialed before the kernel's REDIRECT/DNAT rewrote it to this
/// listener (the portal IP and service port), from conntrack. `None` when the connection
/// was not NATed or conntrack does not know it.
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddrV4> {
    SockRef::from(stream)
        .original_dst_v4()
        .ok()?
        .as_socket_ipv4()
}

/// Closes `stream` with an RST rather than a FIN, so the peer learns at once that the
/// connection was refused or aborted instead of waiting on a half-open connection.
pub(super) fn reset(stream: TcpStream) {
    // A zero linger makes close() send RST and discard unsent data; it never blocks.
    if let Err(e) = SockRef::from(&stream).set_linger(Some(Duration::ZERO)) {
        tracing::debug!(error = %e, "cannot set SO_LINGER 0; closing with FIN");
    }
    drop(stream);
}

/// TCP keepalive and user timeout of proxied connections, so that a peer gone without a
/// word (its link down, its host powered off: no FIN, no RST) ends the connection in
/// bounded time instead of leaving the other side hanging for the kernel's ~15 minutes of
/// retransmissions, or forever on an idle connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Idle time before the first probe (`TCP_KEEPIDLE`); whole seconds, at least 1.
    pub idle: Duration,
    /// Between unanswered probes (`TCP_KEEPINTVL`); whole seconds, at least 1.
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped (`TCP_KEEPCNT`).
    pub count: u32,
    /// Sent data left unacknowledged this long drops the connection (`TCP_USER_TIMEOUT`,
    /// milliseconds; RFC 5482). Once set, Linux also uses it instead of `count` to end a
    /// keepalive that gets no answer (tcp(7)), so it should be `idle + interval × count`.
    pub user_timeout: Duration,
}

impl Default for Keepalive {
    /// Idle 60 s, 10 s between probes, 3 probes, user timeout 90 s: a dead peer is noticed
    /// within a minute and a half, at the cost of one probe a minute on an idle connection.
    fn default() -> Self {
        Keepalive {
            idle: Duration::from_secs(60),
            interval: Duration::from_secs(10),
            count: 3,
            user_timeout: Duration::from_secs(90),
        }
    }
}

/// Sets `SO_KEEPALIVE`, `TCP_KEEPIDLE`, `TCP_KEEPINTVL`, `TCP_KEEPCNT` and
/// `TCP_USER_TIMEOUT` on `socket`. On a listening socket they are inherited by every
/// accepted socket (Linux copies them in `inet_csk_clone_lock`).
pub(super) fn set_keepalive(socket: SockRef<'_>, keepalive: &Keepalive) -> io::Result<()> {
    let params = TcpKeepalive::new()
        .with_time(keepalive.idle.max(Duration::from_secs(1)))
        .with_interval(keepalive.interval.max(Duration::from_secs(1)))
        .with_retries(keepalive.count.max(1));
    socket.set_tcp_keepalive(&params)?;
    socket.set_tcp_user_timeout(Some(keepalive.user_timeout).filter(|t| !t.is_zero()))
}

/// The keepalive settings as the kernel holds them, for tests: `None` when `SO_KEEPALIVE`
/// is off.
#[cfg(test)]
pub(super) fn keepalive_of(socket: SockRef<'_>) -> io::Result<Option<Keepalive>> {
    if !socket.keepalive()? {
        return Ok(None);
    }
    Ok(Some(Keepalive {
        idle: socket.tcp_keepalive_time()?,
        interval: socket.tcp_keepalive_interval()?,
        count: socket.tcp_keepalive_retries()?,
        user_timeout: socket.tcp_user_timeout()?.unwrap_or_default(),
    }))
}
