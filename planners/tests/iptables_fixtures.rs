//! The iptables dialect reads dumps captured from a real kernel (`fixtures/live/iptables/`).

mod iptables_support;

use iptables_support::*;
use planners::{Dialect, ForeignRule, Iptables, Live, Protocol, StrayRule};
use std::net::Ipv4Addr;

fn parse(stem: &str) -> Live {
    Iptables
        .parse_live(&fixture(stem))
        .unwrap_or_else(|e| panic!("fixture `{stem}` does not parse: {e}"))
}

fn find<'a>(live: &'a Live, location: &str, needle: &str) -> &'a ForeignRule {
    live.foreign
        .iter()
        .find(|r| r.location == location && r.text.contains(needle))
        .unwrap_or_else(|| panic!("no foreign rule in `{location}` containing `{needle}`"))
}

#[test]
fn every_fixture_parses_with_and_without_counters_to_the_same_live_state() {
    let mut failures = Vec::new();
    for name in FIXTURES {
        let plain = Iptables.parse_live(&fixture(name));
        let counted = Iptables.parse_live(&fixture(&format!("{name}-counters")));
        match (plain, counted) {
            (Ok(plain), Ok(counted)) if plain == counted => {}
            (Ok(_), Ok(_)) => failures.push(format!("{name}: counters change the parse")),
            (plain, counted) => failures.push(format!("{name}: {plain:?} / {counted:?}")),
        }
    }
    assert!(
        failures.is_empty(),
        "fixtures failing:\n{}",
        failures.join("\n")
    );
}

#[test]
fn every_rule_line_of_every_fixture_is_owned_stray_or_foreign_exactly_once() {
    for name in FIXTURES {
        for stem in [name.to_string(), format!("{name}-counters")] {
            let dump = fixture(&stem);
            let live = Iptables.parse_live(&dump).unwrap();
            let hooks = live
                .owned
                .scaffold
                .iter()
                .filter(|s| matches!(s, planners::Scaffold::Hook(_)))
                .count();
            assert_eq!(
                live.owned.rules.len() + hooks + live.stray.len() + live.foreign.len(),
                rule_lines(&dump),
                "{stem}"
            );
        }
    }
}

#[test]
fn hosts_without_portald_have_only_foreign_rules() {
    for name in ["docker", "kube-proxy", "firewalld"] {
        let live = parse(name);
        assert!(live.owned.is_empty(), "{name}: {:?}", live.owned);
        assert!(live.stray.is_empty(), "{name}: {:?}", live.stray);
        assert!(!live.foreign.is_empty(), "{name}");
    }
}

#[test]
fn docker_published_ports_are_read_as_terminal_dnat_with_their_port() {
    let live = parse("docker");
    let tcp = find(&live, "nat/DOCKER", "--dport 8080");
    assert_eq!(
        (tcp.dst, tcp.protocol, tcp.dport, tcp.terminal),
        (None, Some(Protocol::Tcp), Some(8080), true)
    );
    let udp = find(&live, "nat/DOCKER", "--dport 5353");
    assert_eq!(udp.dst, Some(Ipv4Addr::LOCALHOST));
    assert_eq!(
        (udp.protocol, udp.dport, udp.terminal),
        (Some(Protocol::Udp), Some(5353), true)
    );
    let local = find(&live, "nat/OUTPUT", "addrtype");
    assert_eq!(
        (local.dst, local.terminal),
        (None, false),
        "`! -d 127.0.0.0/8` is no single address"
    );
    assert!(
        find(&live, "nat/POSTROUTING", "! -o docker0").terminal,
        "MASQUERADE is terminal"
    );
    assert!(
        !find(&live, "filter/DOCKER-USER", "RETURN").terminal,
        "RETURN is not terminal"
    );
    assert_eq!(live.foreign.len(), 21, "every docker rule line");
}

#[test]
fn kube_proxy_rules_keep_their_comments_and_modules_as_text() {
    let live = parse("kube-proxy");
    let dns = find(&live, "nat/KUBE-SERVICES", "kube-dns:dns cluster IP");
    assert_eq!(dns.dst, Some(Ipv4Addr::new(10, 96, 0, 10)));
    assert_eq!(
        (dns.protocol, dns.dport, dns.terminal),
        (Some(Protocol::Udp), Some(53), false)
    );
    let quoted = find(&live, "nat/KUBE-SEP-ZXMNUKOKXUTL2MK2", "do not touch");
    assert_eq!(
        quoted.text,
        r#"-A KUBE-SEP-ZXMNUKOKXUTL2MK2 -s 10.244.0.5/32 -m comment --comment "admin said \"do not touch\" \\o/" -j KUBE-MARK-MASQ"#
    );
    let random = find(
        &live,
        "nat/KUBE-SVC-NPX46M4PTMTKRN6Y",
        "--probability 0.50000000000",
    );
    assert!(!random.terminal);
    let reject = find(&live, "filter/KUBE-SERVICES", "has no endpoints");
    assert_eq!(
        (reject.dst, reject.dport, reject.terminal),
        (Some(Ipv4Addr::new(10, 96, 0, 20)), Some(80), true)
    );
    assert_eq!(live.foreign.len(), 35, "every kube-proxy rule line");
}

#[test]
fn firewalld_rules_in_every_table_are_foreign_and_a_dnat_on_a_portal_vip_is_visible() {
    let live = parse("firewalld");
    for table in ["filter", "nat", "mangle", "raw", "security"] {
        assert!(
            live.foreign
                .iter()
                .any(|r| r.location.starts_with(&format!("{table}/"))),
            "{table}"
        );
    }
    let clash = find(&live, "nat/PRE_public_allow", "10.11.0.1/32");
    assert_eq!(clash.dst, Some(Ipv4Addr::new(10, 11, 0, 1)));
    assert_eq!(
        (clash.protocol, clash.dport, clash.terminal),
        (Some(Protocol::Tcp), Some(12345), true)
    );
    let notrack = find(&live, "raw/OUTPUT", "198.51.100.7");
    assert_eq!(notrack.dport, None, "`! --dport 22` is not port 22");
    let evil = find(&live, "filter/IN_public_deny", "--string");
    assert!(evil.text.contains(r#""GET /\"evil\" x""#));
    assert!(evil.terminal);
}

#[test]
fn portald_busy_host_yields_portalds_state_two_strays_and_everything_else_foreign() {
    let dump = fixture("portald-busy");
    let live = parse("portald-busy");
    assert_eq!(live.owned, seed_state());
    assert_eq!(
        live.stray,
        vec![
            StrayRule {
                chain: "OUTPUT".into(),
                text: "-A OUTPUT -d 10.11.0.0/16 -j PORTAL-HOST".into(),
            },
            StrayRule {
                chain: "PORTAL-HOST".into(),
                text: r#"-A PORTAL-HOST -p tcp -m comment --comment "added by \"hand\"" -j ACCEPT"#
                    .into(),
            },
        ]
    );
    assert_eq!(live.foreign.len(), rule_lines(&dump) - 4 - 2 - 2);
    assert!(live.foreign.iter().all(|r| !r.text.contains("PORTAL-")));
}
