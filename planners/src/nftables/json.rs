//! Renders a state as the libnftables JSON that `nft -j list ruleset` prints once it is
//! applied: what a fake kernel or a captured snapshot hands to the parse.

use super::stmt::{to_value, Expr, Stmt};
use super::{
    affinity_set, chain_name, entries_in, entry_json, hook_chain, hook_facts, is_counted,
    is_interval, jump_exprs, map_name, rules_in, service_chain, service_exprs, slot_exprs,
    slot_maps, Kind, AFFINITY_SET_SIZE, ENTRY_SETS, FAMILY, TABLE,
};
use crate::{Action, NatState, PortalRule, Scaffold, Slot};
use serde_json::{json, Value};

/// A map or set element as the dump lists it; an element of a counted map with its
/// counter (at zero: the parse never reads the values).
fn element(rule: &PortalRule) -> Value {
    let mut key = json!({"elem": {
        "val": {"concat": [rule.key.vip.to_string(), rule.key.protocol.as_str(), rule.key.port]},
        "comment": rule.comment.as_str(),
    }});
    if is_counted(&map_name(rule.key.path, Kind::of(&rule.action))) {
        key["elem"]["counter"] = json!({"packets": 0, "bytes": 0});
    }
    let data = match &rule.action {
        Action::Redirect { to_port } => to_value(&Expr::Number(u64::from(*to_port))),
        Action::DnatLocal { to } => to_value(&Expr::concat(vec![
            Expr::text(to.ip().to_string()),
            Expr::Number(u64::from(to.port())),
        ])),
        Action::Balance { .. } => to_value(&Stmt::Goto {
            target: service_chain(&rule.key),
        }),
        Action::Reject => return key,
    };
    json!([key, data])
}

/// The dump, with handles numbered in order (the kernel's differ; nothing reads them but
/// stray removal) and elements sorted by key (the kernel lists them in hash order).
/// An empty state is a dump with no table.
pub fn render_json(state: &NatState) -> String {
    let mut items = vec![json!({"metainfo": {"version": "1.0.6", "json_schema_version": 1}})];
    if !state.is_empty() {
        let mut handle = 0u64;
        let mut next = || {
            handle += 1;
            handle
        };
        items.push(json!({"table": {"family": FAMILY, "name": TABLE, "handle": next()}}));
        for slot in Slot::ALL {
            for (name, key, data) in slot_maps(slot) {
                let elems: Vec<Value> = if ENTRY_SETS.iter().any(|(set, _)| *set == name) {
                    entries_in(state, &name)
                        .filter_map(|e| entry_json(e).map(|(_, v)| v))
                        .collect()
                } else {
                    rules_in(state, &name).map(element).collect()
                };
                if elems.is_empty() && !state.scaffold.contains(&Scaffold::Chain(slot)) {
                    continue;
                }
                let key: Value = if key.len() == 1 {
                    json!(key[0])
                } else {
                    json!(key)
                };
                let mut map = json!({
                    "family": FAMILY, "name": name, "table": TABLE, "type": key, "handle": next(),
                });
                if let Some(data) = data {
                    map["map"] = json!(data);
                }
                if is_interval(&name) {
                    map["flags"] = json!(["interval"]);
                }
                if is_counted(&name) {
                    map["stmt"] = json!([{"counter": null}]);
                }
                if !elems.is_empty() {
                    map["elem"] = Value::Array(elems);
                }
                let kind = if data.is_some() { "map" } else { "set" };
                items.push(json!({ kind: map }));
            }
        }
        let mut rules: Vec<(String, Value)> = Vec::new();
        for rule in state.rules.values() {
            let Action::Balance {
                endpoints,
                affinity_seconds,
            } = &rule.action
            else {
                continue;
            };
            if let Some(seconds) = affinity_seconds {
                for endpoint in endpoints {
                    items.push(json!({"set": {
                        "family": FAMILY, "name": affinity_set(&rule.key, endpoint), "table": TABLE,
                        "type": "ipv4_addr", "handle": next(), "size": AFFINITY_SET_SIZE,
                        "flags": ["timeout"], "timeout": seconds,
                    }}));
                }
            }
            let chain = service_chain(&rule.key);
            items.push(json!({"chain": {"family": FAMILY, "table": TABLE, "name": chain, "handle": next()}}));
            for expr in service_exprs(&rule.key, endpoints, *affinity_seconds) {
                rules.push((chain.clone(), expr));
            }
        }
        for slot in Slot::ALL {
            if state.scaffold.contains(&Scaffold::Chain(slot)) {
                let chain = chain_name(slot);
                items.push(json!({"chain": {"family": FAMILY, "table": TABLE, "name": chain, "handle": next()}}));
                for expr in slot_exprs(slot) {
                    rules.push((chain.to_string(), expr));
                }
            }
        }
        for slot in Slot::ALL {
            if state.scaffold.contains(&Scaffold::Hook(slot)) {
                let chain = hook_chain(slot);
                let (kind, hook, prio) = hook_facts(slot);
                items.push(json!({"chain": {
                    "family": FAMILY, "table": TABLE, "name": chain, "handle": next(),
                    "type": kind, "hook": hook, "prio": prio, "policy": "accept",
                }}));
                rules.push((chain.to_string(), jump_exprs(slot)));
            }
        }
        for (chain, expr) in rules {
            items.push(json!({"rule": {
                "family": FAMILY, "table": TABLE, "chain": chain, "handle": next(), "expr": expr,
            }}));
        }
    }
    json!({ "nftables": items }).to_string()
}
