//! The dialect-neutral vocabulary of what portald owns in the kernel's NAT tables.
//!
//! The engine compiles services into a [`NatState`]; each dialect renders it (and changes to
//! it) as kernel text, and parses a live dump back into the same vocabulary so the diff never
//! sees dialect details.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};

/// Transport protocol of a portal.
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
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// Lower-case name as the kernel tools spell it (`tcp`, `udp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which traffic a portal rule catches.
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
#[serde(rename_all = "lowercase")]
pub enum Path {
    /// Traffic arriving from other namespaces or hosts (nat PREROUTING).
    Container,
    /// Traffic originated on this host (nat OUTPUT).
    Host,
}

impl Path {
    pub const ALL: [Path; 2] = [Path::Container, Path::Host];

    pub fn as_str(self) -> &'static str {
        match self {
            Path::Container => "container",
            Path::Host => "host",
        }
    }
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What identifies one portal rule: the traffic it catches.
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
pub struct PortalKey {
    pub path: Path,
    pub vip: Ipv4Addr,
    pub protocol: Protocol,
    pub port: u16,
}

impl fmt::Display for PortalKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {}:{}/{}",
            self.path, self.vip, self.port, self.protocol
        )
    }
}

/// Where caught traffic goes.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Action {
    /// Userspace mode, container path: REDIRECT to the local proxy port.
    Redirect { to_port: u16 },
    /// Userspace mode, host path: DNAT to a local address (the proxy listener).
    DnatLocal { to: SocketAddrV4 },
    /// Kernel mode: DNAT straight to one of the endpoints (never empty), chosen evenly at
    /// random, or, with `affinity_seconds`, the one this client address last used if that
    /// was less than so many seconds ago.
    Balance {
        endpoints: Vec<SocketAddrV4>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        affinity_seconds: Option<u32>,
    },
    /// Kernel mode, no ready endpoint: refuse at once (ICMP port unreachable).
    Reject,
}

impl Action {
    /// Where the action sends traffic, as conntrack's reply source: an address (`None` for
    /// REDIRECT, which goes to whichever local address received it) and a port. A UDP flow
    /// whose target is no longer among these is stale.
    pub fn targets(&self) -> Vec<(Option<Ipv4Addr>, u16)> {
        match self {
            Action::Redirect { to_port } => vec![(None, *to_port)],
            Action::DnatLocal { to } => vec![(Some(*to.ip()), to.port())],
            Action::Balance { endpoints, .. } => endpoints
                .iter()
                .map(|e| (Some(*e.ip()), e.port()))
                .collect(),
            Action::Reject => Vec::new(),
        }
    }
}

/// A chain portald owns, named for what it does: each has a body ([`Scaffold::Chain`]) and
/// a hook that sends traffic into it ([`Scaffold::Hook`]).
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
#[serde(rename_all = "snake_case")]
pub enum Slot {
    /// NAT lookups of the container path (nat PREROUTING).
    Container,
    /// NAT lookups of the host path (nat OUTPUT).
    Host,
    /// Kernel mode: refusals for services without endpoints, container path (filter FORWARD).
    ContainerReject,
    /// Kernel mode: refusals, host path (filter OUTPUT).
    HostReject,
    /// Kernel mode: source NAT for replies that would otherwise bypass the host (nat
    /// POSTROUTING).
    Masquerade,
    /// Userspace mode: proxy ports refused to traffic that portald's NAT did not send there
    /// (filter INPUT), so a neighbour cannot reach a service at node-address:proxy-port.
    ProxyGuard,
    /// Kernel mode: forwarded packets of connections portald translated are accepted (filter
    /// FORWARD), so a FORWARD policy of DROP (Docker sets one) does not black-hole them.
    Forward,
}

impl Slot {
    pub const ALL: [Slot; 7] = [
        Slot::Container,
        Slot::Host,
        Slot::ContainerReject,
        Slot::HostReject,
        Slot::Masquerade,
        Slot::ProxyGuard,
        Slot::Forward,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Slot::Container => "container",
            Slot::Host => "host",
            Slot::ContainerReject => "container-reject",
            Slot::HostReject => "host-reject",
            Slot::Masquerade => "masquerade",
            Slot::ProxyGuard => "proxy-guard",
            Slot::Forward => "forward",
        }
    }

    /// The slot of a path's NAT lookups.
    pub fn nat(path: Path) -> Slot {
        match path {
            Path::Container => Slot::Container,
            Path::Host => Slot::Host,
        }
    }

    /// The slot of a path's refusals.
    pub fn reject(path: Path) -> Slot {
        match path {
            Path::Container => Slot::ContainerReject,
            Path::Host => Slot::HostReject,
        }
    }

    /// The path a slot serves, if it serves one.
    pub fn path(self) -> Option<Path> {
        match self {
            Slot::Container | Slot::ContainerReject => Some(Path::Container),
            Slot::Host | Slot::HostReject => Some(Path::Host),
            Slot::Masquerade | Slot::ProxyGuard | Slot::Forward => None,
        }
    }
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An IPv4 network `ADDR/LEN` with no host bits set.
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
#[serde(try_from = "String", into = "String")]
pub struct Net {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Net {
    pub fn new(addr: Ipv4Addr, len: u8) -> Result<Net, String> {
        if len > 32 {
            return Err(format!("prefix length {len} is over 32"));
        }
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        if u32::from(addr) & !mask != 0 {
            return Err(format!("{addr}/{len} has host bits set"));
        }
        Ok(Net { addr, len })
    }

    /// The netmask in dotted form (`255.255.255.0`).
    pub fn mask(&self) -> Ipv4Addr {
        Ipv4Addr::from(if self.len == 0 {
            0
        } else {
            u32::MAX << (32 - self.len)
        })
    }

    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & u32::from(self.mask()) == u32::from(self.addr)
    }
}

impl std::str::FromStr for Net {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, len) = s.split_once('/').unwrap_or((s, "32"));
        let addr: Ipv4Addr = addr.parse().map_err(|_| format!("`{s}` is not ADDR/LEN"))?;
        let len: u8 = len.parse().map_err(|_| format!("`{s}` is not ADDR/LEN"))?;
        Net::new(addr, len)
    }
}

impl TryFrom<String> for Net {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<Net> for String {
    fn from(value: Net) -> Self {
        value.to_string()
    }
}

impl fmt::Display for Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// Source NAT for connections portald sent to an endpoint: those whose client and chosen
/// endpoint (the destination after DNAT) are both in `network`, a network directly attached
/// to this host, and whose original destination is in `portals`. The endpoint would answer
/// such a client directly over their shared link, past the host and its reverse
/// translation; any other client keeps its own address (the endpoint's reply is routed back
/// through this host, as for a client pod reaching an endpoint behind another node).
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
pub struct Masquerade {
    pub network: Net,
    pub portals: Net,
}

/// A local port a userspace-mode proxy listens on: only connections portald's NAT sent
/// there (REDIRECT or DNAT, conntrack status DNAT) may reach it.
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
pub struct GuardedPort {
    pub protocol: Protocol,
    pub port: u16,
}

/// A comment that is safe to place inside any kernel tool's argument: it can never end the
/// argument it stands in, whatever quoting the dialect uses.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(try_from = "String", into = "String")]
pub struct Comment(String);

/// Longest comment accepted; iptables' comment match stops at 255 bytes, nft at 128.
pub const MAX_COMMENT_LEN: usize = 120;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommentError {
    #[error("comment is empty")]
    Empty,
    #[error("comment is longer than {MAX_COMMENT_LEN} bytes")]
    TooLong,
    #[error("comment holds {0:?}, which is not a letter, digit or one of `-._/:`")]
    BadChar(char),
}

impl Comment {
    /// Accepts only `[A-Za-z0-9-._/:]`: no quote, space, backslash or shell metacharacter.
    pub fn new(text: impl Into<String>) -> Result<Self, CommentError> {
        let text = text.into();
        if text.is_empty() {
            return Err(CommentError::Empty);
        }
        if text.len() > MAX_COMMENT_LEN {
            return Err(CommentError::TooLong);
        }
        if let Some(bad) = text
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '/' | ':')))
        {
            return Err(CommentError::BadChar(bad));
        }
        Ok(Comment(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Comment {
    type Error = CommentError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Comment::new(value)
    }
}

impl From<Comment> for String {
    fn from(value: Comment) -> Self {
        value.0
    }
}

impl fmt::Display for Comment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One portal: catch `key`, send it to `action`. The comment names `namespace/service:port`.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
pub struct PortalRule {
    pub key: PortalKey,
    pub comment: Comment,
    pub action: Action,
}

impl PortalRule {
    /// The owned chain the rule lives in: refusals filter, everything else translates.
    pub fn slot(&self) -> Slot {
        match self.action {
            Action::Reject => Slot::reject(self.key.path),
            _ => Slot::nat(self.key.path),
        }
    }
}

/// Structure portald owns besides the portal rules themselves.
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
#[serde(rename_all = "snake_case", tag = "kind", content = "of")]
pub enum Scaffold {
    /// The chain that holds a slot's rules (an iptables chain, an nft chain).
    Chain(Slot),
    /// The hook that sends traffic into that chain (a jump from a built-in chain, an nft
    /// base chain).
    Hook(Slot),
    /// One source-NAT rule, in the masquerade chain.
    Masquerade(Masquerade),
    /// One refusal in the proxy-guard chain: new connections to this port whose conntrack
    /// entry has no DNAT status (they did not come through a portal) are refused.
    ProxyGuard(GuardedPort),
    /// One accept in the forward chain: forwarded packets of connections DNATed from an
    /// original destination in this range (the portal CIDR, a served external IP).
    Forward(Net),
    /// One hairpin masquerade in the masquerade chain: a connection from this endpoint that
    /// a portal sent back to the endpoint itself is source-NATed to the host, or the
    /// endpoint would see a packet from its own address and drop it (kube-proxy does the
    /// same with `KUBE-MARK-MASQ` when the source is the chosen endpoint).
    Hairpin(Ipv4Addr),
}

impl Scaffold {
    /// The slot whose chain must exist first.
    pub fn slot(&self) -> Slot {
        match self {
            Scaffold::Chain(s) | Scaffold::Hook(s) => *s,
            Scaffold::Masquerade(_) | Scaffold::Hairpin(_) => Slot::Masquerade,
            Scaffold::ProxyGuard(_) => Slot::ProxyGuard,
            Scaffold::Forward(_) => Slot::Forward,
        }
    }

    /// Whether this is one rule (or set element) inside its slot's chain, rather than the
    /// chain or its hook.
    pub fn is_entry(&self) -> bool {
        !matches!(self, Scaffold::Chain(_) | Scaffold::Hook(_))
    }
}

impl fmt::Display for Scaffold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scaffold::Chain(s) => write!(f, "chain {s}"),
            Scaffold::Hook(s) => write!(f, "hook {s}"),
            Scaffold::Masquerade(m) => write!(
                f,
                "masquerade {} to {} through {}",
                m.network, m.network, m.portals
            ),
            Scaffold::ProxyGuard(p) => write!(f, "proxy guard {}/{}", p.port, p.protocol),
            Scaffold::Forward(n) => write!(f, "forward accept from {n}"),
            Scaffold::Hairpin(a) => write!(f, "hairpin masquerade {a}"),
        }
    }
}

/// Everything portald owns in the kernel's NAT state, in one dialect-neutral value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NatState {
    pub scaffold: BTreeSet<Scaffold>,
    /// Serialized as a list: JSON maps need string keys.
    #[serde(with = "rules_as_list")]
    #[schemars(with = "Vec<PortalRule>")]
    pub rules: BTreeMap<PortalKey, PortalRule>,
}

mod rules_as_list {
    use super::{PortalKey, PortalRule};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use std::collections::BTreeMap;

    pub fn serialize<S: Serializer>(
        rules: &BTreeMap<PortalKey, PortalRule>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let list: Vec<&PortalRule> = rules.values().collect();
        list.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<BTreeMap<PortalKey, PortalRule>, D::Error> {
        let list = Vec::<PortalRule>::deserialize(d)?;
        Ok(list.into_iter().map(|r| (r.key, r)).collect())
    }
}

impl NatState {
    pub fn is_empty(&self) -> bool {
        self.scaffold.is_empty() && self.rules.is_empty()
    }

    pub fn insert_rule(&mut self, rule: PortalRule) {
        self.rules.insert(rule.key, rule);
    }
}

/// A rule found in portald's own space that it did not write and cannot read back; the plan
/// removes it since nothing but portald may live there.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
pub struct StrayRule {
    /// The owned chain it sits in (dialect spelling).
    pub chain: String,
    /// The rule as the dump printed it; the dialect can delete it from this text.
    pub text: String,
}

/// A rule outside portald's space: never changed, only looked at for conflicts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ForeignRule {
    /// `table/chain` in the dialect's spelling.
    pub location: String,
    /// The rule as the dump printed it.
    pub text: String,
    /// Destination address the rule matches, when it matches exactly one IPv4 address.
    pub dst: Option<Ipv4Addr>,
    pub protocol: Option<Protocol>,
    pub dport: Option<u16>,
    /// Whether the rule rewrites or ends the packet's path (DNAT, REDIRECT, DROP, ...).
    pub terminal: bool,
    /// The destination network the rule matches (a /32 for one address); `None` when it
    /// has no destination match, or one that [`ForeignRule::dst_unread`] marks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dst_net: Option<Net>,
    /// A destination match portald does not read (negated, IPv6, a set, a range): such a
    /// rule is never judged to cover a VIP.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dst_unread: bool,
    /// A destination port match portald does not read (negated, a list, a range, a set).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dport_unread: bool,
    /// portald's hooks this rule runs before and can end the packet's way to: it sits above
    /// the hook's jump in the same built-in chain (iptables), in a base chain at the same
    /// hook with a smaller priority (nftables), or in the other iptables flavour. Empty for
    /// a rule that cannot take portald's new connections.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ahead_of: Vec<Slot>,
}

impl ForeignRule {
    /// Whether every packet to `key`'s VIP, protocol and port can match the rule's
    /// destination, protocol and port matches (it may have others, such as an interface).
    pub fn covers(&self, key: &PortalKey) -> bool {
        let dst = !self.dst_unread && self.dst_net.is_none_or(|n| n.contains(key.vip));
        let protocol = self.protocol.is_none_or(|p| p == key.protocol);
        let port = !self.dport_unread && self.dport.is_none_or(|p| p == key.port);
        dst && protocol && port
    }
}

/// A parsed live dump.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Live {
    pub owned: NatState,
    pub stray: Vec<StrayRule>,
    pub foreign: Vec<ForeignRule>,
}

/// One step of change to portald's kernel state.
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum Change {
    AddScaffold { scaffold: Scaffold },
    RemoveScaffold { scaffold: Scaffold },
    AddRule { rule: PortalRule },
    RemoveRule { rule: PortalRule },
    ReplaceRule { old: PortalRule, new: PortalRule },
    RemoveStray { stray: StrayRule },
}

impl Change {
    /// A valid order among changes with no other dependency between them: chains first,
    /// then strays and hooks going, rules, hooks coming, and chains going last.
    pub fn rank(&self) -> u8 {
        match self {
            Change::AddScaffold {
                scaffold: Scaffold::Chain(_),
            } => 0,
            Change::RemoveStray { .. } => 1,
            Change::RemoveScaffold {
                scaffold: Scaffold::Hook(_),
            } => 2,
            Change::RemoveRule { .. } => 3,
            Change::RemoveScaffold { scaffold } if scaffold.is_entry() => 3,
            Change::ReplaceRule { .. } => 4,
            Change::AddRule { .. } => 5,
            Change::AddScaffold { scaffold } if scaffold.is_entry() => 5,
            // Hooks (the chains and entries were matched above).
            Change::AddScaffold { .. } => 6,
            Change::RemoveScaffold { .. } => 7,
        }
    }
}

/// The changes that turn `live` into `intent`, in no particular order.
pub fn diff_states(intent: &NatState, live: &NatState) -> Vec<Change> {
    let mut changes = Vec::new();
    for scaffold in intent.scaffold.difference(&live.scaffold) {
        changes.push(Change::AddScaffold {
            scaffold: *scaffold,
        });
    }
    for scaffold in live.scaffold.difference(&intent.scaffold) {
        changes.push(Change::RemoveScaffold {
            scaffold: *scaffold,
        });
    }
    for (key, rule) in &intent.rules {
        match live.rules.get(key) {
            None => changes.push(Change::AddRule { rule: rule.clone() }),
            Some(old) if old != rule => changes.push(Change::ReplaceRule {
                old: old.clone(),
                new: rule.clone(),
            }),
            Some(_) => {}
        }
    }
    for (key, rule) in &live.rules {
        if !intent.rules.contains_key(key) {
            changes.push(Change::RemoveRule { rule: rule.clone() });
        }
    }
    changes
}

/// Applies changes to a state the way the kernel would: the pure model the fake kernel and
/// the property tests use (`apply(diff(a, b), a) == b`).
pub fn apply_changes(state: &NatState, changes: &[Change]) -> NatState {
    let mut next = state.clone();
    for change in changes {
        match change {
            Change::AddScaffold { scaffold } => {
                next.scaffold.insert(*scaffold);
            }
            Change::RemoveScaffold { scaffold } => {
                next.scaffold.remove(scaffold);
            }
            Change::AddRule { rule } | Change::ReplaceRule { new: rule, .. } => {
                next.insert_rule(rule.clone());
            }
            Change::RemoveRule { rule } => {
                next.rules.remove(&rule.key);
            }
            Change::RemoveStray { .. } => {}
        }
    }
    next
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comment_rejects_anything_that_could_leave_an_argument() {
        for bad in [
            "a b", "a\"b", "a'b", "a\nb", "a;b", "a$b", "a`b", "a\\b", "",
        ] {
            assert!(Comment::new(bad).is_err(), "{bad:?} must be rejected");
        }
        assert_eq!(
            Comment::new("default/apache-service:12345")
                .unwrap()
                .as_str(),
            "default/apache-service:12345"
        );
    }
}
