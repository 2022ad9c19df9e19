//! The pure pipeline, start to end: parsed files + lock + observed state → intent and plan.

use crate::allocate::{allocate, Allocation, LiveHints, Lock};
use crate::catalog::{assemble, Assembled};
use crate::compile::{compile, Intent};
use crate::config::Config;
use crate::diagnostics::Diagnostic;
use crate::diff::{diff, ChangeSet, DiffOptions};
use crate::load::ParsedFile;
use crate::observe::Observed;
use crate::plan::{make_plan, Plan};
use planners::Slot;

/// Everything one pass computed, for output and for apply.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub assembled: Assembled,
    pub allocation: Allocation,
    pub intent: Intent,
    pub changes: ChangeSet,
    pub plan: Plan,
    /// All diagnostics, sorted by file and line.
    pub diagnostics: Vec<Diagnostic>,
    /// The foreign rules that conflict with a portal (also among `diagnostics`), for the
    /// daemon's status and log.
    pub conflicts: Vec<Diagnostic>,
}

impl Outcome {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// Validates only: load diagnostics plus allocation conflicts, no live state needed.
pub fn check(files: &[ParsedFile], lock: &Lock, config: &Config) -> Vec<Diagnostic> {
    run(files, lock, &Observed::default(), config, false).diagnostics
}

/// Runs load → allocate → compile → diff → plan. `listeners_known` says whether
/// `observed.listeners` is the real listener state (a daemon answered) or unknown.
pub fn run(
    files: &[ParsedFile],
    lock: &Lock,
    observed: &Observed,
    config: &Config,
    listeners_known: bool,
) -> Outcome {
    run_with_health(
        files,
        lock,
        observed,
        config,
        listeners_known,
        &crate::health::Health::default(),
    )
}

/// [`run`] with portald's own judgements of the endpoints it checks (a daemon's probes and
/// health checks), which stand for the files' conditions where they have a verdict.
pub fn run_with_health(
    files: &[ParsedFile],
    lock: &Lock,
    observed: &Observed,
    config: &Config,
    listeners_known: bool,
    health: &crate::health::Health,
) -> Outcome {
    let mut assembled = assemble(files);
    assembled.catalog.health = health.clone();
    let refused = crate::endpoints::refuse_portal_addresses(&mut assembled.catalog, config);
    if !refused.is_empty() {
        assembled.diagnostics.extend(refused);
        assembled.diagnostics.sort();
    }
    let hints = LiveHints {
        nat: observed.live.owned.clone(),
        foreign_ports: observed.foreign_ports(),
        state: observed.node_state.clone(),
    };
    let allocation = allocate(
        &assembled.catalog.services,
        lock,
        &hints,
        config,
        !assembled.broken_files.is_empty(),
    );
    let (intent, compile_diagnostics) = compile(&assembled.catalog, &allocation, config);
    let mut diagnostics = assembled.diagnostics.clone();
    diagnostics.extend(allocation.diagnostics.iter().cloned());
    diagnostics.extend(compile_diagnostics);
    let conflicts = foreign_conflicts(&intent, &assembled, observed);
    diagnostics.extend(conflicts.iter().cloned());
    diagnostics.sort();
    let has_errors = diagnostics.iter().any(Diagnostic::is_error);
    let changes = diff(
        &intent,
        observed,
        DiffOptions {
            // Nothing is lost: while any input is wrong, what looks removed stays.
            hold_removals: has_errors,
            listeners_known,
        },
    );
    let mut plan = make_plan(&changes, &observed.live.owned, config.backend, config.mode);
    if let Some((other, live)) = &observed.other {
        if !has_errors {
            let retire = crate::plan::removal_plan(live, *other, config.mode);
            plan.summary.remove += retire.summary.remove;
            plan.retire = Some(Box::new(retire));
        }
    }
    for companion in &observed.companions {
        let wanted = companion.wanted(&intent.companion);
        plan.push_companion(crate::plan::companion_plan(
            companion,
            &wanted,
            config.mode,
            has_errors,
        ));
    }
    Outcome {
        assembled,
        allocation,
        intent,
        changes,
        plan,
        diagnostics,
        conflicts,
    }
}

/// Whether a foreign rule runs before one of the hooks a portal rule relies on and can take
/// its traffic: the path's NAT hook for every portal, and its refusal hook for a refusal.
fn ahead_of(foreign: &planners::ForeignRule, rule: &planners::PortalRule) -> Option<Slot> {
    let mut slots = vec![Slot::nat(rule.key.path)];
    if rule.action == planners::Action::Reject {
        slots.push(Slot::reject(rule.key.path));
    }
    let covers = foreign.covers(&rule.key);
    slots
        .into_iter()
        .find(|slot| covers && foreign.ahead_of.contains(slot))
}

/// Foreign rules that catch a VIP:port before or instead of portald: reported, never touched.
/// First those that run ahead of portald's hooks (see [`planners::ForeignRule::ahead_of`])
/// with destination, protocol and port matches that cover the portal; then any other
/// terminal rule naming the VIP:port exactly.
fn foreign_conflicts(
    intent: &Intent,
    assembled: &Assembled,
    observed: &Observed,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for rule in intent.nat.rules.values() {
        for foreign in &observed.live.foreign {
            let Some(slot) = ahead_of(foreign, rule) else {
                continue;
            };
            if !seen.insert((rule.comment.clone(), foreign.text.clone())) {
                continue;
            }
            let service = service_of(rule);
            out.push(conflict(
                assembled,
                service,
                format!(
                    "a foreign rule in `{}` runs before portald's {slot} hook and takes {}:{}/{} (service `{service}`): {}",
                    foreign.location, rule.key.vip, rule.key.port, rule.key.protocol, foreign.text
                ),
            ));
        }
    }
    for rule in intent.nat.rules.values() {
        for foreign in &observed.live.foreign {
            // portald's own iptables chains, as nft lists them (iptables-nft): the other
            // backend's rules, retired by the plan, not a conflict.
            let own = foreign
                .location
                .rsplit('/')
                .next()
                .is_some_and(|chain| chain.starts_with(planners::iptables::CHAIN_PREFIX));
            let hits = !own
                && foreign.terminal
                && foreign.dst == Some(rule.key.vip)
                && foreign.protocol.is_none_or(|p| p == rule.key.protocol)
                && foreign.dport.is_none_or(|p| p == rule.key.port);
            if !hits || !seen.insert((rule.comment.clone(), foreign.text.clone())) {
                continue;
            }
            let service = service_of(rule);
            out.push(conflict(
                assembled,
                service,
                format!(
                    "a foreign rule in `{}` also catches {}:{}/{} and may take its traffic first: {}",
                    foreign.location, rule.key.vip, rule.key.port, rule.key.protocol, foreign.text
                ),
            ));
        }
    }
    out
}

/// The lock `portald lock` writes for `files`: every service without an explicit
/// `clusterIP` keeps its entry in `lock` and a newcomer gets the first address no entry
/// holds. A pure function of the directory, the lock and the CIDR unless `observed`
/// carries live state (`--live`, `--from-kernel`). Strict mode does not apply: this is the
/// command that creates the entries.
pub fn relock(
    files: &[ParsedFile],
    lock: &Lock,
    observed: &Observed,
    config: &Config,
) -> (Lock, Outcome) {
    let config = Config {
        require_lock: false,
        ..config.clone()
    };
    // Entries of services no file defines any more are dropped (their VIPs are free again),
    // unless a file is broken: it may be the one defining them.
    let mut current = lock.clone();
    let assembled = assemble(files);
    if assembled.broken_files.is_empty() {
        current.vips.retain(|key, _| {
            crate::allocate::parse_key(key)
                .is_some_and(|k| assembled.catalog.services.contains_key(&k))
        });
    }
    let lock = repaired(&current, &config);
    let outcome = run(files, &lock, observed, &config, false);
    (outcome.allocation.lock.shared(), outcome)
}

/// `lock` without the entries no host can honour, so that the services they name get a
/// fresh address: a VIP outside the portal CIDR (or its network or broadcast address),
/// and every entry but the first (in key order) of a VIP several entries hold.
fn repaired(lock: &Lock, config: &Config) -> Lock {
    let cidr = config.portal_cidr;
    let mut seen = std::collections::BTreeSet::new();
    let mut out = lock.clone();
    out.vips.retain(|key, ip| {
        let usable = cidr.contains(*ip) && *ip != cidr.network() && *ip != cidr.broadcast();
        let keep = usable && seen.insert(*ip);
        if !keep {
            tracing::warn!("lock entry `{key}` ({ip}) cannot be honoured; it gets a new VIP");
        }
        keep
    });
    out
}

/// `ns/name` of the service a portal rule serves, from its comment.
fn service_of(rule: &planners::PortalRule) -> &str {
    rule.comment
        .as_str()
        .split_once(':')
        .map(|(k, _)| k)
        .unwrap_or_default()
}

/// A conflict warning on a service, at its file and line.
fn conflict(assembled: &Assembled, service: &str, message: String) -> Diagnostic {
    let source = assembled
        .catalog
        .services
        .values()
        .find(|s| s.key.to_string() == service)
        .map(|s| s.source.clone());
    Diagnostic {
        file: source.as_ref().map(|s| s.file.clone()).unwrap_or_default(),
        line: source.and_then(|s| s.line),
        severity: crate::diagnostics::Severity::Warning,
        object: Some(format!("Service `{service}`")),
        field: None,
        message,
    }
}
