//! Renders a state as the libnftables JSON that `nft -j list ruleset` prints once it is
//! applied: what a fake kernel or a captured snapshot hands to the parse.

use super::{chain_name, hook_chain, map_name, Kind, FAMILY, KEY_TYPE, TABLE};
use crate::{Action, NatState, Path, Scaffold};
use serde_json::{json, Value};

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
        for path in Path::ALL {
            for kind in Kind::ALL {
                let elems: Vec<Value> = state
                    .rules
                    .values()
                    .filter(|r| r.key.path == path && Kind::of(&r.action) == kind)
                    .map(|r| {
                        let key = json!({"elem": {
                            "val": {"concat": [r.key.vip.to_string(), r.key.protocol.as_str(), r.key.port]},
                            "comment": r.comment.as_str(),
                        }});
                        let data = match r.action {
                            Action::Redirect { to_port } => json!(to_port),
                            Action::DnatLocal { to } => json!({"concat": [to.ip().to_string(), to.port()]}),
                        };
                        json!([key, data])
                    })
                    .collect();
                if elems.is_empty() && !state.scaffold.contains(&Scaffold::Chain(path)) {
                    continue;
                }
                let mut map = json!({
                    "family": FAMILY, "name": map_name(path, kind), "table": TABLE,
                    "type": KEY_TYPE, "handle": next(), "map": kind.data_type(),
                });
                if !elems.is_empty() {
                    map["elem"] = Value::Array(elems);
                }
                items.push(json!({ "map": map }));
            }
        }
        let mut rules = Vec::new();
        for path in Path::ALL {
            if state.scaffold.contains(&Scaffold::Chain(path)) {
                let chain = chain_name(path);
                items.push(json!({"chain": {"family": FAMILY, "table": TABLE, "name": chain, "handle": next()}}));
                for kind in Kind::ALL {
                    rules.push((chain, lookup_exprs(path, kind)));
                }
            }
        }
        for path in Path::ALL {
            if state.scaffold.contains(&Scaffold::Hook(path)) {
                let chain = hook_chain(path);
                items.push(json!({"chain": {
                    "family": FAMILY, "table": TABLE, "name": chain, "handle": next(),
                    "type": "nat", "hook": chain, "prio": -110, "policy": "accept",
                }}));
                rules.push((chain, json!([{"jump": {"target": chain_name(path)}}])));
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

/// The JSON of [`super::lookup_rule`].
fn lookup_exprs(path: Path, kind: Kind) -> Value {
    let l4 = json!({"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": {"set": ["tcp", "udp"]}}});
    let lookup = json!({"map": {
        "key": {"concat": [
            {"payload": {"protocol": "ip", "field": "daddr"}},
            {"meta": {"key": "l4proto"}},
            {"payload": {"protocol": "th", "field": "dport"}},
        ]},
        "data": format!("@{}", map_name(path, kind)),
    }});
    let nat = match kind {
        Kind::Redirect => json!({"redirect": {"port": lookup}}),
        Kind::Dnat => json!({"dnat": {"family": "ip", "addr": lookup}}),
    };
    json!([l4, nat])
}
