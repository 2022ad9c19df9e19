//! Where settings come from: flags, then `PORTALD_*` environment variables, then the
//! `--config` file (YAML, JSON or TOML), then defaults. Every flag of a command has a key
//! (`--resync-seconds` is `resync_seconds` in the file and `PORTALD_RESYNC_SECONDS` in the
//! environment), read off the parser's own definition, so no flag can be forgotten.
//!
//! How: the file's and the environment's values become flags placed before the user's own,
//! and the parser lets a later flag override an earlier one; what came from where is kept
//! for `--print-config`.

use anyhow::{bail, Context, Result};
use clap::{ArgMatches, Command};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

/// Where one setting's value came from, strongest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Flag,
    Env,
    File,
    Default,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Origin::Flag => "flag",
            Origin::Env => "environment",
            Origin::File => "config file",
            Origin::Default => "default",
        })
    }
}

/// The command line to parse (the user's, with file and environment settings put in) and
/// where each injected setting came from.
pub struct Layered {
    pub argv: Vec<OsString>,
    pub injected: BTreeMap<String, Origin>,
}

/// The environment variable of a setting key: `resync_seconds` → `PORTALD_RESYNC_SECONDS`.
pub fn env_name(key: &str) -> String {
    format!("PORTALD_{}", key.to_ascii_uppercase())
}

/// Settings a layer may not give: they say where settings come from, or are one-shot asks.
const NOT_SETTINGS: &[&str] = &["help", "version", "config", "print_config"];

/// The settable arguments of a command: key → (argument id, whether it takes a value,
/// whether it is positional).
fn settable(command: &Command) -> BTreeMap<String, (String, bool, bool)> {
    let mut out = BTreeMap::new();
    for arg in command.get_arguments() {
        let id = arg.get_id().as_str().to_string();
        let key = match arg.get_long() {
            Some(long) => long.replace('-', "_"),
            None if arg.is_positional() => id.clone(),
            None => continue,
        };
        if NOT_SETTINGS.contains(&key.as_str()) {
            continue;
        }
        let takes_value = arg.get_action().takes_values();
        out.insert(key, (id, takes_value, arg.is_positional()));
    }
    out
}

/// Reads a config file into key → text values; nested maps are refused (every key is a
/// flag's name), lists become comma-separated values.
fn read_file(path: &Path) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config file `{}`", path.display()))?;
    let value: serde_json::Value = match path.extension().and_then(|e| e.to_str()) {
        Some("toml") => {
            let table: toml::Table = toml::from_str(&text)
                .with_context(|| format!("config file `{}`", path.display()))?;
            serde_json::to_value(table).context("config file as values")?
        }
        _ => serde_yaml::from_str(&text)
            .with_context(|| format!("config file `{}`", path.display()))?,
    };
    let mut out = BTreeMap::new();
    let serde_json::Value::Object(map) = value else {
        if value.is_null() {
            return Ok(out);
        }
        bail!(
            "config file `{}`: expected a map of settings",
            path.display()
        );
    };
    for (key, value) in map {
        let text = match &value {
            serde_json::Value::String(s) => s.clone(),
            serde_json::Value::Bool(_) | serde_json::Value::Number(_) => value.to_string(),
            serde_json::Value::Array(items) => items
                .iter()
                .map(|i| match i {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join(","),
            _ => bail!(
                "config file `{}`: `{key}` must be a string, number, boolean or list",
                path.display()
            ),
        };
        out.insert(key.replace('-', "_"), text);
    }
    Ok(out)
}

/// The closest known key, for "did you mean".
fn closest<'a>(key: &str, known: impl Iterator<Item = &'a String>) -> Option<&'a String> {
    known
        .map(|k| (strsim::levenshtein(key, k), k))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, k)| k)
}

/// Builds the command line with settings from `config` (a file) and `env` (the process
/// environment) put in front of the user's own arguments of `subcommand`.
///
/// Errors: an unreadable or malformed file, a key no command has (with the closest key),
/// a boolean setting that is neither true nor false.
pub fn layer(
    root: &Command,
    argv: &[OsString],
    subcommand: &str,
    config: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> Result<Layered> {
    let command = root
        .find_subcommand(subcommand)
        .with_context(|| format!("no command `{subcommand}`"))?;
    let keys = settable(command);
    let mut values: BTreeMap<String, (String, Origin)> = BTreeMap::new();
    if let Some(path) = config {
        // A key of another command is fine (one file serves `run`, `plan` and `check`); a
        // key of no command is a typo.
        let all: BTreeMap<String, ()> = root
            .get_subcommands()
            .flat_map(|c| settable(c).into_keys())
            .map(|k| (k, ()))
            .collect();
        for (key, value) in read_file(path)? {
            if !all.contains_key(&key) {
                match closest(&key, all.keys()) {
                    Some(near) => bail!(
                        "config file `{}`: unknown setting `{key}` (did you mean `{near}`?)",
                        path.display()
                    ),
                    None => bail!("config file `{}`: unknown setting `{key}`", path.display()),
                }
            }
            if keys.contains_key(&key) {
                values.insert(key, (value, Origin::File));
            }
        }
    }
    for key in keys.keys() {
        if let Some(value) = env.get(&env_name(key)) {
            values.insert(key.clone(), (value.clone(), Origin::Env));
        }
    }
    // Where the subcommand's own arguments start.
    let at = argv
        .iter()
        .position(|a| a.to_str() == Some(subcommand))
        .map(|i| i + 1)
        .unwrap_or(argv.len());
    let mut injected_args: Vec<OsString> = Vec::new();
    let mut positionals: Vec<(String, OsString)> = Vec::new();
    let mut injected = BTreeMap::new();
    for (key, (value, origin)) in values {
        let (_, takes_value, positional) = &keys[&key];
        if *positional {
            positionals.push((key.clone(), value.into()));
        } else if *takes_value {
            injected_args.push(format!("--{}", key.replace('_', "-")).into());
            injected_args.push(value.into());
        } else {
            match value.as_str() {
                "true" | "1" | "yes" => {
                    injected_args.push(format!("--{}", key.replace('_', "-")).into())
                }
                "false" | "0" | "no" | "" => continue,
                other => bail!("setting `{key}` ({origin}): `{other}` is not true or false"),
            }
        }
        injected.insert(key, origin);
    }
    let mut out: Vec<OsString> = argv[..at].to_vec();
    out.extend(injected_args);
    out.extend(argv[at..].iter().cloned());
    // A positional from a layer only where the user gave none: appended after their
    // arguments, it fills the slot they left empty.
    let given = root
        .clone()
        .ignore_errors(true)
        .try_get_matches_from(argv)
        .ok()
        .and_then(|m| m.subcommand_matches(subcommand).cloned());
    let user_gave = |id: &str| {
        given
            .as_ref()
            .is_some_and(|m| m.value_source(id) == Some(clap::parser::ValueSource::CommandLine))
    };
    for (key, value) in positionals {
        if !user_gave(&keys[&key].0) {
            out.push(value);
        }
    }
    // What the user gave on the command line is theirs, whatever a layer said.
    injected.retain(|key, _| !user_gave(&keys[key].0));
    Ok(Layered {
        argv: out,
        injected,
    })
}

/// `--print-config`: every setting of the command with its value and where it came from, as
/// YAML a config file can start from.
pub fn render(
    command: &Command,
    matches: &ArgMatches,
    injected: &BTreeMap<String, Origin>,
) -> String {
    let mut out = String::new();
    for (key, (id, _, _)) in settable(command) {
        let values: Vec<String> = matches
            .get_raw(&id)
            .map(|v| v.map(|s| s.to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        let origin = match matches.value_source(&id) {
            Some(clap::parser::ValueSource::DefaultValue) | None => Origin::Default,
            Some(_) => injected.get(&key).copied().unwrap_or(Origin::Flag),
        };
        let value = match values.as_slice() {
            [] => "null".to_string(),
            [one] => yaml_scalar(one),
            many => format!(
                "[{}]",
                many.iter()
                    .map(|v| yaml_scalar(v))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        out.push_str(&format!("{key}: {value}  # {origin}\n"));
    }
    out
}

fn yaml_scalar(text: &str) -> String {
    serde_json::to_string(text).unwrap_or_else(|_| "\"\"".into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    fn argv(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn parse(layered: &Layered) -> ArgMatches {
        crate::args::command()
            .try_get_matches_from(&layered.argv)
            .expect("parses")
    }

    #[test]
    fn flags_win_over_the_environment_which_wins_over_the_file() {
        let dir = std::env::temp_dir().join(format!("portald-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("config.yaml");
        std::fs::write(
            &file,
            "resync_seconds: 11\ndebounce_ms: 12\nmax_attempts: 3\ndir: /from/file\nportal_cidr: 10.99.0.0/16\n",
        )
        .unwrap();
        let env = BTreeMap::from([
            ("PORTALD_DEBOUNCE_MS".to_string(), "22".to_string()),
            ("PORTALD_MAX_ATTEMPTS".to_string(), "2".to_string()),
        ]);
        let root = crate::args::Cli::command();
        let layered = layer(
            &root,
            &argv(&["portald", "run", "--max-attempts", "1"]),
            "run",
            Some(&file),
            &env,
        )
        .unwrap();
        let matches = parse(&layered);
        let run = matches.subcommand_matches("run").unwrap();
        assert_eq!(run.get_one::<u64>("resync_seconds"), Some(&11));
        assert_eq!(run.get_one::<u64>("debounce_ms"), Some(&22));
        assert_eq!(run.get_one::<usize>("max_attempts"), Some(&1));
        assert_eq!(
            run.get_one::<std::path::PathBuf>("dir")
                .map(|p| p.display().to_string()),
            Some("/from/file".into())
        );
        let shown = render(root.find_subcommand("run").unwrap(), run, &layered.injected);
        assert!(
            shown.contains("resync_seconds: \"11\"  # config file"),
            "{shown}"
        );
        assert!(
            shown.contains("debounce_ms: \"22\"  # environment"),
            "{shown}"
        );
        assert!(shown.contains("max_attempts: \"1\"  # flag"), "{shown}");
        assert!(
            shown.contains("half_close_timeout_seconds: \"60\"  # default"),
            "{shown}"
        );
        assert!(
            shown.contains("portal_cidr: \"10.99.0.0/16\"  # config file"),
            "{shown}"
        );

        // A directory on the command line wins over the file's.
        let layered = layer(
            &root,
            &argv(&["portald", "run", "/from/flag"]),
            "run",
            Some(&file),
            &BTreeMap::new(),
        )
        .unwrap();
        let matches = parse(&layered);
        let run = matches.subcommand_matches("run").unwrap();
        assert_eq!(
            run.get_one::<std::path::PathBuf>("dir")
                .map(|p| p.display().to_string()),
            Some("/from/flag".into())
        );

        std::fs::write(&file, "resync_secnds: 5\n").unwrap();
        let err = layer(
            &root,
            &argv(&["portald", "run"]),
            "run",
            Some(&file),
            &BTreeMap::new(),
        )
        .err()
        .expect("a typo is refused");
        assert!(
            err.to_string().contains("did you mean `resync_seconds`"),
            "{err}"
        );
        std::fs::write(&file, "resync_seconds = 7\ncleanup_on_exit = true\n").unwrap();
        let toml = dir.join("config.toml");
        std::fs::rename(&file, &toml).unwrap();
        let layered = layer(
            &root,
            &argv(&["portald", "run", "d"]),
            "run",
            Some(&toml),
            &BTreeMap::new(),
        )
        .unwrap();
        let matches = parse(&layered);
        let run = matches.subcommand_matches("run").unwrap();
        assert_eq!(run.get_one::<u64>("resync_seconds"), Some(&7));
        assert_eq!(run.get_one::<bool>("cleanup_on_exit"), Some(&true));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
