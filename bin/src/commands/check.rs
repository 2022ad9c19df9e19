//! `portald check DIR`: validate only; with `--locked`, also the GitOps gate on the lock.

use crate::args::{CheckArgs, ReportFormat};
use anyhow::Result;
use engine::allocate::{parse_key, Lock};
use engine::diagnostics::{render, Diagnostic, ReportFormat as Format, Severity};
use std::path::Path;

pub fn run(args: CheckArgs) -> Result<u8> {
    let files = super::load_files(&args.engine, &args.dir)?;
    let lock = super::load_lock(&args.engine, &args.dir)?;
    let config = args.engine.config();
    let mut diagnostics = engine::pipeline::check(&files, &lock, &config);
    if args.locked {
        let (expected, outcome) = engine::pipeline::relock(
            &files,
            &lock,
            &engine::observe::Observed::default(),
            &config,
        );
        let path = args.engine.lock_path(&args.dir);
        // Relative to DIR when inside it; else absolute, whatever the working directory.
        let shown = match path.strip_prefix(&args.dir) {
            Ok(inside) => inside.display().to_string(),
            Err(_) => std::fs::canonicalize(&path)
                .or_else(|_| std::path::absolute(&path))
                .unwrap_or_else(|_| path.clone())
                .display()
                .to_string(),
        };
        diagnostics.extend(lock_problems(&lock, &expected, &outcome, &shown));
        diagnostics.sort();
        diagnostics.dedup();
    }
    let format = match args.format {
        ReportFormat::Text => Format::Text,
        ReportFormat::Json => Format::Json,
        ReportFormat::Github => Format::Github,
    };
    if format == Format::Github {
        let top = repository_top(&args.dir);
        let prefix = match &args.path_prefix {
            Some(prefix) => Some(prefix.clone()),
            None => top.as_ref().map(|(_, prefix)| prefix.clone()),
        };
        if let Some(prefix) = prefix {
            for d in &mut diagnostics {
                d.file = prefixed(&prefix, &d.file);
                // A lock named by an absolute path inside the repository: from its top.
                if let Some((top, _)) = top.as_ref().filter(|_| args.path_prefix.is_none()) {
                    if let Ok(inside) = Path::new(&d.file).strip_prefix(top) {
                        d.file = slashed(inside);
                    }
                }
            }
        }
    }
    print!("{}", render(&diagnostics, format));
    let errors = diagnostics.iter().filter(|d| d.is_error()).count();
    let warnings = diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Warning)
        .count();
    if args.format == ReportFormat::Text {
        let services = files
            .iter()
            .filter(|f| !f.has_errors())
            .flat_map(|f| &f.objects)
            .filter(|o| matches!(o, engine::load::Object::Service(_)))
            .count();
        let fatal = if args.strict && warnings > 0 {
            " (--strict: warnings are fatal)"
        } else {
            ""
        };
        println!(
            "{} file(s), {services} service(s) valid, {errors} error(s), {warnings} warning(s){fatal}.",
            files.len(),
        );
    }
    Ok(if errors > 0 || (args.strict && warnings > 0) {
        1
    } else {
        0
    })
}

/// How `actual` differs from the lock `portald lock` would write (`expected`): a missing
/// entry, a stale one, one that would move, or any other change (CIDR, format, proxy
/// ports that belong in the node state). Each an error on the lock file `shown`.
fn lock_problems(
    actual: &Lock,
    expected: &Lock,
    outcome: &engine::pipeline::Outcome,
    shown: &str,
) -> Vec<Diagnostic> {
    let error = |object: Option<String>, field: Option<String>, message: String| Diagnostic {
        file: shown.to_string(),
        line: None,
        severity: Severity::Error,
        object,
        field,
        message,
    };
    let source = |key: &str| {
        parse_key(key)
            .and_then(|k| outcome.assembled.catalog.services.get(&k))
            .map(|s| s.source.file.clone())
            .unwrap_or_default()
    };
    let mut out = Vec::new();
    for (key, ip) in &expected.vips {
        match actual.vips.get(key) {
            None => out.push(error(
                Some(format!("Service `{key}`")),
                Some(format!("vips.{key}")),
                format!(
                    "the lock has no entry for the service of `{}` (it would get {ip}); run `portald lock` and commit the lock",
                    source(key)
                ),
            )),
            Some(old) if old != ip => out.push(error(
                Some(format!("Service `{key}`")),
                Some(format!("vips.{key}")),
                format!("the entry holds {old}, which no host can honour; `portald lock` would write {ip}"),
            )),
            Some(_) => {}
        }
    }
    for (key, ip) in &actual.vips {
        if !expected.vips.contains_key(key) {
            out.push(error(
                Some(format!("Service `{key}`")),
                Some(format!("vips.{key}")),
                format!("stale entry ({ip}): no file defines this service any more; run `portald lock` and commit the lock"),
            ));
        }
    }
    if out.is_empty() && actual != expected {
        let mut what = Vec::new();
        if actual.format_version != expected.format_version {
            what.push(format!("format_version {}", expected.format_version));
        }
        if actual.portal_cidr != expected.portal_cidr {
            what.push(format!(
                "portal_cidr `{}` instead of `{}`",
                expected.portal_cidr, actual.portal_cidr
            ));
        }
        if !actual.proxy_ports.is_empty() {
            what.push("no proxy_ports (they are node-local)".to_string());
        }
        out.push(error(
            None,
            None,
            format!("`portald lock` would change the lock: {}", what.join(", ")),
        ));
    }
    out
}

/// The top of the git repository holding `dir`, and the path from it to `dir`
/// (`deploy/services/`, or `""` at the top itself), found by walking up to the nearest
/// folder with a `.git` entry (a folder, or a file in a worktree or submodule) as git
/// does; no git process. `None` outside any repository.
fn repository_top(dir: &Path) -> Option<(std::path::PathBuf, String)> {
    let dir = std::fs::canonicalize(dir).ok()?;
    let top = dir.ancestors().find(|a| a.join(".git").exists())?;
    let mut prefix = slashed(dir.strip_prefix(top).ok()?);
    if !prefix.is_empty() {
        prefix.push('/');
    }
    Some((top.to_path_buf(), prefix))
}

/// A relative path with `/` between its parts, as GitHub names a repository's files.
fn slashed(path: &Path) -> String {
    path.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// `prefix` + `file`, one `/` between them; an absolute `file` (a lock outside DIR) stays.
fn prefixed(prefix: &str, file: &str) -> String {
    if file.starts_with('/') || prefix.is_empty() {
        return file.to_string();
    }
    format!("{}/{file}", prefix.trim_end_matches('/'))
}
