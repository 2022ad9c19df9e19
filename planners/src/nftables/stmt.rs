//! Serde types for the statements and expressions of the libnftables JSON schema
//! (libnftables-json(5), STATEMENTS and EXPRESSIONS). Writing: [`Stmt`] and [`Expr`], exactly
//! what portald puts in its own rules and elements (the rules the parse expects to find, the
//! dump a fake kernel lists). Reading: [`Listed`] and [`ListedExpr`], the statements of any
//! rule in a dump, foreign ones included: typed where portald shows or judges them, and any
//! other statement or expression (or a known one of an odd shape) kept as its JSON, so that
//! no rule ever fails the parse and its text can still show everything.

use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

/// A statement of a rule, serialized as nft lists it: `{"match": {...}}`, `{"accept": null}`.
#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Stmt {
    /// `op` is `==`, `!=`, `in` or `!` as nft lists them.
    Match {
        op: &'static str,
        left: Expr,
        right: Expr,
    },
    Jump {
        target: String,
    },
    Goto {
        target: String,
    },
    Redirect {
        port: Expr,
    },
    Dnat {
        #[serde(skip_serializing_if = "Option::is_none")]
        family: Option<&'static str>,
        addr: Expr,
        #[serde(skip_serializing_if = "Option::is_none")]
        port: Option<Expr>,
    },
    Vmap {
        key: Expr,
        data: Expr,
    },
    /// `update @set { elem }`.
    Set {
        op: &'static str,
        elem: Expr,
        set: String,
    },
    Reject {
        #[serde(rename = "type")]
        kind: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        expr: Option<&'static str>,
    },
    Accept(()),
    Masquerade(()),
    /// In a set's declaration: each element counts its packets and bytes.
    Counter(()),
}

/// An expression: a literal, or an object naming its kind.
#[derive(Serialize, Debug, Clone)]
#[serde(untagged)]
pub(crate) enum Expr {
    Text(String),
    Number(u64),
    Named(Named),
}

/// The expressions with a name: `{"payload": {...}}`, `{"concat": [...]}`, ...
#[derive(Serialize, Debug, Clone)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Named {
    Payload {
        protocol: &'static str,
        field: &'static str,
    },
    Meta {
        key: &'static str,
    },
    Ct {
        key: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        dir: Option<&'static str>,
    },
    /// An anonymous set: `{ tcp, udp }`.
    Set(Vec<Expr>),
    Concat(Vec<Expr>),
    Map {
        key: Box<Expr>,
        data: Box<Expr>,
    },
    Prefix {
        addr: String,
        len: u8,
    },
    Numgen {
        mode: &'static str,
        #[serde(rename = "mod")]
        modulus: u64,
        offset: u64,
    },
}

impl Expr {
    pub(crate) fn text(text: impl Into<String>) -> Expr {
        Expr::Text(text.into())
    }

    pub(crate) fn payload(protocol: &'static str, field: &'static str) -> Expr {
        Expr::Named(Named::Payload { protocol, field })
    }

    pub(crate) fn meta(key: &'static str) -> Expr {
        Expr::Named(Named::Meta { key })
    }

    pub(crate) fn ct(key: &'static str, dir: Option<&'static str>) -> Expr {
        Expr::Named(Named::Ct { key, dir })
    }

    pub(crate) fn concat(parts: Vec<Expr>) -> Expr {
        Expr::Named(Named::Concat(parts))
    }

    pub(crate) fn set(items: Vec<Expr>) -> Expr {
        Expr::Named(Named::Set(items))
    }

    pub(crate) fn map(key: Expr, data: Expr) -> Expr {
        Expr::Named(Named::Map {
            key: Box::new(key),
            data: Box::new(data),
        })
    }

    pub(crate) fn prefix(net: &crate::Net) -> Expr {
        Expr::Named(Named::Prefix {
            addr: net.addr.to_string(),
            len: net.len,
        })
    }
}

/// A statement of a rule as `nft -j list` lists it. Two kinds of types rather than one: what
/// portald writes is fixed (static names, no optional shapes), what it reads is anything nft
/// can list.
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(untagged)]
pub(crate) enum Listed {
    Known(Known),
    /// Any statement portald neither shows as text nor judges (`limit`, `mangle`, `quota`,
    /// ...), or a known one of a shape nft does not list: shown as its JSON.
    Other(Value),
}

impl Listed {
    /// Reads one statement; never fails.
    pub(crate) fn read(value: &Value) -> Listed {
        Listed::deserialize(value).unwrap_or_else(|_| Listed::Other(value.clone()))
    }
}

/// The statements portald shows as nft-like text or reads facts from.
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Known {
    /// `op` is `==` when absent, as nft reads a match without one.
    Match {
        #[serde(default = "equals")]
        op: String,
        #[serde(default)]
        left: ListedExpr,
        #[serde(default)]
        right: ListedExpr,
    },
    /// Its values are left out of the text, so the text stays while traffic flows.
    Counter(IgnoredAny),
    Vmap {
        #[serde(default)]
        key: ListedExpr,
        #[serde(default)]
        data: ListedExpr,
    },
    Accept(IgnoredAny),
    Drop(IgnoredAny),
    Continue(IgnoredAny),
    Return(IgnoredAny),
    Jump(Target),
    Goto(Target),
    Dnat(Nat),
    Snat(Nat),
    /// `{"redirect": null}` or with a port.
    Redirect(Option<ToPort>),
    Masquerade(Option<ToPort>),
    Reject(Option<RejectWith>),
    Log(Option<Log>),
    /// iptables-nft's compatibility statement: `{"xt": {"type": "target", "name": "DNAT"}}`.
    Xt {
        #[serde(rename = "type")]
        kind: String,
        name: String,
    },
    /// `update @set { elem }`: shown as its JSON, as nft's text form of it is not kept.
    Set(SetUpdate),
}

fn equals() -> String {
    "==".to_string()
}

/// A `jump` or `goto` target chain.
#[derive(Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct Target {
    pub target: String,
}

/// The body of `dnat` and `snat`: an address, a port, or both.
#[derive(Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct Nat {
    #[serde(default)]
    pub family: Option<String>,
    #[serde(default)]
    pub addr: Option<ListedExpr>,
    #[serde(default)]
    pub port: Option<ListedExpr>,
}

/// The body of `redirect` and `masquerade`.
#[derive(Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct ToPort {
    #[serde(default)]
    pub port: Option<ListedExpr>,
}

/// `reject with TYPE EXPR`.
#[derive(Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct RejectWith {
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub expr: Option<ListedExpr>,
}

#[derive(Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct Log {
    #[serde(default)]
    pub prefix: Option<String>,
}

/// The body of a set statement: the set (with its `@`) typed, the rest kept so that the
/// statement can be shown exactly as listed.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
pub(crate) struct SetUpdate {
    pub set: String,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// An expression as a dump lists it: a literal, a list, or an object naming its kind.
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(untagged)]
pub(crate) enum ListedExpr {
    Text(String),
    Number(Number),
    Bool(bool),
    /// A list of values (`["established", "related"]`) or an element pair.
    List(Vec<ListedExpr>),
    Named(Box<ListedNamed>),
    /// Anything else (`numgen`, a verdict inside a map, `null`): shown as its JSON.
    Other(Value),
}

impl Default for ListedExpr {
    /// An absent operand (shown as nothing).
    fn default() -> Self {
        ListedExpr::Other(Value::Null)
    }
}

/// The expressions portald shows as text or reads facts from.
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ListedNamed {
    Payload(Payload),
    Meta {
        key: String,
    },
    Ct {
        key: String,
        #[serde(default)]
        dir: Option<String>,
    },
    Fib {
        #[serde(default)]
        flags: ListedExpr,
        result: String,
    },
    /// An anonymous set: a list, or one value.
    Set(ListedExpr),
    Prefix {
        addr: String,
        len: u64,
    },
    Range([ListedExpr; 2]),
    Concat(Vec<ListedExpr>),
    Map {
        #[serde(default)]
        key: ListedExpr,
        #[serde(default)]
        data: ListedExpr,
    },
    /// An element with its facts (`timeout`, `comment`, ...): only the value is shown.
    Elem {
        #[serde(default)]
        val: ListedExpr,
    },
    #[serde(rename = "&")]
    And([ListedExpr; 2]),
    #[serde(rename = "|")]
    Or([ListedExpr; 2]),
    #[serde(rename = "^")]
    Xor([ListedExpr; 2]),
    #[serde(rename = "<<")]
    Lshift([ListedExpr; 2]),
    #[serde(rename = ">>")]
    Rshift([ListedExpr; 2]),
}

/// A payload field by protocol and name (`ip daddr`), or raw (`@nh,12,32`).
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(untagged)]
pub(crate) enum Payload {
    Field { protocol: String, field: String },
    Raw { base: String, offset: u64, len: u64 },
}

impl ListedExpr {
    pub(crate) fn named(&self) -> Option<&ListedNamed> {
        match self {
            ListedExpr::Named(named) => Some(named),
            _ => None,
        }
    }

    /// `(protocol, field)` of a payload field.
    pub(crate) fn payload(&self) -> Option<(&str, &str)> {
        match self.named()? {
            ListedNamed::Payload(Payload::Field { protocol, field }) => Some((protocol, field)),
            _ => None,
        }
    }

    pub(crate) fn as_str(&self) -> Option<&str> {
        match self {
            ListedExpr::Text(s) => Some(s),
            _ => None,
        }
    }

    pub(crate) fn as_u64(&self) -> Option<u64> {
        match self {
            ListedExpr::Number(n) => n.as_u64(),
            _ => None,
        }
    }
}

/// `left == right`.
pub(crate) fn is(left: Expr, right: Expr) -> Stmt {
    Stmt::Match {
        op: "==",
        left,
        right,
    }
}

/// Statements as the JSON values the dump lists (a rule's `expr`).
pub(crate) fn to_value<T: Serialize>(value: &T) -> Value {
    // Serializing these types cannot fail: no maps with non-string keys, no floats.
    serde_json::to_value(value).unwrap_or(Value::Null)
}
