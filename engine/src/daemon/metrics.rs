//! The daemon's Prometheus metrics and health: what kube-proxy users graph, named after
//! kube-proxy's own metrics (pkg/proxy/metrics/metrics.go) with `portald_` for `kubeproxy_`.

use crate::compile::Intent;
use dataplane::{DataPlane, ListenerStatus};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::{exponential_buckets, linear_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Why a reconcile failed, the `cause` label of
/// `portald_sync_proxy_rules_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureCause {
    /// The services directory could not be read.
    Load,
    /// The allocation record could not be read.
    Lock,
    /// The live kernel state could not be read.
    Observe,
    /// The kernel refused the `iptables-restore` / `nft -f` batch.
    KernelBatch,
    /// A listener could not be opened, updated or closed.
    Listener,
    /// After apply, the live state differs from the intent.
    Verify,
}

impl FailureCause {
    fn label(self) -> &'static str {
        match self {
            FailureCause::Load => "load",
            FailureCause::Lock => "lock",
            FailureCause::Observe => "observe",
            FailureCause::KernelBatch => "kernel_batch",
            FailureCause::Listener => "listener",
            FailureCause::Verify => "verify",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CauseLabels {
    cause: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeLabels {
    r#type: &'static str,
    result: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, PartialOrd, Ord)]
struct TransitionLabels {
    service: String,
    port: String,
    endpoint: String,
    check: String,
    to: &'static str,
}

/// The last pass, for `/healthz` and `/livez`.
#[derive(Debug, Clone, Default)]
struct State {
    started: Option<Instant>,
    /// Earliest file event not yet covered by a successful pass.
    pending_change: Option<Instant>,
    /// When the last pass ended, whether it succeeded, and why not.
    last_pass: Option<(Instant, bool, Option<String>)>,
    /// When the last successful pass ended: monotonic, and wall clock for the answer.
    last_success: Option<(Instant, SystemTime)>,
}

/// The daemon's metrics; shared (in an `Arc`) by the reconciler, which records each pass,
/// the watcher, which records file events, and the HTTP server, which encodes them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    sync_duration: Histogram,
    last_sync: Gauge<f64, AtomicU64>,
    failures: Family<CauseLabels, Counter>,
    network_programming: Histogram,
    services: Gauge,
    portals: Gauge,
    endpoints: Gauge,
    rules: Family<KindLabels, Gauge>,
    invalid_files: Gauge,
    conflicts: Family<KindLabels, Gauge>,
    probes: Family<ProbeLabels, Counter>,
    /// Verdict changes of the prober's checks; outlier detection's are counted by the data
    /// plane. Both reach one family through [`EndpointHealth`].
    transitions: Arc<Mutex<BTreeMap<TransitionLabels, u64>>>,
    state: Mutex<State>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new(None)
    }
}

impl Metrics {
    /// The metrics of a daemon; `dataplane`, when given, adds the per-listener counters of
    /// userspace mode, read at each scrape.
    pub fn new(dataplane: Option<DataPlane>) -> Self {
        let metrics = Metrics {
            registry: Registry::default(),
            // kube-proxy's buckets: 1 ms doubling to 16 s.
            sync_duration: Histogram::new(exponential_buckets(0.001, 2.0, 15)),
            last_sync: Gauge::default(),
            failures: Family::default(),
            // kube-proxy's buckets: 0.25 s to 0.5 s, each second to 1 min, then coarser.
            network_programming: Histogram::new(
                linear_buckets(0.25, 0.25, 2)
                    .chain(linear_buckets(1.0, 1.0, 59))
                    .chain(linear_buckets(60.0, 5.0, 12))
                    .chain(linear_buckets(120.0, 30.0, 7)),
            ),
            services: Gauge::default(),
            portals: Gauge::default(),
            endpoints: Gauge::default(),
            rules: Family::default(),
            invalid_files: Gauge::default(),
            conflicts: Family::default(),
            probes: Family::default(),
            transitions: Arc::default(),
            state: Mutex::new(State {
                started: Some(Instant::now()),
                ..State::default()
            }),
        };
        let mut registry = Registry::default();
        // Mirrors kubeproxy_sync_proxy_rules_duration_seconds.
        registry.register(
            "portald_sync_proxy_rules_duration_seconds",
            "Reconcile latency in seconds: load, observe, plan, apply and verify",
            metrics.sync_duration.clone(),
        );
        // Mirrors kubeproxy_sync_proxy_rules_last_timestamp_seconds.
        registry.register(
            "portald_sync_proxy_rules_last_timestamp_seconds",
            "The last time a reconcile succeeded, in seconds since the Unix epoch",
            metrics.last_sync.clone(),
        );
        // Mirrors kubeproxy_sync_proxy_rules_iptables_restore_failures_total, by cause.
        registry.register(
            "portald_sync_proxy_rules_failures",
            "Failed reconciles by cause: load, lock, observe, kernel_batch, listener, verify",
            metrics.failures.clone(),
        );
        // Mirrors kubeproxy_network_programming_duration_seconds.
        registry.register(
            "portald_network_programming_duration_seconds",
            "Seconds from a file change seen by the watcher to the rules applied and verified live",
            metrics.network_programming.clone(),
        );
        registry.register(
            "portald_services",
            "Services in the intended state (headless ones included)",
            metrics.services.clone(),
        );
        registry.register(
            "portald_portals",
            "Service ports with a VIP: each one a VIP:port portal",
            metrics.portals.clone(),
        );
        registry.register(
            "portald_endpoints",
            "Ready endpoints summed over every service port",
            metrics.endpoints.clone(),
        );
        // Mirrors kubeproxy_sync_proxy_rules_iptables_total (a count, not a counter).
        registry.register(
            "portald_sync_proxy_rules_nat_rules",
            "NAT rules portald owns after the last pass: portal rules, and scaffold (chains, jumps)",
            metrics.rules.clone(),
        );
        registry.register(
            "portald_invalid_files",
            "Files in the services directory with errors; their last good version stays in force",
            metrics.invalid_files.clone(),
        );
        registry.register(
            "portald_conflicts",
            "Conflicts found by the last pass: allocation (clusterIP, ports), foreign_rule, and forward_drop (a foreign forward chain that drops the VIPs' traffic)",
            metrics.conflicts.clone(),
        );
        registry.register(
            "portald_probes",
            "Readiness probes and health checks run, by type (tcp, http, grpc) and result (success, failure)",
            metrics.probes.clone(),
        );
        // Every cause from the start at 0, so `rate()` and alerts see a series before the
        // first failure.
        for cause in [
            FailureCause::Load,
            FailureCause::Lock,
            FailureCause::Observe,
            FailureCause::KernelBatch,
            FailureCause::Listener,
            FailureCause::Verify,
        ] {
            metrics
                .failures
                .get_or_create(&CauseLabels {
                    cause: cause.label(),
                })
                .inc_by(0);
        }
        if let Some(dataplane) = dataplane {
            registry.register_collector(Box::new(Outliers(dataplane.clone())));
            registry.register_collector(Box::new(Listeners(dataplane)));
        }
        Metrics {
            registry,
            ..metrics
        }
    }

    /// Adds a collector read at each scrape (such as the kernel's rule counters).
    pub fn with(mut self, collector: Box<dyn Collector>) -> Self {
        self.registry.register_collector(collector);
        self
    }

    /// The OpenMetrics text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The same metrics in the Prometheus text format 0.0.4, for clients that do not ask
    /// for OpenMetrics (curl, `promtool check metrics`, older scrapers): there a counter's
    /// HELP and TYPE carry the sample's `_total` name, and there is no `# EOF` or `# UNIT`.
    pub fn encode_prometheus_text(&self) -> String {
        let open = self.encode();
        let counters: std::collections::BTreeSet<&str> = open
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
            .collect();
        let mut out = String::with_capacity(open.len() + 64 * counters.len());
        for line in open.lines() {
            if line == "# EOF" || line.starts_with("# UNIT ") {
                continue;
            }
            let renamed = ["# HELP ", "# TYPE "].into_iter().find_map(|comment| {
                let (name, rest) = line.strip_prefix(comment)?.split_once(' ')?;
                counters
                    .contains(name)
                    .then(|| format!("{comment}{name}_total {rest}"))
            });
            out.push_str(renamed.as_deref().unwrap_or(line));
            out.push('\n');
        }
        out
    }

    /// A file event the watcher saw at `at`; the next successful pass ends its network
    /// programming latency.
    pub fn file_changed(&self, at: Instant) {
        let mut state = self.lock();
        state.pending_change = Some(state.pending_change.map_or(at, |p| p.min(at)));
    }

    /// Takes the earliest pending file event, as a pass begins: the pass reads the files
    /// after this, so it covers that change.
    pub fn take_file_change(&self) -> Option<Instant> {
        self.lock().pending_change.take()
    }

    /// Records one pass: `changed` is what [`Metrics::take_file_change`] returned at its
    /// start, `failure` why it failed (`None` on success).
    pub fn pass(
        &self,
        elapsed: Duration,
        changed: Option<Instant>,
        failure: Option<(FailureCause, &str)>,
    ) {
        self.sync_duration.observe(elapsed.as_secs_f64());
        let now = Instant::now();
        let mut state = self.lock();
        match failure {
            None => {
                let wall = SystemTime::now();
                self.last_sync.set(unix_seconds(wall));
                if let Some(changed) = changed {
                    self.network_programming
                        .observe(now.saturating_duration_since(changed).as_secs_f64());
                }
                state.last_pass = Some((now, true, None));
                state.last_success = Some((now, wall));
            }
            Some((cause, message)) => {
                self.failures
                    .get_or_create(&CauseLabels {
                        cause: cause.label(),
                    })
                    .inc();
                // The change is still not live: the next pass that succeeds ends it.
                if let Some(changed) = changed {
                    state.pending_change =
                        Some(state.pending_change.map_or(changed, |p| p.min(changed)));
                }
                state.last_pass = Some((now, false, Some(message.to_string())));
            }
        }
    }

    /// Sets the counts of services, portals, endpoints and rules from the intent.
    pub fn intent(&self, intent: &Intent) {
        let ports = || intent.services.iter().flat_map(|s| &s.ports);
        let portals = intent
            .services
            .iter()
            .filter(|s| s.vip.is_some())
            .map(|s| s.ports.len())
            .sum::<usize>();
        self.services.set(count(intent.services.len()));
        self.portals.set(count(portals));
        self.endpoints
            .set(count(ports().map(|p| p.endpoints.len()).sum()));
        for (kind, n) in [
            ("portal", intent.nat.rules.len()),
            ("scaffold", intent.nat.scaffold.len()),
        ] {
            self.rules.get_or_create(&KindLabels { kind }).set(count(n));
        }
    }

    /// One probe ran: its type (`tcp`, `http`, `grpc`) and whether it succeeded.
    pub fn probe(&self, kind: &'static str, ok: bool) {
        let result = if ok { "success" } else { "failure" };
        self.probes
            .get_or_create(&ProbeLabels {
                r#type: kind,
                result,
            })
            .inc();
    }

    /// An endpoint's verdict changed (`healthy`: to healthy, else to unhealthy).
    pub fn endpoint_transition(
        &self,
        service: &str,
        port: &str,
        endpoint: &str,
        check: &str,
        healthy: bool,
    ) {
        let labels = TransitionLabels {
            service: service.to_string(),
            port: port.to_string(),
            endpoint: endpoint.to_string(),
            check: check.to_string(),
            to: if healthy { "healthy" } else { "unhealthy" },
        };
        *self
            .transitions
            .lock()
            .expect("transitions lock")
            .entry(labels)
            .or_default() += 1;
    }

    /// The collector of `portald_endpoint_healthy` and
    /// `portald_endpoint_health_transitions_total`: the prober's verdicts and transitions,
    /// and outlier detection's (from `dataplane`, in userspace mode), in one family each as
    /// the exposition format requires.
    pub fn endpoint_health(
        &self,
        prober: std::sync::Weak<super::prober::Prober>,
        dataplane: Option<DataPlane>,
    ) -> Box<dyn Collector> {
        Box::new(EndpointHealth {
            prober,
            dataplane,
            transitions: self.transitions.clone(),
        })
    }

    /// Sets the number of files with at least one error (their last good version stays in
    /// force).
    pub fn invalid_files(&self, files: usize) {
        self.invalid_files.set(count(files));
    }

    /// Sets the conflicts a pass found: `allocation` errors (two services claiming one
    /// clusterIP, no proxy port left...) and foreign rules that catch a VIP:port first.
    pub fn conflicts(&self, allocation: usize, foreign_rule: usize) {
        for (kind, n) in [("allocation", allocation), ("foreign_rule", foreign_rule)] {
            self.conflicts
                .get_or_create(&KindLabels { kind })
                .set(count(n));
        }
    }

    /// Sets the foreign forward chains that drop by policy and that portald cannot let its
    /// translated traffic through (kernel mode, nftables; see `observe::forward_policy`),
    /// as `portald_conflicts{kind="forward_drop"}`: each is named in `status` and the log.
    pub fn forward_drops(&self, chains: usize) {
        self.conflicts
            .get_or_create(&KindLabels {
                kind: "forward_drop",
            })
            .set(count(chains));
    }

    /// `/healthz`: healthy while the last pass succeeded and did so within `2 × resync`.
    /// kube-proxy's rule is alike: unhealthy once an update has waited longer than its
    /// health timeout (by default twice its sync period).
    pub fn health(&self, resync: Duration) -> Health {
        let state = self.lock().clone();
        let limit = resync * 2;
        let reason = match (&state.last_pass, &state.last_success) {
            (None, _) => Some("no reconcile has finished yet".to_string()),
            (Some((_, false, error)), _) => Some(format!(
                "the last reconcile failed: {}",
                error.as_deref().unwrap_or("unknown error")
            )),
            (Some(_), Some((at, _))) if at.elapsed() > limit => Some(format!(
                "the last successful reconcile was {} s ago, more than 2 resync periods ({} s)",
                at.elapsed().as_secs(),
                limit.as_secs()
            )),
            _ => None,
        };
        Health::new(reason, state.last_success.map(|(_, wall)| wall))
    }

    /// `/livez`: alive while the reconciler still finishes passes, whatever their outcome:
    /// one ended within `2 × resync` (or the daemon started less than that ago). A kernel
    /// that refuses batches makes `/healthz` fail, not `/livez`: a restart would not help.
    pub fn liveness(&self, resync: Duration) -> Health {
        let state = self.lock().clone();
        let limit = resync * 2;
        let last = state
            .last_pass
            .as_ref()
            .map(|(at, ..)| *at)
            .or(state.started);
        let reason = match last {
            Some(at) if at.elapsed() <= limit => None,
            _ => Some(format!(
                "no reconcile has finished in 2 resync periods ({} s): the reconciler is stuck",
                limit.as_secs()
            )),
        };
        Health::new(reason, state.last_success.map(|(_, wall)| wall))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The answer of `/healthz` and `/livez` (kube-proxy answers `lastUpdated` and
/// `currentTime` too).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    pub healthy: bool,
    /// Why not healthy; absent when healthy.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The last successful reconcile, seconds since the Unix epoch.
    pub last_updated: Option<f64>,
    /// Now, seconds since the Unix epoch.
    pub current_time: f64,
}

impl Health {
    fn new(reason: Option<String>, last_success: Option<SystemTime>) -> Health {
        Health {
            healthy: reason.is_none(),
            reason,
            last_updated: last_success.map(unix_seconds),
            current_time: unix_seconds(SystemTime::now()),
        }
    }
}

fn unix_seconds(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `portald_endpoint_healthy` and `portald_endpoint_health_transitions_total`, read at each
/// scrape from every check: the prober's verdicts (1 healthy, 0 unhealthy, absent while
/// unknown) and outlier detection's records (0 while ejected, else 1: an endpoint held in by
/// the ejection cap still serves). Built by [`Metrics::endpoint_health`].
struct EndpointHealth {
    prober: std::sync::Weak<super::prober::Prober>,
    dataplane: Option<DataPlane>,
    transitions: Arc<Mutex<BTreeMap<TransitionLabels, u64>>>,
}

impl std::fmt::Debug for EndpointHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EndpointHealth")
    }
}

impl Collector for EndpointHealth {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use super::outliers::{service_port, state, CHECK};
        use prometheus_client::metrics::MetricType;
        let views = self.prober.upgrade().map(|p| p.views()).unwrap_or_default();
        let listeners = self
            .dataplane
            .as_ref()
            .map(|d| d.endpoint_health())
            .unwrap_or_default();
        let labels = |service: &str, port: &str, endpoint: &str, check: &str| {
            vec![
                ("service", service.to_string()),
                ("port", port.to_string()),
                ("endpoint", endpoint.to_string()),
                ("check", check.to_string()),
            ]
        };
        let mut family = encoder.encode_descriptor(
            "portald_endpoint_healthy",
            "Whether an endpoint serves by portald's own check: 1 yes, 0 held out (probe: unhealthy; outlier detection: ejected); absent while unknown",
            None,
            MetricType::Gauge,
        )?;
        for view in &views {
            let value = match view.state.as_str() {
                "healthy" => 1,
                "unhealthy" => 0,
                _ => continue,
            };
            let set = labels(&view.service, &view.port, &view.endpoint, &view.check);
            ConstGauge::new(value).encode(family.encode_family(&set)?)?;
        }
        for listener in &listeners {
            let (service, port) = service_port(&listener.name, listener.protocol);
            for endpoint in &listener.endpoints {
                let value = i64::from(state(endpoint) != "ejected");
                let set = labels(&service, &port, &endpoint.endpoint.to_string(), CHECK);
                ConstGauge::new(value).encode(family.encode_family(&set)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "portald_endpoint_health_transitions",
            "Changes of an endpoint's health by check, to the state named by `to`",
            None,
            MetricType::Counter,
        )?;
        let probed = self.transitions.lock().expect("transitions lock").clone();
        for (t, count) in probed {
            let mut set = labels(&t.service, &t.port, &t.endpoint, &t.check);
            set.push(("to", t.to.to_string()));
            ConstCounter::new(count).encode(family.encode_family(&set)?)?;
        }
        for listener in &listeners {
            let (service, port) = service_port(&listener.name, listener.protocol);
            for endpoint in &listener.endpoints {
                for (to, count) in [
                    ("ejected", endpoint.ejections),
                    ("healthy", endpoint.returns),
                ] {
                    let mut set = labels(&service, &port, &endpoint.endpoint.to_string(), CHECK);
                    set.push(("to", to.to_string()));
                    ConstCounter::new(count).encode(family.encode_family(&set)?)?;
                }
            }
        }
        Ok(())
    }
}

/// The userspace data plane's per-listener counters, read from its atomics at each scrape
/// (so a closed listener's series end with it). kube-proxy's userspace proxy had none.
struct Listeners(DataPlane);

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Listeners")
    }
}

/// One metric family of the listeners: its name, help, and the value of one listener.
type Column = (&'static str, &'static str, fn(&ListenerStatus) -> u64);

impl Collector for Listeners {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let listeners = self.0.status();
        let labels = |s: &ListenerStatus| {
            vec![
                ("service_port", s.name.clone()),
                ("protocol", s.protocol.to_string()),
                ("proxy_port", s.port.to_string()),
            ]
        };
        let counters: [Column; 3] = [
            (
                "portald_proxy_connections_accepted",
                "TCP connections accepted, or UDP flows created, per service port",
                |s| s.accepted,
            ),
            (
                "portald_proxy_dial_failures",
                "Endpoint dials that failed (refused, timed out) and UDP upstream errors",
                |s| s.failures,
            ),
            (
                "portald_proxy_connections_rejected",
                "Connections reset, or datagrams dropped, because no endpoint could take them",
                |s| s.rejected,
            ),
        ];
        for (name, help, value) in counters {
            let mut family = encoder.encode_descriptor(
                name,
                help,
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for s in &listeners {
                ConstCounter::new(value(s)).encode(family.encode_family(&labels(s))?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "portald_proxy_connections_active",
            "Open TCP connections, or live UDP flows, per service port",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for s in &listeners {
            ConstGauge::new(count(s.active)).encode(family.encode_family(&labels(s))?)?;
        }
        let mut family = encoder.encode_descriptor(
            "portald_proxy_bytes",
            "Payload bytes forwarded per service port; direction to_endpoint or to_client",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for s in &listeners {
            for (direction, bytes) in [
                ("to_endpoint", s.bytes_to_endpoints),
                ("to_client", s.bytes_to_clients),
            ] {
                let mut set = labels(s);
                set.push(("direction", direction.to_string()));
                ConstCounter::new(bytes).encode(family.encode_family(&set)?)?;
            }
        }
        Ok(())
    }
}

/// Outlier detection's ejections per service port, read at each scrape (its per-endpoint
/// health is in [`EndpointHealth`]); a closed listener's series end with it.
struct Outliers(DataPlane);

impl std::fmt::Debug for Outliers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Outliers")
    }
}

impl Collector for Outliers {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use super::outliers::service_port;
        use prometheus_client::metrics::MetricType;
        let listeners = self.0.endpoint_health();
        let ports: Vec<(String, String)> = listeners
            .iter()
            .map(|l| service_port(&l.name, l.protocol))
            .collect();
        let mut family = encoder.encode_descriptor(
            "portald_outlier_ejections",
            "Endpoints taken out of the rotation by outlier detection, per service port",
            None,
            MetricType::Counter,
        )?;
        for (listener, (service, port)) in listeners.iter().zip(&ports) {
            let set = [("service", service.clone()), ("port", port.clone())];
            ConstCounter::new(listener.ejections).encode(family.encode_family(&set)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESYNC: Duration = Duration::from_secs(30);

    #[test]
    fn health_is_unhealthy_before_the_first_pass_and_healthy_after_a_success() {
        let metrics = Metrics::default();
        let before = metrics.health(RESYNC);
        assert!(!before.healthy);
        assert_eq!(
            before.reason.as_deref(),
            Some("no reconcile has finished yet")
        );
        metrics.pass(Duration::from_millis(5), None, None);
        let after = metrics.health(RESYNC);
        assert!(after.healthy, "{after:?}");
        assert!(after.last_updated.is_some());
    }

    #[test]
    fn a_failed_pass_makes_health_fail_with_its_error_but_not_liveness() {
        let metrics = Metrics::default();
        metrics.pass(Duration::from_millis(5), None, None);
        metrics.pass(
            Duration::from_millis(5),
            None,
            Some((FailureCause::KernelBatch, "the kernel refused the batch")),
        );
        let health = metrics.health(RESYNC);
        assert!(!health.healthy);
        assert_eq!(
            health.reason.as_deref(),
            Some("the last reconcile failed: the kernel refused the batch")
        );
        assert!(metrics.liveness(RESYNC).healthy);
        assert!(metrics
            .encode()
            .contains("portald_sync_proxy_rules_failures_total{cause=\"kernel_batch\"} 1\n"));
    }

    #[test]
    fn a_success_older_than_two_resync_periods_is_unhealthy() {
        let metrics = Metrics::default();
        metrics.pass(Duration::from_millis(5), None, None);
        std::thread::sleep(Duration::from_millis(30));
        let health = metrics.health(Duration::from_millis(10));
        assert!(!health.healthy);
        assert!(health
            .reason
            .unwrap()
            .contains("more than 2 resync periods"));
        assert!(!metrics.liveness(Duration::from_millis(10)).healthy);
    }

    #[test]
    fn the_prometheus_text_format_names_counter_families_by_their_total_samples() {
        let metrics = Metrics::default();
        metrics.pass(
            Duration::from_millis(5),
            None,
            Some((FailureCause::Verify, "differs")),
        );
        let text = metrics.encode_prometheus_text();
        assert!(text.contains("# TYPE portald_sync_proxy_rules_failures_total counter\n"));
        assert!(text.contains("# HELP portald_sync_proxy_rules_failures_total Failed"));
        assert!(text.contains("portald_sync_proxy_rules_failures_total{cause=\"verify\"} 1\n"));
        assert!(text.contains("# TYPE portald_services gauge\n"));
        assert!(!text.contains("# EOF"));
        assert!(text.contains("portald_sync_proxy_rules_failures_total{cause=\"load\"} 0\n"));
        assert!(metrics.encode().ends_with("# EOF\n"));
    }

    #[test]
    fn a_file_change_is_timed_to_the_first_successful_pass_after_it() {
        let metrics = Metrics::default();
        metrics.file_changed(Instant::now() - Duration::from_millis(1500));
        let changed = metrics.take_file_change();
        assert!(changed.is_some());
        metrics.pass(
            Duration::from_millis(5),
            changed,
            Some((FailureCause::Load, "unreadable")),
        );
        assert!(!metrics
            .encode()
            .contains("portald_network_programming_duration_seconds_count 1"));
        let changed = metrics.take_file_change();
        assert!(changed.is_some(), "a failed pass keeps the change pending");
        metrics.pass(Duration::from_millis(5), changed, None);
        let text = metrics.encode();
        assert!(text.contains("portald_network_programming_duration_seconds_count 1\n"));
        // 1.5 s falls in the bucket up to 2 s, not in the one up to 1 s.
        assert!(
            text.contains("portald_network_programming_duration_seconds_bucket{le=\"1.0\"} 0\n")
        );
        assert!(
            text.contains("portald_network_programming_duration_seconds_bucket{le=\"2.0\"} 1\n")
        );
        assert!(metrics.take_file_change().is_none());
    }

    #[tokio::test]
    async fn an_ejected_endpoint_shows_as_unhealthy_with_its_transition_and_the_ejection_counted() {
        use dataplane::{Backends, DataPlaneConfig, ListenerSpec};
        let local = std::net::IpAddr::from([127, 0, 0, 1]);
        let dataplane = DataPlane::new(DataPlaneConfig {
            listen_addr: local,
            tcp_workers: 1,
            ..DataPlaneConfig::default()
        });
        // Bound then dropped: connects to it are refused.
        let dead = std::net::TcpListener::bind((local, 0))
            .unwrap()
            .local_addr()
            .unwrap();
        let alive = tokio::net::TcpListener::bind((local, 0)).await.unwrap();
        let alive_addr = alive.local_addr().unwrap();
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = alive.accept().await {
                drop(stream);
            }
        });
        let port = dataplane
            .open(ListenerSpec {
                protocol: dataplane::Protocol::Tcp,
                port: 0,
                name: "default/web:http".into(),
                backends: Backends {
                    endpoints: vec![dead, alive_addr],
                    affinity: None,
                },
            })
            .await
            .unwrap();
        for _ in 0..10 {
            let mut stream = tokio::net::TcpStream::connect((local, port)).await.unwrap();
            let mut sink = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut sink).await;
        }
        let metrics = Metrics::new(Some(dataplane.clone()));
        let health = metrics.endpoint_health(std::sync::Weak::new(), Some(dataplane.clone()));
        let metrics = metrics.with(health);

        let text = metrics.encode();

        // Probes and outlier detection share each family: one descriptor, or scrapers refuse
        // the exposition.
        for family in [
            "portald_endpoint_healthy",
            "portald_endpoint_health_transitions",
        ] {
            let descriptors = text.matches(&format!("# TYPE {family} ")).count();
            assert_eq!(descriptors, 1, "{family}: {text}");
        }

        let labels = format!(
            "service=\"default/web\",port=\"http/TCP\",endpoint=\"{dead}\",check=\"outlier-detection\""
        );
        assert!(
            text.contains(&format!("portald_endpoint_healthy{{{labels}}} 0\n")),
            "{text}"
        );
        assert!(
            text.contains(&format!(
                "portald_endpoint_health_transitions_total{{{labels},to=\"ejected\"}} 1\n"
            )),
            "{text}"
        );
        assert!(
            text.contains(
                "portald_outlier_ejections_total{service=\"default/web\",port=\"http/TCP\"} 1\n"
            ),
            "{text}"
        );
        assert!(
            !text.contains(&format!("endpoint=\"{alive_addr}\"")),
            "an endpoint that never failed has no series: {text}"
        );
        server.abort();
        dataplane.shutdown().await;
    }
}
