//! Finds the line of a field in a YAML or JSON document, so diagnostics can point at it.
//!
//! Built only when a file has something to report: the happy path never pays for it.

use std::collections::BTreeMap;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// Line (1-based) of every path in every document of one file, such as `spec.ports[1].port`.
#[derive(Debug, Default)]
pub struct Positions {
    docs: Vec<BTreeMap<String, usize>>,
}

impl Positions {
    /// Indexes `text`; a text the YAML parser rejects yields what was read before the error.
    pub fn index(text: &str) -> Self {
        let mut indexer = Indexer::default();
        let mut parser = Parser::new_from_str(text);
        let _ = parser.load(&mut indexer, true);
        Positions { docs: indexer.docs }
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

enum Frame {
    Map { key: Option<String> },
    Seq { index: usize },
}

#[derive(Default)]
struct Indexer {
    docs: Vec<BTreeMap<String, usize>>,
    stack: Vec<Frame>,
}

impl Indexer {
    fn path(&self) -> String {
        let mut path = String::new();
        for frame in &self.stack {
            match frame {
                Frame::Map { key: Some(key) } => {
                    if !path.is_empty() {
                        path.push('.');
                    }
                    path.push_str(key);
                }
                Frame::Map { key: None } => {}
                Frame::Seq { index } => {
                    path.push_str(&format!("[{index}]"));
                }
            }
        }
        path
    }

    fn record(&mut self, line: usize) {
        let path = self.path();
        if let Some(doc) = self.docs.last_mut() {
            doc.entry(path).or_insert(line);
        }
    }

    /// A value (scalar, alias or closed collection) just ended: move the parent along.
    fn value_done(&mut self) {
        match self.stack.last_mut() {
            Some(Frame::Map { key }) => *key = None,
            Some(Frame::Seq { index }) => *index += 1,
            None => {}
        }
    }

    fn expecting_key(&self) -> bool {
        matches!(self.stack.last(), Some(Frame::Map { key: None }))
    }
}

impl MarkedEventReceiver for Indexer {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let line = mark.line();
        match event {
            Event::DocumentStart => {
                self.docs.push(BTreeMap::new());
                self.stack.clear();
                self.record(line);
            }
            Event::Scalar(value, ..) => {
                if self.expecting_key() {
                    if let Some(Frame::Map { key }) = self.stack.last_mut() {
                        *key = Some(value);
                    }
                    self.record(line);
                } else {
                    self.record(line);
                    self.value_done();
                }
            }
            Event::Alias(_) => {
                self.record(line);
                self.value_done();
            }
            Event::MappingStart(..) => {
                if self.expecting_key() {
                    // A complex key (`? {a: b}`): index it under a placeholder name.
                    if let Some(Frame::Map { key }) = self.stack.last_mut() {
                        *key = Some("?".into());
                    }
                }
                self.record(line);
                self.stack.push(Frame::Map { key: None });
            }
            Event::SequenceStart(..) => {
                self.record(line);
                self.stack.push(Frame::Seq { index: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
                self.value_done();
            }
            _ => {}
        }
    }
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

    #[test]
    fn finds_lines_in_json() {
        let text = "{\n  \"id\": \"apache\",\n  \"port\": 12345\n}\n";
        let p = Positions::index(text);
        assert_eq!(p.line(0, "port"), Some(3));
    }
}
