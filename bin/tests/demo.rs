//! The demo's building blocks and the demo itself, in private network namespaces: the
//! hidden `portald backend` answers HTTP and UDP across the testbed's bridge, `udp-probe`
//! sees its replies. Needs root, iproute2 and curl; fails, never skips, without them.

use std::net::Ipv4Addr;
use std::time::Duration;
use testbed::{Testbed, SIGTERM};

const PORTALD: &str = env!("CARGO_BIN_EXE_portald");
const A: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const B: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);

#[test]
fn backend_in_host_a_answers_curl_and_udp_from_host_b() {
    let mut bed = Testbed::new("bkt").unwrap();
    let a = bed.add_host("a", A).unwrap();
    let b = bed.add_host("b", B).unwrap();
    let pid = bed
        .spawn(
            &a,
            PORTALD,
            &[
                "backend", "--name", "pod-a", "--tcp", "80", "--tcp", "8080", "--udp", "5353",
            ],
        )
        .unwrap();
    assert!(
        bed.wait_for_log(pid, "ready", Duration::from_secs(10)),
        "backend did not start: {}",
        bed.log_of(pid)
    );
    for port in [80, 8080] {
        let out = bed
            .run(
                &b,
                "curl",
                &[
                    "-sS",
                    "-i",
                    "--max-time",
                    "5",
                    &format!("http://{A}:{port}/x"),
                ],
            )
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
        assert!(text.contains("Connection: close"), "{text}");
        assert!(text.contains(&format!("X-Client: {B}:")), "{text}");
        assert!(text.ends_with("\r\n\r\npod-a\n"), "{text}");
    }
    let out = bed
        .run(
            &b,
            PORTALD,
            &["udp-probe", "--to", &format!("{A}:5353"), "--count", "3"],
        )
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("pod-a:probe-1\npod-a:probe-2\npod-a:probe-3\n"),
        "{text}"
    );
    assert!(text.contains("3/3 answered"), "{text}");

    // No listener: the probe reports the miss and fails.
    let out = bed
        .run(
            &b,
            PORTALD,
            &[
                "udp-probe",
                "--to",
                &format!("{A}:9"),
                "--timeout-ms",
                "300",
            ],
        )
        .unwrap();
    assert_eq!(out.status.code(), Some(1));

    bed.stop(pid, SIGTERM).unwrap();
    assert!(bed.exit_status(pid).unwrap().success());
    assert!(bed.log_of(pid).contains("backend pod-a stopping"));
}

#[test]
fn demo_serves_every_request_through_the_vips_from_both_pods() {
    run_demo(&[]);
}

#[test]
fn demo_in_kernel_mode_with_nftables_serves_every_request_from_both_pods() {
    run_demo(&["--backend", "nftables", "--mode", "kernel"]);
}

/// Runs `portald demo ARGS` (bounded to 60 s) and checks its report.
fn run_demo(args: &[&str]) {
    // Output to a file, not a pipe: polling with a bound must not stall on a full pipe.
    let log = std::env::temp_dir().join(format!(
        "portald-demo-test-{}-{}.log",
        std::process::id(),
        args.len()
    ));
    let file = std::fs::File::create(&log).unwrap();
    let mut child = std::process::Command::new(PORTALD)
        .arg("demo")
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if std::time::Instant::now() >= deadline {
            // SIGTERM first: the demo catches it and still tears its namespaces down.
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            std::thread::sleep(Duration::from_secs(5));
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let out = std::fs::read_to_string(&log).unwrap();
    let _ = std::fs::remove_file(&log);
    let status = status.unwrap_or_else(|| panic!("the demo ran over 60 s:\n{out}"));
    assert!(status.success(), "demo failed ({status}):\n{out}");
    assert!(out.contains("demo: OK"), "{out}");
    assert!(out.contains("(exit 0: no changes)"), "{out}");
    assert!(out.contains("no portald rule remains in the node"), "{out}");
    for service in ["apache-service", "web/http", "web/admin", "dns/dns"] {
        let line = out
            .lines()
            .find(|l| l.trim_start().starts_with(service) && l.contains("pod1="))
            .unwrap_or_else(|| panic!("no spread line for {service}:\n{out}"));
        assert!(line.contains("pod1=") && line.contains("pod2="), "{line}");
    }
    assert!(!out.contains("FAILED"), "{out}");
}
