//! Problems found in the input, each naming the file, line, object and field it is about.

use crate::escape;
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
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

/// Formats diagnostics for `check --format`: one line per diagnostic in text and GitHub
/// form, whatever the input (see [`crate::escape`]); the JSON keeps every string whole.
pub fn render(diagnostics: &[Diagnostic], format: ReportFormat) -> String {
    match format {
        ReportFormat::Text => diagnostics.iter().map(|d| format!("{d}\n")).collect(),
        ReportFormat::Json => {
            let errors = diagnostics.iter().filter(|d| d.is_error()).count();
            let value = serde_json::json!({
                "format_version": 1,
                "errors": errors,
                "warnings": diagnostics.iter().filter(|d| d.severity == Severity::Warning).count(),
                "diagnostics": diagnostics,
            });
            let mut text = serde_json::to_string_pretty(&value).expect("diagnostics serialize");
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
