//! Untrusted text (file names, object names, label values, input quoted in messages) made safe
//! for a terminal, a log line and a GitHub workflow command, and clipped so lines stay bounded.
//!
//! Every human renderer (check, plan, status, the daemon's text logs) goes through here: a file
//! name may hold any byte but `/` and NUL, so a newline in it would split one record into two
//! (forging a `::error::` workflow command under `check --format github`) and an ESC would
//! reach the terminal as an escape sequence. JSON output needs none of this: serde_json
//! escapes what JSON requires.

use std::fmt::{self, Write};

/// Longest name shown in a table cell or a plan line, in characters after escaping. A
/// Kubernetes `namespace/name:port` is at most 63 + 1 + 63 + 1 + 15 = 143.
pub const MAX_NAME: usize = 160;
/// Longest file path shown in a diagnostic, in characters after escaping.
pub const MAX_PATH: usize = 256;
/// Longest free text (a message, an error, a foreign rule) shown on one line.
pub const MAX_TEXT: usize = 512;
/// How many items of a list (endpoints) a text line shows before `... and N more`.
pub const MAX_ITEMS: usize = 8;
/// What a line of text output is kept under, in characters: the sum of the bounds above for
/// the widest line any renderer makes, with room to spare.
pub const MAX_LINE: usize = 2048;

/// Marks clipped text.
const ELLIPSIS: &str = "...";

/// Whether `c` must never reach a terminal or a log line raw: the C0 controls, DEL, the C1
/// controls (Unicode category Cc), the line and paragraph separators, and the bidirectional
/// formatting characters that reorder what is shown (the "Trojan Source" attack,
/// CVE-2021-42574: U+061C, U+200E, U+200F, U+202A–U+202E, U+2066–U+2069).
pub fn is_control(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// Writes a control character visibly, the way Rust source spells it: `\n`, `\r`, `\t`,
/// `\x1b` below U+0080, `\u{202e}` above. A backslash is left as it is: names quoted by the
/// loader are already escaped once, and escaping them again would double every `\`.
fn push_visible(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if (c as u32) < 0x80 => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
    }
}

/// Escapes `text` char by char with `map`, stopping once the output would pass `max`
/// characters; then ends it with `...` (so the result has at most `max` + 3 characters).
fn escape_with(text: &str, max: usize, map: fn(char, &mut String)) -> String {
    let mut out = String::with_capacity(text.len().min(max) + ELLIPSIS.len());
    let mut shown = 0;
    let mut piece = String::new();
    for c in text.chars() {
        piece.clear();
        map(c, &mut piece);
        let width = piece.chars().count();
        if shown + width > max {
            out.push_str(ELLIPSIS);
            return out;
        }
        shown += width;
        out.push_str(&piece);
    }
    out
}

fn text_char(c: char, out: &mut String) {
    if is_control(c) {
        push_visible(out, c);
    } else {
        out.push(c);
    }
}

/// `text` for one line of human output: every control character (see [`is_control`])
/// escaped visibly, and at most `max` characters (then `...`).
pub fn clipped(text: &str, max: usize) -> String {
    escape_with(text, max, text_char)
}

/// `text` for one line of human output, escaped as [`clipped`] does but never clipped: for
/// values whose length is bounded elsewhere.
pub fn text(text: &str) -> String {
    escape_with(text, usize::MAX, text_char)
}

/// Shows a string escaped by [`text`] through `Display`, e.g. as a tracing field:
/// `tracing::warn!(file = %Text(&path), ...)`.
pub struct Text<'a>(pub &'a str);

impl fmt::Display for Text<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            if is_control(c) {
                let mut piece = String::new();
                push_visible(&mut piece, c);
                f.write_str(&piece)?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

fn github_data_char(c: char, out: &mut String) {
    match c {
        '%' => out.push_str("%25"),
        '\r' => out.push_str("%0D"),
        '\n' => out.push_str("%0A"),
        c => text_char(c, out),
    }
}

fn github_property_char(c: char, out: &mut String) {
    match c {
        ':' => out.push_str("%3A"),
        ',' => out.push_str("%2C"),
        c => github_data_char(c, out),
    }
}

/// The message of a GitHub workflow command (`::error file=F::MESSAGE`), at most `max`
/// characters. GitHub's own escaping, as `escapeData` in the Actions toolkit does it
/// (<https://github.com/actions/toolkit/blob/main/packages/core/src/command.ts>; the runner
/// turns `%25`, `%0D`, `%0A` back, see "Workflow commands for GitHub Actions",
/// <https://docs.github.com/en/actions/using-workflows/workflow-commands-for-github-actions>):
/// `%` → `%25`, CR → `%0D`, LF → `%0A`; so a newline shows in the annotation but can never
/// start a command of its own. Other control characters are escaped as [`text`] does, so no
/// escape sequence reaches the log viewer.
pub fn github_data(text: &str, max: usize) -> String {
    escape_with(text, max, github_data_char)
}

/// A property value of a GitHub workflow command (`file=`, `title=`), at most `max`
/// characters: [`github_data`] plus `:` → `%3A` and `,` → `%2C`, as the toolkit's
/// `escapeProperty` does, so a value can neither end the properties (`::`) nor start another
/// one (`,`).
pub fn github_property(text: &str, max: usize) -> String {
    escape_with(text, max, github_property_char)
}

/// The first [`MAX_ITEMS`] of `items` joined with `, `, then `... and N more` for the rest;
/// `total` is how many there are (`items` may stop early). Each item is escaped and clipped
/// to [`MAX_NAME`].
pub fn list<T: fmt::Display>(items: impl IntoIterator<Item = T>, total: usize) -> String {
    list_joined(items, total, ", ")
}

/// [`list`] with another separator.
pub fn list_joined<T: fmt::Display>(
    items: impl IntoIterator<Item = T>,
    total: usize,
    separator: &str,
) -> String {
    let mut out = String::new();
    let mut shown = 0;
    for item in items.into_iter().take(MAX_ITEMS) {
        if shown > 0 {
            out.push_str(separator);
        }
        out.push_str(&clipped(&item.to_string(), MAX_NAME));
        shown += 1;
    }
    if total > shown {
        let _ = write!(out, "{separator}{ELLIPSIS} and {} more", total - shown);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_as_escapes_and_the_rest_as_it_is() {
        assert_eq!(
            text("a\nb\r\t\x1b[31m\x7f\u{85}\u{202e}\u{2066}é/ü\\n"),
            "a\\nb\\r\\t\\x1b[31m\\x7f\\u{85}\\u{202e}\\u{2066}é/ü\\n"
        );
        assert_eq!(Text("x\u{1b}y").to_string(), "x\\x1by");
    }

    #[test]
    fn clipped_text_stops_at_its_bound_without_cutting_an_escape() {
        assert_eq!(clipped("abcdef", 6), "abcdef");
        assert_eq!(clipped("abcdefg", 6), "abcdef...");
        assert_eq!(clipped("ab\x1bcd", 5), "ab...");
        assert_eq!(clipped("ab\x1bcd", 6), "ab\\x1b...");
    }

    #[test]
    fn github_escaping_follows_the_actions_toolkit() {
        assert_eq!(
            github_data("50%\r\n::error::x,y", usize::MAX),
            "50%25%0D%0A::error::x,y"
        );
        assert_eq!(
            github_property("a\n::error::b,c=%\x1b", usize::MAX),
            "a%0A%3A%3Aerror%3A%3Ab%2Cc=%25\\x1b"
        );
    }

    #[test]
    fn long_lists_show_their_first_items_and_how_many_more() {
        assert_eq!(list(1..=3, 3), "1, 2, 3");
        let many = list(0..100_000, 100_000);
        assert!(many.ends_with(", ... and 99992 more"), "{many}");
        assert!(many.starts_with("0, 1, 2, 3, 4, 5, 6, 7, ..."), "{many}");
        assert_eq!(list(["a\nb"], 1), "a\\nb");
    }
}
