//! Rendering portald's state and changes as `iptables-restore` text.

use super::tokenize::save_quote;
use super::{
    affinity_list, chain, hook_chains, hook_comment, service_chain, split_location, table, FILTER,
    TABLE,
};
use crate::{
    Action, Change, GuardedPort, Masquerade, NatState, Net, PortalKey, PortalRule, Protocol,
    Scaffold, Slot, StrayRule,
};
use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};

/// A portal rule's match and target, without the `-A CHAIN` in front, in `iptables-save`'s
/// own spelling and option order.
///
/// A refusal on the container path matches the original destination, so that one rule
/// serves where the packet is forwarded (FORWARD: TCP, reset there) and where it is delivered
/// after [`local_redirect_spec`] (INPUT: UDP). UDP is not refused in FORWARD: the
/// kernel sends an ICMP redirect (`ip_forward`, before the FORWARD hook) whenever it routes
/// a packet back out the interface it came in by (a client on the node's bridge asking for a
/// VIP routed to that bridge), and that redirect stamps the client's inet_peer `rate_last`,
/// so the ICMP port unreachable that follows finds no token (`icmp_ratelimit`, 1 s; destination
/// unreachable is in the default `icmp_ratemask`) and is never sent: the UDP client hears
/// nothing. iptables' REJECT cannot run in PREROUTING (xt_REJECT allows INPUT, FORWARD and
/// OUTPUT only), so [`local_redirect_spec`] REDIRECTs the packet to this host (no
/// forwarding, no redirect) and this rule, in a chain hooked from INPUT too, refuses it by
/// its original destination. TCP stays in FORWARD: a reset needs no ICMP token, and a reset
/// sent from INPUT after a REDIRECT never reached the client (Linux 6.18, iptables 1.8.9:
/// the connect of `bin/tests/refusals.rs` timed out when TCP took the UDP route). Host sysctls (`send_redirects`, `icmp_ratelimit`) are not portald's
/// to change.
pub fn rule_spec(rule: &PortalRule) -> String {
    let key = &rule.key;
    let proto = key.protocol.as_str();
    if rule.action == Action::Reject && key.path == crate::Path::Container {
        return format!(
            "-p {proto} -m conntrack --ctorigdst {} --ctorigdstport {} -m comment --comment {}{}",
            key.vip,
            key.port,
            save_quote(rule.comment.as_str()),
            reject_target(key.protocol)
        );
    }
    let mut spec = format!(
        "-d {}/32 -p {proto} -m comment --comment {} -m {proto} --dport {}",
        key.vip,
        save_quote(rule.comment.as_str()),
        key.port
    );
    match &rule.action {
        Action::Redirect { to_port } => {
            let _ = write!(spec, " -j REDIRECT --to-ports {to_port}");
        }
        Action::DnatLocal { to } => {
            let _ = write!(spec, " -j DNAT --to-destination {to}");
        }
        Action::Balance { .. } => {
            let _ = write!(spec, " -j {}", service_chain(key));
        }
        Action::Reject => spec.push_str(&reject_target(key.protocol)),
    }
    spec
}

/// A reset for TCP: no ICMP error, so no per-host ICMP rate limit in the way.
fn reject_target(protocol: crate::Protocol) -> String {
    match protocol {
        crate::Protocol::Tcp => " -j REJECT --reject-with tcp-reset".into(),
        crate::Protocol::Udp => " -j REJECT --reject-with icmp-port-unreachable".into(),
    }
}

/// The nat half of a container-path refusal of UDP, in `PORTAL-CONTAINER`: REDIRECT with
/// the port kept, so the packet is delivered here and refused in INPUT (see [`rule_spec`]).
/// `None` for every other rule.
pub fn local_redirect_spec(rule: &PortalRule) -> Option<String> {
    let refused_udp = rule.action == Action::Reject
        && rule.key.path == crate::Path::Container
        && rule.key.protocol == crate::Protocol::Udp;
    if !refused_udp {
        return None;
    }
    let key = &rule.key;
    let proto = key.protocol.as_str();
    Some(format!(
        "-d {}/32 -p {proto} -m comment --comment {} -m {proto} --dport {} -j REDIRECT",
        key.vip,
        save_quote(rule.comment.as_str()),
        key.port
    ))
}

/// A masquerade rule's spec: in POSTROUTING the destination is the endpoint the DNAT chose,
/// so `-s NET -d NET` holds only when client and endpoint share the network.
pub fn masquerade_spec(m: &Masquerade) -> String {
    format!(
        "-s {net} -d {net} -m conntrack --ctstate DNAT --ctorigdst {} -j MASQUERADE",
        m.portals,
        net = m.network,
    )
}

/// A proxy guard's spec: new connections to the port that no portal translated are refused
/// as a closed port would refuse them.
pub fn guard_spec(p: &GuardedPort) -> String {
    let proto = p.protocol.as_str();
    let reject = match p.protocol {
        Protocol::Tcp => "tcp-reset",
        Protocol::Udp => "icmp-port-unreachable",
    };
    format!(
        "-p {proto} -m {proto} --dport {} -m conntrack ! --ctstate DNAT -j REJECT --reject-with {reject}",
        p.port
    )
}

/// A forward accept's spec: both directions of a connection DNATed from that range. The
/// conntrack entry, not the packet, carries the original destination, so replies match too.
pub fn forward_spec(portals: &Net) -> String {
    format!(
        "-m conntrack --ctstate DNAT --ctorigdst {} -j ACCEPT",
        conntrack_net(portals)
    )
}

/// A conntrack match's address as `iptables-save` prints it: a single address bare.
fn conntrack_net(net: &Net) -> String {
    if net.len == 32 {
        net.addr.to_string()
    } else {
        net.to_string()
    }
}

/// A hairpin masquerade's spec: after DNAT, source and destination are both the endpoint.
pub fn hairpin_spec(endpoint: &Ipv4Addr) -> String {
    format!("-s {endpoint}/32 -d {endpoint}/32 -m conntrack --ctstate DNAT -j MASQUERADE")
}

/// The spec of a scaffold entry (a rule inside a slot's chain); `None` for a chain or hook.
pub fn entry_spec(scaffold: &Scaffold) -> Option<String> {
    match scaffold {
        Scaffold::Chain(_) | Scaffold::Hook(_) => None,
        Scaffold::Masquerade(m) => Some(masquerade_spec(m)),
        Scaffold::ProxyGuard(p) => Some(guard_spec(p)),
        Scaffold::Forward(n) => Some(forward_spec(n)),
        Scaffold::Hairpin(a) => Some(hairpin_spec(a)),
    }
}

/// `statistic`'s probability as `iptables-save` prints it: the kernel keeps it as a 31-bit
/// fraction, printed with eleven decimals.
fn probability(p: f64) -> String {
    let stored = (p * f64::from(0x8000_0000u32)).round();
    format!("{:.11}", stored / f64::from(0x8000_0000u32))
}

/// The rules of a kernel-mode portal's chain: with affinity, first a check per endpoint
/// (a client seen within the timeout goes back, and is seen again); then the even cascade,
/// each pick recorded when affinity is on.
pub fn service_specs(
    key: &PortalKey,
    endpoints: &[SocketAddrV4],
    affinity: Option<u32>,
) -> Vec<String> {
    let proto = key.protocol.as_str();
    let n = endpoints.len();
    let record = |e: &SocketAddrV4| match affinity {
        Some(_) => format!(
            " -m recent --set --name {} --mask 255.255.255.255 --rsource",
            affinity_list(key, e)
        ),
        None => String::new(),
    };
    let mut specs = Vec::new();
    if let Some(seconds) = affinity {
        for e in endpoints {
            specs.push(format!(
                "-p {proto} -m recent --rcheck --seconds {seconds} --reap --name {} --mask 255.255.255.255 --rsource{} -j DNAT --to-destination {e}",
                affinity_list(key, e),
                record(e)
            ));
        }
    }
    for (i, e) in endpoints.iter().enumerate() {
        let pick = if i + 1 < n {
            format!(
                " -m statistic --mode random --probability {}",
                probability(1.0 / (n - i) as f64)
            )
        } else {
            String::new()
        };
        specs.push(format!(
            "-p {proto}{pick}{} -j DNAT --to-destination {e}",
            record(e)
        ));
    }
    specs
}

/// A hook's match and target, without the chain it sits in.
/// The filter hooks see every packet, not only a connection's first: they jump for new
/// connections only, so established traffic pays one conntrack check and no rule walk.
pub fn hook_spec(slot: Slot) -> String {
    let new_only = match slot {
        Slot::ContainerReject | Slot::HostReject | Slot::ProxyGuard => {
            "-m conntrack --ctstate NEW "
        }
        _ => "",
    };
    format!(
        "{new_only}-m comment --comment {} -j {}",
        save_quote(hook_comment(slot)),
        chain(slot)
    )
}

fn declaration(name: &str) -> String {
    format!(":{name} - [0:0]")
}

/// Lines of a batch or dump, by table: `filter_first`, then `nat`, then `filter`; each is
/// one `*table ... COMMIT` section (one transaction), left out when it has no lines.
/// `filter_first` holds the INPUT refusals of container-path portals being added, so that a
/// REDIRECT to this host never exists without the refusal that keeps the packet from a local
/// socket on the same port; their removal comes after the REDIRECT's, in `filter`.
#[derive(Default)]
struct Sections {
    filter_first: Vec<String>,
    nat: Vec<String>,
    filter: Vec<String>,
}

impl Sections {
    fn push(&mut self, table_name: &str, line: String) {
        if table_name == FILTER {
            self.filter.push(line);
        } else {
            self.nat.push(line);
        }
    }

    fn render(self, always_nat: bool) -> String {
        let mut out = String::new();
        for (name, lines) in [
            (FILTER, self.filter_first),
            (TABLE, self.nat),
            (FILTER, self.filter),
        ] {
            if lines.is_empty() && !(always_nat && name == TABLE) {
                continue;
            }
            let _ = writeln!(out, "*{name}");
            for line in lines {
                out.push_str(&line);
                out.push('\n');
            }
            out.push_str("COMMIT\n");
        }
        out
    }
}

/// The owned state as `iptables-save` would print it, minus the built-in chains and
/// counters: per table, declarations, then hooks (built-in chains in kernel order), then
/// the rules of each owned chain.
pub fn state(state: &NatState) -> String {
    let mut declarations = Sections::default();
    let mut hooks = Sections::default();
    let mut rules = Sections::default();
    for slot in Slot::ALL {
        if state.scaffold.contains(&Scaffold::Chain(slot)) {
            declarations.push(table(slot), declaration(chain(slot)));
        }
    }
    for rule in state.rules.values() {
        if matches!(rule.action, Action::Balance { .. }) {
            declarations.push(TABLE, declaration(&service_chain(&rule.key)));
        }
    }
    // iptables-save lists built-in chains' rules first, in kernel order.
    let hook_order = [
        Slot::ProxyGuard,
        Slot::Forward,
        Slot::ContainerReject,
        Slot::HostReject,
        Slot::Container,
        Slot::Host,
        Slot::Masquerade,
    ];
    for slot in hook_order {
        if state.scaffold.contains(&Scaffold::Hook(slot)) {
            for built_in in hook_chains(slot) {
                hooks.push(table(slot), format!("-A {built_in} {}", hook_spec(slot)));
            }
        }
    }
    for slot in Slot::ALL {
        for rule in state.rules.values().filter(|r| r.slot() == slot) {
            rules.push(
                table(slot),
                format!("-A {} {}", chain(slot), rule_spec(rule)),
            );
        }
        if slot == Slot::Container {
            for spec in state.rules.values().filter_map(local_redirect_spec) {
                rules.push(TABLE, format!("-A {} {spec}", chain(slot)));
            }
        }
        for scaffold in state.scaffold.iter().filter(|s| s.slot() == slot) {
            if let Some(spec) = entry_spec(scaffold) {
                rules.push(table(slot), format!("-A {} {spec}", chain(slot)));
            }
        }
    }
    for rule in state.rules.values() {
        if let Action::Balance {
            endpoints,
            affinity_seconds,
        } = &rule.action
        {
            let name = service_chain(&rule.key);
            for spec in service_specs(&rule.key, endpoints, *affinity_seconds) {
                rules.push(TABLE, format!("-A {name} {spec}"));
            }
        }
    }
    let mut all = Sections::default();
    for part in [declarations, hooks, rules] {
        all.nat.extend(part.nat);
        all.filter.extend(part.filter);
        all.filter_first.extend(part.filter_first);
    }
    all.render(true)
}

/// The `-D` line that deletes a stray rule, or the `-F`/`-X` pair that deletes an orphan
/// chain (text `chain NAME`). A rule's text is the dump's `-A CHAIN spec` line, or just the
/// spec; either way the rule is named by its full spec, which `-D` matches exactly.
fn delete_stray(stray: &StrayRule) -> (String, Vec<String>) {
    let (table_name, chain_name) = split_location(&stray.chain);
    let text = stray.text.trim();
    if text == format!("chain {chain_name}") {
        return (
            table_name.to_string(),
            vec![format!("-F {chain_name}"), format!("-X {chain_name}")],
        );
    }
    let spec = text
        .strip_prefix("-A ")
        .and_then(|rest| rest.trim_start().split_once(' '))
        .map(|(_, spec)| spec.trim_start())
        .unwrap_or(text);
    (
        table_name.to_string(),
        vec![format!("-D {chain_name} {spec}")],
    )
}

/// Lines that create (or refill: the declaration flushes) a kernel-mode portal's chain.
fn fill_service(out: &mut Sections, rule: &PortalRule) {
    if let Action::Balance {
        endpoints,
        affinity_seconds,
    } = &rule.action
    {
        let name = service_chain(&rule.key);
        out.push(TABLE, declaration(&name));
        for spec in service_specs(&rule.key, endpoints, *affinity_seconds) {
            out.push(TABLE, format!("-A {name} {spec}"));
        }
    }
}

fn add_rule(out: &mut Sections, rule: &PortalRule) {
    fill_service(out, rule);
    let slot = rule.slot();
    let line = format!("-A {} {}", chain(slot), rule_spec(rule));
    match local_redirect_spec(rule) {
        Some(redirect) => {
            out.filter_first.push(line);
            out.push(TABLE, format!("-A {} {redirect}", chain(Slot::Container)));
        }
        None => out.push(table(slot), line),
    }
}

fn remove_rule(out: &mut Sections, rule: &PortalRule) {
    let slot = rule.slot();
    if let Some(redirect) = local_redirect_spec(rule) {
        out.push(TABLE, format!("-D {} {redirect}", chain(Slot::Container)));
    }
    out.push(
        table(slot),
        format!("-D {} {}", chain(slot), rule_spec(rule)),
    );
    if matches!(rule.action, Action::Balance { .. }) {
        let name = service_chain(&rule.key);
        out.push(TABLE, format!("-F {name}"));
        out.push(TABLE, format!("-X {name}"));
    }
}

/// One change as batch lines, in the order the kernel must see them.
fn change_lines(change: &Change, out: &mut Sections) {
    match change {
        // Before any refusal that `filter_first` adds to it.
        Change::AddScaffold {
            scaffold: Scaffold::Chain(slot),
        } if table(*slot) == FILTER => out.filter_first.push(declaration(chain(*slot))),
        Change::AddScaffold {
            scaffold: Scaffold::Chain(slot),
        } => out.push(table(*slot), declaration(chain(*slot))),
        Change::AddScaffold {
            scaffold: Scaffold::Hook(slot),
        } => {
            for built_in in hook_chains(*slot) {
                out.push(
                    table(*slot),
                    format!("-I {built_in} 1 {}", hook_spec(*slot)),
                );
            }
        }
        Change::RemoveScaffold {
            scaffold: Scaffold::Chain(slot),
        } => out.push(table(*slot), format!("-X {}", chain(*slot))),
        Change::RemoveScaffold {
            scaffold: Scaffold::Hook(slot),
        } => {
            for built_in in hook_chains(*slot) {
                out.push(table(*slot), format!("-D {built_in} {}", hook_spec(*slot)));
            }
        }
        Change::AddScaffold { scaffold } | Change::RemoveScaffold { scaffold } => {
            let verb = match change {
                Change::AddScaffold { .. } => "-A",
                _ => "-D",
            };
            let slot = scaffold.slot();
            if let Some(spec) = entry_spec(scaffold) {
                out.push(table(slot), format!("{verb} {} {spec}", chain(slot)));
            }
        }
        Change::AddRule { rule } => add_rule(out, rule),
        Change::RemoveRule { rule } => remove_rule(out, rule),
        // Portal rules never overlap (each catches its own VIP, protocol and port), so their
        // order inside a chain is free and a replace can be a delete plus an append. Two
        // Balance actions share the portal's chain: it is refilled in place.
        Change::ReplaceRule { old, new } => match (&old.action, &new.action) {
            (Action::Balance { .. }, Action::Balance { .. }) => {
                fill_service(out, new);
                if old.comment != new.comment {
                    let slot = old.slot();
                    out.push(
                        table(slot),
                        format!("-D {} {}", chain(slot), rule_spec(old)),
                    );
                    out.push(
                        table(slot),
                        format!("-A {} {}", chain(slot), rule_spec(new)),
                    );
                }
            }
            _ => {
                remove_rule(out, old);
                add_rule(out, new);
            }
        },
        Change::RemoveStray { .. } => {}
    }
}

/// The batch for `iptables-restore --noflush`: one transaction per table, changes in the
/// given order. Stray rules are deleted where they come; orphan chains at the end of their
/// table's section, once nothing jumps to them, unless the batch refills them anyway.
pub fn batch(changes: &[Change]) -> String {
    if changes.is_empty() {
        return String::new();
    }
    let refilled: BTreeSet<String> = changes
        .iter()
        .filter_map(|c| match c {
            Change::AddRule { rule } | Change::ReplaceRule { new: rule, .. } => {
                Some(service_chain(&rule.key))
            }
            _ => None,
        })
        .collect();
    let mut out = Sections::default();
    let mut late = Sections::default();
    for change in changes {
        if let Change::RemoveStray { stray } = change {
            let (table_name, lines) = delete_stray(stray);
            let orphan = lines.len() == 2;
            let (_, chain_name) = split_location(&stray.chain);
            if orphan && refilled.contains(chain_name) {
                continue;
            }
            let target = if orphan { &mut late } else { &mut out };
            for line in lines {
                target.push(&table_name, line);
            }
        } else {
            change_lines(change, &mut out);
        }
    }
    out.nat.extend(late.nat);
    out.filter.extend(late.filter);
    out.filter_first.extend(late.filter_first);
    out.render(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Comment, Path, Protocol};

    fn apache(path: Path, action: Action) -> PortalRule {
        PortalRule {
            key: PortalKey {
                path,
                vip: "10.11.0.1".parse().unwrap(),
                protocol: Protocol::Tcp,
                port: 12345,
            },
            comment: Comment::new("default/apache-service:12345").unwrap(),
            action,
        }
    }

    #[test]
    fn rule_spec_is_spelled_as_iptables_save_prints_it() {
        let redirect = apache(Path::Container, Action::Redirect { to_port: 33945 });
        assert_eq!(
            rule_spec(&redirect),
            "-d 10.11.0.1/32 -p tcp -m comment --comment \"default/apache-service:12345\" \
             -m tcp --dport 12345 -j REDIRECT --to-ports 33945"
        );
        let dnat = apache(
            Path::Host,
            Action::DnatLocal {
                to: "127.0.0.1:33945".parse().unwrap(),
            },
        );
        assert_eq!(
            rule_spec(&dnat),
            "-d 10.11.0.1/32 -p tcp -m comment --comment \"default/apache-service:12345\" \
             -m tcp --dport 12345 -j DNAT --to-destination 127.0.0.1:33945"
        );
    }

    #[test]
    fn probabilities_are_printed_as_the_kernel_keeps_them() {
        assert_eq!(probability(1.0 / 2.0), "0.50000000000");
        assert_eq!(probability(1.0 / 3.0), "0.33333333349");
        assert_eq!(probability(1.0 / 10.0), "0.10000000009");
    }

    #[test]
    fn service_chain_names_fit_the_kernel_limit() {
        let key = PortalKey {
            path: Path::Container,
            vip: "255.255.255.255".parse().unwrap(),
            protocol: Protocol::Udp,
            port: 65535,
        };
        assert_eq!(service_chain(&key), "PORTAL-C-FFFFFFFF-UDP-65535");
        assert!(service_chain(&key).len() <= 28);
    }

    #[test]
    fn stray_deletion_accepts_the_dump_line_or_the_bare_spec() {
        let from_dump = StrayRule {
            chain: "PORTAL-HOST".into(),
            text: "-A PORTAL-HOST -p tcp -j ACCEPT".into(),
        };
        let bare = StrayRule {
            chain: "filter/PORTAL-HOST-REJECT".into(),
            text: "-p tcp -j ACCEPT".into(),
        };
        assert_eq!(
            delete_stray(&from_dump),
            ("nat".into(), vec!["-D PORTAL-HOST -p tcp -j ACCEPT".into()])
        );
        assert_eq!(
            delete_stray(&bare),
            (
                "filter".into(),
                vec!["-D PORTAL-HOST-REJECT -p tcp -j ACCEPT".into()]
            )
        );
    }

    #[test]
    fn an_empty_change_list_renders_as_an_empty_batch() {
        assert_eq!(batch(&[]), "");
    }
}
