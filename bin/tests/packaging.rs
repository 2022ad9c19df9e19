//! The shipped systemd unit is one systemd accepts: `systemd-analyze verify` on it, with
//! `ExecStart` pointing at the binary just built; and the .deb that `packaging/build-deb.sh`
//! makes installs the binary, unit, config, man page and completions (unpacked into a
//! scratch root).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("bin/ has a parent")
        .to_path_buf()
}

#[test]
fn the_systemd_unit_passes_systemd_analyze_verify() {
    let unit = std::fs::read_to_string(root().join("packaging/portald.service"))
        .expect("packaging/portald.service");
    for needed in [
        "Type=notify",
        "ExecReload=",
        "Restart=on-failure",
        "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW",
        "WatchdogSec=",
    ] {
        assert!(unit.contains(needed), "the unit lacks `{needed}`");
    }
    // verify checks that ExecStart's program exists: the binary under test stands in for
    // /usr/bin/portald.
    let dir = std::env::temp_dir().join(format!("portald-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let path = dir.join("portald.service");
    std::fs::write(
        &path,
        unit.replace("/usr/bin/portald", env!("CARGO_BIN_EXE_portald")),
    )
    .expect("writes the unit");
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .expect("systemd-analyze runs (scripts/setup.sh installs systemd)");
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let _ = std::fs::remove_dir_all(&dir);
    // Lines about the unit itself; verify also reports on units it pulls in from the host.
    let about_ours: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("portald.service"))
        .collect();
    assert!(
        out.status.success() && about_ours.is_empty(),
        "systemd-analyze verify: {}\n{said}",
        out.status
    );
}

/// Runs `cmd` to its end or kills it after `limit` (no step of packaging may hang the suite).
fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what} starts: {e}"));
    // Pipes drained by threads, so a chatty child cannot block on a full pipe.
    let mut out_pipe = child.stdout.take().expect("piped stdout");
    let mut err_pipe = child.stderr.take().expect("piped stderr");
    let out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut out_pipe, &mut v);
        v
    });
    let err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = std::io::Read::read_to_end(&mut err_pipe, &mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("waits on the child") {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} ran past {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out.join().expect("stdout reader"),
        stderr: err.join().expect("stderr reader"),
    }
}

/// Removes the scratch directory however the test ends.
struct Scratch(PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn non_empty(root: &Path, path: &str) -> String {
    let file = root.join(path.trim_start_matches('/'));
    let text =
        std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("the .deb has {path}: {e}"));
    assert!(!text.trim().is_empty(), "{path} in the .deb is empty");
    text
}

#[test]
fn the_deb_installs_the_binary_unit_config_man_page_and_completions() {
    let scratch = Scratch(std::env::temp_dir().join(format!("portald-deb-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&scratch.0);
    std::fs::create_dir_all(&scratch.0).expect("a scratch directory");
    let deb = scratch.0.join("portald.deb");
    // The debug binary this test run built stands in for the release one (no second build);
    // --fast: light compression of a large unstripped-by-profile binary.
    let built = run_bounded(
        Command::new(root().join("packaging/build-deb.sh"))
            .env("PORTALD_BIN", env!("CARGO_BIN_EXE_portald"))
            .env("TMPDIR", &scratch.0)
            .arg("--fast")
            .arg("--output")
            .arg(&deb),
        Duration::from_secs(300),
    );
    assert!(
        built.status.success() && deb.is_file(),
        "packaging/build-deb.sh: {}\n{}{}",
        built.status,
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );

    let info = run_bounded(
        Command::new("dpkg-deb").arg("-I").arg(&deb),
        Duration::from_secs(30),
    );
    let info = String::from_utf8_lossy(&info.stdout).into_owned();
    let field = |name: &str| {
        info.lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("dpkg-deb -I shows no {name}:\n{info}"))
            .to_string()
    };
    assert_eq!(field("Package"), "portald");
    assert!(
        field("Version").starts_with(env!("CARGO_PKG_VERSION")),
        "Version: {}",
        field("Version")
    );
    let depends = field("Depends");
    assert!(
        depends.contains("iptables | nftables"),
        "Depends: {depends}"
    );
    assert!(
        depends.contains("libc6"),
        "Depends lacks the $auto libc6: {depends}"
    );
    assert_eq!(field("Recommends"), "conntrack");
    assert_eq!(field("Section"), "net");
    // dpkg keeps an admin's edits of a conffile on upgrade; files under /etc are ones.
    let conffiles = run_bounded(
        Command::new("dpkg-deb")
            .arg("--info")
            .arg(&deb)
            .arg("conffiles"),
        Duration::from_secs(30),
    );
    assert!(
        String::from_utf8_lossy(&conffiles.stdout).contains("/etc/portald/config.yaml"),
        "config.yaml is not a conffile: {}",
        String::from_utf8_lossy(&conffiles.stdout)
    );
    let postinst = run_bounded(
        Command::new("dpkg-deb")
            .arg("--info")
            .arg(&deb)
            .arg("postinst"),
        Duration::from_secs(30),
    );
    let postinst = String::from_utf8_lossy(&postinst.stdout).into_owned();
    assert!(
        postinst.contains("mkdir -p /etc/portald/services")
            && postinst.contains("deb-systemd-helper")
            && !postinst.contains("#DEBHELPER#"),
        "postinst neither makes the services directory nor enables the unit:\n{postinst}"
    );

    let root_dir = scratch.0.join("root");
    let unpacked = run_bounded(
        Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root_dir),
        Duration::from_secs(120),
    );
    assert!(unpacked.status.success(), "dpkg-deb -x: {unpacked:?}");

    let version = run_bounded(
        Command::new(root_dir.join("usr/bin/portald")).arg("--version"),
        Duration::from_secs(30),
    );
    assert!(
        version.status.success()
            && String::from_utf8_lossy(&version.stdout).contains(env!("CARGO_PKG_VERSION")),
        "/usr/bin/portald --version: {version:?}"
    );
    let unit = non_empty(&root_dir, "/usr/lib/systemd/system/portald.service");
    assert!(unit.contains("ExecStart=/usr/bin/portald run"), "{unit}");
    let config = non_empty(&root_dir, "/etc/portald/config.yaml");
    assert!(config.contains("dir: /etc/portald/services"), "{config}");

    let man = run_bounded(
        Command::new("gzip")
            .arg("-dc")
            .arg(root_dir.join("usr/share/man/man1/portald.1.gz")),
        Duration::from_secs(30),
    );
    let man = String::from_utf8_lossy(&man.stdout);
    assert!(man.contains(".TH portald 1"), "the man page: {man}");

    let bash = non_empty(&root_dir, "/usr/share/bash-completion/completions/portald");
    assert!(bash.contains("complete"), "{bash}");
    let zsh = non_empty(&root_dir, "/usr/share/zsh/vendor-completions/_portald");
    assert!(zsh.starts_with("#compdef portald"), "{zsh}");
    let fish = non_empty(
        &root_dir,
        "/usr/share/fish/vendor_completions.d/portald.fish",
    );
    assert!(fish.contains("complete -c portald"), "{fish}");
}
