//! The repository stands alone: no tracked file reads from outside it (the real-world corpus
//! the loader tests use is vendored under `fixtures/corpus/` with its licence).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn no_tracked_source_or_script_reads_outside_the_repository() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bin/ has a parent")
        .to_path_buf();
    let out = Command::new("git")
        .args(["ls-files", "-z"])
        .current_dir(&root)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split('\0')
        .filter(|f| !f.is_empty())
        .map(str::to_string)
        .collect();
    assert!(files.len() > 100, "too few tracked files: {}", files.len());
    // Built so that this file does not name the path it looks for.
    let sibling = format!("../{}", "shared");
    let mut offenders = Vec::new();
    for file in &files {
        let code = [".rs", ".sh", ".toml", ".py", ".service", "run"]
            .iter()
            .any(|ext| file.ends_with(ext));
        if !code {
            continue;
        }
        let text = std::fs::read_to_string(root.join(file)).unwrap_or_default();
        if text.contains(&sibling) {
            offenders.push(file.clone());
        }
    }
    assert!(
        offenders.is_empty(),
        "these read outside the repository: {offenders:?}"
    );
    assert!(
        root.join("fixtures/corpus/kubernetes-examples/LICENSE")
            .is_file(),
        "the vendored corpus has lost its licence"
    );
}
