//! The demo's scene: the namespaces (a node with its bridge, two pods, a client), the
//! backends in the pods, and the services directory the daemon reads.

use super::{heading, Demo};
use anyhow::{bail, Context, Result};
use std::net::Ipv4Addr;
use std::time::Duration;

const POD1: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 2);
const POD2: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 3);
const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 244, 1, 10);
pub(super) const PODS: [&str; 2] = ["pod1", "pod2"];

/// The seed's service definition, byte for byte as in SEED.md: it must work unchanged.
const APACHE_SERVICE: &str = include_str!("../../../../examples/seed/apache-service.json");

const WEB_SERVICE: &str = "\
# Two ports: `http` by the pods' named container port, `admin` by number.
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector: {app: web}
  ports:
    - {name: http, port: 80, targetPort: http}
    - {name: admin, port: 8081, targetPort: 8080}
";

const DNS_SERVICE: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: dns
spec:
  selector: {role: dns}
  ports:
    - {name: dns, protocol: UDP, port: 53, targetPort: 5353}
";

fn pod_yaml(name: &str, ip: Ipv4Addr) -> String {
    format!(
        "\
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{name: apache, app: web, role: dns}}
spec:
  containers:
    - name: backend
      ports:
        - {{name: http, containerPort: 80}}
        - {{name: admin, containerPort: 8080}}
        - {{name: dns, containerPort: 5353, protocol: UDP}}
status:
  podIP: {ip}
  conditions: [{{type: Ready, status: \"True\"}}]
"
    )
}

impl Demo {
    pub(super) fn build_topology(&mut self) -> Result<()> {
        let node = self.bed.node().to_string();
        println!(
            "node   {node}: br0 {}/24, route 10.11.0.0/16 dev br0, ip_forward=1",
            testbed::NODE_ADDR
        );
        for (name, ip) in [("pod1", POD1), ("pod2", POD2), ("client", CLIENT)] {
            let ns = self
                .bed
                .add_host(name, ip)
                .with_context(|| format!("adding host {name}"))?;
            println!("{name:<6} {ns}: eth0 {ip}/24, default via the node");
            if name == "client" {
                self.client = ns;
            } else {
                self.pods.push(ns);
            }
        }
        Ok(())
    }

    pub(super) fn start_backends(&mut self) -> Result<()> {
        heading("2. Backends: `portald backend` in each pod (tcp/80, tcp/8080, udp/5353)");
        let exe = self.exe.clone();
        for (name, ns) in PODS.iter().zip(self.pods.clone()) {
            let args = [
                "backend", "--name", name, "--tcp", "80", "--tcp", "8080", "--udp", "5353",
            ];
            let pid = self
                .bed
                .spawn(&ns, &exe, &args)
                .with_context(|| format!("starting the backend in {name}"))?;
            if !self.bed.wait_for_log(pid, "ready", Duration::from_secs(10)) {
                bail!(
                    "the backend in {name} did not start within 10 s: {}",
                    self.bed.log_of(pid).trim()
                );
            }
            print!("{name}: {}", self.bed.log_of(pid));
        }
        Ok(())
    }

    pub(super) fn write_services(&mut self) -> Result<()> {
        heading("3. Services directory");
        self.dir = self.bed.temp_dir().join("services");
        self.socket = self.bed.temp_dir().join("portald.sock");
        std::fs::create_dir_all(&self.dir)
            .with_context(|| format!("creating `{}`", self.dir.display()))?;
        // Whatever the umask: portald refuses to write into a directory others may write.
        std::fs::set_permissions(
            &self.dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .with_context(|| format!("making `{}` writable by root only", self.dir.display()))?;
        let files = [
            ("apache-service.json", APACHE_SERVICE.to_string()),
            ("web.yaml", WEB_SERVICE.to_string()),
            ("dns.yaml", DNS_SERVICE.to_string()),
            ("pod1.yaml", pod_yaml("pod1", POD1)),
            ("pod2.yaml", pod_yaml("pod2", POD2)),
        ];
        for (name, text) in files {
            let path = self.dir.join(name);
            engine::safe_write::write(&path, text.as_bytes())
                .with_context(|| format!("writing `{}`", path.display()))?;
        }
        println!("{}:", self.dir.display());
        println!("  apache-service.json  the seed's v1beta1 service: 12345 -> containerPort 80, name=apache");
        println!("  web.yaml             v1 web: http 80 -> named port `http`, admin 8081 -> 8080");
        println!("  dns.yaml             v1 dns: 53/UDP -> 5353");
        println!("  pod1.yaml pod2.yaml  the pods: labels name=apache app=web role=dns, podIPs {POD1} {POD2}");
        println!(
            "\n--- apache-service.json ---\n{}",
            APACHE_SERVICE.trim_end()
        );
        Ok(())
    }
}
