//! Real-world manifests (`fixtures/corpus/`, vendored with their licence) all load:
//! no error diagnostic in any file, other kinds only noted.

use engine::load::{is_service_file, parse_file, Object, SourceFile};
use std::path::{Path, PathBuf};

/// Services the corpus holds today; a loader change that drops some must be noticed.
const EXPECTED_SERVICES: usize = 60;

fn corpus_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/corpus");
    assert!(
        dir.is_dir(),
        "the vendored corpus {} is missing",
        dir.display()
    );
    dir
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            walk(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn every_corpus_file_loads_without_an_error_and_yields_the_known_services() {
    let root = corpus_dir();
    let mut paths = Vec::new();
    walk(&root, &mut paths);
    let mut problems = Vec::new();
    let mut files = 0;
    let mut services = 0;
    for path in &paths {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        if !is_service_file(&name) {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("{} is not readable text: {e}", path.display()));
        let relative = path.strip_prefix(&root).unwrap_or(path);
        let parsed = parse_file(&SourceFile {
            path: relative.to_string_lossy().into_owned(),
            text,
        });
        for d in parsed.diagnostics.iter().filter(|d| d.is_error()) {
            problems.push(d.to_string());
        }
        services += parsed
            .objects
            .iter()
            .filter(|o| matches!(o, Object::Service(_)))
            .count();
    }
    assert!(
        files >= 60,
        "only {files} manifest files under {}",
        root.display()
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert_eq!(
        services, EXPECTED_SERVICES,
        "services loaded from {files} corpus files"
    );
}
