//! Finds the line of a field in a YAML or JSON document, so diagnostics can point at it.
//!
//! serde_yaml reads every file once (see [`super::yaml`]), but its values carry no positions,
//! so lines come from a scan of that same text, made only when they are needed:
//! [`document_lines`], a line scan, gives where each document starts (the line every object
//! carries); [`Positions`] (the scan in [`super::scan`]), built only when a file has a problem to report, an explicit VIP
//! or objects inside a `List`, gives the line of any field. It runs on text serde_yaml has
//! accepted, so it checks nothing: it follows the structure (YAML 1.2 chapters 6 to 9: block
//! and flow collections, plain, quoted and block scalars, comments, anchors, aliases, tags,
//! explicit `?` keys, directives, `---` and `...`, CRLF) with libyaml's token rules (a simple
//! key is known when its `:` is met; a block mapping starts on its first key's line, an item
//! on its first token's), far enough to know the path and line of every key and item. Only
//! keys are decoded (they name the path); other values are skipped.

use std::collections::BTreeMap;

/// Line (1-based) of every path in every document of one file, such as `spec.ports[1].port`.
#[derive(Debug, Default)]
pub struct Positions {
    docs: Vec<BTreeMap<String, usize>>,
}

impl Positions {
    /// Indexes `text`; past anything the scan cannot follow (text that is not YAML), the
    /// index holds what was read before it.
    pub fn index(text: &str) -> Self {
        Positions {
            docs: super::scan::index(text),
        }
    }

    /// The line of `path` in document `doc`, or of its nearest ancestor that has one.
    pub fn line(&self, doc: usize, path: &str) -> Option<usize> {
        let map = self.docs.get(doc)?;
        let mut path = path;
        loop {
            if let Some(line) = map.get(path) {
                return Some(*line);
            }
            if path.is_empty() {
                return None;
            }
            let cut = path.rfind(['.', '[']).unwrap_or(0);
            path = &path[..cut];
        }
    }
}

/// Where each document of a file starts, as [`Positions::line`]`(doc, "")` would say, found
/// without parsing: a `---` line starts a document on that line; a document with no `---`
/// starts on its first line of content. `None` when the text has anything that could make the
/// two disagree (directives, `...`, tabs in indentation, carriage returns, a byte-order mark,
/// a document that opens with a tag, an anchor or a complex key): the caller asks
/// [`Positions`] then.
///
/// For JSON (`json`), only the first document's line: the YAML parser behind [`Positions`]
/// reads no further than one JSON value.
pub fn document_lines(text: &str, json: bool) -> Option<Vec<usize>> {
    if text.starts_with('\u{feff}') || text.contains('\r') {
        return None;
    }
    if json {
        let start = text.find(|c: char| c != ' ' && c != '\n')?;
        if text.as_bytes()[start] != b'{' {
            return None;
        }
        return Some(vec![1 + text[..start].matches('\n').count()]);
    }
    let mut lines = Vec::new();
    let mut in_document = false;
    for (index, line) in text.split('\n').enumerate() {
        let bytes = line.as_bytes();
        let marker =
            |m: &[u8]| bytes.starts_with(m) && matches!(bytes.get(3), None | Some(b' ' | b'\t'));
        if marker(b"---") {
            lines.push(index + 1);
            in_document = true;
            continue;
        }
        if marker(b"...") || bytes.first() == Some(&b'%') {
            return None;
        }
        let content = line.trim_start_matches(' ');
        if content.starts_with('\t') {
            return None;
        }
        if in_document || content.is_empty() || content.starts_with('#') {
            continue;
        }
        // The first content of a document without `---`: a key, a collection or a scalar.
        if matches!(
            content.as_bytes()[0],
            b'&' | b'!' | b'*' | b'?' | b'|' | b'>' | b'@' | b'`'
        ) {
            return None;
        }
        lines.push(index + 1);
        in_document = true;
    }
    Some(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_lines_of_nested_fields_in_yaml() {
        let text = "kind: Service\nmetadata:\n  name: web\nspec:\n  ports:\n  - port: 80\n  - name: b\n    port: 99999\n";
        let p = Positions::index(text);
        assert_eq!(p.line(0, "kind"), Some(1));
        assert_eq!(p.line(0, "metadata.name"), Some(3));
        assert_eq!(p.line(0, "spec.ports[0].port"), Some(6));
        assert_eq!(p.line(0, "spec.ports[1].port"), Some(8));
        assert_eq!(p.line(0, "spec.ports[1].protocol"), Some(7));
    }

    #[test]
    fn counts_documents_of_a_multi_document_file() {
        let text = "kind: A\n---\nkind: B\nspec:\n  x: 1\n";
        let p = Positions::index(text);
        assert_eq!(p.line(1, "spec.x"), Some(5));
    }

    /// The scan must agree with the index wherever it answers.
    fn assert_scan_agrees(text: &str, json: bool) {
        let Some(lines) = document_lines(text, json) else {
            return;
        };
        let p = Positions::index(text);
        if !json {
            assert_eq!(lines.len(), p.docs.len(), "document count of {text:?}");
        }
        for (doc, line) in lines.iter().enumerate() {
            assert_eq!(Some(*line), p.line(doc, ""), "document {doc} of {text:?}");
        }
    }

    #[test]
    fn document_scan_gives_the_index_lines() {
        for text in [
            "a: 1\n",
            "\n\n# c\n  a: 1\n",
            "---\na: 1\n",
            "# c\n---\na: 1\n---\nb: 2\n",
            "a: 1\n---\n---\nb: 2\n",
            "--- {a: 1}\n",
            "---\n\n\n  a: 1\n",
            "a: 1\n---\n",
            "---\n# x\n- a\n",
            "- a\n- b\n",
            "{a: 1,\n b: 2}\n---\n[1]\n",
            "a: |\n  ---x\n  text\n---x: 1\n",
            "\"quoted\": 1\n--- # comment\nb: 2\n",
            "",
            "# only a comment\n",
        ] {
            assert!(document_lines(text, false).is_some(), "{text:?}");
            assert_scan_agrees(text, false);
        }
        for text in [
            "{\"kind\":\"Service\",\"spec\":{\"ports\":[{\"port\":80}]}}\n",
            "\n\n{\n\t\"id\": \"a\",\n\t\"port\": 1\n}\n",
            "  {\"a\": [1,\n2]}",
            "{\"a\": 1}\n{\"b\": 2}\n",
        ] {
            assert!(document_lines(text, true).is_some(), "{text:?}");
            assert_scan_agrees(text, true);
        }
    }

    #[test]
    fn document_scan_gives_up_on_what_it_cannot_be_sure_of() {
        for text in [
            "%YAML 1.2\n---\na: 1\n",
            "a: 1\n...\nb: 2\n",
            "a: 1\r\n",
            "\u{feff}a: 1\n",
            "&anchor\na: 1\n",
            "!tag\na: 1\n",
            "? complex\n: key\n",
            "a:\n\t- 1\n",
        ] {
            assert_eq!(document_lines(text, false), None, "{text:?}");
        }
        assert_eq!(document_lines("[1]", true), None);
        assert_eq!(document_lines("\t{}", true), None);
    }

    #[test]
    fn finds_lines_in_json() {
        let text = "{\n  \"id\": \"apache\",\n  \"port\": 12345\n}\n";
        let p = Positions::index(text);
        assert_eq!(p.line(0, "port"), Some(3));
    }
}
