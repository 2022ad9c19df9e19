//! The local control socket: one JSON request per line, one JSON response per line.

use crate::compile::ServiceView;
use crate::diagnostics::Diagnostic;
use crate::plan::{Plan, Summary};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// Default place of the control socket.
pub const DEFAULT_SOCKET: &str = "/run/portald/portald.sock";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "cmd")]
pub enum Request {
    /// The daemon's state.
    Status,
    /// Reconcile now (what `portald apply DIR` asks for).
    Reconcile,
    /// Apply a saved plan, unless the live state changed since it was made.
    ApplyPlan { plan: Box<Plan> },
    /// Switch the running daemon to another backend and/or mode, live: the new state is
    /// built before the old one goes, and listeners stay up until the kernel no longer
    /// sends traffic to them.
    Switch {
        backend: Option<crate::config::Backend>,
        mode: Option<crate::config::Mode>,
    },
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status: Option<Box<Status>>,
    /// The plan a reconcile or apply executed, as text.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub plan_text: Option<String>,
}

/// One listener as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ListenerView {
    pub protocol: planners::Protocol,
    pub port: u16,
    pub name: String,
    pub endpoints: Vec<String>,
    pub affinity_seconds: Option<u64>,
    pub active: usize,
    pub accepted: u64,
    pub per_endpoint: std::collections::BTreeMap<String, u64>,
    pub failures: u64,
    pub rejected: u64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ReconcileResult {
    /// Seconds since the Unix epoch.
    pub at: u64,
    pub ok: bool,
    pub summary: Summary,
    pub batch_sent: bool,
    pub error: Option<String>,
    /// What triggered it: `start`, `files`, `resync`, `request`.
    pub trigger: String,
}

/// The daemon's state for `portald status`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Status {
    pub pid: u32,
    pub dir: String,
    pub backend: String,
    pub mode: String,
    pub reconciles: u64,
    pub services: Vec<ServiceView>,
    pub listeners: Vec<ListenerView>,
    /// The listeners as the reconciler opened them (what `plan` diffs against).
    pub open: Vec<crate::listeners::ListenerEntry>,
    pub last_reconcile: Option<ReconcileResult>,
    pub diagnostics: Vec<Diagnostic>,
    /// Services held by `--require-lock` (`ns/name`): no lock entry, so no VIP.
    #[serde(default)]
    pub held: Vec<String>,
    /// Every endpoint portald checks itself (readiness probes, health checks, passive
    /// outlier detection), sorted by service, port, endpoint and check.
    #[serde(default)]
    pub endpoint_health: Vec<EndpointHealthView>,
}

/// The health of one endpoint as one of portald's checks judges it, for `portald status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct EndpointHealthView {
    /// The Service, `namespace/name`.
    pub service: String,
    /// The service port, as the plan names it (`http/TCP`).
    pub port: String,
    /// The endpoint, `ip:port`.
    pub endpoint: String,
    /// What judges it: `readiness-probe` (a Pod container's `readinessProbe`),
    /// `health-check` (the Service's `portald.io/health-check` annotation) or
    /// `outlier-detection` (failed dials seen by the userspace proxy).
    pub check: String,
    /// `healthy`, `unhealthy`, `unknown` (no result yet: the file's own condition holds) or
    /// `ejected` (outlier detection took it out of the balancer for a while).
    pub state: String,
    /// When it entered `state`, seconds since the Unix epoch.
    pub since: u64,
    /// Why, in words: the last failure (`HTTP 500 from GET http://10.0.0.2:8080/healthz`,
    /// `connection refused`), or `None` while healthy.
    pub reason: Option<String>,
    /// How it is checked (`httpGet :8080/healthz every 10s, timeout 1s, 3 failures out`).
    pub detail: String,
}

/// Version of the `portald status --json` document ([`StatusReport`]); raised when a field
/// changes meaning or goes away (new fields may appear within a version).
pub const STATUS_FORMAT_VERSION: u32 = 1;

/// What `portald status --json` prints: the daemon's [`Status`] with its format version.
/// Problems are in `diagnostics` (each with its file, line, object and field: invalid
/// files, conflicts with foreign rules, held services) and in `last_reconcile.error` (the
/// kernel's refusal of the last batch, as the daemon received it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct StatusReport {
    /// [`STATUS_FORMAT_VERSION`].
    pub format_version: u32,
    #[serde(flatten)]
    pub status: Status,
}

impl StatusReport {
    pub fn new(status: Status) -> Self {
        StatusReport {
            format_version: STATUS_FORMAT_VERSION,
            status,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("no portald daemon is running (nothing answers on `{path}`); start one with `portald run DIR`")]
    NotRunning {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The socket is there but this user may not connect (it is root's, mode 0600): a
    /// daemon may well be running.
    #[error("this user may not connect to control socket `{path}`, so whether a daemon runs is unknown (the daemon makes it root's, mode 0600: run as root)")]
    PermissionDenied {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket `{path}` failed")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket `{path}` answered something unreadable: {message}")]
    Protocol { path: String, message: String },
}

/// What a failed `connect(2)` on the socket means: EACCES (or EPERM) is a socket this user
/// may not use, not an absent daemon; anything else (ENOENT, ECONNREFUSED) is no daemon.
fn connect_error(path: &str, source: std::io::Error) -> ControlError {
    let path = path.to_string();
    match source.kind() {
        std::io::ErrorKind::PermissionDenied => ControlError::PermissionDenied { path, source },
        _ => ControlError::NotRunning { path, source },
    }
}

/// Sends one request to the daemon and waits for its answer.
pub fn request(
    path: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<Response, ControlError> {
    let shown = path.display().to_string();
    let mut stream = UnixStream::connect(path).map_err(|source| connect_error(&shown, source))?;
    let io = |source| ControlError::Io {
        path: shown.clone(),
        source,
    };
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    let mut line = serde_json::to_string(request).expect("request serializes");
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer).map_err(io)?;
    serde_json::from_str(&answer).map_err(|e| ControlError::Protocol {
        path: shown.clone(),
        message: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_socket_the_user_may_not_connect_to_is_a_permission_problem_not_an_absent_daemon() {
        const EACCES: i32 = 13;
        const ENOENT: i32 = 2;
        const ECONNREFUSED: i32 = 111;
        let denied = connect_error("/run/p.sock", std::io::Error::from_raw_os_error(EACCES));
        assert!(matches!(denied, ControlError::PermissionDenied { .. }));
        assert!(denied
            .to_string()
            .starts_with("this user may not connect to control socket `/run/p.sock`"));
        for errno in [ENOENT, ECONNREFUSED] {
            let absent = connect_error("/run/p.sock", std::io::Error::from_raw_os_error(errno));
            assert!(matches!(absent, ControlError::NotRunning { .. }), "{errno}");
        }
    }
}
