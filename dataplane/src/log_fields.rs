//! Log fields that `--log-format json` writes with their types: a list as a JSON array.
//!
//! tracing records a field as a number, a bool, a string or a `Debug` text; a list has no
//! type of its own. The tracing ecosystem's way is `valuable`: tracing-subscriber's JSON
//! formatter writes a `valuable::Value` as JSON (a `Vec` as an array), and its text
//! formatter as its `Debug` text (`["a", "b"]`, as before). That support is behind
//! tracing's unstable cfg, which the repository's `.cargo/config.toml` sets; built without
//! it, the same lists are recorded as their `Debug` text, so the logs stay readable (in JSON
//! as a string).
//!
//! Durations are not lists: they are logged as whole numbers with the unit in the field's
//! name (`elapsed_ms`).

/// A list field: `changed = list(&names)`. Takes a `Vec` (not a slice): `valuable` needs a
/// sized value to borrow.
#[cfg(tracing_unstable)]
#[allow(clippy::ptr_arg)]
pub fn list(items: &Vec<String>) -> impl tracing::Value + '_ {
    tracing::field::valuable(items)
}

/// A list field, as `Debug` text: this build has no `--cfg tracing_unstable`.
#[cfg(not(tracing_unstable))]
#[allow(clippy::ptr_arg)]
pub fn list(items: &Vec<String>) -> impl tracing::Value + '_ {
    tracing::field::debug(items)
}

/// Each item as its `Display` text, ready for [`list`].
pub fn texts<T: std::fmt::Display>(items: &[T]) -> Vec<String> {
    items.iter().map(ToString::to_string).collect()
}

/// A duration as whole milliseconds, for fields named `..._ms` (saturating: a field never
/// wraps).
pub fn millis(duration: std::time::Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}
