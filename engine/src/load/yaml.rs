//! The one place that knows the YAML and JSON libraries: text in, generic documents out,
//! each file read once (serde_yaml for YAML, serde_json for JSON).

use serde::Deserialize;
use serde_json::{Map, Value};
use std::marker::PhantomData;

/// A syntax error with the line it was found on (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: Option<usize>,
    pub message: String,
}

/// Parses every document of a YAML or JSON text, each read once by its own library. Empty
/// YAML documents come back as `Null` so that document indices match the line index in
/// [`super::positions`].
pub fn parse_documents(text: &str, json: bool) -> Result<Vec<Value>, SyntaxError> {
    if json {
        return serde_json::Deserializer::from_str(text)
            .into_iter::<Strict>()
            .map(|r| r.map(|s| s.0))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SyntaxError {
                line: Some(e.line()),
                message: strip_location(&e.to_string()),
            });
    }
    let mut docs = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let Tree(value, _) = Yaml::deserialize(document).map_err(|e| {
            let line = e.location().map(|l| l.line());
            match tab_in_indentation(text, line) {
                Some(tab) => SyntaxError {
                    line: Some(tab),
                    message: "a tab in indentation (YAML indents with spaces only)".to_string(),
                },
                None => SyntaxError {
                    line,
                    message: strip_location(&e.to_string()),
                },
            }
        })?;
        docs.push(value);
    }
    Ok(docs)
}

/// The first line (1-based), up to the line the parser gave up on, whose indentation holds
/// a tab: YAML forbids tabs there (YAML 1.2 §6.1), and the parser's own words for it
/// ("found character that cannot start any token") do not say so.
fn tab_in_indentation(text: &str, error_line: Option<usize>) -> Option<usize> {
    let last = error_line.unwrap_or(usize::MAX);
    text.lines()
        .take(last)
        .position(|line| {
            line.chars()
                .take_while(|c| c.is_whitespace())
                .any(|c| c == '\t')
        })
        .map(|i| i + 1)
}

/// A document read straight into a JSON value (no `serde_yaml::Value` in between: one tree
/// built, not two). Scalars, sequences and tags read the same from either library; the one
/// difference is how a mapping's keys are read ([`Keys`]).
struct Tree<K>(Value, PhantomData<K>);

/// YAML, as `serde_yaml::Value` would read it and then fold it into JSON: tags dropped, keys
/// that are not strings written as YAML (`80`, `true`), and a key given twice refused with
/// serde_yaml's own words (YAML 1.2 §3.2.1.1: mapping keys are unique).
type Yaml = Tree<YamlKeys>;

/// JSON whose objects have no key twice. serde_json keeps the last of duplicate keys
/// silently, where YAML makes them an error: reading JSON with this makes the two formats
/// agree, and the error carries the line of the second key.
type Strict = Tree<JsonKeys>;

/// How one format's mappings are read into a JSON object.
trait Keys: Sized {
    fn read_map<'de, A: serde::de::MapAccess<'de>>(map: A) -> Result<Value, A::Error>;
}

struct YamlKeys;
struct JsonKeys;

impl Keys for YamlKeys {
    fn read_map<'de, A: serde::de::MapAccess<'de>>(mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        // Keys that are not strings, as YAML compares them (`1` is not `"1"`).
        let mut others: Vec<serde_yaml::Value> = Vec::new();
        while let Some(key) = map.next_key::<serde_yaml::Value>()? {
            let duplicate = match &key {
                serde_yaml::Value::String(s) => out.contains_key(s),
                other => others.contains(other),
            };
            if duplicate {
                return Err(serde::de::Error::custom(duplicate_entry(&key)));
            }
            let name = match key {
                serde_yaml::Value::String(s) => s,
                other => {
                    let name = serde_yaml::to_string(&other)
                        .unwrap_or_default()
                        .trim_end()
                        .to_string();
                    others.push(other);
                    name
                }
            };
            let Tree(value, _) = map.next_value::<Yaml>()?;
            out.insert(name, value);
        }
        Ok(Value::Object(out))
    }
}

impl Keys for JsonKeys {
    fn read_map<'de, A: serde::de::MapAccess<'de>>(mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            // Checked before the value is read, so the error's line is the key's.
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format_args!(
                    "duplicate key `{key}`"
                )));
            }
            let Tree(value, _) = map.next_value::<Strict>()?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

impl<'de, K: Keys> Deserialize<'de> for Tree<K> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(TreeVisitor::<K>(PhantomData))
            .map(|value| Tree(value, PhantomData))
    }
}

struct TreeVisitor<K>(PhantomData<K>);

impl<'de, K: Keys> serde::de::Visitor<'de> for TreeVisitor<K> {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any YAML or JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    /// Not finite (`.inf`, `.nan`): `Null`, as JSON has no such number.
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: serde::Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
        Tree::<K>::deserialize(d).map(|t| t.0)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Tree(item, _)) = seq.next_element::<Tree<K>>()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Value, A::Error> {
        K::read_map(map)
    }
    /// A node with a tag of its own (`!foo x`, YAML only): the tag is dropped.
    fn visit_enum<A: serde::de::EnumAccess<'de>>(self, data: A) -> Result<Value, A::Error> {
        use serde::de::VariantAccess;
        let (_tag, contents) = data.variant::<String>()?;
        contents.newtype_variant::<Tree<K>>().map(|t| t.0)
    }
}

/// serde_yaml's message for a key given twice in a mapping (`serde_yaml::Mapping`).
fn duplicate_entry(key: &serde_yaml::Value) -> String {
    match key {
        serde_yaml::Value::Null => "duplicate entry with null key".to_string(),
        serde_yaml::Value::Bool(b) => format!("duplicate entry with key `{b}`"),
        serde_yaml::Value::Number(n) => format!("duplicate entry with key {n}"),
        serde_yaml::Value::String(s) => format!("duplicate entry with key {s:?}"),
        _ => "duplicate entry in YAML map".to_string(),
    }
}

/// The libraries append "at line X column Y"; the diagnostic carries the line already.
fn strip_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(cut) => message[..cut].to_string(),
        None => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_syntax_error_reports_its_line() {
        let err = parse_documents("a: 1\nb: [\n", false).unwrap_err();
        assert!(err.line.is_some());
    }

    #[test]
    fn a_tab_in_indentation_is_named_with_its_line() {
        let err = parse_documents("a:\n  b: 1\n\tc: 2\n", false).unwrap_err();
        assert_eq!(err.line, Some(3), "{err:?}");
        assert!(err.message.contains("a tab in indentation"), "{err:?}");
    }

    #[test]
    fn multi_document_yaml_keeps_empty_documents_in_place() {
        let docs = parse_documents("a: 1\n---\n---\nb: 2\n", false).unwrap();
        assert_eq!(docs.len(), 3);
        assert_eq!(docs[2]["b"], 2);
    }

    #[test]
    fn json_duplicate_key_is_an_error_naming_the_key_and_its_line() {
        let err = parse_documents(
            "{\n\"metadata\": {\n  \"name\": \"a\",\n  \"name\": \"b\"\n}\n}\n",
            true,
        )
        .unwrap_err();
        assert_eq!(err.line, Some(4), "{err:?}");
        assert!(err.message.contains("duplicate key `name`"), "{err:?}");
    }

    #[test]
    fn json_values_read_as_serde_json_reads_them() {
        let text = r#"{"a": [1, -2, 3.5, "x", true, null, {"b": {}}], "c": 18446744073709551615}"#;
        let expected: Value = serde_json::from_str(text).unwrap();
        assert_eq!(parse_documents(text, true).unwrap(), vec![expected]);
    }

    /// What reading into `serde_yaml::Value` then folding into JSON gives (the reader of
    /// before), for comparison.
    fn through_serde_yaml_value(text: &str) -> Result<Vec<Value>, String> {
        fn fold(value: serde_yaml::Value) -> Value {
            match value {
                serde_yaml::Value::Null => Value::Null,
                serde_yaml::Value::Bool(b) => Value::Bool(b),
                serde_yaml::Value::Number(n) => {
                    if let Some(i) = n.as_i64() {
                        Value::from(i)
                    } else if let Some(u) = n.as_u64() {
                        Value::from(u)
                    } else {
                        n.as_f64().map(Value::from).unwrap_or(Value::Null)
                    }
                }
                serde_yaml::Value::String(s) => Value::String(s),
                serde_yaml::Value::Sequence(items) => {
                    Value::Array(items.into_iter().map(fold).collect())
                }
                serde_yaml::Value::Mapping(map) => Value::Object(
                    map.into_iter()
                        .map(|(k, v)| {
                            let key = match k {
                                serde_yaml::Value::String(s) => s,
                                other => serde_yaml::to_string(&other)
                                    .unwrap_or_default()
                                    .trim_end()
                                    .to_string(),
                            };
                            (key, fold(v))
                        })
                        .collect(),
                ),
                serde_yaml::Value::Tagged(tagged) => fold(tagged.value),
            }
        }
        serde_yaml::Deserializer::from_str(text)
            .map(|d| {
                serde_yaml::Value::deserialize(d)
                    .map(fold)
                    .map_err(|e| e.to_string())
            })
            .collect()
    }

    #[test]
    fn yaml_reads_as_serde_yaml_value_folded_into_json() {
        for text in [
            "a: 1\nb: [x, 2.5, -3, 18446744073709551615, .inf, .nan, ~, true, 'q']\n",
            "80: a\ntrue: b\n~: c\n1.5: d\n[1, 2]: e\n{k: v}: f\n\"1\": g\n",
            "a: !custom {b: !!str 80, c: !x [1]}\nd: !!binary aGVsbG8=\n",
            "a: &x {b: 1}\nc: *x\n---\n---\nd: |\n  text\n",
            "a: 1\na: 2\n",
            "m:\n  1: a\n  1: b\n",
            "m: {true: a, true: b}\n",
            "m: {~: a, null: b}\n",
            "a: [1,\n",
            "a: 0x1F\nb: 0o17\nc: +12\nd: 1e3\ne: 012\n",
        ] {
            let ours = parse_documents(text, false).map_err(|e| (e.line, e.message));
            let theirs = through_serde_yaml_value(text);
            match (&ours, &theirs) {
                (Ok(ours), Ok(theirs)) => assert_eq!(ours, theirs, "{text:?}"),
                (Err((line, ours)), Err(theirs)) => {
                    assert!(line.is_some(), "{text:?}");
                    assert_eq!(ours, &strip_location(theirs), "{text:?}");
                }
                _ => panic!("{text:?}: {ours:?} but serde_yaml::Value: {theirs:?}"),
            }
        }
    }

    #[test]
    fn a_duplicate_yaml_key_is_refused_on_the_line_of_its_mapping() {
        let err = parse_documents("a: 1\nm:\n  x: 1\n  y: 2\n  x: 3\n", false).unwrap_err();
        assert_eq!(err.line, Some(3), "{err:?}");
        assert_eq!(err.message, "m: duplicate entry with key \"x\"");
    }

    #[test]
    fn json_syntax_error_reports_its_line() {
        let err = parse_documents("{\n\"a\": 1,\n}\n", true).unwrap_err();
        assert_eq!(err.line, Some(3));
    }
}
