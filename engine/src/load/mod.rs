//! Reading the services directory: files in, objects and diagnostics out.
//!
//! [`read_dir`] is the only I/O here; [`parse_file`] is pure and works file by file so one bad
//! file never hides the good ones.

pub mod cache;
mod convert;
pub mod depth;
pub mod fields;
pub mod file;
pub mod positions;
mod scan;
pub mod spec;
pub mod yaml;

use crate::config::InputLimits;
use crate::diagnostics::{Diagnostic, Severity};
use crate::model::{EndpointGroup, Pod, Service};
use std::path::{Path, PathBuf};

/// One input file, its path relative to the services directory (`/`-separated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceFile {
    pub path: String,
    pub text: String,
}

/// An object understood from a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    Service(Service),
    Endpoints(EndpointGroup),
    Pod(Pod),
}

/// What one file yielded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedFile {
    pub path: String,
    pub objects: Vec<Object>,
    pub diagnostics: Vec<Diagnostic>,
}

impl ParsedFile {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read services directory `{path}`")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Whether a path names a file portald reads: `*.yaml`, `*.yml`, `*.json`.
pub fn is_service_file(name: &str) -> bool {
    name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json")
}

/// Hidden entries and Kubernetes ConfigMap volume internals (`..data`, `..2024_...`).
fn is_skipped(name: &str) -> bool {
    name.starts_with('.')
}

/// Reads every service file below `dir`, sorted by path, within the default limits.
pub fn read_dir(dir: &Path) -> Result<(Vec<SourceFile>, Vec<Diagnostic>), LoadError> {
    read_dir_with(dir, &InputLimits::default())
}

/// Reads every service file below `dir`, sorted by path. Unreadable files, files that are
/// not regular (a FIFO, a device, a socket) and files over `limits.max_file_bytes` become
/// diagnostics naming the file.
pub fn read_dir_with(
    dir: &Path,
    limits: &InputLimits,
) -> Result<(Vec<SourceFile>, Vec<Diagnostic>), LoadError> {
    let mut files = Vec::new();
    let mut diagnostics = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    let mut visited = std::collections::BTreeSet::new();
    while let Some(current) = pending.pop() {
        // Symlinked folders (ConfigMap `..data`) are skipped by name; guard loops anyway.
        if let Ok(real) = std::fs::canonicalize(&current) {
            if !visited.insert(real) {
                continue;
            }
        }
        let entries = std::fs::read_dir(&current).map_err(|source| LoadError::Dir {
            path: current.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_skipped(&name) {
                continue;
            }
            let path = entry.path();
            let relative = relative_path(dir, &path);
            // `metadata` follows symlinks: a ConfigMap's `svc.yaml -> ..data/svc.yaml` is read.
            match std::fs::metadata(&path) {
                Ok(meta) if meta.is_dir() => pending.push(path),
                Ok(_) if is_service_file(&name) => {
                    match file::read_limited(&path, limits.max_file_bytes) {
                        Ok(bytes) => match String::from_utf8(bytes) {
                            Ok(text) => files.push(SourceFile {
                                path: relative,
                                text,
                            }),
                            Err(_) => {
                                diagnostics.push(file_error(&relative, "file is not UTF-8 text"))
                            }
                        },
                        Err(e @ file::ReadError::Io(_)) => {
                            diagnostics.push(file_error(&relative, &e.to_string()))
                        }
                        Err(e) => diagnostics.push(file_error(&relative, &format!("{e}: skipped"))),
                    }
                }
                Ok(_) => {}
                // A dangling link mid-swap is reported, not fatal; the watcher will come back.
                Err(e) => {
                    diagnostics.push(file_error(&relative, &format!("cannot read file: {e}")))
                }
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    diagnostics.sort();
    Ok((files, diagnostics))
}

fn relative_path(dir: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(dir).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy())
        .collect::<Vec<_>>()
        .join("/")
}

fn file_error(path: &str, message: &str) -> Diagnostic {
    Diagnostic {
        file: path.to_string(),
        line: None,
        severity: Severity::Error,
        object: None,
        field: None,
        message: message.to_string(),
    }
}

/// Parses one file into objects and diagnostics, within the default limits. Pure.
pub fn parse_file(file: &SourceFile) -> ParsedFile {
    parse_file_limited(file, &InputLimits::default())
}

/// Parses one file into objects and diagnostics; a file nested deeper than
/// `limits.max_nesting_depth` is one error, found before any parser sees it. Pure.
pub fn parse_file_limited(file: &SourceFile, limits: &InputLimits) -> ParsedFile {
    if let Err(e) = depth::check_nesting(&file.text, limits.max_nesting_depth) {
        return ParsedFile {
            path: file.path.clone(),
            objects: Vec::new(),
            diagnostics: vec![Diagnostic {
                line: Some(e.line),
                message: format!(
                    "nested deeper than {} levels (`--max-nesting-depth`): not parsed",
                    e.limit
                ),
                ..file_error(&file.path, "")
            }],
        };
    }
    parse_file_with(file, Shortcuts::On)
}

/// Whether [`parse_file`] takes its shortcut (the line scan for where objects start, see
/// [`positions::document_lines`]); off, every line comes from the full line index, which the
/// tests compare with.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shortcuts {
    On,
    #[cfg_attr(not(test), allow(dead_code))]
    Off,
}

fn parse_file_with(file: &SourceFile, shortcuts: Shortcuts) -> ParsedFile {
    // A UTF-8 byte-order mark (editors on Windows write one) is no content: YAML allows it
    // at the start of a stream (YAML 1.2 §5.2) and RFC 8259 §8.1 lets a JSON parser ignore
    // it. Dropped here, every reader and line count below sees the same text.
    let unmarked;
    let file = match file.text.strip_prefix('\u{feff}') {
        Some(text) => {
            unmarked = SourceFile {
                path: file.path.clone(),
                text: text.to_string(),
            };
            &unmarked
        }
        None => file,
    };
    let json = file.path.ends_with(".json");
    let mut parsed = ParsedFile {
        path: file.path.clone(),
        objects: Vec::new(),
        diagnostics: Vec::new(),
    };
    match yaml::parse_documents(&file.text, json) {
        Err(e) => parsed.diagnostics.push(Diagnostic {
            file: file.path.clone(),
            line: e.line,
            severity: Severity::Error,
            object: None,
            field: None,
            message: format!(
                "malformed {}: {}",
                if json { "JSON" } else { "YAML" },
                e.message
            ),
        }),
        Ok(docs) => {
            let documents = (shortcuts == Shortcuts::On).then_some(docs.len());
            let mut ctx = convert::FileCtx::new(file, json, documents);
            for (index, doc) in docs.iter().enumerate() {
                ctx.document(index, doc, &mut parsed.objects);
            }
            parsed.diagnostics = ctx.into_diagnostics();
        }
    }
    parsed.diagnostics.sort();
    parsed
}

/// Parses files on every core, within the default limits.
pub fn parse_all(files: &[SourceFile]) -> Vec<ParsedFile> {
    parse_all_with(files, &InputLimits::default())
}

/// Parses files on every core; files are independent, and the result keeps their order.
///
/// std's scoped threads, one per core, each taking the next file not yet taken: files differ
/// in size, so a shared counter keeps every core busy to the end where fixed shares would
/// not, and no thread pool crate is needed for one loop.
pub fn parse_all_with(files: &[SourceFile], limits: &InputLimits) -> Vec<ParsedFile> {
    let parse_file = |file| parse_file_limited(file, limits);
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(files.len());
    if workers < 2 {
        return files.iter().map(parse_file).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut parsed: Vec<(usize, ParsedFile)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                scope.spawn(|| {
                    let mut done = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(file) = files.get(i) else { break };
                        done.push((i, parse_file(file)));
                    }
                    done
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("parsing a file panicked"))
            .collect()
    });
    parsed.sort_by_key(|(i, _)| *i);
    parsed.into_iter().map(|(_, file)| file).collect()
}

/// Reads and parses a whole directory within the default limits.
pub fn load_dir(dir: &Path) -> Result<Vec<ParsedFile>, LoadError> {
    load_dir_with(dir, &InputLimits::default())
}

/// Reads and parses a whole directory; a file past `limits` is an error of its own.
pub fn load_dir_with(dir: &Path, limits: &InputLimits) -> Result<Vec<ParsedFile>, LoadError> {
    let (files, read_errors) = read_dir_with(dir, limits)?;
    Ok(parse_read(parse_all_with(&files, limits), read_errors))
}

/// Reads and parses a whole directory, and digests what was read (see [`digest_files`]):
/// the digest and the objects come from the very same read.
pub fn load_dir_digest(
    dir: &Path,
    limits: &InputLimits,
) -> Result<(Vec<ParsedFile>, String), LoadError> {
    let (files, read_errors) = read_dir_with(dir, limits)?;
    let digest = digest_files(&files, &read_errors);
    Ok((
        parse_read(parse_all_with(&files, limits), read_errors),
        digest,
    ))
}

/// SHA-256 (lower-case hex) over the files of a services directory as [`read_dir`] read
/// them: each file's path and text in path order, each length-prefixed so no two different
/// directories give the same bytes, then each unreadable file's path and problem.
pub fn digest_files(files: &[SourceFile], read_errors: &[Diagnostic]) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    let mut field = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    };
    let mut sorted: Vec<&SourceFile> = files.iter().collect();
    sorted.sort_by(|a, b| a.path.cmp(&b.path));
    for file in sorted {
        field(b"file");
        field(file.path.as_bytes());
        field(file.text.as_bytes());
    }
    for error in read_errors {
        field(b"unreadable");
        field(error.file.as_bytes());
        field(error.message.as_bytes());
    }
    hex(&hash.finalize())
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The parsed files and one entry per file that could not be read, in path order.
fn parse_read(mut parsed: Vec<ParsedFile>, read_errors: Vec<Diagnostic>) -> Vec<ParsedFile> {
    for diagnostic in read_errors {
        parsed.push(ParsedFile {
            path: diagnostic.file.clone(),
            objects: Vec::new(),
            diagnostics: vec![diagnostic],
        });
    }
    parsed.sort_by(|a, b| a.path.cmp(&b.path));
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for path in entries.flatten().map(|e| e.path()) {
            if path.is_dir() {
                walk(&path, out);
            } else if is_service_file(&path.to_string_lossy()) {
                out.push(path);
            }
        }
    }

    /// The shortcut changes nothing: same objects, same diagnostics with the same lines, on
    /// the fixtures, the examples, the corpus, and small edits of them (a line deleted, its
    /// indentation changed, a bad port or name put on it).
    #[test]
    fn shortcuts_give_what_the_general_way_gives() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut paths = Vec::new();
        for dir in ["fixtures", "examples"] {
            walk(&root.join(dir), &mut paths);
        }
        paths.sort();
        assert!(paths.len() > 20, "fixtures not found");
        let mut files = Vec::new();
        for path in &paths {
            let Ok(text) = std::fs::read_to_string(path) else {
                continue;
            };
            let path = path.to_string_lossy().into_owned();
            let lines: Vec<&str> = text.split('\n').collect();
            // Twenty places per file keep the test quick in a debug build.
            for i in (0..lines.len()).step_by(lines.len().div_ceil(20)) {
                let edit = |line: String| {
                    let mut edited = lines.clone();
                    edited[i] = &line;
                    edited.join("\n")
                };
                let mut without = lines.clone();
                without.remove(i);
                files.push(without.join("\n"));
                files.push(edit(format!(" {}", lines[i])));
                files.push(edit(lines[i].replacen(": ", ": 99999", 1)));
                files.push(edit(lines[i].replacen(": ", ": X_", 1)));
            }
            files.push(text);
            for text in files.drain(..) {
                let file = SourceFile {
                    path: path.clone(),
                    text,
                };
                assert_eq!(
                    parse_file_with(&file, Shortcuts::On),
                    parse_file_with(&file, Shortcuts::Off),
                    "{}",
                    file.text
                );
            }
        }
    }

    fn service_names(parsed: &ParsedFile) -> Vec<String> {
        parsed
            .objects
            .iter()
            .filter_map(|o| match o {
                Object::Service(s) => Some(s.key.name.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_leading_byte_order_mark_is_accepted_in_yaml_and_json() {
        let yaml = SourceFile {
            path: "web.yaml".into(),
            text: "\u{feff}apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  ports:\n  - port: 80\n    protocol: TCPX\n".into(),
        };
        let json = SourceFile {
            path: "api.json".into(),
            text: "\u{feff}{\"apiVersion\": \"v1\", \"kind\": \"Service\",\n \"metadata\": {\"name\": \"api\"},\n \"spec\": {\"ports\": [{\"port\": 80}]}}\n".into(),
        };
        let parsed = parse_file(&json);
        assert!(!parsed.has_errors(), "{:?}", parsed.diagnostics);
        assert_eq!(service_names(&parsed), ["api"]);
        // The bad protocol on line 8 is still reported on line 8: the mark moves no line.
        let parsed = parse_file(&yaml);
        let lines: Vec<_> = parsed
            .diagnostics
            .iter()
            .map(|d| (d.line, d.message.contains("malformed")))
            .collect();
        assert_eq!(lines, [(Some(8), false)], "{:?}", parsed.diagnostics);
        let fixed = SourceFile {
            text: yaml.text.replace("TCPX", "TCP"),
            ..yaml
        };
        let parsed = parse_file(&fixed);
        assert!(!parsed.has_errors(), "{:?}", parsed.diagnostics);
        assert_eq!(service_names(&parsed), ["web"]);
    }

    #[test]
    fn a_duplicate_key_in_a_json_object_is_an_error_naming_file_line_and_key() {
        let file = SourceFile {
            path: "sub/web.json".into(),
            text: "{\n  \"apiVersion\": \"v1\",\n  \"kind\": \"Service\",\n  \"metadata\": {\"name\": \"web\"},\n  \"spec\": {\"ports\": [{\"port\": 80}]},\n  \"kind\": \"Pod\"\n}\n".into(),
        };
        let parsed = parse_file(&file);
        assert_eq!(parsed.diagnostics.len(), 1, "{:?}", parsed.diagnostics);
        let d = &parsed.diagnostics[0];
        assert!(d.is_error());
        assert_eq!(d.file, "sub/web.json");
        assert_eq!(d.line, Some(6));
        assert!(d.message.contains("duplicate key `kind`"), "{d}");
        assert!(parsed.objects.is_empty());
    }

    #[test]
    fn configmap_volume_layout_loads_each_file_once_and_follows_a_swap() {
        let dir = std::env::temp_dir().join(format!("portald-cm-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let service = |name: &str| {
            format!("apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec:\n  ports: [{{port: 80}}]\n")
        };
        // The kubelet's layout: `..<timestamp>/` holds the data, `..data` points at it and
        // each key is a symlink through `..data`.
        std::fs::create_dir_all(dir.join("..2026_11_27_1")).unwrap();
        std::fs::write(dir.join("..2026_11_27_1/svc.yaml"), service("first")).unwrap();
        std::os::unix::fs::symlink("..2026_11_27_1", dir.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/svc.yaml", dir.join("svc.yaml")).unwrap();
        let names = |dir: &Path| -> Vec<String> {
            load_dir(dir)
                .unwrap()
                .iter()
                .flat_map(|f| f.objects.clone())
                .filter_map(|o| match o {
                    Object::Service(s) => Some(s.key.name),
                    _ => None,
                })
                .collect()
        };
        assert_eq!(names(&dir), ["first"]);
        // An update: new timestamped folder, then `..data` swapped by rename.
        std::fs::create_dir_all(dir.join("..2026_11_27_2")).unwrap();
        std::fs::write(dir.join("..2026_11_27_2/svc.yaml"), service("second")).unwrap();
        std::os::unix::fs::symlink("..2026_11_27_2", dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
        assert_eq!(names(&dir), ["second"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
