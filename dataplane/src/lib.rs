//! The userspace data plane: one listener per portal proxy port, forwarding to endpoints.
//!
//! The kernel's REDIRECT/DNAT rules bring a portal's traffic to a listener here; each
//! listener balances new TCP connections and UDP client flows over the service's endpoints
//! (round robin, optional client-IP affinity, retry on another endpoint when one refuses or
//! stays silent), and takes an endpoint whose dials keep failing out of the rotation for a
//! while (passive outlier detection). The reconciler drives it only through [`DataPlane`]'s
//! open / update / close.
//!
//! TCP runs on its own worker threads, one single-threaded runtime each; every worker waits
//! on each listening socket in its own epoll set, and a connection lives and dies on the
//! worker that accepted it. UDP runs on the caller's runtime.
//!
//! A crate of its own, below the engine: sockets and tokio only, no planner and no loader
//! (its [`Protocol`] is its own), so the proxy builds and is tested apart from the control
//! plane.

#![forbid(unsafe_code)]

mod activity;
mod balancer;
mod copy;
mod limits;
pub mod log_fields;
mod outlier;
mod protocol;
mod sockopt;
mod splice;
mod tcp;
mod udp;

#[cfg(test)]
mod tests;

pub use limits::{
    is_resource_shortage, nofile_soft_limit, open_fds, raise_nofile_limit, Backoff, Episode,
    EpisodeLog, NofileLimit,
};
pub use outlier::OutlierDetection;
pub use protocol::Protocol;
pub use sockopt::{original_dst, Keepalive};

use balancer::Balancer;
use limits::Budget;
use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Tuning of the data plane; the defaults are the 2014 userspace proxy's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataPlaneConfig {
    /// Address the listeners bind; `0.0.0.0` because REDIRECT from PREROUTING rewrites the
    /// destination to the address of the interface the packet came in on.
    pub listen_addr: IpAddr,
    /// Timeout of dial attempt `i`; attempts past the end reuse the last entry.
    pub dial_timeouts: Vec<Duration>,
    /// Most endpoints tried for one connection (also bounded by the endpoint count).
    pub max_attempts: usize,
    /// One direction finished and the other silent this long: the connection is reaped.
    pub half_close_timeout: Duration,
    /// A UDP client flow with no datagram either way this long is removed.
    pub udp_idle_timeout: Duration,
    /// Threads serving TCP, each a single-threaded runtime accepting on every listener; by
    /// default as many as the async runtime's workers (`TOKIO_WORKER_THREADS`, else one per
    /// CPU).
    pub tcp_workers: usize,
    /// File descriptors the data plane leaves free for the control path: spawning
    /// `iptables-restore` (three pipes and an exec-status pipe), the control socket and its
    /// clients, the watcher, the files read, the pool of splice pipes (up to 32). New
    /// connections, UDP flows and listeners wait or fail once the process would be left with
    /// fewer than this many under its soft `RLIMIT_NOFILE`.
    pub fd_reserve: usize,
    /// Most proxied TCP connections open at once over all listeners (HAProxy's `maxconn`);
    /// past it new connections wait in the listen backlog. `None`: as many as the file
    /// descriptors allow.
    pub max_connections: Option<usize>,
    /// Most UDP flows of one listener; a new flow past it evicts the least recently used
    /// (by client datagrams). Each flow holds a socket and a reply task.
    pub udp_max_flows: usize,
    /// Most UDP flows of one client IP address on one listener; a new flow past it evicts
    /// that client's oldest, so one client spraying source ports cannot crowd out others.
    pub udp_max_flows_per_client: usize,
    /// TCP keepalive and user timeout on the client and endpoint sockets of proxied
    /// connections; `None` leaves the kernel's defaults (no keepalive).
    pub keepalive: Option<Keepalive>,
    /// When an endpoint whose dials keep failing leaves the rotation, and for how long.
    pub outlier: OutlierDetection,
}

impl Default for DataPlaneConfig {
    fn default() -> Self {
        DataPlaneConfig {
            listen_addr: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            dial_timeouts: [250, 500, 1000, 2000]
                .into_iter()
                .map(Duration::from_millis)
                .collect(),
            max_attempts: 4,
            half_close_timeout: Duration::from_secs(60),
            udp_idle_timeout: Duration::from_secs(30),
            tcp_workers: default_workers(),
            fd_reserve: DEFAULT_FD_RESERVE,
            max_connections: None,
            udp_max_flows: DEFAULT_UDP_MAX_FLOWS,
            udp_max_flows_per_client: DEFAULT_UDP_MAX_FLOWS_PER_CLIENT,
            keepalive: Some(Keepalive::default()),
            outlier: OutlierDetection::default(),
        }
    }
}

/// Room for the control path's peak (a spawned tool: 8; the control socket and a few
/// clients; the watcher; a file), the 32 pooled splice pipe ends and up to 32 connections
/// accepted in a race for the last slot, with room to spare; an eighth of systemd's default
/// soft limit of 1,024.
pub const DEFAULT_FD_RESERVE: usize = 128;
/// A UDP flow holds a socket and a 64 KiB reply buffer: 1,024 flows are 64 MiB at most per
/// listener, far above what request/response clients keep open within the idle timeout.
pub const DEFAULT_UDP_MAX_FLOWS: usize = 1024;
/// A resolver that sends each query from a fresh source port (as DNS clients do) opens a
/// flow per query; its oldest flows are the answered ones, so evicting them costs nothing,
/// while one client can take at most a quarter of a listener's flows.
pub const DEFAULT_UDP_MAX_FLOWS_PER_CLIENT: usize = 256;

fn default_workers() -> usize {
    std::env::var("TOKIO_WORKER_THREADS")
        .ok()
        .and_then(|n| n.trim().parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

impl DataPlaneConfig {
    /// Timeout of the zero-based dial `attempt`; never zero, so a misconfigured empty list
    /// still lets a dial succeed.
    fn dial_timeout(&self, attempt: usize) -> Duration {
        self.dial_timeouts
            .get(attempt)
            .or(self.dial_timeouts.last())
            .copied()
            .unwrap_or(Duration::from_secs(1))
    }
}

/// Where a listener forwards to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backends {
    pub endpoints: Vec<SocketAddr>,
    /// Client-IP affinity: a client stays on its endpoint until this long has passed since
    /// its last connection (or flow).
    pub affinity: Option<Duration>,
}

/// What to open: one proxy port of one service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerSpec {
    pub protocol: Protocol,
    /// 0 binds an ephemeral port (tests); [`DataPlane::open`] returns the bound one.
    pub port: u16,
    /// The service port it serves, `ns/svc:port`; only for logs, errors and status.
    pub name: String,
    pub backends: Backends,
}

/// Names a listener in errors and logs: `tcp/30001 (default/web:http)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerId {
    pub protocol: Protocol,
    pub port: u16,
    /// Unknown when the caller names a listener that is not open.
    pub name: Option<String>,
}

impl fmt::Display for ListenerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.protocol, self.port)?;
        if let Some(name) = &self.name {
            write!(f, " ({name})")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DataPlaneError {
    #[error("listener `{0}` is already open")]
    AlreadyOpen(ListenerId),
    #[error("listener `{0}` cannot bind: the port is in use")]
    PortInUse(ListenerId, #[source] io::Error),
    #[error("listener `{0}` cannot bind")]
    Bind(ListenerId, #[source] io::Error),
    #[error("listener `{0}` is not open")]
    NotOpen(ListenerId),
    #[error("listener `{0}` cannot open: the data plane is shut down")]
    ShutDown(ListenerId),
    #[error(
        "listener `{id}` cannot open: it needs {needs} file descriptor(s) and listeners \
         hold {held} of the {budget} they may (half of the data plane's share of the soft \
         RLIMIT_NOFILE of {limit}, after {reserve} kept for the control path and those held \
         at start; the other half is for connections); raise the limit (systemd: \
         LimitNOFILE=) or serve fewer ports"
    )]
    NoFileDescriptors {
        id: ListenerId,
        needs: usize,
        held: usize,
        budget: usize,
        limit: usize,
        reserve: usize,
    },
}

/// A snapshot of one listener, for `portald status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerStatus {
    pub protocol: Protocol,
    pub port: u16,
    pub name: String,
    pub endpoints: Vec<SocketAddr>,
    pub affinity: Option<Duration>,
    /// Open TCP connections, or live UDP flows.
    pub active: usize,
    /// TCP connections accepted, or UDP flows created.
    pub accepted: u64,
    /// Connections (flows) handed to each endpoint, including endpoints since removed.
    pub per_endpoint: BTreeMap<SocketAddr, u64>,
    /// Dial attempts that failed (refused, timed out) and UDP upstream errors.
    pub failures: u64,
    /// Client connections reset, or datagrams dropped, because no endpoint could take them.
    pub rejected: u64,
    /// Payload bytes written to endpoints (TCP stream bytes, UDP datagram payloads).
    pub bytes_to_endpoints: u64,
    /// Payload bytes written back to clients.
    pub bytes_to_clients: u64,
}

/// Outlier detection's view of one endpoint of a listener that has failed a dial since it
/// joined the listener's endpoint set, for `portald status` and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointHealth {
    pub endpoint: SocketAddr,
    /// Out of the rotation until `ejected_until`.
    pub ejected: bool,
    /// When it entered its state: ejected, or back in the rotation (its first failure, if
    /// never ejected).
    pub since: SystemTime,
    pub ejected_until: Option<SystemTime>,
    /// Failed dials since its last successful one.
    pub consecutive_failures: u32,
    /// The last dial error, as the kernel put it (`Connection refused (os error 111)`).
    pub last_error: String,
    /// How long its next ejection would last (its current one's, while ejected).
    pub next_ejection: Duration,
    /// Times ejected, and times back in the rotation, while in the endpoint set.
    pub ejections: u64,
    pub returns: u64,
    /// Failing past the threshold but kept in: as many endpoints as may be are out.
    pub held: bool,
}

/// Outlier detection's view of one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerHealth {
    pub protocol: Protocol,
    pub port: u16,
    /// The service port, `ns/svc:port`.
    pub name: String,
    /// Ejections over the listener's life, endpoints since removed included.
    pub ejections: u64,
    /// Consecutive failed dials that eject an endpoint (0: detection off).
    pub threshold: u32,
    /// Endpoints with a record, by address.
    pub endpoints: Vec<EndpointHealth>,
}

/// Counters and balancing state one listener shares with its connection tasks; connections
/// keep it alive after the listener is closed so their counts stay consistent.
struct Shared {
    id: ListenerId,
    balancer: Mutex<Balancer>,
    active: AtomicUsize,
    accepted: AtomicU64,
    failures: AtomicU64,
    rejected: AtomicU64,
    per_endpoint: Mutex<BTreeMap<SocketAddr, u64>>,
    /// Bytes forwarded, client → endpoint then endpoint → client; added once per write
    /// (relaxed, no lock), so counting costs one atomic add per burst, not per byte.
    bytes: Bytes,
    /// Copy buffers and splice pipes its connections hold right now: one per direction with
    /// bytes in flight, none for an idle connection.
    buffers: AtomicUsize,
    /// TCP_NODELAY as read back from each proxied connection's sockets, client side then
    /// endpoint side, when the copying began.
    #[cfg(test)]
    nodelay: Mutex<Vec<(bool, bool)>>,
    /// Keepalive settings read back the same way.
    #[cfg(test)]
    keepalive: Mutex<Vec<(Option<Keepalive>, Option<Keepalive>)>>,
}

impl Shared {
    fn new(id: ListenerId, backends: &Backends, outlier: OutlierDetection) -> Self {
        Shared {
            id,
            balancer: Mutex::new(Balancer::with_outlier_detection(backends, outlier)),
            active: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            per_endpoint: Mutex::new(BTreeMap::new()),
            bytes: Bytes::default(),
            buffers: AtomicUsize::new(0),
            #[cfg(test)]
            nodelay: Mutex::new(Vec::new()),
            #[cfg(test)]
            keepalive: Mutex::new(Vec::new()),
        }
    }

    fn balancer(&self) -> MutexGuard<'_, Balancer> {
        lock(&self.balancer)
    }

    /// The endpoints to try for a new connection (or flow) of `client`; see
    /// [`Balancer::plan`].
    fn plan(&self, client: IpAddr, max_attempts: usize) -> Vec<SocketAddr> {
        let (plan, events) = {
            let mut balancer = self.balancer();
            let plan = balancer.plan(client, Instant::now(), max_attempts);
            (plan, balancer.take_events())
        };
        self.log(events);
        plan
    }

    /// A dial to `endpoint` failed (refused, timed out, unreachable; an ICMP error on UDP):
    /// counts towards its ejection. A shortage of local resources is no fault of the
    /// endpoint's and is not counted.
    fn dial_failed(&self, endpoint: SocketAddr, error: &io::Error) {
        if limits::is_resource_shortage(error) {
            return;
        }
        self.dial_failed_with(endpoint, &error.to_string());
    }

    fn dial_failed_with(&self, endpoint: SocketAddr, error: &str) {
        let events = {
            let mut balancer = self.balancer();
            balancer.dial_failed(endpoint, error, Instant::now());
            balancer.take_events()
        };
        self.log(events);
    }

    /// Logs each ejection and each return once, with the balancer's lock let go.
    fn log(&self, events: Vec<outlier::Event>) {
        for event in events {
            match event {
                outlier::Event::Ejected {
                    endpoint,
                    consecutive,
                    nth,
                    duration,
                    error,
                } => tracing::warn!(
                    listener = %self.id,
                    %endpoint,
                    consecutive_failures = consecutive,
                    ejection_in_a_row = nth,
                    ejection_s = duration.as_secs_f64(),
                    %error,
                    "endpoint ejected: consecutive dials failed"
                ),
                outlier::Event::Returned { endpoint, after } => tracing::info!(
                    listener = %self.id,
                    %endpoint,
                    ejected_s = after.as_secs_f64(),
                    "endpoint back in rotation after its ejection"
                ),
                outlier::Event::Held {
                    endpoint,
                    consecutive,
                    ejected,
                    endpoints,
                } => tracing::warn!(
                    listener = %self.id,
                    %endpoint,
                    consecutive_failures = consecutive,
                    ejected,
                    endpoints,
                    "endpoint failing but not ejected: as many endpoints as may be are out"
                ),
            }
        }
    }

    /// Outlier detection's records, copied under the lock and dated outside it.
    fn health(&self) -> ListenerHealth {
        let now = Instant::now();
        let (records, ejections, config, events) = {
            let mut balancer = self.balancer();
            let (records, ejections) = balancer.outlier_records(now);
            let config = balancer.outlier_detection().clone();
            (records, ejections, config, balancer.take_events())
        };
        self.log(events);
        let wall = SystemTime::now();
        let date = |at: Instant| {
            if at <= now {
                wall - now.duration_since(at)
            } else {
                wall + at.duration_since(now)
            }
        };
        ListenerHealth {
            protocol: self.id.protocol,
            port: self.id.port,
            name: self.id.name.clone().unwrap_or_default(),
            ejections,
            threshold: config.consecutive_failures,
            endpoints: records
                .into_iter()
                .map(|(endpoint, record)| EndpointHealth {
                    endpoint,
                    ejected: record.ejected_until.is_some(),
                    since: date(record.since),
                    ejected_until: record.ejected_until.map(date),
                    consecutive_failures: record.consecutive,
                    next_ejection: config.ejection_time(if record.ejected_until.is_some() {
                        record.multiplier
                    } else {
                        record.multiplier + 1
                    }),
                    last_error: record.last_error,
                    ejections: record.ejections,
                    returns: record.returns,
                    held: record.held,
                })
                .collect(),
        }
    }

    fn sent_to(&self, endpoint: SocketAddr) {
        *lock(&self.per_endpoint).entry(endpoint).or_default() += 1;
    }

    fn failed(&self) {
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    fn rejected(&self) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one connection or flow as active for as long as the guard lives.
    fn activate(self: &Arc<Self>) -> ActiveGuard {
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(self.clone())
    }

    /// Test hook: reads the options back from the kernel, so a socket left without
    /// TCP_NODELAY shows as `false` whatever the code meant to set.
    #[cfg(test)]
    fn record_sockets(&self, client: &tokio::net::TcpStream, upstream: &tokio::net::TcpStream) {
        let read = |s: &tokio::net::TcpStream| s.nodelay().expect("getsockopt TCP_NODELAY");
        lock(&self.nodelay).push((read(client), read(upstream)));
        let keepalive = |s: &tokio::net::TcpStream| {
            sockopt::keepalive_of(socket2::SockRef::from(s)).expect("getsockopt keepalive")
        };
        lock(&self.keepalive).push((keepalive(client), keepalive(upstream)));
    }

    fn status(&self) -> ListenerStatus {
        let balancer = self.balancer();
        ListenerStatus {
            protocol: self.id.protocol,
            port: self.id.port,
            name: self.id.name.clone().unwrap_or_default(),
            endpoints: balancer.endpoints().to_vec(),
            affinity: balancer.affinity(),
            active: self.active.load(Ordering::Relaxed),
            accepted: self.accepted.load(Ordering::Relaxed),
            per_endpoint: lock(&self.per_endpoint).clone(),
            failures: self.failures.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
            bytes_to_endpoints: self.bytes.to_endpoint.load(Ordering::Relaxed),
            bytes_to_clients: self.bytes.to_client.load(Ordering::Relaxed),
        }
    }
}

/// Byte counters of one listener, one per direction.
#[derive(Default)]
struct Bytes {
    to_endpoint: AtomicU64,
    to_client: AtomicU64,
}

struct ActiveGuard(Arc<Shared>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What every listener task needs besides its listener: the config, the shutdown signal,
/// and a drain token whose drop tells [`DataPlane::shutdown`] the task is gone. TCP
/// connection tasks hold none of it: they end with their worker's runtime.
#[derive(Clone)]
struct TaskCtx {
    config: Arc<DataPlaneConfig>,
    budget: Arc<Budget>,
    stop_all: watch::Receiver<bool>,
    _drain: mpsc::Sender<()>,
}

impl TaskCtx {
    /// Resolves once [`DataPlane::shutdown`] has begun.
    async fn stopped(&mut self) {
        // An error means the data plane itself is gone, which is a stop too.
        let _ = self.stop_all.wait_for(|stop| *stop).await;
    }
}

struct Listener {
    shared: Arc<Shared>,
    /// Its sockets, counted in the budget until it closes.
    fds: usize,
    /// One accept task per socket: one per TCP worker, one for UDP.
    tasks: Vec<(oneshot::Sender<()>, JoinHandle<()>)>,
}

/// The threads that serve TCP: one single-threaded tokio runtime each. A connection stays
/// on the worker that accepted it, so its wake-ups never cross threads and each worker
/// polls its own epoll set. A worker ends when its stop is sent or dropped (shutdown, or
/// the data plane dropped): its runtime drops, and with it every connection task on it.
struct Workers {
    handles: Vec<tokio::runtime::Handle>,
    stops: Mutex<Vec<oneshot::Sender<()>>>,
}

impl Workers {
    /// `drain` is held by each worker until its runtime and tasks are gone.
    fn start(count: usize, drain: &mpsc::Sender<()>) -> Workers {
        let mut handles = Vec::new();
        let mut stops = Vec::new();
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("building a data-plane runtime");
            let (stop, stopped) = oneshot::channel::<()>();
            handles.push(runtime.handle().clone());
            let drain = drain.clone();
            std::thread::Builder::new()
                .name(format!("portald-dp-{index}"))
                .spawn(move || {
                    let _ = runtime.block_on(stopped);
                    drop(runtime);
                    drop(drain);
                })
                .expect("starting a data-plane thread");
            stops.push(stop);
        }
        Workers {
            handles,
            stops: Mutex::new(stops),
        }
    }

    /// Ends every worker; each lets go of its drain token once its connections are closed.
    fn stop(&self) {
        lock(&self.stops).clear();
    }
}

struct Inner {
    config: Arc<DataPlaneConfig>,
    budget: Arc<Budget>,
    workers: Workers,
    listeners: Mutex<BTreeMap<(Protocol, u16), Listener>>,
    stop_all: watch::Sender<bool>,
    /// Cloned into every listener task and held by every TCP worker; `None` once shutdown
    /// has begun.
    drain: Mutex<Option<mpsc::Sender<()>>>,
    drained: tokio::sync::Mutex<mpsc::Receiver<()>>,
}

/// The set of open listeners. Cheap to clone; all clones drive the same listeners.
#[derive(Clone)]
pub struct DataPlane {
    inner: Arc<Inner>,
}

impl DataPlane {
    pub fn new(config: DataPlaneConfig) -> Self {
        Self::with_budget(config, |config| {
            Budget::for_process(config.fd_reserve, config.max_connections)
        })
    }

    /// `budget` is made once the workers' runtimes hold their descriptors, so that the
    /// count of what the process holds at start includes them.
    fn with_budget(
        config: DataPlaneConfig,
        budget: impl FnOnce(&DataPlaneConfig) -> Budget,
    ) -> Self {
        let (drain, drained) = mpsc::channel(1);
        let workers = Workers::start(config.tcp_workers, &drain);
        let budget = Arc::new(budget(&config));
        DataPlane {
            inner: Arc::new(Inner {
                workers,
                budget,
                config: Arc::new(config),
                listeners: Mutex::new(BTreeMap::new()),
                stop_all: watch::channel(false).0,
                drain: Mutex::new(Some(drain)),
                drained: tokio::sync::Mutex::new(drained),
            }),
        }
    }

    /// Binds the listener and starts serving; returns the bound port.
    pub async fn open(&self, spec: ListenerSpec) -> Result<u16, DataPlaneError> {
        let mut id = ListenerId {
            protocol: spec.protocol,
            port: spec.port,
            name: Some(spec.name.clone()),
        };
        if spec.port != 0 && self.listeners().contains_key(&(spec.protocol, spec.port)) {
            return Err(DataPlaneError::AlreadyOpen(id));
        }
        let Some(drain) = lock(&self.inner.drain).clone() else {
            return Err(DataPlaneError::ShutDown(id));
        };
        let addr = SocketAddr::new(self.inner.config.listen_addr, spec.port);
        let bind_error = |id: &ListenerId, e: io::Error| {
            if e.kind() == io::ErrorKind::AddrInUse {
                DataPlaneError::PortInUse(id.clone(), e)
            } else {
                DataPlaneError::Bind(id.clone(), e)
            }
        };
        let fds = match spec.protocol {
            Protocol::Tcp => self.inner.workers.handles.len(),
            Protocol::Udp => udp::socket_count(addr),
        };
        let budget = &self.inner.budget;
        if !budget.try_listener(fds) {
            let (held, may) = budget.listener_fds();
            return Err(DataPlaneError::NoFileDescriptors {
                id,
                needs: fds,
                held,
                budget: may,
                limit: nofile_soft_limit(),
                reserve: self.inner.config.fd_reserve,
            });
        }
        // Given back on every early return below; a listener in the map gives it back when
        // it closes.
        let taken = FdGuard(budget, fds);
        let bound = match spec.protocol {
            Protocol::Tcp => tcp::bind(
                addr,
                self.inner.workers.handles.len(),
                self.inner.config.keepalive.as_ref(),
            )
            .map(Bound::Tcp),
            Protocol::Udp => udp::bind(addr).map(Bound::Udp),
        }
        .map_err(|e| bind_error(&id, e))?;
        id.port = bound.port().map_err(|e| bind_error(&id, e))?;

        let ctx = TaskCtx {
            config: self.inner.config.clone(),
            budget: self.inner.budget.clone(),
            stop_all: self.inner.stop_all.subscribe(),
            _drain: drain,
        };
        let shared = Arc::new(Shared::new(
            id.clone(),
            &spec.backends,
            self.inner.config.outlier.clone(),
        ));
        let mut listeners = self.listeners();
        // Checked again under the lock: a concurrent open of the same port may have won.
        if listeners.contains_key(&(id.protocol, id.port)) {
            return Err(DataPlaneError::AlreadyOpen(id));
        }
        let tasks = match bound {
            Bound::Tcp(sockets) => sockets
                .into_iter()
                .zip(&self.inner.workers.handles)
                .map(|(socket, worker)| {
                    let (stop, stopped) = oneshot::channel();
                    let serve = tcp::serve(socket, shared.clone(), ctx.clone(), stopped);
                    (stop, worker.spawn(serve))
                })
                .collect(),
            Bound::Udp(sockets) => {
                let (stop, stopped) = oneshot::channel();
                let serve = udp::serve(sockets, shared.clone(), ctx, stopped);
                vec![(stop, tokio::spawn(serve))]
            }
        };
        let endpoints = crate::log_fields::texts(&spec.backends.endpoints);
        tracing::info!(
            listener = %id,
            endpoints = crate::log_fields::list(&endpoints),
            affinity_seconds = spec.backends.affinity.map(|a| a.as_secs()),
            "listener open"
        );
        std::mem::forget(taken);
        listeners.insert((id.protocol, id.port), Listener { shared, fds, tasks });
        Ok(id.port)
    }

    /// New connections (and new UDP flows) use `backends`; established ones continue.
    pub fn update(
        &self,
        protocol: Protocol,
        port: u16,
        backends: Backends,
    ) -> Result<(), DataPlaneError> {
        let listeners = self.listeners();
        let listener = listeners
            .get(&(protocol, port))
            .ok_or_else(|| DataPlaneError::NotOpen(unnamed(protocol, port)))?;
        let endpoints = crate::log_fields::texts(&backends.endpoints);
        tracing::info!(
            listener = %listener.shared.id,
            endpoints = crate::log_fields::list(&endpoints),
            affinity_seconds = backends.affinity.map(|a| a.as_secs()),
            "listener updated"
        );
        listener.shared.balancer().update(&backends);
        Ok(())
    }

    /// Stops accepting and frees the port; established TCP connections continue until they
    /// end. UDP flows end with the listener, as their replies leave from its socket.
    pub async fn close(&self, protocol: Protocol, port: u16) -> Result<(), DataPlaneError> {
        let listener = self
            .listeners()
            .remove(&(protocol, port))
            .ok_or_else(|| DataPlaneError::NotOpen(unnamed(protocol, port)))?;
        let fds = listener.fds;
        stop_listener(listener).await;
        self.inner.budget.release_listener(fds);
        Ok(())
    }

    /// All listeners, in protocol then port order.
    pub fn status(&self) -> Vec<ListenerStatus> {
        self.listeners()
            .values()
            .map(|listener| listener.shared.status())
            .collect()
    }

    /// Outlier detection's records of every listener, in protocol then port order; each
    /// listener's lock is held only to copy them.
    pub fn endpoint_health(&self) -> Vec<ListenerHealth> {
        let listeners: Vec<Arc<Shared>> = self
            .listeners()
            .values()
            .map(|listener| listener.shared.clone())
            .collect();
        listeners.iter().map(|shared| shared.health()).collect()
    }

    /// File descriptors the data plane holds now (listeners, connections, UDP flows), and
    /// the most it may hold (see [`DataPlaneConfig::fd_reserve`]).
    pub fn fds(&self) -> (usize, usize) {
        self.inner.budget.fds()
    }

    /// Closes every listener and every connection, and waits until all are gone.
    pub async fn shutdown(&self) {
        let listeners = std::mem::take(&mut *self.listeners());
        for listener in listeners.into_values() {
            let fds = listener.fds;
            stop_listener(listener).await;
            self.inner.budget.release_listener(fds);
        }
        self.inner.stop_all.send_replace(true);
        self.inner.workers.stop();
        drop(lock(&self.inner.drain).take());
        // Every task holds a drain sender; `recv` yields `None` once the last one is dropped.
        while self.inner.drained.lock().await.recv().await.is_some() {}
        tracing::info!("data plane shut down");
    }

    fn listeners(&self) -> MutexGuard<'_, BTreeMap<(Protocol, u16), Listener>> {
        lock(&self.inner.listeners)
    }
}

/// Descriptors taken from the budget for a listener being opened, given back if it fails.
struct FdGuard<'a>(&'a Budget, usize);

impl Drop for FdGuard<'_> {
    fn drop(&mut self) {
        self.0.release_listener(self.1);
    }
}

enum Bound {
    /// The listening socket once per TCP worker (see [`tcp::bind`]).
    Tcp(Vec<std::net::TcpListener>),
    /// The wildcard socket first, then a loopback one (see [`udp::bind`]).
    Udp(Vec<tokio::net::UdpSocket>),
}

impl Bound {
    fn port(&self) -> io::Result<u16> {
        match self {
            Bound::Tcp(sockets) => sockets[0].local_addr().map(|a| a.port()),
            Bound::Udp(sockets) => sockets[0].local_addr().map(|a| a.port()),
        }
    }
}

async fn stop_listener(listener: Listener) {
    for (stop, task) in listener.tasks {
        // The task may already have ended on its own (a fatal accept error); nothing to
        // stop then.
        let _ = stop.send(());
        if let Err(e) = task.await {
            tracing::warn!(listener = %listener.shared.id, error = %e, "listener task failed");
        }
    }
    tracing::info!(listener = %listener.shared.id, "listener closed");
}

fn unnamed(protocol: Protocol, port: u16) -> ListenerId {
    ListenerId {
        protocol,
        port,
        name: None,
    }
}

/// Locks, ignoring poisoning: every critical section here leaves its data consistent, so a
/// panic elsewhere must not take the whole data plane down with it.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
