//! UDP listeners: a flow per client address, each with its own connected upstream socket.
//!
//! Replies leave from the listener's socket, so the client sees them come from the address
//! it sent to (after the kernel un-NATs them: the portal IP and service port).
//!
//! The table is bounded three ways, since each flow holds a socket: per client IP address
//! (its oldest flow goes), per listener (the least recently used flow goes), and by the data
//! plane's file descriptor budget (this listener's least recently used flow goes, or the
//! datagram is dropped when the listener has none).

use super::limits::{is_resource_shortage, Budget, Episode, EpisodeLog};
use super::{lock, ActiveGuard, DataPlaneConfig, Shared, TaskCtx};
use hashlink::{LinkedHashMap, LinkedHashSet};
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

type FlowTable = Arc<Mutex<Table>>;

/// A listener's flows by client address.
#[derive(Default)]
struct Table {
    /// Least recently used first: a client's datagram moves its flow to the back.
    flows: LinkedHashMap<SocketAddr, Arc<Flow>>,
    /// Each client IP address's flows, oldest first.
    clients: HashMap<IpAddr, LinkedHashSet<SocketAddr>>,
}

impl Table {
    /// The client's flow, marked as the most recently used.
    fn used(&mut self, client: &SocketAddr) -> Option<&Arc<Flow>> {
        self.flows.to_back(client).map(|flow| &*flow)
    }

    fn insert(&mut self, flow: Arc<Flow>) {
        self.clients
            .entry(flow.client.ip())
            .or_default()
            .insert(flow.client);
        if let Some(old) = self.flows.insert(flow.client, flow) {
            old.retired.notify_one();
        }
    }

    /// Takes the client's flow out of the table and tells its reply task to end.
    fn remove(&mut self, client: &SocketAddr) -> Option<Arc<Flow>> {
        let flow = self.flows.remove(client)?;
        if let Some(ports) = self.clients.get_mut(&client.ip()) {
            ports.remove(client);
            if ports.is_empty() {
                self.clients.remove(&client.ip());
            }
        }
        flow.retired.notify_one();
        Some(flow)
    }

    /// Removes `flow` unless a newer flow of the same client has replaced it.
    fn remove_flow(&mut self, flow: &Arc<Flow>) {
        if self
            .flows
            .get(&flow.client)
            .is_some_and(|f| Arc::ptr_eq(f, flow))
        {
            self.remove(&flow.client);
        }
    }

    /// Makes room for one more flow of `client`: evicts its oldest flows past
    /// `per_client - 1`, then the least recently used past `max - 1`. Returns how many
    /// went.
    fn make_room(&mut self, client: SocketAddr, max: usize, per_client: usize) -> usize {
        let mut evicted = 0;
        while let Some(ports) = self.clients.get(&client.ip()) {
            if ports.len() < per_client.max(1) {
                break;
            }
            let Some(&oldest) = ports.front() else { break };
            self.remove(&oldest);
            evicted += 1;
        }
        while self.flows.len() >= max.max(1) && self.evict_lru() {
            evicted += 1;
        }
        evicted
    }

    /// Evicts the least recently used flow; `false` when there is none.
    fn evict_lru(&mut self) -> bool {
        let Some((&client, _)) = self.flows.front() else {
            return false;
        };
        self.remove(&client);
        true
    }

    fn clear(&mut self) {
        for (_, flow) in self.flows.drain() {
            flow.retired.notify_one();
        }
        self.clients.clear();
    }
}

/// The descriptor of a flow's upstream socket, counted in the budget while the flow lives.
struct FdSlot(Arc<Budget>);

impl Drop for FdSlot {
    fn drop(&mut self) {
        self.0.release_fds(1);
    }
}

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
    _fd: FdSlot,
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

/// How many sockets [`bind`] opens on `addr`.
pub(super) fn socket_count(addr: SocketAddr) -> usize {
    if addr.ip() == IpAddr::V4(Ipv4Addr::UNSPECIFIED) {
        2
    } else {
        1
    }
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
    let shortage = Mutex::new(Episode::default());
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
                    budget: &ctx.budget,
                    socket,
                    flows: &flows,
                    shortage: &shortage,
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
    budget: &'a Arc<Budget>,
    socket: &'a Arc<UdpSocket>,
    flows: &'a FlowTable,
    /// Flows refused for want of descriptors: one log line per run of them.
    shortage: &'a Mutex<Episode>,
}

impl Listener<'_> {
    /// Sends one client datagram upstream on the client's flow, creating the flow if needed.
    async fn forward(&self, datagram: &[u8], client: SocketAddr, tasks: &mut JoinSet<()>) {
        let existing = {
            let mut table = lock(self.flows);
            match table.used(&client) {
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
                    table.remove(&client);
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
            self.shared.dial_failed(flow.endpoint, &e);
            tracing::warn!(listener = %self.shared.id, %client, endpoint = %flow.endpoint, error = %e, "send to endpoint failed; flow dropped");
            self.shared.balancer().failed(client.ip());
            remove(self.flows, &flow);
        }
    }

    async fn new_flow(&self, client: SocketAddr, tasks: &mut JoinSet<()>) -> Option<Arc<Flow>> {
        let shared = self.shared;
        let plan = shared.plan(client.ip(), self.config.max_attempts);
        if plan.is_empty() {
            tracing::debug!(listener = %shared.id, %client, "no endpoints; datagram dropped");
            shared.rejected();
            return None;
        }
        let Some(fd) = self.take_fd(client) else {
            shared.rejected();
            return None;
        };
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
                    shared.dial_failed(endpoint, &e);
                    // Out of descriptors, every new flow fails alike: one line per run.
                    if !is_resource_shortage(&e) || lock(self.shortage).failed().is_some() {
                        tracing::warn!(listener = %shared.id, %endpoint, error = %e, "cannot open upstream socket");
                    }
                }
            }
        }
        let Some((endpoint, upstream)) = upstream else {
            shared.balancer().failed(client.ip());
            shared.rejected();
            return None;
        };
        if let Some((failures, lasted)) = lock(self.shortage).ended() {
            tracing::warn!(listener = %shared.id, failures, lasted_ms = crate::log_fields::millis(lasted), "new flows served again");
        }
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
            _fd: fd,
        });
        lock(self.flows).insert(flow.clone());
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

impl Listener<'_> {
    /// Makes room in the table for a new flow of `client` and takes its descriptor from
    /// the budget; `None` when the data plane holds all it may and this listener has no
    /// flow to give up.
    fn take_fd(&self, client: SocketAddr) -> Option<FdSlot> {
        let mut table = lock(self.flows);
        let evicted = table.make_room(
            client,
            self.config.udp_max_flows,
            self.config.udp_max_flows_per_client,
        );
        if evicted > 0 {
            tracing::debug!(listener = %self.shared.id, %client, evicted, "flow table full; oldest flows evicted");
        }
        if !self.budget.try_fds(1) {
            if !table.evict_lru() {
                drop(table);
                let (held, may) = self.budget.fds();
                match lock(self.shortage).failed() {
                    Some(EpisodeLog::Started) => {
                        tracing::warn!(listener = %self.shared.id, %client, fds_held = held, fds_budget = may, "no file descriptor for a new flow; datagrams dropped");
                    }
                    Some(EpisodeLog::Continues { failures, elapsed }) => {
                        tracing::warn!(listener = %self.shared.id, failures, elapsed_ms = crate::log_fields::millis(elapsed), "still no file descriptor for new flows");
                    }
                    None => {}
                }
                return None;
            }
            // The evicted flow's socket closes as soon as its reply task sees it retired.
            self.budget.force_fds(1);
        }
        Some(FdSlot(self.budget.clone()))
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
    // The first reply proves the endpoint alive; later ones need not take the lock.
    let mut answered = false;
    loop {
        let deadline = flow.last() + idle;
        tokio::select! {
            _ = flow.retired.notified() => return,
            received = flow.upstream.recv(&mut buf) => match received {
                Ok(len) => {
                    flow.touch();
                    if !std::mem::replace(&mut answered, true) {
                        shared.balancer().succeeded(flow.endpoint);
                    }
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
                    shared.dial_failed(flow.endpoint, &e);
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
    table.remove_flow(flow);
    true
}

/// Takes `flow` out of the table (unless a newer flow of the same client replaced it) and
/// ends its reply task.
fn remove(flows: &FlowTable, flow: &Arc<Flow>) {
    lock(flows).remove_flow(flow);
    flow.retired.notify_one();
}
