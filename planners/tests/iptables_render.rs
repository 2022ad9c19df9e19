//! The iptables dialect's rendering: golden text, render → parse round trips, and quoting.

mod iptables_support;

use iptables_support::*;
use planners::iptables::rule_spec;
use planners::iptables::tokenize::split_words;
use planners::{
    Action, Comment, Dialect, Iptables, Live, NatState, Path, PortalKey, PortalRule, Protocol,
    Scaffold, Slot,
};
use proptest::prelude::*;
use std::net::{Ipv4Addr, SocketAddrV4};

/// Compares `actual` with `golden/planners/iptables/<name>`, showing a diff on mismatch.
/// `UPDATE_GOLDEN=1` rewrites the file instead, except under CI, where goldens are read-only.
fn assert_golden(name: &str, actual: &str) {
    let path = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../golden/planners/iptables")
        .join(name);
    let updating = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    if updating && std::env::var_os("CI").is_none() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "cannot read golden `{}` ({e}); run with UPDATE_GOLDEN=1 to create it",
            path.display()
        )
    });
    if expected != actual {
        let diff = similar::TextDiff::from_lines(expected.as_str(), actual)
            .unified_diff()
            .header("golden", "rendered")
            .to_string();
        panic!("`{name}` differs from its golden file (UPDATE_GOLDEN=1 rewrites it):\n{diff}");
    }
}

#[test]
fn render_state_of_the_seed_services_matches_its_golden_file() {
    assert_golden("seed-state.rules", &Iptables.render_state(&seed_state()));
}

#[test]
fn render_batch_creating_the_seed_services_matches_its_golden_file() {
    assert_golden(
        "seed-create.batch",
        &Iptables.render_batch(&create_changes(&seed_state())),
    );
}

#[test]
fn render_batch_removing_a_busy_hosts_portals_and_strays_matches_its_golden_file() {
    let live = Iptables.parse_live(&fixture("portald-busy")).unwrap();
    assert_golden(
        "portald-busy-remove.batch",
        &Iptables.render_batch(&remove_changes(&live)),
    );
}

#[test]
fn rendered_state_is_the_nat_part_of_a_real_dump_of_it() {
    // capture.sh wrote the seed state with plain `iptables` commands; our rendering of it must
    // be those very lines (modulo the built-in chains and foreign rules around them).
    let dump = fixture("portald-busy");
    for line in Iptables.render_state(&seed_state()).lines() {
        if line.starts_with('*') || line == "COMMIT" {
            continue;
        }
        assert!(
            dump.lines().any(|l| l == line),
            "the dump has no line `{line}`"
        );
    }
}

#[test]
fn a_comment_always_renders_as_exactly_one_argument() {
    let nasty_but_valid = ["a", "-j", "--dport", "x:y/z.w_v-u", "ACCEPT", "::", "/-/"];
    for text in nasty_but_valid {
        let rule = PortalRule {
            key: PortalKey {
                path: Path::Host,
                vip: Ipv4Addr::new(10, 11, 0, 1),
                protocol: Protocol::Udp,
                port: 53,
            },
            comment: Comment::new(text).unwrap(),
            action: Action::Redirect { to_port: 1 },
        };
        let words = split_words(&rule_spec(&rule)).unwrap();
        let at = words.iter().position(|w| w == "--comment").unwrap();
        assert_eq!(words[at + 1], text);
        assert_eq!(words.len(), 16, "{words:?}");
    }
}

fn comment() -> impl Strategy<Value = Comment> {
    "[A-Za-z0-9._/:-]{1,60}".prop_map(|s| Comment::new(s).unwrap())
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        any::<u16>().prop_map(|to_port| Action::Redirect { to_port }),
        (any::<u32>(), any::<u16>()).prop_map(|(ip, port)| Action::DnatLocal {
            to: SocketAddrV4::new(Ipv4Addr::from(ip), port)
        }),
    ]
}

fn portal_rule() -> impl Strategy<Value = PortalRule> {
    let path = prop_oneof![Just(Path::Container), Just(Path::Host)];
    let protocol = prop_oneof![Just(Protocol::Tcp), Just(Protocol::Udp)];
    (
        path,
        any::<u32>(),
        protocol,
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

fn nat_state() -> impl Strategy<Value = NatState> {
    let scaffold = prop_oneof![
        Just(Scaffold::Chain(Slot::Container)),
        Just(Scaffold::Chain(Slot::Host)),
        Just(Scaffold::Hook(Slot::Container)),
        Just(Scaffold::Hook(Slot::Host)),
    ];
    (
        proptest::collection::btree_set(scaffold, 0..=4),
        proptest::collection::vec(portal_rule(), 0..24),
    )
        .prop_map(|(scaffold, rules)| {
            let mut state = NatState {
                scaffold,
                ..NatState::default()
            };
            for rule in rules {
                state.insert_rule(rule);
            }
            state
        })
}

proptest! {
    #[test]
    fn render_state_then_parse_live_gives_the_same_state_back(state in nat_state()) {
        let text = Iptables.render_state(&state);
        let live = Iptables.parse_live(&text).unwrap();
        prop_assert_eq!(live, Live { owned: state, ..Live::default() });
    }

    #[test]
    fn rendered_state_parses_the_same_among_foreign_rules_and_counters(state in nat_state()) {
        // Splice our rendering into a busy real dump's nat table, with counters on each line.
        let ours: Vec<String> = Iptables
            .render_state(&state)
            .lines()
            .filter(|l| l.starts_with("-A") || l.starts_with(':'))
            .map(|l| if l.starts_with("-A") { format!("[7:420] {l}") } else { l.to_string() })
            .collect();
        let busy = fixture("kube-proxy-counters");
        let before = Iptables.parse_live(&busy).unwrap();
        let spliced = busy.replacen("*nat\n", &format!("*nat\n{}\n", ours.join("\n")), 1);
        let live = Iptables.parse_live(&spliced).unwrap();
        prop_assert_eq!(live.owned, state);
        prop_assert!(live.stray.is_empty());
        prop_assert_eq!(live.foreign, before.foreign);
    }

    #[test]
    fn every_rendered_portal_rule_has_its_comment_as_one_word(rule in portal_rule()) {
        let words = split_words(&rule_spec(&rule)).unwrap();
        prop_assert_eq!(words.len(), 16);
        prop_assert_eq!(words[7].as_str(), rule.comment.as_str());
    }
}
