//! Compact nft-like text for libnftables JSON rule expressions, and the facts a conflict
//! report needs from a foreign rule. Unknown expressions never fail: they are shown as
//! their JSON.

use crate::Protocol;
use serde_json::Value;
use std::net::Ipv4Addr;

/// A rule's statements as one line, close to what `nft list` prints. Counter values are
/// left out so that a rule's text stays the same while traffic flows.
pub(crate) fn rule_text(exprs: &[Value], comment: Option<&str>) -> String {
    let mut parts: Vec<String> = exprs.iter().map(statement).collect();
    if let Some(comment) = comment {
        parts.push(format!("comment {}", quoted(comment)));
    }
    parts.join(" ")
}

fn quoted(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\\\""))
}

/// Renders one statement (`match`, `counter`, `dnat`, verdicts, ...).
fn statement(stmt: &Value) -> String {
    let Some((name, body)) = single(stmt) else {
        return compact_json(stmt);
    };
    match name {
        "match" => {
            let left = expr(&body["left"]);
            let right = expr(&body["right"]);
            match body["op"].as_str().unwrap_or("==") {
                "==" | "in" => format!("{left} {right}"),
                op => format!("{left} {op} {right}"),
            }
        }
        "counter" => "counter".to_string(),
        "vmap" => format!("{} vmap {}", expr(&body["key"]), expr(&body["data"])),
        "accept" | "drop" | "continue" | "return" => name.to_string(),
        "jump" | "goto" => format!("{name} {}", text_or_json(&body["target"])),
        "dnat" | "snat" => {
            let mut s = name.to_string();
            if let Some(family) = body.get("family").and_then(Value::as_str) {
                s.push(' ');
                s.push_str(family);
            }
            if let Some(addr) = body.get("addr") {
                s.push_str(" to ");
                s.push_str(&expr(addr));
                if let Some(port) = body.get("port") {
                    s.push(':');
                    s.push_str(&expr(port));
                }
            } else if let Some(port) = body.get("port") {
                s.push_str(" to :");
                s.push_str(&expr(port));
            }
            s
        }
        "redirect" | "masquerade" => match body.get("port") {
            Some(port) => format!("{name} to :{}", expr(port)),
            None => name.to_string(),
        },
        "reject" => match (body.get("type"), body.get("expr")) {
            (Some(t), Some(e)) => format!("reject with {} {}", text_or_json(t), expr(e)),
            (Some(t), None) => format!("reject with {}", text_or_json(t)),
            _ => "reject".to_string(),
        },
        "log" => match body.get("prefix") {
            Some(prefix) => format!("log prefix {}", quoted(&text_or_json(prefix))),
            None => "log".to_string(),
        },
        "xt" => format!(
            "xt {} {}",
            text_or_json(&body["type"]),
            text_or_json(&body["name"])
        ),
        _ => compact_json(stmt),
    }
}

/// Renders one expression (`payload`, `meta`, `set`, `prefix`, literals, ...).
fn expr(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        Value::Array(items) => items.iter().map(expr).collect::<Vec<_>>().join(", "),
        Value::Object(_) => {
            let Some((name, body)) = single(value) else {
                return compact_json(value);
            };
            match name {
                "payload" => match (body.get("protocol"), body.get("field")) {
                    (Some(p), Some(f)) => format!("{} {}", text_or_json(p), text_or_json(f)),
                    _ => format!(
                        "@{},{},{}",
                        text_or_json(&body["base"]),
                        text_or_json(&body["offset"]),
                        text_or_json(&body["len"])
                    ),
                },
                "meta" => format!("meta {}", text_or_json(&body["key"])),
                "ct" => match body.get("dir") {
                    Some(dir) => format!("ct {} {}", text_or_json(dir), text_or_json(&body["key"])),
                    None => format!("ct {}", text_or_json(&body["key"])),
                },
                "fib" => format!(
                    "fib {} {}",
                    expr(&body["flags"]).replace(", ", " . "),
                    text_or_json(&body["result"])
                ),
                "set" => match body {
                    Value::Array(items) => {
                        let items: Vec<String> = items.iter().map(expr).collect();
                        format!("{{ {} }}", items.join(", "))
                    }
                    other => format!("{{ {} }}", expr(other)),
                },
                "prefix" => format!("{}/{}", expr(&body["addr"]), expr(&body["len"])),
                "range" => match body {
                    Value::Array(ends) if ends.len() == 2 => {
                        format!("{}-{}", expr(&ends[0]), expr(&ends[1]))
                    }
                    other => compact_json(other),
                },
                "concat" => match body {
                    Value::Array(items) => items.iter().map(expr).collect::<Vec<_>>().join(" . "),
                    other => compact_json(other),
                },
                "map" => format!("{} map {}", expr(&body["key"]), expr(&body["data"])),
                "elem" => expr(&body["val"]),
                "&" | "|" | "^" | "<<" | ">>" => match body {
                    Value::Array(ops) if ops.len() == 2 => {
                        format!("{} {name} {}", expr(&ops[0]), expr(&ops[1]))
                    }
                    other => compact_json(other),
                },
                _ => compact_json(value),
            }
        }
    }
}

/// The only key of a one-key object, with its value: the shape of every JSON expression.
fn single(value: &Value) -> Option<(&str, &Value)> {
    let object = value.as_object()?;
    if object.len() != 1 {
        return None;
    }
    object.iter().next().map(|(k, v)| (k.as_str(), v))
}

fn text_or_json(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => compact_json(other),
    }
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
pub(crate) fn facts(exprs: &[Value]) -> Facts {
    let mut facts = Facts::default();
    for stmt in exprs {
        let Some((name, body)) = single(stmt) else {
            continue;
        };
        match name {
            "match" => {
                let op = body["op"].as_str().unwrap_or("==");
                let left = &body["left"];
                let right = &body["right"];
                let field = |proto: &str| {
                    left.get("payload")
                        .filter(|p| p["protocol"] == proto)
                        .and_then(|p| p["field"].as_str())
                };
                let is_dport = left.get("payload").is_some_and(|p| p["field"] == "dport");
                if op != "==" {
                    facts.dst_unread |= field("ip") == Some("daddr");
                    facts.dport_unread |= is_dport;
                    continue;
                }
                if field("ip") == Some("daddr") {
                    facts.dst = single_address(right).or(facts.dst);
                    facts.dst_net = network(right);
                    facts.dst_unread |= facts.dst_net.is_none();
                } else if field("ip") == Some("protocol")
                    || left.get("meta").is_some_and(|m| m["key"] == "l4proto")
                {
                    facts.protocol = protocol(right).or(facts.protocol);
                    facts.dport_unread |= protocol(right).is_none();
                } else if let Some(p) = left.get("payload") {
                    if p["field"] == "dport" {
                        match right.as_u64().and_then(|n| u16::try_from(n).ok()) {
                            Some(port) => facts.dport = Some(port),
                            None => facts.dport_unread = true,
                        }
                        let proto = p["protocol"].as_str().unwrap_or_default();
                        facts.protocol = protocol(&Value::from(proto)).or(facts.protocol);
                    }
                }
            }
            "dnat" | "redirect" | "drop" | "reject" => {
                facts.terminal = true;
                facts.ends = true;
            }
            "accept" => facts.terminal = true,
            "xt" if body["type"] == "target" => {
                let target = body["name"].as_str().unwrap_or_default();
                if matches!(target, "DNAT" | "REDIRECT" | "DROP" | "REJECT" | "ACCEPT") {
                    facts.terminal = true;
                }
                facts.ends |= matches!(target, "DNAT" | "REDIRECT" | "DROP" | "REJECT");
            }
            _ => {}
        }
    }
    facts
}

/// An exact address: `10.0.0.1` or `10.0.0.1/32`.
fn single_address(value: &Value) -> Option<Ipv4Addr> {
    match value {
        Value::String(s) => s.parse().ok(),
        Value::Object(_) => {
            let prefix = value.get("prefix")?;
            if prefix["len"].as_u64() == Some(32) {
                prefix["addr"].as_str()?.parse().ok()
            } else {
                None
            }
        }
        _ => None,
    }
}

/// An address or prefix as a network: `10.0.0.1`, `{"prefix": {"addr": .., "len": ..}}`.
fn network(value: &Value) -> Option<crate::Net> {
    match value {
        Value::String(s) => s.parse().ok(),
        Value::Object(_) => {
            let prefix = value.get("prefix")?;
            let len = u8::try_from(prefix["len"].as_u64()?).ok()?;
            crate::Net::new(prefix["addr"].as_str()?.parse().ok()?, len).ok()
        }
        _ => None,
    }
}

fn protocol(value: &Value) -> Option<Protocol> {
    match value {
        Value::String(s) if s == "tcp" => Some(Protocol::Tcp),
        Value::String(s) if s == "udp" => Some(Protocol::Udp),
        Value::Number(n) if n.as_u64() == Some(6) => Some(Protocol::Tcp),
        Value::Number(n) if n.as_u64() == Some(17) => Some(Protocol::Udp),
        _ => None,
    }
}
