//! The iptables dialect: portald's portals as rules in owned `PORTAL-*` chains, written with
//! `iptables-restore --noflush` and read back from `iptables-save`.
//!
//! Layout, one owned chain per [`Slot`], each hooked by a commented jump at the top of a
//! built-in chain:
//!
//! | slot | table | chain | hook |
//! | --- | --- | --- | --- |
//! | container | nat | `PORTAL-CONTAINER` | `PREROUTING` |
//! | host | nat | `PORTAL-HOST` | `OUTPUT` |
//! | container-reject | filter | `PORTAL-CONTAINER-REJECT` | `FORWARD` and `INPUT` |
//! | host-reject | filter | `PORTAL-HOST-REJECT` | `OUTPUT` |
//! | masquerade | nat | `PORTAL-MASQUERADE` | `POSTROUTING` |
//! | proxy-guard | filter | `PORTAL-PROXY-GUARD` | `INPUT` (new connections) |
//! | forward | filter | `PORTAL-FORWARD` | `FORWARD` |
//!
//! One rule per portal, spelled exactly as `iptables-save` prints it, so a rendered state
//! and a dump of the applied state are the same text:
//! `-A PORTAL-CONTAINER -d 10.11.0.1/32 -p tcp -m comment --comment "ns/svc:80" -m tcp
//! --dport 80 -j REDIRECT --to-ports 33945` (userspace mode), `... -j PORTAL-C-0A0B0001-TCP-80`
//! (kernel mode: a chain of the portal's own that DNATs to one endpoint, chosen by a
//! `statistic` cascade of probabilities 1/n, 1/(n-1), ..., 1, and, with `ClientIP` affinity,
//! remembered per client address by `recent` lists named after each endpoint), or
//! `... -j REJECT --reject-with tcp-reset` (or `icmp-port-unreachable` for UDP) in the filter
//! table (no endpoints). A container-path refusal matches the original destination
//! (`-m conntrack --ctorigdst VIP --ctorigdstport PORT`): TCP is reset where it is forwarded;
//! UDP gets a second line, a `-j REDIRECT` (port kept) in `PORTAL-CONTAINER`, which delivers
//! it to this host, to be refused from `INPUT` (see [`render::rule_spec`] for why).
//! Every chain whose name starts with `PORTAL-` is portald's space.
//!
//! Facts about `iptables-restore --noflush` (1.8.9, nf_tables backend) the batches rely on,
//! each checked against the real kernel by `tests/iptables_kernel.rs`:
//! - each table's section (up to its `COMMIT`) is one transaction: if any line fails,
//!   nothing of it is applied;
//! - `:CHAIN - [0:0]` for a chain that exists FLUSHES it, even in `--noflush` mode, and a
//!   declaration after `-A` lines for the same chain in one batch throws those rules away;
//!   so a batch declares only chains it creates or refills, and before their rules;
//! - `--test` only parses: it does not notice a `-D` of a rule or chain that is not there.

mod parse;
mod render;
pub mod tokenize;

use crate::{Change, Dialect, Invocation, Live, NatState, ParseError, PortalKey, Slot};

pub use parse::{builtin_policy, is_terminal_target, other_flavour_foreign};
pub use render::rule_spec;

/// The table of portald's NAT chains.
pub const TABLE: &str = "nat";
/// The table of portald's refusals.
pub const FILTER: &str = "filter";
/// Chains whose name starts with this belong to portald.
pub const CHAIN_PREFIX: &str = "PORTAL-";
/// Seconds `iptables-restore` waits for the xtables lock before giving up.
pub const LOCK_WAIT_SECONDS: &str = "5";

/// The owned chain of a slot.
pub fn chain(slot: Slot) -> &'static str {
    match slot {
        Slot::Container => "PORTAL-CONTAINER",
        Slot::Host => "PORTAL-HOST",
        Slot::ContainerReject => "PORTAL-CONTAINER-REJECT",
        Slot::HostReject => "PORTAL-HOST-REJECT",
        Slot::Masquerade => "PORTAL-MASQUERADE",
        Slot::ProxyGuard => "PORTAL-PROXY-GUARD",
        Slot::Forward => "PORTAL-FORWARD",
    }
}

/// The table a slot's chain lives in.
pub fn table(slot: Slot) -> &'static str {
    match slot {
        Slot::ContainerReject | Slot::HostReject | Slot::ProxyGuard | Slot::Forward => FILTER,
        Slot::Container | Slot::Host | Slot::Masquerade => TABLE,
    }
}

/// The built-in chain a slot's hook jumps from.
pub fn hook_chain(slot: Slot) -> &'static str {
    match slot {
        Slot::Container => "PREROUTING",
        Slot::Host | Slot::HostReject => "OUTPUT",
        Slot::ContainerReject | Slot::Forward => "FORWARD",
        Slot::Masquerade => "POSTROUTING",
        Slot::ProxyGuard => "INPUT",
    }
}

/// A second built-in chain that jumps to the slot's chain with the same hook rule: INPUT
/// for container-path refusals of UDP, redirected here (see [`render::rule_spec`]).
pub fn second_hook_chain(slot: Slot) -> Option<&'static str> {
    match slot {
        Slot::ContainerReject => Some("INPUT"),
        _ => None,
    }
}

/// Every built-in chain that jumps to a slot's chain, in `iptables-save` order.
pub fn hook_chains(slot: Slot) -> Vec<&'static str> {
    second_hook_chain(slot)
        .into_iter()
        .chain([hook_chain(slot)])
        .collect()
}

/// The comment that marks a slot's hook as portald's.
pub fn hook_comment(slot: Slot) -> &'static str {
    match slot {
        Slot::Container => "portald:container-portals",
        Slot::Host => "portald:host-portals",
        Slot::ContainerReject => "portald:container-rejects",
        Slot::HostReject => "portald:host-rejects",
        Slot::Masquerade => "portald:masquerade",
        Slot::ProxyGuard => "portald:proxy-guard",
        Slot::Forward => "portald:forward",
    }
}

/// The slot whose owned chain has this name in this table, if any.
pub fn slot_of_chain(table_name: &str, name: &str) -> Option<Slot> {
    Slot::ALL
        .into_iter()
        .find(|s| chain(*s) == name && table(*s) == table_name)
}

/// The chain of a kernel-mode portal: `PORTAL-C-0A0B0001-TCP-80` (28 bytes at most, the
/// kernel's limit for a chain name).
pub fn service_chain(key: &PortalKey) -> String {
    format!(
        "PORTAL-{}-{:08X}-{}-{}",
        key.path.as_str()[..1].to_ascii_uppercase(),
        u32::from(key.vip),
        key.protocol.as_str().to_ascii_uppercase(),
        key.port
    )
}

/// The `recent` list of one endpoint of a portal: named by the endpoint, so an endpoint that
/// stays keeps its clients across changes.
pub fn affinity_list(key: &PortalKey, endpoint: &std::net::SocketAddrV4) -> String {
    format!(
        "{}-{:08X}-{}",
        service_chain(key),
        u32::from(*endpoint.ip()),
        endpoint.port()
    )
}

/// How a stray's `chain` names a chain: bare in `nat`, `table/chain` elsewhere.
pub(crate) fn stray_location(table_name: &str, chain_name: &str) -> String {
    if table_name == TABLE {
        chain_name.to_string()
    } else {
        format!("{table_name}/{chain_name}")
    }
}

/// The table and chain a stray's `chain` names.
pub(crate) fn split_location(location: &str) -> (&str, &str) {
    location.split_once('/').unwrap_or((TABLE, location))
}

/// portald's iptables dialect.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Iptables;

impl Dialect for Iptables {
    fn name(&self) -> &'static str {
        "iptables"
    }

    /// `iptables-save` of every table: foreign rules anywhere (a filter DROP of a VIP, say)
    /// matter for conflict reports, not only those in `nat`.
    fn observe_command(&self) -> Invocation {
        Invocation::new("iptables-save", &[])
    }

    fn apply_command(&self) -> Invocation {
        Invocation::new("iptables-restore", &["-w", LOCK_WAIT_SECONDS, "--noflush"])
    }

    fn check_command(&self) -> Invocation {
        Invocation::new(
            "iptables-restore",
            &["-w", LOCK_WAIT_SECONDS, "--noflush", "--test"],
        )
    }

    fn render_state(&self, state: &NatState) -> String {
        render::state(state)
    }

    fn render_batch(&self, changes: &[Change]) -> String {
        render::batch(changes)
    }

    fn parse_live(&self, dump: &str) -> Result<Live, ParseError> {
        parse::live(dump)
    }
}
