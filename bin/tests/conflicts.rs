//! Tier 3: foreign rules that take a service's traffic before portald's hooks, in either
//! backend and in the other iptables flavour, are reported by the daemon (status, log once)
//! and by `plan`, and are left byte-identical. Needs root, iproute2, iptables (nft and
//! legacy) and nft.

mod support;

use std::process::{Command, Stdio};
use support::*;

/// `web` (10.11.0.40:80) and `empty` (10.11.0.41:80), neither with an endpoint: both are
/// refused by portald, so its NAT hooks and its refusal hooks are both in play.
const SERVICES: &str = "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.11.0.40
  selector: {app: nobody}
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: empty}
spec:
  clusterIP: 10.11.0.41
  selector: {app: nobody}
  ports: [{port: 80}]
";

/// A legacy DNAT of `empty`'s VIP:port (iptables-legacy beside portald's nf_tables).
const LEGACY_DNAT: &[&str] = &[
    "-t",
    "nat",
    "-A",
    "PREROUTING",
    "-d",
    "10.11.0.41/32",
    "-p",
    "tcp",
    "-m",
    "tcp",
    "--dport",
    "80",
    "-j",
    "DNAT",
    "--to-destination",
    "10.244.1.7:80",
];
const LEGACY_TEXT: &str =
    "-A PREROUTING -d 10.11.0.41/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.244.1.7:80";

/// An admin's nftables table whose base chains run before portald's (priorities -150 and
/// -300 against portald's -110): a DNAT of `web`, and a drop of the whole portal range.
const EARLY_TABLE: &str = "table ip early {
	chain nat_first {
		type nat hook prerouting priority -150; policy accept;
		ip daddr 10.11.0.40 tcp dport 80 dnat to 10.244.1.9:80
	}
	chain drop_first {
		type filter hook prerouting priority -300; policy accept;
		ip daddr 10.11.0.0/16 drop
	}
}
";

/// The daemon's diagnostics as `object: message` lines.
fn conflicts(status: &Status) -> Vec<String> {
    status
        .diagnostics
        .iter()
        .filter(|d| d.message.contains("foreign rule"))
        .map(|d| format!("{}: {}", d.object.clone().unwrap_or_default(), d.message))
        .collect()
}

/// Waits until a diagnostic names the service, the `table/chain` location and the rule
/// text; returns its message.
fn wait_conflict(c: &Cluster, service: &str, location: &str, text: &str) -> String {
    c.wait_status(&format!("a conflict in {location}"), |s| {
        let all = conflicts(s);
        all.iter()
            .find(|m| {
                m.starts_with(&format!("Service `{service}`"))
                    && m.contains(&format!("`{location}`"))
                    && m.contains(text)
            })
            .cloned()
            .ok_or_else(|| format!("{all:#?}"))
    })
}

/// Waits for `n` more reconciles, so a conflict that lasts has been seen again.
fn wait_reconciles(c: &Cluster, n: u64) {
    let start = c.status().reconciles;
    c.wait_status("more reconciles", |s| {
        if s.reconciles >= start + n {
            Ok(())
        } else {
            Err(format!("{} reconciles", s.reconciles))
        }
    });
}

/// The three conflicts both backends report, each as `status` shows it: the legacy DNAT
/// against `default/empty`, the foreign DNAT ahead of the container hook against
/// `default/web` (at `nat`: location, rule), and the foreign drop of the portal range
/// against `default/empty` (at `drop`).
fn wait_three_conflicts(c: &Cluster, nat: (&str, &str), drop: (&str, &str)) -> [String; 3] {
    [
        wait_conflict(
            c,
            "default/empty",
            "iptables-legacy nat/PREROUTING",
            LEGACY_TEXT,
        ),
        wait_conflict(c, "default/web", nat.0, nat.1),
        wait_conflict(c, "default/empty", drop.0, drop.1),
    ]
}

/// Each message appears in the daemon's log exactly once.
fn logged_once(c: &Cluster, messages: &[&str]) {
    let logs = c.daemon_logs();
    for message in messages {
        // The message after `Service `ns/name`: `, as the log line carries it.
        let needle = message.split_once(": ").map_or(*message, |(_, m)| m);
        let times = logs.matches(needle).count();
        assert_eq!(times, 1, "logged {times} times: {needle}\n{logs}");
    }
}

fn legacy_save(c: &Cluster) -> Vec<String> {
    normalize_save(&c.run_ok(&c.node(), "iptables-legacy-save", &[]))
}

fn load_nft(c: &Cluster, text: &str) {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &c.node(), "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("spawning nft");
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .expect("nft stdin")
            .write_all(text.as_bytes())
            .expect("writing to nft");
    }
    assert!(child.wait().expect("nft").success(), "nft -f failed");
}

#[test]
fn iptables_foreign_rules_ahead_of_the_hooks_and_in_legacy_are_reported_and_kept() {
    let mut c = Cluster::new("cfi");
    let node = c.node();
    c.run_ok(&node, "iptables-legacy", LEGACY_DNAT);
    c.write("services.yaml", SERVICES);
    c.start_daemon(&["--backend", "iptables", "--mode", "userspace"]);
    // Inserted above portald's hooks, which are already at the top of their chains.
    c.iptables(&[
        "-t",
        "nat",
        "-I",
        "PREROUTING",
        "1",
        "-d",
        "10.11.0.40/32",
        "-p",
        "tcp",
        "-m",
        "tcp",
        "--dport",
        "80",
        "-j",
        "DNAT",
        "--to-destination",
        "10.244.1.9:80",
    ]);
    c.iptables(&["-I", "FORWARD", "1", "-d", "10.11.0.0/16", "-j", "DROP"]);
    let legacy_before = legacy_save(&c);
    let foreign_before = foreign_lines(&c.iptables_save());

    let [legacy, nat, drop] = wait_three_conflicts(
        &c,
        (
            "nat/PREROUTING",
            "-A PREROUTING -d 10.11.0.40/32 -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.244.1.9:80",
        ),
        ("filter/FORWARD", "-A FORWARD -d 10.11.0.0/16 -j DROP"),
    );
    assert!(nat.contains("container hook"), "{nat}");
    assert!(drop.contains("container-reject hook"), "{drop}");
    // The legacy DNAT of `empty` does not name `web`'s VIP: not reported against it.
    assert!(
        !conflicts(&c.status())
            .iter()
            .any(|m| m.starts_with("Service `default/web`") && m.contains("iptables-legacy")),
        "{:#?}",
        conflicts(&c.status())
    );

    wait_reconciles(&c, 2);
    logged_once(&c, &[&legacy, &nat, &drop]);
    let plan = c.portald(&[
        "plan",
        &c.dir.display().to_string(),
        "--backend",
        "iptables",
    ]);
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&plan.stdout),
        String::from_utf8_lossy(&plan.stderr)
    );
    assert!(
        shown.contains("`iptables-legacy nat/PREROUTING`") && shown.contains(LEGACY_TEXT),
        "{shown}"
    );
    assert_eq!(legacy_save(&c), legacy_before, "legacy rules changed");
    assert_eq!(
        foreign_lines(&c.iptables_save()),
        foreign_before,
        "foreign rules changed"
    );
}

#[test]
fn nftables_foreign_chains_ahead_of_the_hooks_and_legacy_rules_are_reported_and_kept() {
    let mut c = Cluster::new("cfn");
    let node = c.node();
    c.run_ok(&node, "iptables-legacy", LEGACY_DNAT);
    load_nft(&c, EARLY_TABLE);
    let table_before = c.run_ok(&node, "nft", &["list", "table", "ip", "early"]);
    let legacy_before = legacy_save(&c);
    c.write("services.yaml", SERVICES);
    c.start_daemon(&["--backend", "nftables", "--mode", "userspace"]);

    let [legacy, nat, drop] = wait_three_conflicts(
        &c,
        (
            "ip early/nat_first",
            "ip daddr 10.11.0.40 tcp dport 80 dnat to 10.244.1.9:80",
        ),
        ("ip early/drop_first", "ip daddr 10.11.0.0/16 drop"),
    );
    assert!(nat.contains("container hook"), "{nat}");
    wait_reconciles(&c, 2);
    logged_once(&c, &[&legacy, &nat, &drop]);
    assert_eq!(
        c.run_ok(&node, "nft", &["list", "table", "ip", "early"]),
        table_before,
        "the foreign table changed"
    );
    assert_eq!(legacy_save(&c), legacy_before, "legacy rules changed");
}
