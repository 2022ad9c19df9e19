//! Reads `nft -j list ruleset` (the libnftables JSON schema) into owned, stray and foreign.

use super::expr::{facts, rule_text};
use super::{
    chain_name, hook_chain, jump_rule, lookup_rule, map_name, Kind, FAMILY, KEY_TYPE, TABLE,
};
use crate::{
    Action, Comment, ForeignRule, Live, ParseError, Path, PortalKey, PortalRule, Protocol,
    Scaffold, StrayRule,
};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddrV4};

fn error(line: usize, message: impl Into<String>) -> ParseError {
    ParseError {
        dialect: "nftables",
        line,
        message: message.into(),
    }
}

/// A rule of the dump, in dump order.
struct Rule<'a> {
    family: &'a str,
    table: &'a str,
    chain: &'a str,
    handle: Option<u64>,
    exprs: &'a [Value],
    comment: Option<&'a str>,
}

impl Rule<'_> {
    fn text(&self) -> String {
        rule_text(self.exprs, self.comment)
    }
}

fn str_of<'a>(body: &'a Value, key: &str) -> Option<&'a str> {
    body.get(key).and_then(Value::as_str)
}

/// A chain of portald's table.
struct Chain<'a> {
    hook: Option<&'a str>,
    kind: Option<&'a str>,
}

pub(crate) fn parse_live(dump: &str) -> Result<Live, ParseError> {
    let root: Value = serde_json::from_str(dump)
        .map_err(|e| error(e.line(), format!("not libnftables JSON: {e}")))?;
    let items = root
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| error(1, "no top-level `nftables` array"))?;

    let ours = |family: &str, table: &str| family == FAMILY && table == TABLE;
    let mut maps: BTreeMap<&str, &Value> = BTreeMap::new();
    let mut chains: BTreeMap<&str, Chain> = BTreeMap::new();
    let mut rules: Vec<Rule> = Vec::new();
    for item in items {
        if let Some(map) = item.get("map") {
            if let (Some(f), Some(t), Some(n)) = (
                str_of(map, "family"),
                str_of(map, "table"),
                str_of(map, "name"),
            ) {
                if ours(f, t) {
                    maps.insert(n, map);
                }
            }
        } else if let Some(chain) = item.get("chain") {
            if let (Some(f), Some(t), Some(n)) = (
                str_of(chain, "family"),
                str_of(chain, "table"),
                str_of(chain, "name"),
            ) {
                if ours(f, t) {
                    let info = Chain {
                        hook: str_of(chain, "hook"),
                        kind: str_of(chain, "type"),
                    };
                    chains.insert(n, info);
                }
            }
        } else if let Some(rule) = item.get("rule") {
            // A rule always names its place; one that does not is skipped, not fatal.
            if let (Some(family), Some(table), Some(chain)) = (
                str_of(rule, "family"),
                str_of(rule, "table"),
                str_of(rule, "chain"),
            ) {
                rules.push(Rule {
                    family,
                    table,
                    chain,
                    handle: rule.get("handle").and_then(Value::as_u64),
                    exprs: rule
                        .get("expr")
                        .and_then(Value::as_array)
                        .map(Vec::as_slice)
                        .unwrap_or_default(),
                    comment: str_of(rule, "comment"),
                });
            }
        }
    }

    let mut live = Live::default();
    read_elements(&maps, &mut live);

    // Which rules each chain of ours is expected to hold, in order, and whether the chain is
    // a complete scaffold. An incomplete chain is reported absent: re-adding it flushes it.
    let mut expected: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for path in Path::ALL {
        expected.insert(
            chain_name(path),
            Kind::ALL.iter().map(|k| lookup_rule(path, *k)).collect(),
        );
        expected.insert(hook_chain(path), vec![jump_rule(path)]);
    }
    let mut texts: BTreeMap<&str, Vec<(String, Option<u64>)>> = BTreeMap::new();
    for rule in &rules {
        if ours(rule.family, rule.table) {
            texts
                .entry(rule.chain)
                .or_default()
                .push((rule.text(), rule.handle));
        } else {
            let facts = facts(rule.exprs);
            live.foreign.push(ForeignRule {
                location: format!("{} {}/{}", rule.family, rule.table, rule.chain),
                text: rule.text(),
                dst: facts.dst,
                protocol: facts.protocol,
                dport: facts.dport,
                terminal: facts.terminal,
            });
        }
    }

    for path in Path::ALL {
        let maps_ok = Kind::ALL.iter().all(|k| {
            maps.get(map_name(path, *k).as_str())
                .is_some_and(|m| map_typed(m, *k))
        });
        let chain = chain_name(path);
        if maps_ok
            && chains.get(chain).is_some_and(|c| c.hook.is_none())
            && holds_all(&texts, &expected, chain)
        {
            live.owned.scaffold.insert(Scaffold::Chain(path));
        }
        let hook = hook_chain(path);
        let hooked = chains
            .get(hook)
            .is_some_and(|c| c.kind == Some("nat") && c.hook == Some(hook));
        if hooked && holds_all(&texts, &expected, hook) {
            live.owned.scaffold.insert(Scaffold::Hook(path));
        }
    }

    // In a complete scaffold chain every rule but the first copy of each expected one is a
    // stray; in any other chain every rule is (re-adding an incomplete scaffold flushes its
    // chain, and the batch then leaves such strays out).
    let complete: Vec<&str> = live
        .owned
        .scaffold
        .iter()
        .map(|s| match s {
            Scaffold::Chain(p) => chain_name(*p),
            Scaffold::Hook(p) => hook_chain(*p),
        })
        .collect();
    for (chain, rules) in &texts {
        let mut wanted: Vec<&String> = match expected.get(chain) {
            Some(w) if complete.contains(chain) => w.iter().collect(),
            _ => Vec::new(),
        };
        for (text, handle) in rules {
            if let Some(at) = wanted.iter().position(|w| *w == text) {
                wanted.remove(at);
                continue;
            }
            let text = match handle {
                Some(h) => format!("{text} # handle {h}"),
                None => text.clone(),
            };
            live.stray.push(StrayRule {
                chain: chain.to_string(),
                text,
            });
        }
    }
    Ok(live)
}

/// Whether every expected rule of `chain` is among its rules.
fn holds_all(
    texts: &BTreeMap<&str, Vec<(String, Option<u64>)>>,
    expected: &BTreeMap<&str, Vec<String>>,
    chain: &str,
) -> bool {
    let have = texts.get(chain).map(Vec::as_slice).unwrap_or_default();
    expected
        .get(chain)
        .is_some_and(|want| want.iter().all(|w| have.iter().any(|(t, _)| t == w)))
}

/// Whether a map has the type portald gives maps of that kind.
fn map_typed(map: &Value, kind: Kind) -> bool {
    let key_ok = map["type"].as_array().is_some_and(|t| {
        t.iter()
            .map(Value::as_str)
            .eq(KEY_TYPE.iter().map(|k| Some(*k)))
    });
    key_ok && map["map"].as_str() == Some(kind.data_type())
}

/// Elements of portald's maps become rules; an element that cannot be one (no comment, an
/// odd protocol, a key already taken by the path's earlier map) is a stray.
fn read_elements(maps: &BTreeMap<&str, &Value>, live: &mut Live) {
    for path in Path::ALL {
        for kind in Kind::ALL {
            let name = map_name(path, kind);
            let Some(map) = maps.get(name.as_str()) else {
                continue;
            };
            if !map_typed(map, kind) {
                continue;
            }
            let elems = map.get("elem").and_then(Value::as_array);
            for pair in elems.into_iter().flatten() {
                match element_rule(path, kind, pair) {
                    Some(rule) if !live.owned.rules.contains_key(&rule.key) => {
                        live.owned.insert_rule(rule)
                    }
                    _ => live.stray.push(StrayRule {
                        chain: name.clone(),
                        text: element_text(pair),
                    }),
                }
            }
        }
    }
}

/// `[key, data]`, the key either a bare `concat` or an `elem` with `val` and `comment`.
fn element_rule(path: Path, kind: Kind, pair: &Value) -> Option<PortalRule> {
    let (key, data) = split_pair(pair)?;
    let elem = key.get("elem");
    let val = elem.map_or(key, |e| &e["val"]);
    let comment = Comment::new(elem?.get("comment")?.as_str()?).ok()?;
    let parts = val.get("concat")?.as_array()?;
    let [vip, protocol, port] = parts.as_slice() else {
        return None;
    };
    let protocol = match protocol {
        Value::String(s) if s == "tcp" => Protocol::Tcp,
        Value::String(s) if s == "udp" => Protocol::Udp,
        _ => return None,
    };
    let key = PortalKey {
        path,
        vip: vip.as_str()?.parse().ok()?,
        protocol,
        port: port_of(port)?,
    };
    let action = match kind {
        Kind::Redirect => Action::Redirect {
            to_port: port_of(data)?,
        },
        Kind::Dnat => {
            let [addr, port] = data.get("concat")?.as_array()?.as_slice() else {
                return None;
            };
            let addr: Ipv4Addr = addr.as_str()?.parse().ok()?;
            Action::DnatLocal {
                to: SocketAddrV4::new(addr, port_of(port)?),
            }
        }
    };
    Some(PortalRule {
        key,
        comment,
        action,
    })
}

fn split_pair(pair: &Value) -> Option<(&Value, &Value)> {
    match pair.as_array()?.as_slice() {
        [key, data] => Some((key, data)),
        _ => None,
    }
}

fn port_of(value: &Value) -> Option<u16> {
    value.as_u64().and_then(|n| u16::try_from(n).ok())
}

/// `10.11.0.1 . tcp . 80 comment "x" : 12345`, as nft lists an element; the key comes first
/// so the batch can delete the element from this text.
fn element_text(pair: &Value) -> String {
    let Some((key, data)) = split_pair(pair) else {
        return rule_text(std::slice::from_ref(pair), None);
    };
    let elem = key.get("elem");
    let val = elem.map_or(key, |e| &e["val"]);
    let mut text = concat_text(val);
    if let Some(comment) = elem.and_then(|e| e.get("comment")).and_then(Value::as_str) {
        text.push_str(&format!(" comment \"{comment}\""));
    }
    text.push_str(" : ");
    text.push_str(&concat_text(data));
    text
}

fn concat_text(value: &Value) -> String {
    match value.get("concat").and_then(Value::as_array) {
        Some(parts) => parts.iter().map(scalar).collect::<Vec<_>>().join(" . "),
        None => scalar(value),
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}
