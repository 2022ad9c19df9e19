//! Tier 3: kernel-mode states (DNAT to endpoints with and without affinity, refusals,
//! masquerade, hairpin masquerade, forward accepts, proxy guards) through both dialects and the real kernel: each step's batch is applied in a
//! private namespace, the dump read back, and what portald reads must be exactly the state
//! it meant, with no stray; then back to userspace mode and to nothing.

mod netns_support;

use netns_support::Netns;
use planners::{
    diff_states, Action, Change, Comment, Dialect, GuardedPort, Iptables, Live, Masquerade,
    NatState, Nftables, Path, PortalKey, PortalRule, Protocol, Scaffold, Slot,
};
use std::net::{Ipv4Addr, SocketAddrV4};

fn ep(last: u8, port: u16) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, last), port)
}

fn portal(
    state: &mut NatState,
    vip: u8,
    protocol: Protocol,
    port: u16,
    action: Action,
    comment: &str,
) {
    portal_by_path(state, vip, protocol, port, |_| action.clone(), comment);
}

/// The same with an action per path (userspace mode: REDIRECT and DNAT to the proxy).
fn portal_by_path(
    state: &mut NatState,
    vip: u8,
    protocol: Protocol,
    port: u16,
    action: impl Fn(Path) -> Action,
    comment: &str,
) {
    for path in Path::ALL {
        state.insert_rule(PortalRule {
            key: PortalKey {
                path,
                vip: Ipv4Addr::new(10, 11, 0, vip),
                protocol,
                port,
            },
            comment: Comment::new(comment).unwrap(),
            action: action(path),
        });
    }
}

fn scaffold(slots: &[Slot], masquerade: bool) -> NatState {
    let mut state = NatState::default();
    for slot in slots {
        state.scaffold.insert(Scaffold::Chain(*slot));
        state.scaffold.insert(Scaffold::Hook(*slot));
    }
    if masquerade {
        state.scaffold.insert(Scaffold::Masquerade(Masquerade {
            network: "10.244.1.0/24".parse().unwrap(),
            portals: "10.11.0.0/16".parse().unwrap(),
        }));
    }
    state
}

fn balance(endpoints: Vec<SocketAddrV4>, affinity_seconds: Option<u32>) -> Action {
    Action::Balance {
        endpoints,
        affinity_seconds,
    }
}

/// The walk: nothing → kernel mode → endpoints, affinity and refusals change → userspace
/// mode → nothing.
fn states() -> Vec<(&'static str, NatState)> {
    let mut first = scaffold(&Slot::ALL, true);
    first.scaffold.extend([
        Scaffold::Hairpin(Ipv4Addr::new(10, 244, 1, 2)),
        Scaffold::Hairpin(Ipv4Addr::new(10, 244, 1, 3)),
        Scaffold::Forward("10.11.0.0/16".parse().unwrap()),
        Scaffold::Forward("192.0.2.7/32".parse().unwrap()),
        Scaffold::ProxyGuard(GuardedPort {
            protocol: Protocol::Tcp,
            port: 20000,
        }),
    ]);
    portal(
        &mut first,
        1,
        Protocol::Tcp,
        80,
        balance(vec![ep(2, 80), ep(3, 80)], None),
        "default/web:80",
    );
    portal(
        &mut first,
        2,
        Protocol::Udp,
        53,
        balance(vec![ep(2, 53), ep(3, 53), ep(4, 53)], Some(600)),
        "default/dns:53",
    );
    portal(
        &mut first,
        3,
        Protocol::Tcp,
        443,
        Action::Reject,
        "default/empty:443",
    );

    let mut second = scaffold(&Slot::ALL, true);
    second.scaffold.extend([
        Scaffold::Hairpin(Ipv4Addr::new(10, 244, 1, 3)),
        Scaffold::Hairpin(Ipv4Addr::new(10, 244, 1, 4)),
        Scaffold::Forward("10.11.0.0/16".parse().unwrap()),
        Scaffold::ProxyGuard(GuardedPort {
            protocol: Protocol::Udp,
            port: 20001,
        }),
    ]);
    second.scaffold.insert(Scaffold::Masquerade(Masquerade {
        network: "10.245.0.0/16".parse().unwrap(),
        portals: "10.11.0.0/16".parse().unwrap(),
    }));
    portal(
        &mut second,
        1,
        Protocol::Tcp,
        80,
        balance(vec![ep(3, 80), ep(4, 80), ep(5, 80)], None),
        "default/web:80",
    );
    portal(
        &mut second,
        2,
        Protocol::Udp,
        53,
        balance(vec![ep(2, 53), ep(4, 53)], Some(900)),
        "default/dns2:53",
    );
    portal(
        &mut second,
        3,
        Protocol::Tcp,
        443,
        balance(vec![ep(2, 443)], Some(10800)),
        "default/empty:443",
    );
    portal(
        &mut second,
        4,
        Protocol::Tcp,
        80,
        Action::Reject,
        "default/new:80",
    );

    let mut third = second.clone();
    portal(
        &mut third,
        1,
        Protocol::Tcp,
        80,
        balance(vec![ep(3, 80), ep(4, 80), ep(5, 80)], Some(60)),
        "default/web:80",
    );
    portal(
        &mut third,
        4,
        Protocol::Tcp,
        80,
        balance(vec![ep(9, 80)], None),
        "default/new:80",
    );
    portal(
        &mut third,
        3,
        Protocol::Tcp,
        443,
        Action::Reject,
        "default/empty:443",
    );

    let mut userspace = scaffold(&[Slot::Container, Slot::Host, Slot::ProxyGuard], false);
    for (protocol, port) in [(Protocol::Tcp, 20000), (Protocol::Udp, 20001)] {
        userspace
            .scaffold
            .insert(Scaffold::ProxyGuard(GuardedPort { protocol, port }));
    }
    for (vip, protocol, port, proxy, comment) in [
        (1, Protocol::Tcp, 80, 20000, "default/web:80"),
        (2, Protocol::Udp, 53, 20001, "default/dns2:53"),
    ] {
        let action = |path| match path {
            Path::Container => Action::Redirect { to_port: proxy },
            Path::Host => Action::DnatLocal {
                to: SocketAddrV4::new(Ipv4Addr::LOCALHOST, proxy),
            },
        };
        portal_by_path(&mut userspace, vip, protocol, port, action, comment);
    }
    vec![
        ("kernel mode", first),
        ("endpoints and affinity change", second),
        ("reject and balance swap", third),
        ("back to userspace mode", userspace),
        ("nothing", NatState::default()),
    ]
}

fn observe(ns: &Netns, dialect: &dyn Dialect) -> Live {
    let command = dialect.observe_command();
    let args: Vec<&str> = command.args.iter().map(String::as_str).collect();
    let dump = ns.ok(&command.program, &args, None);
    dialect
        .parse_live(&dump)
        .unwrap_or_else(|e| panic!("{} dump does not parse: {e}\n{dump}", dialect.name()))
}

fn walk(dialect: &dyn Dialect) {
    let ns = Netns::new("kmode");
    let apply = dialect.apply_command();
    let apply_args: Vec<&str> = apply.args.iter().map(String::as_str).collect();
    for (step, wanted) in states() {
        let live = observe(&ns, dialect);
        let mut changes = diff_states(&wanted, &live.owned);
        changes.sort_by_key(|c| c.rank());
        let batch = dialect.render_batch(&changes);
        let out = ns.exec(&apply.program, &apply_args, Some(&batch));
        assert!(
            out.status.success(),
            "{} refused the batch for `{step}`: {}\n{batch}",
            dialect.name(),
            String::from_utf8_lossy(&out.stderr)
        );
        let after = observe(&ns, dialect);
        assert!(
            after.stray.is_empty(),
            "`{step}`: strays {:?}\n{batch}",
            after.stray
        );
        assert_eq!(
            after.owned, wanted,
            "`{step}`: live differs from intent\n{batch}"
        );
        // Already there: nothing left to do.
        assert!(diff_states(&wanted, &after.owned).is_empty());
    }
}

#[test]
fn nftables_kernel_mode_states_round_trip_through_the_kernel() {
    walk(&Nftables);
}

#[test]
fn iptables_kernel_mode_states_round_trip_through_the_kernel() {
    walk(&Iptables);
}

#[test]
fn rendered_kernel_state_loads_and_reads_back_equal_in_both_dialects() {
    let (_, state) = states().remove(0);
    for dialect in [&Nftables as &dyn Dialect, &Iptables] {
        let ns = Netns::new("kstate");
        let text = dialect.render_state(&state);
        let (program, args): (&str, Vec<&str>) = match dialect.name() {
            "nftables" => ("nft", vec!["-f", "-"]),
            _ => ("iptables-restore", vec!["--noflush"]),
        };
        let out = ns.exec(program, &args, Some(&text));
        assert!(
            out.status.success(),
            "{}: {}\n{text}",
            dialect.name(),
            String::from_utf8_lossy(&out.stderr)
        );
        let live = observe(&ns, dialect);
        assert_eq!(live.owned, state, "{}", dialect.name());
        assert!(
            live.stray.is_empty(),
            "{}: {:?}",
            dialect.name(),
            live.stray
        );
    }
}

#[test]
fn nft_json_rendering_of_a_kernel_state_is_what_the_kernel_lists() {
    let (_, state) = states().remove(0);
    let live = Nftables
        .parse_live(&planners::nftables::render_json(&state))
        .unwrap();
    assert_eq!(live.owned, state);
    assert!(live.stray.is_empty(), "{:?}", live.stray);
}

/// `count` services of 10 endpoints on 10.11.0.1, 10.11.0.2, ... (both paths); those for
/// which `affinity(i)` holds have a 600 s ClientIP affinity.
fn many_services(count: u32, affinity: impl Fn(u32) -> bool) -> NatState {
    let mut state = scaffold(&Slot::ALL, true);
    for i in 0..count {
        let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 11, 0, 0)) + 1 + i);
        for path in Path::ALL {
            state.insert_rule(PortalRule {
                key: PortalKey {
                    path,
                    vip,
                    protocol: Protocol::Tcp,
                    port: 80,
                },
                comment: Comment::new(format!("default/svc-{i}:80")).unwrap(),
                action: balance(
                    (2..12).map(|e| ep(e, 8080)).collect(),
                    affinity(i).then_some(600),
                ),
            });
        }
    }
    state
}

/// 100 affinity services make 2,000 affinity sets. A set created with a size gets its whole
/// hash table up front (about 1 MiB): this load took 12.5 s that way, and 1,000 services
/// exhausted memory. Created without one, it takes about 0.35 s.
#[test]
fn a_hundred_affinity_services_load_in_nft_without_preallocated_sets() {
    let wanted = many_services(100, |_| true);
    let ns = Netns::new("kaff");
    let mut changes = diff_states(&wanted, &NatState::default());
    changes.sort_by_key(|c| c.rank());
    let batch = Nftables.render_batch(&changes);
    let started = std::time::Instant::now();
    ns.ok("nft", &["-f", "-"], Some(&batch));
    let took = started.elapsed();
    assert!(
        took < std::time::Duration::from_secs(5),
        "loading 2,000 affinity sets took {took:?}"
    );
    let live = observe(&ns, &Nftables);
    assert_eq!(live.owned, wanted);
    assert!(live.stray.is_empty(), "{:?}", live.stray);
}

/// A change to one service among thousands sends a batch about that service only.
#[test]
fn a_change_to_one_service_among_thousands_touches_only_its_objects() {
    let before = many_services(2000, |i| i % 2 == 0);
    let target = Ipv4Addr::new(10, 11, 3, 233); // svc-1000, with affinity
    let mut after = before.clone();
    for rule in after.rules.values_mut().filter(|r| r.key.vip == target) {
        rule.action = balance((3..13).map(|e| ep(e, 8080)).collect(), Some(600));
    }
    let mut changes = diff_states(&after, &before);
    changes.sort_by_key(|c| c.rank());
    assert_eq!(changes.len(), 2, "one replace per path: {changes:?}");
    for dialect in [&Nftables as &dyn Dialect, &Iptables] {
        let batch = dialect.render_batch(&changes);
        let marks = match dialect.name() {
            "nftables" => ["10.11.3.233", "10.11.3.233"],
            _ => ["0A0B03E9", "0A0B03E9"],
        };
        for line in batch.lines() {
            let framing = line.starts_with('*') || line == "COMMIT";
            assert!(
                framing || marks.iter().any(|m| line.contains(m)),
                "{}: a line about another object: {line}\n{batch}",
                dialect.name()
            );
        }
        // Two chains of 20 rules (10 endpoints with affinity), a new set, framing.
        assert!(batch.lines().count() <= 50, "{}: {batch}", dialect.name());
    }
}

/// The masquerade scaffold as portald wrote it before client and endpoint had to share the
/// network (`source . portals`): what a host upgraded in place still has in its kernel.
const OLD_MASQUERADE_NFT: &str = "add table ip portald
add set ip portald masquerade_pairs { type ipv4_addr . ipv4_addr; flags interval; }
add chain ip portald masq
add rule ip portald masq ct status dnat ip saddr . ct original ip daddr @masquerade_pairs masquerade
add set ip portald hairpin_endpoints { type ipv4_addr . ipv4_addr; }
add rule ip portald masq ct status dnat ip saddr . ip daddr @hairpin_endpoints masquerade
add chain ip portald postrouting { type nat hook postrouting priority srcnat - 10; policy accept; }
add rule ip portald postrouting jump masq
add element ip portald masquerade_pairs { 10.244.1.0/24 . 10.11.0.0/16 }
";

const OLD_MASQUERADE_IPTABLES: &str = "*nat
:PORTAL-MASQUERADE - [0:0]
-A PORTAL-MASQUERADE -s 10.244.1.0/24 -m conntrack --ctstate DNAT --ctorigdst 10.11.0.0/16 -j MASQUERADE
-A POSTROUTING -m comment --comment \"portald:masquerade\" -j PORTAL-MASQUERADE
COMMIT
";

/// Loads the old masquerade scaffold, then plans and applies the current one over it.
fn upgrade(dialect: &dyn Dialect) {
    let ns = Netns::new("kupgrade");
    let (program, args, old): (&str, Vec<&str>, &str) = match dialect.name() {
        "nftables" => ("nft", vec!["-f", "-"], OLD_MASQUERADE_NFT),
        _ => (
            "iptables-restore",
            vec!["--noflush"],
            OLD_MASQUERADE_IPTABLES,
        ),
    };
    let out = ns.exec(program, &args, Some(old));
    assert!(
        out.status.success(),
        "{}: {}",
        dialect.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    let before = observe(&ns, dialect);
    assert!(
        !before
            .owned
            .scaffold
            .iter()
            .any(|s| matches!(s, Scaffold::Masquerade(_))),
        "{}: the old masquerade read back as a current one: {:?}",
        dialect.name(),
        before.owned.scaffold
    );
    let wanted = scaffold(&[Slot::Masquerade], true);
    // As the engine plans: the differences, and every stray removed.
    let mut changes = diff_states(&wanted, &before.owned);
    changes.extend(before.stray.iter().map(|stray| Change::RemoveStray {
        stray: stray.clone(),
    }));
    changes.sort_by_key(|c| c.rank());
    let batch = dialect.render_batch(&changes);
    let apply = dialect.apply_command();
    let apply_args: Vec<&str> = apply.args.iter().map(String::as_str).collect();
    let out = ns.exec(&apply.program, &apply_args, Some(&batch));
    assert!(
        out.status.success(),
        "{} refused the upgrade: {}\n{batch}",
        dialect.name(),
        String::from_utf8_lossy(&out.stderr)
    );
    let after = observe(&ns, dialect);
    assert!(after.stray.is_empty(), "strays {:?}\n{batch}", after.stray);
    assert_eq!(after.owned, wanted, "{batch}");
}

#[test]
fn nftables_masquerade_of_every_destination_is_replaced_in_place() {
    upgrade(&Nftables);
}

#[test]
fn iptables_masquerade_of_every_destination_is_replaced_in_place() {
    upgrade(&Iptables);
}
