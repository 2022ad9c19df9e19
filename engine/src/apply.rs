//! Executes a plan: listeners open first, one atomic kernel batch, listeners close last; then
//! re-observes and verifies that live equals intent.

use crate::compile::{Listener, ListenerKey};
use crate::diff::diff_nat;
use crate::exec::{Exec, ExecError};
use crate::observe::dialect;
use crate::plan::{Plan, Step};
use planners::{NatState, StrayRule};

/// The only way the reconciler opens or closes listeners.
pub trait ListenerControl {
    fn open(&self, key: ListenerKey, listener: &Listener) -> Result<(), String>;
    fn update(&self, key: ListenerKey, listener: &Listener) -> Result<(), String>;
    fn close(&self, key: ListenerKey) -> Result<(), String>;
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("cannot open listener `{key}` for `{name}`: {message}")]
    Open {
        key: ListenerKey,
        name: String,
        message: String,
    },
    #[error("cannot update listener `{key}` for `{name}`: {message}")]
    Update {
        key: ListenerKey,
        name: String,
        message: String,
    },
    #[error("cannot close listener `{key}`: {message}")]
    Close { key: ListenerKey, message: String },
    #[error("the kernel refused the batch; nothing in it was applied")]
    Batch(#[source] ExecError),
    #[error("after apply, the live state differs from the intent:\n{diff}")]
    Verify { diff: String },
}

/// What an apply did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub listeners_opened: usize,
    pub listeners_updated: usize,
    pub listeners_closed: usize,
    /// Whether a kernel batch was sent (a no-op plan sends none).
    pub batch_sent: bool,
}

/// Runs the plan's steps in order. On a failure, what was done stays done (every step is
/// safe on its own: make before break), and the error says which step failed.
pub fn apply(
    plan: &Plan,
    exec: &dyn Exec,
    listeners: &dyn ListenerControl,
) -> Result<ApplyReport, ApplyError> {
    let mut report = ApplyReport::default();
    let mut batch_done = false;
    for step in &plan.steps {
        match step {
            Step::OpenListener { key, listener } => {
                listeners
                    .open(*key, listener)
                    .map_err(|message| ApplyError::Open {
                        key: *key,
                        name: listener.name.clone(),
                        message,
                    })?;
                report.listeners_opened += 1;
            }
            Step::UpdateListener { key, new, .. } => {
                listeners
                    .update(*key, new)
                    .map_err(|message| ApplyError::Update {
                        key: *key,
                        name: new.name.clone(),
                        message,
                    })?;
                report.listeners_updated += 1;
            }
            Step::Kernel(_) => {
                // All kernel steps go in the one atomic batch, at the first kernel step.
                if !batch_done && !plan.batch.is_empty() {
                    let command = dialect(plan.backend).apply_command();
                    exec.run(&command, Some(&plan.batch))
                        .map_err(ApplyError::Batch)?;
                    report.batch_sent = true;
                }
                batch_done = true;
            }
            Step::CloseListener { key, .. } => {
                listeners
                    .close(*key)
                    .map_err(|message| ApplyError::Close { key: *key, message })?;
                report.listeners_closed += 1;
            }
        }
    }
    Ok(report)
}

/// Compares the intended NAT state with what the kernel shows after apply.
pub fn verify(intent: &NatState, live: &NatState, strays: &[StrayRule]) -> Result<(), ApplyError> {
    let changes = diff_nat(intent, live);
    if changes.is_empty() && strays.is_empty() {
        return Ok(());
    }
    let render = |state: &NatState| serde_json::to_string_pretty(state).expect("state serializes");
    let mut diff = similar::TextDiff::from_lines(&render(live), &render(intent))
        .unified_diff()
        .header("live", "intent")
        .to_string();
    for stray in strays {
        diff.push_str(&format!("stray rule in {}: {}\n", stray.chain, stray.text));
    }
    Err(ApplyError::Verify { diff })
}
