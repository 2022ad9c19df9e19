//! Tier 3: kernel mode with nftables on a host whose filter FORWARD drops by policy. Where
//! iptables manages that FORWARD (iptables-nft or iptables-legacy), portald keeps its own
//! `PORTAL-FORWARD` chain and one jump there, as the iptables backend does, for as long as the
//! policy drops, and through backend switches; a dropping chain in any other table is
//! reported by name, never written to. Needs root, iproute2, iptables (nft and legacy), nft,
//! sysctl, curl.

mod support;

use support::*;

const WEB_URL: &str = "http://10.11.0.40/";
const DNS: &str = "10.11.0.53:53";

/// The companion chain as `iptables-save` prints it (normalized): declaration, jump, accept.
const COMPANION: [&str; 3] = [
    ":PORTAL-FORWARD -",
    "-A FORWARD -m comment --comment \"portald:forward\" -j PORTAL-FORWARD",
    "-A PORTAL-FORWARD -m conntrack --ctstate DNAT --ctorigdst 10.11.0.0/16 -j ACCEPT",
];

/// Docker's filter FORWARD, besides `DOCKER-USER` of [`FOREIGN`]: policy DROP, its chain.
const DOCKER_FILTER: &[&[&str]] = &[
    &["-t", "filter", "-P", "FORWARD", "DROP"],
    &["-t", "filter", "-N", "DOCKER"],
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
];

/// A node with pod1 (TCP 80, UDP 53) behind two services, a client on the bridge, and
/// br_netfilter on (every Docker host has it).
fn node(tag: &str) -> (Cluster, String) {
    let mut c = Cluster::new(tag);
    c.pod("pod1", POD1, &[("pod1", &[80], &[53])]);
    let client = c.client("client", CLIENT);
    c.run_ok(
        &c.node(),
        "sysctl",
        &["-w", "net.bridge.bridge-nf-call-iptables=1"],
    );
    c.write(
        "web.yaml",
        &service_yaml("web", Some("10.11.0.40"), "web", "TCP", 80, 80),
    );
    c.write(
        "dns.yaml",
        &service_yaml("dns", Some("10.11.0.53"), "web", "UDP", 53, 53),
    );
    c.write("pods.yaml", &pods_yaml(&[("pod1", POD1, "web")]));
    (c, client)
}

/// Docker's rules through `tool` (`iptables-nft` or `iptables-legacy`).
fn docker(c: &Cluster, tool: &str) {
    for rule in FOREIGN.iter().chain(DOCKER_FILTER) {
        c.run_ok(&c.node(), tool, rule);
    }
}

/// `TOOL-save` in the node (`iptables-nft`, `iptables-legacy`).
fn save(c: &Cluster, tool: &str) -> String {
    c.run_ok(&c.node(), &format!("{tool}-save"), &[])
}

/// TCP and UDP from the client reach pod1 through the VIPs.
fn crosses(c: &Cluster, client: &str, when: &str) {
    let reply = c.curl(client, WEB_URL, 3);
    assert!(
        reply.ok() && reply.body.trim() == "pod1",
        "TCP through the VIP {when}: {reply:?}\n{}",
        c.daemon_logs()
    );
    let (all, lines) = c.udp_probe(client, DNS, 3);
    assert!(
        all,
        "UDP through the VIP {when}: {lines:?}\n{}",
        c.daemon_logs()
    );
}

/// Waits until portald's lines in `tool`'s dump are `expected`.
fn wait_portal_lines(c: &Cluster, tool: &str, expected: &[&str], what: &str) {
    poll(what, CONVERGE, || {
        let lines = portal_lines(&save(c, tool));
        if lines == expected {
            Ok(())
        } else {
            Err(format!("{tool}: {lines:#?}"))
        }
    });
}

/// Whether portald's nft table exists in the node.
fn nft_table(c: &Cluster) -> bool {
    c.run(&c.node(), "nft", &["list", "table", "ip", "portald"])
        .status
        .success()
}

#[test]
fn nftables_kernel_mode_crosses_a_docker_forward_drop_in_iptables_legacy_and_leaves_it_as_it_was() {
    let (mut c, client) = node("fwdleg");
    docker(&c, "iptables-legacy");
    let baseline = foreign_lines(&save(&c, "iptables-legacy"));
    assert!(
        baseline.iter().any(|l| l == ":FORWARD DROP"),
        "{baseline:#?}"
    );
    c.start_daemon(&["--backend", "nftables", "--mode", "kernel"]);

    crosses(&c, &client, "past legacy's FORWARD DROP");
    assert_eq!(portal_lines(&save(&c, "iptables-legacy")), COMPANION);
    assert!(
        portal_lines(&save(&c, "iptables-nft")).is_empty(),
        "iptables-nft's FORWARD accepts: nothing of portald's is wanted there"
    );
    // Only what portald translated: the pod straight, not through a VIP, is still dropped.
    let direct = c.curl(&client, &format!("http://{POD1}/"), 2);
    assert!(!direct.ok(), "untranslated traffic crossed: {direct:?}");
    assert_eq!(
        foreign_lines(&save(&c, "iptables-legacy")),
        baseline,
        "a foreign rule or policy changed"
    );
    c.assert_plans_nothing_in_kernel_mode("nftables");
}

#[test]
fn the_forward_chain_follows_each_flavours_policy_and_goes_with_the_daemon() {
    let (mut c, client) = node("fwdpol");
    let node = c.node();
    docker(&c, "iptables-nft");
    c.run_ok(&node, "iptables-legacy", &["-P", "FORWARD", "DROP"]);
    let nft_baseline = foreign_lines(&save(&c, "iptables-nft"));
    let legacy_baseline = foreign_lines(&save(&c, "iptables-legacy"));
    let daemon = c.start_daemon(&[
        "--backend",
        "nftables",
        "--mode",
        "kernel",
        "--cleanup-on-exit",
    ]);

    // Both flavours drop: the chain in both.
    crosses(&c, &client, "past both FORWARD DROPs");
    assert_eq!(portal_lines(&save(&c, "iptables-nft")), COMPANION);
    assert_eq!(portal_lines(&save(&c, "iptables-legacy")), COMPANION);
    c.assert_plans_nothing_in_kernel_mode("nftables");

    // iptables-nft's policy accepts again: its chain goes at the next pass, legacy's stays.
    c.run_ok(&node, "iptables-nft", &["-P", "FORWARD", "ACCEPT"]);
    wait_portal_lines(&c, "iptables-nft", &[], "the iptables-nft chain to go");
    assert_eq!(portal_lines(&save(&c, "iptables-legacy")), COMPANION);
    crosses(&c, &client, "with iptables-nft accepting");

    // And back to DROP: back again.
    c.run_ok(&node, "iptables-nft", &["-P", "FORWARD", "DROP"]);
    wait_portal_lines(
        &c,
        "iptables-nft",
        &COMPANION,
        "the iptables-nft chain to return",
    );
    crosses(&c, &client, "after the policy dropped again");

    // The daemon stops (--cleanup-on-exit): nothing of portald's anywhere, the foreign rules
    // as they were.
    c.stop_daemon(SIGTERM);
    poll("the daemon to exit", CONVERGE, || {
        if alive(daemon) {
            Err("still running".to_string())
        } else {
            Ok(())
        }
    });
    for tool in ["iptables-nft", "iptables-legacy"] {
        assert!(
            portal_lines(&save(&c, tool)).is_empty(),
            "{tool} after exit"
        );
    }
    assert!(!nft_table(&c), "the nft table after exit");
    assert_eq!(foreign_lines(&save(&c, "iptables-nft")), nft_baseline);
    assert_eq!(foreign_lines(&save(&c, "iptables-legacy")), legacy_baseline);

    // A one-shot apply puts the chains in; `portald cleanup` takes them out.
    let dir = c.dir.display().to_string();
    let apply = c.portald(&["apply", &dir, "--backend", "nftables", "--mode", "kernel"]);
    assert!(
        apply.status.success(),
        "{}",
        String::from_utf8_lossy(&apply.stderr)
    );
    assert_eq!(portal_lines(&save(&c, "iptables-legacy")), COMPANION);
    let cleanup = c.portald(&["cleanup", "--backend", "nftables"]);
    assert!(
        cleanup.status.success(),
        "{}",
        String::from_utf8_lossy(&cleanup.stderr)
    );
    for tool in ["iptables-nft", "iptables-legacy"] {
        assert!(
            portal_lines(&save(&c, tool)).is_empty(),
            "{tool} after cleanup"
        );
    }
    assert!(!nft_table(&c), "the nft table after cleanup");
}

#[test]
fn backend_switches_under_a_docker_forward_drop_keep_traffic_and_only_the_shared_chain() {
    let (mut c, client) = node("fwdsw");
    let node = c.node();
    docker(&c, "iptables-nft");
    c.run_ok(&node, "iptables-legacy", &["-P", "FORWARD", "DROP"]);
    let baseline = foreign_lines(&save(&c, "iptables-nft"));
    c.start_daemon(&["--backend", "nftables", "--mode", "kernel"]);
    crosses(&c, &client, "with nftables");

    let switch = |backend: &str| {
        let out = c.portald(&["switch", "--backend", backend]);
        assert!(
            out.status.success(),
            "switch to {backend}: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            c.daemon_logs()
        );
        assert_eq!(c.status().backend, backend);
    };

    // nftables -> iptables: the iptables backend takes the chain over in iptables-nft (and
    // keeps legacy's beside it); nothing of portald's is left in nftables.
    switch("iptables");
    crosses(&c, &client, "after switching to iptables");
    assert!(!nft_table(&c), "portald's nft table after switching away");
    let owned = portal_lines(&save(&c, "iptables-nft"));
    assert!(
        COMPANION.iter().all(|l| owned.iter().any(|o| o == l))
            && owned.iter().any(|l| l.starts_with(":PORTAL-CONTAINER")),
        "{owned:#?}"
    );
    assert_eq!(portal_lines(&save(&c, "iptables-legacy")), COMPANION);
    c.assert_plans_nothing_in_kernel_mode("iptables");

    // iptables -> nftables: of all portald owned through iptables, only the shared chain.
    switch("nftables");
    crosses(&c, &client, "after switching back to nftables");
    assert!(nft_table(&c));
    assert_eq!(portal_lines(&save(&c, "iptables-nft")), COMPANION);
    assert_eq!(portal_lines(&save(&c, "iptables-legacy")), COMPANION);
    assert_eq!(foreign_lines(&save(&c, "iptables-nft")), baseline);
    c.assert_plans_nothing_in_kernel_mode("nftables");

    // Userspace mode forwards nothing of portald's: the chains go.
    let out = c.portald(&["switch", "--mode", "userspace"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for tool in ["iptables-nft", "iptables-legacy"] {
        assert!(
            portal_lines(&save(&c, tool)).is_empty(),
            "{tool} in userspace mode"
        );
    }
    assert_eq!(c.get(&client, WEB_URL), "pod1", "userspace mode");
}

#[test]
fn a_forward_drop_in_a_foreign_inet_table_is_reported_by_name_and_left_alone() {
    let (mut c, client) = node("fwdinet");
    let node = c.node();
    c.run_ok(&node, "nft", &["add", "table", "inet", "firewalld"]);
    c.run_ok(
        &node,
        "nft",
        &["add chain inet firewalld filter_FORWARD { type filter hook forward priority 0 ; policy drop ; }"],
    );
    let before = c.run_ok(&node, "nft", &["list", "table", "inet", "firewalld"]);
    let daemon = c.start_daemon(&["--backend", "nftables", "--mode", "kernel"]);

    let named = |message: &str| {
        message.contains("`inet firewalld/filter_FORWARD` drops forwarded packets")
            && message.contains("writes no rule into this foreign table")
    };
    let status = c.status();
    assert!(
        status.diagnostics.iter().any(|d| named(&d.message)),
        "{:#?}",
        status.diagnostics
    );
    assert!(
        c.bed
            .log_of(daemon)
            .contains("`inet firewalld/filter_FORWARD` drops forwarded packets"),
        "{}",
        c.daemon_logs()
    );
    // The report is right: the traffic is dropped there; and nothing was written anywhere.
    assert!(!c.curl(&client, WEB_URL, 2).ok());
    assert_eq!(
        c.run_ok(&node, "nft", &["list", "table", "inet", "firewalld"]),
        before
    );
    for tool in ["iptables-nft", "iptables-legacy"] {
        assert!(portal_lines(&save(&c, tool)).is_empty(), "{tool}");
    }
}
