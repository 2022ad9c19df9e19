//! Reads `nft -j list ruleset` (the libnftables JSON schema) into owned, stray and foreign.
//!
//! portald's own objects are recognised by their exact JSON: a chain's rules must be the
//! very expressions portald would write, so anything edited by hand reads as a stray and the
//! plan puts it right.

use super::expr::{facts, rule_text};
use super::schema::{Dump, Element, Item, Key, KeyType, RuleObject, SetObject};
use super::stmt::{Known, Listed, ListedExpr, ListedNamed, Nat};
use super::{
    affinity_set, chain_name, hook_chain, hook_facts, is_counted, jump_exprs, map_name,
    service_chain, service_exprs, slot_exprs, slot_maps, Kind, AFFINITY_SET_SIZE, ENTRY_SETS,
    FAMILY, FORWARD_SET, GUARD_SET, HAIRPIN_SET, MASQUERADE_SET, TABLE,
};
use crate::{
    Action, Comment, ForeignRule, GuardedPort, Live, Masquerade, Net, ParseError, Path, PortalKey,
    PortalRule, Protocol, Scaffold, Slot, StrayRule,
};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};

/// A rule of portald's table, in dump order. Its expressions are kept as canonical compact
/// JSON (sorted keys), not as a `Value` tree: a table of 10,000 kernel-mode portals lists
/// 200,000 rules, and their trees would take gigabytes.
struct Rule {
    handle: Option<u64>,
    canon: String,
    comment: Option<String>,
    /// The DNAT targets of its statements, in order.
    targets: Vec<SocketAddrV4>,
    /// The first set it updates (affinity), without the `@`.
    updates: Option<String>,
}

impl Rule {
    fn read(body: RuleObject) -> Rule {
        let stmts = body.expr.unwrap_or_default();
        let mut targets = Vec::new();
        let mut updates = None;
        for stmt in &stmts {
            match Listed::read(stmt) {
                Listed::Known(Known::Dnat(dnat)) => targets.extend(dnat_targets(&dnat)),
                Listed::Known(Known::Set(update)) => {
                    updates.get_or_insert(update.set.trim_start_matches('@').to_string());
                }
                _ => {}
            }
        }
        Rule {
            handle: body.handle,
            canon: Value::Array(stmts).to_string(),
            comment: body.comment,
            targets,
            updates,
        }
    }

    fn text(&self) -> String {
        // Every statement reads (an odd one as its JSON), so only a canon that is not a list
        // could fail, and the canon is always one.
        let stmts: Vec<Listed> = serde_json::from_str(&self.canon).unwrap_or_default();
        rule_text(&stmts, self.comment.as_deref())
    }

    fn is(&self, expected: &Value) -> bool {
        // Compared as text: both sides are compact JSON with sorted keys.
        self.comment.is_none() && serde_json::to_string(expected).is_ok_and(|t| t == self.canon)
    }
}

/// A chain of portald's table.
struct Chain {
    hook: Option<String>,
    kind: Option<String>,
    prio: Option<i64>,
}

/// portald's table as the dump lists it.
#[derive(Default)]
struct Table {
    /// Maps and sets by name, with `"map"` or `"set"`.
    maps: BTreeMap<String, (&'static str, SetObject)>,
    chains: BTreeMap<String, Chain>,
    rules: BTreeMap<String, Vec<Rule>>,
}

impl Table {
    fn rules_of(&self, chain: &str) -> &[Rule] {
        self.rules.get(chain).map(Vec::as_slice).unwrap_or_default()
    }
}

pub(crate) fn parse_live(dump: &str) -> Result<Live, ParseError> {
    let root = Dump::read(dump)?;

    let ours = |family: &Option<String>, table: &Option<String>| {
        family.as_deref() == Some(FAMILY) && table.as_deref() == Some(TABLE)
    };
    let mut table = Table::default();
    let mut live = Live::default();
    // Foreign base chains (family, table, name) -> (hook, priority), and the foreign rules
    // that end a packet's way, by index: those in a base chain that runs before one of
    // portald's hooks are ahead of it.
    let mut foreign_hooks: BTreeMap<(String, String, String), (String, i64)> = BTreeMap::new();
    let mut ending: Vec<(usize, (String, String, String))> = Vec::new();
    for raw in root.nftables {
        let Ok(item) = serde_json::from_str::<Item>(raw.get()) else {
            continue;
        };
        if let Some((kind, body)) = item
            .map
            .map(|m| ("map", m))
            .or_else(|| item.set.map(|s| ("set", s)))
        {
            if let (true, Some(name)) = (ours(&body.family, &body.table), body.name.clone()) {
                table.maps.insert(name, (kind, body));
            }
        } else if let Some(chain) = item.chain {
            let own = ours(&chain.family, &chain.table);
            if let (false, Some(hook), Some(prio)) = (own, &chain.hook, chain.prio) {
                let place = (
                    chain.family.clone().unwrap_or_default(),
                    chain.table.clone().unwrap_or_default(),
                    chain.name.clone().unwrap_or_default(),
                );
                foreign_hooks.insert(place, (hook.clone(), prio));
            }
            if let (true, Some(name)) = (own, chain.name) {
                let info = Chain {
                    hook: chain.hook,
                    kind: chain.kind,
                    prio: chain.prio,
                };
                table.chains.insert(name, info);
            }
        } else if let Some(rule) = item.rule {
            // A rule always names its place; one that does not is skipped, not fatal.
            let (Some(family), Some(table_name), Some(chain)) =
                (rule.family.clone(), rule.table.clone(), rule.chain.clone())
            else {
                continue;
            };
            if ours(&rule.family, &rule.table) {
                table.rules.entry(chain).or_default().push(Rule::read(rule));
            } else {
                let stmts: Vec<Listed> = rule.expr.iter().flatten().map(Listed::read).collect();
                let facts = facts(&stmts);
                if facts.ends && matches!(family.as_str(), "ip" | "inet") && catches_new(&stmts) {
                    let place = (family.clone(), table_name.clone(), chain.clone());
                    ending.push((live.foreign.len(), place));
                }
                live.foreign.push(ForeignRule {
                    location: format!("{family} {table_name}/{chain}"),
                    text: rule_text(&stmts, rule.comment.as_deref()),
                    dst: facts.dst,
                    protocol: facts.protocol,
                    dport: facts.dport,
                    terminal: facts.terminal,
                    dst_net: facts.dst_net,
                    dst_unread: facts.dst_unread,
                    dport_unread: facts.dport_unread,
                    ahead_of: Vec::new(),
                });
            }
        }
    }

    for (index, place) in ending {
        let Some((hook, prio)) = foreign_hooks.get(&place) else {
            continue;
        };
        live.foreign[index].ahead_of = Slot::ALL
            .into_iter()
            .filter(|slot| *slot != Slot::Masquerade)
            .filter(|slot| {
                let (_, portald_hook, portald_prio) = hook_facts(*slot);
                portald_hook == hook && *prio < portald_prio
            })
            .collect();
    }

    let mut used_chains: BTreeSet<String> = BTreeSet::new();
    let mut used_sets: BTreeSet<String> = BTreeSet::new();
    read_elements(&table, &mut live, &mut used_chains, &mut used_sets);
    read_entries(&table, &mut live);

    // A slot is present when its maps, its chain and every expected rule are; an incomplete
    // one is reported absent (re-adding it flushes its chain).
    for slot in Slot::ALL {
        let maps_ok = slot_maps(slot).iter().all(|(name, key, data)| {
            table
                .maps
                .get(name.as_str())
                .is_some_and(|(_, m)| typed(m, key, *data) && (!is_counted(name) || m.counts()))
        });
        let chain = chain_name(slot);
        if maps_ok
            && table.chains.get(chain).is_some_and(|c| c.hook.is_none())
            && holds_all(&table, chain, &slot_exprs(slot))
        {
            live.owned.scaffold.insert(Scaffold::Chain(slot));
        }
        let (kind, hook, prio) = hook_facts(slot);
        let hooked = table.chains.get(hook_chain(slot)).is_some_and(|c| {
            c.kind.as_deref() == Some(kind)
                && c.hook.as_deref() == Some(hook)
                && c.prio == Some(prio)
        });
        if hooked && holds_all(&table, hook_chain(slot), &[jump_exprs(slot)]) {
            live.owned.scaffold.insert(Scaffold::Hook(slot));
        }
    }

    // In a complete slot chain every rule but the first copy of each expected one is a
    // stray; in any other known chain every rule is. Service chains in use were checked
    // whole; any other chain or set is an orphan, removed whole.
    let mut expected: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for slot in Slot::ALL {
        if live.owned.scaffold.contains(&Scaffold::Chain(slot)) {
            expected.insert(chain_name(slot), slot_exprs(slot));
        }
        if live.owned.scaffold.contains(&Scaffold::Hook(slot)) {
            expected.insert(hook_chain(slot), vec![jump_exprs(slot)]);
        }
    }
    let known: BTreeSet<&str> = Slot::ALL
        .iter()
        .flat_map(|s| [chain_name(*s), hook_chain(*s)])
        .collect();
    for name in table.chains.keys() {
        if known.contains(name.as_str()) {
            let mut wanted: Vec<Value> = expected.get(name.as_str()).cloned().unwrap_or_default();
            for rule in table.rules_of(name) {
                if let Some(at) = wanted.iter().position(|w| rule.is(w)) {
                    wanted.remove(at);
                    continue;
                }
                let text = match rule.handle {
                    Some(h) => format!("{} # handle {h}", rule.text()),
                    None => rule.text(),
                };
                live.stray.push(StrayRule {
                    chain: name.to_string(),
                    text,
                });
            }
        } else if !used_chains.contains(name) {
            // An orphan, base chain or not: it goes whole.
            live.stray.push(StrayRule {
                chain: name.to_string(),
                text: format!("chain {name}"),
            });
        }
    }
    let slot_map_names: BTreeSet<String> = Slot::ALL
        .iter()
        .flat_map(|s| slot_maps(*s).into_iter().map(|(n, _, _)| n))
        .collect();
    for (name, (kind, _)) in &table.maps {
        if !slot_map_names.contains(name) && !used_sets.contains(name) {
            live.stray.push(StrayRule {
                chain: name.to_string(),
                text: format!("{kind} {name}"),
            });
        }
    }
    Ok(live)
}

/// Whether a rule can match a connection's first packet: not when it matches `ct state`
/// values that leave `new` out.
fn catches_new(stmts: &[Listed]) -> bool {
    let texts = |items: &[ListedExpr]| -> Vec<String> {
        items
            .iter()
            .filter_map(|i| i.as_str().map(str::to_string))
            .collect()
    };
    stmts.iter().all(|stmt| {
        let Listed::Known(Known::Match { op, left, right }) = stmt else {
            return true;
        };
        if !matches!(left.named(), Some(ListedNamed::Ct { key, .. }) if key == "state") {
            return true;
        }
        let states = match right {
            ListedExpr::Text(s) => vec![s.clone()],
            ListedExpr::List(items) => texts(items),
            other => match other.named() {
                Some(ListedNamed::Set(ListedExpr::List(items))) => texts(items),
                _ => Vec::new(),
            },
        };
        op == "!=" || states.iter().any(|s| s == "new")
    })
}

/// Whether every expected rule is among the chain's rules.
fn holds_all(table: &Table, chain: &str, expected: &[Value]) -> bool {
    let have = table.rules_of(chain);
    expected.iter().all(|e| have.iter().any(|r| r.is(e)))
}

/// Whether a map or set has the given key and data types.
fn typed(map: &SetObject, key: &[&str], data: Option<&str>) -> bool {
    map.key.as_ref().is_some_and(|k| k.parts() == key) && map.data.as_deref() == data
}

/// Elements of portald's maps and sets become rules; an element that cannot be one (no
/// comment, an odd protocol, a key already taken by an earlier lookup, a service chain not
/// exactly as portald writes it) is a stray.
fn read_elements(
    table: &Table,
    live: &mut Live,
    used_chains: &mut BTreeSet<String>,
    used_sets: &mut BTreeSet<String>,
) {
    for path in Path::ALL {
        for kind in Kind::ALL {
            let name = map_name(path, kind);
            let Some((_, map)) = table.maps.get(name.as_str()) else {
                continue;
            };
            let key_type = slot_maps(kind.slot(path))
                .into_iter()
                .find(|(n, _, _)| *n == name)
                .map(|(_, k, _)| k)
                .unwrap_or_default();
            if !typed(map, &key_type, kind.data_type()) {
                continue;
            }
            // A map from before portald counted its portals: the slot is reported absent
            // and the map a stray, so the batch makes it anew (a declaration cannot change
            // in place) and adds the portals back; the service chains and sets of its
            // elements are orphans then, refilled by the portals that keep them.
            if is_counted(&name) && !map.counts() {
                live.stray.push(StrayRule {
                    chain: name.clone(),
                    text: format!("map {name}"),
                });
                continue;
            }
            for elem in map.elements() {
                let element = Element::read(elem);
                let rule = element_rule(path, kind, &element).and_then(|mut rule| {
                    if let Action::Balance { .. } = rule.action {
                        rule.action = service_action(table, &rule.key)?;
                    }
                    Some(rule)
                });
                match rule {
                    Some(rule) if !live.owned.rules.contains_key(&rule.key) => {
                        if let Action::Balance {
                            endpoints,
                            affinity_seconds,
                        } = &rule.action
                        {
                            used_chains.insert(service_chain(&rule.key));
                            if affinity_seconds.is_some() {
                                used_sets
                                    .extend(endpoints.iter().map(|e| affinity_set(&rule.key, e)));
                            }
                        }
                        live.owned.insert_rule(rule)
                    }
                    _ => live.stray.push(StrayRule {
                        chain: name.clone(),
                        text: element_text(&element),
                    }),
                }
            }
        }
    }
}

/// The element's key, comment and action (a Balance with no endpoints yet: the chain says).
fn element_rule(path: Path, kind: Kind, elem: &Element) -> Option<PortalRule> {
    let (key, data) = match (kind, elem) {
        (Kind::NoEndpoints, Element::Single(key)) => (key, &Value::Null),
        (Kind::NoEndpoints, Element::Mapped(..)) => return None,
        (_, Element::Mapped(key, data)) => (key, data),
        (_, Element::Single(_)) => return None,
    };
    let comment = Comment::new(key.comment()?).ok()?;
    let parts = key.val().get("concat")?.as_array()?;
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
        Kind::Services => {
            let target = data.get("goto")?.get("target")?.as_str()?;
            if target != service_chain(&key) {
                return None;
            }
            Action::Balance {
                endpoints: Vec::new(),
                affinity_seconds: None,
            }
        }
        Kind::NoEndpoints => Action::Reject,
    };
    Some(PortalRule {
        key,
        comment,
        action,
    })
}

/// A Balance portal's action, read from its chain (and affinity sets) and accepted only if
/// portald would write exactly that chain for it.
fn service_action(table: &Table, key: &PortalKey) -> Option<Action> {
    let chain = service_chain(key);
    let info = table.chains.get(chain.as_str())?;
    if info.hook.is_some() {
        return None;
    }
    let rules = table.rules_of(&chain);
    // Endpoints in order of first appearance among the DNAT targets; affinity from the first
    // endpoint's set.
    let mut endpoints: Vec<SocketAddrV4> = Vec::new();
    let mut affinity_name = None;
    for rule in rules {
        for target in &rule.targets {
            if !endpoints.contains(target) {
                endpoints.push(*target);
            }
        }
        if affinity_name.is_none() {
            affinity_name.clone_from(&rule.updates);
        }
    }
    if endpoints.is_empty() {
        return None;
    }
    let affinity_seconds = match affinity_name {
        None => None,
        Some(name) => {
            let (_, set) = table.maps.get(name.as_str())?;
            let seconds = u32::try_from(set.timeout?).ok()?;
            Some(seconds)
        }
    };
    if let Some(seconds) = affinity_seconds {
        for endpoint in &endpoints {
            let (kind, set) = table.maps.get(affinity_set(key, endpoint).as_str())?;
            if *kind != "set"
                || set.key != Some(KeyType::One("ipv4_addr".to_string()))
                || set.timeout != Some(u64::from(seconds))
                || set.size != Some(u64::from(AFFINITY_SET_SIZE))
                || !set.has_flag("timeout")
            {
                return None;
            }
        }
    }
    let expected = service_exprs(key, &endpoints, affinity_seconds);
    let exact = rules.len() == expected.len() && rules.iter().zip(&expected).all(|(r, e)| r.is(e));
    exact.then_some(Action::Balance {
        endpoints,
        affinity_seconds,
    })
}

/// The addresses a `dnat` statement may send to: one, or the data of a numgen map.
fn dnat_targets(dnat: &Nat) -> Vec<SocketAddrV4> {
    let one = |addr: &ListedExpr, port: &ListedExpr| -> Option<SocketAddrV4> {
        let port = port.as_u64().and_then(|n| u16::try_from(n).ok())?;
        Some(SocketAddrV4::new(addr.as_str()?.parse().ok()?, port))
    };
    if let (Some(addr), Some(port)) = (&dnat.addr, &dnat.port) {
        return one(addr, port).into_iter().collect();
    }
    let pairs = match dnat.addr.as_ref().and_then(ListedExpr::named) {
        Some(ListedNamed::Map { data, .. }) => match data.named() {
            Some(ListedNamed::Set(ListedExpr::List(pairs))) => pairs.as_slice(),
            _ => &[],
        },
        _ => &[],
    };
    pairs
        .iter()
        .filter_map(|pair| {
            let ListedExpr::List(pair) = pair else {
                return None;
            };
            let [_, data] = pair.as_slice() else {
                return None;
            };
            match data.named()? {
                ListedNamed::Concat(parts) => match parts.as_slice() {
                    [addr, port] => one(addr, port),
                    _ => None,
                },
                _ => None,
            }
        })
        .collect()
}

/// Elements of the scaffold-entry sets (masquerade pairs, hairpin endpoints, proxy ports,
/// forward ranges) become scaffold; odd ones are strays.
fn read_entries(table: &Table, live: &mut Live) {
    for (name, _) in ENTRY_SETS {
        let Some((_, set)) = table.maps.get(name) else {
            continue;
        };
        for elem in set.elements() {
            match entry_of(name, &Element::read(elem)) {
                Some(entry) => {
                    live.owned.scaffold.insert(entry);
                }
                None => live.stray.push(StrayRule {
                    chain: name.to_string(),
                    text: rule_text(&[Listed::read(elem)], None),
                }),
            }
        }
    }
}

/// The scaffold entry an element of the named set stands for.
fn entry_of(set: &str, elem: &Element) -> Option<Scaffold> {
    // portald writes these elements bare: no comment, no data.
    let Element::Single(Key::Bare(elem)) = elem else {
        return None;
    };
    let parts = || elem.get("concat").and_then(Value::as_array);
    match set {
        MASQUERADE_SET => match parts()?.as_slice() {
            [source, destination, portals] if source == destination => {
                Some(Scaffold::Masquerade(Masquerade {
                    network: net_of(source)?,
                    portals: net_of(portals)?,
                }))
            }
            _ => None,
        },
        HAIRPIN_SET => match parts()?.as_slice() {
            [source, destination] if source == destination => {
                Some(Scaffold::Hairpin(source.as_str()?.parse().ok()?))
            }
            _ => None,
        },
        GUARD_SET => match parts()?.as_slice() {
            [protocol, port] => Some(Scaffold::ProxyGuard(GuardedPort {
                protocol: match protocol.as_str()? {
                    "tcp" => Protocol::Tcp,
                    "udp" => Protocol::Udp,
                    _ => return None,
                },
                port: port_of(port)?,
            })),
            _ => None,
        },
        FORWARD_SET => Some(Scaffold::Forward(net_of(elem)?)),
        _ => None,
    }
}

/// `{"prefix": {"addr": A, "len": N}}` or a bare address (a /32).
fn net_of(value: &Value) -> Option<Net> {
    match value {
        Value::String(s) => Net::new(s.parse().ok()?, 32).ok(),
        _ => {
            let prefix = value.get("prefix")?;
            let len = u8::try_from(prefix.get("len")?.as_u64()?).ok()?;
            Net::new(prefix.get("addr")?.as_str()?.parse().ok()?, len).ok()
        }
    }
}

fn port_of(value: &Value) -> Option<u16> {
    value.as_u64().and_then(|n| u16::try_from(n).ok())
}

/// `10.11.0.1 . tcp . 80 comment "x" : 12345`, as nft lists an element; the key comes first
/// so the batch can delete the element from this text.
fn element_text(elem: &Element) -> String {
    let (key, data) = match elem {
        Element::Mapped(key, data) => (key, Some(data)),
        Element::Single(key) => (key, None),
    };
    let mut text = concat_text(key.val());
    if let Some(comment) = key.comment() {
        text.push_str(&format!(" comment \"{comment}\""));
    }
    if let Some(data) = data {
        text.push_str(" : ");
        text.push_str(&concat_text(data));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_foreign_base_chain_before_portalds_hook_is_ahead_of_it_and_accept_never_is() {
        let dump = r#"{"nftables": [
            {"chain": {"family": "ip", "table": "early", "name": "pre", "type": "filter", "hook": "prerouting", "prio": -300, "policy": "accept"}},
            {"chain": {"family": "ip", "table": "late", "name": "pre", "type": "filter", "hook": "prerouting", "prio": 0, "policy": "accept"}},
            {"rule": {"family": "ip", "table": "early", "chain": "pre", "expr": [
                {"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "10.11.0.0", "len": 16}}}},
                {"drop": null}]}},
            {"rule": {"family": "ip", "table": "early", "chain": "pre", "expr": [{"accept": null}]}},
            {"rule": {"family": "ip", "table": "late", "chain": "pre", "expr": [{"drop": null}]}}
        ]}"#;
        let live = parse_live(dump).unwrap();
        let ahead: Vec<&[Slot]> = live.foreign.iter().map(|f| f.ahead_of.as_slice()).collect();
        assert_eq!(
            ahead,
            [
                &[Slot::Container, Slot::ContainerReject][..],
                &[][..],
                &[][..]
            ]
        );
        assert_eq!(live.foreign[0].dst_net, "10.11.0.0/16".parse().ok());
    }

    #[test]
    fn a_foreign_rule_for_established_connections_only_is_never_ahead_but_one_that_lets_new_through_is(
    ) {
        let rule = |state: &str| {
            format!(
                r#"{{"rule": {{"family": "ip", "table": "early", "chain": "pre", "expr": [
                    {{"match": {{"op": "{}", "left": {{"ct": {{"key": "state"}}}}, "right": {}}}}},
                    {{"drop": null}}]}}}}"#,
                if state.starts_with('!') { "!=" } else { "in" },
                state.trim_start_matches('!')
            )
        };
        let dump = format!(
            r#"{{"nftables": [
                {{"chain": {{"family": "ip", "table": "early", "name": "pre", "type": "filter", "hook": "prerouting", "prio": -300}}}},
                {}, {}, {}, {}]}}"#,
            rule(r#""established""#),
            rule(r#"["established", "related"]"#),
            rule(r#"{"set": ["new", "invalid"]}"#),
            rule(r#"!"established""#),
        );
        let live = parse_live(&dump).unwrap();
        let ahead: Vec<bool> = live
            .foreign
            .iter()
            .map(|f| !f.ahead_of.is_empty())
            .collect();
        assert_eq!(ahead, [false, false, true, true]);
    }

    #[test]
    fn a_dnat_through_a_numgen_map_names_every_endpoint_of_the_map_in_order() {
        let stmt: Value = serde_json::from_str(
            r#"{"dnat": {"family": "ip", "addr": {"map": {
                "key": {"numgen": {"mode": "random", "mod": 2, "offset": 0}},
                "data": {"set": [[0, {"concat": ["10.0.0.2", 81]}], [1, {"concat": ["10.0.0.1", 80]}], [2, "odd"]]}}}}}"#,
        )
        .unwrap();
        let Listed::Known(Known::Dnat(dnat)) = Listed::read(&stmt) else {
            panic!("{stmt}")
        };
        assert_eq!(
            dnat_targets(&dnat),
            [
                "10.0.0.2:81".parse::<SocketAddrV4>().unwrap(),
                "10.0.0.1:80".parse().unwrap()
            ]
        );
        let one: Value =
            serde_json::from_str(r#"{"dnat": {"addr": "10.0.0.3", "port": 82}}"#).unwrap();
        let Listed::Known(Known::Dnat(dnat)) = Listed::read(&one) else {
            panic!("{one}")
        };
        assert_eq!(dnat_targets(&dnat), ["10.0.0.3:82".parse().unwrap()]);
    }
}
