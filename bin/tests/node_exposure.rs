//! Tier 3: what a node exposes beyond its VIPs. Proxy ports refuse what portald's NAT did
//! not send them, and kernel mode lets its translated traffic through a Docker-like
//! FORWARD policy of DROP without changing a foreign rule. Needs root, iproute2, iptables,
//! nft and curl.

mod support;

use std::time::Duration;
use support::*;

const WEB_URL: &str = "http://10.11.0.40/";

fn services(c: &Cluster) {
    c.write(
        "web.yaml",
        &service_yaml("web", Some("10.11.0.40"), "web", "TCP", 80, 80),
    );
    c.write(
        "dns.yaml",
        &service_yaml("dns", Some("10.11.0.53"), "web", "UDP", 53, 53),
    );
    c.write("pods.yaml", &pods_yaml(&[("pod1", POD1, "web")]));
}

/// A neighbour on the bridge connects to node-address:proxy-port, bypassing the VIP: the
/// guard refuses it (TCP at once, UDP with no answer), while the VIP still works from the
/// node (DNAT to 127.0.0.1) and from a pod (REDIRECT).
fn guard(backend: &str) {
    let mut c = Cluster::new(&format!("guard{}", &backend[..1]));
    c.pod("pod1", POD1, &[("pod1", &[80], &[53])]);
    let client = c.client("client", CLIENT);
    let node = c.node();
    services(&c);
    c.start_daemon(&["--backend", backend, "--mode", "userspace"]);
    let status = c.status();
    let tcp = proxy_port(&status, "default/web", 80).unwrap();
    let udp = proxy_port(&status, "default/dns", 53).unwrap();

    for ns in [&node, &client] {
        assert_eq!(c.get(ns, WEB_URL), "pod1", "the VIP from {ns}");
    }
    let (all, lines) = c.udp_probe(&client, "10.11.0.53:53", 3);
    assert!(all, "UDP through the VIP: {lines:?}");

    let node_addr = engine::netns::NODE_ADDR;
    let direct = c.curl(&client, &format!("http://{node_addr}:{tcp}/"), 5);
    assert_eq!(
        direct.code,
        Some(7),
        "a neighbour reached proxy port {tcp} directly: {direct:?}"
    );
    assert!(direct.elapsed < Duration::from_secs(3), "{direct:?}");
    let (any, lines) = c.udp_probe(&client, &format!("{node_addr}:{udp}"), 2);
    assert!(
        !any && lines.iter().all(|l| !l.starts_with("pod")),
        "a neighbour reached UDP proxy port {udp} directly: {lines:?}"
    );
    // Still answered through the VIP after the refusals.
    assert_eq!(c.get(&client, WEB_URL), "pod1");
}

#[test]
fn iptables_proxy_ports_refuse_a_neighbour_but_not_the_vip() {
    guard("iptables");
}

#[test]
fn nftables_proxy_ports_refuse_a_neighbour_but_not_the_vip() {
    guard("nftables");
}

/// Docker's filter rules besides those of [`FOREIGN`] (which has `DOCKER-USER` and the nat
/// `DOCKER` chain): FORWARD policy DROP and its chains jumped from FORWARD.
const DOCKER_FILTER: &[&[&str]] = &[
    &["-t", "filter", "-P", "FORWARD", "DROP"],
    &["-t", "filter", "-N", "DOCKER"],
    &["-t", "filter", "-N", "DOCKER-ISOLATION-STAGE-1"],
    &["-t", "filter", "-N", "DOCKER-ISOLATION-STAGE-2"],
    &[
        "-t",
        "filter",
        "-A",
        "FORWARD",
        "-j",
        "DOCKER-ISOLATION-STAGE-1",
    ],
    &[
        "-t",
        "filter",
        "-A",
        "FORWARD",
        "-o",
        "docker0",
        "-m",
        "conntrack",
        "--ctstate",
        "RELATED,ESTABLISHED",
        "-j",
        "ACCEPT",
    ],
    &[
        "-t", "filter", "-A", "FORWARD", "-o", "docker0", "-j", "DOCKER",
    ],
    &[
        "-t",
        "filter",
        "-A",
        "DOCKER-ISOLATION-STAGE-1",
        "-i",
        "docker0",
        "!",
        "-o",
        "docker0",
        "-j",
        "DOCKER-ISOLATION-STAGE-2",
    ],
    &[
        "-t",
        "filter",
        "-A",
        "DOCKER-ISOLATION-STAGE-1",
        "-j",
        "RETURN",
    ],
    &[
        "-t",
        "filter",
        "-A",
        "DOCKER-ISOLATION-STAGE-2",
        "-o",
        "docker0",
        "-j",
        "DROP",
    ],
    &[
        "-t",
        "filter",
        "-A",
        "DOCKER-ISOLATION-STAGE-2",
        "-j",
        "RETURN",
    ],
];

#[test]
fn iptables_kernel_mode_crosses_a_docker_forward_drop_policy_and_leaves_it_as_it_was() {
    let mut c = Cluster::new("dockfwd");
    c.pod("pod1", POD1, &[("pod1", &[80], &[53])]);
    let client = c.client("client", CLIENT);
    for rule in FOREIGN.iter().chain(DOCKER_FILTER) {
        c.iptables(rule);
    }
    let baseline = foreign_lines(&c.iptables_save());
    assert!(
        baseline.iter().any(|l| l == ":FORWARD DROP"),
        "{baseline:#?}"
    );
    services(&c);
    c.start_daemon(&["--backend", "iptables", "--mode", "kernel"]);

    // From another namespace: DNAT in PREROUTING, then FORWARD, where Docker's policy drops.
    assert_eq!(c.get(&client, WEB_URL), "pod1");
    let (all, lines) = c.udp_probe(&client, "10.11.0.53:53", 3);
    assert!(all, "UDP through the VIP past FORWARD DROP: {lines:?}");
    // Nothing else is let through: the pod directly, not through a VIP, is still dropped.
    let direct = c.curl(&client, &format!("http://{POD1}/"), 2);
    assert!(
        !direct.ok(),
        "traffic portald did not translate crossed FORWARD: {direct:?}"
    );
    assert_eq!(
        foreign_lines(&c.iptables_save()),
        baseline,
        "a foreign rule or policy changed"
    );
}
