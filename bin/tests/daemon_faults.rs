//! Tier 3: the daemon under faults of its surroundings: a hostile umask and squatted paths
//! at its control socket, kernel tools that fail once or hang, rules changed by hand, and a
//! services directory that is replaced or whose symlink is swapped. Needs root, iproute2,
//! iptables, nft, curl.

mod support;

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;
use support::*;

/// `portald run` in the node under `umask 000`, spawned by `sh` (which execs it, so the pid
/// is the daemon's).
fn spawn_under_umask_000(c: &mut Cluster, extra: &[&str]) -> u32 {
    let mut command = format!(
        "umask 000; exec {PORTALD} run {} --control-socket {} --resync-seconds 600",
        c.dir.display(),
        c.socket.display()
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
