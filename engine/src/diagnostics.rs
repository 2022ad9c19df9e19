//! Problems found in the input, each naming the file, line, object and field it is about.

use crate::escape;
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
    Note,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
            Severity::Note => "note",
        })
    }
}

/// One finding. Ordered by file, then line, so reports are stable.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
pub struct Diagnostic {
    /// Path of the file, relative to the services directory.
    pub file: String,
    pub line: Option<usize>,
    pub severity: Severity,
    /// The object, e.g. ``Service `default/web` ``.
    pub object: Option<String>,
    /// The field path, e.g. `spec.ports[1].port`.
    pub field: Option<String>,
    pub message: String,
}

impl Diagnostic {
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

/// One line, whatever the input: the file, object, field and message are escaped and clipped
/// by [`crate::escape`], so a newline or an escape sequence in a file name shows as `\n` or
/// `\x1b` and a record can never be split or colour the terminal.
impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape::clipped(&self.file, escape::MAX_PATH))?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": {}: ", self.severity)?;
        f.write_str(&self.subject(escape::clipped))
    }
}

impl Diagnostic {
    /// `OBJECT: `FIELD`: MESSAGE`, each part passed through `show` with its bound.
    fn subject(&self, show: fn(&str, usize) -> String) -> String {
        let mut out = String::new();
        if let Some(object) = &self.object {
            out.push_str(&show(object, escape::MAX_NAME));
            out.push_str(": ");
        }
        if let Some(field) = &self.field {
            out.push('`');
            out.push_str(&show(field, escape::MAX_NAME));
            out.push_str("`: ");
        }
        out.push_str(&show(&self.message, escape::MAX_TEXT));
        out
    }
}

/// Version of the `check --format json` document ([`CheckReport`]); raised when a field
/// changes meaning or goes away.
pub const CHECK_FORMAT_VERSION: u32 = 1;

/// What `portald check --format json` prints. Keys in alphabetical order, as before this
/// type existed (the report was a `serde_json` map).
#[derive(Debug, Serialize, schemars::JsonSchema)]
pub struct CheckReport<'a> {
    /// Every problem found, ordered by file, then line.
    pub diagnostics: &'a [Diagnostic],
    /// How many diagnostics are errors (`check` exits 1 when there is one).
    pub errors: usize,
    /// [`CHECK_FORMAT_VERSION`].
    pub format_version: u32,
    /// How many are warnings (fatal with `--strict`).
    pub warnings: usize,
}

/// Formats diagnostics for `check --format`: one line per diagnostic in text and GitHub
/// form, whatever the input (see [`crate::escape`]); the JSON keeps every string whole.
pub fn render(diagnostics: &[Diagnostic], format: ReportFormat) -> String {
    match format {
        ReportFormat::Text => diagnostics.iter().map(|d| format!("{d}\n")).collect(),
        ReportFormat::Json => {
            let report = CheckReport {
                diagnostics,
                errors: diagnostics.iter().filter(|d| d.is_error()).count(),
                format_version: CHECK_FORMAT_VERSION,
                warnings: diagnostics
                    .iter()
                    .filter(|d| d.severity == Severity::Warning)
                    .count(),
            };
            let mut text = serde_json::to_string_pretty(&report).expect("diagnostics serialize");
            text.push('\n');
            text
        }
        ReportFormat::Github => diagnostics
            .iter()
            .map(|d| {
                let level = match d.severity {
                    Severity::Error => "error",
                    Severity::Warning => "warning",
                    Severity::Note => "notice",
                };
                let line = d.line.map(|l| format!(",line={l}")).unwrap_or_default();
                format!(
                    "::{level} file={}{line}::{}\n",
                    escape::github_property(&d.file, escape::MAX_PATH),
                    d.subject(escape::github_data)
                )
            })
            .collect(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReportFormat {
    Text,
    Json,
    Github,
}
