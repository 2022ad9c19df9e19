//! The one place that knows the YAML and JSON libraries: text in, generic documents out.

use serde::Deserialize;
use serde_json::{Map, Value};

/// A syntax error with the line it was found on (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntaxError {
    pub line: Option<usize>,
    pub message: String,
}

/// Parses every document of a YAML or JSON text. Empty YAML documents come back as `Null` so
/// that document indices match the line index in [`super::positions`].
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
    // Most service files are plain block YAML, which the fast reader reads exactly as the
    // general parser would, and ten times faster; it gives up on anything else.
    if let Some(docs) = super::fast::parse_documents(text) {
        return Ok(docs);
    }
    parse_yaml(text)
}

/// The general YAML parser.
pub(super) fn parse_yaml(text: &str) -> Result<Vec<Value>, SyntaxError> {
    let mut docs = Vec::new();
    for document in serde_yaml::Deserializer::from_str(text) {
        let value = serde_yaml::Value::deserialize(document).map_err(|e| {
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
        docs.push(to_json(value));
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

/// YAML allows keys and tags JSON has not; fold them into plain JSON values.
fn to_json(value: serde_yaml::Value) -> Value {
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
            Value::Array(items.into_iter().map(to_json).collect())
        }
        serde_yaml::Value::Mapping(map) => {
            let mut out = Map::new();
            for (k, v) in map {
                let key = match k {
                    serde_yaml::Value::String(s) => s,
                    other => serde_yaml::to_string(&other)
                        .unwrap_or_default()
                        .trim_end()
                        .to_string(),
                };
                out.insert(key, to_json(v));
            }
            Value::Object(out)
        }
        serde_yaml::Value::Tagged(tagged) => to_json(tagged.value),
    }
}

/// A JSON value whose objects have no key twice. serde_json keeps the last of duplicate keys
/// silently, where YAML makes them an error (YAML 1.2 §3.2.1.1: mapping keys are unique):
/// reading JSON with this makes the two formats agree, and the error carries the line of
/// the second key.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON value")
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
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(Strict(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            // Checked before the value is read, so the error's line is the key's.
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format_args!(
                    "duplicate key `{key}`"
                )));
            }
            let Strict(value) = map.next_value()?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
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

    #[test]
    fn json_syntax_error_reports_its_line() {
        let err = parse_documents("{\n\"a\": 1,\n}\n", true).unwrap_err();
        assert_eq!(err.line, Some(3));
    }
}
