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
    /// How many of them are foreign rules catching a portal first.
    pub foreign_conflicts: usize,
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
    let assembled = assemble(files);
    let hints = LiveHints {
        nat: observed.live.owned.clone(),
        foreign_ports: observed.foreign_ports(),
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
    let foreign = foreign_conflicts(&intent, &assembled, observed);
    let foreign_conflicts = foreign.len();
    diagnostics.extend(foreign);
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
    Outcome {
        assembled,
        allocation,
        intent,
        changes,
        plan,
        diagnostics,
        foreign_conflicts,
    }
}

/// Foreign rules that catch a VIP:port before or instead of portald: reported, never touched.
fn foreign_conflicts(
    intent: &Intent,
    assembled: &Assembled,
    observed: &Observed,
) -> Vec<Diagnostic> {
    let mut out = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
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
            let service = rule
                .comment
                .as_str()
                .split_once(':')
                .map(|(k, _)| k)
                .unwrap_or_default();
            let source = assembled
                .catalog
                .services
                .values()
                .find(|s| s.key.to_string() == service)
                .map(|s| s.source.clone());
            out.push(Diagnostic {
                file: source.as_ref().map(|s| s.file.clone()).unwrap_or_default(),
                line: source.and_then(|s| s.line),
                severity: crate::diagnostics::Severity::Warning,
                object: Some(format!("Service `{service}`")),
                field: None,
                message: format!(
                    "a foreign rule in `{}` also catches {}:{}/{} and may take its traffic first: {}",
                    foreign.location, rule.key.vip, rule.key.port, rule.key.protocol, foreign.text
                ),
            });
        }
    }
    out
}
