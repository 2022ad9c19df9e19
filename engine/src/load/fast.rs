//! A fast reader for the plain block YAML that service files are mostly written in.
//!
//! `kubectl get -o yaml` and hand-written manifests use a small part of YAML: block mappings
//! and sequences indented with spaces, plain or quoted one-line scalars, comments. This reads
//! that part directly into the values [`super::yaml::parse_documents`] gives, about ten times
//! faster than the general parser. Anything else (flow collections, block scalars, anchors,
//! tags, multi-line scalars, tabs, non-ASCII text, odd indentation, duplicate keys, ...) makes
//! it give up with `None`, and the caller parses the text with the general parser: the result,
//! errors included, is then the general parser's. When it answers, it answers exactly what the
//! general parser would (the tests compare the two on the fixtures, the corpus and mutations
//! of them).
//!
//! Plain scalars are resolved with serde_yaml 0.9's rules (`null`, `true`, integers in bases
//! 10, 16, 8 and 2, floats), ported from its `de.rs`.

use serde_json::{Map, Value};
use std::num::ParseIntError;

/// Deeper nesting is left to the general parser (which has a recursion limit of its own).
const MAX_DEPTH: usize = 48;
/// The general parser refuses implicit keys longer than 1024 characters.
const MAX_KEY: usize = 256;

/// The documents of a YAML text, or `None` when the text is not in the part this reads.
pub fn parse_documents(text: &str) -> Option<Vec<Value>> {
    // Tabs, carriage returns, control characters and non-ASCII text: the general parser.
    if text.bytes().any(|b| b >= 0x7f || (b < 0x20 && b != b'\n')) {
        return None;
    }
    let mut documents: Vec<Vec<Line>> = Vec::new();
    let mut current: Option<Vec<Line>> = None;
    for raw in text.split('\n') {
        let bytes = raw.as_bytes();
        if bytes.starts_with(b"---") && matches!(bytes.get(3), None | Some(b' ')) {
            let rest = raw[3..].trim_start_matches(' ');
            if !(rest.is_empty() || rest.starts_with('#')) {
                return None;
            }
            if let Some(lines) = current.take() {
                documents.push(lines);
            }
            current = Some(Vec::new());
            continue;
        }
        if bytes.starts_with(b"...") || bytes.first() == Some(&b'%') {
            return None;
        }
        let content = raw.trim_start_matches(' ');
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        current.get_or_insert_with(Vec::new).push(Line {
            indent: raw.len() - content.len(),
            text: content.trim_end_matches(' '),
        });
    }
    if let Some(lines) = current {
        documents.push(lines);
    }
    if documents.is_empty() {
        // An empty stream is one empty document.
        return Some(vec![Value::Null]);
    }
    documents
        .into_iter()
        .map(|lines| {
            let Some(first) = lines.first() else {
                return Some(Value::Null);
            };
            let indent = first.indent;
            let mut reader = Reader {
                lines,
                pos: 0,
                depth: 0,
            };
            let value = reader.mapping(indent)?;
            (reader.pos == reader.lines.len()).then_some(value)
        })
        .collect()
}

/// A line with content: its indentation and its text without the indentation.
struct Line<'a> {
    indent: usize,
    text: &'a str,
}

struct Reader<'a> {
    lines: Vec<Line<'a>>,
    pos: usize,
    depth: usize,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<&Line<'a>> {
        self.lines.get(self.pos)
    }

    /// A block mapping whose keys are at `indent`, from the current line on.
    fn mapping(&mut self, indent: usize) -> Option<Value> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return None;
        }
        let mut map = Map::new();
        while let Some(line) = self.peek() {
            if line.indent < indent {
                break;
            }
            if line.indent > indent || is_item(line.text) {
                return None;
            }
            let (key, rest) = split_key(line.text)?;
            self.pos += 1;
            let value = self.value_after_key(rest, indent)?;
            // A repeated key is an error for the general parser.
            match map.entry(key) {
                serde_json::map::Entry::Vacant(slot) => {
                    slot.insert(value);
                }
                serde_json::map::Entry::Occupied(_) => return None,
            }
        }
        self.depth -= 1;
        Some(Value::Object(map))
    }

    /// The value of a key at `indent`: on the same line (`rest`), or on the lines below.
    fn value_after_key(&mut self, rest: &'a str, indent: usize) -> Option<Value> {
        let rest = rest.trim_start_matches(' ');
        if !rest.is_empty() && !rest.starts_with('#') {
            let value = scalar(rest)?;
            // A more indented line after a one-line value would continue it: not read here.
            return match self.peek() {
                Some(next) if next.indent > indent => None,
                _ => Some(value),
            };
        }
        match self.peek() {
            Some(next) if next.indent > indent => {
                let inner = next.indent;
                if is_item(next.text) {
                    self.sequence(inner, false)
                } else {
                    self.mapping(inner)
                }
            }
            // `ports:` followed by `- ...` at the key's own indentation.
            Some(next) if next.indent == indent && is_item(next.text) => {
                self.sequence(indent, true)
            }
            _ => Some(Value::Null),
        }
    }

    /// A block sequence whose `-` are at `indent`; `compact` when it is the value of a key at
    /// the same indentation, so that the next key ends it.
    fn sequence(&mut self, indent: usize, compact: bool) -> Option<Value> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return None;
        }
        let mut items = Vec::new();
        while let Some(line) = self.peek() {
            if line.indent < indent {
                break;
            }
            if line.indent > indent {
                return None;
            }
            if !is_item(line.text) {
                if compact {
                    break;
                }
                return None;
            }
            let after = &line.text[1..];
            let item = after.trim_start_matches(' ');
            // `-` alone, `- - x`, `- # comment`: the general parser.
            if item.is_empty() || item.starts_with('#') || is_item(item) {
                return None;
            }
            let column = indent + 1 + (after.len() - item.len());
            if split_key(item).is_some() {
                // `- key: value`: a mapping whose keys are at the column of `key`.
                self.lines[self.pos] = Line {
                    indent: column,
                    text: item,
                };
                items.push(self.mapping(column)?);
            } else {
                // A plain scalar with `: ` in it would be a key: `split_key` refused it.
                if has_value_indicator(item) {
                    return None;
                }
                let value = scalar(item)?;
                self.pos += 1;
                if self.peek().is_some_and(|next| next.indent > indent) {
                    return None;
                }
                items.push(value);
            }
        }
        self.depth -= 1;
        Some(Value::Array(items))
    }
}

/// A sequence entry: `-` followed by a space or nothing.
fn is_item(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.first() == Some(&b'-') && matches!(bytes.get(1), None | Some(b' '))
}

/// `: ` or a final `:` outside quotes, the mark of a key.
fn has_value_indicator(text: &str) -> bool {
    text.contains(": ") || text.ends_with(':')
}

/// `key: rest` with a simple key (plain letters, digits, `-._/`, or double-quoted without
/// escapes), or `None`.
fn split_key(text: &str) -> Option<(String, &str)> {
    let (key, after) = if let Some(quoted) = text.strip_prefix('"') {
        let end = quoted.find(['"', '\\'])?;
        if quoted.as_bytes()[end] != b'"' {
            return None;
        }
        (&quoted[..end], &quoted[end + 1..])
    } else {
        let end = text.find(':')?;
        let key = &text[..end];
        let plain = key.as_bytes().first().is_some_and(u8::is_ascii_alphabetic)
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'/'));
        // Plain keys that resolve to something other than a string (`null`, `true`, ...).
        if !plain || parse_null(key.as_bytes()).is_some() || parse_bool(key).is_some() {
            return None;
        }
        (key, &text[end..])
    };
    let rest = after.strip_prefix(':')?;
    if !(rest.is_empty() || rest.starts_with(' ')) || key.len() > MAX_KEY {
        return None;
    }
    Some((key.to_string(), rest))
}

/// A one-line scalar in a value position, with any trailing comment.
fn scalar(text: &str) -> Option<Value> {
    let first = *text.as_bytes().first()?;
    match first {
        b'"' => {
            let body = &text[1..];
            let end = body.find(['"', '\\'])?;
            if body.as_bytes()[end] != b'"' {
                return None;
            }
            only_comment(&body[end + 1..])?;
            Some(Value::String(body[..end].to_string()))
        }
        b'\'' => {
            let mut out = String::new();
            let mut rest = &text[1..];
            loop {
                let end = rest.find('\'')?;
                out.push_str(&rest[..end]);
                rest = &rest[end + 1..];
                match rest.strip_prefix('\'') {
                    Some(after) => {
                        out.push('\'');
                        rest = after;
                    }
                    None => break,
                }
            }
            only_comment(rest)?;
            Some(Value::String(out))
        }
        b'{' | b'[' => {
            let (empty, rest) = (&text[..2.min(text.len())], &text[2.min(text.len())..]);
            only_comment(rest)?;
            match empty {
                "{}" => Some(Value::Object(Map::new())),
                "[]" => Some(Value::Array(Vec::new())),
                _ => None,
            }
        }
        b'?' | b':' | b',' | b']' | b'}' | b'#' | b'&' | b'*' | b'!' | b'|' | b'>' | b'%'
        | b'@' | b'`' => None,
        b'-' if matches!(text.as_bytes().get(1), None | Some(b' ')) => None,
        _ => {
            let plain = match text.find(" #") {
                Some(cut) => text[..cut].trim_end_matches(' '),
                None => text,
            };
            if has_value_indicator(plain) {
                return None;
            }
            resolve_plain(plain)
        }
    }
}

/// What may follow a quoted scalar on its line: spaces, then a comment.
fn only_comment(rest: &str) -> Option<()> {
    let trimmed = rest.trim_start_matches(' ');
    (trimmed.is_empty() || (trimmed.starts_with('#') && trimmed.len() < rest.len())).then_some(())
}

/// A plain scalar as serde_yaml's `visit_untagged_scalar` sees it, turned into the value
/// `serde_yaml::Value` then [`super::yaml`]'s conversion would give; `None` for the integers
/// beyond 64 bits that it does not convert.
fn resolve_plain(v: &str) -> Option<Value> {
    if v.is_empty() || parse_null(v.as_bytes()).is_some() {
        return Some(Value::Null);
    }
    if let Some(boolean) = parse_bool(v) {
        return Some(Value::Bool(boolean));
    }
    if let Some(int) = parse_unsigned_int(v, u64::from_str_radix) {
        return Some(Value::from(int));
    }
    if let Some(int) = parse_negative_int(v, i64::from_str_radix) {
        return Some(Value::from(int));
    }
    if parse_unsigned_int(v, u128::from_str_radix).is_some()
        || parse_negative_int(v, i128::from_str_radix).is_some()
    {
        return None;
    }
    if !digits_but_not_number(v) {
        if let Some(float) = parse_f64(v) {
            return Some(Value::from(float));
        }
    }
    Some(Value::String(v.to_string()))
}

// The rest is serde_yaml 0.9.34's scalar resolution (`de.rs`, MIT OR Apache-2.0), unchanged.

fn parse_null(scalar: &[u8]) -> Option<()> {
    match scalar {
        b"null" | b"Null" | b"NULL" | b"~" => Some(()),
        _ => None,
    }
}

fn parse_bool(scalar: &str) -> Option<bool> {
    match scalar {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

fn parse_unsigned_int<T>(
    scalar: &str,
    from_str_radix: fn(&str, radix: u32) -> Result<T, ParseIntError>,
) -> Option<T> {
    let unpositive = scalar.strip_prefix('+').unwrap_or(scalar);
    if let Some(rest) = unpositive.strip_prefix("0x") {
        if rest.starts_with(['+', '-']) {
            return None;
        }
        if let Ok(int) = from_str_radix(rest, 16) {
            return Some(int);
        }
    }
    if let Some(rest) = unpositive.strip_prefix("0o") {
        if rest.starts_with(['+', '-']) {
            return None;
        }
        if let Ok(int) = from_str_radix(rest, 8) {
            return Some(int);
        }
    }
    if let Some(rest) = unpositive.strip_prefix("0b") {
        if rest.starts_with(['+', '-']) {
            return None;
        }
        if let Ok(int) = from_str_radix(rest, 2) {
            return Some(int);
        }
    }
    if unpositive.starts_with(['+', '-']) {
        return None;
    }
    if digits_but_not_number(scalar) {
        return None;
    }
    from_str_radix(unpositive, 10).ok()
}

fn parse_negative_int<T>(
    scalar: &str,
    from_str_radix: fn(&str, radix: u32) -> Result<T, ParseIntError>,
) -> Option<T> {
    if let Some(rest) = scalar.strip_prefix("-0x") {
        let negative = format!("-{}", rest);
        if let Ok(int) = from_str_radix(&negative, 16) {
            return Some(int);
        }
    }
    if let Some(rest) = scalar.strip_prefix("-0o") {
        let negative = format!("-{}", rest);
        if let Ok(int) = from_str_radix(&negative, 8) {
            return Some(int);
        }
    }
    if let Some(rest) = scalar.strip_prefix("-0b") {
        let negative = format!("-{}", rest);
        if let Ok(int) = from_str_radix(&negative, 2) {
            return Some(int);
        }
    }
    if digits_but_not_number(scalar) {
        return None;
    }
    from_str_radix(scalar, 10).ok()
}

fn parse_f64(scalar: &str) -> Option<f64> {
    let unpositive = if let Some(unpositive) = scalar.strip_prefix('+') {
        if unpositive.starts_with(['+', '-']) {
            return None;
        }
        unpositive
    } else {
        scalar
    };
    if let ".inf" | ".Inf" | ".INF" = unpositive {
        return Some(f64::INFINITY);
    }
    if let "-.inf" | "-.Inf" | "-.INF" = scalar {
        return Some(f64::NEG_INFINITY);
    }
    if let ".nan" | ".NaN" | ".NAN" = scalar {
        return Some(f64::NAN.copysign(1.0));
    }
    if let Ok(float) = unpositive.parse::<f64>() {
        if float.is_finite() {
            return Some(float);
        }
    }
    None
}

fn digits_but_not_number(scalar: &str) -> bool {
    // Leading zero(s) followed by numeric characters is a string according to
    // the YAML 1.2 spec. https://yaml.org/spec/1.2/spec.html#id2761292
    let scalar = scalar.strip_prefix(['-', '+']).unwrap_or(scalar);
    scalar.len() > 1 && scalar.starts_with('0') && scalar[1..].bytes().all(|b| b.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::super::yaml::parse_yaml;
    use super::*;
    use std::path::{Path, PathBuf};

    /// Where the fast reader answers, it answers what the general parser does; where the
    /// general parser refuses a text, the fast reader does not answer.
    fn assert_agrees(text: &str) -> bool {
        match (parse_documents(text), parse_yaml(text)) {
            (None, _) => false,
            (Some(fast), Ok(general)) => {
                assert_eq!(fast, general, "values of {text:?}");
                true
            }
            (Some(fast), Err(e)) => {
                panic!("{text:?}: general parser says {e:?}, fast reader says {fast:?}")
            }
        }
    }

    const SERVICE: &str = "\
# a comment
---
apiVersion: v1
kind: Service
metadata:
  name: svc-00001   # trailing comment
  namespace: team-01
  labels:
    app.kubernetes.io/name: svc-00001
  annotations:
    bench.portald.io/generated: \"true\"
    \"quoted/key\": 'it''s'
    empty: \"\"
spec:
  type: ClusterIP
  selector: {}
  ports:
  - name: http
    protocol: TCP
    port: 80
    targetPort: 8080

  -   name: other
      port: 0x1F
      targetPort: -3
  externalIPs: []
  clusterIP: 10.11.0.7
  sessionAffinity: None
  weird: [a, b]x
status:
  loadBalancer:
---
apiVersion: v1
kind: Endpoints
metadata:
  name: svc-00001
subsets:
- addresses:
  - ip: 10.244.0.1
    nodeName: node-0
    targetRef:
      kind: Pod
  - ip: 10.244.0.2
  ports:
  - name: http
    port: 8080
list:
  - 1
  - 1.5
  - 007
  - .inf
  - -.INF
  - .nan
  - ~
  - null
  - True
  - FALSE
  - yes
  - +12
  - -0x1f
  - 0o17
  - 0b101
  - 1e3
  - 340282366920938463463374607431768211456
  - a#b
  - \"x\"   # c
  - text with spaces
  - 'single ''quoted'''
---
---
# only a comment
";

    #[test]
    fn reads_what_service_files_use_as_the_general_parser_does() {
        // The line with `[a, b]x` is valid plain YAML; without it the rest must be read fast.
        let readable = SERVICE.replace("  weird: [a, b]x\n", "");
        assert!(assert_agrees(&readable), "not read fast");
        assert_agrees(SERVICE);
        for text in [
            "",
            "\n",
            "# c\n",
            "a: 1",
            "---\n",
            "a: 1\n---\n",
            "---\n---\n",
            "  a: 1\n  b:\n    - x\n",
            "a:\n- 1\n- 2\nb: 3\n",
            "a:\n  - 1\n  - 2\nb: 3\n",
            "a: -x\nb: x-\nc: /p\nd: $x\ne: x: y\n",
            "a: 'x'#c\n",
            "a: \"x\" #c\n",
            "a:\n  b: 1\n c: 2\n",
            "a:\n  - 1\n  b: 2\n",
            "- a\n",
            "a\n",
            "a: b\n  c\n",
            "a: 1\na: 2\n",
            "a: [1]\n",
            "a: {b: 1}\n",
            "a: |\n  x\n",
            "a: &x 1\nb: *x\n",
            "a: !!str 1\n",
            "--- a: 1\n",
            "a:\n- - 1\n",
            "a:\n-\n  b: 1\n",
            "- b: 1\n  c: 2\n",
            "a:\n  - b: 1\n    c: 2\n  - d\n",
            "a:\n  - b: 1\n     c: 2\n",
            "1: a\n",
            "true: a\n",
            "a : b\n",
            "a:b\n",
            "\"a\": 1\n\"a\": 2\n",
            "a: \"b\\n\"\n",
            "a: \"b\n",
            "a: 'b\n",
            "a: b:\n",
            "a: - b\n",
            "a: -\n",
            "a: ---\n",
            "a: 99999999999999999999\n",
        ] {
            assert_agrees(text);
        }
    }

    fn service_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for path in entries.flatten().map(|e| e.path()) {
            if path.is_dir() {
                service_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
                out.push(path);
            }
        }
    }

    fn sample_texts() -> Vec<String> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut paths = Vec::new();
        service_files(&root.join("fixtures"), &mut paths);
        service_files(&root.join("examples"), &mut paths);
        paths.sort();
        let mut texts: Vec<String> = paths
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .collect();
        texts.push(SERVICE.to_string());
        texts
    }

    #[test]
    fn agrees_with_the_general_parser_on_fixtures_and_corpus() {
        let texts = sample_texts();
        assert!(texts.len() > 10, "fixtures not found");
        let fast = texts.iter().filter(|t| assert_agrees(t)).count();
        // Most real files are in the part read fast.
        assert!(
            fast * 2 > texts.len(),
            "{fast} of {} read fast",
            texts.len()
        );
    }

    #[test]
    fn agrees_with_the_general_parser_on_mutated_files() {
        // Small random edits of real files: every edit the fast reader accepts must mean to the
        // general parser what it means to the fast reader.
        const ALPHABET: &[u8] = b" \n:-#'\"{}[],&*!|>?%@`.0123456789abcxyz\\";
        let texts: Vec<String> = sample_texts()
            .into_iter()
            .filter(|t| t.len() < 4000)
            .collect();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: usize| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n as u64) as usize
        };
        let mut read = 0;
        for _ in 0..6000 {
            let mut bytes = texts[next(texts.len())].clone().into_bytes();
            for _ in 0..1 + next(3) {
                if bytes.is_empty() {
                    break;
                }
                let at = next(bytes.len());
                let c = ALPHABET[next(ALPHABET.len())];
                match next(3) {
                    0 => bytes[at] = c,
                    1 => bytes.insert(at, c),
                    _ => {
                        bytes.remove(at);
                    }
                }
            }
            if let Ok(text) = String::from_utf8(bytes) {
                if assert_agrees(&text) {
                    read += 1;
                }
            }
        }
        assert!(read > 1000, "only {read} mutations read fast");
    }
}
