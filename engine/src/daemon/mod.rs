//! `portald run`: watch the directory, reconcile on change and on a resync period, serve the
//! data plane, answer the control socket, stop cleanly on SIGTERM.

pub mod control;
pub mod http;
pub mod kernel_counters;
pub mod metrics;
pub mod reconciler;
pub mod systemd;
pub mod watch;

use crate::config::Config;
use crate::dataplane::{DataPlane, DataPlaneConfig};
use crate::exec::Exec;
use control::{Request, Response, Status};
use reconciler::{DataPlaneControl, Reconciler};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;
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
    pub control_socket: PathBuf,
    /// Remove portald's rules on SIGTERM (default: leave them, so a restart does not
    /// disturb traffic beyond the listeners' downtime).
    pub cleanup_on_exit: bool,
    pub dataplane: DataPlaneConfig,
    /// Where `/metrics` is served; `None` serves none.
    pub metrics_bind: Option<SocketAddr>,
    /// Where `/healthz` and `/livez` are served; `None` serves none.
    pub healthz_bind: Option<SocketAddr>,
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
    let dataplane = DataPlane::new(crate::dataplane::DataPlaneConfig::default());
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
    let metrics =
        Arc::new(metrics::Metrics::new(Some(dataplane.clone())).with(Box::new(kernel_counters)));
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
    let cleanup_on_exit = cfg.cleanup_on_exit;
    let worker =
        tokio::task::spawn_blocking(move || reconcile_loop(&mut reconciler, rx, cleanup_on_exit));

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
        tokio::spawn(serve_control(socket, tx, status, dataplane, control))
    };

    signals.wait(&tx).await;
    tracing::info!("stopping");
    systemd::stopping();
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
    let _ = std::fs::remove_file(&cfg.control_socket);
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

fn reconcile_loop(reconciler: &mut Reconciler, rx: mpsc::Receiver<Trigger>, cleanup_on_exit: bool) {
    // READY=1 only once a pass has been applied and verified; again after each reload.
    let mut ready = false;
    while let Ok(first) = rx.recv() {
        // Coalesce a burst of hints into one pass; answer every request.
        let mut triggers = vec![first];
        while let Ok(more) = rx.try_recv() {
            triggers.push(more);
        }
        if triggers.iter().any(|t| matches!(t, Trigger::Stop)) {
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
            return;
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
                    if !result.ok {
                        // Stay where traffic flows: back to the settings that worked.
                        reconciler.switch(Some(from_backend), Some(from_mode));
                        reconciler.reconcile("switch back");
                    }
                    let _ = reply.send(summary_response(
                        &result,
                        &format!("Switched from backend {from_backend} mode {from_mode}. "),
                    ));
                    reconciled = Some(result);
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
                ready = false;
            }
            let result = reconciler.reconcile(name);
            tell_service_manager(reconciler, result.ok, &mut ready);
            if !result.ok {
                // Try again soon rather than waiting for the resync period.
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
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

fn bind_control_socket(path: &std::path::Path) -> Result<UnixListener, DaemonError> {
    let shown = path.display().to_string();
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(DaemonError::AlreadyRunning(shown));
        }
        // A socket left by a daemon that was killed.
        let _ = std::fs::remove_file(path);
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|source| DaemonError::Control {
            path: shown.clone(),
            source,
        })?;
    }
    let listener = UnixListener::bind(path).map_err(|source| DaemonError::Control {
        path: shown.clone(),
        source,
    })?;
    // Root only: the socket can reconcile and shows the whole configuration.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        DaemonError::Control {
            path: shown,
            source,
        }
    })?;
    Ok(listener)
}

async fn serve_control(
    socket: UnixListener,
    tx: mpsc::Sender<Trigger>,
    status: Arc<Mutex<Status>>,
    dataplane: DataPlane,
    control: Arc<DataPlaneControl>,
) {
    // Out of descriptors, a failed accept leaves the connection queued and the socket
    // ready: retrying at once would spin a core and log without end. Back off instead, and
    // log once per run of failures.
    let mut backoff = crate::dataplane::Backoff::new();
    let mut failing = crate::dataplane::Episode::default();
    loop {
        let stream = match socket.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                match failing.failed() {
                    Some(crate::dataplane::EpisodeLog::Started) => {
                        tracing::warn!(error = %e, "control socket: accept failed; backing off");
                    }
                    Some(crate::dataplane::EpisodeLog::Continues { failures, elapsed }) => {
                        tracing::warn!(error = %e, failures, elapsed = ?elapsed, "control socket: accepts still failing");
                    }
                    None => {}
                }
                tokio::time::sleep(backoff.next_wait()).await;
                continue;
            }
        };
        if let Some((failures, lasted)) = failing.ended() {
            backoff.reset();
            tracing::warn!(failures, lasted = ?lasted, "control socket: accept recovered");
        }
        let tx = tx.clone();
        let status = status.clone();
        let dataplane = dataplane.clone();
        let control = control.clone();
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
                        .map(|(key, listener)| crate::observe::ListenerEntry { key, listener })
                        .collect();
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
