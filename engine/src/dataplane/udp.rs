//! UDP listeners: a flow per client address, each with its own connected upstream socket.
//!
//! Replies leave from the listener's socket, so the client sees them come from the address
//! it sent to (after the kernel un-NATs them: the portal IP and service port).

use super::{lock, ActiveGuard, DataPlaneConfig, Shared, TaskCtx};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, Instant};

/// Largest UDP payload; a smaller buffer would silently truncate datagrams.
const MAX_DATAGRAM: usize = 65_535;

/// Pause after a failed receive, so a persistent socket error does not spin a core.
const RECV_BACKOFF: Duration = Duration::from_millis(20);

type FlowTable = Arc<Mutex<HashMap<SocketAddr, Arc<Flow>>>>;

struct Flow {
    client: SocketAddr,
    endpoint: SocketAddr,
    /// Connected to `endpoint`, so only its replies arrive here and ICMP errors surface.
    upstream: UdpSocket,
    last: Mutex<Instant>,
    /// Tells the reply task a flow taken out of the table early is over; a stored permit,
    /// so the signal is not lost if the task is busy sending.
    retired: Notify,
    _active: ActiveGuard,
}

impl Flow {
    fn touch(&self) {
        *lock(&self.last) = Instant::now();
    }

    fn last(&self) -> Instant {
        *lock(&self.last)
    }
}

/// Receives until `stop` fires or the data plane shuts down; then ends every flow, since
/// their replies need the listener socket that is going away.
/// Binds a listener's UDP sockets. On the unspecified address a second socket on 127.0.0.1
/// with the same port takes host traffic DNAT'd to loopback: a reply must leave from the
/// address the datagram was sent to, or conntrack cannot undo the DNAT for the client.
pub(super) fn bind(addr: SocketAddr) -> io::Result<Vec<UdpSocket>> {
    let main = bind_one(addr)?;
    let port = main.local_addr()?.port();
    let mut sockets = vec![main];
    if addr.ip() == std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED) {
        sockets.push(bind_one(SocketAddr::new(
            std::net::Ipv4Addr::LOCALHOST.into(),
            port,
        ))?);
    }
    Ok(sockets)
}

/// SO_REUSEADDR lets the wildcard and the loopback socket share the port; the kernel hands
/// each datagram to the most specific one.
fn bind_one(addr: SocketAddr) -> io::Result<UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// Receives until `stop` fires or the data plane shuts down; then ends every flow, since
/// their replies need the listener sockets that are going away.
pub(super) async fn serve(
    sockets: Vec<UdpSocket>,
    shared: Arc<Shared>,
    mut ctx: TaskCtx,
    mut stop: oneshot::Receiver<()>,
) {
    let mut sockets: Vec<Arc<UdpSocket>> = sockets.into_iter().map(Arc::new).collect();
    let primary = sockets.remove(0);
    let loopback = sockets.pop();
    let flows: FlowTable = Arc::default();
    let mut tasks = JoinSet::new();
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut loop_buf = vec![0u8; MAX_DATAGRAM];
    loop {
        // Replies go out through the socket the client's datagram came in on.
        let (socket, received, data) = tokio::select! {
            _ = &mut stop => break,
            _ = ctx.stopped() => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            received = primary.recv_from(&mut buf) => (&primary, received, &buf),
            received = async { loopback.as_ref().expect("guarded").recv_from(&mut loop_buf).await }, if loopback.is_some() => {
                (loopback.as_ref().expect("guarded"), received, &loop_buf)
            }
        };
        match received {
            Ok((len, client)) => {
                let listener = Listener {
                    shared: &shared,
                    config: &ctx.config,
                    socket,
                    flows: &flows,
                };
                listener.forward(&data[..len], client, &mut tasks).await;
            }
            Err(e) => {
                tracing::warn!(listener = %shared.id, error = %e, "receive failed");
                sleep(RECV_BACKOFF).await;
            }
        }
    }
    tasks.shutdown().await;
    lock(&flows).clear();
}

struct Listener<'a> {
    shared: &'a Arc<Shared>,
    config: &'a DataPlaneConfig,
    socket: &'a Arc<UdpSocket>,
    flows: &'a FlowTable,
}

impl Listener<'_> {
    /// Sends one client datagram upstream on the client's flow, creating the flow if needed.
    async fn forward(&self, datagram: &[u8], client: SocketAddr, tasks: &mut JoinSet<()>) {
        let existing = {
            let mut table = lock(self.flows);
            match table.get(&client) {
                Some(flow) if self.shared.balancer().contains(flow.endpoint) => {
                    // Touched under the table lock, so the flow cannot expire between here
                    // and the send below.
                    flow.touch();
                    Some(flow.clone())
                }
                Some(flow) => {
                    // Its endpoint was removed: re-balance rather than black-hole the client
                    // (the stale-flow trouble of the old userspace proxy).
                    tracing::debug!(listener = %self.shared.id, %client, endpoint = %flow.endpoint, "endpoint removed; flow re-balanced");
                    if let Some(flow) = table.remove(&client) {
                        flow.retired.notify_one();
                    }
                    None
                }
                None => None,
            }
        };
        let flow = match existing {
            Some(flow) => flow,
            None => match self.new_flow(client, tasks).await {
                Some(flow) => flow,
                None => return,
            },
        };
        let sent = flow.upstream.send(datagram).await;
        if let Ok(n) = sent {
            let bytes = &self.shared.bytes.to_endpoint;
            bytes.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        }
        if let Err(e) = sent {
            self.shared.failed();
            tracing::warn!(listener = %self.shared.id, %client, endpoint = %flow.endpoint, error = %e, "send to endpoint failed; flow dropped");
            self.shared.balancer().failed(client.ip());
            remove(self.flows, &flow);
        }
    }

    async fn new_flow(&self, client: SocketAddr, tasks: &mut JoinSet<()>) -> Option<Arc<Flow>> {
        let shared = self.shared;
        let plan = shared
            .balancer()
            .plan(client.ip(), Instant::now(), self.config.max_attempts);
        if plan.is_empty() {
            tracing::debug!(listener = %shared.id, %client, "no endpoints; datagram dropped");
            shared.rejected();
            return None;
        }
        // Only local errors (no route, no ports) fail here: UDP has no handshake to refuse.
        let mut upstream = None;
        for &endpoint in &plan {
            match connect(endpoint).await {
                Ok(socket) => {
                    upstream = Some((endpoint, socket));
                    break;
                }
                Err(e) => {
                    shared.failed();
                    tracing::warn!(listener = %shared.id, %endpoint, error = %e, "cannot open upstream socket");
                }
            }
        }
        let Some((endpoint, upstream)) = upstream else {
            shared.balancer().failed(client.ip());
            shared.rejected();
            return None;
        };
        shared
            .balancer()
            .established(client.ip(), endpoint, Instant::now());
        shared.sent_to(endpoint);
        tracing::debug!(listener = %shared.id, %client, %endpoint, "flow created");
        let flow = Arc::new(Flow {
            client,
            endpoint,
            upstream,
            last: Mutex::new(Instant::now()),
            retired: Notify::new(),
            _active: shared.activate(),
        });
        lock(self.flows).insert(client, flow.clone());
        tasks.spawn(replies(
            flow.clone(),
            self.socket.clone(),
            self.flows.clone(),
            shared.clone(),
            self.config.udp_idle_timeout,
        ));
        Some(flow)
    }
}

async fn connect(endpoint: SocketAddr) -> io::Result<UdpSocket> {
    let any = match endpoint {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    };
    let socket = UdpSocket::bind(SocketAddr::new(any, 0)).await?;
    socket.connect(endpoint).await?;
    Ok(socket)
}

/// Relays the endpoint's replies to the client until the flow is idle too long or the
/// endpoint reports an error (an ICMP port unreachable arrives as a refused receive).
async fn replies(
    flow: Arc<Flow>,
    socket: Arc<UdpSocket>,
    flows: FlowTable,
    shared: Arc<Shared>,
    idle: Duration,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let deadline = flow.last() + idle;
        tokio::select! {
            _ = flow.retired.notified() => return,
            received = flow.upstream.recv(&mut buf) => match received {
                Ok(len) => {
                    flow.touch();
                    match socket.send_to(&buf[..len], flow.client).await {
                        Ok(n) => {
                            let bytes = &shared.bytes.to_client;
                            bytes.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                        }
                        Err(e) => {
                            tracing::debug!(listener = %shared.id, client = %flow.client, error = %e, "reply to client failed");
                        }
                    }
                }
                Err(e) => {
                    shared.failed();
                    tracing::warn!(listener = %shared.id, client = %flow.client, endpoint = %flow.endpoint, error = %e, "endpoint failed; flow dropped");
                    shared.balancer().failed(flow.client.ip());
                    remove(&flows, &flow);
                    return;
                }
            },
            _ = sleep_until(deadline) => {
                if expire(&flows, &flow, idle) {
                    tracing::debug!(listener = %shared.id, client = %flow.client, endpoint = %flow.endpoint, "flow expired");
                    return;
                }
            }
        }
    }
}

/// Removes `flow` if it has been idle for `idle`; decided under the table lock, where the
/// receive side touches flows, so a datagram is never sent on a flow already expired.
fn expire(flows: &FlowTable, flow: &Arc<Flow>, idle: Duration) -> bool {
    let mut table = lock(flows);
    if Instant::now() < flow.last() + idle {
        return false;
    }
    if table
        .get(&flow.client)
        .is_some_and(|f| Arc::ptr_eq(f, flow))
    {
        table.remove(&flow.client);
    }
    true
}

/// Takes `flow` out of the table (unless a newer flow of the same client replaced it) and
/// ends its reply task.
fn remove(flows: &FlowTable, flow: &Arc<Flow>) {
    let mut table = lock(flows);
    if table
        .get(&flow.client)
        .is_some_and(|f| Arc::ptr_eq(f, flow))
    {
        table.remove(&flow.client);
    }
    flow.retired.notify_one();
}
