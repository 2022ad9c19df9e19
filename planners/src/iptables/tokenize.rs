//! Splitting and quoting words the way `iptables-save` prints them and `iptables-restore`
//! reads them back.
//!
//! `iptables-save` (libxtables `xtables_save_string`) prints a free-text value bare when it
//! is made only of `[A-Za-z0-9_-]`, and otherwise inside double quotes with `"`, `\` and `'`
//! escaped by a backslash. `iptables-restore` (`add_param_to_argv`) splits on blanks, joins
//! quoted runs into the word around them, and inside quotes takes the character after a
//! backslash literally; outside quotes a backslash is an ordinary character. Both halves are
//! mirrored here so that what portald renders is byte for byte what a dump shows.

/// A line whose quoting does not close.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unterminated double quote")]
pub struct UnterminatedQuote;

/// Splits one line into words, honouring double quotes and backslash escapes inside them.
pub fn split_words(line: &str) -> Result<Vec<String>, UnterminatedQuote> {
    let mut words = Vec::new();
    let mut word = String::new();
    // A word can be empty yet present (`""`), so presence is tracked apart from content.
    let mut in_word = false;
    let mut quoted = false;
    let mut escaped = false;
    for c in line.chars() {
        if quoted {
            if escaped {
                word.push(c);
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                quoted = false;
            } else {
                word.push(c);
            }
            continue;
        }
        match c {
            '"' => {
                quoted = true;
                in_word = true;
            }
            ' ' | '\t' | '\n' | '\r' => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            _ => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quoted {
        return Err(UnterminatedQuote);
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Quotes a free-text value exactly as `iptables-save` prints it (see the module comment).
pub fn save_quote(value: &str) -> String {
    let bare = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if bare {
        return value.to_string();
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if matches!(c, '"' | '\\' | '\'') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_words_joins_quoted_runs_and_unescapes_inside_them() {
        let words = split_words(r#"-A X -m comment --comment "admin said \"hi\" \\o/" -j  ACCEPT"#)
            .unwrap();
        assert_eq!(
            words,
            [
                "-A",
                "X",
                "-m",
                "comment",
                "--comment",
                r#"admin said "hi" \o/"#,
                "-j",
                "ACCEPT"
            ]
        );
    }

    #[test]
    fn split_words_keeps_backslashes_outside_quotes_and_empty_quoted_words() {
        assert_eq!(
            split_words(r#"a\b "" c"d e"f"#).unwrap(),
            [r"a\b", "", "cd ef"]
        );
    }

    #[test]
    fn split_words_rejects_an_unclosed_quote() {
        assert_eq!(split_words(r#"--comment "open"#), Err(UnterminatedQuote));
    }

    #[test]
    fn save_quote_leaves_plain_words_bare_and_quotes_everything_else() {
        assert_eq!(save_quote("ab_c-1"), "ab_c-1");
        assert_eq!(
            save_quote("default/apache-service:12345"),
            "\"default/apache-service:12345\""
        );
        assert_eq!(save_quote(r#"a"b\c'd"#), r#""a\"b\\c\'d""#);
        assert_eq!(save_quote(""), "\"\"");
    }

    #[test]
    fn save_quote_then_split_words_gives_the_value_back_as_one_word() {
        for value in [
            "",
            "x",
            "a b",
            r#"q"uote"#,
            r"back\slash",
            "it's",
            "tab\there",
        ] {
            assert_eq!(split_words(&save_quote(value)).unwrap(), [value]);
        }
    }
}
