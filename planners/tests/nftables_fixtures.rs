//! The nftables dialect reads dumps captured from the real kernel
//! (`fixtures/live/nftables/capture.sh`): owned state, strays and foreign rules.

use planners::{
    Action, Dialect, ForeignRule, Live, Nftables, Path, PortalKey, Protocol, Scaffold, Slot,
    StrayRule,
};
use std::net::{Ipv4Addr, SocketAddrV4};

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/../fixtures/live/nftables/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read `{path}`: {e}"))
}

fn parse(name: &str) -> Live {
    Nftables
        .parse_live(&fixture(name))
        .unwrap_or_else(|e| panic!("`{name}.json` does not parse: {e}"))
}

fn all_scaffold() -> Vec<Scaffold> {
    vec![
        Scaffold::Chain(Slot::Container),
        Scaffold::Chain(Slot::Host),
        Scaffold::Hook(Slot::Container),
        Scaffold::Hook(Slot::Host),
    ]
}

fn key(path: Path, vip: [u8; 4], protocol: Protocol, port: u16) -> PortalKey {
    PortalKey {
        path,
        vip: Ipv4Addr::from(vip),
        protocol,
        port,
    }
}

#[test]
fn every_fixture_parses_with_the_expected_counts() {
    // name, scaffold, owned rules, strays, foreign rules
    let expected = [
        ("empty", 0, 0, 0, 0),
        ("docker", 0, 0, 0, 13),
        ("firewalld", 0, 0, 0, 15),
        ("admin-filter", 0, 0, 0, 6),
        ("portald", 4, 6, 0, 0),
        ("busy", 4, 6, 1, 34),
        ("portald-damaged", 3, 6, 4, 0),
        ("portald-kernel", 10, 9, 1, 0),
        ("portald-uncounted", 2, 0, 12, 0),
    ];
    let mut failures = Vec::new();
    for (name, scaffold, rules, stray, foreign) in expected {
        match Nftables.parse_live(&fixture(name)) {
            Err(e) => failures.push(format!("`{name}`: {e}")),
            Ok(live) => {
                let got = (
                    live.owned.scaffold.len(),
                    live.owned.rules.len(),
                    live.stray.len(),
                    live.foreign.len(),
                );
                if got != (scaffold, rules, stray, foreign) {
                    failures.push(format!(
                        "`{name}`: (scaffold, rules, stray, foreign) = {got:?}, expected {:?}",
                        (scaffold, rules, stray, foreign)
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn portald_table_reads_back_every_portal_with_its_comment_and_action() {
    let live = parse("portald");
    assert_eq!(
        live.owned.scaffold.iter().copied().collect::<Vec<_>>(),
        all_scaffold()
    );
    let apache = &live.owned.rules[&key(Path::Container, [10, 11, 0, 1], Protocol::Tcp, 80)];
    assert_eq!(apache.comment.as_str(), "default/apache-service:80");
    assert_eq!(apache.action, Action::Redirect { to_port: 34001 });
    let dns = &live.owned.rules[&key(Path::Host, [10, 11, 0, 2], Protocol::Udp, 53)];
    assert_eq!(dns.comment.as_str(), "kube-system/dns:dns-udp");
    assert_eq!(
        dns.action,
        Action::DnatLocal {
            to: SocketAddrV4::new(Ipv4Addr::LOCALHOST, 34002)
        }
    );
}

#[test]
fn busy_ruleset_keeps_portald_apart_from_docker_firewalld_and_the_admin() {
    let live = parse("busy");
    assert_eq!(live.owned, parse("portald").owned);
    assert_eq!(
        live.stray,
        vec![StrayRule {
            chain: "container".into(),
            text: "ip daddr 10.11.0.7 tcp dport 8080 counter drop # handle 25".into(),
        }]
    );
    let tables: std::collections::BTreeSet<&str> = live
        .foreign
        .iter()
        .map(|f| f.location.split('/').next().unwrap())
        .collect();
    assert_eq!(
        tables.into_iter().collect::<Vec<_>>(),
        ["inet filter", "inet firewalld", "ip filter", "ip nat"]
    );
    // The foreign rules are exactly those of the three captures taken alone.
    let alone: Vec<ForeignRule> = ["docker", "firewalld", "admin-filter"]
        .into_iter()
        .flat_map(|n| parse(n).foreign)
        .collect();
    assert_eq!(live.foreign, alone);
}

#[test]
fn iptables_nft_docker_dnat_of_a_portal_address_is_a_terminal_foreign_rule() {
    let live = parse("docker");
    let conflict = live
        .foreign
        .iter()
        .find(|f| f.dst == Some(Ipv4Addr::new(10, 11, 0, 1)))
        .expect("the DNAT of 10.11.0.1 is reported");
    assert_eq!(conflict.location, "ip nat/DOCKER");
    assert_eq!(conflict.protocol, Some(Protocol::Tcp));
    assert_eq!(conflict.dport, Some(80));
    assert!(conflict.terminal);
    assert_eq!(
        conflict.text,
        "ip daddr 10.11.0.1 tcp dport 80 xt match comment counter xt target DNAT"
    );
    let masquerade = live
        .foreign
        .iter()
        .find(|f| f.location == "ip nat/POSTROUTING")
        .unwrap();
    assert!(
        !masquerade.terminal,
        "masquerade does not catch portal traffic"
    );
}

#[test]
fn admin_and_firewalld_rules_give_address_protocol_port_and_verdict() {
    let admin = parse("admin-filter");
    let facts: Vec<_> = admin
        .foreign
        .iter()
        .map(|f| (f.location.as_str(), f.dst, f.protocol, f.dport, f.terminal))
        .collect();
    let vip = |last| Some(Ipv4Addr::new(10, 11, 0, last));
    assert_eq!(
        facts,
        vec![
            ("inet filter/input", None, None, None, true),
            ("inet filter/input", None, Some(Protocol::Tcp), None, true),
            (
                "inet filter/input",
                vip(9),
                Some(Protocol::Udp),
                Some(53),
                true
            ),
            ("inet filter/input", None, Some(Protocol::Tcp), None, true),
            (
                "inet filter/prerouting",
                vip(2),
                Some(Protocol::Tcp),
                Some(443),
                true
            ),
            (
                "inet filter/prerouting",
                vip(3),
                Some(Protocol::Udp),
                Some(53),
                true
            ),
        ]
    );
    assert_eq!(
        admin.foreign[2].text,
        "ip daddr 10.11.0.9 udp dport 53 drop comment \"admin blocks a portal\""
    );
    let firewalld = parse("firewalld");
    let jump = &firewalld.foreign[4];
    assert_eq!(jump.location, "inet firewalld/filter_INPUT");
    assert_eq!(jump.text, "jump filter_INPUT_ZONES");
    assert!(!jump.terminal);
}

#[test]
fn damaged_table_reports_missing_lookup_and_unreadable_elements_as_strays() {
    let live = parse("portald-damaged");
    // The host chain lost its dnat lookup: the chain is reported absent so a re-add
    // (which flushes it) repairs it, and its remaining rule is a stray.
    assert!(!live.owned.scaffold.contains(&Scaffold::Chain(Slot::Host)));
    assert!(live.owned.scaffold.contains(&Scaffold::Hook(Slot::Host)));
    assert_eq!(
        live.stray,
        vec![
            StrayRule {
                chain: "container_redirect".into(),
                text: "10.11.0.5 . tcp . 443 : 34005".into(),
            },
            StrayRule {
                chain: "container_dnat".into(),
                text: "10.11.0.1 . tcp . 80 comment \"default/apache-service:80\" : 127.0.0.1 . 34001"
                    .into(),
            },
            StrayRule {
                chain: "host".into(),
                text: "meta l4proto { tcp, udp } redirect to :ip daddr . meta l4proto . th dport map @host_redirect # handle 16".into(),
            },
            StrayRule {
                chain: "host".into(),
                text: "meta l4proto { tcp, udp } ip daddr . meta l4proto . th dport vmap @host_services # handle 20".into(),
            },
        ]
    );
    // The key in both container maps is read from the redirect map, whose lookup comes
    // first in the chain and so wins in the kernel.
    assert_eq!(
        live.owned.rules[&key(Path::Container, [10, 11, 0, 1], Protocol::Tcp, 80)].action,
        Action::Redirect { to_port: 34001 }
    );
}

#[test]
fn unknown_expressions_and_odd_shapes_never_fail_the_parse() {
    let dump = r#"{"nftables": [
        {"metainfo": {"json_schema_version": 1}},
        {"table": {"family": "netdev", "name": "x", "handle": 1}},
        {"rule": {"family": "netdev", "table": "x", "chain": "c", "handle": 2,
                  "expr": [{"future": {"thing": [1, 2]}}, {"match": {"op": "==",
                  "left": {"osf": {"key": "name"}}, "right": "Linux"}}, 7, {"a": 1, "b": 2}]}},
        {"rule": {"family": "netdev", "table": "x"}},
        {"flowtable": {"name": "f"}},
        {"map": {"family": "ip", "table": "portald", "name": "container_redirect",
                 "type": ["ipv4_addr", "inet_proto", "inet_service"], "map": "inet_service",
                 "stmt": [{"counter": null}], "elem": [[{"concat": ["10.11.0.1", "sctp", 80]}, 1], "odd"]}}
    ]}"#;
    let live = Nftables.parse_live(dump).expect("odd dumps still parse");
    assert_eq!(live.foreign.len(), 1);
    assert_eq!(
        live.foreign[0].text,
        r#"{"future":{"thing":[1,2]}} {"osf":{"key":"name"}} Linux 7 {"a":1,"b":2}"#
    );
    assert_eq!(live.stray.len(), 2, "{:?}", live.stray);
    assert!(live.owned.is_empty());
}

#[test]
fn a_dump_that_is_not_json_is_an_error_with_its_line() {
    let err = Nftables.parse_live("{\"nftables\": [\n  oops").unwrap_err();
    assert_eq!(err.dialect, "nftables");
    assert_eq!(err.line, 2);
    let err = Nftables.parse_live("{\"tables\": []}").unwrap_err();
    assert!(err.message.contains("nftables"), "{err}");
}

#[test]
fn kernel_mode_table_reads_back_balance_affinity_reject_and_masquerade() {
    let live = parse("portald-kernel");
    let ep = |last: u8, port: u16| SocketAddrV4::new(Ipv4Addr::new(10, 244, 1, last), port);
    let web = &live.owned.rules[&key(Path::Container, [10, 11, 0, 4], Protocol::Tcp, 80)];
    assert_eq!(
        web.action,
        Action::Balance {
            endpoints: vec![ep(2, 8080), ep(3, 8080)],
            affinity_seconds: None
        }
    );
    let dns = &live.owned.rules[&key(Path::Container, [10, 11, 0, 6], Protocol::Udp, 53)];
    assert_eq!(
        dns.action,
        Action::Balance {
            endpoints: vec![ep(2, 53), ep(3, 53)],
            affinity_seconds: Some(600)
        }
    );
    let empty = &live.owned.rules[&key(Path::Container, [10, 11, 0, 5], Protocol::Tcp, 80)];
    assert_eq!(empty.action, Action::Reject);
    assert!(live
        .owned
        .scaffold
        .contains(&Scaffold::Masquerade(planners::Masquerade {
            network: "10.244.1.0/24".parse().unwrap(),
            portals: "10.11.0.0/16".parse().unwrap(),
        })));
    assert!(live
        .owned
        .scaffold
        .contains(&Scaffold::Hairpin("10.244.1.2".parse().unwrap())));
    for slot in [Slot::ContainerReject, Slot::Masquerade] {
        assert!(
            live.owned.scaffold.contains(&Scaffold::Chain(slot)),
            "{slot}"
        );
        assert!(
            live.owned.scaffold.contains(&Scaffold::Hook(slot)),
            "{slot}"
        );
    }
    // A portal chain no element points at is an orphan, removed whole.
    assert_eq!(
        live.stray,
        vec![StrayRule {
            chain: "svc-c-10.11.0.9-tcp-80".into(),
            text: "chain svc-c-10.11.0.9-tcp-80".into(),
        }]
    );
    // What portald would write for this state is what the kernel listed.
    let state = Nftables.render_state(&live.owned);
    assert!(state.contains("goto svc-c-10.11.0.4-tcp-80"), "{state}");
}

#[test]
fn a_masquerade_element_whose_client_and_endpoint_networks_differ_is_a_stray() {
    let same = r#"{"concat": [{"prefix": {"addr": "10.244.1.0", "len": 24}}, {"prefix": {"addr": "10.244.1.0", "len": 24}}"#;
    let differ = r#"{"concat": [{"prefix": {"addr": "10.244.1.0", "len": 24}}, {"prefix": {"addr": "10.244.2.0", "len": 24}}"#;
    let dump = fixture("portald-kernel");
    assert!(dump.contains(same), "the capture has no masquerade element");
    let live = Nftables
        .parse_live(&dump.replace(same, differ))
        .expect("parses");
    assert!(
        !live
            .owned
            .scaffold
            .iter()
            .any(|s| matches!(s, Scaffold::Masquerade(_))),
        "{:?}",
        live.owned.scaffold
    );
    assert!(
        live.stray.iter().any(|s| s.chain == "masquerade_networks"),
        "{:?}",
        live.stray
    );
}

#[test]
fn a_table_from_before_the_portal_counters_has_its_nat_maps_made_anew() {
    let live = parse("portald-uncounted");
    // Each NAT map is a stray to delete whole, its chain absent so that the batch adds it
    // back (with the maps, now counted); the portals are not owned, so they are added too.
    assert_eq!(
        live.owned.scaffold.iter().copied().collect::<Vec<_>>(),
        vec![Scaffold::Hook(Slot::Container), Scaffold::Hook(Slot::Host)]
    );
    assert!(live.owned.rules.is_empty(), "{:?}", live.owned.rules);
    let maps: Vec<&str> = live
        .stray
        .iter()
        .filter(|s| s.text == format!("map {}", s.chain))
        .map(|s| s.chain.as_str())
        .collect();
    assert_eq!(
        maps,
        [
            "container_redirect",
            "container_dnat",
            "container_services",
            "host_redirect",
            "host_dnat",
            "host_services"
        ]
    );
    // The same table as batches write it now is read whole.
    assert_eq!(parse("portald").owned.rules.len(), 6);
}
