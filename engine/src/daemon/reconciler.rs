//! The level-triggered reconciler: every trigger recomputes from the whole directory and the
//! whole live state, applies the plan, and verifies.

use super::control::{ListenerView, ReconcileResult, Status};
use super::metrics::{FailureCause, Metrics};
use crate::allocate::Lock;
use crate::apply::{apply, verify, ListenerControl};
use crate::compile::Intent;
use crate::config::Config;
use crate::diagnostics::{Diagnostic, Severity};
use crate::escape::Text;
use crate::exec::Exec;
use crate::listeners::{Listener, ListenerKey};
use crate::load::cache::ParseCache;
use crate::load::{load_dir_digest, ParsedFile};
use crate::observe::{companion, observe, observe_other, Observed};
use crate::pipeline;
use crate::plan::render::plan_text;
use crate::plan::{saved, Plan};
use dataplane::{Backends, DataPlane, ListenerSpec};
use planners::Protocol;
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

/// The data plane's transport for a listener of the rule model: the two crates each keep
/// their own enum (the data plane depends on no planner), and they meet only here.
fn transport(protocol: Protocol) -> dataplane::Protocol {
    match protocol {
        Protocol::Tcp => dataplane::Protocol::Tcp,
        Protocol::Udp => dataplane::Protocol::Udp,
    }
}

/// The rule model's protocol of a data plane listener, for `status`.
fn rule_protocol(transport: dataplane::Protocol) -> Protocol {
    match transport {
        dataplane::Protocol::Tcp => Protocol::Tcp,
        dataplane::Protocol::Udp => Protocol::Udp,
    }
}

impl ListenerControl for DataPlaneControl {
    fn open(&self, key: ListenerKey, listener: &Listener) -> Result<(), String> {
        let spec = ListenerSpec {
            protocol: transport(key.protocol),
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
            .update(
                transport(key.protocol),
                key.port.0,
                Self::backends(listener),
            )
            .map_err(|e| error_chain(&e))?;
        self.open
            .lock()
            .expect("listener map lock")
            .insert(key, listener.clone());
        Ok(())
    }

    fn close(&self, key: ListenerKey) -> Result<(), String> {
        self.runtime
            .block_on(self.dataplane.close(transport(key.protocol), key.port.0))
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

/// Reads the settings again (the config file, the environment, the flags), for a reload:
/// the engine settings they give now, or why they cannot be read.
#[derive(Clone)]
pub struct SettingsSource(pub Arc<dyn Fn() -> Result<Config, String> + Send + Sync>);

impl std::fmt::Debug for SettingsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SettingsSource")
    }
}

pub struct Reconciler {
    pub dir: PathBuf,
    pub lock_path: PathBuf,
    pub config: Config,
    pub exec: Arc<dyn Exec>,
    pub control: Arc<DataPlaneControl>,
    pub status: Arc<Mutex<Status>>,
    /// What each pass records for `/metrics` and `/healthz`; the daemon shares its own.
    pub metrics: Arc<Metrics>,
    /// The step the current pass is at: when it fails, why.
    step: FailureCause,
    /// Last version of each file that had no error: what stays in force while it is broken.
    last_good: BTreeMap<String, ParsedFile>,
    /// What each file parsed to at the last pass: a file is parsed again only when changed.
    parsed: ParseCache,
    /// The node state file (proxy ports, VIPs chosen without a lock entry); `None`: kept
    /// in memory only.
    state_path: Option<PathBuf>,
    /// The node state as last read or written; loaded at the first pass.
    state: Option<Lock>,
    last_intent: Intent,
    /// The problems of the last pass: each new one is logged once, not on every pass.
    reported: std::collections::BTreeSet<Diagnostic>,
    /// Whether this pass has put its whole list of problems in the status.
    diagnosed: bool,
    /// Where a reload reads the settings again (`None`: the settings stay as started).
    pub settings: Option<SettingsSource>,
    /// What portald owned in the kernel (rules and strays) after the last successful pass,
    /// and through which backend: the reference of [`Reconciler::drift`]. `None` when the
    /// last pass failed or a saved plan was applied since.
    settled: Option<(crate::config::Backend, planners::Live)>,
    /// Runs the readiness probes and health checks (a daemon only): its verdicts go into
    /// each pass, and each pass gives it the targets of the catalog.
    pub prober: Option<Arc<super::prober::Prober>>,
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
            metrics: Arc::default(),
            step: FailureCause::Load,
            last_good: BTreeMap::new(),
            parsed: ParseCache::new(),
            state_path: None,
            state: None,
            last_intent: Intent::default(),
            reported: Default::default(),
            diagnosed: false,
            settings: None,
            settled: None,
            prober: None,
        }
    }

    /// Keeps the node state in `path` (read at the first pass, rewritten when it changes).
    pub fn with_state_file(mut self, path: PathBuf) -> Self {
        self.state_path = Some(path);
        self
    }

    /// One full pass; the result also lands in the status.
    pub fn reconcile(&mut self, trigger: &str) -> ReconcileResult {
        let changed = self.metrics.take_file_change();
        let started = std::time::Instant::now();
        let result = match self.pass() {
            Ok((plan, batch_sent)) => {
                let elapsed_ms = started.elapsed().as_millis() as u64;
                let summary = &plan.summary;
                if !plan.is_empty() {
                    // One line per pass that changed something, with typed fields; each step
                    // is its own event (debug: a first pass over 10,000 services has 20,000).
                    tracing::info!(
                        trigger,
                        add = summary.add,
                        change = summary.change,
                        remove = summary.remove,
                        batch_sent,
                        elapsed_ms,
                        "reconciled: {} to add, {} to change, {} to remove in {elapsed_ms} ms",
                        summary.add,
                        summary.change,
                        summary.remove
                    );
                    for step in plan_text(&plan).lines().filter(|l| !l.trim().is_empty()) {
                        tracing::debug!(trigger, step = %Text(step.trim()), "plan step");
                    }
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
                tracing::error!(trigger, "reconcile failed: {}", Text(&message));
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
        let failure = result.error.as_deref().map(|e| (self.step, e));
        self.metrics.intent(&self.last_intent);
        self.metrics.pass(started.elapsed(), changed, failure);
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

    /// A reload: reads the settings again and takes the engine's (backend, mode, portal
    /// CIDR, proxy ports, external IPs, lock, input limits) for the next passes; returns the
    /// names of those that changed. Unreadable settings keep the running ones (an error).
    pub fn reload_settings(&mut self) -> Result<Vec<&'static str>, String> {
        let Some(source) = self.settings.clone() else {
            return Ok(Vec::new());
        };
        let new = (source.0)()?;
        let old = &self.config;
        let mut changed = Vec::new();
        let checks: [(&'static str, bool); 8] = [
            ("backend", old.backend != new.backend),
            ("mode", old.mode != new.mode),
            ("portal_cidr", old.portal_cidr != new.portal_cidr),
            ("proxy_port_range", old.proxy_ports != new.proxy_ports),
            (
                "allow_external_ips",
                old.allow_external_ips != new.allow_external_ips,
            ),
            ("require_lock", old.require_lock != new.require_lock),
            ("input_limits", old.input_limits != new.input_limits),
            ("host_target", old.host_target != new.host_target),
        ];
        for (name, differs) in checks {
            if differs {
                changed.push(name);
            }
        }
        let local_networks = std::mem::take(&mut self.config.local_networks);
        self.switch(Some(new.backend), Some(new.mode));
        self.config = Config {
            local_networks,
            ..new
        };
        Ok(changed)
    }

    /// One pass without a daemon around it (a one-shot `apply` in kernel mode, where no
    /// listener has to outlive the command): the plan it applied, or why it failed.
    pub fn apply_once(&mut self) -> Result<(Plan, bool), String> {
        self.pass()
    }

    /// Files as they are now, with each broken file replaced by its last good version.
    fn load(&mut self) -> Result<Loaded, String> {
        self.step = FailureCause::Load;
        let files = self
            .parsed
            .load_dir(&self.dir, &self.config.input_limits)
            .map_err(|e| error_chain(&e))?;
        self.metrics
            .invalid_files(files.iter().filter(|f| f.has_errors()).count());
        let mut diagnostics = Vec::new();
        let mut merged = Vec::new();
        let mut held = Vec::new();
        let present: std::collections::BTreeSet<String> =
            files.iter().map(|f| f.path.clone()).collect();
        self.last_good.retain(|path, _| present.contains(path));
        // `check` sees the files as they are: kept only when some file is replaced below.
        let replaced = files
            .iter()
            .any(|f| f.has_errors() && self.last_good.contains_key(&f.path));
        let as_loaded = replaced.then(|| files.clone());
        for file in files {
            diagnostics.extend(file.diagnostics.iter().cloned());
            if file.has_errors() {
                let (good, message) = match self.last_good.get(&file.path) {
                    Some(good) => (Some(good), "this file has errors: its last good version stays in force until they are fixed"),
                    None => (None, "this file has errors: nothing in it is served, and no removal is made while it is broken"),
                };
                held.push(Diagnostic {
                    file: file.path.clone(),
                    line: None,
                    severity: Severity::Warning,
                    object: None,
                    field: None,
                    message: message.into(),
                });
                match good {
                    Some(good) => {
                        tracing::warn!(file = %Text(&file.path), "file has errors; its last good version stays in force");
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
        // Until the pass gets further: what the files say on their own.
        diagnostics.extend(held.iter().cloned());
        diagnostics.sort();
        Ok(Loaded {
            merged,
            as_loaded,
            held,
            diagnostics,
        })
    }

    /// Whether a pass already logged this diagnostic (each is logged once, when first seen).
    pub fn logged(&self, diagnostic: &crate::diagnostics::Diagnostic) -> bool {
        self.reported.contains(diagnostic)
    }

    /// The shared allocation record, read afresh every pass: an input like the files.
    fn lock(&self) -> Result<Lock, String> {
        Lock::read_limited(&self.lock_path, self.config.input_limits.max_file_bytes)
            .map_err(|e| error_chain(&e))
    }

    /// The node state: what this host recorded before, or empty when it cannot be read
    /// (a first start; a broken file is only warned about, since the lock and the live
    /// rules still keep the VIPs in place).
    fn node_state(&mut self) -> Lock {
        if let Some(state) = &self.state {
            return state.clone();
        }
        let state = match &self.state_path {
            Some(path) => Lock::read_limited(path, self.config.input_limits.max_file_bytes)
                .unwrap_or_else(|e| {
                    tracing::warn!("{}; starting with an empty node state", error_chain(&e));
                    Lock::default()
                }),
            None => Lock::default(),
        };
        self.state = Some(state.clone());
        state
    }

    fn observe(&self) -> Result<Observed, String> {
        let mut observed = observe(
            self.config.backend,
            self.exec.as_ref(),
            self.control.listeners(),
        )
        .map_err(|e| error_chain(&e))?;
        observed.other = observe_other(self.config.backend, self.exec.as_ref());
        observed.companions = crate::observe::companion::observe_companions(
            self.config.backend,
            &observed.dump,
            self.exec.as_ref(),
        );
        let other_flavour = crate::observe::observe_other_flavour(
            self.config.backend,
            &observed.dump,
            self.exec.as_ref(),
        );
        observed.live.foreign.extend(other_flavour);
        Ok(observed)
    }

    fn pass(&mut self) -> Result<(Plan, bool), String> {
        let loaded = self.load()?;
        let result = self.pass_loaded(&loaded);
        if result.is_err() && !self.diagnosed {
            // Stopped before the whole picture: what the files say is still true. The status
            // is replaced once per pass, never left half written for a reader to see.
            self.status.lock().expect("status lock").diagnostics = loaded.diagnostics.clone();
        }
        result
    }

    fn pass_loaded(&mut self, loaded: &Loaded) -> Result<(Plan, bool), String> {
        self.diagnosed = false;
        self.step = FailureCause::Lock;
        let lock = self.lock()?;
        let state = self.node_state();
        if self.config.mode == crate::config::Mode::Kernel {
            // Links come and go (a bridge added for new containers): read them every pass.
            self.config.local_networks = crate::observe::routes::local_networks();
        }
        self.step = FailureCause::Observe;
        let mut observed = self.observe()?;
        observed.node_state = state.clone();
        let health = self.prober.as_ref().map(|p| p.health()).unwrap_or_default();
        let outcome = pipeline::run_with_health(
            &loaded.merged,
            &lock,
            &observed,
            &self.config,
            true,
            &health,
        );
        if let Some(prober) = &self.prober {
            prober.sync(crate::health::targets(&outcome.assembled.catalog));
        }
        let allocation_conflicts = outcome.allocation.diagnostics.iter();
        self.metrics.conflicts(
            allocation_conflicts.filter(|d| d.is_error()).count(),
            outcome.conflicts.len(),
        );
        let mut diagnostics = status_diagnostics(loaded, &outcome, &lock, &self.config);
        let mut forward_drops = 0;
        if self.config.mode == crate::config::Mode::Kernel {
            // Bridges and their ports change under the daemon: looked at every pass.
            use crate::observe::bridges;
            let bridges = bridges::read_bridges();
            let mut warnings = bridges::hairpin_warnings(
                bridges::call_iptables(),
                &bridges,
                &outcome.intent.services,
            );
            if self.config.backend == crate::config::Backend::Nftables {
                use crate::observe::forward_policy;
                let chains = forward_policy::not_crossed(
                    &forward_policy::dropping_forward_chains(&observed.dump),
                    &observed.companions,
                );
                forward_drops = chains.len();
                warnings.extend(forward_policy::forward_drop_warnings(&chains));
            }
            for d in warnings {
                if !diagnostics.contains(&d) {
                    diagnostics.push(d);
                }
            }
        }
        self.metrics.forward_drops(forward_drops);
        // Each problem is logged once, when a pass first sees it; `status` shows them all.
        for d in &diagnostics {
            if !self.reported.contains(d) {
                match d.severity {
                    Severity::Error => tracing::error!("{d}"),
                    Severity::Warning => tracing::warn!("{d}"),
                    Severity::Note => tracing::info!("{d}"),
                }
            }
        }
        self.reported = diagnostics.iter().cloned().collect();
        {
            let mut status = self.status.lock().expect("status lock");
            status.held = outcome
                .allocation
                .held
                .iter()
                .map(ToString::to_string)
                .collect();
            status.diagnostics = diagnostics;
        }
        self.diagnosed = true;
        self.last_intent = outcome.intent.clone();
        let report =
            apply(&outcome.plan, self.exec.as_ref(), self.control.as_ref()).map_err(|e| {
                self.step = match e {
                    crate::apply::ApplyError::Batch(_)
                    | crate::apply::ApplyError::Retire(_)
                    | crate::apply::ApplyError::Companion { .. } => FailureCause::KernelBatch,
                    crate::apply::ApplyError::Verify { .. } => FailureCause::Verify,
                    _ => FailureCause::Listener,
                };
                error_chain(&e)
            })?;
        // An empty plan was made against a live state that already equals the intent: looking
        // again would only repeat the observation (seconds with 10,000 kernel-mode portals).
        let settled = if outcome.plan.is_empty() {
            observed.live
        } else {
            self.step = FailureCause::Verify;
            self.verify(&outcome.intent)?
        };
        self.settled = Some((self.config.backend, settled));
        self.save_state(&state, &outcome.allocation.lock);
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
        for companion in &after.companions {
            let wanted = companion.wanted(&intent.companion);
            verify(&wanted, &companion.live.owned, &companion.live.stray)
                .map_err(|e| format!("in {}: {}", companion.flavour, error_chain(&e)))?;
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

    /// Records this host's allocation in the node state file (never in the lock, which
    /// belongs to the repository). When the file cannot be written, the state is still kept
    /// in memory for the next passes.
    fn save_state(&mut self, old: &Lock, new: &Lock) {
        self.state = Some(new.clone());
        if old == new {
            return;
        }
        if let Some(path) = &self.state_path {
            if let Err(e) = write_state_file(path, new.render().as_bytes()) {
                tracing::warn!(
                    "cannot write the node state `{}`: {}; kept in memory only",
                    path.display(),
                    error_chain(&e)
                );
            }
        }
    }

    /// Applies a plan made elsewhere, unless it was made from other services or another
    /// lock than this daemon's (digests), what it was made against has changed (stale), or
    /// the file was edited: its batch is not what portald renders for its steps, or a step
    /// removes what portald does not own now ([`saved::verify`]).
    pub fn apply_saved(&mut self, plan: &Plan) -> Result<String, String> {
        let here = self.inputs()?;
        saved::check_inputs(plan, &here).map_err(|e| e.to_string())?;
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
        saved::verify(plan, &observed.live, observed.other.as_ref()).map_err(|e| e.to_string())?;
        saved::verify_companions(plan, &observed.companions).map_err(|e| e.to_string())?;
        apply(plan, self.exec.as_ref(), self.control.as_ref()).map_err(|e| error_chain(&e))?;
        Ok(plan_text(plan))
    }

    /// The digests of this daemon's services directory and lock file as they are now.
    fn inputs(&self) -> Result<saved::Inputs, String> {
        let (_, services) =
            load_dir_digest(&self.dir, &self.config.input_limits).map_err(|e| error_chain(&e))?;
        let lock = saved::lock_digest(&self.lock_path).map_err(|e| {
            format!(
                "cannot read the allocation record `{}`: {e}",
                self.lock_path.display()
            )
        })?;
        Ok(saved::Inputs { services, lock })
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
                protocol: rule_protocol(s.protocol),
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

/// The directory as one pass read it.
struct Loaded {
    /// The files, each broken one replaced by its last good version: what is put in force.
    merged: Vec<ParsedFile>,
    /// The files as they are, when some were replaced (else `merged` is them).
    as_loaded: Option<Vec<ParsedFile>>,
    /// One warning per broken file: what the daemon holds back because of it.
    held: Vec<Diagnostic>,
    /// What the files say on their own, and what they hold back: all `status` can show when
    /// the pass stops before it has the whole picture.
    diagnostics: Vec<Diagnostic>,
}

/// What `status` reports: everything `portald check DIR` says about the directory as it is
/// (the same function, [`pipeline::check`], when some broken file was replaced by its last
/// good version; else the pass over the very same files said it already), plus what the
/// pass found against the live state and what the broken files hold back. Sorted, no repeats.
fn status_diagnostics(
    loaded: &Loaded,
    outcome: &pipeline::Outcome,
    lock: &Lock,
    config: &Config,
) -> Vec<Diagnostic> {
    let mut all: Vec<Diagnostic> = outcome.diagnostics.clone();
    if let Some(files) = &loaded.as_loaded {
        all.extend(pipeline::check(files, lock, config));
    }
    all.extend(loaded.held.iter().cloned());
    all.sort();
    all.dedup();
    all
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
    // The companion forward chains too: nothing of portald's is wanted anywhere.
    let flavours = companion::flavours_to_clean(backend, &observed.dump);
    let companions = companion::observe_flavours(&flavours, exec);
    for beside in &companions {
        let none = planners::NatState::default();
        plan.push_companion(crate::plan::companion_plan(beside, &none, mode, false));
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
    // The flavours read before (the dump may have lost the header that named them).
    for beside in &companions {
        let Ok(out) = exec.run(&beside.flavour.save_command(), None) else {
            continue;
        };
        let left = companion::read(beside.flavour, &out.stdout).map_err(|e| error_chain(&e))?;
        if !(left.live.owned.is_empty() && left.live.stray.is_empty()) {
            return Err(format!(
                "after cleanup, portald still owns rules through {}",
                beside.flavour
            ));
        }
    }
    Ok(plan)
}

/// Writes the node state through [`crate::safe_write`] (a fresh temporary file, renamed
/// over `path`: never through a planted symlink, never half written); its directory is made
/// first, readable by root only, when missing.
pub fn write_state_file(
    path: &std::path::Path,
    bytes: &[u8],
) -> Result<(), crate::safe_write::SafeWriteError> {
    use std::os::unix::fs::DirBuilderExt;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|source| crate::safe_write::SafeWriteError::Directory {
                    dir: parent.display().to_string(),
                    source,
                })?;
        }
    }
    crate::safe_write::write(path, bytes)
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
