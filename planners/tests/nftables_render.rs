//! The nftables dialect's rendering: golden texts, batch rules, and render → parse round
//! trips over random states.

mod nftables_support;

use nftables_support::*;
use planners::nftables::render_json;
use planners::{
    apply_changes, Change, Dialect, NatState, Nftables, Path, Protocol, Scaffold, Slot, StrayRule,
};
use proptest::prelude::*;

fn create_all(state: &NatState) -> Vec<Change> {
    let mut changes: Vec<Change> = [
        Scaffold::Chain(Slot::Container),
        Scaffold::Chain(Slot::Host),
    ]
    .into_iter()
    .map(|scaffold| Change::AddScaffold { scaffold })
    .collect();
    changes.extend(
        state
            .rules
            .values()
            .map(|r| Change::AddRule { rule: r.clone() }),
    );
    changes.extend(
        [Scaffold::Hook(Slot::Container), Scaffold::Hook(Slot::Host)]
            .into_iter()
            .map(|scaffold| Change::AddScaffold { scaffold }),
    );
    changes
}

fn remove_all(state: &NatState) -> Vec<Change> {
    let mut changes: Vec<Change> = [Scaffold::Hook(Slot::Container), Scaffold::Hook(Slot::Host)]
        .into_iter()
        .map(|scaffold| Change::RemoveScaffold { scaffold })
        .collect();
    changes.extend(
        state
            .rules
            .values()
            .map(|r| Change::RemoveRule { rule: r.clone() }),
    );
    changes.extend(
        [
            Scaffold::Chain(Slot::Container),
            Scaffold::Chain(Slot::Host),
        ]
        .into_iter()
        .map(|scaffold| Change::RemoveScaffold { scaffold }),
    );
    changes
}

#[test]
fn golden_state_and_batches_match() {
    let state = sample_state();
    let strays = vec![
        Change::RemoveStray {
            stray: StrayRule {
                chain: "container".into(),
                text: "ip daddr 10.11.0.7 tcp dport 8080 counter drop # handle 19".into(),
            },
        },
        Change::RemoveStray {
            stray: StrayRule {
                chain: "container_redirect".into(),
                text: "10.11.0.5 . tcp . 443 : 34005".into(),
            },
        },
    ];
    let cases = [
        ("state.nft", Nftables.render_state(&state)),
        (
            "batch-create.nft",
            Nftables.render_batch(&create_all(&state)),
        ),
        (
            "batch-incremental.nft",
            Nftables.render_batch(&incremental(
                &state,
                rule(
                    Path::Container,
                    4,
                    Protocol::Tcp,
                    8080,
                    redirect(34004),
                    "default/web:http",
                ),
            )),
        ),
        ("batch-strays.nft", Nftables.render_batch(&strays)),
        (
            "batch-remove-all.nft",
            Nftables.render_batch(&remove_all(&state)),
        ),
    ];
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|(name, text)| check_golden(name, text))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn one_rule_change_touches_only_its_element() {
    let state = sample_state();
    let apache = state.rules.values().next().unwrap().clone();
    assert_eq!(
        Nftables.render_batch(&[Change::AddRule { rule: apache.clone() }]),
        "add element ip portald container_redirect { 10.11.0.1 . tcp . 80 comment \"default/apache-service:80\" : 34001 }\n"
    );
    assert_eq!(
        Nftables.render_batch(&[Change::RemoveRule { rule: apache }]),
        "delete element ip portald container_redirect { 10.11.0.1 . tcp . 80 }\n"
    );
}

#[test]
fn empty_changes_and_empty_state_render_as_nothing() {
    assert_eq!(Nftables.render_batch(&[]), "");
    assert_eq!(Nftables.render_state(&NatState::default()), "");
}

#[test]
fn table_is_deleted_only_when_both_paths_chains_go() {
    let one = [Change::RemoveScaffold {
        scaffold: Scaffold::Chain(Slot::Host),
    }];
    assert!(!Nftables.render_batch(&one).contains("delete table"));
    let both = remove_all(&sample_state());
    assert!(Nftables
        .render_batch(&both)
        .ends_with("delete table ip portald\n"));
}

#[test]
fn stray_in_a_chain_the_batch_flushes_or_deletes_is_left_to_that() {
    let stray = |chain: &str| Change::RemoveStray {
        stray: StrayRule {
            chain: chain.into(),
            text: "counter # handle 12".into(),
        },
    };
    let repair = [
        Change::AddScaffold {
            scaffold: Scaffold::Chain(Slot::Host),
        },
        stray("host"),
        stray("container"),
    ];
    let text = Nftables.render_batch(&repair);
    assert!(!text.contains("delete rule ip portald host "), "{text}");
    assert!(
        text.contains("delete rule ip portald container handle 12\n"),
        "{text}"
    );
    let teardown = [
        stray("output"),
        Change::RemoveScaffold {
            scaffold: Scaffold::Hook(Slot::Host),
        },
    ];
    assert_eq!(
        Nftables.render_batch(&teardown),
        "delete chain ip portald output\n"
    );
}

#[test]
fn dialect_commands_are_nft_json_listing_and_stdin_batches() {
    assert_eq!(Nftables.name(), "nftables");
    assert_eq!(
        Nftables.observe_command().to_string(),
        "nft -j list ruleset"
    );
    assert_eq!(Nftables.apply_command().to_string(), "nft -f -");
    assert_eq!(Nftables.check_command().to_string(), "nft -c -f -");
}

proptest! {
    #[test]
    fn rendered_json_parses_back_to_the_same_state(state in any_state(24)) {
        let live = Nftables.parse_live(&render_json(&state)).unwrap();
        prop_assert_eq!(&live.owned, &state);
        prop_assert!(live.stray.is_empty(), "{:?}", live.stray);
        prop_assert!(live.foreign.is_empty());
    }

    #[test]
    fn a_batch_read_back_through_the_model_reaches_its_target(
        from in any_state(12),
        to in any_state(12),
    ) {
        // The pure model of the kernel agrees with what a diff-shaped batch asks for, and the
        // batch renders deterministically with one line per element change.
        let mut changes = Vec::new();
        for old in from.rules.values() {
            match to.rules.get(&old.key) {
                None => changes.push(Change::RemoveRule { rule: old.clone() }),
                Some(new) if new != old => changes.push(Change::ReplaceRule { old: old.clone(), new: new.clone() }),
                Some(_) => {}
            }
        }
        for new in to.rules.values() {
            if !from.rules.contains_key(&new.key) {
                changes.push(Change::AddRule { rule: new.clone() });
            }
        }
        let rules_only = NatState { scaffold: Default::default(), rules: to.rules.clone() };
        let from_rules = NatState { scaffold: Default::default(), rules: from.rules.clone() };
        prop_assert_eq!(apply_changes(&from_rules, &changes), rules_only);
        let text = Nftables.render_batch(&changes);
        prop_assert_eq!(&text, &Nftables.render_batch(&changes));
        let replaced = changes.iter().filter(|c| matches!(c, Change::ReplaceRule { .. })).count();
        prop_assert_eq!(text.lines().count(), changes.len() + replaced);
    }
}
