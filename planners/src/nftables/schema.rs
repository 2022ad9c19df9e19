//! Serde types for the objects of the libnftables JSON schema (libnftables-json(5)) that
//! portald reads from `nft -j list`: chains, rules, maps and sets, and their elements. A
//! rule's statements are kept as listed (see [`RuleObject::expr`]) and read one by one into
//! `stmt.rs`'s typed `Listed` where they are judged; the expressions inside an element (its
//! value, a map's data) are still `serde_json::Value`.
//!
//! Own types, not the `nftables` crate: 0.6.3, tried against `fixtures/live/nftables`,
//! parses the foreign rulesets and every rule there, but fails on a map whose data is a
//! verdict (`"map": "verdict"`) or a concatenation (`"ipv4_addr . inet_service"`), both of
//! which portald writes; it drops a set's `stmt` (the `counter` portald declares its maps
//! with); it writes an element back with `"counter": null, "expires": null, "timeout":
//! null`, so it does not round-trip what `nft -j list` prints; and one construct it does
//! not know fails the whole document (its `NfObject` is untagged), where a foreign rule
//! portald only reads must never fail the parse.
//!
//! Every field is optional and lenient: a value of an unexpected shape reads as absent,
//! never as an error, so an odd object is judged (a stray, a foreign rule) rather than
//! failing the dump.

use serde::de::{DeserializeOwned, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A field read as `T` when it has that shape, else as absent.
fn lenient<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Option<T>, D::Error> {
    let value = Value::deserialize(d)?;
    Ok(serde_json::from_value(value).ok())
}

/// The document: `{"nftables": [item, ...]}`, each item kept as text until it is read.
#[derive(Deserialize)]
pub(crate) struct Dump<'a> {
    #[serde(borrow)]
    pub nftables: Vec<&'a serde_json::value::RawValue>,
}

impl<'a> Dump<'a> {
    /// The top level of an `nft -j list` dump; an error names its line.
    pub fn read(dump: &'a str) -> Result<Self, crate::ParseError> {
        serde_json::from_str(dump).map_err(|e| crate::ParseError {
            dialect: "nftables",
            line: e.line().max(1),
            message: if e.is_data() {
                "no top-level `nftables` array".to_string()
            } else {
                format!("not libnftables JSON: {e}")
            },
        })
    }
}

/// One item of the list: an object with one key naming its kind. Kinds portald does not
/// read (`metainfo`, `table`, `flowtable`, named counters, ...) leave all four absent.
#[derive(Deserialize, Default)]
pub(crate) struct Item {
    #[serde(default, deserialize_with = "lenient")]
    pub map: Option<SetObject>,
    #[serde(default, deserialize_with = "lenient")]
    pub set: Option<SetObject>,
    #[serde(default, deserialize_with = "lenient")]
    pub chain: Option<ChainObject>,
    #[serde(default, deserialize_with = "lenient")]
    pub rule: Option<RuleObject>,
}

/// `{"chain": {...}}`: a regular chain, or a base chain with type, hook and priority.
#[derive(Deserialize, Default)]
pub(crate) struct ChainObject {
    #[serde(default, deserialize_with = "lenient")]
    pub family: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub table: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub name: Option<String>,
    /// `nat`, `filter`, `route`.
    #[serde(rename = "type", default, deserialize_with = "lenient")]
    pub kind: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub hook: Option<String>,
    /// The priority as a number (`dstnat - 10` is listed as -110).
    #[serde(default, deserialize_with = "lenient")]
    pub prio: Option<i64>,
}

/// `{"rule": {...}}`.
#[derive(Deserialize, Default)]
pub(crate) struct RuleObject {
    #[serde(default, deserialize_with = "lenient")]
    pub family: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub table: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub chain: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub handle: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    pub comment: Option<String>,
    /// The statements, as listed: portald compares its own rules by their canonical JSON
    /// text (kept as text, not as a tree: see `parse.rs`), and reads each statement into a
    /// typed `Listed` to show foreign rules as nft-like text and to judge them.
    #[serde(default, deserialize_with = "lenient")]
    pub expr: Option<Vec<Value>>,
}

/// A set's or map's key type: one type, or the parts of a concatenation.
#[derive(Deserialize, Serialize, Debug, Clone, PartialEq, Eq)]
#[serde(untagged)]
pub(crate) enum KeyType {
    One(String),
    Concat(Vec<String>),
}

impl KeyType {
    /// The parts: `["ipv4_addr"]`, `["ipv4_addr", "inet_proto", "inet_service"]`.
    pub(crate) fn parts(&self) -> Vec<&str> {
        match self {
            KeyType::One(t) => vec![t.as_str()],
            KeyType::Concat(parts) => parts.iter().map(String::as_str).collect(),
        }
    }
}

/// `{"set": {...}}` or `{"map": {...}}` (a map has a data type).
#[derive(Deserialize, Default)]
pub(crate) struct SetObject {
    #[serde(default, deserialize_with = "lenient")]
    pub family: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub table: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub name: Option<String>,
    #[serde(rename = "type", default, deserialize_with = "lenient")]
    pub key: Option<KeyType>,
    /// A map's data type as nft spells it: `inet_service`, `ipv4_addr . inet_service`,
    /// `verdict`.
    #[serde(rename = "map", default, deserialize_with = "lenient")]
    pub data: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub flags: Option<Vec<String>>,
    /// Seconds.
    #[serde(default, deserialize_with = "lenient")]
    pub timeout: Option<u64>,
    #[serde(default, deserialize_with = "lenient")]
    pub size: Option<u64>,
    /// Statements every element carries (`[{"counter": null}]`).
    #[serde(default, deserialize_with = "lenient")]
    pub stmt: Option<Vec<Value>>,
    #[serde(default, deserialize_with = "lenient")]
    pub elem: Option<Vec<Value>>,
}

impl SetObject {
    pub(crate) fn elements(&self) -> &[Value] {
        self.elem.as_deref().unwrap_or_default()
    }

    /// Whether it is declared with `counter` (each element counts its packets and bytes).
    pub(crate) fn counts(&self) -> bool {
        self.stmt
            .iter()
            .flatten()
            .any(|s| s.get("counter").is_some())
    }

    pub(crate) fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().flatten().any(|f| f == flag)
    }
}

/// One element of a set (`key`) or map (`[key, data]`), as the dump lists it. The data
/// and the key's value stay JSON expressions (`"10.11.0.1"`, `{"concat": [...]}`,
/// `{"goto": {"target": ...}}`).
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(untagged)]
pub(crate) enum Element {
    Mapped(Key, Value),
    Single(Key),
}

impl Element {
    /// Reads an element of any shape: one that is neither form is a bare key.
    pub(crate) fn read(value: &Value) -> Element {
        Element::deserialize(value).unwrap_or_else(|_| Element::Single(Key::Bare(value.clone())))
    }
}

/// An element's key: bare, or described with the facts nft keeps per element.
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(untagged)]
pub(crate) enum Key {
    Described { elem: Described },
    Bare(Value),
}

impl Key {
    /// The key's value (`{"concat": ["10.11.0.1", "tcp", 80]}`).
    pub(crate) fn val(&self) -> &Value {
        match self {
            Key::Described { elem } => &elem.val,
            Key::Bare(value) => value,
        }
    }

    pub(crate) fn comment(&self) -> Option<&str> {
        match self {
            Key::Described { elem } => elem.comment.as_deref(),
            Key::Bare(_) => None,
        }
    }

    pub(crate) fn counter(&self) -> Option<Counter> {
        match self {
            Key::Described { elem } => elem.counter,
            Key::Bare(_) => None,
        }
    }
}

/// `{"val": ..., "comment": ..., "counter": {...}}`.
#[derive(Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct Described {
    #[serde(default)]
    pub val: Value,
    #[serde(default, deserialize_with = "lenient")]
    pub comment: Option<String>,
    #[serde(default, deserialize_with = "lenient")]
    pub counter: Option<Counter>,
}

/// An element's counter (a map declared with `counter`).
#[derive(Deserialize, Serialize, Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_object_of_odd_shape_reads_its_odd_fields_as_absent_and_the_rest_as_typed() {
        let item: Item = serde_json::from_str(
            r#"{"map": {"family": "ip", "table": "portald", "name": "host_dnat", "type": 7,
                "map": "ipv4_addr . inet_service", "timeout": "soon", "stmt": [{"counter": null}]}}"#,
        )
        .unwrap();
        let map = item.map.unwrap();
        assert_eq!(map.name.as_deref(), Some("host_dnat"));
        assert_eq!(map.key, None);
        assert_eq!(map.timeout, None);
        assert_eq!(map.data.as_deref(), Some("ipv4_addr . inet_service"));
        assert!(map.counts());
        assert!(map.elements().is_empty());
        let item: Item =
            serde_json::from_str(r#"{"metainfo": {"json_schema_version": 1}}"#).unwrap();
        assert!(
            item.map.is_none() && item.set.is_none() && item.chain.is_none() && item.rule.is_none()
        );
        let chain: Item = serde_json::from_str(
            r#"{"chain": {"family": "inet", "table": "f", "name": "in", "type": "filter", "hook": "input", "prio": -110}}"#,
        )
        .unwrap();
        assert_eq!(chain.chain.unwrap().prio, Some(-110));
    }

    #[test]
    fn elements_read_as_keyed_or_mapped_with_their_comment_and_counter() {
        let mapped: Value = serde_json::from_str(
            r#"[{"elem": {"val": {"concat": ["10.11.0.1", "tcp", 80]}, "comment": "a:80",
                 "counter": {"packets": 3, "bytes": 180}}}, 34001]"#,
        )
        .unwrap();
        let element = Element::read(&mapped);
        let Element::Mapped(key, data) = &element else {
            panic!("{element:?}")
        };
        assert_eq!(key.comment(), Some("a:80"));
        assert_eq!(
            key.counter(),
            Some(Counter {
                packets: 3,
                bytes: 180
            })
        );
        assert_eq!(key.val()["concat"][2], 80);
        assert_eq!(data, &Value::from(34001));
        let bare = Value::from("10.244.1.2");
        assert_eq!(
            Element::read(&bare),
            Element::Single(Key::Bare(bare.clone()))
        );
        let odd: Value = serde_json::from_str(r#"[1, 2, 3]"#).unwrap();
        assert_eq!(Element::read(&odd), Element::Single(Key::Bare(odd.clone())));
    }
}
