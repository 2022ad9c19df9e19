//! Problems found in the input, each naming the file, line, object and field it is about.

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

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": {}: ", self.severity)?;
        if let Some(object) = &self.object {
            write!(f, "{object}: ")?;
        }
        if let Some(field) = &self.field {
            write!(f, "`{field}`: ")?;
        }
        f.write_str(&self.message)
    }
}

/// Formats diagnostics for `check --format`.
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
                let mut message = String::new();
                if let Some(object) = &d.object {
                    message.push_str(&format!("{object}: "));
                }
                if let Some(field) = &d.field {
                    message.push_str(&format!("`{field}`: "));
                }
                message.push_str(&d.message);
                format!(
                    "::{level} file={}{line}::{}\n",
                    d.file,
                    message.replace('%', "%25").replace('\n', "%0A")
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
