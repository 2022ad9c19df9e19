//! Reads the packet and byte counters of portald's portals from `nft -j list table ip
//! portald`: each element of a NAT map (a portal) carries its own counter.

use super::schema::{Dump, Element, Item};
use super::{map_name, Kind, FAMILY, TABLE};
use crate::{Invocation, ParseError, Path};
use std::collections::BTreeMap;

/// Packets and bytes per (service port, path).
pub type PortalCounters = BTreeMap<(String, Path), (u64, u64)>;

/// `nft -j list table ip portald`: portald's table alone, counters included.
pub fn counters_command() -> Invocation {
    Invocation::new("nft", &["-j", "list", "table", FAMILY, TABLE])
}

/// Packets and bytes per (service port, path), read from the elements of the NAT maps of
/// a libnftables JSON dump (the service port is the element's comment, as in
/// [`PortalRule::comment`](crate::PortalRule)). The NAT maps sit on nat hooks, which the
/// kernel runs for a connection's first packet only (later ones follow conntrack): the
/// packets are new connections (UDP: new flows), the bytes those first packets'.
///
/// Elements without a comment or a counter, of other maps or other tables, are skipped; a
/// service port in two maps of one path (one lookup shadows the other) is summed.
///
/// # Errors
/// A [`ParseError`] when the dump is not JSON with an `nftables` list.
pub fn portal_counters(dump: &str) -> Result<PortalCounters, ParseError> {
    let root = Dump::read(dump)?;
    let maps: BTreeMap<String, Path> = Path::ALL
        .into_iter()
        .flat_map(|path| Kind::NAT.map(|kind| (map_name(path, kind), path)))
        .collect();
    let mut out = BTreeMap::new();
    for raw in root.nftables {
        let Some(map) = serde_json::from_str::<Item>(raw.get())
            .ok()
            .and_then(|item| item.map)
        else {
            continue;
        };
        let ours = map.family.as_deref() == Some(FAMILY) && map.table.as_deref() == Some(TABLE);
        let Some(path) = map.name.as_deref().and_then(|name| maps.get(name)) else {
            continue;
        };
        if !ours {
            continue;
        }
        for elem in map.elements() {
            // A map element is `[key, data]`; its key holds comment and counter.
            let Element::Mapped(key, _) = Element::read(elem) else {
                continue;
            };
            let (Some(comment), Some(counter)) = (key.comment(), key.counter()) else {
                continue;
            };
            let entry: &mut (u64, u64) = out.entry((comment.to_string(), *path)).or_default();
            entry.0 += counter.packets;
            entry.1 += counter.bytes;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// As `nft -j list table ip portald` prints it (nftables 1.0.6) after three TCP
    /// connections through one portal's container path and two through the other's host
    /// path, with a foreign table's map of the same name and an element of the refusal set.
    const DUMP: &str = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}}, {"table": {"family": "ip", "name": "portald", "handle": 7}},
{"map": {"family": "ip", "name": "container_redirect", "table": "portald", "type": ["ipv4_addr", "inet_proto", "inet_service"], "handle": 1, "map": "inet_service", "elem": [[{"elem": {"val": {"concat": ["10.11.0.1", "tcp", 80]}, "comment": "default/apache-service:80", "counter": {"packets": 3, "bytes": 180}}}, 34001], [{"elem": {"val": {"concat": ["10.11.0.2", "udp", 53]}, "comment": "kube-system/dns:dns-udp", "counter": {"packets": 0, "bytes": 0}}}, 34002]], "stmt": [{"counter": null}]}},
{"map": {"family": "ip", "name": "host_services", "table": "portald", "type": ["ipv4_addr", "inet_proto", "inet_service"], "handle": 5, "map": "verdict", "elem": [[{"elem": {"val": {"concat": ["10.11.0.4", "tcp", 80]}, "comment": "default/web:80", "counter": {"packets": 2, "bytes": 120}}}, {"goto": {"target": "svc-h-10.11.0.4-tcp-80"}}], [{"elem": {"val": {"concat": ["10.11.0.5", "tcp", 80]}, "counter": {"packets": 9, "bytes": 540}}}, {"goto": {"target": "svc-h-10.11.0.5-tcp-80"}}]], "stmt": [{"counter": null}]}},
{"set": {"family": "ip", "name": "container_no_endpoints", "table": "portald", "type": ["ipv4_addr", "inet_proto", "inet_service"], "handle": 9, "elem": [{"elem": {"val": {"concat": ["10.11.0.5", "tcp", 80]}, "comment": "default/empty:80"}}]}},
{"map": {"family": "ip", "name": "container_redirect", "table": "other", "type": ["ipv4_addr", "inet_proto", "inet_service"], "handle": 2, "map": "inet_service", "elem": [[{"elem": {"val": {"concat": ["10.11.0.1", "tcp", 80]}, "comment": "default/apache-service:80", "counter": {"packets": 50, "bytes": 5000}}}, 1]], "stmt": [{"counter": null}]}}
]}"#;

    #[test]
    fn portal_counters_are_read_per_service_port_and_path_from_the_nat_maps() {
        let counters = portal_counters(DUMP).unwrap();
        assert_eq!(
            counters,
            BTreeMap::from([
                (
                    ("default/apache-service:80".to_string(), Path::Container),
                    (3, 180)
                ),
                (("default/web:80".to_string(), Path::Host), (2, 120)),
                (
                    ("kube-system/dns:dns-udp".to_string(), Path::Container),
                    (0, 0)
                ),
            ])
        );
    }

    #[test]
    fn a_dump_that_is_not_json_is_an_error() {
        assert!(portal_counters("Error: No such file or directory").is_err());
        assert!(portal_counters("{\"tables\": []}").is_err());
    }
}
