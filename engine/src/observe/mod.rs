//! Observing the live state: portald's kernel rules (through the process seam), the
//! listeners it runs, and which ports other processes hold.

pub mod bridges;
pub mod companion;
pub mod forward_policy;
pub mod routes;
pub mod sockets;

use crate::config::Backend;
use crate::exec::{Exec, ExecError};
use crate::listeners::{Listener, ListenerEntry, ListenerKey};
use planners::{Dialect, Live, ParseError, Protocol};
use serde::{Deserialize, Serialize};
use sockets::HeldSocket;
use std::collections::{BTreeMap, BTreeSet};

/// The dialect object for a backend.
pub fn dialect(backend: Backend) -> &'static dyn Dialect {
    match backend {
        Backend::Iptables => &planners::Iptables,
        Backend::Nftables => &planners::Nftables,
    }
}

/// What is live now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// The raw dump the kernel tool printed (kept so a snapshot can be replayed exactly).
    pub dump: String,
    pub live: Live,
    pub listeners: BTreeMap<ListenerKey, Listener>,
    pub sockets: Vec<HeldSocket>,
    /// What portald owns through the other backend, when it owns anything there (with
    /// nftables, the iptables side is read flavour by flavour in `companions`).
    pub other: Option<(Backend, Live)>,
    /// The iptables flavours beside the backend: the companion forward chain portald keeps
    /// there, and (with nftables) what an iptables run left.
    pub companions: Vec<companion::Companion>,
    /// This host's node state file (proxy ports, VIPs it chose without a lock entry): not
    /// kernel state, but node-local like it, and read by allocation the same way.
    pub node_state: crate::allocate::Lock,
}

impl Observed {
    /// Ports held by processes other than portald and not by a listener portald reports.
    pub fn foreign_ports(&self) -> BTreeSet<(Protocol, u16)> {
        self.sockets
            .iter()
            .filter(|s| !s.is_portald())
            .filter(|s| {
                !self.listeners.contains_key(&ListenerKey {
                    protocol: s.protocol,
                    port: crate::model::ProxyPort(s.port),
                })
            })
            .map(|s| (s.protocol, s.port))
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ObserveError {
    #[error("cannot read the live {dialect} state")]
    Exec {
        dialect: &'static str,
        #[source]
        source: ExecError,
    },
    #[error("cannot parse the live state")]
    Parse(#[from] ParseError),
    #[error("snapshot `{path}` is not valid: {message}")]
    Snapshot { path: String, message: String },
}

/// Reads the kernel rules through `exec` and the socket table from `/proc`.
pub fn observe(
    backend: Backend,
    exec: &dyn Exec,
    listeners: BTreeMap<ListenerKey, Listener>,
) -> Result<Observed, ObserveError> {
    let dialect = dialect(backend);
    let dump = exec
        .run(&dialect.observe_command(), None)
        .map_err(|source| ObserveError::Exec {
            dialect: dialect.name(),
            source,
        })?
        .stdout;
    let live = dialect.parse_live(&dump)?;
    Ok(Observed {
        dump,
        live,
        listeners,
        sockets: sockets::read_sockets(),
        other: None,
        companions: Vec::new(),
        node_state: Default::default(),
    })
}

/// The backend that is not `backend`.
pub fn other_backend(backend: Backend) -> Backend {
    match backend {
        Backend::Iptables => Backend::Nftables,
        Backend::Nftables => Backend::Iptables,
    }
}

/// What portald owns through the other backend, if anything. A host without the other
/// tool, or whose dump cannot be read, has nothing of portald's there that could be
/// removed anyway; that is logged, not an error.
pub fn observe_other(backend: Backend, exec: &dyn Exec) -> Option<(Backend, Live)> {
    if backend == Backend::Nftables {
        // Both iptables flavours are read as companions: one of them may hold a chain
        // portald still wants (see `companion`).
        return None;
    }
    let other = other_backend(backend);
    let dialect = dialect(other);
    let dump = match exec.run(&dialect.observe_command(), None) {
        Ok(out) => out.stdout,
        Err(e) => {
            tracing::debug!("not looking at {other}: {e}");
            return None;
        }
    };
    match dialect.parse_live(&dump) {
        Ok(live) if !(live.owned.is_empty() && live.stray.is_empty()) => Some((other, live)),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!("cannot read the {other} state to retire it: {e}");
            None
        }
    }
}

/// The foreign rules of the iptables flavour portald does not drive, read for conflicts
/// only: with iptables, `iptables-legacy-save` when the dump came from iptables-nft and
/// `iptables-nft-save` when it came from iptables-legacy; with nftables, whose listing
/// already holds iptables-nft's rules, `iptables-legacy-save`. Both flavours' tables hook
/// into netfilter side by side, so a legacy DNAT of a VIP takes its traffic while portald's
/// own view shows nothing amiss. A host without that tool has none of its rules.
pub fn observe_other_flavour(
    backend: Backend,
    dump: &str,
    exec: &dyn Exec,
) -> Vec<planners::ForeignRule> {
    // iptables-nft marks its dump's header `(nf_tables)`; legacy's header has no marker.
    let driven_by_legacy = backend == Backend::Iptables
        && dump
            .lines()
            .find(|l| l.starts_with("# Generated by"))
            .is_some_and(|l| !l.contains("(nf_tables)"));
    let (tool, flavour) = if driven_by_legacy {
        ("iptables-nft-save", "iptables-nft")
    } else {
        ("iptables-legacy-save", "iptables-legacy")
    };
    let dump = match exec.run(&planners::Invocation::new(tool, &[]), None) {
        Ok(out) => out.stdout,
        Err(e) => {
            tracing::debug!("not looking at {flavour}: {e}");
            return Vec::new();
        }
    };
    match planners::iptables::other_flavour_foreign(&dump, flavour) {
        Ok(rules) => rules,
        Err(e) => {
            tracing::warn!("cannot read the {flavour} rules for conflicts: {e}");
            Vec::new()
        }
    }
}

/// A captured live state (`portald snapshot`), replayable with `plan --live FILE`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Snapshot {
    pub format_version: u32,
    pub backend: Backend,
    /// The kernel tool's dump, as printed.
    pub dump: String,
    #[serde(default)]
    pub listeners: Vec<ListenerEntry>,
    #[serde(default)]
    pub sockets: Vec<HeldSocket>,
}

pub const SNAPSHOT_FORMAT_VERSION: u32 = 1;

impl Snapshot {
    pub fn from_observed(backend: Backend, observed: &Observed) -> Self {
        Snapshot {
            format_version: SNAPSHOT_FORMAT_VERSION,
            backend,
            dump: observed.dump.clone(),
            listeners: observed
                .listeners
                .iter()
                .map(|(k, l)| ListenerEntry {
                    key: *k,
                    listener: l.clone(),
                })
                .collect(),
            sockets: observed.sockets.clone(),
        }
    }

    pub fn render(&self) -> String {
        let mut text = serde_json::to_string_pretty(self).expect("snapshot serializes");
        text.push('\n');
        text
    }
}

/// Reads `--live FILE`: a snapshot, or a raw dump as the backend's tool prints it.
pub fn from_file_text(backend: Backend, text: &str, path: &str) -> Result<Observed, ObserveError> {
    let is_snapshot = text.trim_start().starts_with('{') && text.contains("\"format_version\"");
    if !is_snapshot {
        let live = dialect(backend).parse_live(text)?;
        return Ok(Observed {
            dump: text.to_string(),
            live,
            ..Observed::default()
        });
    }
    let snapshot: Snapshot = serde_json::from_str(text).map_err(|e| ObserveError::Snapshot {
        path: path.to_string(),
        message: e.to_string(),
    })?;
    if snapshot.backend != backend {
        return Err(ObserveError::Snapshot {
            path: path.to_string(),
            message: format!(
                "it was taken with --backend {}, not {backend}",
                snapshot.backend
            ),
        });
    }
    let live = dialect(backend).parse_live(&snapshot.dump)?;
    Ok(Observed {
        dump: snapshot.dump,
        live,
        listeners: snapshot
            .listeners
            .into_iter()
            .map(|e| (e.key, e.listener))
            .collect(),
        sockets: snapshot.sockets,
        other: None,
        companions: Vec::new(),
        node_state: Default::default(),
    })
}
