//! Serde types for the objects of the libnftables JSON schema (libnftables-json(5)) that
//! portald reads from `nft -j list`: chains, rules, maps and sets. Rule statements and
//! set elements are still `serde_json::Value` here (see [`RuleObject::expr`]).
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
use serde::Deserialize;
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
    /// text and shows foreign ones as nft-like text.
    #[serde(default, deserialize_with = "lenient")]
    pub expr: Option<Vec<Value>>,
}

/// A set's or map's key type: one type, or the parts of a concatenation.
#[derive(Deserialize, Debug, Clone, PartialEq, Eq)]
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
}
