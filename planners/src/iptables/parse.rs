//! Reading an `iptables-save` dump (any tables, with or without `-c` counters) into what
//! portald owns, strays in its space, and foreign rules.
//!
//! A rule counts as portald's only if re-rendering what was read gives back the very words
//! the dump printed; anything else in portald's space is a stray, so the plan replaces it
//! with a rule portald can read. Unknown matches, targets and options outside portald's
//! space are never an error: they are carried as text.

use super::render::{
    entry_spec, hook_spec, local_redirect_spec, masquerade_spec, rule_spec, service_specs,
};
use super::tokenize::split_words;
use super::{
    hook_chains, service_chain, slot_of_chain, stray_location, table, CHAIN_PREFIX, TABLE,
};
use crate::{
    Action, Comment, ForeignRule, GuardedPort, Live, Masquerade, Net, ParseError, PortalKey,
    PortalRule, Protocol, Scaffold, Slot, StrayRule,
};
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};

fn error(line: usize, message: impl Into<String>) -> ParseError {
    ParseError {
        dialect: "iptables",
        line,
        message: message.into(),
    }
}

/// Targets after which a packet does not go on through the chain that sent it: it is
/// accepted, dropped or queued, or its address is rewritten (which ends `nat` traversal).
/// `RETURN`, jumps to user chains, `MARK`, `LOG`, `CT` and the like are not terminal.
pub fn is_terminal_target(target: &str) -> bool {
    matches!(
        target,
        "ACCEPT"
            | "DROP"
            | "REJECT"
            | "DNAT"
            | "SNAT"
            | "MASQUERADE"
            | "REDIRECT"
            | "NETMAP"
            | "TPROXY"
            | "QUEUE"
            | "NFQUEUE"
    )
}

/// Options whose value is free text: it is skipped unread, so a comment such as `-d` can
/// never pass for a match.
const FREE_TEXT_OPTIONS: [&str; 5] = [
    "--comment",
    "--log-prefix",
    "--nflog-prefix",
    "--string",
    "--hex-string",
];

/// `A` or `A/32` as one IPv4 address; prefixes, ranges and IPv6 are not one address.
fn single_address(value: &str) -> Option<Ipv4Addr> {
    let addr = match value.split_once('/') {
        Some((addr, "32")) | Some((addr, "255.255.255.255")) => addr,
        Some(_) => return None,
        None => value,
    };
    addr.parse().ok()
}

/// `A`, `A/LEN` or `A/MASK` as an IPv4 network (host bits cleared, as iptables does).
fn network(value: &str) -> Option<Net> {
    let (addr, len) = match value.split_once('/') {
        None => (value, 32),
        Some((addr, len)) => match len.parse::<u8>() {
            Ok(len) => (addr, len),
            Err(_) => {
                let mask: Ipv4Addr = len.parse().ok()?;
                let bits = u32::from(mask);
                if bits.leading_ones() + bits.trailing_zeros() != 32 {
                    return None;
                }
                (addr, bits.leading_ones() as u8)
            }
        },
    };
    let addr: Ipv4Addr = addr.parse().ok()?;
    if len > 32 {
        return None;
    }
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Net::new(Ipv4Addr::from(u32::from(addr) & mask), len).ok()
}

fn protocol(value: &str) -> Option<Protocol> {
    match value {
        "tcp" | "6" => Some(Protocol::Tcp),
        "udp" | "17" => Some(Protocol::Udp),
        _ => None,
    }
}

/// Best-effort reading of a foreign rule's words (after `-A CHAIN`).
fn foreign(location: String, text: String, words: &[String]) -> ForeignRule {
    let mut rule = ForeignRule {
        location,
        text,
        dst: None,
        protocol: None,
        dport: None,
        terminal: false,
        dst_net: None,
        dst_unread: false,
        dport_unread: false,
        ahead_of: Vec::new(),
    };
    let mut module = "";
    let mut negated = false;
    let mut i = 0;
    while i < words.len() {
        let word = words[i].as_str();
        let value = words.get(i + 1).map(String::as_str);
        let mut consumed = 1;
        match word {
            "!" => {
                negated = true;
                i += 1;
                continue;
            }
            "-d" | "--destination" | "--dst" => {
                consumed = 2;
                if !negated {
                    rule.dst = value.and_then(single_address);
                }
                rule.dst_net = value.and_then(network).filter(|_| !negated);
                rule.dst_unread = rule.dst_net.is_none();
            }
            "-p" | "--protocol" => {
                consumed = 2;
                if !negated {
                    rule.protocol = value.and_then(protocol);
                }
                // Another protocol (or a negation) has no TCP or UDP port of a VIP.
                if rule.protocol.is_none() && value != Some("all") {
                    rule.dport_unread = true;
                }
            }
            "--dports" | "--destination-ports" => {
                consumed = 2;
                rule.dport_unread = true;
            }
            "-m" | "--match" => {
                consumed = 2;
                module = value.unwrap_or("");
            }
            "--dport" | "--destination-port" if matches!(module, "tcp" | "udp") => {
                consumed = 2;
                if !negated {
                    rule.dport = value.and_then(|v| v.parse().ok());
                }
                rule.dport_unread = rule.dport.is_none();
            }
            "-j" | "--jump" => {
                consumed = 2;
                rule.terminal = value.is_some_and(is_terminal_target);
            }
            _ if FREE_TEXT_OPTIONS.contains(&word) => consumed = 2,
            _ => {}
        }
        negated = false;
        i += consumed;
    }
    rule
}

/// Whether a rule can match a connection's first packet: not when its state match
/// (`-m conntrack --ctstate`, `-m state --state`) leaves NEW out.
fn catches_new(words: &[String]) -> bool {
    words.windows(3).all(|w| {
        let state = matches!(w[1].as_str(), "--ctstate" | "--state");
        !state || w[0] == "!" || w[2].split(',').any(|s| s == "NEW")
    })
}

/// A portal rule of a slot's chain, if the words are exactly what [`rule_spec`] renders for
/// it. A Balance rule comes back with no endpoints: its chain says which (see
/// [`service_action`]).
fn portal_rule(slot: Slot, words: &[String]) -> Option<PortalRule> {
    let path = slot.path()?;
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    if slot == Slot::ContainerReject {
        return container_refusal(&w, words);
    }
    let (vip, protocol, comment, port, target) = match w.as_slice() {
        ["-d", vip, "-p", p, "-m", "comment", "--comment", comment, "-m", m, "--dport", port, "-j", target @ ..]
            if p == m =>
        {
            (vip, p, comment, port, target)
        }
        _ => return None,
    };
    let key = PortalKey {
        path,
        vip: vip.strip_suffix("/32")?.parse().ok()?,
        protocol: protocol_name(protocol)?,
        port: port.parse().ok()?,
    };
    let action = match target {
        ["REDIRECT", "--to-ports", to_port] => Action::Redirect {
            to_port: to_port.parse().ok()?,
        },
        ["DNAT", "--to-destination", to] => Action::DnatLocal {
            to: to.parse::<SocketAddrV4>().ok()?,
        },
        ["REJECT", "--reject-with", "icmp-port-unreachable" | "tcp-reset"] => Action::Reject,
        [name] if *name == service_chain(&key) => Action::Balance {
            endpoints: Vec::new(),
            affinity_seconds: None,
        },
        _ => return None,
    };
    let rule = PortalRule {
        key,
        comment: Comment::new(*comment).ok()?,
        action,
    };
    if rule.slot() != slot {
        return None;
    }
    // Leading zeros, other spellings: only what renders back identically is portald's.
    let rendered = split_words(&rule_spec(&rule)).ok()?;
    (rendered == words).then_some(rule)
}

/// The INPUT half of a container-path refusal (see [`rule_spec`]).
fn container_refusal(w: &[&str], words: &[String]) -> Option<PortalRule> {
    let ["-p", protocol, "-m", "conntrack", "--ctorigdst", vip, "--ctorigdstport", port, "-m", "comment", "--comment", comment, ..] =
        w
    else {
        return None;
    };
    let rule = PortalRule {
        key: PortalKey {
            path: crate::Path::Container,
            vip: vip.parse().ok()?,
            protocol: protocol_name(protocol)?,
            port: port.parse().ok()?,
        },
        comment: Comment::new(*comment).ok()?,
        action: Action::Reject,
    };
    let rendered = split_words(&rule_spec(&rule)).ok()?;
    (rendered == words).then_some(rule)
}

/// The nat half of a container-path refusal: a `-j REDIRECT` that keeps the port, exactly as
/// [`local_redirect_spec`] renders it.
fn local_redirect(words: &[String]) -> Option<PortalRule> {
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    let ["-d", vip, "-p", protocol, "-m", "comment", "--comment", comment, "-m", _, "--dport", port, "-j", "REDIRECT"] =
        w.as_slice()
    else {
        return None;
    };
    let rule = PortalRule {
        key: PortalKey {
            path: crate::Path::Container,
            vip: vip.strip_suffix("/32")?.parse().ok()?,
            protocol: protocol_name(protocol)?,
            port: port.parse().ok()?,
        },
        comment: Comment::new(*comment).ok()?,
        action: Action::Reject,
    };
    let rendered = split_words(&local_redirect_spec(&rule)?).ok()?;
    (rendered == words).then_some(rule)
}

/// A kernel-mode portal's action, read from its chain and accepted only if portald would
/// write exactly that chain for it.
fn service_action(key: &PortalKey, rules: &[&[String]]) -> Option<Action> {
    let mut endpoints: Vec<SocketAddrV4> = Vec::new();
    let mut affinity_seconds = None;
    for words in rules {
        for pair in words.windows(2) {
            match pair[0].as_str() {
                "--to-destination" => {
                    let endpoint: SocketAddrV4 = pair[1].parse().ok()?;
                    if !endpoints.contains(&endpoint) {
                        endpoints.push(endpoint);
                    }
                }
                "--seconds" if affinity_seconds.is_none() => {
                    affinity_seconds = Some(pair[1].parse().ok()?);
                }
                _ => {}
            }
        }
    }
    if endpoints.is_empty() {
        return None;
    }
    let expected = service_specs(key, &endpoints, affinity_seconds);
    let exact = expected.len() == rules.len()
        && expected
            .iter()
            .zip(rules)
            .all(|(spec, words)| split_words(spec).is_ok_and(|w| w.as_slice() == *words));
    exact.then_some(Action::Balance {
        endpoints,
        affinity_seconds,
    })
}

/// A masquerade rule, if the words are exactly what [`masquerade_spec`] renders for it.
fn masquerade_rule(words: &[String]) -> Option<Masquerade> {
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    let ["-s", source, "-d", _, "-m", "conntrack", "--ctstate", "DNAT", "--ctorigdst", portals, "-j", "MASQUERADE"] =
        w.as_slice()
    else {
        return None;
    };
    let m = Masquerade {
        network: source.parse().ok()?,
        portals: portals.parse().ok()?,
    };
    let rendered = split_words(&masquerade_spec(&m)).ok()?;
    (rendered == words).then_some(m)
}

/// An entry of a slot whose chain holds scaffold entries (masquerade, hairpin, proxy
/// guard, forward accept), if the words are exactly what [`entry_spec`] renders for it.
fn entry_rule(slot: Slot, words: &[String]) -> Option<Scaffold> {
    let w: Vec<&str> = words.iter().map(String::as_str).collect();
    let scaffold = match (slot, w.as_slice()) {
        (
            Slot::Masquerade,
            ["-s", _, "-d", _, "-m", "conntrack", "--ctstate", "DNAT", "--ctorigdst", ..],
        ) => Scaffold::Masquerade(masquerade_rule(words)?),
        (Slot::Masquerade, ["-s", source, "-d", ..]) => {
            Scaffold::Hairpin(source.strip_suffix("/32")?.parse().ok()?)
        }
        (Slot::ProxyGuard, ["-p", protocol, "-m", _, "--dport", port, ..]) => {
            Scaffold::ProxyGuard(GuardedPort {
                protocol: protocol_name(protocol)?,
                port: port.parse().ok()?,
            })
        }
        (Slot::Forward, ["-m", "conntrack", "--ctstate", "DNAT", "--ctorigdst", portals, ..]) => {
            Scaffold::Forward(portals.parse().ok()?)
        }
        _ => return None,
    };
    let rendered = split_words(&entry_spec(&scaffold)?).ok()?;
    (rendered == words).then_some(scaffold)
}

fn protocol_name(name: &str) -> Option<Protocol> {
    match name {
        "tcp" => Some(Protocol::Tcp),
        "udp" => Some(Protocol::Udp),
        _ => None,
    }
}

/// Which slot's hook these words are, if they are exactly a hook in one of its built-in
/// chains.
fn hook(table_name: &str, chain_name: &str, words: &[String]) -> Option<Slot> {
    Slot::ALL.into_iter().find(|slot| {
        table(*slot) == table_name
            && hook_chains(*slot).contains(&chain_name)
            && split_words(&hook_spec(*slot)).is_ok_and(|spec| spec == words)
    })
}

/// Whether a rule sends packets into portald's space (`-j PORTAL-*` or `-g PORTAL-*`).
fn jumps_into_portald(words: &[String]) -> bool {
    words.windows(2).any(|pair| {
        matches!(pair[0].as_str(), "-j" | "--jump" | "-g" | "--goto")
            && pair[1].starts_with(CHAIN_PREFIX)
    })
}

/// Strips a `[packets:bytes] ` counter prefix (`iptables-save -c`).
fn strip_counters(line: &str, number: usize) -> Result<&str, ParseError> {
    let Some(rest) = line.strip_prefix('[') else {
        return Ok(line);
    };
    let (counters, rest) = rest
        .split_once(']')
        .ok_or_else(|| error(number, "counters `[` without `]`"))?;
    let valid = counters
        .split_once(':')
        .is_some_and(|(p, b)| p.parse::<u64>().is_ok() && b.parse::<u64>().is_ok());
    if !valid {
        return Err(error(number, format!("bad counters `[{counters}]`")));
    }
    Ok(rest.trim_start())
}

/// One rule of the dump.
struct Line {
    table: String,
    chain: String,
    spec: Vec<String>,
    text: String,
}

/// Reads a whole dump.
pub fn live(dump: &str) -> Result<Live, ParseError> {
    let mut declared: Vec<(String, String)> = Vec::new();
    let mut lines: Vec<Line> = Vec::new();
    let mut table_name: Option<&str> = None;
    for (index, raw) in dump.lines().enumerate() {
        let number = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some(name) = line.strip_prefix('*') {
            table_name = Some(name.trim());
            continue;
        }
        if line == "COMMIT" {
            if table_name.take().is_none() {
                return Err(error(number, "`COMMIT` outside a table"));
            }
            continue;
        }
        let Some(current) = table_name else {
            return Err(error(number, "rule or chain before any `*table` line"));
        };
        if let Some(declaration) = line.strip_prefix(':') {
            let name = declaration.split_whitespace().next().unwrap_or_default();
            declared.push((current.to_string(), name.to_string()));
            continue;
        }
        let text = strip_counters(line, number)?;
        let words = split_words(text).map_err(|e| error(number, e.to_string()))?;
        match words.as_slice() {
            [append, chain_name, spec @ ..] if append == "-A" || append == "--append" => {
                lines.push(Line {
                    table: current.to_string(),
                    chain: chain_name.clone(),
                    spec: spec.to_vec(),
                    text: text.to_string(),
                });
            }
            _ => {
                let start: String = text.chars().take(40).collect();
                return Err(error(number, format!("not a rule: `{start}`")));
            }
        }
    }
    if let Some(open) = table_name {
        return Err(error(
            dump.lines().count(),
            format!("table `{open}` has no `COMMIT`"),
        ));
    }
    Ok(classify(&declared, &lines))
}

/// Files every rule as owned, stray or foreign, and every owned chain as scaffold, in use by
/// a portal, or orphan.
fn classify(declared: &[(String, String)], lines: &[Line]) -> Live {
    let mut live = Live::default();
    for (table_name, name) in declared {
        if let Some(slot) = slot_of_chain(table_name, name) {
            live.owned.scaffold.insert(Scaffold::Chain(slot));
        }
    }
    // Rules of every owned chain, by (table, chain), in dump order.
    let mut owned_rules: BTreeMap<(&str, &str), Vec<&[String]>> = BTreeMap::new();
    for line in lines {
        if line.chain.starts_with(CHAIN_PREFIX) {
            owned_rules
                .entry((line.table.as_str(), line.chain.as_str()))
                .or_default()
                .push(&line.spec);
        }
    }
    let mut used: BTreeSet<String> = BTreeSet::new();
    // The two halves of each container-path refusal, with their dump text: a portal only
    // when both are there and agree.
    let mut redirects: BTreeMap<PortalKey, (PortalRule, StrayRule)> = BTreeMap::new();
    let mut refusals: BTreeMap<PortalKey, (PortalRule, StrayRule)> = BTreeMap::new();
    // Hook jumps by slot, with their built-in chain: a hook is there when each of its
    // chains jumps; a duplicate goes, and so does half a hook (it is redone whole).
    let mut hooks: BTreeMap<Slot, Vec<(String, StrayRule)>> = BTreeMap::new();
    // Where each slot's first hook jump sits, by (table, chain) and line index: a foreign
    // rule above it runs first.
    let mut hook_at: BTreeMap<(&str, &str), Vec<(usize, Slot)>> = BTreeMap::new();
    for (index, line) in lines.iter().enumerate() {
        if !jumps_into_portald(&line.spec) {
            continue;
        }
        if let Some(slot) = hook(&line.table, &line.chain, &line.spec) {
            let at = hook_at
                .entry((line.table.as_str(), line.chain.as_str()))
                .or_default();
            if !at.iter().any(|(_, s)| *s == slot) {
                at.push((index, slot));
            }
        }
    }
    for (index, line) in lines.iter().enumerate() {
        let stray = |live: &mut Live| {
            live.stray.push(StrayRule {
                chain: stray_location(&line.table, &line.chain),
                text: line.text.clone(),
            })
        };
        if line.chain.starts_with(CHAIN_PREFIX) {
            let Some(slot) = slot_of_chain(&line.table, &line.chain) else {
                // A rule of a portal's own chain, or of an orphan: judged with its chain.
                continue;
            };
            let half = |rule: PortalRule| {
                let text = StrayRule {
                    chain: stray_location(&line.table, &line.chain),
                    text: line.text.clone(),
                };
                (rule, text)
            };
            if slot == Slot::Container {
                if let Some(rule) = local_redirect(&line.spec) {
                    match redirects.entry(rule.key) {
                        Entry::Occupied(_) => stray(&mut live),
                        Entry::Vacant(slot) => {
                            slot.insert(half(rule));
                        }
                    }
                    continue;
                }
            }
            if slot == Slot::ContainerReject {
                if let Some(rule) = portal_rule(slot, &line.spec) {
                    match refusals.entry(rule.key) {
                        Entry::Occupied(_) => stray(&mut live),
                        Entry::Vacant(slot) => {
                            slot.insert(half(rule));
                        }
                    }
                    continue;
                }
            }
            if matches!(slot, Slot::Masquerade | Slot::ProxyGuard | Slot::Forward) {
                // A duplicate entry is a stray: the kernel would never reach it.
                match entry_rule(slot, &line.spec) {
                    Some(entry) if live.owned.scaffold.insert(entry) => {}
                    _ => stray(&mut live),
                }
                continue;
            }
            let rule = portal_rule(slot, &line.spec).and_then(|mut rule| {
                if let Action::Balance { .. } = rule.action {
                    let name = service_chain(&rule.key);
                    let rules = owned_rules.get(&(TABLE, name.as_str()))?;
                    rule.action = service_action(&rule.key, rules)?;
                }
                Some(rule)
            });
            match rule {
                // A second rule for the same key is a duplicate the kernel would never reach.
                Some(rule) if !live.owned.rules.contains_key(&rule.key) => {
                    if let Action::Balance { .. } = rule.action {
                        used.insert(service_chain(&rule.key));
                    }
                    live.owned.insert_rule(rule);
                }
                _ => stray(&mut live),
            }
            continue;
        }
        if jumps_into_portald(&line.spec) {
            match hook(&line.table, &line.chain, &line.spec) {
                Some(slot) => hooks.entry(slot).or_default().push((
                    line.chain.clone(),
                    StrayRule {
                        chain: stray_location(&line.table, &line.chain),
                        text: line.text.clone(),
                    },
                )),
                // Not portald's spelling: it must go.
                None => stray(&mut live),
            }
            continue;
        }
        let mut rule = foreign(
            format!("{}/{}", line.table, line.chain),
            line.text.clone(),
            &line.spec,
        );
        if rule.terminal && catches_new(&line.spec) {
            let hooked = hook_at.get(&(line.table.as_str(), line.chain.as_str()));
            rule.ahead_of = hooked
                .into_iter()
                .flatten()
                .filter(|(at, slot)| *at > index && *slot != Slot::Masquerade)
                .map(|(_, slot)| *slot)
                .collect();
        }
        live.foreign.push(rule);
    }
    for (slot, jumps) in hooks {
        // The first jump of each chain counts; a duplicate is one the kernel never reaches.
        let mut first: BTreeMap<String, StrayRule> = BTreeMap::new();
        for (chain_name, text) in jumps {
            match first.entry(chain_name) {
                Entry::Occupied(_) => live.stray.push(text),
                Entry::Vacant(slot) => {
                    slot.insert(text);
                }
            }
        }
        if hook_chains(slot).iter().all(|c| first.contains_key(*c)) {
            live.owned.scaffold.insert(Scaffold::Hook(slot));
        } else {
            live.stray.extend(first.into_values());
        }
    }
    for (key, (rule, text)) in refusals {
        let needs_redirect = local_redirect_spec(&rule).is_some();
        let redirect = redirects.remove(&key);
        let whole = match &redirect {
            Some((other, _)) => *other == rule,
            None => !needs_redirect,
        };
        if whole && !live.owned.rules.contains_key(&key) {
            live.owned.insert_rule(rule);
        } else {
            live.stray.push(text);
            live.stray
                .extend(redirect.map(|(_, other_text)| other_text));
        }
    }
    live.stray
        .extend(redirects.into_values().map(|(_, text)| text));
    // Owned chains that are neither a slot's nor in use by a portal go whole.
    for (table_name, name) in declared {
        let orphan = name.starts_with(CHAIN_PREFIX)
            && slot_of_chain(table_name, name).is_none()
            && !(table_name == TABLE && used.contains(name));
        if orphan {
            live.stray.push(StrayRule {
                chain: stray_location(table_name, name),
                text: format!("chain {name}"),
            });
        }
    }
    live
}

/// The foreign rules of a dump of the iptables flavour portald does not drive
/// (`iptables-legacy-save` beside iptables-nft, or the reverse), named `FLAVOUR table/chain`.
/// The two flavours' tables sit side by side on the same netfilter hooks, so a rule there
/// that drops, rejects or rewrites a new connection can take it whatever portald's own
/// chains say (an ACCEPT there ends only that flavour's table: not counted).
pub fn other_flavour_foreign(dump: &str, flavour: &str) -> Result<Vec<ForeignRule>, ParseError> {
    let mut lines = Vec::new();
    for raw in live(dump)?.foreign {
        let (table_name, chain_name) = raw.location.split_once('/').unwrap_or(("", ""));
        let words = split_words(&raw.text).unwrap_or_default();
        let target = words
            .windows(2)
            .find(|w| matches!(w[0].as_str(), "-j" | "--jump"))
            .map(|w| w[1].clone())
            .unwrap_or_default();
        let mut rule = raw.clone();
        rule.location = format!("{flavour} {}", raw.location);
        let ends = matches!(target.as_str(), "DROP" | "REJECT" | "DNAT" | "REDIRECT");
        if ends && catches_new(&words) {
            rule.ahead_of = match (table_name, chain_name) {
                (TABLE, "PREROUTING") => vec![Slot::Container],
                (TABLE, "OUTPUT") => vec![Slot::Host],
                (TABLE, _) => vec![Slot::Container, Slot::Host],
                (_, "INPUT" | "FORWARD") => vec![Slot::ContainerReject],
                (_, "OUTPUT") => vec![Slot::HostReject],
                _ => vec![Slot::ContainerReject, Slot::HostReject],
            };
        }
        lines.push(rule);
    }
    Ok(lines)
}

/// The policy of a built-in chain (`DROP`, `ACCEPT`) as an `iptables-save` dump declares it
/// (`:FORWARD DROP [0:0]` in `*filter`); `None` when the dump has no such table or chain.
pub fn builtin_policy(dump: &str, table_name: &str, chain_name: &str) -> Option<String> {
    let mut current = None;
    for line in dump.lines().map(str::trim) {
        if let Some(name) = line.strip_prefix('*') {
            current = Some(name.trim());
        } else if line == "COMMIT" {
            current = None;
        } else if let (Some(declaration), Some(name)) = (line.strip_prefix(':'), current) {
            let mut words = declaration.split_whitespace();
            if name == table_name && words.next() == Some(chain_name) {
                return words.next().filter(|p| *p != "-").map(str::to_string);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(text: &str) -> Vec<String> {
        split_words(text).unwrap()
    }

    #[test]
    fn foreign_reads_destination_protocol_port_and_terminal_target() {
        let rule = foreign(
            "nat/DOCKER".into(),
            String::new(),
            &words("-d 10.11.0.1/32 ! -i docker0 -p tcp -m tcp --dport 8080 -j DNAT --to-destination 172.17.0.2:80"),
        );
        assert_eq!(rule.dst, Some(Ipv4Addr::new(10, 11, 0, 1)));
        assert_eq!(rule.protocol, Some(Protocol::Tcp));
        assert_eq!(rule.dport, Some(8080));
        assert!(rule.terminal);
    }

    #[test]
    fn foreign_ignores_negated_and_wide_matches() {
        let rule = foreign(
            "nat/OUTPUT".into(),
            String::new(),
            &words("! -d 127.0.0.0/8 -p udp -m udp ! --dport 53 -j DOCKER"),
        );
        assert_eq!((rule.dst, rule.dport), (None, None));
        assert_eq!(rule.protocol, Some(Protocol::Udp));
        assert!(!rule.terminal);
        let wide = foreign(
            "nat/X".into(),
            String::new(),
            &words("-d 10.0.0.0/8 -p tcp -m multiport --dports 80,443 -j RETURN"),
        );
        assert_eq!((wide.dst, wide.dport, wide.terminal), (None, None, false));
    }

    #[test]
    fn foreign_never_reads_a_comment_as_a_match() {
        let rule = foreign(
            "nat/X".into(),
            String::new(),
            &words("-m comment --comment -d -j MARK --set-xmark 0x1/0x1"),
        );
        assert_eq!(rule.dst, None);
        assert!(!rule.terminal);
    }

    #[test]
    fn portal_rule_rejects_a_spelling_that_would_not_render_back() {
        let zero_port = words(
            "-d 10.11.0.1/32 -p tcp -m comment --comment \"a/b:1\" -m tcp --dport 080 \
             -j REDIRECT --to-ports 33945",
        );
        assert_eq!(portal_rule(Slot::Container, &zero_port), None);
        let good = words(
            "-d 10.11.0.1/32 -p tcp -m comment --comment \"a/b:1\" -m tcp --dport 80 \
             -j REDIRECT --to-ports 33945",
        );
        assert!(portal_rule(Slot::Container, &good).is_some());
    }

    #[test]
    fn hostile_but_valid_dumps_parse_and_keep_their_text() {
        let dump = "*filter\r\n:INPUT DROP [12:345]\n:weird-chain - [0:0]\n\
            [1:2] -A INPUT -m foo --bar \"baz \\\" qux\" ! -s ::1 -d fe80::1/128 -j WEIRD --x\n\
            -A INPUT -d 10.11.0.9 -p 17 -m udp --dport 53 -j DROP\nCOMMIT\n\
            *nat\n:PORTAL-EXTRA - [0:0]\n-A PORTAL-EXTRA -j RETURN\n\
            -A PREROUTING -m comment --comment portald:host-portals -j PORTAL-HOST\nCOMMIT\n";
        let live = live(dump).unwrap();
        assert_eq!(live.foreign.len(), 2);
        assert_eq!(
            live.foreign[0].text,
            r#"-A INPUT -m foo --bar "baz \" qux" ! -s ::1 -d fe80::1/128 -j WEIRD --x"#
        );
        assert_eq!(live.foreign[0].dst, None);
        let udp = &live.foreign[1];
        assert_eq!(
            (udp.dst, udp.protocol, udp.dport, udp.terminal),
            (
                Some(Ipv4Addr::new(10, 11, 0, 9)),
                Some(Protocol::Udp),
                Some(53),
                true
            )
        );
        // An unknown PORTAL-* chain is an orphan, removed whole; a host hook in the container
        // hook's chain is a stray too.
        assert!(live.owned.is_empty());
        let strays: Vec<(&str, &str)> = live
            .stray
            .iter()
            .map(|s| (s.chain.as_str(), s.text.as_str()))
            .collect();
        assert_eq!(
            strays,
            [
                (
                    "PREROUTING",
                    "-A PREROUTING -m comment --comment portald:host-portals -j PORTAL-HOST"
                ),
                ("PORTAL-EXTRA", "chain PORTAL-EXTRA")
            ]
        );
    }

    /// The scaffold entries (rules inside portald's chains) read back, in order.
    fn entries_of(live: &Live) -> Vec<Scaffold> {
        live.owned
            .scaffold
            .iter()
            .filter(|s| s.is_entry())
            .copied()
            .collect()
    }

    #[test]
    fn guard_forward_and_hairpin_entries_read_back_only_in_portalds_spelling() {
        let dump = "*filter\n:PORTAL-PROXY-GUARD - [0:0]\n:PORTAL-FORWARD - [0:0]\n\
            -A PORTAL-PROXY-GUARD -p tcp -m tcp --dport 20000 -m conntrack ! --ctstate DNAT -j REJECT --reject-with tcp-reset\n\
            -A PORTAL-PROXY-GUARD -p tcp -m tcp --dport 20001 -m conntrack ! --ctstate DNAT -j DROP\n\
            -A PORTAL-FORWARD -m conntrack --ctstate DNAT --ctorigdst 10.11.0.0/16 -j ACCEPT\n\
            -A PORTAL-FORWARD -m conntrack --ctstate DNAT,SNAT --ctorigdst 10.11.0.0/16 -j ACCEPT\n\
            COMMIT\n*nat\n:PORTAL-MASQUERADE - [0:0]\n\
            -A PORTAL-MASQUERADE -s 10.244.1.2/32 -d 10.244.1.2/32 -m conntrack --ctstate DNAT -j MASQUERADE\n\
            -A PORTAL-MASQUERADE -s 10.244.1.2/32 -d 10.244.1.3/32 -m conntrack --ctstate DNAT -j MASQUERADE\n\
            COMMIT\n";
        let live = live(dump).unwrap();
        let entries = entries_of(&live);
        assert_eq!(
            entries,
            [
                Scaffold::ProxyGuard(GuardedPort {
                    protocol: Protocol::Tcp,
                    port: 20000
                }),
                Scaffold::Forward("10.11.0.0/16".parse().unwrap()),
                Scaffold::Hairpin(Ipv4Addr::new(10, 244, 1, 2)),
            ]
        );
        // A DROP instead of the reject, another conntrack state, a pair that is not a hairpin.
        assert_eq!(live.stray.len(), 3, "{:?}", live.stray);
    }

    #[test]
    fn a_masquerade_reads_back_only_when_client_and_endpoint_share_its_network() {
        let dump = "*nat\n:PORTAL-MASQUERADE - [0:0]\n\
            -A PORTAL-MASQUERADE -s 10.244.1.0/24 -d 10.244.1.0/24 -m conntrack --ctstate DNAT --ctorigdst 10.11.0.0/16 -j MASQUERADE\n\
            -A PORTAL-MASQUERADE -s 10.244.1.0/24 -d 10.244.2.0/24 -m conntrack --ctstate DNAT --ctorigdst 10.11.0.0/16 -j MASQUERADE\n\
            -A PORTAL-MASQUERADE -s 10.244.3.0/24 -m conntrack --ctstate DNAT --ctorigdst 10.11.0.0/16 -j MASQUERADE\n\
            COMMIT\n";
        let live = live(dump).unwrap();
        let entries = entries_of(&live);
        assert_eq!(
            entries,
            [Scaffold::Masquerade(Masquerade {
                network: "10.244.1.0/24".parse().unwrap(),
                portals: "10.11.0.0/16".parse().unwrap(),
            })]
        );
        // Two networks in one rule; the earlier spelling that masqueraded every destination.
        assert_eq!(live.stray.len(), 2, "{:?}", live.stray);
    }

    proptest::proptest! {
        #[test]
        fn any_printable_rule_text_parses_without_error(spec in "[ -~]{0,80}") {
            let escaped = spec.replace('"', "");
            let dump = format!("*nat\n-A PORTAL-HOST {escaped}\n-A OUTPUT {escaped}\nCOMMIT\n");
            proptest::prop_assert!(live(&dump).is_ok());
        }
    }

    #[test]
    fn only_foreign_rules_above_a_hook_are_ahead_of_it_and_a_prefix_covers_its_vips() {
        let dump = "*filter\n\
            -A FORWARD -d 10.11.0.0/16 -j DROP\n\
            -A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
            -A FORWARD -m conntrack --ctstate NEW -m comment --comment \"portald:container-rejects\" -j PORTAL-CONTAINER-REJECT\n\
            -A INPUT -m conntrack --ctstate NEW -m comment --comment \"portald:container-rejects\" -j PORTAL-CONTAINER-REJECT\n\
            -A FORWARD -j DROP\nCOMMIT\n";
        let live = live(dump).unwrap();
        assert!(live
            .owned
            .scaffold
            .contains(&Scaffold::Hook(Slot::ContainerReject)));
        let ahead: Vec<(&str, &[Slot])> = live
            .foreign
            .iter()
            .map(|f| (f.text.as_str(), f.ahead_of.as_slice()))
            .collect();
        assert_eq!(
            ahead,
            [
                (
                    "-A FORWARD -d 10.11.0.0/16 -j DROP",
                    &[Slot::ContainerReject][..]
                ),
                (
                    "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
                    &[][..]
                ),
                ("-A FORWARD -j DROP", &[][..]),
            ]
        );
        let key = PortalKey {
            path: crate::Path::Container,
            vip: Ipv4Addr::new(10, 11, 0, 41),
            protocol: Protocol::Tcp,
            port: 80,
        };
        assert!(live.foreign[0].covers(&key));
        let elsewhere = PortalKey {
            vip: Ipv4Addr::new(10, 12, 0, 1),
            ..key
        };
        assert!(!live.foreign[0].covers(&elsewhere));
    }

    #[test]
    fn the_policy_of_a_built_in_chain_is_read_from_its_table_only() {
        let dump = "*nat\n:FORWARD ACCEPT [0:0]\nCOMMIT\n*filter\n:INPUT ACCEPT [0:0]\n\
            :FORWARD DROP [12:345]\n:DOCKER - [0:0]\nCOMMIT\n";
        assert_eq!(
            builtin_policy(dump, "filter", "FORWARD").as_deref(),
            Some("DROP")
        );
        assert_eq!(
            builtin_policy(dump, "nat", "FORWARD").as_deref(),
            Some("ACCEPT")
        );
        assert_eq!(builtin_policy(dump, "filter", "DOCKER"), None);
        assert_eq!(builtin_policy("", "filter", "FORWARD"), None);
    }

    #[test]
    fn the_other_flavour_counts_only_rules_that_end_a_packet_across_tables() {
        let dump = "*nat\n-A PREROUTING -d 10.11.0.41/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.244.1.7:80\nCOMMIT\n\
            *filter\n-A FORWARD -d 10.11.0.41/32 -j ACCEPT\n-A OUTPUT -p udp -m udp ! --dport 53 -j DROP\nCOMMIT\n";
        let rules = other_flavour_foreign(dump, "iptables-legacy").unwrap();
        let got: Vec<(&str, &[Slot], bool)> = rules
            .iter()
            .map(|r| (r.location.as_str(), r.ahead_of.as_slice(), r.dport_unread))
            .collect();
        assert_eq!(
            got,
            [
                (
                    "iptables-legacy nat/PREROUTING",
                    &[Slot::Container][..],
                    false
                ),
                ("iptables-legacy filter/FORWARD", &[][..], false),
                (
                    "iptables-legacy filter/OUTPUT",
                    &[Slot::HostReject][..],
                    true
                ),
            ]
        );
    }

    #[test]
    fn half_a_container_refusal_of_udp_is_a_stray() {
        let refusal = "-A PORTAL-CONTAINER-REJECT -p udp -m conntrack --ctorigdst 10.11.0.53 \
            --ctorigdstport 53 -m comment --comment \"a/dns:53\" -j REJECT --reject-with icmp-port-unreachable";
        let redirect =
            "-A PORTAL-CONTAINER -d 10.11.0.53/32 -p udp -m comment --comment \"a/dns:53\" \
            -m udp --dport 53 -j REDIRECT";
        let whole = format!(
            "*nat\n:PORTAL-CONTAINER - [0:0]\n{redirect}\nCOMMIT\n*filter\n:PORTAL-CONTAINER-REJECT - [0:0]\n{refusal}\nCOMMIT\n"
        );
        let read = live(&whole).unwrap();
        assert_eq!(read.owned.rules.len(), 1, "{read:?}");
        assert!(read.stray.is_empty(), "{:?}", read.stray);
        let half = format!("*filter\n:PORTAL-CONTAINER-REJECT - [0:0]\n{refusal}\nCOMMIT\n");
        let read = live(&half).unwrap();
        assert!(read.owned.rules.is_empty());
        assert_eq!(read.stray.len(), 1);
    }

    #[test]
    fn a_rule_before_any_table_is_an_error_with_its_line_number() {
        let err = live("# header\n-A INPUT -j ACCEPT\n").unwrap_err();
        assert_eq!(err.line, 2);
    }
}
