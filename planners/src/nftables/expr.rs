//! Compact nft-like text for the statements of a rule read from a dump ([`Listed`]), and
//! the facts a conflict report needs from a foreign rule. A statement or expression portald
//! does not know never fails: it is shown as its JSON.

use super::stmt::{Known, Listed, ListedExpr, ListedNamed, Nat, Payload, ToPort};
use crate::Protocol;
use serde_json::Value;
use std::net::Ipv4Addr;

/// A rule's statements as one line, close to what `nft list` prints. Counter values are
/// left out so that a rule's text stays the same while traffic flows.
pub(crate) fn rule_text(stmts: &[Listed], comment: Option<&str>) -> String {
    let mut parts: Vec<String> = stmts.iter().map(statement).collect();
    if let Some(comment) = comment {
        parts.push(format!("comment {}", quoted(comment)));
    }
    parts.join(" ")
}

fn quoted(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\\\""))
}

/// Renders one statement (`match`, `counter`, `dnat`, verdicts, ...).
fn statement(stmt: &Listed) -> String {
    let known = match stmt {
        Listed::Known(known) => known,
        Listed::Other(value) => return compact_json(value),
    };
    match known {
        Known::Match { op, left, right } => {
            let (left, right) = (expr(left), expr(right));
            match op.as_str() {
                "==" | "in" => format!("{left} {right}"),
                op => format!("{left} {op} {right}"),
            }
        }
        Known::Counter(_) => "counter".to_string(),
        Known::Vmap { key, data } => format!("{} vmap {}", expr(key), expr(data)),
        Known::Accept(_) => "accept".to_string(),
        Known::Drop(_) => "drop".to_string(),
        Known::Continue(_) => "continue".to_string(),
        Known::Return(_) => "return".to_string(),
        Known::Jump(to) => format!("jump {}", to.target),
        Known::Goto(to) => format!("goto {}", to.target),
        Known::Dnat(nat) => nat_text("dnat", nat),
        Known::Snat(nat) => nat_text("snat", nat),
        Known::Redirect(to) => port_text("redirect", to.as_ref()),
        Known::Masquerade(to) => port_text("masquerade", to.as_ref()),
        Known::Reject(with) => match with.as_ref().map(|w| (&w.kind, &w.expr)) {
            Some((Some(kind), Some(e))) => format!("reject with {kind} {}", expr(e)),
            Some((Some(kind), None)) => format!("reject with {kind}"),
            _ => "reject".to_string(),
        },
        Known::Log(log) => match log.as_ref().and_then(|l| l.prefix.as_deref()) {
            Some(prefix) => format!("log prefix {}", quoted(prefix)),
            None => "log".to_string(),
        },
        Known::Xt { kind, name } => format!("xt {kind} {name}"),
        Known::Set(update) => {
            let body = serde_json::to_value(update).unwrap_or_default();
            compact_json(&Value::Object(
                [("set".to_string(), body)].into_iter().collect(),
            ))
        }
    }
}

/// `dnat ip to ADDR:PORT`, `snat to :PORT`, ...
fn nat_text(name: &str, nat: &Nat) -> String {
    let mut s = name.to_string();
    if let Some(family) = &nat.family {
        s.push(' ');
        s.push_str(family);
    }
    if let Some(addr) = &nat.addr {
        s.push_str(" to ");
        s.push_str(&expr(addr));
        if let Some(port) = &nat.port {
            s.push(':');
            s.push_str(&expr(port));
        }
    } else if let Some(port) = &nat.port {
        s.push_str(" to :");
        s.push_str(&expr(port));
    }
    s
}

/// `redirect`, `masquerade to :PORT`.
fn port_text(name: &str, to: Option<&ToPort>) -> String {
    match to.and_then(|t| t.port.as_ref()) {
        Some(port) => format!("{name} to :{}", expr(port)),
        None => name.to_string(),
    }
}

/// Renders one expression (`payload`, `meta`, `set`, `prefix`, literals, ...).
fn expr(value: &ListedExpr) -> String {
    let named = match value {
        ListedExpr::Text(s) => return s.clone(),
        ListedExpr::Number(n) => return n.to_string(),
        ListedExpr::Bool(b) => return b.to_string(),
        ListedExpr::List(items) => return joined(items, ", "),
        ListedExpr::Other(Value::Null) => return String::new(),
        ListedExpr::Other(other) => return compact_json(other),
        ListedExpr::Named(named) => named,
    };
    match named.as_ref() {
        ListedNamed::Payload(Payload::Field { protocol, field }) => format!("{protocol} {field}"),
        ListedNamed::Payload(Payload::Raw { base, offset, len }) => {
            format!("@{base},{offset},{len}")
        }
        ListedNamed::Meta { key } => format!("meta {key}"),
        ListedNamed::Ct { key, dir } => match dir {
            Some(dir) => format!("ct {dir} {key}"),
            None => format!("ct {key}"),
        },
        ListedNamed::Fib { flags, result } => {
            format!("fib {} {result}", expr(flags).replace(", ", " . "))
        }
        ListedNamed::Set(items) => format!("{{ {} }}", expr(items)),
        ListedNamed::Prefix { addr, len } => format!("{addr}/{len}"),
        ListedNamed::Range([low, high]) => format!("{}-{}", expr(low), expr(high)),
        ListedNamed::Concat(items) => joined(items, " . "),
        ListedNamed::Map { key, data } => format!("{} map {}", expr(key), expr(data)),
        ListedNamed::Elem { val } => expr(val),
        ListedNamed::And([a, b]) => format!("{} & {}", expr(a), expr(b)),
        ListedNamed::Or([a, b]) => format!("{} | {}", expr(a), expr(b)),
        ListedNamed::Xor([a, b]) => format!("{} ^ {}", expr(a), expr(b)),
        ListedNamed::Lshift([a, b]) => format!("{} << {}", expr(a), expr(b)),
        ListedNamed::Rshift([a, b]) => format!("{} >> {}", expr(a), expr(b)),
    }
}

fn joined(items: &[ListedExpr], separator: &str) -> String {
    items.iter().map(expr).collect::<Vec<_>>().join(separator)
}

fn compact_json(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

/// What a conflict report wants from a foreign rule, best effort.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Facts {
    pub dst: Option<Ipv4Addr>,
    pub protocol: Option<Protocol>,
    pub dport: Option<u16>,
    pub terminal: bool,
    /// `ip daddr` as a network, when it is one (a /32 for one address).
    pub dst_net: Option<crate::Net>,
    /// An `ip daddr` match that is not one address or prefix (`!=`, a set, a range).
    pub dst_unread: bool,
    /// A port match that is not one port, or a protocol other than TCP and UDP.
    pub dport_unread: bool,
    /// Whether the rule ends the packet's way for every later base chain too: drop,
    /// reject, or a destination rewrite. `accept` ends only its own base chain.
    pub ends: bool,
}

/// Reads `ip daddr X`, `meta l4proto tcp` / `ip protocol tcp`, `tcp dport N` / `th dport N`
/// and whether a statement ends or rewrites the packet's path.
pub(crate) fn facts(stmts: &[Listed]) -> Facts {
    let mut facts = Facts::default();
    for stmt in stmts {
        let Listed::Known(known) = stmt else {
            continue;
        };
        match known {
            Known::Match { op, left, right } => {
                let payload = left.payload();
                let field = |proto: &str| payload.filter(|(p, _)| *p == proto).map(|(_, f)| f);
                let is_dport = payload.is_some_and(|(_, f)| f == "dport");
                if op != "==" {
                    facts.dst_unread |= field("ip") == Some("daddr");
                    facts.dport_unread |= is_dport;
                    continue;
                }
                let meta_l4 =
                    matches!(left.named(), Some(ListedNamed::Meta { key }) if key == "l4proto");
                if field("ip") == Some("daddr") {
                    facts.dst = single_address(right).or(facts.dst);
                    facts.dst_net = network(right);
                    facts.dst_unread |= facts.dst_net.is_none();
                } else if field("ip") == Some("protocol") || meta_l4 {
                    facts.protocol = protocol(right).or(facts.protocol);
                    facts.dport_unread |= protocol(right).is_none();
                } else if let Some((proto, "dport")) = payload {
                    match right.as_u64().and_then(|n| u16::try_from(n).ok()) {
                        Some(port) => facts.dport = Some(port),
                        None => facts.dport_unread = true,
                    }
                    facts.protocol =
                        protocol(&ListedExpr::Text(proto.to_string())).or(facts.protocol);
                }
            }
            Known::Dnat(_) | Known::Redirect(_) | Known::Drop(_) | Known::Reject(_) => {
                facts.terminal = true;
                facts.ends = true;
            }
            Known::Accept(_) => facts.terminal = true,
            Known::Xt { kind, name } if kind == "target" => {
                if matches!(
                    name.as_str(),
                    "DNAT" | "REDIRECT" | "DROP" | "REJECT" | "ACCEPT"
                ) {
                    facts.terminal = true;
                }
                facts.ends |= matches!(name.as_str(), "DNAT" | "REDIRECT" | "DROP" | "REJECT");
            }
            _ => {}
        }
    }
    facts
}

/// An exact address: `10.0.0.1` or `10.0.0.1/32`.
fn single_address(value: &ListedExpr) -> Option<Ipv4Addr> {
    match value {
        ListedExpr::Text(s) => s.parse().ok(),
        _ => match value.named()? {
            ListedNamed::Prefix { addr, len: 32 } => addr.parse().ok(),
            _ => None,
        },
    }
}

/// An address or prefix as a network: `10.0.0.1`, `{"prefix": {"addr": .., "len": ..}}`.
pub(crate) fn network(value: &ListedExpr) -> Option<crate::Net> {
    match value {
        ListedExpr::Text(s) => s.parse().ok(),
        _ => match value.named()? {
            ListedNamed::Prefix { addr, len } => {
                crate::Net::new(addr.parse().ok()?, u8::try_from(*len).ok()?).ok()
            }
            _ => None,
        },
    }
}

fn protocol(value: &ListedExpr) -> Option<Protocol> {
    match value {
        ListedExpr::Text(s) if s == "tcp" => Some(Protocol::Tcp),
        ListedExpr::Text(s) if s == "udp" => Some(Protocol::Udp),
        ListedExpr::Number(n) if n.as_u64() == Some(6) => Some(Protocol::Tcp),
        ListedExpr::Number(n) if n.as_u64() == Some(17) => Some(Protocol::Udp),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(stmts: &str) -> Vec<Listed> {
        let values: Vec<Value> = serde_json::from_str(stmts).unwrap();
        values.iter().map(Listed::read).collect()
    }

    fn text(stmts: &str) -> String {
        rule_text(&read(stmts), None)
    }

    #[test]
    fn each_statement_portald_knows_reads_typed_and_shows_as_nft_lists_it() {
        let cases = [
            (
                r#"[{"match": {"op": "==", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]"#,
                "ct state established, related accept",
            ),
            (
                r#"[{"match": {"op": "!=", "left": {"ct": {"key": "state"}}, "right": {"set": ["new", "invalid"]}}}, {"reject": {"type": "icmpx", "expr": "admin-prohibited"}}]"#,
                "ct state != { new, invalid } reject with icmpx admin-prohibited",
            ),
            (
                r#"[{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "10.11.0.0", "len": 16}}}}, {"match": {"op": "==", "left": {"payload": {"protocol": "th", "field": "dport"}}, "right": {"range": [1000, 2000]}}}, {"counter": {"packets": 5, "bytes": 300}}, {"redirect": {"port": 99}}]"#,
                "ip daddr 10.11.0.0/16 th dport 1000-2000 counter redirect to :99",
            ),
            (
                r#"[{"snat": {"family": "ip", "addr": "1.2.3.4", "port": 5}}, {"dnat": {"port": 80}}, {"masquerade": {"port": 5}}, {"masquerade": null}, {"redirect": null}, {"reject": null}, {"drop": null}]"#,
                "snat ip to 1.2.3.4:5 dnat to :80 masquerade to :5 masquerade redirect reject drop",
            ),
            (
                r#"[{"match": {"op": "==", "left": {"fib": {"flags": ["daddr", "iif"], "result": "type"}}, "right": "local"}}, {"match": {"op": "==", "left": {"&": [{"meta": {"key": "mark"}}, 255]}, "right": 1}}, {"match": {"op": "==", "left": {"payload": {"base": "nh", "offset": 12, "len": 32}}, "right": "1.2.3.4"}}, {"match": {"op": "==", "left": {"ct": {"key": "daddr", "dir": "original", "family": "ip"}}, "right": "1.1.1.1"}}]"#,
                "fib daddr . iif type local meta mark & 255 1 @nh,12,32 1.2.3.4 ct original daddr 1.1.1.1",
            ),
            (
                r#"[{"log": {"prefix": "x: "}}, {"log": null}, {"xt": {"type": "target", "name": "DNAT"}}, {"jump": {"target": "docker"}}, {"goto": {"target": "x"}}, {"return": null}, {"continue": null}]"#,
                r#"log prefix "x: " log xt target DNAT jump docker goto x return continue"#,
            ),
            (
                r#"[{"match": {"op": "==", "left": {"concat": [{"payload": {"protocol": "ip", "field": "saddr"}}, {"meta": {"key": "l4proto"}}]}, "right": {"elem": {"val": "@s", "timeout": 5}}}}, {"vmap": {"key": {"meta": {"key": "iifname"}}, "data": {"set": [["lo", {"accept": null}]]}}}]"#,
                r#"ip saddr . meta l4proto @s meta iifname vmap { lo, {"accept":null} }"#,
            ),
        ];
        for (stmts, expected) in cases {
            assert!(
                read(stmts).iter().all(|s| matches!(s, Listed::Known(_))),
                "{stmts}"
            );
            assert_eq!(text(stmts), expected, "{stmts}");
        }
    }

    #[test]
    fn a_statement_or_expression_portald_does_not_know_is_shown_as_its_json_and_never_fails() {
        let stmts = r#"[{"limit": {"rate": 5, "per": "second"}}, {"weird": 1, "two": 2}, 7, "text",
            {"match": {"op": "==", "left": {"numgen": {"mode": "random", "mod": 2, "offset": 0}}, "right": 0}},
            {"set": {"op": "update", "elem": {"payload": {"protocol": "ip", "field": "saddr"}}, "set": "@aff", "stmt": [{"counter": null}]}},
            {"jump": {"target": 7}}]"#;
        let listed = read(stmts);
        assert!(matches!(listed[0], Listed::Other(_)));
        assert!(matches!(listed[5], Listed::Known(Known::Set(ref s)) if s.set == "@aff"));
        assert!(matches!(listed[6], Listed::Other(_)));
        assert_eq!(
            rule_text(&listed, Some(r#"say "hi""#)),
            concat!(
                r#"{"limit":{"per":"second","rate":5}} {"two":2,"weird":1} 7 "text" "#,
                r#"{"numgen":{"mod":2,"mode":"random","offset":0}} 0 "#,
                r#"{"set":{"elem":{"payload":{"field":"saddr","protocol":"ip"}},"op":"update","set":"@aff","stmt":[{"counter":null}]}} "#,
                r#"{"jump":{"target":7}} comment "say \"hi\"""#
            )
        );
    }

    #[test]
    fn facts_read_destination_protocol_port_and_whether_the_rule_ends_the_packets_way() {
        let dnat = facts(&read(
            r#"[{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": {"prefix": {"addr": "10.11.0.7", "len": 32}}}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 80}},
                {"dnat": {"family": "ip", "addr": "10.0.0.1", "port": 8080}}]"#,
        ));
        assert_eq!(
            dnat,
            Facts {
                dst: Some(Ipv4Addr::new(10, 11, 0, 7)),
                protocol: Some(Protocol::Tcp),
                dport: Some(80),
                terminal: true,
                dst_net: "10.11.0.7/32".parse().ok(),
                dst_unread: false,
                dport_unread: false,
                ends: true,
            }
        );
        let wide = facts(&read(
            r#"[{"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "daddr"}}, "right": "10.0.0.1"}},
                {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": 17}},
                {"match": {"op": "==", "left": {"payload": {"protocol": "th", "field": "dport"}}, "right": {"set": [53, 54]}}},
                {"xt": {"type": "target", "name": "ACCEPT"}}]"#,
        ));
        assert_eq!(
            wide,
            Facts {
                protocol: Some(Protocol::Udp),
                terminal: true,
                dst_unread: true,
                dport_unread: true,
                ..Facts::default()
            }
        );
    }
}
