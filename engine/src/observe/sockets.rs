//! Which local ports are held, and by which process: `/proc/net/{tcp,udp}{,6}` and
//! `/proc/<pid>/fd`.

use planners::Protocol;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A listening TCP socket or bound UDP socket.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, schemars::JsonSchema,
)]
pub struct HeldSocket {
    pub protocol: Protocol,
    pub port: u16,
    pub pid: Option<u32>,
    pub command: Option<String>,
}

impl HeldSocket {
    /// Held by a portald process (ours) rather than a foreign one.
    pub fn is_portald(&self) -> bool {
        self.command.as_deref() == Some("portald")
    }
}

/// Parses one `/proc/net/{tcp,udp}[6]` table: (local port, inode) of each listening TCP
/// socket (state 0A) or unconnected UDP socket (state 07).
pub fn parse_proc_net(text: &str, protocol: Protocol) -> Vec<(u16, u64)> {
    let wanted = match protocol {
        Protocol::Tcp => "0A",
        Protocol::Udp => "07",
    };
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let local = fields.get(1)?;
            let state = fields.get(3)?;
            if *state != wanted {
                return None;
            }
            let port = u16::from_str_radix(local.rsplit(':').next()?, 16).ok()?;
            let inode = fields.get(9)?.parse().ok()?;
            Some((port, inode))
        })
        .collect()
}

/// Reads the live socket table of this network namespace. Unreadable entries are skipped:
/// processes come and go while we read.
pub fn read_sockets() -> Vec<HeldSocket> {
    let mut by_inode: BTreeMap<u64, (Protocol, u16)> = BTreeMap::new();
    for (file, protocol) in [
        ("/proc/net/tcp", Protocol::Tcp),
        ("/proc/net/tcp6", Protocol::Tcp),
        ("/proc/net/udp", Protocol::Udp),
        ("/proc/net/udp6", Protocol::Udp),
    ] {
        if let Ok(text) = std::fs::read_to_string(file) {
            for (port, inode) in parse_proc_net(&text, protocol) {
                by_inode.insert(inode, (protocol, port));
            }
        }
    }
    let owners = socket_owners();
    let mut out: Vec<HeldSocket> = by_inode
        .into_iter()
        .map(|(inode, (protocol, port))| {
            let owner = owners.get(&inode);
            HeldSocket {
                protocol,
                port,
                pid: owner.map(|o| o.0),
                command: owner.map(|o| o.1.clone()),
            }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Socket inode → (pid, command), from `/proc/<pid>/fd` links `socket:[inode]`.
fn socket_owners() -> BTreeMap<u64, (u32, String)> {
    let mut owners = BTreeMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return owners;
    };
    for entry in procs.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let command = std::fs::read_to_string(entry.path().join("comm"))
            .map(|c| c.trim().to_string())
            .unwrap_or_default();
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let target = target.to_string_lossy();
            if let Some(inode) = target
                .strip_prefix("socket:[")
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse().ok())
            {
                owners.entry(inode).or_insert((pid, command.clone()));
            }
        }
    }
    owners
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listening_tcp_and_bound_udp_sockets() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000:4E20 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:8C3A 0100007F:4E20 01 00000000:00000000 00:00000000 00000000     0        0 999 1\n";
        assert_eq!(parse_proc_net(tcp, Protocol::Tcp), vec![(20000, 12345)]);
        let udp = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops\n  5: 00000000:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 4242 2 0000000000000000 0\n";
        assert_eq!(parse_proc_net(udp, Protocol::Udp), vec![(53, 4242)]);
    }
}
