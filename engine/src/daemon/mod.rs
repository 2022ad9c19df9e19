//! `portald run`: watch the directory, reconcile on change and on a resync period, serve the
//! data plane, answer the control socket, stop cleanly on SIGTERM.

pub mod control;
pub mod http;
pub mod kernel_counters;
pub mod metrics;
pub mod outliers;
pub mod prober;
pub mod reconciler;
pub mod systemd;
pub mod watch;

use crate::config::Config;
use crate::exec::Exec;
use control::{Request, Response, Status};
use dataplane::{DataPlane, DataPlaneConfig};
use reconciler::{DataPlaneControl, Reconciler};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;

#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub dir: PathBuf,
    /// The shared allocation record: read and watched, never written.
    pub lock_path: PathBuf,
    /// The node state file (`/var/lib/portald/state.json` by default).
    pub state_path: PathBuf,
    pub config: Config,
    /// Full reconcile at least this often; also repairs drift.
    pub resync: Duration,
    /// Quiet time after a file event before reconciling.
    pub debounce: Duration,
    /// How often portald's own kernel objects are compared with what the last pass left
    /// (one dump by the backend's tool), so that a hand-made change is repaired within
    /// this period rather than at the resync; `None`: only the resync repairs drift.
    pub drift_check: Option<Duration>,
    pub control_socket: PathBuf,
    /// Remove portald's rules on SIGTERM (default: leave them, so a restart does not
    /// disturb traffic beyond the listeners' downtime).
    pub cleanup_on_exit: bool,
    pub dataplane: DataPlaneConfig,
    /// Where `/metrics` is served; `None` serves none.
    pub metrics_bind: Option<SocketAddr>,
    /// Where `/healthz` and `/livez` are served; `None` serves none.
    pub healthz_bind: Option<SocketAddr>,
    /// Where a SIGHUP reads the settings again (the config file and the environment).
    pub settings: Option<reconciler::SettingsSource>,
    /// Readiness probes and health checks in flight at once (`--probe-concurrency`).
    pub probe_concurrency: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("services directory `{0}` is not a directory")]
    NotADirectory(String),
    #[error("cannot watch `{path}`")]
    Watch {
        path: String,
        #[source]
        source: notify::Error,
    },
    #[error("cannot listen on control socket `{path}`")]
    Control {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("control socket path `{path}` is {kind}, not a socket; it is left as it is: remove it or choose another --control-socket")]
    NotASocket { path: String, kind: &'static str },
    #[error("another portald daemon already answers on `{0}`")]
    AlreadyRunning(String),
    #[error("signal handling")]
    Signal(#[source] std::io::Error),
}

enum Trigger {
    Start,
    Files,
    Resync,
    /// SIGHUP (`systemctl reload`, a closed SSH session): read everything again.
    Reload,
    /// The last pass failed; its back-off delay is over.
    Retry,
    /// The drift check saw portald's kernel objects changed.
    Drift,
    /// A probe or health check changed an endpoint's verdict (flips within
    /// `prober::BATCH_WINDOW` come as one).
    Health,
    Request(Request, tokio::sync::oneshot::Sender<Response>),
    Stop,
}

impl Trigger {
    fn name(&self) -> &'static str {
        match self {
            Trigger::Start => "start",
            Trigger::Files => "files",
            Trigger::Resync => "resync",
            Trigger::Reload => "reload",
            Trigger::Retry => "retry",
            Trigger::Drift => "drift",
            Trigger::Health => "health",
            Trigger::Request(..) => "request",
            Trigger::Stop => "stop",
        }
    }
}

/// Applies a directory once, without a daemon: kernel mode only, where the kernel carries
/// the traffic and nothing must stay running. Returns the applied plan and whether a batch
/// was sent.
pub fn apply_once(
    dir: &std::path::Path,
    lock_path: &std::path::Path,
    state_path: &std::path::Path,
    config: &crate::config::Config,
    exec: Arc<dyn Exec>,
) -> Result<(crate::plan::Plan, bool), String> {
    if config.mode != crate::config::Mode::Kernel {
        return Err("a one-shot apply needs --mode kernel: in userspace mode the listeners live in a running daemon".into());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    let dataplane = DataPlane::new(DataPlaneConfig::default());
    let control = Arc::new(DataPlaneControl::new(dataplane, runtime.handle().clone()));
    let status = Arc::new(Mutex::new(Status::default()));
    let mut reconciler = Reconciler::new(
        dir.to_path_buf(),
        lock_path.to_path_buf(),
        config.clone(),
        exec,
        control,
        status.clone(),
    )
    .with_state_file(state_path.to_path_buf());
    let outcome = reconciler.apply_once();
    let diagnostics = status.lock().expect("status lock").diagnostics.clone();
    // What the pass saw was logged by it, once; what it never reached is logged here.
    for d in diagnostics {
        if !reconciler.logged(&d) {
            tracing::warn!("{d}");
        }
    }
    outcome
}

/// Runs until SIGTERM or SIGINT.
pub async fn run(cfg: DaemonConfig, exec: Arc<dyn Exec>) -> Result<(), DaemonError> {
    if !cfg.dir.is_dir() {
        return Err(DaemonError::NotADirectory(cfg.dir.display().to_string()));
    }
    // First, so that a signal during the start is handled, never the default action.
    let mut signals = Signals::new()?;
    let dataplane = DataPlane::new(cfg.dataplane.clone());
    let status = Arc::new(Mutex::new(Status {
        pid: std::process::id(),
        dir: cfg.dir.display().to_string(),
        backend: cfg.config.backend.to_string(),
        mode: cfg.config.mode.to_string(),
        ..Status::default()
    }));
    let control = Arc::new(DataPlaneControl::new(
        dataplane.clone(),
        tokio::runtime::Handle::current(),
    ));
    let (tx, rx) = mpsc::channel::<Trigger>();

    let socket = bind_control_socket(&cfg.control_socket)?;
    let kernel_counters = kernel_counters::KernelCounters {
        exec: exec.clone(),
        status: status.clone(),
    };
    let prober = {
        let tx = tx.clone();
        Arc::new(prober::Prober::new(
            tokio::runtime::Handle::current(),
            cfg.probe_concurrency,
            Arc::new(move || {
                let _ = tx.send(Trigger::Health);
            }),
        ))
    };
    let metrics = metrics::Metrics::new(Some(dataplane.clone()));
    let endpoint_health = metrics.endpoint_health(Arc::downgrade(&prober), Some(dataplane.clone()));
    let metrics = Arc::new(
        metrics
            .with(Box::new(kernel_counters))
            .with(endpoint_health),
    );
    prober.set_metrics(metrics.clone());
    let http_tasks = serve_http(&cfg, &metrics);
    let _watcher = {
        let tx = tx.clone();
        let metrics = metrics.clone();
        // The lock is an input like the files (the daemon never writes it); only the node
        // state, should it be kept inside DIR, is the daemon's own write.
        let own = [cfg.state_path.clone()];
        watch::watch(&cfg.dir, &own, cfg.debounce, move |seen| {
            metrics.file_changed(seen);
            let _ = tx.send(Trigger::Files);
        })
        .map_err(|source| DaemonError::Watch {
            path: cfg.dir.display().to_string(),
            source,
        })?
    };
    // A lock kept outside DIR (`--lock FILE`) is watched on its own.
    let _lock_watcher = if crate::daemon::watch::is_below(&cfg.lock_path, &cfg.dir) {
        None
    } else {
        let tx = tx.clone();
        Some(
            watch::watch_file(&cfg.lock_path, cfg.debounce, move || {
                let _ = tx.send(Trigger::Files);
            })
            .map_err(|source| DaemonError::Watch {
                path: cfg.lock_path.display().to_string(),
                source,
            })?,
        )
    };
    tx.send(Trigger::Start).expect("reconciler alive");

    // The reconciler runs on its own thread: it reads files and runs kernel tools, and
    // opens listeners through the runtime handle.
    let mut reconciler = Reconciler::new(
        cfg.dir.clone(),
        cfg.lock_path.clone(),
        cfg.config.clone(),
        exec,
        control.clone(),
        status.clone(),
    )
    .with_state_file(cfg.state_path.clone());
    reconciler.metrics = metrics;
    reconciler.settings = cfg.settings.clone();
    reconciler.prober = Some(prober.clone());
    let timing = Timing {
        resync: cfg.resync,
        drift_check: cfg.drift_check,
        cleanup_on_exit: cfg.cleanup_on_exit,
    };
    let worker = tokio::task::spawn_blocking(move || reconcile_loop(&mut reconciler, rx, timing));

    let resync_task = {
        let tx = tx.clone();
        let period = cfg.resync;
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(period);
            interval.tick().await;
            loop {
                interval.tick().await;
                if tx.send(Trigger::Resync).is_err() {
                    break;
                }
            }
        })
    };
    // The watchdog is fed while the reconciler's thread lives: a wedged or dead reconciler
    // lets systemd restart the daemon.
    let watchdog_task = systemd::watchdog_period().map(|period| {
        let alive = Arc::downgrade(&status);
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(period);
            loop {
                interval.tick().await;
                let Some(status) = alive.upgrade() else { break };
                // A lock held for a whole period means the reconciler is stuck in it.
                if status.try_lock().is_ok() {
                    systemd::watchdog();
                }
            }
        })
    });
    let server = {
        let tx = tx.clone();
        let status = status.clone();
        let dataplane = dataplane.clone();
        let control = control.clone();
        let prober = prober.clone();
        tokio::spawn(serve_control(
            socket, tx, status, dataplane, control, prober,
        ))
    };

    signals.wait(&tx).await;
    tracing::info!("stopping");
    systemd::stopping();
    // A tool that hangs (or the rest of a pass) must not hold the exit: stop them first,
    // then tell the loop, which lets tools run again for its cleanup.
    crate::exec::interrupt();
    let _ = tx.send(Trigger::Stop);
    let _ = worker.await;
    resync_task.abort();
    if let Some(task) = watchdog_task {
        task.abort();
    }
    server.abort();
    for task in http_tasks {
        task.abort();
    }
    dataplane.shutdown().await;
    // Only a socket: a file put there since is not ours to delete.
    if std::fs::symlink_metadata(&cfg.control_socket)
        .is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
    {
        let _ = std::fs::remove_file(&cfg.control_socket);
    }
    tracing::info!("stopped");
    Ok(())
}

/// Serves the metrics and health addresses on this runtime. As kube-proxy does, an
/// address that cannot be bound (a port taken, an address not yet configured) is logged
/// and tried again every 5 s: the data path matters more than its observation.
fn serve_http(
    cfg: &DaemonConfig,
    metrics: &Arc<metrics::Metrics>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for (what, address, role) in [
        ("metrics", cfg.metrics_bind, http::Role::Metrics),
        ("healthz", cfg.healthz_bind, http::Role::Health),
    ] {
        let Some(address) = address else { continue };
        let metrics = metrics.clone();
        let resync = cfg.resync;
        tasks.push(tokio::spawn(async move {
            let listener = loop {
                match tokio::net::TcpListener::bind(address).await {
                    Ok(listener) => break listener,
                    Err(e) => {
                        tracing::error!(%address, what, error = %e, "cannot listen; trying again in 5 s");
                        tokio::time::sleep(Duration::from_secs(5)).await;
                    }
                }
            };
            tracing::info!(%address, what, "serving HTTP");
            http::serve(listener, role, metrics, resync).await;
        }));
    }
    tasks
}

/// The reconcile loop's timers.
#[derive(Debug, Clone, Copy)]
struct Timing {
    resync: Duration,
    drift_check: Option<Duration>,
    cleanup_on_exit: bool,
}

/// The pause after a drift check that took `cost`: `every`, but at least ten times the
/// cost, so that checking takes at most a tenth of a core. Listing 10,000 kernel-mode
/// portals through nft took 18 s on a loaded 2-core machine: there the checks space out
/// to minutes and the resync period is what bounds a repair.
fn drift_pause(every: Duration, cost: Duration) -> Duration {
    every.max(cost.saturating_mul(10))
}

/// The first retry after a failed pass waits this long; each next one twice as long, up to
/// the resync period.
const FIRST_RETRY: Duration = Duration::from_millis(500);

/// Delays between retries of a failing reconcile: [`FIRST_RETRY`], doubling up to `most`.
#[derive(Debug)]
struct Backoff {
    most: Duration,
    attempt: u32,
}

impl Backoff {
    fn new(most: Duration) -> Self {
        Backoff { most, attempt: 0 }
    }

    /// The next attempt's number (from 1) and how long to wait before it.
    fn next(&mut self) -> (u32, Duration) {
        let doubled = FIRST_RETRY.saturating_mul(1u32 << self.attempt.min(20));
        self.attempt = self.attempt.saturating_add(1);
        (self.attempt, doubled.min(self.most))
    }

    fn reset(&mut self) {
        self.attempt = 0;
    }
}

fn reconcile_loop(reconciler: &mut Reconciler, rx: mpsc::Receiver<Trigger>, timing: Timing) {
    let mut backoff = Backoff::new(timing.resync);
    let mut retry_at: Option<Instant> = None;
    let mut drift_at = timing.drift_check.map(|every| Instant::now() + every);
    // READY=1 only once a pass has been applied and verified; again after each reload.
    let mut ready = false;
    loop {
        let wake = match (retry_at, drift_at) {
            (Some(r), Some(d)) => Some(r.min(d)),
            (r, d) => r.or(d),
        };
        let received = match wake {
            None => rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected),
            Some(at) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
        };
        let first = match received {
            Ok(trigger) => trigger,
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let now = Instant::now();
                if retry_at.is_some_and(|at| at <= now) {
                    retry_at = None;
                    Trigger::Retry
                } else {
                    // While a retry is pending the drift is known: the last pass failed.
                    let checked = retry_at.is_none().then(|| {
                        let started = Instant::now();
                        let drift = reconciler.drift();
                        (drift, started.elapsed())
                    });
                    let cost = checked.as_ref().map_or(Duration::ZERO, |(_, cost)| *cost);
                    drift_at = timing
                        .drift_check
                        .map(|every| Instant::now() + drift_pause(every, cost));
                    match checked.and_then(|(drift, _)| drift) {
                        Some(what) => {
                            tracing::warn!("drift: {what}; reconciling");
                            Trigger::Drift
                        }
                        None => continue,
                    }
                }
            }
        };
        let outcome = handle(reconciler, &rx, first, timing.cleanup_on_exit, &mut ready);
        if let Some(Some(_)) = outcome {
            // The pass has just looked at the kernel: no need to look again at once.
            let next = timing.drift_check.map(|every| Instant::now() + every);
            drift_at = drift_at.max(next);
        }
        match outcome {
            None => return,
            Some(None) => {}
            Some(Some(true)) => {
                backoff.reset();
                retry_at = None;
            }
            Some(Some(false)) => {
                let (attempt, delay) = backoff.next();
                tracing::warn!(
                    attempt,
                    delay_ms = delay.as_millis() as u64,
                    "reconcile failed; retry {attempt} in {delay:?}"
                );
                retry_at = Some(Instant::now() + delay);
            }
        }
    }
}

/// Handles `first` and every trigger already waiting: `None` when the daemon stops, else
/// whether the last reconcile it ran succeeded (`None` if it ran none).
fn handle(
    reconciler: &mut Reconciler,
    rx: &mpsc::Receiver<Trigger>,
    first: Trigger,
    cleanup_on_exit: bool,
    ready: &mut bool,
) -> Option<Option<bool>> {
    // Coalesce a burst of hints into one pass; answer every request.
    let mut triggers = vec![first];
    while let Ok(more) = rx.try_recv() {
        triggers.push(more);
    }
    if triggers.iter().any(|t| matches!(t, Trigger::Stop)) {
        // Tools were stopped for a prompt exit; the cleanup needs them.
        crate::exec::resume();
        if cleanup_on_exit {
            match reconciler.cleanup_kernel() {
                Ok(_) => tracing::info!("removed portald's kernel rules"),
                Err(e) => tracing::error!("cleanup on exit failed: {e}"),
            }
        }
        for t in triggers {
            if let Trigger::Request(_, reply) = t {
                let _ = reply.send(Response {
                    ok: false,
                    error: Some("the daemon is stopping".into()),
                    ..Response::default()
                });
            }
        }
        return None;
    }
    let mut reconciled = None;
    let mut hinted = None;
    for trigger in triggers {
        let name = trigger.name();
        match trigger {
            Trigger::Request(Request::ApplyPlan { plan }, reply) => {
                let answer = match reconciler.apply_saved(&plan) {
                    Ok(text) => Response {
                        ok: true,
                        plan_text: Some(text),
                        ..Response::default()
                    },
                    Err(e) => Response {
                        ok: false,
                        error: Some(e),
                        ..Response::default()
                    },
                };
                let _ = reply.send(answer);
            }
            Trigger::Request(Request::Switch { backend, mode }, reply) => {
                let (from_backend, from_mode) = reconciler.switch(backend, mode);
                let result = reconciler.reconcile("switch");
                let settled = if result.ok {
                    result.clone()
                } else {
                    // Stay where traffic flows: back to the settings that worked.
                    reconciler.switch(Some(from_backend), Some(from_mode));
                    reconciler.reconcile("switch back")
                };
                let _ = reply.send(summary_response(
                    &result,
                    &format!("Switched from backend {from_backend} mode {from_mode}. "),
                ));
                reconciled = Some(settled);
            }
            Trigger::Request(_, reply) => {
                let result = reconciled
                    .get_or_insert_with(|| reconciler.reconcile("request"))
                    .clone();
                let _ = reply.send(summary_response(&result, ""));
            }
            _ => hinted = Some(name),
        }
    }
    if let (Some(name), None) = (hinted, &reconciled) {
        if name == "reload" {
            systemd::reloading();
            *ready = false;
            match reconciler.reload_settings() {
                Ok(changed) if changed.is_empty() => tracing::info!("reload: settings unchanged"),
                Ok(changed) => {
                    let changed = crate::log_fields::texts(&changed);
                    tracing::info!(
                        changed = crate::log_fields::list(&changed),
                        "reload: new settings taken"
                    )
                }
                Err(e) => tracing::error!(
                    error = %crate::escape::Text(&e),
                    "reload: cannot read the settings; the running ones stay"
                ),
            }
        }
        let result = reconciler.reconcile(name);
        tell_service_manager(reconciler, result.ok, ready);
        reconciled = Some(result);
    }
    Some(reconciled.map(|r| r.ok))
}

/// After a pass: `READY=1` with the status line the first time a pass succeeded (since the
/// start or the last reload), else the status line alone.
fn tell_service_manager(reconciler: &Reconciler, ok: bool, ready: &mut bool) {
    let status = reconciler.status.lock().expect("status lock");
    if ok && !*ready {
        *ready = true;
        systemd::ready(&status);
        tracing::info!(
            backend = %status.backend,
            mode = %status.mode,
            dir = %status.dir,
            status = %systemd::status_line(&status),
            "ready"
        );
    } else {
        systemd::status(&status);
    }
}

/// The answer to a request that ran a reconcile: its result and the plan's summary line.
fn summary_response(result: &control::ReconcileResult, prefix: &str) -> Response {
    Response {
        ok: result.ok,
        error: result.error.clone(),
        plan_text: Some(format!(
            "{prefix}Plan: {} to add, {} to change, {} to remove.",
            result.summary.add, result.summary.change, result.summary.remove
        )),
        ..Response::default()
    }
}

/// Binds the control socket with mode 0600 from its first instant, owner only: it can
/// reconcile and shows the whole configuration.
///
/// Binding at `path` and then `chmod`ing leaves a window in which the socket has the
/// umask's mode (0777 under `umask 000`); setting the process umask around `bind` would
/// race with the runtime's other threads, which also create files. So the socket is bound
/// inside a fresh directory of mode 0700 next to `path` (nobody else can reach it there),
/// set to 0600, and renamed into place, which is atomic and keeps the bound socket.
/// A stale socket at `path` (a daemon that was killed) is replaced by that rename;
/// anything else there (a regular file, a directory, a symlink) is never removed: it is
/// an error naming it.
fn bind_control_socket(path: &std::path::Path) -> Result<UnixListener, DaemonError> {
    use std::os::unix::fs::{DirBuilderExt, FileTypeExt};
    let shown = path.display().to_string();
    let failed = |source| DaemonError::Control {
        path: shown.clone(),
        source,
    };
    let refuse_other = || -> Result<(), DaemonError> {
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(DaemonError::AlreadyRunning(shown.clone()));
                }
                Ok(())
            }
            Ok(meta) => Err(DaemonError::NotASocket {
                path: shown.clone(),
                kind: file_kind(&meta.file_type()),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(failed(e)),
        }
    };
    refuse_other()?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(failed)?;
    let name = path
        .file_name()
        .ok_or_else(|| failed(std::io::Error::other("the path has no file name")))?;
    let private = parent.join(format!(
        ".{}.{}.bind",
        name.to_string_lossy(),
        std::process::id()
    ));
    // Left over by a daemon of the same pid that was killed while binding (a container
    // restart reuses pids): it is ours.
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&private)
        .map_err(failed)?;
    let staged = private.join("s");
    let bound = (|| {
        let listener = UnixListener::bind(&staged)?;
        std::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o600))?;
        Ok(listener)
    })()
    .map_err(failed)
    .and_then(|listener| {
        // Looked at again just before the rename: what appeared meanwhile is kept too.
        refuse_other()?;
        std::fs::rename(&staged, path).map_err(failed)?;
        Ok(listener)
    });
    let _ = std::fs::remove_dir_all(&private);
    bound
}

/// What a file type is, in words, for an error.
fn file_kind(kind: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_dir() {
        "a directory"
    } else if kind.is_symlink() {
        "a symlink"
    } else if kind.is_file() {
        "a regular file"
    } else if kind.is_fifo() {
        "a fifo"
    } else {
        "not a socket"
    }
}

async fn serve_control(
    socket: UnixListener,
    tx: mpsc::Sender<Trigger>,
    status: Arc<Mutex<Status>>,
    dataplane: DataPlane,
    control: Arc<DataPlaneControl>,
    prober: Arc<prober::Prober>,
) {
    // Out of descriptors, a failed accept leaves the connection queued and the socket
    // ready: retrying at once would spin a core and log without end. Back off instead, and
    // log once per run of failures.
    let mut backoff = dataplane::Backoff::new();
    let mut failing = dataplane::Episode::default();
    loop {
        let stream = match socket.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                match failing.failed() {
                    Some(dataplane::EpisodeLog::Started) => {
                        tracing::warn!(error = %e, "control socket: accept failed; backing off");
                    }
                    Some(dataplane::EpisodeLog::Continues { failures, elapsed }) => {
                        tracing::warn!(error = %e, failures, elapsed_ms = crate::log_fields::millis(elapsed), "control socket: accepts still failing");
                    }
                    None => {}
                }
                tokio::time::sleep(backoff.next_wait()).await;
                continue;
            }
        };
        if let Some((failures, lasted)) = failing.ended() {
            backoff.reset();
            tracing::warn!(
                failures,
                lasted_ms = crate::log_fields::millis(lasted),
                "control socket: accept recovered"
            );
        }
        let tx = tx.clone();
        let status = status.clone();
        let dataplane = dataplane.clone();
        let control = control.clone();
        let prober = prober.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            if BufReader::new(read).read_line(&mut line).await.is_err() {
                return;
            }
            let response = match serde_json::from_str::<Request>(&line) {
                Err(e) => Response {
                    ok: false,
                    error: Some(format!("unreadable request: {e}")),
                    ..Response::default()
                },
                Ok(Request::Status) => {
                    let mut snapshot = status.lock().expect("status lock").clone();
                    snapshot.listeners = Reconciler::listener_views(&dataplane);
                    snapshot.open = control
                        .listeners()
                        .into_iter()
                        .map(|(key, listener)| crate::listeners::ListenerEntry { key, listener })
                        .collect();
                    // Every check's rows, in the order the field promises.
                    snapshot.endpoint_health.extend(prober.views());
                    snapshot
                        .endpoint_health
                        .extend(outliers::rows(&dataplane.endpoint_health()));
                    snapshot.endpoint_health.sort_by(|a, b| {
                        (&a.service, &a.port, &a.endpoint, &a.check).cmp(&(
                            &b.service,
                            &b.port,
                            &b.endpoint,
                            &b.check,
                        ))
                    });
                    Response {
                        ok: true,
                        status: Some(Box::new(snapshot)),
                        ..Response::default()
                    }
                }
                Ok(request) => {
                    let (reply, answer) = tokio::sync::oneshot::channel();
                    if tx.send(Trigger::Request(request, reply)).is_err() {
                        return;
                    }
                    answer.await.unwrap_or_else(|_| Response {
                        ok: false,
                        error: Some("the daemon stopped".into()),
                        ..Response::default()
                    })
                }
            };
            let mut text = serde_json::to_string(&response).expect("response serializes");
            text.push('\n');
            let _ = write.write_all(text.as_bytes()).await;
        });
    }
}

/// The signals the daemon answers. SIGHUP, whose default is to end the process (and leave
/// every VIP redirected to closed ports), asks for a reload instead: the directory and the
/// kernel are read again and reconciled.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Signals, DaemonError> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate()).map_err(DaemonError::Signal)?,
            int: signal(SignalKind::interrupt()).map_err(DaemonError::Signal)?,
            hup: signal(SignalKind::hangup()).map_err(DaemonError::Signal)?,
        })
    }

    /// Returns on SIGTERM or SIGINT; turns each SIGHUP into a reload.
    async fn wait(&mut self, tx: &mpsc::Sender<Trigger>) {
        loop {
            tokio::select! {
                _ = self.term.recv() => return,
                _ = self.int.recv() => return,
                _ = self.hup.recv() => {
                    tracing::info!("SIGHUP: reloading");
                    let _ = tx.send(Trigger::Reload);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_costly_drift_check_waits_ten_times_its_cost() {
        let every = Duration::from_secs(2);
        let ms = Duration::from_millis;
        assert_eq!(drift_pause(every, ms(15)), every);
        assert_eq!(drift_pause(every, ms(800)), ms(8000));
        assert_eq!(drift_pause(every, ms(18_439)), ms(184_390));
    }

    #[test]
    fn retries_wait_half_a_second_doubling_up_to_the_resync_period_and_start_over_on_success() {
        let mut backoff = Backoff::new(Duration::from_secs(5));
        let delays: Vec<(u32, u64)> = (0..6)
            .map(|_| backoff.next())
            .map(|(n, d)| (n, d.as_millis() as u64))
            .collect();
        assert_eq!(
            delays,
            [
                (1, 500),
                (2, 1000),
                (3, 2000),
                (4, 4000),
                (5, 5000),
                (6, 5000)
            ]
        );
        backoff.reset();
        assert_eq!(backoff.next(), (1, Duration::from_millis(500)));
        // Many failures in a row neither overflow nor exceed the period.
        let mut long = Backoff::new(Duration::from_secs(30));
        let last = (0..100).map(|_| long.next()).last().unwrap();
        assert_eq!(last, (100, Duration::from_secs(30)));
    }
}
