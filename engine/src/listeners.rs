//! The proxy listener set, as compile intends it and observe finds it: the shared vocabulary
//! of the intent, the live state, the diff, the plan and the daemon's status.

use crate::model::{Endpoint, ProxyPort, Vip};
use planners::Protocol;
use serde::{Deserialize, Serialize};

/// A proxy listener, identified by protocol and port.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
pub struct ListenerKey {
    #[serde(rename = "listener_protocol")]
    pub protocol: Protocol,
    #[serde(rename = "listener_port")]
    pub port: ProxyPort,
}

impl std::fmt::Display for ListenerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.protocol, self.port)
    }
}

/// What one proxy listener serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Listener {
    /// `ns/name:port`, as in the rule comments.
    pub name: String,
    pub vip: Vip,
    pub service_port: u16,
    pub endpoints: Vec<Endpoint>,
    pub affinity_seconds: Option<u32>,
}

/// A listener with its key, for JSON (whose maps need string keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ListenerEntry {
    #[serde(flatten)]
    pub key: ListenerKey,
    #[serde(flatten)]
    pub listener: Listener,
}

/// Listener maps as lists in JSON, whose maps need string keys.
pub mod listeners_as_list {
    use super::{Listener, ListenerEntry, ListenerKey};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    pub fn serialize<S: Serializer>(
        map: &BTreeMap<ListenerKey, Listener>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let list: Vec<ListenerEntry> = map
            .iter()
            .map(|(k, l)| ListenerEntry {
                key: *k,
                listener: l.clone(),
            })
            .collect();
        list.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<ListenerKey, Listener>, D::Error> {
        let list = Vec::<ListenerEntry>::deserialize(d)?;
        Ok(list.into_iter().map(|e| (e.key, e.listener)).collect())
    }
}
