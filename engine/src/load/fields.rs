//! The field names a spec type knows at each place of a document, for "did you mean".

use serde::de::{self, DeserializeSeed, IntoDeserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt;

/// Field names by path pattern (`spec.ports[]`, `[]` for every index, `""` for the top):
/// the names `T` itself declares (serde's own list, from `deserialize_struct`), so a
/// suggestion always names a field that exists where the unknown one was written.
pub type KnownFields = BTreeMap<String, &'static [&'static str]>;

/// Deserializes `value` as `T` once more, recording the fields of every struct met on the
/// way. Only the parts `value` has are visited; a type error cuts the walk short.
pub fn known_fields<'de, T: Deserialize<'de>>(value: &'de Value) -> KnownFields {
    let mut known = KnownFields::new();
    let _ = T::deserialize(Probe {
        value,
        path: String::new(),
        known: &mut known,
    });
    known
}

/// The candidate closest to `word`, if one is close enough to be what was meant: the same
/// word in another case, or one at most two edits away (one for words of four letters or
/// fewer, so that `Node` does not suggest `Pod`), by optimal string alignment (a swap of
/// two letters is one edit).
pub fn suggest<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let lower = word.to_ascii_lowercase();
    let allowed = if word.chars().count() <= 4 { 1 } else { 2 };
    candidates
        .into_iter()
        .filter(|c| *c != word)
        .map(|c| {
            let distance = if c.to_ascii_lowercase() == lower {
                0
            } else {
                strsim::osa_distance(&lower, &c.to_ascii_lowercase())
            };
            (distance, c)
        })
        .filter(|(distance, _)| *distance <= allowed)
        .min()
        .map(|(_, c)| c)
}

/// A deserializer over a borrowed JSON value that records `deserialize_struct`'s fields.
struct Probe<'a, 'de> {
    value: &'de Value,
    path: String,
    known: &'a mut KnownFields,
}

#[derive(Debug)]
struct Stop(String);

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Stop(msg.to_string())
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl<'de> de::Deserializer<'de> for Probe<'_, 'de> {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        match self.value {
            Value::Object(map) => visitor.visit_map(ProbeMap {
                iter: map.iter(),
                pending: None,
                path: self.path,
                known: self.known,
            }),
            Value::Array(items) => visitor.visit_seq(ProbeSeq {
                iter: items.iter(),
                path: format!("{}[]", self.path),
                known: self.known,
            }),
            other => other.deserialize_any(visitor).map_err(de::Error::custom),
        }
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Stop> {
        if self.value.is_null() {
            visitor.visit_none()
        } else {
            visitor.visit_some(self)
        }
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Stop> {
        self.known.insert(self.path.clone(), fields);
        self.deserialize_any(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Stop> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Stop> {
        self.value
            .deserialize_enum(name, variants, visitor)
            .map_err(de::Error::custom)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf unit unit_struct seq tuple tuple_struct map identifier ignored_any
    }
}

struct ProbeMap<'a, 'de> {
    iter: serde_json::map::Iter<'de>,
    pending: Option<(&'de String, &'de Value)>,
    path: String,
    known: &'a mut KnownFields,
}

impl<'de> MapAccess<'de> for ProbeMap<'_, 'de> {
    type Error = Stop;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Stop> {
        let Some((key, value)) = self.iter.next() else {
            return Ok(None);
        };
        self.pending = Some((key, value));
        seed.deserialize(key.as_str().into_deserializer()).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, Stop> {
        let (key, value) = self
            .pending
            .take()
            .ok_or_else(|| Stop("value before key".into()))?;
        seed.deserialize(Probe {
            value,
            path: join(&self.path, key),
            known: self.known,
        })
    }
}

struct ProbeSeq<'a, 'de> {
    iter: std::slice::Iter<'de, Value>,
    path: String,
    known: &'a mut KnownFields,
}

impl<'de> SeqAccess<'de> for ProbeSeq<'_, 'de> {
    type Error = Stop;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Stop> {
        let Some(value) = self.iter.next() else {
            return Ok(None);
        };
        seed.deserialize(Probe {
            value,
            path: self.path.clone(),
            known: self.known,
        })
        .map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load::spec::ServiceV1;

    #[test]
    fn known_fields_name_the_fields_of_each_struct_by_its_place() {
        let value = serde_json::json!({
            "metadata": {"name": "web"},
            "spec": {"ports": [{"port": 80, "targetport": 8080}]}
        });
        let known = known_fields::<ServiceV1>(&value);
        assert!(known[""].contains(&"spec"), "{known:?}");
        assert!(known["spec"].contains(&"clusterIP"), "{known:?}");
        assert!(known["spec.ports[]"].contains(&"targetPort"), "{known:?}");
        assert!(known["metadata"].contains(&"namespace"), "{known:?}");
    }

    #[test]
    fn suggest_prefers_the_same_word_in_another_case_and_refuses_a_stranger() {
        let fields = ["port", "targetPort", "protocol", "name"];
        assert_eq!(suggest("targetport", fields), Some("targetPort"));
        assert_eq!(suggest("protcol", fields), Some("protocol"));
        assert_eq!(suggest("replicas", fields), None);
        assert_eq!(suggest("Node", ["Service", "Pod", "Endpoints"]), None);
        assert_eq!(
            suggest("service", ["Service", "Pod", "Endpoints"]),
            Some("Service")
        );
    }
}
