//! Tier 3: the nftables dialect against the real kernel, each test in a network namespace of
//! its own (deleted on drop, even when the test fails). Needs root, `ip`, `nft` and, for the
//! busy ruleset, `iptables` (nf_tables backend); a missing tool fails the test, never skips.

mod netns_support;
mod nftables_support;

use netns_support::{run, Netns};
use nftables_support::*;
use planners::nftables::render_json;
use planners::{
    apply_changes, Change, Dialect, Live, NatState, Nftables, Path, Protocol, Scaffold, Slot,
};
use proptest::prelude::*;
use std::io::Write;

/// What these tests do in a namespace with the nftables dialect.
trait Nft {
    fn apply(&self, batch: &str);
    fn observe(&self) -> Live;
    fn setup(&self, steps: &[&str]);
}

impl Nft for Netns {
    /// Checks, then applies, a batch.
    fn apply(&self, batch: &str) {
        let check = Nftables.check_command();
        let args: Vec<&str> = check.args.iter().map(String::as_str).collect();
        self.ok(&check.program, &args, Some(batch));
        let apply = Nftables.apply_command();
        let args: Vec<&str> = apply.args.iter().map(String::as_str).collect();
        self.ok(&apply.program, &args, Some(batch));
    }

    fn observe(&self) -> Live {
        let observe = Nftables.observe_command();
        let args: Vec<&str> = observe.args.iter().map(String::as_str).collect();
        let dump = self.ok(&observe.program, &args, None);
        Nftables
            .parse_live(&dump)
            .expect("the kernel's dump parses")
    }

    /// Builds foreign rulesets with the fixture capture script's own setup steps.
    fn setup(&self, steps: &[&str]) {
        let script = format!(
            "{}/../fixtures/live/nftables/capture.sh",
            env!("CARGO_MANIFEST_DIR")
        );
        let mut args = vec![script.as_str(), "--into", self.0.as_str()];
        args.extend_from_slice(steps);
        let out = run("bash", &args, None);
        assert!(
            out.status.success(),
            "fixture setup {steps:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn create_all(state: &NatState) -> Vec<Change> {
    let mut changes: Vec<Change> = Path::ALL
        .into_iter()
        .map(|p| Change::AddScaffold {
            scaffold: Scaffold::Chain(Slot::nat(p)),
        })
        .collect();
    changes.extend(
        state
            .rules
            .values()
            .map(|r| Change::AddRule { rule: r.clone() }),
    );
    changes.extend(Path::ALL.into_iter().map(|p| Change::AddScaffold {
        scaffold: Scaffold::Hook(Slot::nat(p)),
    }));
    changes
}

fn remove_all(state: &NatState) -> Vec<Change> {
    let mut changes: Vec<Change> = Path::ALL
        .into_iter()
        .map(|p| Change::RemoveScaffold {
            scaffold: Scaffold::Hook(Slot::nat(p)),
        })
        .collect();
    changes.extend(
        state
            .rules
            .values()
            .map(|r| Change::RemoveRule { rule: r.clone() }),
    );
    changes.extend(Path::ALL.into_iter().map(|p| Change::RemoveScaffold {
        scaffold: Scaffold::Chain(Slot::nat(p)),
    }));
    changes
}

#[test]
fn batches_build_change_and_remove_portald_beside_busy_foreign_tables() {
    let ns = Netns::new("nft");
    ns.setup(&["docker_like", "firewalld_like", "admin_filter"]);
    let before = ns.observe();
    assert!(before.owned.is_empty() && before.stray.is_empty());
    assert_eq!(before.foreign.len(), 34);

    let state = sample_state();
    ns.apply(&Nftables.render_batch(&create_all(&state)));
    let live = ns.observe();
    assert_eq!(live.owned, state);
    assert!(live.stray.is_empty(), "{:?}", live.stray);
    assert_eq!(live.foreign, before.foreign, "foreign rules are untouched");

    // Scaffold batches are idempotent: applying the creation again changes nothing.
    ns.apply(&Nftables.render_batch(&create_all(&state)));
    assert_eq!(ns.observe().owned, state);

    let step = incremental(
        &state,
        rule(
            Path::Host,
            4,
            Protocol::Tcp,
            8080,
            dnat_local(34004),
            "default/web:http",
        ),
    );
    ns.apply(&Nftables.render_batch(&step));
    let next = apply_changes(&state, &step);
    let live = ns.observe();
    assert_eq!(live.owned, next);
    assert_eq!(live.foreign, before.foreign);

    ns.apply(&Nftables.render_batch(&remove_all(&next)));
    let tables = ns.ok("nft", &["list", "tables"], None);
    assert!(!tables.contains("portald"), "the table is gone:\n{tables}");
    let after = ns.observe();
    assert!(after.owned.is_empty() && after.stray.is_empty());
    assert_eq!(after.foreign, before.foreign);
}

#[test]
fn one_batch_removes_strays_and_repairs_a_damaged_chain() {
    let ns = Netns::new("nft");
    ns.setup(&["portald_table", "portald_damaged", "portald_stray"]);
    let live = ns.observe();
    assert_eq!(live.stray.len(), 5, "{:?}", live.stray);
    let mut changes: Vec<Change> = live
        .stray
        .iter()
        .map(|s| Change::RemoveStray { stray: s.clone() })
        .collect();
    changes.push(Change::AddScaffold {
        scaffold: Scaffold::Chain(Slot::Host),
    });
    ns.apply(&Nftables.render_batch(&changes));
    let repaired = ns.observe();
    assert!(repaired.stray.is_empty(), "{:?}", repaired.stray);
    assert_eq!(repaired.owned, sample_state());
}

#[test]
fn render_json_is_what_the_kernel_prints() {
    let ns = Netns::new("nft");
    let state = sample_state();
    ns.apply(&Nftables.render_state(&state));
    let kernel = ns.ok("nft", &["-j", "list", "ruleset"], None);
    let normal = |text: &str| {
        let mut value: serde_json::Value = serde_json::from_str(text).unwrap();
        let items = value["nftables"].as_array_mut().unwrap();
        items.retain(|i| i.get("metainfo").is_none());
        for item in items.iter_mut() {
            let body = item.as_object_mut().unwrap().values_mut().next().unwrap();
            body.as_object_mut().unwrap().remove("handle");
            if let Some(elems) = body.get_mut("elem").and_then(|e| e.as_array_mut()) {
                elems.sort_by_key(|e| e.to_string());
            }
        }
        value
    };
    assert_eq!(normal(&kernel), normal(&render_json(&state)));
}

#[test]
fn a_host_path_dnat_portal_reaches_a_loopback_listener() {
    let ns = Netns::new("nft");
    ns.ok(
        "ip",
        &["route", "add", "local", "10.11.0.0/16", "dev", "lo"],
        None,
    );
    let mut state = NatState::default();
    state
        .scaffold
        .extend([Scaffold::Chain(Slot::Host), Scaffold::Hook(Slot::Host)]);
    state.insert_rule(rule(
        Path::Host,
        1,
        Protocol::Tcp,
        80,
        dnat_local(18080),
        "default/apache-service:80",
    ));
    ns.apply(&Nftables.render_batch(&create_all(&state)));
    // The client and the listener run inside the namespace: this test binary again, asked
    // to run only the helper below.
    let exe = std::env::current_exe().unwrap();
    let out = ns.exec(
        "env",
        &[
            "PORTALD_NFT_TRAFFIC=10.11.0.1:80,127.0.0.1:18080",
            exe.to_str().unwrap(),
            "--exact",
            "traffic_helper_connects_through_a_portal_when_asked",
            "--nocapture",
            "--test-threads=1",
        ],
        None,
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("TRAFFIC OK"),
        "traffic through the portal failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs only when `PORTALD_NFT_TRAFFIC=VIP:PORT,LISTEN:PORT` is set (by the test above,
/// inside its namespace): listens on LISTEN, connects to VIP, exchanges a line each way.
#[test]
fn traffic_helper_connects_through_a_portal_when_asked() {
    use std::io::{BufRead, BufReader};
    use std::net::{SocketAddr, TcpListener, TcpStream};
    use std::time::{Duration, Instant};
    let Ok(spec) = std::env::var("PORTALD_NFT_TRAFFIC") else {
        return;
    };
    let (vip, listen) = spec.split_once(',').unwrap();
    let vip: SocketAddr = vip.parse().unwrap();
    let listener = TcpListener::bind(listen).unwrap();
    listener.set_nonblocking(true).unwrap();
    let client = TcpStream::connect_timeout(&vip, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("connect to portal {vip}: {e}"));
    client
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    assert_eq!(
        client.peer_addr().unwrap(),
        vip,
        "the client sees the portal"
    );
    let deadline = Instant::now() + Duration::from_secs(3);
    let server = loop {
        match listener.accept() {
            Ok((stream, _)) => break stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("no connection reached the listener {listen}: {e}"),
        }
    };
    server.set_nonblocking(false).unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(3)))
        .unwrap();
    (&client).write_all(b"ping\n").unwrap();
    let mut line = String::new();
    BufReader::new(&server).read_line(&mut line).unwrap();
    assert_eq!(line, "ping\n");
    (&server).write_all(b"pong\n").unwrap();
    line.clear();
    BufReader::new(&client).read_line(&mut line).unwrap();
    assert_eq!(line, "pong\n");
    println!("TRAFFIC OK");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn any_rendered_state_loads_and_reads_back_the_same(state in loadable_state(16)) {
        let ns = Netns::new("nft");
        let text = Nftables.render_state(&state);
        if !text.is_empty() {
            ns.apply(&text);
        }
        let live = ns.observe();
        prop_assert_eq!(&live.owned, &state);
        prop_assert!(live.stray.is_empty());
    }
}

#[test]
fn one_batch_makes_the_maps_of_a_table_from_before_the_portal_counters_anew() {
    // What the same setup gives when written as batches write it now.
    let reference = Netns::new("nft");
    reference.setup(&["portald_table", "portald_kernel"]);
    let want = reference.observe().owned;
    drop(reference);

    let ns = Netns::new("nft");
    ns.setup(&["portald_uncounted", "portald_kernel"]);
    let live = ns.observe();
    // As the diff would have it: every stray goes, the NAT chains (reported absent) are
    // added, and the portals the parse did not own are added.
    let mut changes: Vec<Change> = live
        .stray
        .iter()
        .map(|s| Change::RemoveStray { stray: s.clone() })
        .collect();
    changes.extend(
        want.scaffold
            .difference(&live.owned.scaffold)
            .map(|s| Change::AddScaffold { scaffold: *s }),
    );
    changes.extend(
        want.rules
            .values()
            .filter(|r| !live.owned.rules.contains_key(&r.key))
            .map(|r| Change::AddRule { rule: r.clone() }),
    );
    ns.apply(&Nftables.render_batch(&changes));
    let upgraded = ns.observe();
    assert!(upgraded.stray.is_empty(), "{:?}", upgraded.stray);
    assert_eq!(upgraded.owned, want);
    let table = ns.ok(
        "nft",
        &["list", "map", "ip", "portald", "container_services"],
        None,
    );
    assert!(
        table.contains("counter packets 0 bytes 0 comment \"default/web:80\""),
        "{table}"
    );
}
