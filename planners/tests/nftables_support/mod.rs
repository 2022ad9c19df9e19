//! Shared by the nftables tests: sample states, a proptest strategy for states, and the
//! golden-file comparison.
#![allow(dead_code)]

use planners::{Action, Comment, NatState, Path, PortalKey, PortalRule, Protocol, Scaffold, Slot};
use proptest::prelude::*;
use std::net::{Ipv4Addr, SocketAddrV4};

pub fn all_scaffold() -> Vec<Scaffold> {
    Path::ALL
        .into_iter()
        .flat_map(|p| [Scaffold::Chain(Slot::nat(p)), Scaffold::Hook(Slot::nat(p))])
        .collect()
}

pub fn rule(
    path: Path,
    vip: u8,
    protocol: Protocol,
    port: u16,
    action: Action,
    comment: &str,
) -> PortalRule {
    PortalRule {
        key: PortalKey {
            path,
            vip: Ipv4Addr::new(10, 11, 0, vip),
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

pub fn dnat_local(port: u16) -> Action {
    Action::DnatLocal {
        to: SocketAddrV4::new(Ipv4Addr::LOCALHOST, port),
    }
}

/// The seed's apache service plus DNS, on both paths, the way userspace mode compiles them.
/// One portal added (`added`), one removed (the first UDP one), one moved to another proxy
/// port (the first one).
pub fn incremental(state: &NatState, added: PortalRule) -> Vec<planners::Change> {
    let removed = state
        .rules
        .values()
        .find(|r| r.key.protocol == Protocol::Udp)
        .unwrap()
        .clone();
    let old = state.rules.values().next().unwrap().clone();
    let mut new = old.clone();
    new.action = redirect(34099);
    vec![
        planners::Change::AddRule { rule: added },
        planners::Change::ReplaceRule { old, new },
        planners::Change::RemoveRule { rule: removed },
    ]
}

pub fn sample_state() -> NatState {
    let mut state = NatState {
        scaffold: all_scaffold().into_iter().collect(),
        ..NatState::default()
    };
    let services = [
        (1, Protocol::Tcp, 80, 34001, "default/apache-service:80"),
        (2, Protocol::Udp, 53, 34002, "kube-system/dns:dns-udp"),
        (2, Protocol::Tcp, 53, 34003, "kube-system/dns:dns-tcp"),
    ];
    for (vip, protocol, port, proxy, comment) in services {
        state.insert_rule(rule(
            Path::Container,
            vip,
            protocol,
            port,
            redirect(proxy),
            comment,
        ));
        state.insert_rule(rule(
            Path::Host,
            vip,
            protocol,
            port,
            dnat_local(proxy),
            comment,
        ));
    }
    state
}

fn comment() -> impl Strategy<Value = Comment> {
    "[A-Za-z0-9._/:-]{1,40}".prop_map(|s| Comment::new(s).unwrap())
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        any::<u16>().prop_map(|to_port| Action::Redirect { to_port }),
        (any::<[u8; 4]>(), any::<u16>()).prop_map(|(ip, port)| Action::DnatLocal {
            to: SocketAddrV4::new(Ipv4Addr::from(ip), port),
        }),
    ]
}

fn portal_rule() -> impl Strategy<Value = PortalRule> {
    (
        prop_oneof![Just(Path::Container), Just(Path::Host)],
        any::<[u8; 4]>(),
        prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)],
        any::<u16>(),
        comment(),
        action(),
    )
        .prop_map(|(path, vip, protocol, port, comment, action)| PortalRule {
            key: PortalKey {
                path,
                vip: Ipv4Addr::from(vip),
                protocol,
                port,
            },
            comment,
            action,
        })
}

/// Any state at all: scaffold in any combination, any rules.
pub fn any_state(max_rules: usize) -> impl Strategy<Value = NatState> {
    (
        proptest::sample::subsequence(all_scaffold(), 0..=4),
        proptest::collection::vec(portal_rule(), 0..=max_rules),
    )
        .prop_map(|(scaffold, rules)| {
            let mut state = NatState {
                scaffold: scaffold.into_iter().collect(),
                ..NatState::default()
            };
            for rule in rules {
                state.insert_rule(rule);
            }
            state
        })
}

/// A state the kernel accepts: a hook only with the chain it jumps to.
pub fn loadable_state(max_rules: usize) -> impl Strategy<Value = NatState> {
    any_state(max_rules).prop_map(|mut state| {
        for path in Path::ALL {
            if state.scaffold.contains(&Scaffold::Hook(Slot::nat(path))) {
                state.scaffold.insert(Scaffold::Chain(Slot::nat(path)));
            }
        }
        state
    })
}

/// Compares `actual` with `golden/planners/nftables/<name>`; `UPDATE_GOLDEN=1` rewrites the
/// file (never under `CI`). Returns a diff on mismatch so callers report all at once.
pub fn check_golden(name: &str, actual: &str) -> Option<String> {
    let path = format!(
        "{}/../golden/planners/nftables/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1")
        && std::env::var_os("CI").is_none();
    if update {
        std::fs::create_dir_all(std::path::Path::new(&path).parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return None;
    }
    let expected = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) => return Some(format!("`{path}`: {e} (UPDATE_GOLDEN=1 writes it)")),
    };
    if expected == actual {
        return None;
    }
    let diff = similar::TextDiff::from_lines(expected.as_str(), actual);
    Some(format!(
        "`{path}` differs (UPDATE_GOLDEN=1 rewrites it):\n{}",
        diff.unified_diff().header("golden", "actual")
    ))
}
