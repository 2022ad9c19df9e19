//! What the demo shows of portald itself: the plan against the live node, the rules in its
//! kernel, `portald status`, the daemon's log when something failed, and the verdict.

use super::{heading, path_str, Demo};
use crate::args::BackendArg;
use anyhow::{Context, Result};

impl Demo {
    pub(super) fn show_plan(&mut self) -> Result<()> {
        heading("5. The plan against the live node: nothing should be left to do");
        let node = self.bed.node().to_string();
        let args = self.portald_args("plan", "--detailed-exitcode")?;
        println!("$ portald {}", args.join(" "));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = self
            .bed
            .run(&node, &self.exe, &args)
            .context("running `portald plan`")?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        match out.status.code() {
            Some(0) => println!("(exit 0: no changes)"),
            other => self.problems.push(format!(
                "`portald plan` found changes against the running daemon (exit {other:?})"
            )),
        }
        Ok(())
    }

    pub(super) fn show_rules(&mut self) -> Result<()> {
        let node = self.bed.node().to_string();
        let lines = match self.backend {
            BackendArg::Iptables => {
                heading("6. Live rules: `iptables-save -t nat | grep PORTAL` in the node");
                self.portal_rules(&node)?
            }
            BackendArg::Nftables => {
                heading("6. Live rules: `nft list table ip portald` in the node");
                self.portal_rules(&node)?
            }
        };
        for line in &lines {
            println!("{line}");
        }
        if lines.is_empty() {
            self.problems
                .push("no portald rules in the node's kernel".into());
        }
        Ok(())
    }

    /// portald's rules in the node's kernel, as text lines (empty when there are none).
    pub(super) fn portal_rules(&self, node: &str) -> Result<Vec<String>> {
        match self.backend {
            BackendArg::Iptables => {
                let out = self
                    .bed
                    .run_checked(node, "iptables-save", &["-t", "nat"])
                    .context("reading the node's NAT table")?;
                Ok(String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter(|l| l.contains("PORTAL"))
                    .map(str::to_string)
                    .collect())
            }
            BackendArg::Nftables => {
                // A missing table makes nft fail: that is "no rules", not an error.
                let out = self
                    .bed
                    .run(node, "nft", &["list", "table", "ip", "portald"])
                    .context("running nft in the node")?;
                if !out.status.success() {
                    return Ok(Vec::new());
                }
                Ok(String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .map(str::to_string)
                    .collect())
            }
        }
    }

    pub(super) fn show_status(&mut self) -> Result<()> {
        heading("8. `portald status`");
        let socket = path_str(&self.socket)?;
        let node = self.bed.node().to_string();
        let out = self
            .bed
            .run(&node, &self.exe, &["status", "--control-socket", &socket])
            .context("running `portald status`")?;
        print!("{}", String::from_utf8_lossy(&out.stdout));
        if !out.status.success() {
            self.problems.push(format!(
                "`portald status` failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(())
    }

    /// The end of the daemon's log, which explains most failures; shown before the testbed
    /// (and the log with it) goes.
    pub(super) fn show_daemon_log(&self) {
        if let Some(pid) = self.daemon {
            let log = self.bed.log_of(pid);
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("\n--- daemon log (last lines) ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// Prints the verdict: the exit code is 0 only when no check failed.
pub(super) fn verdict(problems: &[String]) -> u8 {
    if problems.is_empty() {
        println!("demo: OK: every request answered through the VIPs, pod1 and pod2 both served");
        0
    } else {
        println!("demo: FAILED");
        for p in problems {
            println!("  - {p}");
        }
        1
    }
}
