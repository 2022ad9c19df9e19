//! The command line against hostile files: symlinks planted where portald writes, and
//! inputs shaped to exhaust time or memory.

use engine::allocate::Lock;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn portald(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_portald"))
        .args(args)
        .output()
        .expect("the portald binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A temporary directory only its owner may write (the umask could leave it group-writable,
/// which portald refuses to write into).
fn private_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A services directory `services/` inside `root` with one v1 Service `web`.
fn services_dir(root: &Path) -> PathBuf {
    let dir = root.join("services");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        dir.join("web.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: web\nspec:\n  selector:\n    app: web\n  ports:\n  - port: 80\n    targetPort: 8080\n",
    )
    .unwrap();
    dir
}

fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path)
        .map(|m| m.file_type().is_symlink())
        .unwrap_or(false)
}

const EMPTY_LOCK: &str = "{\"format_version\": 1}\n";

#[test]
fn lock_replaces_planted_symlinks_and_leaves_their_victims_byte_identical() {
    let root = private_dir();
    let dir = services_dir(root.path());
    // One victim behind the old fixed temporary name, one behind the lock itself (holding a
    // valid lock, so that reading it succeeds and only the write is at stake).
    let victim_tmp = root.path().join("victim-passwd");
    let victim_lock = root.path().join("victim-lock");
    std::fs::write(&victim_tmp, "root:x:0:0::/root:/bin/sh\n").unwrap();
    std::fs::write(&victim_lock, EMPTY_LOCK).unwrap();
    symlink(&victim_tmp, dir.join("portald.lock.tmp")).unwrap();
    symlink(&victim_lock, dir.join("portald.lock")).unwrap();

    let out = portald(&["lock", dir.to_str().unwrap(), "--no-live"]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    assert_eq!(
        std::fs::read_to_string(&victim_tmp).unwrap(),
        "root:x:0:0::/root:/bin/sh\n"
    );
    assert_eq!(std::fs::read_to_string(&victim_lock).unwrap(), EMPTY_LOCK);
    let lock_path = dir.join("portald.lock");
    assert!(!is_symlink(&lock_path), "the lock is still a symlink");
    let lock = Lock::read(&lock_path).expect("the written lock parses");
    assert!(
        lock.vips.contains_key("default/web"),
        "the lock holds web's VIP: {lock:?}"
    );
    // The planted link at the old temporary name is not portald's: left as it was.
    assert!(is_symlink(&dir.join("portald.lock.tmp")));
}

#[test]
fn plan_out_replaces_a_planted_symlink_and_leaves_its_victim_byte_identical() {
    let root = private_dir();
    let dir = services_dir(root.path());
    let victim = root.path().join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let out_path = root.path().join("plan.json");
    symlink(&victim, &out_path).unwrap();

    let out = portald(&[
        "plan",
        dir.to_str().unwrap(),
        "--no-live",
        "--out",
        out_path.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert!(!is_symlink(&out_path));
    let plan: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&out_path).unwrap()).expect("the plan is JSON");
    assert!(plan.get("steps").is_some(), "{plan}");
}

#[test]
fn lock_refuses_a_services_directory_others_can_write() {
    let root = private_dir();
    let dir = services_dir(root.path());
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = portald(&["lock", dir.to_str().unwrap(), "--no-live"]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("writable by group or others"),
        "the refusal says why: {stderr}"
    );
    assert!(!dir.join("portald.lock").exists());
}

/// `portald ARGS` killed after `limit`: its output, or `None` when it was still running.
fn portald_within(args: &[&str], limit: Duration) -> Option<Output> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portald"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the portald binary runs");
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if child.try_wait().expect("waiting for portald").is_some() {
            return Some(child.wait_with_output().expect("portald's output"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Diagnostics of `portald plan DIR --no-live --json` and the names of its services.
fn plan_json(dir: &Path) -> (Vec<serde_json::Value>, Vec<String>, Duration) {
    let started = Instant::now();
    let out = portald_within(
        &["plan", dir.to_str().unwrap(), "--no-live", "--json"],
        Duration::from_secs(60),
    )
    .expect("portald plan finished within a minute");
    let took = started.elapsed();
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("plan is not JSON ({e}): {}", text(&out.stderr)));
    let names = plan["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    (plan["diagnostics"].as_array().unwrap().clone(), names, took)
}

fn diagnostic_of<'a>(diagnostics: &'a [serde_json::Value], file: &str) -> &'a serde_json::Value {
    diagnostics
        .iter()
        .find(|d| d["file"] == file)
        .unwrap_or_else(|| panic!("no diagnostic for `{file}`: {diagnostics:?}"))
}

/// A diagnostic's message text.
fn message_of(d: &serde_json::Value) -> &str {
    d["message"].as_str().expect("a message")
}

#[test]
fn nested_brackets_of_400_kb_are_refused_quickly_while_a_good_file_still_loads() {
    let root = private_dir();
    let dir = services_dir(root.path());
    let n = 200_000;
    std::fs::write(dir.join("flow.yaml"), "[".repeat(n) + &"]".repeat(n)).unwrap();
    std::fs::write(
        dir.join("maps.yaml"),
        "{a: ".repeat(n / 2) + "1" + &"}".repeat(n / 2),
    )
    .unwrap();
    let block: String = (0..600)
        .map(|i| format!("{}a:\n", "  ".repeat(i)))
        .collect();
    std::fs::write(dir.join("block.yaml"), block).unwrap();
    std::fs::write(
        dir.join("deep.json"),
        "{\"a\": ".repeat(n / 3) + "1" + &"}".repeat(n / 3),
    )
    .unwrap();

    let (diagnostics, names, took) = plan_json(&dir);

    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert_eq!(names, ["default/web"], "{diagnostics:?}");
    for (file, line) in [
        ("flow.yaml", 1),
        ("maps.yaml", 1),
        ("block.yaml", 65),
        ("deep.json", 1),
    ] {
        let d = diagnostic_of(&diagnostics, file);
        assert_eq!(d["severity"], "error", "{d}");
        assert_eq!(d["line"], line, "{d}");
        assert!(
            message_of(d).contains("nested deeper than 64 levels"),
            "{d}"
        );
    }
}

#[test]
fn a_200_mb_file_is_refused_quickly_with_bounded_memory() {
    let root = private_dir();
    let dir = services_dir(root.path());
    // Sparse: 200 MB as the file system reports it, none of it on disk.
    std::fs::File::create(dir.join("big.yaml"))
        .unwrap()
        .set_len(200 << 20)
        .unwrap();

    let started = Instant::now();
    // Reaped by wait4 below, which clippy cannot see.
    #[allow(clippy::zombie_processes)]
    let child = Command::new(env!("CARGO_BIN_EXE_portald"))
        .args(["plan", dir.to_str().unwrap(), "--no-live", "--json"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the portald binary runs");
    // wait4 gives this one child's peak resident set (getrusage's RUSAGE_CHILDREN would mix
    // in the children of tests running alongside). SAFETY: plain syscall on our own child,
    // with pointers to locals that outlive it.
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32, "wait4 failed");
    let took = started.elapsed();
    let peak_mib = usage.ru_maxrss / 1024;
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(peak_mib < 200, "peak resident set {peak_mib} MiB");

    let (diagnostics, names, _) = plan_json(&dir);
    assert_eq!(names, ["default/web"]);
    let d = diagnostic_of(&diagnostics, "big.yaml");
    assert!(
        message_of(d).contains("file is 209715200 bytes, over the limit of 4194304 bytes"),
        "{d}"
    );
}

#[test]
fn a_file_over_a_lower_max_file_bytes_is_refused() {
    let root = private_dir();
    let dir = services_dir(root.path());
    let out = portald(&["check", dir.to_str().unwrap(), "--max-file-bytes", "50"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert!(
        text(&out.stdout)
            .contains("web.yaml: error: file is 125 bytes, over the limit of 50 bytes"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn a_fifo_services_file_is_reported_and_skipped_without_hanging() {
    let root = private_dir();
    let dir = services_dir(root.path());
    let fifo = dir.join("fifo.yaml");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a NUL-terminated path we own.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);

    let (diagnostics, names, _) = plan_json(&dir);

    assert_eq!(names, ["default/web"]);
    let d = diagnostic_of(&diagnostics, "fifo.yaml");
    assert_eq!(d["message"], "not a regular file (a FIFO): skipped", "{d}");
}

#[test]
fn a_fifo_or_dev_zero_as_the_lock_is_a_clear_error_not_a_hang() {
    let root = private_dir();
    let dir = services_dir(root.path());
    let lock = dir.join("portald.lock");
    let c = std::ffi::CString::new(lock.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a NUL-terminated path we own.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    for kind in ["a FIFO", "a character device"] {
        let out = portald_within(
            &["lock", dir.to_str().unwrap(), "--no-live"],
            Duration::from_secs(10),
        )
        .unwrap_or_else(|| panic!("`portald lock` hung on {kind} as the lock"));
        assert_eq!(out.status.code(), Some(1));
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("cannot read lock file") && stderr.contains(kind),
            "{stderr}"
        );
        std::fs::remove_file(&lock).unwrap();
        symlink("/dev/zero", &lock).unwrap();
    }
}
