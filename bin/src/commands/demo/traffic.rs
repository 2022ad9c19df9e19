//! The demo's traffic: HTTP and UDP requests from the node and from the client through
//! each service's VIP, tallied per pod that answered.

use super::topology::PODS;
use super::{heading, Demo};
use anyhow::{Context, Result};
use engine::daemon::control::Status;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;

/// Requests per (source, target): even, so round robin gives each pod the same share.
const HTTP_REQUESTS: usize = 20;
const UDP_QUERIES: usize = 10;

/// What one batch of requests from one source to one target got back.
struct Tally {
    answers: BTreeMap<String, usize>,
    failed: usize,
}

impl Demo {
    pub(super) fn traffic(&mut self, vips: &Vips) -> Result<()> {
        heading("7. Traffic through the VIPs");
        let node = self.bed.node().to_string();
        let client = self.client.clone();
        let sources = [
            ("node (host traffic)", node.as_str()),
            ("client (container traffic)", client.as_str()),
        ];
        let http_targets = [
            ("apache-service", format!("{}:12345", vips.apache)),
            ("web/http", format!("{}:80", vips.web)),
            ("web/admin", format!("{}:8081", vips.web)),
        ];
        let mut per_target: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
        let (mut total, mut answered) = (0, 0);
        for (target, addr) in &http_targets {
            for (source, ns) in sources {
                let tally = self.curl_batch(ns, addr)?;
                let what = format!("{HTTP_REQUESTS} x curl http://{addr}/ from {source}");
                println!("{what:<72} -> {}", spread(&tally));
                total += HTTP_REQUESTS;
                answered += HTTP_REQUESTS - tally.failed;
                merge(per_target.entry(target.to_string()).or_default(), &tally);
            }
        }
        let dns = format!("{}:53", vips.dns);
        for (source, ns) in &sources {
            let tally = self.udp_batch(ns, &dns)?;
            let what = format!("{UDP_QUERIES} x udp-probe {dns} from {source}");
            println!("{what:<72} -> {}", spread(&tally));
            total += UDP_QUERIES;
            answered += UDP_QUERIES - tally.failed;
            merge(per_target.entry("dns/dns".into()).or_default(), &tally);
        }
        println!("\nspread per service (both sources):");
        for (target, answers) in &per_target {
            let shown: Vec<String> = answers.iter().map(|(p, n)| format!("{p}={n}")).collect();
            println!("  {target:<15} {}", shown.join(" "));
            for pod in PODS {
                if answers.get(pod).copied().unwrap_or(0) == 0 {
                    self.problems
                        .push(format!("{pod} got no traffic for {target}"));
                }
            }
        }
        println!("{answered}/{total} requests answered");
        if answered != total {
            self.problems
                .push(format!("{} of {total} requests failed", total - answered));
        }
        Ok(())
    }

    /// `HTTP_REQUESTS` sequential requests in one curl run (the backend closes each
    /// connection, so each request is a new connection the proxy balances).
    fn curl_batch(&self, ns: &str, addr: &str) -> Result<Tally> {
        let url = format!("http://{addr}/");
        let mut args = vec!["-sS", "--connect-timeout", "2", "--max-time", "3"];
        // A loop, not `repeat_n`: that needs Rust 1.82 and the workspace allows 1.80.
        for _ in 0..HTTP_REQUESTS {
            args.push(url.as_str());
        }
        let out = self.bed.run(ns, "curl", &args).context("running curl")?;
        let mut tally = count_answers(&String::from_utf8_lossy(&out.stdout), |l| {
            Some(l.trim().to_string())
        });
        tally.failed = HTTP_REQUESTS.saturating_sub(tally.answers.values().sum());
        if tally.failed > 0 {
            eprint!("{}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(tally)
    }

    fn udp_batch(&self, ns: &str, addr: &str) -> Result<Tally> {
        let count = UDP_QUERIES.to_string();
        let args = [
            "udp-probe",
            "--to",
            addr,
            "--count",
            &count,
            "--timeout-ms",
            "2000",
        ];
        let out = self
            .bed
            .run(ns, &self.exe, &args)
            .context("running udp-probe")?;
        // Replies look like `pod1:probe-3`; other lines are the probe's own notes.
        let mut tally = count_answers(&String::from_utf8_lossy(&out.stdout), |l| {
            l.split_once(":probe-").map(|(pod, _)| pod.to_string())
        });
        tally.failed = UDP_QUERIES.saturating_sub(tally.answers.values().sum());
        if tally.failed > 0 {
            // The probe's notes say whether replies were missing or came from elsewhere.
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if !line.contains(":probe-") || line.starts_with("reply to") {
                    eprintln!("  udp-probe: {line}");
                }
            }
        }
        Ok(tally)
    }
}

pub(super) struct Vips {
    pub(super) apache: Ipv4Addr,
    web: Ipv4Addr,
    dns: Ipv4Addr,
}

pub(super) fn vips_of(status: &Status) -> Result<Vips> {
    let find = |name: &str| {
        status
            .services
            .iter()
            .find(|s| s.name == name || s.name.ends_with(&format!("/{name}")))
            .and_then(|s| s.vip)
            .map(|v| v.0)
            .with_context(|| format!("the daemon shows no VIP for service `{name}`"))
    };
    let vips = Vips {
        apache: find("apache-service")?,
        web: find("web")?,
        dns: find("dns")?,
    };
    println!(
        "VIPs: apache-service {}, web {}, dns {}",
        vips.apache, vips.web, vips.dns
    );
    Ok(vips)
}

fn count_answers(text: &str, pod_of: impl Fn(&str) -> Option<String>) -> Tally {
    let mut answers = BTreeMap::new();
    for line in text.lines() {
        if let Some(pod) = pod_of(line) {
            if PODS.contains(&pod.as_str()) {
                *answers.entry(pod).or_insert(0) += 1;
            }
        }
    }
    Tally { answers, failed: 0 }
}

fn spread(tally: &Tally) -> String {
    let mut parts: Vec<String> = tally
        .answers
        .iter()
        .map(|(p, n)| format!("{p}={n}"))
        .collect();
    if tally.failed > 0 {
        parts.push(format!("FAILED={}", tally.failed));
    }
    parts.join(" ")
}

fn merge(into: &mut BTreeMap<String, usize>, tally: &Tally) {
    for (pod, n) in &tally.answers {
        *into.entry(pod.clone()).or_insert(0) += n;
    }
}
