//! Tier 3: the daemon under faults of its surroundings: a hostile umask and squatted paths
//! at its control socket, kernel tools that fail once or hang, rules changed by hand, and a
//! services directory that is replaced or whose symlink is swapped. Needs root, iproute2,
//! iptables, nft, curl.

mod support;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::*;

/// `portald run` in the node under `umask 000`, spawned by `sh` (which execs it, so the pid
/// is the daemon's).
fn spawn_under_umask_000(c: &mut Cluster, extra: &[&str]) -> u32 {
    let mut command = format!(
        "umask 000; exec {PORTALD} run {} --control-socket {} --state-file {} --resync-seconds 600",
        c.dir.display(),
        c.socket.display(),
        c.state_file().display()
    );
    for arg in extra {
        command.push(' ');
        command.push_str(arg);
    }
    let node = c.node();
    c.spawn(&node, "sh", &["-c".to_string(), command])
}

/// Stats `path` in a tight loop until `stop`; returns the widest permission bits seen on a
/// socket there and how many times one was seen.
fn watch_mode(path: PathBuf, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(u32, u64)> {
    std::thread::spawn(move || {
        let (mut widest, mut seen) = (0u32, 0u64);
        while !stop.load(Ordering::Relaxed) {
            if let Ok(meta) = std::fs::symlink_metadata(&path) {
                if meta.file_type().is_socket() {
                    widest |= meta.permissions().mode() & 0o777;
                    seen += 1;
                }
            }
        }
        (widest, seen)
    })
}

#[test]
fn control_socket_is_never_wider_than_0600_even_under_umask_000() {
    let mut c = Cluster::new("sockmode");
    c.write(
        "web.yaml",
        &service_yaml("web", None, "web", "TCP", 80, 8080),
    );
    for start in 0..20 {
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = watch_mode(c.socket.clone(), stop.clone());
        let pid = spawn_under_umask_000(&mut c, &[]);
        let answered = poll("the daemon to answer status", CONVERGE, || {
            c.try_status().map(|s| s.pid)
        });
        assert_eq!(answered, pid);
        c.stop(pid, SIGTERM);
        stop.store(true, Ordering::Relaxed);
        let (widest, seen) = watcher.join().expect("the watcher thread");
        assert!(seen > 0, "start {start}: the socket was never seen");
        assert_eq!(
            widest & !0o600,
            0,
            "start {start}: the control socket was seen with mode {widest:o} ({seen} looks)"
        );
        assert!(
            !c.socket.exists(),
            "start {start}: the socket outlived the daemon"
        );
    }
    // Nothing of the private bind directories is left next to the socket.
    let left: Vec<String> = std::fs::read_dir(c.socket.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".bind"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// Starts the daemon with something at its socket path; it must refuse, name the path and
/// what is there, and leave it as it was.
fn refuses_to_take(c: &mut Cluster, kind: &str, check_intact: impl Fn(&Path) -> bool) {
    let pid = spawn_under_umask_000(c, &[]);
    let deadline = Instant::now() + CONVERGE;
    let status = loop {
        if let Some(status) = c.bed.exit_status(pid) {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the daemon did not refuse {kind}:\n{}",
            c.bed.log_of(pid)
        );
        std::thread::sleep(POLL_EVERY);
    };
    let log = c.bed.log_of(pid);
    assert!(!status.success(), "{log}");
    assert!(
        log.contains(&c.socket.display().to_string()) && log.contains(kind),
        "the error names neither the path nor {kind}: {log}"
    );
    assert!(check_intact(&c.socket), "{kind} at the socket path changed");
}

#[test]
fn a_regular_file_directory_or_symlink_at_the_socket_path_is_left_intact_and_refused() {
    let mut c = Cluster::new("sockfile");
    c.write(
        "web.yaml",
        &service_yaml("web", None, "web", "TCP", 80, 8080),
    );
    std::fs::write(&c.socket, "precious\n").unwrap();
    refuses_to_take(&mut c, "a regular file", |p| {
        std::fs::read_to_string(p).is_ok_and(|t| t == "precious\n")
    });
    std::fs::remove_file(&c.socket).unwrap();

    std::fs::create_dir(&c.socket).unwrap();
    std::fs::write(c.socket.join("inside"), "x").unwrap();
    refuses_to_take(&mut c, "a directory", |p| p.join("inside").is_file());
    std::fs::remove_dir_all(&c.socket).unwrap();

    let target = c.temp().join("target");
    std::fs::write(&target, "t").unwrap();
    std::os::unix::fs::symlink(&target, &c.socket).unwrap();
    refuses_to_take(&mut c, "a symlink", |p| {
        std::fs::read_link(p).is_ok_and(|t| t == target)
    });
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "t");
    std::fs::remove_file(&c.socket).unwrap();

    // A stale socket (its daemon was killed) is taken over.
    drop(std::os::unix::net::UnixListener::bind(&c.socket).unwrap());
    let pid = spawn_under_umask_000(&mut c, &[]);
    let answered = poll("the daemon to take over a stale socket", CONVERGE, || {
        c.try_status().map(|s| s.pid)
    });
    assert_eq!(answered, pid);
    let mode = std::fs::symlink_metadata(&c.socket)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    c.stop(pid, SIGTERM);
}

/// Where `tool` is on this process's `PATH`.
fn real(tool: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(tool))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("`{tool}` is not on PATH (scripts/setup.sh installs it)"))
}

/// A directory of wrappers, first on the daemon's `PATH`: each wraps a real tool and, while
/// a marker file of the directory exists, fails once (`fail-TOOL`, removed on use) or
/// hangs (`hang-TOOL`, writing its pid to `hung-TOOL`) before it execs the real one.
struct Wrappers {
    dir: PathBuf,
}

impl Wrappers {
    fn new(c: &Cluster, tools: &[&str]) -> Wrappers {
        let dir = c.temp().join("wrappers");
        std::fs::create_dir_all(&dir).unwrap();
        for tool in tools {
            let d = dir.display();
            let script = format!(
                "#!/bin/sh\n\
                 if [ -e {d}/fail-{tool} ]; then rm -f {d}/fail-{tool}; echo 'refused by the test wrapper' >&2; exit 1; fi\n\
                 if [ -e {d}/hang-{tool} ]; then echo $$ > {d}/hung-{tool}; sleep 60; fi\n\
                 exec {} \"$@\"\n",
                real(tool).display()
            );
            let path = dir.join(tool);
            std::fs::write(&path, script).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        Wrappers { dir }
    }

    fn arm(&self, marker: &str) {
        std::fs::write(self.dir.join(marker), "").unwrap();
    }

    fn disarm(&self, marker: &str) {
        let _ = std::fs::remove_file(self.dir.join(marker));
    }

    fn path(&self) -> String {
        format!(
            "PATH={}:{}",
            self.dir.display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }
}

impl Drop for Wrappers {
    /// A hung wrapper left by a failed test (its daemon killed before it could stop it) is
    /// stopped with its `sleep`: it leads its own process group.
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let entries: Vec<_> = entries.flatten().collect();
        // First no new hang (the daemon may still be running and retrying).
        for entry in &entries {
            if entry.file_name().to_string_lossy().starts_with("hang-") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        for entry in entries {
            if !entry.file_name().to_string_lossy().starts_with("hung-") {
                continue;
            }
            let Ok(pid) = std::fs::read_to_string(entry.path()) else {
                continue;
            };
            let pid = pid.trim();
            let ours = std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&*self.dir.to_string_lossy()));
            if ours {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", "--", &format!("-{pid}")])
                    .status();
            }
        }
    }
}

/// `portald run` in the node with the wrappers first on its `PATH`; waits for its first
/// successful reconcile. Returns the pid.
fn start_wrapped(c: &mut Cluster, wrappers: &Wrappers, extra: &[&str]) -> u32 {
    let mut args: Vec<String> = vec![
        wrappers.path(),
        PORTALD.into(),
        "run".into(),
        c.dir.display().to_string(),
        "--control-socket".into(),
        c.socket.display().to_string(),
        // The test's own node state, never the host's.
        "--state-file".into(),
        c.state_file().display().to_string(),
        "--debounce-ms".into(),
        "100".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let node = c.node();
    let pid = c.spawn(&node, "env", &args);
    c.daemon = Some(pid);
    let log = |c: &Cluster| c.bed.log_of(pid);
    let deadline = Instant::now() + CONVERGE;
    loop {
        match c.try_status() {
            Ok(s) if s.pid == pid && s.last_reconcile.as_ref().is_some_and(|r| r.ok) => break,
            last => assert!(
                Instant::now() < deadline,
                "no successful first reconcile: {last:?}\n{}",
                log(c)
            ),
        }
        std::thread::sleep(POLL_EVERY);
    }
    c.settle();
    pid
}

/// Waits until the status shows service `name` and a successful last reconcile; returns
/// how long that took from `since`.
fn wait_served(c: &Cluster, pid: u32, name: &str, since: Instant, within: Duration) -> Duration {
    let deadline = since + within;
    loop {
        let seen = c.try_status().and_then(|s| {
            service(&s, name)?;
            match &s.last_reconcile {
                Some(r) if r.ok => Ok(()),
                other => Err(format!("last reconcile {other:?}")),
            }
        });
        match seen {
            Ok(()) => return since.elapsed(),
            Err(e) if Instant::now() >= deadline => panic!(
                "`{name}` not served within {within:?}: {e}\n{}",
                c.bed.log_of(pid)
            ),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[test]
fn a_batch_refused_once_is_retried_in_under_two_seconds_not_at_the_resync() {
    let mut c = Cluster::new("refused");
    let wrappers = Wrappers::new(&c, &["iptables-restore", "nft"]);
    c.write(
        "web.yaml",
        &service_yaml("web", None, "web", "TCP", 80, 8080),
    );
    for (backend, tool) in [("iptables", "iptables-restore"), ("nftables", "nft")] {
        let pid = start_wrapped(
            &mut c,
            &wrappers,
            &["--backend", backend, "--resync-seconds", "120"],
        );
        let name = format!("api-{backend}");
        wrappers.arm(&format!("fail-{tool}"));
        let since = Instant::now();
        c.write(
            &format!("{name}.yaml"),
            &service_yaml(&name, None, "api", "TCP", 81, 8081),
        );
        let took = wait_served(
            &c,
            pid,
            &format!("default/{name}"),
            since,
            Duration::from_secs(2),
        );
        eprintln!("{backend}: a batch refused once, recovered in {took:?}");
        let log = c.bed.log_of(pid);
        assert!(
            !wrappers.dir.join(format!("fail-{tool}")).exists(),
            "the wrapper was never called: {log}"
        );
        assert!(
            log.contains("refused by the test wrapper") && log.contains("retry 1 in 500ms"),
            "the failure and its retry are not logged: {log}"
        );
        c.stop_daemon(SIGTERM);
    }
}

/// portald's own objects as the backend's tool lists them: `PORTAL` lines of
/// `iptables-save`, or portald's nftables table.
fn owned_listing(c: &Cluster, backend: &str) -> Vec<String> {
    match backend {
        "iptables" => portal_lines(&c.iptables_save()),
        _ => c
            .run_ok(&c.node(), "nft", &["list", "table", "ip", "portald"])
            .lines()
            .map(str::to_string)
            .collect(),
    }
}

#[test]
fn a_rule_deleted_by_hand_is_restored_within_five_seconds_not_at_the_resync() {
    let mut c = Cluster::new("handdrift");
    let wrappers = Wrappers::new(&c, &[]);
    c.write(
        "web.yaml",
        &service_yaml("web", Some("10.11.0.70"), "web", "TCP", 80, 8080),
    );
    c.write("pods.yaml", &pods_yaml(&[("pod1", POD1, "web")]));
    for backend in ["iptables", "nftables"] {
        let pid = start_wrapped(
            &mut c,
            &wrappers,
            &["--backend", backend, "--resync-seconds", "120"],
        );
        let good = owned_listing(&c, backend);
        let node = c.node();
        match backend {
            "iptables" => {
                let rule = good
                    .iter()
                    .find(|l| l.starts_with("-A PORTAL-") && l.contains("10.11.0.70"))
                    .unwrap_or_else(|| panic!("no rule for the VIP: {good:#?}"))
                    .clone();
                let command = format!("iptables -t nat -D {}", &rule[3..]);
                c.run_ok(&node, "sh", &["-c", &command]);
            }
            _ => {
                // The container path loses its redirect of the VIP.
                c.run_ok(
                    &node,
                    "nft",
                    &["flush", "map", "ip", "portald", "container_redirect"],
                );
            }
        }
        let since = Instant::now();
        assert_ne!(owned_listing(&c, backend), good, "nothing was deleted");
        poll(
            &format!("{backend}: the deleted rule to come back"),
            Duration::from_secs(5),
            || {
                let now = owned_listing(&c, backend);
                if now == good {
                    Ok(())
                } else {
                    Err(format!("{now:#?}\n{}", c.bed.log_of(pid)))
                }
            },
        );
        eprintln!("{backend}: drift repaired in {:?}", since.elapsed());
        let log = c.bed.log_of(pid);
        assert!(log.contains("drift:"), "{log}");
        c.stop_daemon(SIGTERM);
    }
}

#[test]
fn a_hung_tool_is_killed_at_its_timeout_and_sigterm_does_not_wait_for_it() {
    let mut c = Cluster::new("hung");
    let wrappers = Wrappers::new(&c, &["iptables-restore"]);
    c.write(
        "web.yaml",
        &service_yaml("web", None, "web", "TCP", 80, 8080),
    );
    let pid = start_wrapped(
        &mut c,
        &wrappers,
        &["--resync-seconds", "120", "--exec-timeout-seconds", "1"],
    );
    wrappers.arm("hang-iptables-restore");
    c.write(
        "api.yaml",
        &service_yaml("api", None, "api", "TCP", 81, 8081),
    );
    let error = poll("the hung batch to time out", CONVERGE, || {
        let status = c.try_status()?;
        match status.last_reconcile {
            Some(r) if !r.ok => Ok(r.error.unwrap_or_default()),
            other => Err(format!("{other:?}")),
        }
    });
    assert!(
        // 1 s, plus 1 ms per line of the batch.
        error.contains("iptables-restore") && error.contains("did not finish within 1."),
        "{error}"
    );
    let hung: u32 = std::fs::read_to_string(wrappers.dir.join("hung-iptables-restore"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    poll(
        "the timed-out tool to be gone",
        Duration::from_secs(2),
        || {
            if alive(hung) {
                Err(format!("{hung} still runs"))
            } else {
                Ok(())
            }
        },
    );
    // Released, the retries bring the new service in.
    wrappers.disarm("hang-iptables-restore");
    wait_served(&c, pid, "default/api", Instant::now(), CONVERGE);
    c.stop_daemon(SIGTERM);

    // With the default timeout (30 s) a SIGTERM arrives while the tool hangs.
    let _ = std::fs::remove_file(wrappers.dir.join("hung-iptables-restore"));
    let pid = start_wrapped(&mut c, &wrappers, &["--resync-seconds", "120"]);
    wrappers.arm("hang-iptables-restore");
    c.write("db.yaml", &service_yaml("db", None, "db", "TCP", 82, 8082));
    let hung: u32 = poll("the wrapper to hang", CONVERGE, || {
        std::fs::read_to_string(wrappers.dir.join("hung-iptables-restore"))
            .map_err(|e| e.to_string())
            .and_then(|t| t.trim().parse().map_err(|e| format!("{e}")))
    });
    let since = Instant::now();
    c.stop_daemon(SIGTERM);
    let took = since.elapsed();
    eprintln!("SIGTERM during a hung tool: exited in {took:?}");
    assert!(took < Duration::from_secs(2), "exit took {took:?}");
    assert!(!alive(pid), "the daemon still runs");
    assert!(!alive(hung), "the hung tool outlived the daemon");
    assert!(
        c.bed.log_of(pid).contains("the daemon is stopping"),
        "{}",
        c.bed.log_of(pid)
    );
}

/// Waits until the daemon serves exactly `names` (`namespace/name`, any order) after a
/// successful pass; returns how long that took from `since`.
fn wait_services(c: &Cluster, names: &[&str], since: Instant, within: Duration) -> Duration {
    let deadline = since + within;
    let mut wanted = names.to_vec();
    wanted.sort();
    loop {
        let seen = c.try_status().and_then(|s| {
            let mut now: Vec<&str> = s.services.iter().map(|v| v.name.as_str()).collect();
            now.sort();
            match &s.last_reconcile {
                Some(r) if r.ok && now == wanted => Ok(()),
                other => Err(format!("services {now:?}, last reconcile {other:?}")),
            }
        });
        match seen {
            Ok(()) => return since.elapsed(),
            Err(e) if Instant::now() >= deadline => panic!(
                "not serving {names:?} within {within:?}: {e}\n{}",
                c.daemon_logs()
            ),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// A service file for `name` (port 80 to 8080, `app=NAME`).
fn svc(name: &str) -> String {
    service_yaml(name, None, name, "TCP", 80, 8080)
}

/// Debounce (100 ms) and a pass, with room for a loaded machine; far below the resync.
const FOLLOWS: Duration = Duration::from_secs(2);

#[test]
fn a_services_directory_made_again_or_renamed_over_is_followed_with_its_later_edits() {
    let mut c = Cluster::new("dirswap");
    c.write("web.yaml", &svc("web"));
    c.start_daemon(&["--resync-seconds", "120"]);
    wait_services(&c, &["default/web"], Instant::now(), CONVERGE);
    let dir = c.dir.display().to_string();
    let staged = c.temp().join("staged");
    std::fs::create_dir_all(&staged).unwrap();
    std::fs::write(staged.join("api.yaml"), svc("api")).unwrap();

    // 1. Removed, made again, filled by copies.
    let since = Instant::now();
    let script = format!(
        "rm -rf {dir} && mkdir {dir} && cp {}/* {dir}/",
        staged.display()
    );
    c.run_ok(&c.node(), "sh", &["-c", &script]);
    let took = wait_services(&c, &["default/api"], since, FOLLOWS);
    eprintln!("rm -rf && mkdir && cp: followed in {took:?}");
    c.settle();
    let since = Instant::now();
    c.write("db.yaml", &svc("db"));
    let took = wait_services(&c, &["default/api", "default/db"], since, FOLLOWS);
    eprintln!("an edit in the made-again directory: followed in {took:?}");

    // 2. The old directory renamed away, a new one renamed over its name.
    let fresh = format!("{dir}.new");
    std::fs::create_dir(&fresh).unwrap();
    std::fs::write(Path::new(&fresh).join("cache.yaml"), svc("cache")).unwrap();
    c.settle();
    let since = Instant::now();
    let script = format!("mv {dir} {dir}.old && mv {fresh} {dir}");
    c.run_ok(&c.node(), "sh", &["-c", &script]);
    let took = wait_services(&c, &["default/cache"], since, FOLLOWS);
    eprintln!("mv svc.new svc: followed in {took:?}");
    c.settle();
    // An edit in the old directory (its inode was watched) is no news any more...
    let before = c.status().reconciles;
    std::fs::write(format!("{dir}.old/old.yaml"), svc("old")).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(
        c.status().reconciles,
        before,
        "an edit in the directory renamed away started a pass"
    );
    // ...an edit in the new one is.
    let since = Instant::now();
    c.write("queue.yaml", &svc("queue"));
    let took = wait_services(&c, &["default/cache", "default/queue"], since, FOLLOWS);
    eprintln!("an edit in the renamed-over directory: followed in {took:?}");
}

#[test]
fn a_services_symlink_swapped_to_a_new_target_is_followed_with_its_later_edits() {
    let mut c = Cluster::new("linkswap");
    // As git-sync publishes: the path is a symlink to one checkout, swapped atomically.
    let first = c.temp().join("rev-1");
    std::fs::create_dir_all(&first).unwrap();
    std::fs::write(first.join("web.yaml"), svc("web")).unwrap();
    let link = c.temp().join("current");
    std::os::unix::fs::symlink(&first, &link).unwrap();
    c.dir = link.clone();
    c.start_daemon(&["--resync-seconds", "120"]);
    wait_services(&c, &["default/web"], Instant::now(), CONVERGE);

    for rev in 2..=3 {
        let next = c.temp().join(format!("rev-{rev}"));
        std::fs::create_dir_all(&next).unwrap();
        let name = format!("api{rev}");
        std::fs::write(next.join(format!("{name}.yaml")), svc(&name)).unwrap();
        let tmp = c.temp().join("current.tmp");
        let since = Instant::now();
        let script = format!(
            "ln -s {} {} && mv -T {} {}",
            next.display(),
            tmp.display(),
            tmp.display(),
            link.display()
        );
        c.run_ok(&c.node(), "sh", &["-c", &script]);
        let full = format!("default/{name}");
        let took = wait_services(&c, &[full.as_str()], since, FOLLOWS);
        eprintln!("symlink swap to rev-{rev}: followed in {took:?}");
        c.settle();
        // A later edit in the new target is seen.
        let since = Instant::now();
        std::fs::write(next.join("db.yaml"), svc("db")).unwrap();
        let took = wait_services(&c, &["default/db", full.as_str()], since, FOLLOWS);
        eprintln!("an edit in rev-{rev}: followed in {took:?}");
        c.settle();
    }
}
