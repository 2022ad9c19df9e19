//! The level-triggered reconciler: every trigger recomputes from the whole directory and the
//! whole live state, applies the plan, and verifies.

use super::control::{ListenerView, ReconcileResult, Status};
use crate::allocate::Lock;
use crate::apply::{apply, verify, ListenerControl};
use crate::compile::{Intent, Listener, ListenerKey};
use crate::config::Config;
use crate::dataplane::{Backends, DataPlane, ListenerSpec};
use crate::exec::Exec;
use crate::load::{load_dir, ParsedFile};
use crate::observe::{observe, observe_other, Observed};
use crate::pipeline;
use crate::plan::render::plan_text;
use crate::plan::Plan;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Opens and closes listeners in the data plane, and remembers what it opened.
pub struct DataPlaneControl {
    dataplane: DataPlane,
    runtime: tokio::runtime::Handle,
    open: Mutex<BTreeMap<ListenerKey, Listener>>,
}

impl DataPlaneControl {
    pub fn new(dataplane: DataPlane, runtime: tokio::runtime::Handle) -> Self {
        DataPlaneControl {
            dataplane,
            runtime,
            open: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn listeners(&self) -> BTreeMap<ListenerKey, Listener> {
        self.open.lock().expect("listener map lock").clone()
    }

    fn backends(listener: &Listener) -> Backends {
        Backends {
            endpoints: listener
                .endpoints
                .iter()
                .map(|e| SocketAddr::V4(e.0))
                .collect(),
            affinity: listener
                .affinity_seconds
                .map(|s| Duration::from_secs(u64::from(s))),
        }
    }
}

impl ListenerControl for DataPlaneControl {
    fn open(&self, key: ListenerKey, listener: &Listener) -> Result<(), String> {
        let spec = ListenerSpec {
            protocol: key.protocol,
            port: key.port.0,
            name: listener.name.clone(),
            backends: Self::backends(listener),
        };
        self.runtime
            .block_on(self.dataplane.open(spec))
            .map_err(|e| error_chain(&e))?;
        self.open
            .lock()
            .expect("listener map lock")
            .insert(key, listener.clone());
        Ok(())
    }

    fn update(&self, key: ListenerKey, listener: &Listener) -> Result<(), String> {
        self.dataplane
            .update(key.protocol, key.port.0, Self::backends(listener))
            .map_err(|e| error_chain(&e))?;
        self.open
            .lock()
            .expect("listener map lock")
            .insert(key, listener.clone());
        Ok(())
    }

    fn close(&self, key: ListenerKey) -> Result<(), String> {
        self.runtime
            .block_on(self.dataplane.close(key.protocol, key.port.0))
            .map_err(|e| error_chain(&e))?;
        self.open.lock().expect("listener map lock").remove(&key);
        Ok(())
    }
}

/// An error and its sources on one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    text
}

pub struct Reconciler {
    pub dir: PathBuf,
    pub lock_path: PathBuf,
    pub config: Config,
    pub exec: Arc<dyn Exec>,
    pub control: Arc<DataPlaneControl>,
    pub status: Arc<Mutex<Status>>,
    /// Last version of each file that had no error: what stays in force while it is broken.
    last_good: BTreeMap<String, ParsedFile>,
    /// The lock, when the directory cannot be written (a read-only ConfigMap mount).
    lock_in_memory: Option<Lock>,
    last_intent: Intent,
    /// What portald owned in the kernel (rules and strays) after the last successful pass,
    /// and through which backend: the reference of [`Reconciler::drift`]. `None` when the
    /// last pass failed or a saved plan was applied since.
    settled: Option<(crate::config::Backend, planners::Live)>,
}

impl Reconciler {
    pub fn new(
        dir: PathBuf,
        lock_path: PathBuf,
        config: Config,
        exec: Arc<dyn Exec>,
        control: Arc<DataPlaneControl>,
        status: Arc<Mutex<Status>>,
    ) -> Self {
        Reconciler {
            dir,
            lock_path,
            config,
            exec,
            control,
            status,
            last_good: BTreeMap::new(),
            lock_in_memory: None,
            last_intent: Intent::default(),
            settled: None,
        }
    }

    /// One full pass; the result also lands in the status.
    pub fn reconcile(&mut self, trigger: &str) -> ReconcileResult {
        let started = std::time::Instant::now();
        let result = match self.pass() {
            Ok((plan, batch_sent)) => {
                if !plan.is_empty() {
                    tracing::info!(trigger, summary = ?plan.summary, "applied:\n{}", plan_text(&plan));
                }
                ReconcileResult {
                    at: now(),
                    ok: true,
                    summary: plan.summary,
                    batch_sent,
                    error: None,
                    trigger: trigger.to_string(),
                }
            }
            Err(message) => {
                self.settled = None;
                tracing::error!(trigger, "reconcile failed: {message}");
                ReconcileResult {
                    at: now(),
                    ok: false,
                    error: Some(message),
                    trigger: trigger.to_string(),
                    ..ReconcileResult::default()
                }
            }
        };
        tracing::debug!(
            trigger,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "reconciled"
        );
        let mut status = self.status.lock().expect("status lock");
        status.reconciles += 1;
        status.last_reconcile = Some(result.clone());
        status.services = self.last_intent.services.clone();
        result
    }

    /// Takes another backend and/or mode for the next passes; returns the previous ones.
    pub fn switch(
        &mut self,
        backend: Option<crate::config::Backend>,
        mode: Option<crate::config::Mode>,
    ) -> (crate::config::Backend, crate::config::Mode) {
        let previous = (self.config.backend, self.config.mode);
        if let Some(backend) = backend {
            self.config.backend = backend;
        }
        if let Some(mode) = mode {
            self.config.mode = mode;
        }
        let mut status = self.status.lock().expect("status lock");
        status.backend = self.config.backend.to_string();
        status.mode = self.config.mode.to_string();
        previous
    }

    /// One pass without a daemon around it (a one-shot `apply` in kernel mode, where no
    /// listener has to outlive the command): the plan it applied, or why it failed.
    pub fn apply_once(&mut self) -> Result<(Plan, bool), String> {
        self.pass()
    }

    /// Files as they are now, with each broken file replaced by its last good version.
    fn load(&mut self) -> Result<Vec<ParsedFile>, String> {
        let files = load_dir(&self.dir).map_err(|e| error_chain(&e))?;
        let mut diagnostics = Vec::new();
        let mut merged = Vec::new();
        let present: std::collections::BTreeSet<String> =
            files.iter().map(|f| f.path.clone()).collect();
        self.last_good.retain(|path, _| present.contains(path));
        for file in files {
            diagnostics.extend(file.diagnostics.iter().cloned());
            if file.has_errors() {
                match self.last_good.get(&file.path) {
                    Some(good) => {
                        tracing::warn!(file = %file.path, "file has errors; its last good version stays in force");
                        merged.push(ParsedFile {
                            diagnostics: Vec::new(),
                            ..good.clone()
                        });
                    }
                    None => merged.push(file),
                }
            } else {
                self.last_good.insert(file.path.clone(), file.clone());
                merged.push(file);
            }
        }
        self.status.lock().expect("status lock").diagnostics = diagnostics;
        Ok(merged)
    }

    fn lock(&self) -> Result<Lock, String> {
        if let Some(lock) = &self.lock_in_memory {
            return Ok(lock.clone());
        }
        Lock::read(&self.lock_path).map_err(|e| error_chain(&e))
    }

    fn observe(&self) -> Result<Observed, String> {
        let mut observed = observe(
            self.config.backend,
            self.exec.as_ref(),
            self.control.listeners(),
        )
        .map_err(|e| error_chain(&e))?;
        observed.other = observe_other(self.config.backend, self.exec.as_ref());
        Ok(observed)
    }

    fn pass(&mut self) -> Result<(Plan, bool), String> {
        let files = self.load()?;
        let lock = self.lock()?;
        if self.config.mode == crate::config::Mode::Kernel {
            // Links come and go (a bridge added for new containers): read them every pass.
            self.config.local_networks = crate::observe::routes::local_networks();
        }
        let observed = self.observe()?;
        let outcome = pipeline::run(&files, &lock, &observed, &self.config, true);
        {
            let mut status = self.status.lock().expect("status lock");
            for d in &outcome.allocation.diagnostics {
                if !status.diagnostics.contains(d) {
                    status.diagnostics.push(d.clone());
                }
            }
        }
        self.last_intent = outcome.intent.clone();
        let report = apply(&outcome.plan, self.exec.as_ref(), self.control.as_ref())
            .map_err(|e| error_chain(&e))?;
        // An empty plan was made against a live state that already equals the intent: looking
        // again would only repeat the observation (seconds with 10,000 kernel-mode portals).
        let settled = if outcome.plan.is_empty() {
            observed.live
        } else {
            self.verify(&outcome.intent)?
        };
        self.settled = Some((self.config.backend, settled));
        self.save_lock(&lock, &outcome.allocation.lock);
        Ok((outcome.plan, report.batch_sent))
    }

    /// Checks that live equals `intent`; returns what was observed.
    fn verify(&self, intent: &Intent) -> Result<planners::Live, String> {
        let after = self.observe()?;
        verify(&intent.nat, &after.live.owned, &after.live.stray).map_err(|e| error_chain(&e))?;
        if let Some((other, live)) = &after.other {
            return Err(format!(
                "after apply, portald still owns {} rule(s) and {} stray(s) through {other}",
                live.owned.rules.len() + live.owned.scaffold.len(),
                live.stray.len()
            ));
        }
        if after.listeners != intent.listeners {
            return Err("after apply, the open listeners differ from the intent".into());
        }
        Ok(after.live)
    }

    /// Whether portald's own kernel objects (its rules, and strays inside its chains or
    /// table) differ from what the last successful pass left: a difference, in words, or
    /// `None` when they are the same or no pass has settled yet. One dump by the backend's
    /// tool and its parse; foreign rules are not compared (others change them freely).
    pub fn drift(&self) -> Option<String> {
        let (backend, settled) = self.settled.as_ref()?;
        if *backend != self.config.backend {
            return None;
        }
        let started = std::time::Instant::now();
        let dialect = crate::observe::dialect(*backend);
        let dump = match self.exec.run(&dialect.observe_command(), None) {
            Ok(out) => out.stdout,
            Err(e) => return Some(format!("cannot read the live state: {}", error_chain(&e))),
        };
        let live = match dialect.parse_live(&dump) {
            Ok(live) => live,
            Err(e) => return Some(format!("cannot parse the live state: {}", error_chain(&e))),
        };
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            rules = live.owned.rules.len(),
            "drift check"
        );
        if live.owned != settled.owned {
            Some("portald's rules changed".into())
        } else if live.stray != settled.stray {
            Some("a rule that is not portald's appeared in its chains".into())
        } else {
            None
        }
    }

    fn save_lock(&mut self, old: &Lock, new: &Lock) {
        if old == new {
            return;
        }
        match new.write(&self.lock_path) {
            Ok(()) => self.lock_in_memory = None,
            Err(e) => {
                tracing::warn!("{}; allocations are kept in memory only", error_chain(&e));
                self.lock_in_memory = Some(new.clone());
            }
        }
    }

    /// Applies a plan made elsewhere, unless what it was made against has changed.
    pub fn apply_saved(&mut self, plan: &Plan) -> Result<String, String> {
        self.settled = None;
        let observed = self.observe()?;
        if observed.live.owned != plan.observed {
            return Err("the plan is stale: the live state changed since it was made; run `portald plan` again".into());
        }
        if plan.backend != self.config.backend || plan.mode != self.config.mode {
            return Err(format!(
                "the plan is for backend {} mode {}, the daemon runs backend {} mode {}",
                plan.backend, plan.mode, self.config.backend, self.config.mode
            ));
        }
        apply(plan, self.exec.as_ref(), self.control.as_ref()).map_err(|e| error_chain(&e))?;
        Ok(plan_text(plan))
    }

    /// Removes everything portald owns in the kernel (on exit with `--cleanup-on-exit`).
    pub fn cleanup_kernel(&self) -> Result<Plan, String> {
        cleanup(self.config.backend, self.config.mode, self.exec.as_ref())
    }

    /// The daemon's listeners, for `status`.
    pub fn listener_views(dataplane: &DataPlane) -> Vec<ListenerView> {
        dataplane
            .status()
            .into_iter()
            .map(|s| ListenerView {
                protocol: s.protocol,
                port: s.port,
                name: s.name,
                endpoints: s.endpoints.iter().map(ToString::to_string).collect(),
                affinity_seconds: s.affinity.map(|d| d.as_secs()),
                active: s.active,
                accepted: s.accepted,
                per_endpoint: s
                    .per_endpoint
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .collect(),
                failures: s.failures,
                rejected: s.rejected,
            })
            .collect()
    }
}

/// Plans and applies the removal of everything portald owns in the kernel, through the
/// given backend and, if it owns anything there, the other one too.
pub fn cleanup(
    backend: crate::config::Backend,
    mode: crate::config::Mode,
    exec: &dyn Exec,
) -> Result<Plan, String> {
    let observed = observe(backend, exec, BTreeMap::new()).map_err(|e| error_chain(&e))?;
    let mut plan = crate::plan::removal_plan(&observed.live, backend, mode);
    if let Some((other, live)) = observe_other(backend, exec) {
        let retire = crate::plan::removal_plan(&live, other, mode);
        plan.summary.remove += retire.summary.remove;
        plan.retire = Some(Box::new(retire));
    }
    struct NoListeners;
    impl ListenerControl for NoListeners {
        fn open(&self, key: ListenerKey, _: &Listener) -> Result<(), String> {
            Err(format!("cleanup opens no listener (asked for {key})"))
        }
        fn update(&self, key: ListenerKey, _: &Listener) -> Result<(), String> {
            Err(format!("cleanup updates no listener (asked for {key})"))
        }
        fn close(&self, _: ListenerKey) -> Result<(), String> {
            Ok(())
        }
    }
    apply(&plan, exec, &NoListeners).map_err(|e| error_chain(&e))?;
    let after = observe(backend, exec, BTreeMap::new()).map_err(|e| error_chain(&e))?;
    verify(
        &planners::NatState::default(),
        &after.live.owned,
        &after.live.stray,
    )
    .map_err(|e| error_chain(&e))?;
    if let Some((other, _)) = observe_other(backend, exec) {
        return Err(format!(
            "after cleanup, portald still owns rules through {other}"
        ));
    }
    Ok(plan)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
