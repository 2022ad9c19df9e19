//! The probing shell around `health`: one task per target on the daemon's runtime, spread
//! over its period, a global concurrency limit, verdicts kept for the pipeline and `status`,
//! and one batched reconcile per burst of flips.

use super::control::EndpointHealthView;
use crate::health::{self, Probe, ProbeAction, Scheme, Target, TargetState, Verdict};
use std::collections::BTreeMap;
use std::net::SocketAddrV4;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;

/// `--probe-concurrency` default: probes in flight at once, all targets together.
pub const DEFAULT_CONCURRENCY: usize = 256;
/// Flips within this window ride the same reconcile.
pub const BATCH_WINDOW: Duration = Duration::from_millis(200);
/// How much of an HTTP answer's body is read (the kubelet reads at most 10 KiB).
const MAX_BODY: usize = 10 * 1024;

/// Asks the daemon for a reconcile (sends `Trigger::Health`).
pub type Notify = Arc<dyn Fn() + Send + Sync>;

/// Runs the probes of the targets the last reconcile found. Cheap to share (`Arc`).
pub struct Prober {
    runtime: tokio::runtime::Handle,
    shared: Arc<Shared>,
}

struct Shared {
    semaphore: Semaphore,
    notify: Notify,
    /// The clock of the state machines.
    epoch: Instant,
    http: Option<reqwest::Client>,
    inner: Mutex<Inner>,
    metrics: Mutex<Option<Arc<super::metrics::Metrics>>>,
}

#[derive(Default)]
struct Inner {
    targets: BTreeMap<String, Entry>,
    /// A reconcile is already asked for and not yet sent.
    pending: bool,
}

struct Entry {
    target: Target,
    state: TargetState,
    /// When `state.verdict` last changed, seconds since the Unix epoch.
    since: u64,
    task: tokio::task::AbortHandle,
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Prober {
    /// `concurrency`: probes in flight at most (at least 1). `notify` asks for a reconcile.
    pub fn new(runtime: tokio::runtime::Handle, concurrency: usize, notify: Notify) -> Prober {
        let http = http_client()
            .map_err(|e| tracing::error!(error = %super::reconciler::error_chain(&e), "no HTTP client: httpGet probes fail"))
            .ok();
        Prober {
            runtime,
            shared: Arc::new(Shared {
                semaphore: Semaphore::new(concurrency.max(1)),
                notify,
                epoch: Instant::now(),
                http,
                inner: Mutex::default(),
                metrics: Mutex::default(),
            }),
        }
    }

    /// Where probe counts and transitions are recorded.
    pub fn set_metrics(&self, metrics: Arc<super::metrics::Metrics>) {
        *self.shared.metrics.lock().expect("prober metrics lock") = Some(metrics);
    }

    /// Takes the targets of this reconcile: new ones start (no judgement yet), gone ones
    /// stop, changed ones (another probe or address) start over; the rest keep their state.
    pub fn sync(&self, targets: BTreeMap<String, Target>) {
        let mut inner = self.shared.inner.lock().expect("prober lock");
        inner.targets.retain(|name, entry| {
            targets.get(name).is_some_and(|t| {
                t.probe == entry.target.probe
                    && t.address == entry.target.address
                    && t.subject == entry.target.subject
            })
        });
        let now = self.shared.epoch.elapsed();
        for (name, target) in targets {
            if let Some(entry) = inner.targets.get_mut(&name) {
                entry.target.rows = target.rows;
                continue;
            }
            let task = self
                .runtime
                .spawn(run_target(
                    Arc::downgrade(&self.shared),
                    name.clone(),
                    target.probe.clone(),
                    target.address.clone(),
                ))
                .abort_handle();
            inner.targets.insert(
                name,
                Entry {
                    target,
                    state: TargetState::new(now),
                    since: unix_now(),
                    task,
                },
            );
        }
    }

    /// The verdicts so far, for the pipeline.
    pub fn health(&self) -> health::Health {
        let inner = self.shared.inner.lock().expect("prober lock");
        health::overlay(inner.targets.values().map(|e| (&e.target, e.state.verdict)))
    }

    /// One row per (service port, endpoint, check), for `status`.
    pub fn views(&self) -> Vec<EndpointHealthView> {
        let inner = self.shared.inner.lock().expect("prober lock");
        let mut out = Vec::new();
        for entry in inner.targets.values() {
            let port = match &entry.target.address {
                Ok(address) => address.port(),
                Err(_) => 0,
            };
            for row in &entry.target.rows {
                out.push(EndpointHealthView {
                    service: row.service.to_string(),
                    port: row.port.clone(),
                    endpoint: row.endpoint.to_string(),
                    check: entry.target.check.as_str().to_string(),
                    state: entry.state.verdict.as_str().to_string(),
                    since: entry.since,
                    reason: entry.state.last_error.clone(),
                    detail: entry.target.probe.describe(port),
                });
            }
        }
        out.sort_by(|a, b| {
            (&a.service, &a.port, &a.endpoint, &a.check).cmp(&(
                &b.service,
                &b.port,
                &b.endpoint,
                &b.check,
            ))
        });
        out
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        // Entries abort their tasks when dropped.
        if let Ok(mut inner) = self.shared.inner.lock() {
            inner.targets.clear();
        }
    }
}

/// One target's loop: first at its offset (after the initial delay), then every period.
async fn run_target(
    shared: std::sync::Weak<Shared>,
    name: String,
    probe: Probe,
    address: Result<SocketAddrV4, String>,
) {
    let period = Duration::from_secs(u64::from(probe.period_seconds.max(1)));
    let first = health::state::first_probe_at(
        Duration::ZERO,
        Duration::from_secs(u64::from(probe.initial_delay_seconds)),
        &name,
        period,
    );
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + first, period);
    // A slow probe (or a busy limit) delays the next one rather than firing a burst.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let Some(strong) = shared.upgrade() else {
            return;
        };
        let result = {
            let Ok(_permit) = strong.semaphore.acquire().await else {
                return;
            };
            match &address {
                Ok(address) => probe_once(&probe, *address, strong.http.as_ref()).await,
                Err(why) => Err(why.clone()),
            }
        };
        strong.record(&name, &probe, result);
    }
}

impl Shared {
    fn record(self: &Arc<Self>, name: &str, probe: &Probe, result: Result<(), String>) {
        let metrics = self.metrics.lock().expect("prober metrics lock").clone();
        if let Some(metrics) = &metrics {
            metrics.probe(probe.kind(), result.is_ok());
        }
        let now = self.epoch.elapsed();
        let mut inner = self.inner.lock().expect("prober lock");
        let Some(entry) = inner.targets.get_mut(name) else {
            return;
        };
        let Some(verdict) = entry.state.record(
            result,
            probe.success_threshold,
            probe.failure_threshold,
            now,
        ) else {
            return;
        };
        entry.since = unix_now();
        let target = &entry.target;
        let address = match &target.address {
            Ok(a) => a.to_string(),
            Err(_) => "-".to_string(),
        };
        let reason = entry.state.last_error.clone().unwrap_or_default();
        match verdict {
            Verdict::Unhealthy => tracing::warn!(
                target_name = %name,
                check = target.check.as_str(),
                address = %address,
                probe = probe.kind(),
                reason = %crate::escape::Text(&reason),
                "endpoint unhealthy: {} failures in a row",
                probe.failure_threshold
            ),
            _ => tracing::info!(
                target_name = %name,
                check = target.check.as_str(),
                address = %address,
                probe = probe.kind(),
                "endpoint healthy again: {} successes in a row",
                probe.success_threshold
            ),
        }
        if let Some(metrics) = &metrics {
            for row in &target.rows {
                metrics.endpoint_transition(
                    &row.service.to_string(),
                    &row.port,
                    &row.endpoint.to_string(),
                    target.check.as_str(),
                    verdict == Verdict::Healthy,
                );
            }
        }
        if !inner.pending {
            inner.pending = true;
            let shared = Arc::downgrade(self);
            tokio::spawn(async move {
                tokio::time::sleep(BATCH_WINDOW).await;
                if let Some(shared) = shared.upgrade() {
                    shared.inner.lock().expect("prober lock").pending = false;
                    (shared.notify)();
                }
            });
        }
    }
}

/// The HTTP client of every httpGet probe. reqwest (hyper underneath, already in the tree
/// for `/metrics`) with rustls: TLS without a system OpenSSL. As the kubelet's prober: no
/// connection reuse, certificates not verified, no proxy from the environment, no redirect
/// followed (a 3xx is a success, 200 <= status < 400).
fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .pool_max_idle_per_host(0)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("portald-probe/", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Runs one probe: `Ok` on success, else why it failed.
async fn probe_once(
    probe: &Probe,
    address: SocketAddrV4,
    http: Option<&reqwest::Client>,
) -> Result<(), String> {
    let timeout = Duration::from_secs(u64::from(probe.timeout_seconds.max(1)));
    let timed_out = || format!("timed out after {}s", timeout.as_secs());
    match &probe.action {
        ProbeAction::TcpSocket { .. } => {
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(address)).await {
                Ok(Ok(stream)) => {
                    // Closed with a reset, not the FIN handshake: no TIME_WAIT socket (nor its
                    // conntrack entry) per probe, and three packets fewer; the kubelet sets
                    // SO_LINGER on its probes for the same reason (kubernetes#115143).
                    let _ = stream.set_zero_linger();
                    Ok(())
                }
                Ok(Err(e)) => Err(format!("connect to {address}: {}", io_reason(&e))),
                Err(_) => Err(format!("connect to {address}: {}", timed_out())),
            }
        }
        ProbeAction::HttpGet {
            scheme,
            path,
            host,
            headers,
            ..
        } => {
            let Some(client) = http else {
                return Err("no HTTP client".into());
            };
            let scheme = match scheme {
                Scheme::Http => "http",
                Scheme::Https => "https",
            };
            // `host` is where to connect, as in the API (the Host header is an httpHeader).
            let host = host.clone().unwrap_or_else(|| address.ip().to_string());
            let url = format!("{scheme}://{host}:{}{path}", address.port());
            let mut request = client.get(&url).timeout(timeout);
            for (name, value) in headers {
                request = request.header(name.as_str(), value.as_str());
            }
            let fetch = async {
                let mut response = request.send().await?;
                let status = response.status();
                // Read a bounded part of the body, as the kubelet does, then drop the rest.
                let mut read = 0;
                while read < MAX_BODY {
                    match response.chunk().await? {
                        Some(chunk) => read += chunk.len(),
                        None => break,
                    }
                }
                Ok::<_, reqwest::Error>(status)
            };
            match tokio::time::timeout(timeout, fetch).await {
                Ok(Ok(status)) if (200..400).contains(&status.as_u16()) => Ok(()),
                Ok(Ok(status)) => Err(format!("HTTP {} from GET {url}", status.as_u16())),
                Ok(Err(e)) if e.is_timeout() => Err(format!("GET {url}: {}", timed_out())),
                Ok(Err(e)) => Err(format!("GET {url}: {}", super::reconciler::error_chain(&e))),
                Err(_) => Err(format!("GET {url}: {}", timed_out())),
            }
        }
        ProbeAction::Grpc { service, .. } => grpc_probe(address, service, timeout).await,
        ProbeAction::Exec => Err("an exec probe cannot run here".into()),
    }
}

/// The standard grpc.health.v1 `Check` over plaintext HTTP/2, as the kubelet's gRPC probe:
/// `SERVING` is a success, any other status, an error status or no answer a failure.
async fn grpc_probe(address: SocketAddrV4, service: &str, timeout: Duration) -> Result<(), String> {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let at = format!("grpc health check of {address}");
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| format!("{at}: {e}"))?
        .connect_timeout(timeout)
        .timeout(timeout)
        .user_agent(concat!("portald-probe/", env!("CARGO_PKG_VERSION")))
        .map_err(|e| format!("{at}: {e}"))?;
    let check = async {
        let channel = endpoint.connect().await.map_err(|e| {
            let io = std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<std::io::Error>())
                .map(io_reason);
            format!(
                "{at}: connect: {}",
                io.unwrap_or_else(|| super::reconciler::error_chain(&e))
            )
        })?;
        let response = HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .map_err(|status| format!("{at}: {:?}: {}", status.code(), status.message()))?;
        let status = response.into_inner().status;
        if status == ServingStatus::Serving as i32 {
            Ok(())
        } else {
            let name = ServingStatus::try_from(status)
                .map(|s| s.as_str_name())
                .unwrap_or("an unknown status");
            Err(format!("{at}: {name}"))
        }
    };
    tokio::time::timeout(timeout, check)
        .await
        .unwrap_or_else(|_| Err(format!("{at}: timed out after {}s", timeout.as_secs())))
}

/// An I/O error in a few words (`connection refused`).
fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::ConnectionRefused => "connection refused".into(),
        std::io::ErrorKind::ConnectionReset => "connection reset".into(),
        _ => e.to_string(),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{Check, ProbePort, Row, Subject};
    use crate::model::{Endpoint, ObjectKey};
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A tcpSocket target on a loopback port nothing listens on, judged after one failure.
    fn refused_target(name: &str, port: u16) -> Target {
        let address = SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, port);
        let mut probe = Probe::with_defaults(ProbeAction::TcpSocket {
            port: ProbePort::Number(port),
        });
        probe.period_seconds = 1;
        probe.failure_threshold = 1;
        Target {
            check: Check::ReadinessProbe,
            subject: Subject::Pod(ObjectKey::new("default", name)),
            probe,
            address: Ok(address),
            rows: vec![Row {
                service: ObjectKey::new("default", "web"),
                port: "80/TCP".into(),
                endpoint: Endpoint(address),
            }],
        }
    }

    #[tokio::test]
    async fn a_tcp_probe_closes_with_a_reset_so_no_time_wait_is_left_per_probe() {
        use std::io::Read;
        let server = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        let std::net::SocketAddr::V4(address) = server.local_addr().expect("its address") else {
            unreachable!("bound on IPv4")
        };
        let probe = Probe::with_defaults(ProbeAction::TcpSocket {
            port: crate::health::probe::ProbePort::Number(address.port()),
        });
        assert_eq!(probe_once(&probe, address, None).await, Ok(()));
        let (mut accepted, _) = server.accept().expect("the probe's connection");
        accepted
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("a read timeout");
        let read = accepted.read(&mut [0u8; 16]);
        // A FIN would read as Ok(0) (end of stream); the zero linger sends a reset.
        assert_eq!(
            read.map_err(|e| e.kind()),
            Err(std::io::ErrorKind::ConnectionReset)
        );
    }

    fn closed_port() -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a loopback port");
        listener.local_addr().expect("its address").port()
    }

    #[test]
    fn flips_of_several_targets_ask_for_one_reconcile_and_show_in_status_and_metrics() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime");
        let asked = Arc::new(AtomicUsize::new(0));
        let notify: Notify = {
            let asked = asked.clone();
            Arc::new(move || {
                asked.fetch_add(1, Ordering::SeqCst);
            })
        };
        let prober = Arc::new(Prober::new(runtime.handle().clone(), 4, notify));
        let metrics = super::super::metrics::Metrics::new(None);
        let health = metrics.endpoint_health(Arc::downgrade(&prober), None);
        let metrics = Arc::new(metrics.with(health));
        prober.set_metrics(metrics.clone());
        let port = closed_port();
        // Two targets whose offsets in the period lie within 50 ms: their flips come
        // together, as in a burst.
        let name = |i: usize| format!("readiness-probe default/p{i} app");
        let offset = |i: usize| health::state::offset(&name(i), Duration::from_secs(1));
        let (i, j) = (0..100)
            .flat_map(|i| (i + 1..100).map(move |j| (i, j)))
            .find(|(i, j)| offset(*i).abs_diff(offset(*j)) < Duration::from_millis(50))
            .expect("two names with close offsets");
        let targets: BTreeMap<String, Target> = [i, j]
            .into_iter()
            .map(|k| (name(k), refused_target(&format!("p{k}"), port)))
            .collect();
        prober.sync(targets);
        assert!(
            prober.health().is_empty(),
            "no judgement before a probe ran"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while prober.health().pods.len() < 2 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let health = prober.health();
        assert_eq!(health.pods.values().collect::<Vec<_>>(), [&false, &false]);
        std::thread::sleep(BATCH_WINDOW * 3);
        assert_eq!(
            asked.load(Ordering::SeqCst),
            1,
            "one reconcile for both flips"
        );
        let views = prober.views();
        assert_eq!(views.len(), 2);
        assert!(views.iter().all(|v| v.state == "unhealthy"
            && v.reason
                .as_deref()
                .is_some_and(|r| r.contains("connection refused"))));
        let text = metrics.encode();
        assert!(text.contains(&format!(
            "portald_endpoint_healthy{{service=\"default/web\",port=\"80/TCP\",endpoint=\"127.0.0.1:{port}\",check=\"readiness-probe\"}} 0"
        )), "{text}");
        assert!(
            text.contains("portald_probes_total{type=\"tcp\",result=\"failure\"}"),
            "{text}"
        );
        assert!(
            text.contains(
                "portald_endpoint_health_transitions_total{service=\"default/web\",port=\"80/TCP\""
            ),
            "{text}"
        );
        // Gone from the catalog: no more probing, no row, no gauge.
        prober.sync(BTreeMap::new());
        assert!(prober.views().is_empty());
        assert!(!metrics.encode().contains("portald_endpoint_healthy{"));
    }
}
