//! The ordered plan: steps in dependency order and the exact kernel batch.

pub mod graph;
pub mod render;
pub mod saved;

use crate::config::{Backend, Mode};
use crate::diff::{ChangeSet, ListenerChange};
use crate::listeners::{Listener, ListenerKey};
use crate::observe::companion::{Companion, Flavour};
use crate::observe::dialect;
use planners::{Change, NatState};
use serde::{Deserialize, Serialize};

/// 2: a saved plan states the digests of its inputs ([`saved::Inputs`]).
pub const PLAN_FORMAT_VERSION: u32 = 2;

/// One step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", tag = "step")]
pub enum Step {
    OpenListener {
        #[serde(flatten)]
        key: ListenerKey,
        listener: Listener,
    },
    UpdateListener {
        #[serde(flatten)]
        key: ListenerKey,
        old: Listener,
        new: Listener,
    },
    Kernel(Change),
    CloseListener {
        #[serde(flatten)]
        key: ListenerKey,
        listener: Listener,
    },
}

impl Step {
    /// Listeners open (and update) before the kernel batch; they close after it.
    pub fn phase(&self) -> u8 {
        match self {
            Step::OpenListener { .. } | Step::UpdateListener { .. } => 0,
            Step::Kernel(_) => 1,
            Step::CloseListener { .. } => 2,
        }
    }

    /// A total order among steps of one phase, independent of input order.
    pub fn sort_key(&self) -> String {
        match self {
            Step::OpenListener { key, .. }
            | Step::UpdateListener { key, .. }
            | Step::CloseListener { key, .. } => {
                format!("{}/{:05}", key.protocol, key.port.0)
            }
            Step::Kernel(change) => {
                // Readable order among independent steps: structure first, hooks last.
                let rank = change.rank();
                format!(
                    "{rank}{}",
                    serde_json::to_string(change).expect("change serializes")
                )
            }
        }
    }
}

/// Counts for the summary line.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub struct Summary {
    pub add: usize,
    pub change: usize,
    pub remove: usize,
}

/// A plan: what apply will do, in order, with the exact batch for the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Plan {
    pub format_version: u32,
    pub backend: Backend,
    pub mode: Mode,
    pub summary: Summary,
    pub steps: Vec<Step>,
    /// Exactly what apply sends to the kernel tool, on standard input.
    pub batch: String,
    /// Removals held back because some input files are broken.
    pub held_back: usize,
    /// What portald owned when the plan was made: a saved plan is stale once this changes.
    pub observed: NatState,
    /// Everything portald owns through the other backend (left by a run with the other
    /// `--backend`), removed right after this plan's own batch: the new state is built
    /// before the old one goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retire: Option<Box<Plan>>,
    /// Set on a plan for an iptables flavour beside the backend (one of `companions`): its
    /// batch goes to that flavour's `iptables-restore`, not to the backend's tool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flavour: Option<Flavour>,
    /// The plans for the iptables flavours beside the backend, applied right after this
    /// plan's own batch: the companion forward chain added where a FORWARD policy drops,
    /// removed where it no longer does, and (with nftables) what an iptables run left
    /// removed around it (see the `observe::companion` module).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub companions: Vec<Plan>,
    /// What the plan was made from (set by `portald plan`): `apply PLANFILE` refuses a plan
    /// without it, or made from other services or another lock than the daemon's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<saved::Inputs>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty() && self.retire.is_none() && self.companions.is_empty()
    }

    /// The command that takes this plan's batch: the flavour's for a companion plan, else
    /// the backend's.
    pub fn apply_command(&self) -> planners::Invocation {
        match self.flavour {
            Some(flavour) => flavour.restore_command(),
            None => dialect(self.backend).apply_command(),
        }
    }

    /// Adds a companion plan (one that changes something) and counts its steps.
    pub fn push_companion(&mut self, companion: Plan) {
        if companion.is_empty() {
            return;
        }
        self.summary.add += companion.summary.add;
        self.summary.change += companion.summary.change;
        self.summary.remove += companion.summary.remove;
        self.held_back += companion.held_back;
        self.companions.push(companion);
    }

    pub fn kernel_changes(&self) -> Vec<Change> {
        self.steps
            .iter()
            .filter_map(|s| match s {
                Step::Kernel(c) => Some(c.clone()),
                _ => None,
            })
            .collect()
    }
}

/// Orders a change set into a plan.
pub fn make_plan(changes: &ChangeSet, observed: &NatState, backend: Backend, mode: Mode) -> Plan {
    let mut steps: Vec<Step> = Vec::new();
    for change in &changes.listeners {
        steps.push(match change {
            ListenerChange::Open { key, listener } => Step::OpenListener {
                key: *key,
                listener: listener.clone(),
            },
            ListenerChange::Update { key, old, new } => Step::UpdateListener {
                key: *key,
                old: old.clone(),
                new: new.clone(),
            },
            ListenerChange::Close { key, listener } => Step::CloseListener {
                key: *key,
                listener: listener.clone(),
            },
        });
    }
    steps.extend(changes.nat.iter().cloned().map(Step::Kernel));
    let graph = graph::build(&steps);
    let order = graph::linearize(&steps, &graph);
    let ordered: Vec<Step> = order.into_iter().map(|i| steps[i].clone()).collect();
    let mut summary = Summary::default();
    for step in &ordered {
        match step {
            Step::OpenListener { .. }
            | Step::Kernel(Change::AddRule { .. } | Change::AddScaffold { .. }) => summary.add += 1,
            Step::UpdateListener { .. } | Step::Kernel(Change::ReplaceRule { .. }) => {
                summary.change += 1
            }
            _ => summary.remove += 1,
        }
    }
    let kernel: Vec<Change> = ordered
        .iter()
        .filter_map(|s| match s {
            Step::Kernel(c) => Some(c.clone()),
            _ => None,
        })
        .collect();
    Plan {
        format_version: PLAN_FORMAT_VERSION,
        backend,
        mode,
        summary,
        batch: dialect(backend).render_batch(&kernel),
        steps: ordered,
        held_back: changes.held_back,
        observed: observed.clone(),
        retire: None,
        flavour: None,
        companions: Vec::new(),
        inputs: None,
    }
}

/// The plan that removes everything portald owns through one backend: its rules, scaffold
/// and strays, in dependency order.
pub fn removal_plan(live: &planners::Live, backend: Backend, mode: Mode) -> Plan {
    let mut changes = ChangeSet {
        nat: crate::diff::diff_nat(&NatState::default(), &live.owned),
        ..Default::default()
    };
    changes.nat.extend(
        live.stray
            .iter()
            .cloned()
            .map(|stray| Change::RemoveStray { stray }),
    );
    make_plan(&changes, &live.owned, backend, mode)
}

/// The plan that brings an iptables flavour beside the backend to `wanted` (the companion
/// forward chain, or nothing): everything else portald owns there, strays included, goes.
/// With `hold_removals` (some input files are broken) nothing is removed.
pub fn companion_plan(
    companion: &Companion,
    wanted: &NatState,
    mode: Mode,
    hold_removals: bool,
) -> Plan {
    let mut changes = ChangeSet::default();
    let removals = crate::diff::diff_nat(wanted, &companion.live.owned)
        .into_iter()
        .chain(
            companion
                .live
                .stray
                .iter()
                .cloned()
                .map(|stray| Change::RemoveStray { stray }),
        );
    for change in removals {
        let removal = matches!(
            change,
            Change::RemoveRule { .. } | Change::RemoveScaffold { .. } | Change::RemoveStray { .. }
        );
        if removal && hold_removals {
            changes.held_back += 1;
        } else {
            changes.nat.push(change);
        }
    }
    let mut plan = make_plan(&changes, &companion.live.owned, Backend::Iptables, mode);
    plan.flavour = Some(companion.flavour);
    plan
}
