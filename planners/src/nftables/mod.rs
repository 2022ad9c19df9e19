//! The nftables dialect: portald's whole state lives in one table, `ip portald`.
//!
//! Layout (the container path shown; `host` is the same with `output` as its base chain):
//!
//! ```text
//! table ip portald {
//!     map container_redirect {            # Action::Redirect: key -> proxy port
//!         type ipv4_addr . inet_proto . inet_service : inet_service
//!         counter                         # each element (portal) counts its packets
//!         elements = { 10.11.0.1 . tcp . 80 comment "default/apache-service:80" : 12345 }
//!     }
//!     map container_dnat {                # Action::DnatLocal: key -> local addr . port
//!         type ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service
//!     }
//!     map container_services {            # Action::Balance: key -> goto the portal's chain
//!         type ipv4_addr . inet_proto . inet_service : verdict
//!     }
//!     chain container {                   # Scaffold::Chain(Container): three lookups
//!         meta l4proto { tcp, udp } redirect to :ip daddr . meta l4proto . th dport map @container_redirect
//!         meta l4proto { tcp, udp } dnat ip to ip daddr . meta l4proto . th dport map @container_dnat
//!         meta l4proto { tcp, udp } ip daddr . meta l4proto . th dport vmap @container_services
//!     }
//!     chain prerouting {                  # Scaffold::Hook(Container)
//!         type nat hook prerouting priority dstnat - 10; policy accept;
//!         jump container
//!     }
//!     chain svc-c-10.11.0.1-tcp-80 {      # one Balance portal: even random choice
//!         meta l4proto tcp numgen random mod 2 0 dnat ip to 10.244.1.2:80
//!         meta l4proto tcp dnat ip to 10.244.1.3:80
//!     }
//!     set container_no_endpoints { ... }  # Action::Reject: keys refused in filter PREROUTING
//!     set masquerade_networks { ... }     # Scaffold::Masquerade: network . network . portals
//!     set hairpin_endpoints { ... }       # Scaffold::Hairpin: endpoint . endpoint
//!     set proxy_ports { ... }             # Scaffold::ProxyGuard: protocol . port (filter input)
//!     set forward_portals { ... }         # Scaffold::Forward: original destination range
//! }
//! ```
//!
//! A portal is one map element (plus, in kernel mode, its own chain), so a lookup costs the
//! same with one service or ten thousand, and a change to one service touches only its own
//! objects. The element's comment carries the rule's [`Comment`](crate::Comment), which is
//! how a dump is read back into the exact [`PortalRule`](crate::PortalRule).
//!
//! With `ClientIP` affinity a portal's chain keeps one timeout set per endpoint (`aff-...`)
//! of the client addresses it served: a client found in a set goes back to that endpoint and
//! refreshes its entry; a new client is spread by `numgen` (probability 1/n, 1/(n-1), ...,
//! like iptables' `statistic` cascade) and recorded.
//!
//! The libnftables JSON goes through serde types of portald's own, not the `nftables`
//! crate: 0.6.3, tried on the dumps in `fixtures/live/nftables`, cannot parse a map whose
//! data is a verdict or a concatenation (both of which portald writes), drops a map's
//! `counter` statement, does not write elements back as `nft -j list` prints them, and
//! fails a whole dump on one construct it does not know (details in `schema.rs`).
//! What is typed: `schema.rs` reads the dump's chains, rules, maps, sets and elements;
//! `stmt.rs` types the statements and expressions portald writes (`Stmt`, `Expr`) and those
//! of any rule read from a dump (`Listed`, `ListedExpr`: what portald shows or judges, with
//! any other statement or expression kept as its JSON so a foreign rule never fails the
//! parse); `expr.rs` shows foreign rules as text and reads their facts from those, and
//! `json.rs` builds the fake kernel's dump from typed objects. Still JSON values: a rule's
//! statements as the parse keeps them (portald's own rules are compared by their canonical
//! JSON text, which is lighter than a typed tree for 200,000 rules) and the value and data
//! of a set or map element (read through `schema.rs`'s `Element`).

mod counters;
mod expr;
mod json;
mod parse;
mod render;
mod schema;
mod stmt;

use crate::{
    Action, Change, Dialect, Invocation, Live, NatState, ParseError, Path, PortalKey, Scaffold,
    Slot,
};
use serde_json::Value;
use std::net::SocketAddrV4;
use stmt::{is, to_value, Expr, Stmt};

pub use counters::{counters_command, portal_counters, PortalCounters};
pub use json::render_json;

/// The nftables dialect (`nft`, libnftables JSON dumps).
#[derive(Debug, Clone, Copy, Default)]
pub struct Nftables;

/// Address family of portald's table: portals are IPv4 only.
pub const FAMILY: &str = "ip";
/// The one table portald owns; nothing outside it is ever written.
pub const TABLE: &str = "portald";

/// Key type shared by every portal map and set: destination, protocol and port.
const KEY_TYPE: [&str; 3] = ["ipv4_addr", "inet_proto", "inet_service"];
/// The lookup key expression, matching [`KEY_TYPE`].
const KEY_EXPR: &str = "ip daddr . meta l4proto . th dport";
/// `th dport` needs a transport protocol match in front of it (nft refuses the rule
/// otherwise); only TCP and UDP have ports portald can serve.
const L4_MATCH: &str = "meta l4proto { tcp, udp }";
/// Most client addresses an affinity set remembers.
pub const AFFINITY_SET_SIZE: u32 = 65535;

/// Which map (or set) of a path a portal's element lives in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    Redirect,
    Dnat,
    Services,
    NoEndpoints,
}

impl Kind {
    /// The lookups of a path's NAT chain, in chain order: with the same key in two maps the
    /// earlier wins in the kernel, so the parse keeps the earlier element too.
    pub(crate) const NAT: [Kind; 3] = [Kind::Redirect, Kind::Dnat, Kind::Services];
    pub(crate) const ALL: [Kind; 4] = [
        Kind::Redirect,
        Kind::Dnat,
        Kind::Services,
        Kind::NoEndpoints,
    ];

    pub(crate) fn of(action: &Action) -> Kind {
        match action {
            Action::Redirect { .. } => Kind::Redirect,
            Action::DnatLocal { .. } => Kind::Dnat,
            Action::Balance { .. } => Kind::Services,
            Action::Reject => Kind::NoEndpoints,
        }
    }

    /// The map's data type as nft spells it (also its JSON `map` field); `None` for a set.
    pub(crate) fn data_type(self) -> Option<&'static str> {
        match self {
            Kind::Redirect => Some("inet_service"),
            Kind::Dnat => Some("ipv4_addr . inet_service"),
            Kind::Services => Some("verdict"),
            Kind::NoEndpoints => None,
        }
    }

    /// The slot whose chain looks this map up.
    pub(crate) fn slot(self, path: Path) -> Slot {
        match self {
            Kind::NoEndpoints => Slot::reject(path),
            _ => Slot::nat(path),
        }
    }
}

/// `container_redirect`, `host_services`, `container_no_endpoints`, ...
pub(crate) fn map_name(path: Path, kind: Kind) -> String {
    let suffix = match kind {
        Kind::Redirect => "redirect",
        Kind::Dnat => "dnat",
        Kind::Services => "services",
        Kind::NoEndpoints => "no_endpoints",
    };
    format!("{}_{suffix}", path.as_str())
}

/// The set of the masquerade chain: `NET . NET . PORTALS`, looked up with the client, the
/// chosen endpoint and the original destination, so that one rule masquerades exactly the
/// connections whose client and endpoint share an attached network. Named apart from the
/// earlier `masquerade_pairs` (`source . portals`): a set's type cannot change in place, and
/// a set of another name in portald's table is removed whole as an orphan.
pub(crate) const MASQUERADE_SET: &str = "masquerade_networks";
/// The set of hairpin endpoints, also in the masquerade chain: `EP . EP`, since a rule
/// cannot compare two fields of a packet, but a concatenation can be looked up.
pub(crate) const HAIRPIN_SET: &str = "hairpin_endpoints";
/// The set of guarded proxy ports.
pub(crate) const GUARD_SET: &str = "proxy_ports";
/// The set of original destinations whose forwarded connections are accepted.
pub(crate) const FORWARD_SET: &str = "forward_portals";

/// The set a scaffold entry is an element of, and the element as `nft -f` text; `None` for
/// a chain or hook.
pub(crate) fn entry_element(scaffold: &Scaffold) -> Option<(&'static str, String)> {
    match scaffold {
        Scaffold::Chain(_) | Scaffold::Hook(_) => None,
        Scaffold::Masquerade(m) => Some((
            MASQUERADE_SET,
            format!("{} . {} . {}", m.network, m.network, m.portals),
        )),
        Scaffold::Hairpin(a) => Some((HAIRPIN_SET, format!("{a} . {a}"))),
        Scaffold::ProxyGuard(p) => Some((GUARD_SET, format!("{} . {}", p.protocol, p.port))),
        Scaffold::Forward(n) => Some((FORWARD_SET, n.to_string())),
    }
}

/// The same element as `nft -j` lists it.
pub(crate) fn entry_json(scaffold: &Scaffold) -> Option<(&'static str, Expr)> {
    let entry = match scaffold {
        Scaffold::Chain(_) | Scaffold::Hook(_) => return None,
        Scaffold::Masquerade(m) => (
            MASQUERADE_SET,
            Expr::concat(vec![
                Expr::prefix(&m.network),
                Expr::prefix(&m.network),
                Expr::prefix(&m.portals),
            ]),
        ),
        Scaffold::Hairpin(a) => (
            HAIRPIN_SET,
            Expr::concat(vec![Expr::text(a.to_string()), Expr::text(a.to_string())]),
        ),
        Scaffold::ProxyGuard(p) => (
            GUARD_SET,
            Expr::concat(vec![
                Expr::text(p.protocol.as_str()),
                Expr::Number(u64::from(p.port)),
            ]),
        ),
        // An interval set lists a single address as itself, a wider range as a prefix.
        Scaffold::Forward(n) if n.len == 32 => (FORWARD_SET, Expr::text(n.addr.to_string())),
        Scaffold::Forward(n) => (FORWARD_SET, Expr::prefix(n)),
    };
    Some(entry)
}

/// The sets of scaffold entries, each with the slot whose chain looks it up.
pub(crate) const ENTRY_SETS: [(&str, Slot); 4] = [
    (MASQUERADE_SET, Slot::Masquerade),
    (HAIRPIN_SET, Slot::Masquerade),
    (GUARD_SET, Slot::ProxyGuard),
    (FORWARD_SET, Slot::Forward),
];

/// Whether a map counts its elements' packets and bytes (`counter` in its declaration, so
/// every element gets its own counter): the NAT maps, whose elements are the portals, like
/// the per-portal rules whose counters `iptables-save -c` shows. nft refuses a `counter` on
/// an element of a map declared without one, and a map's declaration cannot change in place.
pub(crate) fn is_counted(map: &str) -> bool {
    Path::ALL
        .into_iter()
        .any(|path| Kind::NAT.iter().any(|kind| map_name(path, *kind) == map))
}

/// Whether a set holds ranges (`flags interval`).
pub(crate) fn is_interval(set: &str) -> bool {
    set == MASQUERADE_SET || set == FORWARD_SET
}

/// The regular chain holding a slot's rules.
pub(crate) fn chain_name(slot: Slot) -> &'static str {
    match slot {
        Slot::Container => "container",
        Slot::Host => "host",
        Slot::ContainerReject => "container_reject",
        Slot::HostReject => "host_reject",
        // `masquerade` is a keyword of nft's grammar.
        Slot::Masquerade => "masq",
        Slot::ProxyGuard => "proxy_guard",
        Slot::Forward => "forward_accept",
    }
}

/// The base chain of a slot's hook, named after the netfilter hook it sits on.
pub(crate) fn hook_chain(slot: Slot) -> &'static str {
    match slot {
        Slot::Container => "prerouting",
        Slot::Host => "output",
        Slot::ContainerReject => "filter_prerouting",
        Slot::HostReject => "filter_output",
        Slot::Masquerade => "postrouting",
        Slot::ProxyGuard => "filter_input",
        Slot::Forward => "filter_forward",
    }
}

/// The base chain's type, hook and priority as JSON lists them.
pub(crate) fn hook_facts(slot: Slot) -> (&'static str, &'static str, i64) {
    match slot {
        Slot::Container => ("nat", "prerouting", -110),
        Slot::Host => ("nat", "output", -110),
        Slot::ContainerReject => ("filter", "prerouting", -110),
        Slot::HostReject => ("filter", "output", -10),
        Slot::Masquerade => ("nat", "postrouting", 90),
        Slot::ProxyGuard => ("filter", "input", -10),
        Slot::Forward => ("filter", "forward", -10),
    }
}

/// The base chain's declaration. NAT lookups sit at `dstnat - 10` (-110): before the usual
/// dstnat rules (iptables-nft's nat PREROUTING/OUTPUT, Docker's, an admin's), so a foreign
/// DNAT of the same address cannot shadow a portal. Host-path refusals sit at `filter - 10`
/// of output; container-path ones in prerouting at `dstnat - 10` too, before the routing
/// decision: a refusal in forward comes after the ICMP redirect the kernel sends when it
/// routes a packet back out the interface it came in by (`ip_forward` sends it before the
/// forward hook), and that redirect stamps the client's inet_peer `rate_last`, so the ICMP
/// port unreachable that follows is suppressed by `icmp_ratelimit` (destination unreachable
/// is in the default `icmp_ratemask`): a UDP client on the node's bridge would hear nothing.
/// `reject` in prerouting needs Linux 5.10 or later. Source NAT sits at `srcnat - 10`. nft accepts the name `dstnat` only at prerouting, so output spells it
/// as a number; all are listed back exactly as written here.
pub(crate) fn hook_spec(slot: Slot) -> &'static str {
    match slot {
        Slot::Container => "type nat hook prerouting priority dstnat - 10; policy accept;",
        Slot::Host => "type nat hook output priority -110; policy accept;",
        Slot::ContainerReject => "type filter hook prerouting priority dstnat - 10; policy accept;",
        Slot::HostReject => "type filter hook output priority filter - 10; policy accept;",
        Slot::Masquerade => "type nat hook postrouting priority srcnat - 10; policy accept;",
        Slot::ProxyGuard => "type filter hook input priority filter - 10; policy accept;",
        Slot::Forward => "type filter hook forward priority filter - 10; policy accept;",
    }
}

/// Whether a slot's hook sees every packet (the filter hooks), not only a connection's first
/// (the nat hooks): then its jump is for new connections only, so established traffic pays
/// one conntrack check and no lookup.
fn filters(slot: Slot) -> bool {
    matches!(
        slot,
        Slot::ContainerReject | Slot::HostReject | Slot::ProxyGuard
    )
}

/// The base chain's only rule.
pub(crate) fn jump_rule(slot: Slot) -> String {
    if filters(slot) {
        format!("ct state new jump {}", chain_name(slot))
    } else {
        format!("jump {}", chain_name(slot))
    }
}

/// The same rule as `nft -j` lists its expressions.
pub(crate) fn jump_exprs(slot: Slot) -> Value {
    let jump = Stmt::Jump {
        target: chain_name(slot).to_string(),
    };
    if filters(slot) {
        let new = Stmt::Match {
            op: "in",
            left: Expr::ct("state", None),
            right: Expr::text("new"),
        };
        to_value(&[new, jump])
    } else {
        to_value(&[jump])
    }
}

/// The rules of a slot's chain, as `nft -f` text.
pub(crate) fn slot_rules(slot: Slot) -> Vec<String> {
    match slot.path() {
        Some(path) if slot == Slot::nat(path) => Kind::NAT
            .iter()
            .map(|kind| {
                let map = map_name(path, *kind);
                match kind {
                    Kind::Redirect => format!("{L4_MATCH} redirect to :{KEY_EXPR} map @{map}"),
                    Kind::Dnat => format!("{L4_MATCH} dnat ip to {KEY_EXPR} map @{map}"),
                    _ => format!("{L4_MATCH} {KEY_EXPR} vmap @{map}"),
                }
            })
            .collect(),
        // TCP gets a reset rather than an ICMP error: a host answers ICMP errors to one
        // destination at most once a second, and forwarding back out the interface a packet
        // came in by has already spent that on an ICMP redirect.
        Some(path) => {
            let set = map_name(path, Kind::NoEndpoints);
            vec![
                format!("meta l4proto tcp {KEY_EXPR} @{set} reject with tcp reset"),
                format!("meta l4proto udp {KEY_EXPR} @{set} reject"),
            ]
        }
        None => match slot {
            Slot::ProxyGuard => vec![
                format!("meta l4proto tcp meta l4proto . th dport @{GUARD_SET} ct status ! dnat reject with tcp reset"),
                format!("meta l4proto udp meta l4proto . th dport @{GUARD_SET} ct status ! dnat reject"),
            ],
            Slot::Forward => vec![format!(
                "ct status dnat ct original ip daddr @{FORWARD_SET} accept"
            )],
            _ => vec![
                format!("ct status dnat ip saddr . ip daddr . ct original ip daddr @{MASQUERADE_SET} masquerade"),
                format!("ct status dnat ip saddr . ip daddr @{HAIRPIN_SET} masquerade"),
            ],
        },
    }
}

/// `meta l4proto { tcp, udp }`.
fn l4_any() -> Stmt {
    is(
        Expr::meta("l4proto"),
        Expr::set(vec![Expr::text("tcp"), Expr::text("udp")]),
    )
}

/// `ip daddr . meta l4proto . PROTO dport`: nft lists `th dport` after a single protocol
/// match as that protocol's.
fn key_expr(transport: &'static str) -> Expr {
    Expr::concat(vec![
        Expr::payload("ip", "daddr"),
        Expr::meta("l4proto"),
        Expr::payload(transport, "dport"),
    ])
}

/// A set lookup: `left @set`.
fn lookup(left: Expr, set: &str) -> Stmt {
    is(left, Expr::text(format!("@{set}")))
}

/// `reject with tcp reset` for TCP, `reject` (ICMP port unreachable) for UDP.
fn reject(transport: &str) -> Stmt {
    match transport {
        "tcp" => Stmt::Reject {
            kind: "tcp reset",
            expr: None,
        },
        _ => Stmt::Reject {
            kind: "icmp",
            expr: Some("port-unreachable"),
        },
    }
}

/// The rules of a slot's chain as `nft -j` lists their expressions.
pub(crate) fn slot_exprs(slot: Slot) -> Vec<Value> {
    let rules: Vec<Vec<Stmt>> = match slot.path() {
        Some(path) if slot == Slot::nat(path) => Kind::NAT
            .iter()
            .map(|kind| {
                let map = Expr::text(format!("@{}", map_name(path, *kind)));
                match kind {
                    Kind::Redirect => vec![
                        l4_any(),
                        Stmt::Redirect {
                            port: Expr::map(key_expr("th"), map),
                        },
                    ],
                    Kind::Dnat => vec![
                        l4_any(),
                        Stmt::Dnat {
                            family: Some("ip"),
                            addr: Expr::map(key_expr("th"), map),
                            port: None,
                        },
                    ],
                    _ => vec![
                        l4_any(),
                        Stmt::Vmap {
                            key: key_expr("th"),
                            data: map,
                        },
                    ],
                }
            })
            .collect(),
        Some(path) => {
            let set = map_name(path, Kind::NoEndpoints);
            ["tcp", "udp"]
                .into_iter()
                .map(|proto| vec![lookup(key_expr(proto), &set), reject(proto)])
                .collect()
        }
        None => {
            let dnat = || Stmt::Match {
                op: "in",
                left: Expr::ct("status", None),
                right: Expr::text("dnat"),
            };
            let original = || Expr::ct("ip daddr", Some("original"));
            match slot {
                // nft lists `meta l4proto tcp meta l4proto . th dport` as
                // `meta l4proto . tcp dport`, and `ct status & dnat == 0` as `ct status ! dnat`.
                Slot::ProxyGuard => ["tcp", "udp"]
                    .into_iter()
                    .map(|proto| {
                        vec![
                            lookup(
                                Expr::concat(vec![
                                    Expr::meta("l4proto"),
                                    Expr::payload(proto, "dport"),
                                ]),
                                GUARD_SET,
                            ),
                            Stmt::Match {
                                op: "!",
                                left: Expr::ct("status", None),
                                right: Expr::text("dnat"),
                            },
                            reject(proto),
                        ]
                    })
                    .collect(),
                Slot::Forward => vec![vec![
                    dnat(),
                    lookup(original(), FORWARD_SET),
                    Stmt::Accept(()),
                ]],
                _ => vec![
                    vec![
                        dnat(),
                        lookup(
                            Expr::concat(vec![
                                Expr::payload("ip", "saddr"),
                                Expr::payload("ip", "daddr"),
                                original(),
                            ]),
                            MASQUERADE_SET,
                        ),
                        Stmt::Masquerade(()),
                    ],
                    vec![
                        dnat(),
                        lookup(
                            Expr::concat(vec![
                                Expr::payload("ip", "saddr"),
                                Expr::payload("ip", "daddr"),
                            ]),
                            HAIRPIN_SET,
                        ),
                        Stmt::Masquerade(()),
                    ],
                ],
            }
        }
    };
    rules.iter().map(to_value).collect()
}

/// The maps and sets a slot's chain looks up: `(name, key type, data type)`.
pub(crate) fn slot_maps(slot: Slot) -> Vec<(String, Vec<&'static str>, Option<&'static str>)> {
    match slot.path() {
        Some(path) if slot == Slot::nat(path) => Kind::NAT
            .iter()
            .map(|k| (map_name(path, *k), KEY_TYPE.to_vec(), k.data_type()))
            .collect(),
        Some(path) => vec![(map_name(path, Kind::NoEndpoints), KEY_TYPE.to_vec(), None)],
        None => match slot {
            Slot::ProxyGuard => vec![(
                GUARD_SET.to_string(),
                vec!["inet_proto", "inet_service"],
                None,
            )],
            Slot::Forward => vec![(FORWARD_SET.to_string(), vec!["ipv4_addr"], None)],
            _ => vec![
                (
                    MASQUERADE_SET.to_string(),
                    vec!["ipv4_addr", "ipv4_addr", "ipv4_addr"],
                    None,
                ),
                (
                    HAIRPIN_SET.to_string(),
                    vec!["ipv4_addr", "ipv4_addr"],
                    None,
                ),
            ],
        },
    }
}

/// The rules of a state whose element lives in the named map or set, in key order.
pub(crate) fn rules_in<'a>(
    state: &'a NatState,
    map: &'a str,
) -> impl Iterator<Item = &'a crate::PortalRule> {
    state
        .rules
        .values()
        .filter(move |r| map_name(r.key.path, Kind::of(&r.action)) == map)
}

/// The entries of a state that are elements of the named set, in order.
pub(crate) fn entries_in<'a>(
    state: &'a NatState,
    set: &'a str,
) -> impl Iterator<Item = &'a Scaffold> {
    state
        .scaffold
        .iter()
        .filter(move |s| entry_element(s).is_some_and(|(name, _)| name == set))
}

/// `10.11.0.1 . tcp . 80`: an element's key.
pub(crate) fn element_key(key: &PortalKey) -> String {
    format!("{} . {} . {}", key.vip, key.protocol, key.port)
}

/// The chain of a kernel-mode portal: `svc-c-10.11.0.1-tcp-80`.
pub(crate) fn service_chain(key: &PortalKey) -> String {
    format!(
        "svc-{}-{}-{}-{}",
        &key.path.as_str()[..1],
        key.vip,
        key.protocol,
        key.port
    )
}

/// The affinity set of one endpoint of a portal: `aff-c-10.11.0.1-tcp-80-10.244.1.2-80`.
/// Named by the endpoint, so an endpoint that stays keeps its clients across changes.
pub(crate) fn affinity_set(key: &PortalKey, endpoint: &SocketAddrV4) -> String {
    format!(
        "aff-{}-{}-{}",
        &service_chain(key)[4..],
        endpoint.ip(),
        endpoint.port()
    )
}

/// `12345`, `127.0.0.1 . 12345` or `goto svc-...`: an element's data (none for a set).
pub(crate) fn element_value(key: &PortalKey, action: &Action) -> Option<String> {
    match action {
        Action::Redirect { to_port } => Some(to_port.to_string()),
        Action::DnatLocal { to } => Some(format!("{} . {}", to.ip(), to.port())),
        Action::Balance { .. } => Some(format!("goto {}", service_chain(key))),
        Action::Reject => None,
    }
}

/// The rules of a Balance portal's chain as `nft -f` text.
///
/// Endpoint `i` of `n` is picked with probability 1/(n-i) among those left (the same cascade
/// as iptables' `statistic`): `numgen random mod (n-i) 0`. A `numgen ... map { ... }` would be
/// one rule, but its anonymous map costs the kernel a scan of every set of the table to name
/// it, which made loading 10,000 portals quadratic (80 s instead of under 2).
pub(crate) fn service_rules(
    key: &PortalKey,
    endpoints: &[SocketAddrV4],
    affinity: Option<u32>,
) -> Vec<String> {
    let l4 = format!("meta l4proto {}", key.protocol);
    let n = endpoints.len();
    let set = |e: &SocketAddrV4| affinity_set(key, e);
    let record = |e: &SocketAddrV4| match affinity {
        Some(_) => format!("update @{} {{ ip saddr }} ", set(e)),
        None => String::new(),
    };
    let mut rules: Vec<String> = Vec::new();
    if affinity.is_some() {
        for e in endpoints {
            rules.push(format!(
                "{l4} ip saddr @{0} {1}dnat ip to {e}",
                set(e),
                record(e)
            ));
        }
    }
    for (i, e) in endpoints.iter().enumerate() {
        let pick = if i + 1 < n {
            format!("numgen random mod {} 0 ", n - i)
        } else {
            String::new()
        };
        rules.push(format!("{l4} {pick}{}dnat ip to {e}", record(e)));
    }
    rules
}

/// The same rules as `nft -j` lists their expressions.
pub(crate) fn service_exprs(
    key: &PortalKey,
    endpoints: &[SocketAddrV4],
    affinity: Option<u32>,
) -> Vec<Value> {
    let l4 = || is(Expr::meta("l4proto"), Expr::text(key.protocol.as_str()));
    let n = endpoints.len();
    let saddr = || Expr::payload("ip", "saddr");
    let set = |e: &SocketAddrV4| format!("@{}", affinity_set(key, e));
    let tail = |e: &SocketAddrV4| {
        let dnat = Stmt::Dnat {
            family: None,
            addr: Expr::text(e.ip().to_string()),
            port: Some(Expr::Number(u64::from(e.port()))),
        };
        match affinity {
            Some(_) => vec![
                Stmt::Set {
                    op: "update",
                    elem: saddr(),
                    set: set(e),
                },
                dnat,
            ],
            None => vec![dnat],
        }
    };
    let mut rules: Vec<Vec<Stmt>> = Vec::new();
    if affinity.is_some() {
        for e in endpoints {
            let mut rule = vec![l4(), is(saddr(), Expr::text(set(e)))];
            rule.extend(tail(e));
            rules.push(rule);
        }
    }
    for (i, e) in endpoints.iter().enumerate() {
        let mut rule = vec![l4()];
        if i + 1 < n {
            let pick = Expr::Named(stmt::Named::Numgen {
                mode: "random",
                modulus: (n - i) as u64,
                offset: 0,
            });
            rule.push(is(pick, Expr::Number(0)));
        }
        rule.extend(tail(e));
        rules.push(rule);
    }
    rules.iter().map(to_value).collect()
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
