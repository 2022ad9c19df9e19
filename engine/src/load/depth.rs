//! A cheap scan for how deeply a YAML or JSON text nests, run before any parser sees it.
//!
//! libyaml (behind serde_yaml) reads a whole document into events before serde_yaml's own
//! recursion limit looks at them, and its scanner walks the stack of open flow levels on
//! every token: a 400 KB file of `[[[[...` or `{a: {a: ...` took over a minute. This scan is
//! linear; a text nested deeper than the limit is refused with the line where it got there.
//!
//! Depth counts block collections (indentation levels, and each `- ` of a compact
//! `- - x`) plus open flow collections (`[`, `{`). It follows quoted scalars, comments and
//! block scalars (`|`, `>`) so that brackets in text do not count, and counts a bracket in
//! block context only where a flow collection may start (after `key: `, `- `, at a line's
//! start): what it cannot tell apart it undercounts rather than overcounts, so a valid
//! manifest is never refused for brackets in its prose.

/// Where a text went deeper than the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooDeep {
    /// 1-based line.
    pub line: usize,
    pub limit: usize,
}

/// `Err` at the first line where the nesting exceeds `limit` levels.
pub fn check_nesting(text: &str, limit: usize) -> Result<(), TooDeep> {
    // A byte-order mark is no content (the loader drops it too).
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut blocks: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    let mut quote: Option<u8> = None;
    // The column a block scalar's content must be deeper than.
    let mut block_scalar: Option<usize> = None;
    // 1 while the outermost open flow collection is the node a block level stands for
    // (`- [` or a line that starts with `{`): one level, not two.
    let mut shared = 0usize;
    for (index, line) in text.split('\n').enumerate() {
        let too_deep = |depth: usize| {
            (depth > limit).then_some(TooDeep {
                line: index + 1,
                limit,
            })
        };
        let bytes = line.as_bytes();
        let indent = bytes.iter().take_while(|&&b| b == b' ').count();
        let blank = bytes[indent..].iter().all(|b| b.is_ascii_whitespace());
        if let Some(parent) = block_scalar {
            if blank || indent > parent {
                continue;
            }
            block_scalar = None;
        }
        let mut i = indent;
        let mut first = false;
        // Column of this line's innermost block node (a block scalar's content is deeper).
        let mut node = indent;
        if quote.is_none() && flow == 0 {
            if blank || bytes[indent] == b'#' {
                continue;
            }
            if indent == 0
                && (bytes.starts_with(b"---") || bytes.starts_with(b"..."))
                && matches!(bytes.get(3), None | Some(b' ' | b'\t' | b'\r'))
            {
                blocks.clear();
                i = 3;
            } else {
                while blocks.last().is_some_and(|&c| c > indent) {
                    blocks.pop();
                }
                if blocks.last() != Some(&indent) {
                    blocks.push(indent);
                }
                first = true;
                // Compact sequences: each `- ` opens one more level on the same line.
                while bytes.get(i) == Some(&b'-')
                    && matches!(bytes.get(i + 1), None | Some(b' ' | b'\t' | b'\r'))
                {
                    i += 1;
                    while matches!(bytes.get(i), Some(b' ' | b'\t')) {
                        i += 1;
                    }
                    if i < bytes.len() {
                        blocks.push(i);
                        node = i;
                    }
                }
            }
        }
        if let Some(e) = too_deep(blocks.len() + flow - shared) {
            return Err(e);
        }
        let mut value_start = true;
        let mut after_key = false;
        while i < bytes.len() {
            let b = bytes[i];
            let at_first = std::mem::replace(&mut first, false);
            let next_is_space = matches!(bytes.get(i + 1), None | Some(b' ' | b'\t' | b'\r'));
            if let Some(q) = quote {
                if q == b'"' && b == b'\\' {
                    i += 2;
                    continue;
                }
                if b == q {
                    if q == b'\'' && bytes.get(i + 1) == Some(&b'\'') {
                        i += 2;
                        continue;
                    }
                    quote = None;
                    value_start = false;
                }
                i += 1;
                continue;
            }
            match b {
                b' ' | b'\t' | b'\r' => {}
                b'#' if i == 0 || matches!(bytes[i - 1], b' ' | b'\t') => break,
                b'"' | b'\'' if value_start => quote = Some(b),
                b'[' | b'{' if value_start || flow > 0 => {
                    if flow == 0 && at_first {
                        shared = 1;
                    }
                    flow += 1;
                    if let Some(e) = too_deep(blocks.len() + flow - shared) {
                        return Err(e);
                    }
                    value_start = true;
                }
                b']' | b'}' if flow > 0 => {
                    flow -= 1;
                    if flow == 0 {
                        shared = 0;
                    }
                    value_start = false;
                }
                b',' if flow > 0 => value_start = true,
                b':' if flow > 0 || next_is_space => {
                    value_start = true;
                    after_key = true;
                }
                b'-' | b'?' if value_start && next_is_space => {}
                b'|' | b'>' if value_start && flow == 0 => {
                    block_scalar = Some(if after_key { node } else { indent });
                    break;
                }
                // Anchors and tags come before the node they name.
                b'&' | b'!' if value_start => {
                    while i + 1 < bytes.len() && !matches!(bytes[i + 1], b' ' | b'\t') {
                        i += 1;
                    }
                }
                _ => value_start = false,
            }
            i += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth(text: &str) -> usize {
        (0..200)
            .find(|&limit| check_nesting(text, limit).is_ok())
            .expect("nests less than 200 levels")
    }

    #[test]
    fn counts_block_and_flow_levels() {
        assert_eq!(depth("a: 1\n"), 1);
        assert_eq!(depth("a:\n  b:\n    c: 1\nd: 2\n"), 3);
        assert_eq!(depth("a:\n- - - x\n"), 4);
        assert_eq!(depth("a: [1, {b: [2]}]\n"), 4);
        assert_eq!(depth("{\"a\": [1, {\"b\": [2]}]}"), 4);
        assert_eq!(depth("a: [\n  [\n    [1]]]\n"), 4);
        assert_eq!(depth("- [1, [2]]\n- {a: 1}\n"), 3);
        assert_eq!(depth("[\n[\n1]]\n"), 2);
        assert_eq!(depth("a:\n  b: 1\n---\nc: 1\n"), 2);
    }

    #[test]
    fn brackets_in_text_do_not_count() {
        let text = "a: \"[[[[\"\nb: '{{{{ it''s [ '\nc: x [[[[ {{{{\nd: |\n  [[[[ {{{{\n  \"\ne: >-\n  [[[[\n# [[[[\nf: 1 # [[[[\ng: \"multi\n  line [[[[\"\n";
        assert_eq!(depth(text), 1, "{text}");
    }

    #[test]
    fn a_block_scalar_in_a_sequence_ends_where_its_mapping_does() {
        let text = "- script: |\n    [[[[\n  other: [[1]]\n";
        assert_eq!(depth(text), 4);
    }

    #[test]
    fn reports_the_line_where_the_limit_is_passed() {
        let text = "a:\n  b: [[[[[[\n";
        assert_eq!(check_nesting(text, 5), Err(TooDeep { line: 2, limit: 5 }));
        let deep = "\u{feff}".to_string() + &"{a: ".repeat(100_000);
        assert_eq!(
            check_nesting(&deep, 64),
            Err(TooDeep { line: 1, limit: 64 })
        );
    }
}

#[cfg(test)]
mod corpus {
    use super::*;
    use std::path::{Path, PathBuf};

    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for path in std::fs::read_dir(dir).unwrap().flatten().map(|e| e.path()) {
            if path.is_dir() {
                walk(&path, out);
            } else if crate::load::is_service_file(&path.to_string_lossy()) {
                out.push(path);
            }
        }
    }

    /// The limit leaves room: no real manifest comes near it.
    #[test]
    fn fixtures_and_corpus_nest_well_under_the_default_limit() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let mut paths = Vec::new();
        walk(&root.join("fixtures"), &mut paths);
        walk(&root.join("examples"), &mut paths);
        assert!(paths.len() > 50, "fixtures not found");
        let half = crate::config::DEFAULT_MAX_NESTING_DEPTH / 2;
        for path in paths {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            assert_eq!(
                check_nesting(&text, half),
                Ok(()),
                "{} nests deeper than {half}",
                path.display()
            );
        }
    }
}
