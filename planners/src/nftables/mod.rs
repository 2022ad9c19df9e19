//! The nftables dialect: portald's whole NAT state lives in one table, `ip portald`.
//!
//! Layout (one path shown; `host` is the same with `output` as its base chain):
//!
//! ```text
//! table ip portald {
//!     map container_redirect {            # Action::Redirect: key -> proxy port
//!         type ipv4_addr . inet_proto . inet_service : inet_service
//!         elements = { 10.11.0.1 . tcp . 80 comment "default/apache-service:80" : 12345 }
//!     }
//!     map container_dnat {                # Action::DnatLocal: key -> local addr . port
//!         type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service
//!     }
//!     chain container {                   # Scaffold::Chain(Container): the two lookups
//!         meta l4proto { tcp, udp } redirect to :ip daddr . meta l4proto . th dport map @container_redirect
//!         meta l4proto { tcp, udp } dnat ip to ip daddr . meta l4proto . th dport map @container_dnat
//!     }
//!     chain prerouting {                  # Scaffold::Hook(Container)
//!         type nat hook prerouting priority dstnat - 10; policy accept;
//!         jump container
//!     }
//! }
//! ```
//!
//! A portal rule is one map element, so a lookup costs the same with one service or ten
//! thousand, and adding or removing a service touches exactly one element. The element's
//! comment carries the rule's [`Comment`](crate::Comment), which is how a dump is read back
//! into the exact [`PortalRule`](crate::PortalRule).

mod expr;
mod json;
mod parse;
mod render;

use crate::{Action, Change, Dialect, Invocation, Live, NatState, ParseError, Path, PortalKey};

pub use json::render_json;

/// The nftables dialect (`nft`, libnftables JSON dumps).
#[derive(Debug, Clone, Copy, Default)]
pub struct Nftables;

/// Address family of portald's table: portals are IPv4 only.
pub const FAMILY: &str = "ip";
/// The one table portald owns; nothing outside it is ever written.
pub const TABLE: &str = "portald";

/// Key type shared by every map: a portal is caught by destination, protocol and port.
const KEY_TYPE: [&str; 3] = ["ipv4_addr", "inet_proto", "inet_service"];
/// The lookup key expression, matching [`KEY_TYPE`].
const KEY_EXPR: &str = "ip daddr . meta l4proto . th dport";
/// `th dport` needs a transport protocol match in front of it (nft refuses the rule
/// otherwise); only TCP and UDP have ports portald can serve.
const L4_MATCH: &str = "meta l4proto { tcp, udp }";

/// Which map of a path an action's element lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    Redirect,
    Dnat,
}

impl Kind {
    /// The order of the lookup rules in a path's chain: with the same key in both maps the
    /// redirect wins in the kernel, so the parse keeps the redirect element too.
    pub(crate) const ALL: [Kind; 2] = [Kind::Redirect, Kind::Dnat];

    pub(crate) fn of(action: &Action) -> Kind {
        match action {
            Action::Redirect { .. } => Kind::Redirect,
            Action::DnatLocal { .. } => Kind::Dnat,
        }
    }

    /// The map's data type as nft spells it (also its JSON `map` field).
    pub(crate) fn data_type(self) -> &'static str {
        match self {
            Kind::Redirect => "inet_service",
            Kind::Dnat => "ipv4_addr . inet_service",
        }
    }
}

/// `container_redirect`, `host_dnat`, ...
pub(crate) fn map_name(path: Path, kind: Kind) -> String {
    let suffix = match kind {
        Kind::Redirect => "redirect",
        Kind::Dnat => "dnat",
    };
    format!("{}_{suffix}", path.as_str())
}

/// The regular chain holding a path's lookups: `container` or `host`.
pub(crate) fn chain_name(path: Path) -> &'static str {
    path.as_str()
}

/// The base chain of a path's hook, named after the netfilter hook it sits on.
pub(crate) fn hook_chain(path: Path) -> &'static str {
    match path {
        Path::Container => "prerouting",
        Path::Host => "output",
    }
}

/// The base chain's declaration. Priority -110 is `dstnat - 10`: portals are looked up
/// before the usual dstnat rules (iptables-nft's nat PREROUTING/OUTPUT, Docker's, an
/// admin's at `dstnat`), so a foreign DNAT of the same address cannot shadow a portal.
/// nft accepts the name `dstnat` only at the prerouting hook, so output spells it as a
/// number; both are listed back exactly as written here.
pub(crate) fn hook_spec(path: Path) -> &'static str {
    match path {
        Path::Container => "type nat hook prerouting priority dstnat - 10; policy accept;",
        Path::Host => "type nat hook output priority -110; policy accept;",
    }
}

/// The base chain's only rule.
pub(crate) fn jump_rule(path: Path) -> String {
    format!("jump {}", chain_name(path))
}

/// A path chain's lookup rule for one map, exactly as `nft list` prints it (so the compact
/// rendering of the dump's JSON can be compared with it).
pub(crate) fn lookup_rule(path: Path, kind: Kind) -> String {
    let map = map_name(path, kind);
    match kind {
        Kind::Redirect => format!("{L4_MATCH} redirect to :{KEY_EXPR} map @{map}"),
        Kind::Dnat => format!("{L4_MATCH} dnat ip to {KEY_EXPR} map @{map}"),
    }
}

/// `10.11.0.1 . tcp . 80`: an element's key.
pub(crate) fn element_key(key: &PortalKey) -> String {
    format!("{} . {} . {}", key.vip, key.protocol, key.port)
}

/// `12345` or `127.0.0.1 . 12345`: an element's data.
pub(crate) fn element_value(action: &Action) -> String {
    match action {
        Action::Redirect { to_port } => to_port.to_string(),
        Action::DnatLocal { to } => format!("{} . {}", to.ip(), to.port()),
    }
}

impl Dialect for Nftables {
    fn name(&self) -> &'static str {
        "nftables"
    }

    fn observe_command(&self) -> Invocation {
        // The whole ruleset, not only portald's table: foreign rules are read for conflicts.
        Invocation::new("nft", &["-j", "list", "ruleset"])
    }

    fn apply_command(&self) -> Invocation {
        Invocation::new("nft", &["-f", "-"])
    }

    fn check_command(&self) -> Invocation {
        Invocation::new("nft", &["-c", "-f", "-"])
    }

    fn render_state(&self, state: &NatState) -> String {
        render::render_state(state)
    }

    fn render_batch(&self, changes: &[Change]) -> String {
        render::render_batch(changes)
    }

    fn parse_live(&self, dump: &str) -> Result<Live, ParseError> {
        parse::parse_live(dump)
    }
}
