//! Socket options the data plane needs beyond what tokio offers.
//!
//! This is the one place that reaches below tokio's socket API. It needs no `unsafe`:
//! socket2 wraps the raw `getsockopt(SOL_IP, SO_ORIGINAL_DST)` and `setsockopt(SO_LINGER)`
//! calls, and borrows the file descriptor without taking it over.

use socket2::SockRef;
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
