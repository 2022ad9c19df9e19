//! The command line against hostile files: symlinks planted where portald writes, and
//! inputs shaped to exhaust time or memory.

use engine::allocate::Lock;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

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
