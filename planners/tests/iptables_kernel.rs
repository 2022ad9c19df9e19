//! Tier 3: the iptables dialect against the real kernel, each test in a network namespace of
//! its own (`ip netns add`, deleted by a guard even when the test fails), so the host's rules
//! are never read or touched. Needs root, iproute2 and iptables; fails (never skips) without.

mod iptables_support;

use iptables_support::*;
use planners::{
    apply_changes, Change, Dialect, Invocation, Iptables, Live, NatState, Path, Protocol,
};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Runs a program with `stdin`; `Err(stderr)` when it exits non-zero. A program that cannot
/// be started at all fails the test with a message that names what is missing.
fn run(program: &str, args: &[String], stdin: &str) -> Result<String, String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run `{program}`: {e}; the iptables kernel tests need root, iproute2 \
                 (`ip`) and iptables (`iptables-save`, `iptables-restore`)"
            )
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).unwrap())
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A named network namespace that is deleted when dropped, panicking test or not.
struct Netns {
    name: String,
}

impl Netns {
    fn new() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "portald-ipt-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let args = ["netns", "add", &name].map(String::from);
        if let Err(e) = run("ip", &args, "") {
            panic!("cannot create network namespace `{name}` (are we root?): {e}");
        }
        Netns { name }
    }

    /// Runs an invocation inside the namespace.
    fn exec(&self, invocation: &Invocation, stdin: &str) -> Result<String, String> {
        let mut args = vec!["netns".to_string(), "exec".into(), self.name.clone()];
        args.push(invocation.program.clone());
        args.extend(invocation.args.iter().cloned());
        run("ip", &args, stdin)
    }

    fn load(&self, ruleset: &str) {
        self.exec(&Invocation::new("iptables-restore", &[]), ruleset)
            .unwrap_or_else(|e| panic!("loading a fixture into `{}`: {e}", self.name));
    }

    fn dump(&self) -> String {
        self.exec(&Iptables.observe_command(), "")
            .unwrap_or_else(|e| panic!("dumping `{}`: {e}", self.name))
    }

    fn observe(&self) -> Live {
        Iptables
            .parse_live(&self.dump())
            .unwrap_or_else(|e| panic!("live dump of `{}` does not parse: {e}", self.name))
    }

    /// Checks, then applies, a batch the way the engine does.
    fn apply(&self, changes: &[Change]) -> Result<(), String> {
        let batch = Iptables.render_batch(changes);
        self.exec(&Iptables.check_command(), &batch)?;
        self.exec(&Iptables.apply_command(), &batch).map(drop)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let args = ["netns", "delete", &self.name].map(String::from);
        if let Err(e) = run("ip", &args, "") {
            eprintln!("could not delete network namespace `{}`: {e}", self.name);
        }
    }
}

/// The first rule of a nat built-in chain in a dump.
fn first_rule<'a>(dump: &'a str, chain: &str) -> &'a str {
    let prefix = format!("-A {chain} ");
    dump.split("*nat\n")
        .nth(1)
        .and_then(|nat| nat.lines().find(|l| l.starts_with(&prefix)))
        .unwrap_or_else(|| panic!("no rule in nat `{chain}`"))
}

#[test]
fn portals_come_and_go_on_busy_hosts_without_touching_a_foreign_rule() {
    for name in ["docker", "kube-proxy", "firewalld"] {
        let ns = Netns::new();
        ns.load(&fixture(name));
        let before = ns.observe();
        assert!(
            before.owned.is_empty() && before.stray.is_empty(),
            "{name}: {before:?}"
        );

        let intended = seed_state();
        ns.apply(&create_changes(&intended)).unwrap();
        let created = ns.observe();
        assert_eq!(
            created.owned, intended,
            "{name}: state after the create batch"
        );
        assert!(created.stray.is_empty(), "{name}: {:?}", created.stray);
        assert_eq!(
            created.foreign, before.foreign,
            "{name}: foreign rules after create"
        );
        let dump = ns.dump();
        assert!(
            first_rule(&dump, "PREROUTING").contains("portald:container-portals"),
            "{name}"
        );
        assert!(
            first_rule(&dump, "OUTPUT").contains("portald:host-portals"),
            "{name}"
        );

        // Move a proxy port, drop one portal, add another: one batch.
        let apache = &intended.rules.values().next().unwrap().clone();
        let mut moved = apache.clone();
        moved.action = redirect(40000);
        let dns_host = intended
            .rules
            .values()
            .find(|r| r.key.path == Path::Host && r.key.protocol == Protocol::Udp)
            .unwrap();
        let extra = rule(
            Path::Host,
            "10.11.3.4",
            Protocol::Tcp,
            8080,
            "web/front:8080",
            dnat_local("127.0.0.1:41000"),
        );
        let update = vec![
            Change::ReplaceRule {
                old: apache.clone(),
                new: moved,
            },
            Change::RemoveRule {
                rule: dns_host.clone(),
            },
            Change::AddRule { rule: extra },
        ];
        ns.apply(&update).unwrap();
        let updated = ns.observe();
        assert_eq!(
            updated.owned,
            apply_changes(&intended, &update),
            "{name}: after update"
        );
        assert_eq!(
            updated.foreign, before.foreign,
            "{name}: foreign rules after update"
        );

        ns.apply(&remove_changes(&updated)).unwrap();
        let removed = ns.observe();
        assert_eq!(
            removed.owned,
            NatState::default(),
            "{name}: owned after removal"
        );
        assert!(removed.stray.is_empty(), "{name}: {:?}", removed.stray);
        assert_eq!(
            removed.foreign, before.foreign,
            "{name}: foreign rules after removal"
        );
        assert!(
            !ns.dump().contains("PORTAL-"),
            "{name}: nothing of portald remains"
        );
    }
}

#[test]
fn strays_are_deleted_by_the_text_the_dump_printed() {
    let ns = Netns::new();
    ns.load(&fixture("portald-busy"));
    let before = ns.observe();
    assert_eq!(before.owned, seed_state());
    assert_eq!(before.stray.len(), 2, "{:?}", before.stray);

    ns.apply(&remove_changes(&before)).unwrap();
    let after = ns.observe();
    assert!(after.owned.is_empty(), "{:?}", after.owned);
    assert!(after.stray.is_empty(), "{:?}", after.stray);
    assert_eq!(after.foreign, before.foreign);
}

#[test]
fn rendered_state_is_accepted_by_the_check_command_and_applies_to_the_same_state() {
    let ns = Netns::new();
    let text = Iptables.render_state(&seed_state());
    ns.exec(&Iptables.check_command(), &text).unwrap();
    ns.exec(&Iptables.apply_command(), &text).unwrap();
    assert_eq!(ns.observe().owned, seed_state());
}

#[test]
fn a_batch_with_one_failing_line_changes_nothing() {
    // Batches are all-or-nothing: a `-D` of a rule that is not there undoes the whole batch.
    let ns = Netns::new();
    let changes = create_changes(&seed_state());
    ns.apply(&changes).unwrap();
    let once = ns.dump_without_header();
    let missing = rule(
        Path::Host,
        "10.99.0.1",
        Protocol::Tcp,
        1,
        "not/there:1",
        redirect(1),
    );
    let batch = Iptables.render_batch(&[
        Change::AddRule {
            rule: rule(
                Path::Host,
                "10.99.0.2",
                Protocol::Tcp,
                2,
                "new/one:2",
                redirect(2),
            ),
        },
        Change::RemoveRule { rule: missing },
    ]);
    let err = ns.exec(&Iptables.apply_command(), &batch).unwrap_err();
    assert!(err.contains("line 3"), "the failing line is named: {err}");
    assert_eq!(ns.dump_without_header(), once, "a failed batch left traces");
}

#[test]
fn a_create_batch_applied_twice_duplicates_the_hooks_and_they_parse_as_strays() {
    // A batch is not idempotent by itself (the engine must diff against live state): again,
    // the declarations flush and refill the chains, and the hooks are inserted a second time.
    let ns = Netns::new();
    let changes = create_changes(&seed_state());
    ns.apply(&changes).unwrap();
    ns.apply(&changes).unwrap();
    let live = ns.observe();
    assert_eq!(live.owned, seed_state());
    let chains: Vec<&str> = live.stray.iter().map(|s| s.chain.as_str()).collect();
    assert_eq!(chains, ["PREROUTING", "OUTPUT"]);
    ns.apply(&remove_changes(&live)).unwrap();
    assert!(!ns.dump().contains("PORTAL-"));
}

#[test]
fn declaring_an_existing_chain_in_a_noflush_batch_flushes_it() {
    // Why render_batch declares only chains it creates: `:CHAIN` empties an existing chain.
    let ns = Netns::new();
    ns.apply(&create_changes(&seed_state())).unwrap();
    ns.exec(
        &Iptables.apply_command(),
        "*nat\n:PORTAL-HOST - [0:0]\nCOMMIT\n",
    )
    .unwrap();
    let live = ns.observe();
    assert!(live
        .owned
        .rules
        .values()
        .all(|r| r.key.path == Path::Container));
    assert_eq!(live.owned.rules.len(), 2);
}

impl Netns {
    /// The dump without its `#` lines, which carry the time.
    fn dump_without_header(&self) -> String {
        self.dump()
            .lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    }
}
