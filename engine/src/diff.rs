//! Compares intent with what is live: the changes that turn one into the other.

use crate::compile::Intent;
use crate::listeners::{Listener, ListenerKey};
use crate::observe::Observed;
use planners::{Change, NatState};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A change to the set of proxy listeners.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum ListenerChange {
    Open {
        #[serde(flatten)]
        key: ListenerKey,
        listener: Listener,
    },
    Update {
        #[serde(flatten)]
        key: ListenerKey,
        old: Listener,
        new: Listener,
    },
    Close {
        #[serde(flatten)]
        key: ListenerKey,
        listener: Listener,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeSet {
    pub nat: Vec<Change>,
    pub listeners: Vec<ListenerChange>,
    /// Removals not made because some input files are broken (their services may be among
    /// the ones that look removed).
    pub held_back: usize,
}

impl ChangeSet {
    pub fn is_empty(&self) -> bool {
        self.nat.is_empty() && self.listeners.is_empty()
    }
}

/// Options of a diff.
#[derive(Debug, Clone, Copy, Default)]
pub struct DiffOptions {
    /// Keep what looks removed (used while some input files are broken).
    pub hold_removals: bool,
    /// Diff listeners too (off when the listener state is unknown, e.g. no daemon reachable).
    pub listeners_known: bool,
}

/// The NAT part of a diff; pure and shared with the fake kernel of the tests.
pub fn diff_nat(intent: &NatState, live: &NatState) -> Vec<Change> {
    planners::diff_states(intent, live)
}

/// The full change set between intent and observed state.
pub fn diff(intent: &Intent, observed: &Observed, options: DiffOptions) -> ChangeSet {
    let mut set = ChangeSet::default();
    for change in diff_nat(&intent.nat, &observed.live.owned) {
        let removal = matches!(
            change,
            Change::RemoveRule { .. } | Change::RemoveScaffold { .. }
        );
        if removal && options.hold_removals {
            set.held_back += 1;
        } else {
            set.nat.push(change);
        }
    }
    for stray in &observed.live.stray {
        set.nat.push(Change::RemoveStray {
            stray: stray.clone(),
        });
    }
    if options.listeners_known {
        set.listeners = diff_listeners(
            &intent.listeners,
            &observed.listeners,
            options,
            &mut set.held_back,
        );
    } else {
        // Unknown live listeners: every intended one is to be opened by whoever applies.
        set.listeners = intent
            .listeners
            .iter()
            .map(|(key, listener)| ListenerChange::Open {
                key: *key,
                listener: listener.clone(),
            })
            .collect();
    }
    set
}

fn diff_listeners(
    intent: &BTreeMap<ListenerKey, Listener>,
    live: &BTreeMap<ListenerKey, Listener>,
    options: DiffOptions,
    held_back: &mut usize,
) -> Vec<ListenerChange> {
    let mut out = Vec::new();
    for (key, listener) in intent {
        match live.get(key) {
            None => out.push(ListenerChange::Open {
                key: *key,
                listener: listener.clone(),
            }),
            Some(old) if old != listener => out.push(ListenerChange::Update {
                key: *key,
                old: old.clone(),
                new: listener.clone(),
            }),
            Some(_) => {}
        }
    }
    for (key, listener) in live {
        if !intent.contains_key(key) {
            if options.hold_removals {
                *held_back += 1;
            } else {
                out.push(ListenerChange::Close {
                    key: *key,
                    listener: listener.clone(),
                });
            }
        }
    }
    out
}
