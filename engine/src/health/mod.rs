//! Endpoint health, the pure part: probe definitions, the per-target state machine, the
//! targets a catalog asks portald to check, and the [`Health`] overlay the pipeline applies
//! when it resolves endpoints. The probing itself is `daemon::prober`.

pub mod probe;
pub mod state;

pub use probe::{
    parse_annotation, parse_probe, unknown_fields, Probe, ProbeAction, ProbePort, ProbeProblem,
    Scheme, HEALTH_CHECK_ANNOTATION,
};
pub use state::{TargetState, Verdict};

use crate::daemon::control::EndpointHealthView;
use crate::endpoints::EndpointIndex;
use crate::model::{Catalog, Endpoint, ObjectKey};
use std::collections::BTreeMap;
use std::net::SocketAddrV4;

/// portald's judgements, for the pipeline: a Pod judged by its readiness probes, and an
/// endpoint of a Service's Endpoints objects / EndpointSlices judged by its health check.
/// What is absent has no judgement: the file's own condition holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    /// Pod → ready. Replaces the Pod's Ready condition, as the kubelet's prober does.
    pub pods: BTreeMap<ObjectKey, bool>,
    /// (Service, endpoint) → healthy. For a Pod, the same judgement seen from one of the
    /// Services that select it (what `status` carries); for an Endpoints address, false
    /// takes it out, true leaves the file's conditions as they are.
    pub endpoints: BTreeMap<(ObjectKey, Endpoint), bool>,
}

impl Health {
    pub fn is_empty(&self) -> bool {
        self.pods.is_empty() && self.endpoints.is_empty()
    }

    /// The overlay a daemon's `status` rows describe (what `plan` applies when it reads a
    /// running daemon's state): rows of portald's probes and health checks that have a
    /// judgement; several rows for one endpoint (several containers) all must be healthy.
    pub fn from_views(views: &[EndpointHealthView]) -> Health {
        let mut out = Health::default();
        for view in views {
            // Outlier detection only steers the userspace balancer: no rule depends on it.
            if Check::parse(&view.check).is_none() {
                continue;
            }
            let ready = match view.state.as_str() {
                "healthy" => true,
                "unhealthy" => false,
                _ => continue,
            };
            let (Some(service), Ok(endpoint)) = (
                view.service
                    .split_once('/')
                    .map(|(ns, name)| ObjectKey::new(ns, name)),
                view.endpoint.parse::<SocketAddrV4>(),
            ) else {
                continue;
            };
            let entry = out
                .endpoints
                .entry((service, Endpoint(endpoint)))
                .or_insert(true);
            *entry &= ready;
        }
        out
    }
}

/// Which of portald's checks judges a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Check {
    /// A Pod container's `readinessProbe`.
    ReadinessProbe,
    /// A Service's `portald.io/health-check` annotation.
    HealthCheck,
}

impl Check {
    pub fn as_str(self) -> &'static str {
        match self {
            Check::ReadinessProbe => "readiness-probe",
            Check::HealthCheck => "health-check",
        }
    }

    pub fn parse(text: &str) -> Option<Check> {
        match text {
            "readiness-probe" => Some(Check::ReadinessProbe),
            "health-check" => Some(Check::HealthCheck),
            _ => None,
        }
    }
}

/// Whom a target's verdict is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Subject {
    /// A Pod: the verdicts of all its probed containers make its readiness.
    Pod(ObjectKey),
    /// One endpoint of a Service's Endpoints objects / EndpointSlices.
    Endpoint(ObjectKey, Endpoint),
}

/// One `status` row a target fills: the service, its port as the plan names it, the endpoint.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Row {
    pub service: ObjectKey,
    pub port: String,
    pub endpoint: Endpoint,
}

/// One thing to probe, as the catalog defines it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub check: Check,
    pub subject: Subject,
    pub probe: Probe,
    /// Where to connect, or why the probe cannot start (it then fails with that reason).
    pub address: Result<SocketAddrV4, String>,
    pub rows: Vec<Row>,
}

/// The targets of a catalog, keyed by a stable name (`readiness-probe default/web-1 app`,
/// `health-check default/db 10.0.0.5:5432`), which also seeds their offset in the period.
/// Only Pods some Service selects, and only endpoints of Services with the annotation.
pub fn targets(catalog: &Catalog) -> BTreeMap<String, Target> {
    let index = EndpointIndex::new(catalog);
    let mut out: BTreeMap<String, Target> = BTreeMap::new();
    for (key, service) in &catalog.services {
        for port in &service.ports {
            let label = format!("{}/{}", port.label(), port.protocol.as_str().to_uppercase());
            for (pod, endpoint) in index.pod_endpoints(service, port) {
                let Some(ip) = pod.ip else { continue };
                for probe in &pod.probes {
                    let name = format!("readiness-probe {} {}", pod.key, probe.container);
                    let target = out.entry(name).or_insert_with(|| Target {
                        check: Check::ReadinessProbe,
                        subject: Subject::Pod(pod.key.clone()),
                        probe: probe.probe.clone(),
                        address: probe.port.clone().map(|port| SocketAddrV4::new(ip, port)),
                        rows: Vec::new(),
                    });
                    target.rows.push(Row {
                        service: key.clone(),
                        port: label.clone(),
                        endpoint,
                    });
                }
            }
            let Some(check) = &service.health_check else {
                continue;
            };
            for endpoint in index.group_endpoints(service, port) {
                let address = match check.port() {
                    Some(ProbePort::Number(n)) => SocketAddrV4::new(*endpoint.0.ip(), *n),
                    _ => endpoint.0,
                };
                let name = format!("health-check {key} {endpoint}");
                out.insert(
                    name,
                    Target {
                        check: Check::HealthCheck,
                        subject: Subject::Endpoint(key.clone(), endpoint),
                        probe: check.clone(),
                        address: Ok(address),
                        rows: vec![Row {
                            service: key.clone(),
                            port: label.clone(),
                            endpoint,
                        }],
                    },
                );
            }
        }
    }
    out
}

/// The overlay the verdicts of `targets` make: a Pod is ready when all its judged
/// containers are and unready when one is not (as the Ready condition, all containers);
/// while some container has no judgement and none failed, the file's condition holds.
pub fn overlay<'a>(targets: impl IntoIterator<Item = (&'a Target, Verdict)>) -> Health {
    let mut pods: BTreeMap<ObjectKey, (bool, bool)> = BTreeMap::new();
    let mut out = Health::default();
    for (target, verdict) in targets {
        match &target.subject {
            Subject::Pod(pod) => {
                // (some container unhealthy, some container unknown)
                let entry = pods.entry(pod.clone()).or_insert((false, false));
                match verdict {
                    Verdict::Unhealthy => entry.0 = true,
                    Verdict::Unknown => entry.1 = true,
                    Verdict::Healthy => {}
                }
            }
            Subject::Endpoint(service, endpoint) => {
                if let Some(ready) = verdict.ready() {
                    out.endpoints.insert((service.clone(), *endpoint), ready);
                }
            }
        }
    }
    for (pod, (unhealthy, unknown)) in pods {
        if unhealthy {
            out.pods.insert(pod, false);
        } else if !unknown {
            out.pods.insert(pod, true);
        }
    }
    out
}

#[cfg(test)]
mod tests;
