//! Tier 3: the .deb's unit run by a real systemd (PID 1 of private namespaces), driven with
//! `systemctl` and `journalctl`: start waits for READY=1, traffic, reload, watchdog, stop.
//!
//! The machine's own PID 1 need not be systemd: `support/boot-systemd.sh` boots systemd 252
//! (Debian's) as PID 1 of new pid, mount, net, uts, ipc and cgroup namespaces, with the
//! unpacked .deb overlaid on /usr and /etc and every write on private mounts. The host's
//! units, rules and files are never touched; the namespaces die with that PID 1.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::scratch::Scratch;
use support::*;

/// How long systemd may take to boot the test's target, and `systemctl` to answer.
const BOOT: Duration = Duration::from_secs(30);
/// Longest `systemctl start` may block: far below the unit's TimeoutStartSec (90 s), so a
/// daemon that never sends READY=1 fails the test instead of hanging it.
const START: Duration = Duration::from_secs(20);
/// The watchdog the test sets with a drop-in (the shipped unit says 60 s): short enough that
/// a daemon which stopped feeding it would be killed within the run.
const WATCHDOG_SECS: u64 = 2;

/// The test's boot target: journald and nothing else of the host's boot.
const TARGET: &str = "[Unit]
Description=portald test boot: journald only
Requires=systemd-journald.socket
After=systemd-journald.socket
";

/// One service whose endpoint is the backend on the veth pair inside the instance.
const SERVICES: &str = "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  clusterIP: 10.11.0.10
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: web}
subsets:
- addresses: [{ip: 10.99.0.2}]
  ports: [{name: http, port: 8080}]
";

const VIP_URL: &str = "http://10.11.0.10/";

/// A systemd booted in its own namespaces; killing its PID 1 ends every process in them.
struct Instance {
    /// `unshare`, the parent of PID 1 (started by this test).
    unshare: Child,
    /// PID 1 of the namespaces, as the host sees it.
    pid1: u32,
    /// The cgroup2 directory that is the instance's cgroup root.
    cgroup: PathBuf,
}

impl Drop for Instance {
    fn drop(&mut self) {
        if self.pid1 != 0 {
            // SIGKILL to a pid namespace's init kills every process in the namespace.
            let _ = Command::new("kill")
                .args(["-KILL", &self.pid1.to_string()])
                .status();
        }
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
        // The cgroups systemd made are empty once its processes are gone; deepest first.
        for _ in 0..50 {
            if remove_cgroup_tree(&self.cgroup) {
                break;
            }
            std::thread::sleep(POLL_EVERY);
        }
    }
}

/// Removes `dir` and the cgroups under it; true when it is gone.
fn remove_cgroup_tree(dir: &Path) -> bool {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    let _ = std::fs::remove_dir(dir);
    !dir.exists()
}

impl Instance {
    /// Boots systemd over `scratch` (root/, units/) and waits until it is running.
    fn boot(scratch: &Path) -> Instance {
        let cgroup = PathBuf::from("/sys/fs/cgroup/unified").join(
            scratch
                .file_name()
                .expect("the scratch directory has a name"),
        );
        std::fs::create_dir(&cgroup)
            .unwrap_or_else(|e| panic!("a cgroup2 directory {}: {e}", cgroup.display()));
        let boot_log = std::fs::File::create(scratch.join("boot.log")).expect("boot.log");
        let unshare = Command::new(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/boot-systemd.sh"),
        )
        .arg(scratch)
        .arg(&cgroup)
        .stdin(Stdio::null())
        .stdout(boot_log.try_clone().expect("boot.log"))
        .stderr(boot_log)
        .spawn()
        .expect("boot-systemd.sh starts");
        let mut instance = Instance {
            unshare,
            pid1: 0,
            cgroup,
        };
        let parent = instance.unshare.id();
        let boot_log = scratch.join("boot.log");
        instance.pid1 = poll("systemd as PID 1 of the new namespaces", BOOT, || {
            let children =
                std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
                    .map_err(|e| format!("{e}; boot.log: {}", read(&boot_log)))?;
            let child: u32 = children
                .split_whitespace()
                .next()
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| format!("no child yet; boot.log: {}", read(&boot_log)))?;
            let comm = read(Path::new(&format!("/proc/{child}/comm")));
            if comm.trim() == "systemd" {
                Ok(child)
            } else {
                Err(format!(
                    "PID 1 is `{}`; boot.log: {}",
                    comm.trim(),
                    read(&boot_log)
                ))
            }
        });
        poll("systemd to finish booting the test target", BOOT, || {
            let out = instance.try_systemctl(&["is-system-running"]);
            let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
            match state.as_str() {
                "running" => Ok(()),
                _ => Err(format!("{state}; boot.log: {}", read(&boot_log))),
            }
        });
        instance
    }

    /// Runs `program` inside all the instance's namespaces, killed after `limit`.
    fn exec(&self, limit: Duration, program: &str, args: &[&str]) -> Output {
        Command::new("timeout")
            .arg("--kill-after=5")
            .arg(limit.as_secs().to_string())
            .arg("nsenter")
            .arg("-t")
            .arg(self.pid1.to_string())
            .arg("-a")
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("nsenter {program} {args:?}: {e}"))
    }

    fn try_systemctl(&self, args: &[&str]) -> Output {
        let mut all = vec!["--no-pager", "--no-ask-password"];
        all.extend_from_slice(args);
        self.exec(BOOT, "systemctl", &all)
    }

    /// `systemctl ARGS`, which must succeed; its stdout.
    fn systemctl(&self, args: &[&str]) -> String {
        let out = self.try_systemctl(args);
        assert!(
            out.status.success(),
            "systemctl {args:?}: {}\n{}{}\njournal:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.journal()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// One property of the portald unit (`systemctl show -p NAME --value`).
    fn property(&self, name: &str) -> String {
        self.systemctl(&["show", "-p", name, "--value", "portald"])
            .trim()
            .to_string()
    }

    /// The unit's journal: the daemon's lines and systemd's about the unit. What
    /// `journalctl -u portald` matches plus the daemon's SYSLOG_IDENTIFIER: in this nested
    /// instance journald now and then files the daemon's first second of output under no unit
    /// (no `_SYSTEMD_UNIT`), so `-u` alone misses those lines in some runs.
    fn journal(&self) -> String {
        let out = self.exec(
            BOOT,
            "journalctl",
            &[
                "--no-pager",
                "-o",
                "short-monotonic",
                "_SYSTEMD_UNIT=portald.service",
                "+",
                "UNIT=portald.service",
                "+",
                "SYSLOG_IDENTIFIER=portald",
            ],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until the journal of the unit passes `check` (journald receives the lines
    /// asynchronously); panics with `what` and the journal otherwise.
    fn wait_journal(&self, what: &str, check: impl Fn(&str) -> bool) {
        poll(what, CONVERGE, || {
            let journal = self.journal();
            if check(&journal) {
                Ok(())
            } else {
                Err(format!("journalctl -u portald:\n{journal}"))
            }
        })
    }

    /// One HTTP request to `url` from inside the instance's network namespace.
    fn curl(&self, url: &str) -> Result<String, String> {
        let out = Command::new("timeout")
            .arg("10")
            .arg("nsenter")
            .arg("-t")
            .arg(self.pid1.to_string())
            .arg("-n")
            .args(["curl", "-sS", "--max-time", "3", url])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("curl: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(format!(
                "curl {url}: {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    }
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// Builds the .deb from this test build's binary (as bin/tests/packaging.rs does) and unpacks
/// it into `root`, as `dpkg -i` would lay it out.
fn install_deb(scratch: &Path, root: &Path) {
    let deb = scratch.join("portald.deb");
    let built =
        Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/build-deb.sh"))
            .env("PORTALD_BIN", PORTALD)
            .env("TMPDIR", scratch)
            .args(["--fast", "--output"])
            .arg(&deb)
            .stdin(Stdio::null())
            .output()
            .expect("packaging/build-deb.sh starts");
    assert!(
        built.status.success() && deb.is_file(),
        "packaging/build-deb.sh: {}\n{}",
        built.status,
        String::from_utf8_lossy(&built.stderr)
    );
    let unpacked = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(root)
        .output()
        .expect("dpkg-deb starts");
    assert!(unpacked.status.success(), "dpkg-deb -x: {unpacked:?}");
}

#[test]
fn the_debs_unit_under_real_systemd_starts_ready_serves_reloads_and_stops_cleanly() {
    require_environment();
    let scratch = Scratch::new("systemd");
    let root = scratch.0.join("root");
    install_deb(&scratch.0, &root);
    // The package's postinst makes the empty services directory; the test fills it.
    scratch.write("root/etc/portald/services/web.yaml", SERVICES);
    scratch.write("units/portald-test.target", TARGET);
    // The journal in /run only: the host's /var/log/journal shows through the /var overlay,
    // and a flush into it (a copy in the overlay's tmpfs) would only cost time.
    scratch.write(
        "root/etc/systemd/journald.conf.d/volatile.conf",
        "[Journal]\nStorage=volatile\n",
    );
    scratch.write(
        "units/portald.service.d/watchdog.conf",
        &format!("[Service]\nWatchdogSec={WATCHDOG_SECS}s\n"),
    );
    let unit = read(&root.join("usr/lib/systemd/system/portald.service"));
    assert!(
        unit.contains("Type=notify") && unit.contains("ProtectSystem=strict"),
        "the .deb's unit is the shipped one:\n{unit}"
    );

    let sd = Instance::boot(&scratch.0);
    // The endpoint: a backend on the veth pair's far end, in the instance's namespaces (it
    // dies with their PID 1).
    let backend = Command::new("timeout")
        .args(["10", "nsenter", "-t"])
        .arg(sd.pid1.to_string())
        .arg("-a")
        .args([
            "setsid",
            "--fork",
            "/usr/bin/portald",
            "backend",
            "--name",
            "pod-a",
            "--tcp",
            "8080",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("the backend starts");
    assert!(backend.success(), "the backend starts: {backend}");
    poll("the backend to answer", CONVERGE, || {
        sd.curl("http://10.99.0.2:8080/")
    });

    // Type=notify: `systemctl start` returns once systemd got READY=1, which portald sends
    // only after its first reconcile is applied and verified, so the VIP answers at once.
    let started = Instant::now();
    let start = sd.exec(
        START,
        "systemctl",
        &["--no-ask-password", "start", "portald"],
    );
    assert!(
        start.status.success(),
        "systemctl start portald (bounded at {START:?}, took {:?}): {}\n{}\njournal:\n{}",
        started.elapsed(),
        start.status,
        String::from_utf8_lossy(&start.stderr),
        sd.journal()
    );
    sd.wait_journal("systemd to log the READY=1 it waited for", |j| {
        j.contains("(READY=1") || j.contains(", READY=1")
    });
    assert_eq!(sd.systemctl(&["is-active", "portald"]).trim(), "active");
    let status = sd.systemctl(&["status", "portald"]);
    assert!(
        status.contains("Status: \"1 services, 1 ports, 1 endpoints; last reconcile ok"),
        "systemctl status shows the STATUS= line:\n{status}"
    );
    assert_eq!(
        sd.curl(VIP_URL)
            .unwrap_or_else(|e| panic!("{e}\n{}", sd.journal())),
        "pod-a"
    );

    // The sandboxing is in force (not merely accepted) and the daemon works under it.
    let main_pid = sd.property("MainPID");
    let proc_status = poll("the daemon's /proc status", CONVERGE, || {
        let out = sd.exec(BOOT, "cat", &[&format!("/proc/{main_pid}/status")]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if text.contains("Name:\tportald") {
            Ok(text)
        } else {
            Err(format!("/proc/{main_pid}/status: {text}"))
        }
    });
    let field = |name: &str| {
        proc_status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    };
    // CAP_NET_ADMIN (12) and CAP_NET_RAW (13), nothing else.
    assert_eq!(
        field("CapBnd:"),
        "0000000000003000",
        "bounding set:\n{proc_status}"
    );
    assert_eq!(
        field("CapEff:"),
        "0000000000003000",
        "effective set:\n{proc_status}"
    );
    assert_eq!(field("NoNewPrivs:"), "1", "NoNewPrivileges:\n{proc_status}");
    let mounts = sd.exec(BOOT, "cat", &[&format!("/proc/{main_pid}/mountinfo")]);
    let mounts = String::from_utf8_lossy(&mounts.stdout);
    assert!(
        mounts
            .lines()
            .any(|l| l.split_whitespace().nth(4) == Some("/usr") && l.contains(" ro,")),
        "ProtectSystem=strict: /usr is read-only for the daemon:\n{mounts}"
    );

    // Reload with requests running: none fails and the daemon is the same process.
    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let pid1 = sd.pid1;
        std::thread::spawn(move || {
            let mut results = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline && results.len() < 2000
            {
                let out = Command::new("timeout")
                    .args(["10", "nsenter", "-t", &pid1.to_string(), "-n"])
                    .args(["curl", "-sS", "--max-time", "3", VIP_URL])
                    .stdin(Stdio::null())
                    .output();
                results.push(match out {
                    Ok(o) if o.status.success() && o.stdout.trim_ascii() == b"pod-a" => Ok(()),
                    Ok(o) => Err(format!(
                        "{}: {}{}",
                        o.status,
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    )),
                    Err(e) => Err(e.to_string()),
                });
            }
            results
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..3 {
        sd.systemctl(&["reload", "portald"]);
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::Relaxed);
    let results = load.join().expect("the load thread");
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        results.len() >= 5 && failed.is_empty(),
        "{} of {} requests failed during `systemctl reload`: {failed:?}\n{}",
        failed.len(),
        results.len(),
        sd.journal()
    );
    assert_eq!(
        sd.property("MainPID"),
        main_pid,
        "reload keeps the same daemon process"
    );
    sd.wait_journal(
        "journalctl -u portald to show each reload and RELOADING=1",
        |j| j.matches("SIGHUP: reloading").count() >= 3 && j.contains("RELOADING=1"),
    );

    // The watchdog: over several of its periods systemd neither kills nor restarts it.
    assert_eq!(
        sd.property("WatchdogUSec"),
        format!("{WATCHDOG_SECS}s"),
        "the drop-in's WatchdogSec is in force"
    );
    std::thread::sleep(Duration::from_secs(3 * WATCHDOG_SECS));
    assert_eq!(sd.systemctl(&["is-active", "portald"]).trim(), "active");
    assert_eq!(
        sd.property("MainPID"),
        main_pid,
        "no watchdog kill and restart"
    );
    assert_eq!(sd.property("NRestarts"), "0", "no restart");
    sd.wait_journal("the daemon to have fed the watchdog", |j| {
        j.matches("WATCHDOG=1").count() >= 2 && !j.contains("Watchdog timeout")
    });
    sd.curl(VIP_URL)
        .unwrap_or_else(|e| panic!("traffic still flows after the watchdog run: {e}"));

    // Stop: STOPPING=1, exit status 0. The unit does not ask for --cleanup-on-exit, so the
    // rules stay (README: a restarted daemon re-binds the same proxy ports).
    sd.systemctl(&["stop", "portald"]);
    assert_eq!(sd.property("ActiveState"), "inactive");
    assert_eq!(sd.property("Result"), "success", "{}", sd.journal());
    assert_eq!(
        sd.property("ExecMainStatus"),
        "0",
        "exit status of the daemon"
    );
    sd.wait_journal("systemd to see STOPPING=1 and a clean exit", |j| {
        j.contains("STOPPING=1") && j.contains("Deactivated successfully")
    });
    let tables = sd.exec(BOOT, "nft", &["list", "tables"]);
    assert!(
        String::from_utf8_lossy(&tables.stdout).contains("table ip portald"),
        "the rules stay after a stop without --cleanup-on-exit"
    );
}
