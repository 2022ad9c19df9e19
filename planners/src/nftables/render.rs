//! Renders intended state as `nft -f` text and changes as one `nft -f` transaction.

use super::{
    chain_name, element_key, element_value, hook_chain, hook_spec, jump_rule, lookup_rule,
    map_name, Kind, FAMILY, KEY_TYPE, TABLE,
};
use crate::{Change, NatState, Path, PortalRule, Scaffold, StrayRule};
use std::collections::BTreeSet;
use std::fmt::Write;

/// `10.11.0.1 . tcp . 80 comment "default/a:80" : 12345`: one map element.
fn element(rule: &PortalRule) -> String {
    format!(
        "{} comment \"{}\" : {}",
        element_key(&rule.key),
        rule.comment,
        element_value(&rule.action)
    )
}

fn map_type(kind: Kind) -> String {
    format!("{} : {}", KEY_TYPE.join(" . "), kind.data_type())
}

/// The whole table, laid out the way `nft list table ip portald` prints it (elements sorted
/// by key rather than in the kernel's hash order, so the text is deterministic). A map is
/// present when its path's chain is, or when it holds elements. An empty state renders as
/// an empty string: no table at all.
pub(crate) fn render_state(state: &NatState) -> String {
    if state.is_empty() {
        return String::new();
    }
    let mut blocks: Vec<String> = Vec::new();
    for path in Path::ALL {
        for kind in Kind::ALL {
            let elements: Vec<String> = state
                .rules
                .values()
                .filter(|r| r.key.path == path && Kind::of(&r.action) == kind)
                .map(element)
                .collect();
            if elements.is_empty() && !state.scaffold.contains(&Scaffold::Chain(path)) {
                continue;
            }
            let mut block = format!("\tmap {} {{\n", map_name(path, kind));
            let _ = writeln!(block, "\t\ttype {}", map_type(kind));
            if !elements.is_empty() {
                let _ = writeln!(
                    block,
                    "\t\telements = {{ {} }}",
                    elements.join(",\n\t\t\t     ")
                );
            }
            block.push_str("\t}\n");
            blocks.push(block);
        }
    }
    for path in Path::ALL {
        if state.scaffold.contains(&Scaffold::Chain(path)) {
            let mut block = format!("\tchain {} {{\n", chain_name(path));
            for kind in Kind::ALL {
                let _ = writeln!(block, "\t\t{}", lookup_rule(path, kind));
            }
            block.push_str("\t}\n");
            blocks.push(block);
        }
    }
    for path in Path::ALL {
        if state.scaffold.contains(&Scaffold::Hook(path)) {
            blocks.push(format!(
                "\tchain {} {{\n\t\t{}\n\t\t{}\n\t}}\n",
                hook_chain(path),
                hook_spec(path),
                jump_rule(path)
            ));
        }
    }
    format!("table {FAMILY} {TABLE} {{\n{}}}\n", blocks.join("\n"))
}

/// One `nft -f` transaction: the kernel applies all of it or none of it.
///
/// - `AddScaffold` is idempotent: `add table`/`add map`/`add chain` succeed when the object
///   exists, and the chain is flushed before its rules are added, so a half-present chain
///   (which the parse reports as absent) is repaired rather than doubled.
/// - Rules are map elements: add, delete, and replace as delete + add (the kernel refuses to
///   `add` an element whose key exists with other data).
/// - `RemoveScaffold` deletes the chain (the kernel drops its rules with it) and, for a
///   path's chain, its two maps. When the batch removes both paths' chains nothing of
///   portald is left (hooks jump into those chains, so they must already be going), and a
///   final `delete table ip portald` also sweeps anything a stray left behind.
/// - `RemoveStray` deletes a rule by handle or an element by key. A stray in a chain that
///   the same batch flushes (`AddScaffold`) or deletes (`RemoveScaffold`) is already gone
///   then, and deleting it again would fail the whole transaction, so it is left out.
pub(crate) fn render_batch(changes: &[Change]) -> String {
    let swept: BTreeSet<String> = changes
        .iter()
        .filter_map(|c| match c {
            Change::AddScaffold { scaffold } | Change::RemoveScaffold { scaffold } => {
                Some(scaffold_chain(*scaffold).to_string())
            }
            _ => None,
        })
        .collect();
    let mut out = String::new();
    let mut table_added = false;
    for change in changes {
        match change {
            Change::AddScaffold { scaffold } => {
                // `add table` is idempotent; once per batch is enough.
                if !std::mem::replace(&mut table_added, true) {
                    let _ = writeln!(out, "add table {FAMILY} {TABLE}");
                }
                add_scaffold(&mut out, *scaffold)
            }
            Change::RemoveScaffold { scaffold } => remove_scaffold(&mut out, *scaffold),
            Change::AddRule { rule } => add_element(&mut out, rule),
            Change::RemoveRule { rule } => delete_element(&mut out, rule),
            Change::ReplaceRule { old, new } => {
                delete_element(&mut out, old);
                add_element(&mut out, new);
            }
            Change::RemoveStray { stray } => {
                if !swept.contains(&stray.chain) {
                    remove_stray(&mut out, stray);
                }
            }
        }
    }
    let removes_chain = |path| {
        changes.iter().any(|c| {
            matches!(c, Change::RemoveScaffold { scaffold } if *scaffold == Scaffold::Chain(path))
        })
    };
    if Path::ALL.into_iter().all(removes_chain) {
        let _ = writeln!(out, "delete table {FAMILY} {TABLE}");
    }
    out
}

/// The chain a scaffold is.
fn scaffold_chain(scaffold: Scaffold) -> &'static str {
    match scaffold {
        Scaffold::Chain(path) => chain_name(path),
        Scaffold::Hook(path) => hook_chain(path),
    }
}

fn add_scaffold(out: &mut String, scaffold: Scaffold) {
    match scaffold {
        Scaffold::Chain(path) => {
            for kind in Kind::ALL {
                let _ = writeln!(
                    out,
                    "add map {FAMILY} {TABLE} {} {{ type {}; }}",
                    map_name(path, kind),
                    map_type(kind)
                );
            }
            let chain = chain_name(path);
            let _ = writeln!(out, "add chain {FAMILY} {TABLE} {chain}");
            let _ = writeln!(out, "flush chain {FAMILY} {TABLE} {chain}");
            for kind in Kind::ALL {
                let _ = writeln!(
                    out,
                    "add rule {FAMILY} {TABLE} {chain} {}",
                    lookup_rule(path, kind)
                );
            }
        }
        Scaffold::Hook(path) => {
            let chain = hook_chain(path);
            let _ = writeln!(
                out,
                "add chain {FAMILY} {TABLE} {chain} {{ {} }}",
                hook_spec(path)
            );
            let _ = writeln!(out, "flush chain {FAMILY} {TABLE} {chain}");
            let _ = writeln!(out, "add rule {FAMILY} {TABLE} {chain} {}", jump_rule(path));
        }
    }
}

fn remove_scaffold(out: &mut String, scaffold: Scaffold) {
    match scaffold {
        Scaffold::Chain(path) => {
            // The chain first: its lookup rules reference the maps.
            let _ = writeln!(out, "delete chain {FAMILY} {TABLE} {}", chain_name(path));
            for kind in Kind::ALL {
                let _ = writeln!(out, "delete map {FAMILY} {TABLE} {}", map_name(path, kind));
            }
        }
        Scaffold::Hook(path) => {
            let _ = writeln!(out, "delete chain {FAMILY} {TABLE} {}", hook_chain(path));
        }
    }
}

fn add_element(out: &mut String, rule: &PortalRule) {
    let map = map_name(rule.key.path, Kind::of(&rule.action));
    let _ = writeln!(
        out,
        "add element {FAMILY} {TABLE} {map} {{ {} }}",
        element(rule)
    );
}

fn delete_element(out: &mut String, rule: &PortalRule) {
    let map = map_name(rule.key.path, Kind::of(&rule.action));
    let _ = writeln!(
        out,
        "delete element {FAMILY} {TABLE} {map} {{ {} }}",
        element_key(&rule.key)
    );
}

/// A stray is either an element of one of portald's maps (`chain` is the map's name, `text`
/// starts with the key) or a rule (`text` ends with `# handle N`, as `nft -a` prints it).
fn remove_stray(out: &mut String, stray: &StrayRule) {
    let is_map = Path::ALL
        .into_iter()
        .any(|p| Kind::ALL.into_iter().any(|k| map_name(p, k) == stray.chain));
    if is_map {
        let key = stray
            .text
            .split(" comment ")
            .next()
            .and_then(|t| t.split(" : ").next())
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "delete element {FAMILY} {TABLE} {} {{ {key} }}",
            stray.chain
        );
    } else if let Some(handle) = stray_handle(&stray.text) {
        let _ = writeln!(
            out,
            "delete rule {FAMILY} {TABLE} {} handle {handle}",
            stray.chain
        );
    } else {
        // Not one of ours: nothing safe to delete by. The verify step reports it.
        let text = stray.text.replace(['\n', '\r'], " ");
        let _ = writeln!(out, "# stray in `{}` has no handle: {text}", stray.chain);
    }
}

/// The `N` of a trailing `# handle N`.
pub(crate) fn stray_handle(text: &str) -> Option<u64> {
    text.rsplit_once("# handle ")
        .and_then(|(_, n)| n.trim().parse().ok())
}
