//! Shared by the engine's integration tests: where the workspace is, and how a fixture case
//! (`fixtures/<case>/`) becomes the inputs of `pipeline::run`.

#![allow(dead_code)]

use engine::allocate::Lock;
use engine::config::{Backend, Config, PortRange};
use engine::load::{load_dir, ParsedFile};
use engine::observe::{from_file_text, Observed};
use engine::pipeline::{run, Outcome};
use std::path::{Path, PathBuf};

/// The workspace root (the parent of `engine/`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("engine/ has a parent")
        .to_path_buf()
}

pub fn fixtures_dir() -> PathBuf {
    workspace_root().join("fixtures")
}

pub fn golden_dir() -> PathBuf {
    workspace_root().join("golden")
}

/// Every case directory under `fixtures/` (those with a `services/` folder), sorted.
pub fn case_names() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(fixtures_dir())
        .expect("fixtures/ is readable")
        .flatten()
        .filter(|e| e.path().join("services").is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// The inputs of one case, read from disk.
pub struct Case {
    pub name: String,
    pub files: Vec<ParsedFile>,
    pub lock: Lock,
    /// The raw `iptables-save` dump of `live.save`, if the case has one.
    pub live_dump: Option<String>,
    pub config: Config,
}

impl Case {
    pub fn load(name: &str) -> Case {
        let dir = fixtures_dir().join(name);
        let files = load_dir(&dir.join("services"))
            .unwrap_or_else(|e| panic!("case `{name}`: cannot load services: {e}"));
        let lock_path = dir.join("portald.lock");
        let lock = Lock::read(&lock_path)
            .unwrap_or_else(|e| panic!("case `{name}`: bad portald.lock: {e}"));
        let live_dump = std::fs::read_to_string(dir.join("live.save")).ok();
        let config = read_config(&dir.join("config.json"), name);
        Case {
            name: name.to_string(),
            files,
            lock,
            live_dump,
            config,
        }
    }

    /// The live state as the iptables dialect reads `live.save` (empty without one).
    pub fn observed_iptables(&self) -> Observed {
        match &self.live_dump {
            Some(dump) => from_file_text(Backend::Iptables, dump, "live.save")
                .unwrap_or_else(|e| panic!("case `{}`: live.save does not parse: {e}", self.name)),
            None => Observed::default(),
        }
    }

    /// The pipeline in kernel mode, as on a host whose one attached network is the
    /// testbed's bridge (so the masquerade entries are the same on every machine).
    pub fn run_kernel(&self, backend: Backend) -> Outcome {
        let config = Config {
            mode: engine::config::Mode::Kernel,
            local_networks: vec!["10.244.1.0/24".parse().expect("valid network")],
            ..self.config.clone()
        };
        let case = Case {
            name: self.name.clone(),
            files: self.files.clone(),
            lock: self.lock.clone(),
            live_dump: self.live_dump.clone(),
            config,
        };
        match backend {
            Backend::Iptables => case.run_iptables(),
            Backend::Nftables => case.run_nftables(),
        }
    }

    /// The pipeline with the iptables backend against `live.save`, listeners unknown.
    pub fn run_iptables(&self) -> Outcome {
        let config = Config {
            backend: Backend::Iptables,
            ..self.config.clone()
        };
        run(
            &self.files,
            &self.lock,
            &self.observed_iptables(),
            &config,
            false,
        )
    }

    /// The same with the nftables backend, against the same owned state (`live.save` is an
    /// iptables dump: its foreign and stray rules have no nftables meaning, portald's own
    /// rules have, in the dialect-neutral model).
    pub fn run_nftables(&self) -> Outcome {
        let config = Config {
            backend: Backend::Nftables,
            ..self.config.clone()
        };
        let iptables = self.observed_iptables();
        let observed = Observed {
            live: planners::Live {
                owned: iptables.live.owned,
                ..Default::default()
            },
            ..Observed::default()
        };
        run(&self.files, &self.lock, &observed, &config, false)
    }
}

/// `config.json`: `portal_cidr`, `proxy_ports` (`LOW-HIGH`), `allow_external_ips`; all optional.
fn read_config(path: &Path, case: &str) -> Config {
    let mut config = Config::default();
    let Ok(text) = std::fs::read_to_string(path) else {
        return config;
    };
    let value: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("case `{case}`: config.json is not JSON: {e}"));
    let object = value
        .as_object()
        .unwrap_or_else(|| panic!("case `{case}`: config.json is not an object"));
    for (key, v) in object {
        match key.as_str() {
            "portal_cidr" => {
                config.portal_cidr = v
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("case `{case}`: bad portal_cidr {v}"))
            }
            "proxy_ports" => {
                config.proxy_ports = v
                    .as_str()
                    .and_then(|s| s.parse::<PortRange>().ok())
                    .unwrap_or_else(|| panic!("case `{case}`: bad proxy_ports {v}"))
            }
            "allow_external_ips" => {
                config.allow_external_ips = v
                    .as_bool()
                    .unwrap_or_else(|| panic!("case `{case}`: bad allow_external_ips {v}"))
            }
            other => panic!("case `{case}`: unknown config.json key `{other}`"),
        }
    }
    config
}
