//! A private network namespace for tier-3 dialect tests: created with `ip netns add`,
//! deleted on drop (also when the test fails). Needs root and `ip`; a missing tool fails
//! the test, never skips it.
#![allow(dead_code)]

use std::io::Write;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

pub struct Netns(pub String);

/// Runs a program to its end, with `stdin` as its standard input.
pub fn run(program: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{program}` (is it installed?): {e}"));
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        let _ = pipe.write_all(text.as_bytes());
    }
    child.wait_with_output().expect("child output")
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let name = format!(
            "portald-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        let out = run("ip", &["netns", "add", &name], None);
        assert!(
            out.status.success(),
            "`ip netns add {name}` failed (tier-3 tests need root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ns = Netns(name);
        ns.ok("ip", &["link", "set", "lo", "up"], None);
        ns
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, program: &str, args: &[&str], stdin: Option<&str>) -> Output {
        let mut full = vec!["netns", "exec", self.0.as_str(), program];
        full.extend_from_slice(args);
        run("ip", &full, stdin)
    }

    /// Runs a command inside the namespace and insists it succeeds.
    pub fn ok(&self, program: &str, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.exec(program, args, stdin);
        assert!(
            out.status.success(),
            "`{program} {}` failed in `{}`: {}\nstdin:\n{}",
            args.join(" "),
            self.0,
            String::from_utf8_lossy(&out.stderr),
            stdin.unwrap_or_default()
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = run("ip", &["netns", "del", &self.0], None);
    }
}
