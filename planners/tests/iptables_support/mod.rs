//! Shared helpers for the iptables dialect's integration tests: fixtures and small states.
#![allow(dead_code)] // each test crate uses its own subset

use planners::{
    Action, Change, Comment, Live, NatState, Path, PortalKey, PortalRule, Protocol, Scaffold, Slot,
};
use std::path::PathBuf;

/// Names of the captured rulesets in `fixtures/live/iptables/` (each has a `-counters` twin).
pub const FIXTURES: [&str; 4] = ["docker", "kube-proxy", "firewalld", "portald-busy"];

pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fixtures/live/iptables")
}

/// A captured dump, by file stem (`docker`, `docker-counters`, ...).
pub fn fixture(stem: &str) -> String {
    let path = fixture_dir().join(format!("{stem}.save"));
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read fixture `{}`: {e}", path.display()))
}

/// How many rule lines (`-A ...`, with or without counters) a dump holds.
pub fn rule_lines(dump: &str) -> usize {
    dump.lines()
        .map(|l| l.trim_start())
        .filter(|l| l.starts_with("-A ") || l.starts_with('['))
        .count()
}

pub fn rule(
    path: Path,
    vip: &str,
    protocol: Protocol,
    port: u16,
    comment: &str,
    action: Action,
) -> PortalRule {
    PortalRule {
        key: PortalKey {
            path,
            vip: vip.parse().unwrap(),
            protocol,
            port,
        },
        comment: Comment::new(comment).unwrap(),
        action,
    }
}

pub fn redirect(to_port: u16) -> Action {
    Action::Redirect { to_port }
}

pub fn dnat_local(to: &str) -> Action {
    Action::DnatLocal {
        to: to.parse().unwrap(),
    }
}

/// Every scaffold of both paths.
pub fn full_scaffold() -> NatState {
    let mut state = NatState::default();
    for path in Path::ALL {
        state.scaffold.insert(Scaffold::Chain(Slot::nat(path)));
        state.scaffold.insert(Scaffold::Hook(Slot::nat(path)));
    }
    state
}

/// The seed's apache service plus a UDP DNS portal, on both paths: what `capture.sh` writes
/// as portald's own rules in the `portald-busy` ruleset.
pub fn seed_state() -> NatState {
    let mut state = full_scaffold();
    let apache = "default/apache-service:12345";
    let dns = "kube-system/dns:53";
    state.insert_rule(rule(
        Path::Container,
        "10.11.0.1",
        Protocol::Tcp,
        12345,
        apache,
        redirect(33945),
    ));
    state.insert_rule(rule(
        Path::Container,
        "10.11.0.2",
        Protocol::Udp,
        53,
        dns,
        redirect(40053),
    ));
    state.insert_rule(rule(
        Path::Host,
        "10.11.0.1",
        Protocol::Tcp,
        12345,
        apache,
        dnat_local("127.0.0.1:33945"),
    ));
    state.insert_rule(rule(
        Path::Host,
        "10.11.0.2",
        Protocol::Udp,
        53,
        dns,
        dnat_local("127.0.0.1:40053"),
    ));
    state
}

/// Changes that build `state` from nothing, make before break: chains, rules, then hooks.
pub fn create_changes(state: &NatState) -> Vec<Change> {
    let mut changes = Vec::new();
    for scaffold in &state.scaffold {
        if matches!(scaffold, Scaffold::Chain(_)) {
            changes.push(Change::AddScaffold {
                scaffold: *scaffold,
            });
        }
    }
    for rule in state.rules.values() {
        changes.push(Change::AddRule { rule: rule.clone() });
    }
    for scaffold in &state.scaffold {
        if matches!(scaffold, Scaffold::Hook(_)) {
            changes.push(Change::AddScaffold {
                scaffold: *scaffold,
            });
        }
    }
    changes
}

/// Changes that remove all of `live` (strays first, then hooks, rules, chains).
pub fn remove_changes(live: &Live) -> Vec<Change> {
    let mut changes: Vec<Change> = live
        .stray
        .iter()
        .map(|stray| Change::RemoveStray {
            stray: stray.clone(),
        })
        .collect();
    for scaffold in &live.owned.scaffold {
        if matches!(scaffold, Scaffold::Hook(_)) {
            changes.push(Change::RemoveScaffold {
                scaffold: *scaffold,
            });
        }
    }
    for rule in live.owned.rules.values() {
        changes.push(Change::RemoveRule { rule: rule.clone() });
    }
    for scaffold in &live.owned.scaffold {
        if matches!(scaffold, Scaffold::Chain(_)) {
            changes.push(Change::RemoveScaffold {
                scaffold: *scaffold,
            });
        }
    }
    changes
}
