//! Serde types for the statements and expressions of the libnftables JSON schema that
//! portald writes in its own rules and elements (libnftables-json(5), STATEMENTS and
//! EXPRESSIONS): the rules the parse expects to find, and the dump a fake kernel lists, are
//! built from these. Reading keeps `serde_json::Value` for statements (see `schema.rs`):
//! foreign rules hold any statement at all.

use serde::Serialize;
use serde_json::Value;

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
