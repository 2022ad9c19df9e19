//! Renders intended state as `nft -f` text and changes as one `nft -f` transaction.

use super::{
    affinity_set, chain_name, element_key, element_value, entries_in, entry_element, hook_chain,
    hook_spec, is_counted, is_interval, jump_rule, map_name, rules_in, service_chain,
    service_rules, slot_maps, slot_rules, Kind, AFFINITY_SET_SIZE, ENTRY_SETS, FAMILY, TABLE,
};
use crate::{Action, Change, NatState, PortalRule, Scaffold, Slot, StrayRule};
use std::collections::BTreeSet;
use std::fmt::Write;

/// `10.11.0.1 . tcp . 80 comment "default/a:80" : 12345`: one map or set element.
fn element(rule: &PortalRule) -> String {
    let mut text = format!("{} comment \"{}\"", element_key(&rule.key), rule.comment);
    if let Some(value) = element_value(&rule.key, &rule.action) {
        let _ = write!(text, " : {value}");
    }
    text
}

/// `type ...` (and `flags interval` for the sets of ranges) of a map or set.
fn map_declaration(name: &str, key: &[&str], data: Option<&str>) -> String {
    let mut text = format!("type {}", key.join(" . "));
    if let Some(data) = data {
        let _ = write!(text, " : {data}");
    }
    if is_interval(name) {
        text.push_str("; flags interval");
    }
    if is_counted(name) {
        text.push_str("; counter");
    }
    text
}

/// An affinity set as the kernel lists it: the `update` that fills it sets its size.
fn affinity_declaration(seconds: u32) -> String {
    format!("type ipv4_addr; size {AFFINITY_SET_SIZE}; flags dynamic,timeout; timeout {seconds}s;")
}

/// An affinity set as the batch creates it. No size: a set created with one gets a
/// fixed-size hash table allocated up front (about 1 MiB for 65,535 entries), which made
/// 1,000 affinity services exhaust memory; without one the kernel picks a table that grows
/// with its entries, and the `update` that fills it caps it at [`AFFINITY_SET_SIZE`].
fn affinity_creation(seconds: u32) -> String {
    format!("type ipv4_addr; flags dynamic,timeout; timeout {seconds}s;")
}

/// The whole table, laid out like `nft list table ip portald` (elements sorted by key
/// rather than in the kernel's hash order, so the text is deterministic). A map is present
/// when its slot's chain is, or when it holds elements. An empty state renders as an empty
/// string: no table at all.
pub(crate) fn render_state(state: &NatState) -> String {
    if state.is_empty() {
        return String::new();
    }
    let mut blocks: Vec<String> = Vec::new();
    for slot in Slot::ALL {
        for (name, key, data) in slot_maps(slot) {
            let elements: Vec<String> = if ENTRY_SETS.iter().any(|(set, _)| *set == name) {
                entries_in(state, &name)
                    .filter_map(|e| entry_element(e).map(|(_, text)| text))
                    .collect()
            } else {
                rules_in(state, &name).map(element).collect()
            };
            if elements.is_empty() && !state.scaffold.contains(&Scaffold::Chain(slot)) {
                continue;
            }
            let kind = if data.is_some() { "map" } else { "set" };
            let mut block = format!("\t{kind} {name} {{\n");
            for line in map_declaration(&name, &key, data).split("; ") {
                let _ = writeln!(block, "\t\t{line}");
            }
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
    for rule in state.rules.values() {
        if let Action::Balance {
            endpoints,
            affinity_seconds: Some(seconds),
        } = &rule.action
        {
            for endpoint in endpoints {
                let mut block = format!("\tset {} {{\n", affinity_set(&rule.key, endpoint));
                for line in affinity_declaration(*seconds)
                    .trim_end_matches(';')
                    .split("; ")
                {
                    let _ = writeln!(block, "\t\t{line}");
                }
                block.push_str("\t}\n");
                blocks.push(block);
            }
        }
    }
    for rule in state.rules.values() {
        if let Action::Balance {
            endpoints,
            affinity_seconds,
        } = &rule.action
        {
            let mut block = format!("\tchain {} {{\n", service_chain(&rule.key));
            for line in service_rules(&rule.key, endpoints, *affinity_seconds) {
                let _ = writeln!(block, "\t\t{line}");
            }
            block.push_str("\t}\n");
            blocks.push(block);
        }
    }
    for slot in Slot::ALL {
        if state.scaffold.contains(&Scaffold::Chain(slot)) {
            let mut block = format!("\tchain {} {{\n", chain_name(slot));
            for rule in slot_rules(slot) {
                let _ = writeln!(block, "\t\t{rule}");
            }
            block.push_str("\t}\n");
            blocks.push(block);
        }
    }
    for slot in Slot::ALL {
        if state.scaffold.contains(&Scaffold::Hook(slot)) {
            blocks.push(format!(
                "\tchain {} {{\n\t\t{}\n\t\t{}\n\t}}\n",
                hook_chain(slot),
                hook_spec(slot),
                jump_rule(slot)
            ));
        }
    }
    format!("table {FAMILY} {TABLE} {{\n{}}}\n", blocks.join("\n"))
}

/// One `nft -f` transaction: the kernel applies all of it or none of it.
///
/// - `AddScaffold` of a chain or hook is idempotent: `add table`/`add map`/`add chain`
///   succeed when the object exists, and the chain is flushed before its rules are added, so
///   a half-present chain (which the parse reports as absent) is repaired, not doubled.
/// - Rules are map elements: add, delete, and replace as delete + add (the kernel refuses to
///   `add` an element whose key exists with other data). A Balance portal also owns its
///   chain and affinity sets: created with the element, flushed and refilled when only its
///   endpoints change (the element stays), deleted after the element.
/// - `RemoveScaffold` deletes the chain (the kernel drops its rules with it) and its maps.
///   When the batch removes every slot's chain nothing of portald is left, and a final
///   `delete table ip portald` also sweeps anything a stray left behind.
/// - `RemoveStray` deletes a rule by handle, an element by key, or an orphan chain or set by
///   name (those last, once nothing refers to them). A stray in a chain that the same batch
///   flushes or deletes is already gone then, and deleting it again would fail the whole
///   transaction, so it is left out.
pub(crate) fn render_batch(changes: &[Change]) -> String {
    let swept: BTreeSet<String> = changes
        .iter()
        .filter_map(|c| match c {
            Change::AddScaffold { scaffold } | Change::RemoveScaffold { scaffold } => {
                scaffold_chain(*scaffold).map(str::to_string)
            }
            _ => None,
        })
        .collect();
    // Whole maps the batch deletes whose slot chain it also adds: made anew right there
    // (see `add_scaffold`), not at the end, where the new map would already stand.
    let remade: BTreeSet<String> = changes
        .iter()
        .filter_map(|c| match c {
            Change::RemoveStray { stray } if stray.text == format!("map {}", stray.chain) => {
                Some(stray.chain.clone())
            }
            _ => None,
        })
        .filter(|map| {
            changes.iter().any(|c| match c {
                Change::AddScaffold {
                    scaffold: Scaffold::Chain(slot),
                } => slot_maps(*slot).iter().any(|(name, _, _)| name == map),
                _ => false,
            })
        })
        .collect();
    // Service chains and affinity sets the batch fills: an orphan of the same name (left
    // by a map made anew, or by hand) is taken over, not deleted after the element that
    // refers to it again.
    let filled: BTreeSet<String> = changes
        .iter()
        .filter_map(|c| match c {
            Change::AddRule { rule } | Change::ReplaceRule { new: rule, .. } => Some(rule),
            _ => None,
        })
        .filter(|rule| matches!(rule.action, Action::Balance { .. }))
        .flat_map(|rule| {
            let mut names = sets_of(rule);
            names.insert(service_chain(&rule.key));
            names
        })
        .collect();
    let taken_over = |stray: &StrayRule| {
        filled.contains(&stray.chain)
            && (stray.text == format!("chain {}", stray.chain)
                || stray.text == format!("set {}", stray.chain))
    };
    let mut out = String::new();
    let mut late = Vec::new();
    let mut table_added = false;
    for change in changes {
        match change {
            Change::AddScaffold { scaffold } => {
                // `add table` is idempotent; once per batch is enough.
                if !std::mem::replace(&mut table_added, true) {
                    let _ = writeln!(out, "add table {FAMILY} {TABLE}");
                }
                add_scaffold(&mut out, *scaffold, &remade)
            }
            Change::RemoveScaffold { scaffold } => remove_scaffold(&mut out, *scaffold),
            Change::AddRule { rule } => add_rule(&mut out, rule),
            Change::RemoveRule { rule } => remove_rule(&mut out, rule),
            Change::ReplaceRule { old, new } => replace_rule(&mut out, old, new),
            Change::RemoveStray { stray } => {
                if !swept.contains(&stray.chain)
                    && !remade.contains(&stray.chain)
                    && !taken_over(stray)
                {
                    remove_stray(&mut out, &mut late, stray);
                }
            }
        }
    }
    late.sort();
    for line in late {
        out.push_str(&line.1);
    }
    let removes_chain = |slot| {
        changes.iter().any(|c| {
            matches!(c, Change::RemoveScaffold { scaffold } if *scaffold == Scaffold::Chain(slot))
        })
    };
    if [Slot::Container, Slot::Host].into_iter().all(removes_chain) {
        let _ = writeln!(out, "delete table {FAMILY} {TABLE}");
    }
    out
}

/// The chain a scaffold is, if it is a chain.
fn scaffold_chain(scaffold: Scaffold) -> Option<&'static str> {
    match scaffold {
        Scaffold::Chain(slot) => Some(chain_name(slot)),
        Scaffold::Hook(slot) => Some(hook_chain(slot)),
        _ => None,
    }
}

/// Adds a chain or hook (with the maps a chain looks up) or a set entry. A map in `remade`
/// exists with another declaration: the chain is emptied of the rules that refer to it,
/// and it is deleted (its elements with it) before it is added again.
fn add_scaffold(out: &mut String, scaffold: Scaffold, remade: &BTreeSet<String>) {
    match scaffold {
        Scaffold::Chain(slot) => {
            let maps = slot_maps(slot);
            let chain = chain_name(slot);
            if maps.iter().any(|(name, _, _)| remade.contains(name)) {
                let _ = writeln!(out, "add chain {FAMILY} {TABLE} {chain}");
                let _ = writeln!(out, "flush chain {FAMILY} {TABLE} {chain}");
                for (name, _, _) in maps.iter().filter(|(name, _, _)| remade.contains(name)) {
                    let _ = writeln!(out, "delete map {FAMILY} {TABLE} {name}");
                }
            }
            for (name, key, data) in maps {
                let kind = if data.is_some() { "map" } else { "set" };
                let _ = writeln!(
                    out,
                    "add {kind} {FAMILY} {TABLE} {name} {{ {}; }}",
                    map_declaration(&name, &key, data)
                );
            }
            let _ = writeln!(out, "add chain {FAMILY} {TABLE} {chain}");
            let _ = writeln!(out, "flush chain {FAMILY} {TABLE} {chain}");
            for rule in slot_rules(slot) {
                let _ = writeln!(out, "add rule {FAMILY} {TABLE} {chain} {rule}");
            }
        }
        Scaffold::Hook(slot) => {
            let chain = hook_chain(slot);
            let _ = writeln!(
                out,
                "add chain {FAMILY} {TABLE} {chain} {{ {} }}",
                hook_spec(slot)
            );
            let _ = writeln!(out, "flush chain {FAMILY} {TABLE} {chain}");
            let _ = writeln!(out, "add rule {FAMILY} {TABLE} {chain} {}", jump_rule(slot));
        }
        entry => {
            if let Some((set, element)) = entry_element(&entry) {
                let _ = writeln!(out, "add element {FAMILY} {TABLE} {set} {{ {element} }}");
            }
        }
    }
}

fn remove_scaffold(out: &mut String, scaffold: Scaffold) {
    match scaffold {
        Scaffold::Chain(slot) => {
            // The chain first: its rules reference the maps.
            let _ = writeln!(out, "delete chain {FAMILY} {TABLE} {}", chain_name(slot));
            for (name, _, data) in slot_maps(slot) {
                let kind = if data.is_some() { "map" } else { "set" };
                let _ = writeln!(out, "delete {kind} {FAMILY} {TABLE} {name}");
            }
        }
        Scaffold::Hook(slot) => {
            let _ = writeln!(out, "delete chain {FAMILY} {TABLE} {}", hook_chain(slot));
        }
        entry => {
            if let Some((set, element)) = entry_element(&entry) {
                let _ = writeln!(out, "delete element {FAMILY} {TABLE} {set} {{ {element} }}");
            }
        }
    }
}

fn map_of(rule: &PortalRule) -> String {
    map_name(rule.key.path, Kind::of(&rule.action))
}

/// A Balance portal's chain and sets, filled (the chain is flushed first: it may exist).
fn fill_service(out: &mut String, rule: &PortalRule, old_sets: &BTreeSet<String>) {
    let Action::Balance {
        endpoints,
        affinity_seconds,
    } = &rule.action
    else {
        return;
    };
    let chain = service_chain(&rule.key);
    if let Some(seconds) = affinity_seconds {
        for endpoint in endpoints {
            let set = affinity_set(&rule.key, endpoint);
            if !old_sets.contains(&set) {
                let _ = writeln!(
                    out,
                    "add set {FAMILY} {TABLE} {set} {{ {} }}",
                    affinity_creation(*seconds)
                );
            }
        }
    }
    let _ = writeln!(out, "add chain {FAMILY} {TABLE} {chain}");
    let _ = writeln!(out, "flush chain {FAMILY} {TABLE} {chain}");
    for line in service_rules(&rule.key, endpoints, *affinity_seconds) {
        let _ = writeln!(out, "add rule {FAMILY} {TABLE} {chain} {line}");
    }
}

/// The affinity sets of a rule (none unless it is a Balance with affinity).
fn sets_of(rule: &PortalRule) -> BTreeSet<String> {
    match &rule.action {
        Action::Balance {
            endpoints,
            affinity_seconds: Some(_),
        } => endpoints
            .iter()
            .map(|e| affinity_set(&rule.key, e))
            .collect(),
        _ => BTreeSet::new(),
    }
}

fn add_element(out: &mut String, rule: &PortalRule) {
    let _ = writeln!(
        out,
        "add element {FAMILY} {TABLE} {} {{ {} }}",
        map_of(rule),
        element(rule)
    );
}

fn delete_element(out: &mut String, rule: &PortalRule) {
    let _ = writeln!(
        out,
        "delete element {FAMILY} {TABLE} {} {{ {} }}",
        map_of(rule),
        element_key(&rule.key)
    );
}

fn add_rule(out: &mut String, rule: &PortalRule) {
    fill_service(out, rule, &BTreeSet::new());
    add_element(out, rule);
}

fn remove_rule(out: &mut String, rule: &PortalRule) {
    delete_element(out, rule);
    if matches!(rule.action, Action::Balance { .. }) {
        let _ = writeln!(
            out,
            "delete chain {FAMILY} {TABLE} {}",
            service_chain(&rule.key)
        );
    }
    for set in sets_of(rule) {
        let _ = writeln!(out, "delete set {FAMILY} {TABLE} {set}");
    }
}

fn replace_rule(out: &mut String, old: &PortalRule, new: &PortalRule) {
    let both_balance = matches!(old.action, Action::Balance { .. })
        && matches!(new.action, Action::Balance { .. });
    if !both_balance {
        remove_rule(out, old);
        add_rule(out, new);
        return;
    }
    // Same chain name (it is named by the key): refill it in place; the element changes only
    // if its comment does. Sets of endpoints that stay keep their clients, unless the
    // timeout changed: a set's timeout is fixed when it is made, so then all are remade.
    let affinity = |rule: &PortalRule| match rule.action {
        Action::Balance {
            affinity_seconds, ..
        } => affinity_seconds,
        _ => None,
    };
    let mut old_sets = sets_of(old);
    let new_sets = sets_of(new);
    if affinity(old) != affinity(new) && !old_sets.is_empty() {
        let chain = service_chain(&old.key);
        let _ = writeln!(out, "flush chain {FAMILY} {TABLE} {chain}");
        for set in std::mem::take(&mut old_sets) {
            let _ = writeln!(out, "delete set {FAMILY} {TABLE} {set}");
        }
    }
    fill_service(out, new, &old_sets);
    if old.comment != new.comment {
        delete_element(out, old);
        add_element(out, new);
    }
    for set in old_sets.difference(&new_sets) {
        let _ = writeln!(out, "delete set {FAMILY} {TABLE} {set}");
    }
}

/// A stray is an element of one of portald's maps or sets (`chain` is its name, `text`
/// starts with the key), a rule (`text` ends with `# handle N`, as `nft -a` prints it), or a
/// whole orphan object (`text` is `chain NAME` or `set NAME`). Orphans go last, chains
/// before sets, since rules in chains refer to sets.
fn remove_stray(out: &mut String, late: &mut Vec<(u8, String)>, stray: &StrayRule) {
    if stray.text == format!("chain {}", stray.chain) {
        late.push((
            0,
            format!("delete chain {FAMILY} {TABLE} {}\n", stray.chain),
        ));
        return;
    }
    if stray.text == format!("set {}", stray.chain) || stray.text == format!("map {}", stray.chain)
    {
        let kind = &stray.text[..3];
        late.push((
            1,
            format!("delete {kind} {FAMILY} {TABLE} {}\n", stray.chain),
        ));
        return;
    }
    let is_map = Slot::ALL.into_iter().any(|slot| {
        slot_maps(slot)
            .into_iter()
            .any(|(name, _, _)| name == stray.chain)
    });
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
