//! Settings that shape the intended state (portal CIDR, proxy ports, mode, dialect).

use ipnetwork::Ipv4Network;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::net::Ipv4Addr;
use std::ops::RangeInclusive;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Iptables,
    Nftables,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Backend::Iptables => "iptables",
            Backend::Nftables => "nftables",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// The seed's design: NAT to a local proxy listener, proxy to endpoints.
    Userspace,
    /// DNAT straight to the endpoints in the kernel; the daemon only reconciles.
    Kernel,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Userspace => "userspace",
            Mode::Kernel => "kernel",
        })
    }
}

/// An inclusive port range written `LOW-HIGH`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PortRange {
    pub low: u16,
    pub high: u16,
}

impl PortRange {
    pub fn iter(&self) -> RangeInclusive<u16> {
        self.low..=self.high
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.low..=self.high).contains(&port)
    }
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (low, high) = s
            .split_once('-')
            .ok_or_else(|| format!("`{s}` is not a range LOW-HIGH"))?;
        let low: u16 = low
            .trim()
            .parse()
            .map_err(|_| format!("`{low}` is not a port"))?;
        let high: u16 = high
            .trim()
            .parse()
            .map_err(|_| format!("`{high}` is not a port"))?;
        if low == 0 || low > high {
            return Err(format!("`{s}` is empty or starts at 0"));
        }
        Ok(PortRange { low, high })
    }
}

impl TryFrom<String> for PortRange {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<PortRange> for String {
    fn from(value: PortRange) -> Self {
        value.to_string()
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.low, self.high)
    }
}

/// Proxy ports default below Linux's ephemeral range (32768-60999) so outgoing
/// connections never hold them.
pub const DEFAULT_PROXY_PORTS: PortRange = PortRange {
    low: 20000,
    high: 32767,
};

/// Bounds on what one input file (a services file or the lock) may cost to read: a file
/// past them is reported and skipped, and the others load as usual.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputLimits {
    /// Largest file read, in bytes (`--max-file-bytes`).
    pub max_file_bytes: u64,
    /// Deepest nesting of collections in a services file, in levels: block indentation
    /// levels plus open `[`/`{` (`--max-nesting-depth`). Kept under serde_yaml's own
    /// recursion limit of 128, so whatever passes can be parsed.
    pub max_nesting_depth: usize,
}

/// 4 MiB: a thousand times a large manifest, well under what the daemon should hold for
/// one file.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;
/// Kubernetes objects nest a few dozen levels at most (a CRD's schema is among the deepest).
pub const DEFAULT_MAX_NESTING_DEPTH: usize = 64;

impl Default for InputLimits {
    fn default() -> Self {
        InputLimits {
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
            max_nesting_depth: DEFAULT_MAX_NESTING_DEPTH,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub portal_cidr: Ipv4Network,
    pub proxy_ports: PortRange,
    pub backend: Backend,
    pub mode: Mode,
    /// Whether `spec.externalIPs` may capture traffic (off: a file could hijack any address).
    pub allow_external_ips: bool,
    /// Where host-path DNAT sends traffic: the proxy listens on all addresses, this one is
    /// reachable from OUTPUT without a route.
    pub host_target: Ipv4Addr,
    /// Networks directly attached to this host (read from its routes). In kernel mode a
    /// client on one of them whose connection to a portal went to an endpoint on the same
    /// network would be answered by the endpoint directly, bypassing the host's reverse
    /// translation, so such connections (and only those) are masqueraded.
    pub local_networks: Vec<planners::Net>,
    /// Strict multi-host mode: a service with no lock entry gets no VIP and is held, rather
    /// than given one another host may give to a different service.
    pub require_lock: bool,
    /// What reading one input file may cost.
    pub input_limits: InputLimits,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            portal_cidr: "10.11.0.0/16".parse().expect("valid default CIDR"),
            proxy_ports: DEFAULT_PROXY_PORTS,
            backend: Backend::Iptables,
            mode: Mode::Userspace,
            allow_external_ips: false,
            host_target: Ipv4Addr::LOCALHOST,
            local_networks: Vec::new(),
            require_lock: false,
            input_limits: InputLimits::default(),
        }
    }
}
