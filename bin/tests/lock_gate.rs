//! The GitOps gate without kernel access: `portald lock DIR` is pure and writes VIPs only;
//! `portald check --locked DIR` fails on a missing, stale or unusable entry.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn portald(args: &[&str]) -> Output {
    // No kernel tool on the PATH: a command that tried to read the kernel would fail.
    Command::new(env!("CARGO_BIN_EXE_portald"))
        .args(args)
        .env("PATH", "/nonexistent")
        .output()
        .expect("the portald binary runs")
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("portald exited, not killed")
}

fn both(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A fresh directory of its own under the system temp directory, removed on drop.
struct Repo(PathBuf);

impl Repo {
    fn new(tag: &str) -> Repo {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "portald-lockgate-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        Repo(dir)
    }

    fn dir(&self) -> &str {
        self.0.to_str().expect("utf-8 path")
    }

    fn service(&self, name: &str) {
        std::fs::write(
            self.0.join(format!("{name}.yaml")),
            format!("apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  selector:\n    app: {name}\n  ports:\n    - port: 80\n"),
        )
        .expect("writing a service");
    }

    fn lock(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.0.join("portald.lock")).expect("lock written");
        serde_json::from_str(&text).expect("lock is JSON")
    }

    fn set_lock(&self, value: &serde_json::Value) {
        std::fs::write(
            self.0.join("portald.lock"),
            serde_json::to_string_pretty(value).unwrap(),
        )
        .unwrap();
    }

    fn path(&self, name: &str) -> PathBuf {
        Path::new(&self.0).join(name)
    }
}

impl Drop for Repo {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn check_locked_fails_until_portald_lock_has_an_entry_for_every_service() {
    let repo = Repo::new("missing");
    repo.service("a");
    repo.service("b");
    let out = portald(&["check", "--locked", repo.dir()]);
    assert_eq!(code(&out), 1, "{}", both(&out));
    let report = both(&out);
    for key in ["default/a", "default/b"] {
        assert!(
            report.contains(&format!("Service `{key}`")) && report.contains("no entry"),
            "{report}"
        );
    }
    // Plain `check` has nothing against a missing lock.
    assert_eq!(code(&portald(&["check", repo.dir()])), 0);

    let out = portald(&["lock", repo.dir()]);
    assert_eq!(code(&out), 0, "{}", both(&out));
    let lock = repo.lock();
    assert_eq!(lock["vips"]["default/a"], "10.11.0.1");
    assert_eq!(lock["vips"]["default/b"], "10.11.0.2");
    assert!(
        lock.get("proxy_ports").is_none(),
        "proxy ports are node-local: {lock}"
    );
    let out = portald(&["check", "--locked", repo.dir()]);
    assert_eq!(code(&out), 0, "{}", both(&out));
}

#[test]
fn delete_and_add_in_one_commit_gives_the_newcomer_the_freed_vip_and_check_locked_sees_stale_entries(
) {
    let repo = Repo::new("stale");
    repo.service("a");
    repo.service("b");
    assert_eq!(code(&portald(&["lock", repo.dir()])), 0);
    std::fs::remove_file(repo.path("a.yaml")).unwrap();
    let out = portald(&["check", "--locked", repo.dir()]);
    assert_eq!(code(&out), 1, "{}", both(&out));
    assert!(both(&out).contains("stale entry"), "{}", both(&out));

    repo.service("c");
    assert_eq!(code(&portald(&["lock", repo.dir()])), 0);
    let lock = repo.lock();
    assert!(lock["vips"].get("default/a").is_none(), "{lock}");
    assert_eq!(lock["vips"]["default/b"], "10.11.0.2", "b keeps its entry");
    assert_eq!(
        lock["vips"]["default/c"], "10.11.0.1",
        "c takes a's freed VIP"
    );
    assert_eq!(code(&portald(&["check", "--locked", repo.dir()])), 0);
}

#[test]
fn two_services_locked_to_one_vip_is_an_error_naming_both_and_portald_lock_repairs_it() {
    let repo = Repo::new("conflict");
    repo.service("a");
    repo.service("b");
    assert_eq!(code(&portald(&["lock", repo.dir()])), 0);
    let mut lock = repo.lock();
    lock["vips"]["default/b"] = "10.11.0.1".into();
    repo.set_lock(&lock);
    for args in [vec!["check"], vec!["check", "--locked"]] {
        let mut all = args.clone();
        all.push(repo.dir());
        let out = portald(&all);
        assert_eq!(code(&out), 1, "{all:?}: {}", both(&out));
        assert!(
            both(&out).contains("lock entries `default/a` and `default/b` all hold VIP 10.11.0.1"),
            "{}",
            both(&out)
        );
    }
    assert_eq!(code(&portald(&["lock", repo.dir()])), 0);
    let lock = repo.lock();
    assert_eq!(lock["vips"]["default/a"], "10.11.0.1");
    assert_eq!(lock["vips"]["default/b"], "10.11.0.2");
}

#[test]
fn require_lock_reports_a_held_service_and_check_locked_fails_on_it() {
    let repo = Repo::new("held");
    repo.service("a");
    assert_eq!(code(&portald(&["lock", repo.dir()])), 0);
    repo.service("b");
    let out = portald(&["check", "--require-lock", repo.dir()]);
    assert_eq!(code(&out), 0, "a held service is a warning: {}", both(&out));
    assert!(
        both(&out).contains("Service `default/b`") && both(&out).contains("held"),
        "{}",
        both(&out)
    );
    let out = portald(&["check", "--require-lock", "--locked", repo.dir()]);
    assert_eq!(code(&out), 1, "{}", both(&out));
}

#[test]
fn portald_lock_reads_the_kernel_only_when_asked() {
    let repo = Repo::new("pure");
    repo.service("a");
    assert_eq!(code(&portald(&["lock", repo.dir()])), 0);
    // With no iptables on the PATH, asking for the kernel fails: the default never asks.
    let out = portald(&["lock", "--from-kernel", repo.dir()]);
    assert_ne!(code(&out), 0, "{}", both(&out));
}
