//! The shipped systemd unit is one systemd accepts: `systemd-analyze verify` on it, with
//! `ExecStart` pointing at the binary just built.

use std::path::PathBuf;
use std::process::Command;

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
