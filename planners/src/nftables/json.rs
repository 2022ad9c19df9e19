//! Renders a state as the libnftables JSON that `nft -j list ruleset` prints once it is
//! applied: what a fake kernel or a captured snapshot hands to the parse.

use super::schema::{Counter, KeyType};
use super::stmt::{Expr, Stmt};
use super::{
    affinity_set, chain_name, entries_in, entry_json, hook_chain, hook_facts, is_counted,
    is_interval, jump_exprs, map_name, rules_in, service_chain, service_exprs, slot_exprs,
    slot_maps, Kind, AFFINITY_SET_SIZE, ENTRY_SETS, FAMILY, TABLE,
};
use crate::{Action, NatState, PortalRule, Scaffold, Slot};
use serde::Serialize;
use serde_json::Value;

/// The document: `{"nftables": [object, ...]}`.
#[derive(Serialize)]
struct Document {
    nftables: Vec<Object>,
}

/// One item of the list, named by its kind (libnftables-json(5), RULESET ELEMENTS).
#[derive(Serialize)]
#[serde(rename_all = "lowercase")]
enum Object {
    Metainfo {
        version: &'static str,
        json_schema_version: u32,
    },
    Table {
        family: &'static str,
        name: &'static str,
        handle: u64,
    },
    Map(SetDecl),
    Set(SetDecl),
    Chain(ChainDecl),
    Rule(RuleDecl),
}

/// A set or map as `nft -j list` shows it; absent fields are left out, as nft leaves them.
#[derive(Serialize)]
struct SetDecl {
    family: &'static str,
    name: String,
    table: &'static str,
    #[serde(rename = "type")]
    key: KeyType,
    handle: u64,
    /// A map's data type (`inet_service`, `verdict`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    map: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<u32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    flags: Vec<&'static str>,
    /// Seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout: Option<u32>,
    /// Statements every element carries (`counter`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    stmt: Vec<Stmt>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    elem: Vec<Elem>,
}

/// A regular chain, or a base chain with its hook.
#[derive(Serialize)]
struct ChainDecl {
    family: &'static str,
    table: &'static str,
    name: String,
    handle: u64,
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    hook: Option<Hook>,
}

#[derive(Serialize)]
struct Hook {
    #[serde(rename = "type")]
    kind: &'static str,
    hook: &'static str,
    prio: i64,
    policy: &'static str,
}

#[derive(Serialize)]
struct RuleDecl {
    family: &'static str,
    table: &'static str,
    chain: String,
    handle: u64,
    /// The statements, built from `stmt.rs`'s `Stmt` (the same values the parse expects).
    expr: Value,
}

/// An element: a portal's key, with its data in a map, or a scaffold entry's value.
#[derive(Serialize)]
#[serde(untagged)]
enum Elem {
    Mapped(PortalKey, Data),
    Key(PortalKey),
    Entry(Expr),
}

/// `{"elem": {"val": ..., "comment": ..., "counter": ...}}`.
#[derive(Serialize)]
struct PortalKey {
    elem: Described,
}

#[derive(Serialize)]
struct Described {
    val: Expr,
    comment: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    counter: Option<Counter>,
}

/// A map element's data: a port, an address and port, or a verdict.
#[derive(Serialize)]
#[serde(untagged)]
enum Data {
    Expr(Expr),
    Verdict(Stmt),
}

/// A map or set element as the dump lists it; an element of a counted map with its
/// counter (at zero: the parse never reads the values).
fn element(rule: &PortalRule) -> Elem {
    let key = PortalKey {
        elem: Described {
            val: Expr::concat(vec![
                Expr::text(rule.key.vip.to_string()),
                Expr::text(rule.key.protocol.as_str()),
                Expr::Number(u64::from(rule.key.port)),
            ]),
            comment: rule.comment.as_str().to_string(),
            counter: is_counted(&map_name(rule.key.path, Kind::of(&rule.action))).then_some(
                Counter {
                    packets: 0,
                    bytes: 0,
                },
            ),
        },
    };
    let data = match &rule.action {
        Action::Redirect { to_port } => Data::Expr(Expr::Number(u64::from(*to_port))),
        Action::DnatLocal { to } => Data::Expr(Expr::concat(vec![
            Expr::text(to.ip().to_string()),
            Expr::Number(u64::from(to.port())),
        ])),
        Action::Balance { .. } => Data::Verdict(Stmt::Goto {
            target: service_chain(&rule.key),
        }),
        Action::Reject => return Elem::Key(key),
    };
    Elem::Mapped(key, data)
}

/// The dump, with handles numbered in order (the kernel's differ; nothing reads them but
/// stray removal) and elements sorted by key (the kernel lists them in hash order).
/// An empty state is a dump with no table.
pub fn render_json(state: &NatState) -> String {
    let mut items = vec![Object::Metainfo {
        version: "1.0.6",
        json_schema_version: 1,
    }];
    if !state.is_empty() {
        let mut handle = 0u64;
        let mut next = || {
            handle += 1;
            handle
        };
        items.push(Object::Table {
            family: FAMILY,
            name: TABLE,
            handle: next(),
        });
        for slot in Slot::ALL {
            for (name, key, data) in slot_maps(slot) {
                let elem: Vec<Elem> = if ENTRY_SETS.iter().any(|(set, _)| *set == name) {
                    entries_in(state, &name)
                        .filter_map(|e| entry_json(e).map(|(_, v)| Elem::Entry(v)))
                        .collect()
                } else {
                    rules_in(state, &name).map(element).collect()
                };
                if elem.is_empty() && !state.scaffold.contains(&Scaffold::Chain(slot)) {
                    continue;
                }
                let key = match key.as_slice() {
                    [one] => KeyType::One(one.to_string()),
                    parts => KeyType::Concat(parts.iter().map(|p| p.to_string()).collect()),
                };
                let decl = SetDecl {
                    family: FAMILY,
                    stmt: if is_counted(&name) {
                        vec![Stmt::Counter(())]
                    } else {
                        Vec::new()
                    },
                    flags: if is_interval(&name) {
                        vec!["interval"]
                    } else {
                        Vec::new()
                    },
                    name,
                    table: TABLE,
                    key,
                    handle: next(),
                    map: data,
                    size: None,
                    timeout: None,
                    elem,
                };
                items.push(match data {
                    Some(_) => Object::Map(decl),
                    None => Object::Set(decl),
                });
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
                    items.push(Object::Set(SetDecl {
                        family: FAMILY,
                        name: affinity_set(&rule.key, endpoint),
                        table: TABLE,
                        key: KeyType::One("ipv4_addr".to_string()),
                        handle: next(),
                        map: None,
                        size: Some(AFFINITY_SET_SIZE),
                        flags: vec!["timeout"],
                        timeout: Some(*seconds),
                        stmt: Vec::new(),
                        elem: Vec::new(),
                    }));
                }
            }
            let chain = service_chain(&rule.key);
            items.push(Object::Chain(ChainDecl {
                family: FAMILY,
                table: TABLE,
                name: chain.clone(),
                handle: next(),
                hook: None,
            }));
            for expr in service_exprs(&rule.key, endpoints, *affinity_seconds) {
                rules.push((chain.clone(), expr));
            }
        }
        for slot in Slot::ALL {
            if state.scaffold.contains(&Scaffold::Chain(slot)) {
                let chain = chain_name(slot);
                items.push(Object::Chain(ChainDecl {
                    family: FAMILY,
                    table: TABLE,
                    name: chain.to_string(),
                    handle: next(),
                    hook: None,
                }));
                for expr in slot_exprs(slot) {
                    rules.push((chain.to_string(), expr));
                }
            }
        }
        for slot in Slot::ALL {
            if state.scaffold.contains(&Scaffold::Hook(slot)) {
                let chain = hook_chain(slot);
                let (kind, hook, prio) = hook_facts(slot);
                items.push(Object::Chain(ChainDecl {
                    family: FAMILY,
                    table: TABLE,
                    name: chain.to_string(),
                    handle: next(),
                    hook: Some(Hook {
                        kind,
                        hook,
                        prio,
                        policy: "accept",
                    }),
                }));
                rules.push((chain.to_string(), jump_exprs(slot)));
            }
        }
        for (chain, expr) in rules {
            items.push(Object::Rule(RuleDecl {
                family: FAMILY,
                table: TABLE,
                chain,
                handle: next(),
                expr,
            }));
        }
    }
    // Through a `Value`, whose maps sort their keys: the dump lists every object's fields in
    // name order, as the captures and goldens have them, whatever order the types declare.
    serde_json::to_value(Document { nftables: items })
        .map(|v| v.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Comment, Net, Path, PortalKey, Protocol};

    /// One portal of each kind on the container path, its chains and hooks, and one entry.
    fn state() -> NatState {
        let mut state = NatState::default();
        for scaffold in [
            Scaffold::Chain(Slot::Container),
            Scaffold::Hook(Slot::Container),
            Scaffold::Chain(Slot::ContainerReject),
            Scaffold::Forward(Net::new("10.11.0.0".parse().unwrap(), 16).unwrap()),
        ] {
            state.scaffold.insert(scaffold);
        }
        let actions = [
            Action::Redirect { to_port: 34001 },
            Action::DnatLocal {
                to: "127.0.0.1:34002".parse().unwrap(),
            },
            Action::Balance {
                endpoints: vec!["10.244.1.2:80".parse().unwrap()],
                affinity_seconds: Some(60),
            },
            Action::Reject,
        ];
        for (port, action) in (80..).zip(actions) {
            state.insert_rule(PortalRule {
                key: PortalKey {
                    path: Path::Container,
                    vip: "10.11.0.1".parse().unwrap(),
                    protocol: Protocol::Tcp,
                    port,
                },
                comment: Comment::new(format!("default/a:{port}")).unwrap(),
                action,
            });
        }
        state
    }

    #[test]
    fn the_dump_lists_every_kind_of_object_with_its_fields_in_name_order_as_nft_prints_them() {
        let expected = concat!(
            r#"{"nftables":["#,
            r#"{"metainfo":{"json_schema_version":1,"version":"1.0.6"}},"#,
            r#"{"table":{"family":"ip","handle":1,"name":"portald"}},"#,
            r#"{"map":{"elem":[[{"elem":{"comment":"default/a:80","counter":{"bytes":0,"packets":0},"val":{"concat":["10.11.0.1","tcp",80]}}},34001]],"family":"ip","handle":2,"map":"inet_service","name":"container_redirect","stmt":[{"counter":null}],"table":"portald","type":["ipv4_addr","inet_proto","inet_service"]}},"#,
            r#"{"map":{"elem":[[{"elem":{"comment":"default/a:81","counter":{"bytes":0,"packets":0},"val":{"concat":["10.11.0.1","tcp",81]}}},{"concat":["127.0.0.1",34002]}]],"family":"ip","handle":3,"map":"ipv4_addr . inet_service","name":"container_dnat","stmt":[{"counter":null}],"table":"portald","type":["ipv4_addr","inet_proto","inet_service"]}},"#,
            r#"{"map":{"elem":[[{"elem":{"comment":"default/a:82","counter":{"bytes":0,"packets":0},"val":{"concat":["10.11.0.1","tcp",82]}}},{"goto":{"target":"svc-c-10.11.0.1-tcp-82"}}]],"family":"ip","handle":4,"map":"verdict","name":"container_services","stmt":[{"counter":null}],"table":"portald","type":["ipv4_addr","inet_proto","inet_service"]}},"#,
            r#"{"set":{"elem":[{"elem":{"comment":"default/a:83","val":{"concat":["10.11.0.1","tcp",83]}}}],"family":"ip","handle":5,"name":"container_no_endpoints","table":"portald","type":["ipv4_addr","inet_proto","inet_service"]}},"#,
            r#"{"set":{"elem":[{"prefix":{"addr":"10.11.0.0","len":16}}],"family":"ip","flags":["interval"],"handle":6,"name":"forward_portals","table":"portald","type":"ipv4_addr"}},"#,
            r#"{"set":{"family":"ip","flags":["timeout"],"handle":7,"name":"aff-c-10.11.0.1-tcp-82-10.244.1.2-80","size":65535,"table":"portald","timeout":60,"type":"ipv4_addr"}},"#,
            r#"{"chain":{"family":"ip","handle":8,"name":"svc-c-10.11.0.1-tcp-82","table":"portald"}},"#,
            r#"{"chain":{"family":"ip","handle":9,"name":"container","table":"portald"}},"#,
            r#"{"chain":{"family":"ip","handle":10,"name":"container_reject","table":"portald"}},"#,
            r#"{"chain":{"family":"ip","handle":11,"hook":"prerouting","name":"prerouting","policy":"accept","prio":-110,"table":"portald","type":"nat"}},"#,
            r#"{"rule":{"chain":"svc-c-10.11.0.1-tcp-82","expr":[{"match":{"left":{"meta":{"key":"l4proto"}},"op":"==","right":"tcp"}},{"match":{"left":{"payload":{"field":"saddr","protocol":"ip"}},"op":"==","right":"@aff-c-10.11.0.1-tcp-82-10.244.1.2-80"}},{"set":{"elem":{"payload":{"field":"saddr","protocol":"ip"}},"op":"update","set":"@aff-c-10.11.0.1-tcp-82-10.244.1.2-80"}},{"dnat":{"addr":"10.244.1.2","port":80}}],"family":"ip","handle":12,"table":"portald"}},"#,
            r#"{"rule":{"chain":"svc-c-10.11.0.1-tcp-82","expr":[{"match":{"left":{"meta":{"key":"l4proto"}},"op":"==","right":"tcp"}},{"set":{"elem":{"payload":{"field":"saddr","protocol":"ip"}},"op":"update","set":"@aff-c-10.11.0.1-tcp-82-10.244.1.2-80"}},{"dnat":{"addr":"10.244.1.2","port":80}}],"family":"ip","handle":13,"table":"portald"}},"#,
            r#"{"rule":{"chain":"container","expr":[{"match":{"left":{"meta":{"key":"l4proto"}},"op":"==","right":{"set":["tcp","udp"]}}},{"redirect":{"port":{"map":{"data":"@container_redirect","key":{"concat":[{"payload":{"field":"daddr","protocol":"ip"}},{"meta":{"key":"l4proto"}},{"payload":{"field":"dport","protocol":"th"}}]}}}}}],"family":"ip","handle":14,"table":"portald"}},"#,
            r#"{"rule":{"chain":"container","expr":[{"match":{"left":{"meta":{"key":"l4proto"}},"op":"==","right":{"set":["tcp","udp"]}}},{"dnat":{"addr":{"map":{"data":"@container_dnat","key":{"concat":[{"payload":{"field":"daddr","protocol":"ip"}},{"meta":{"key":"l4proto"}},{"payload":{"field":"dport","protocol":"th"}}]}}},"family":"ip"}}],"family":"ip","handle":15,"table":"portald"}},"#,
            r#"{"rule":{"chain":"container","expr":[{"match":{"left":{"meta":{"key":"l4proto"}},"op":"==","right":{"set":["tcp","udp"]}}},{"vmap":{"data":"@container_services","key":{"concat":[{"payload":{"field":"daddr","protocol":"ip"}},{"meta":{"key":"l4proto"}},{"payload":{"field":"dport","protocol":"th"}}]}}}],"family":"ip","handle":16,"table":"portald"}},"#,
            r#"{"rule":{"chain":"container_reject","expr":[{"match":{"left":{"concat":[{"payload":{"field":"daddr","protocol":"ip"}},{"meta":{"key":"l4proto"}},{"payload":{"field":"dport","protocol":"tcp"}}]},"op":"==","right":"@container_no_endpoints"}},{"reject":{"type":"tcp reset"}}],"family":"ip","handle":17,"table":"portald"}},"#,
            r#"{"rule":{"chain":"container_reject","expr":[{"match":{"left":{"concat":[{"payload":{"field":"daddr","protocol":"ip"}},{"meta":{"key":"l4proto"}},{"payload":{"field":"dport","protocol":"udp"}}]},"op":"==","right":"@container_no_endpoints"}},{"reject":{"expr":"port-unreachable","type":"icmp"}}],"family":"ip","handle":18,"table":"portald"}},"#,
            r#"{"rule":{"chain":"prerouting","expr":[{"jump":{"target":"container"}}],"family":"ip","handle":19,"table":"portald"}}"#,
            "]}"
        );
        assert_eq!(render_json(&state()), expected);
    }
}
