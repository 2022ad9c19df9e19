#!/usr/bin/env python3
# Generates a synthetic services directory for the scale benchmark: N v1 Services, each with
# a v1 Endpoints object of E addresses, spread over F files (multi-document YAML), in the
# shape `kubectl get -o yaml` gives (labels, annotations, targetPort, ...); the Services have
# no selector, so their hand-written Endpoints are what serves (as on a cluster).
#
#   gen_services.py DIR [--services 10000] [--endpoints 10] [--files 100] [--affinity]
# --affinity gives every service `sessionAffinity: ClientIP` (the nft affinity-set load test:
#   gen_services.py /tmp/a --services 1000 --affinity && portald plan /tmp/a --no-live
#   --mode kernel --backend nftables --show-batch ... | nft -f - in a fresh namespace).
import argparse
import os


def service(i, ns, affinity):
    name = f"svc-{i:05d}"
    return f"""---
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: {ns}
  labels:
    app.kubernetes.io/name: {name}
    app.kubernetes.io/part-of: bench
  annotations:
    bench.portald.io/generated: "true"
spec:
  type: ClusterIP
  ports:
  - name: http
    protocol: TCP
    port: 80
    targetPort: 8080
  sessionAffinity: {affinity}
"""


def endpoints(i, ns, count):
    name = f"svc-{i:05d}"
    # Pod IPs in 10.244.0.0/15 (never put on the wire by this benchmark).
    addrs = []
    for e in range(count):
        n = i * count + e
        ip = f"10.{244 + n // 62500}.{(n // 250) % 250}.{n % 250 + 1}"
        addrs.append(f"""  - ip: {ip}
    nodeName: node-{e % 4}
    targetRef:
      kind: Pod
      name: {name}-{e}
      namespace: {ns}""")
    return f"""---
apiVersion: v1
kind: Endpoints
metadata:
  name: {name}
  namespace: {ns}
  labels:
    app.kubernetes.io/name: {name}
subsets:
- addresses:
{chr(10).join(addrs)}
  ports:
  - name: http
    port: 8080
    protocol: TCP
"""


def main():
    p = argparse.ArgumentParser()
    p.add_argument("dir")
    p.add_argument("--services", type=int, default=10000)
    p.add_argument("--endpoints", type=int, default=10)
    p.add_argument("--files", type=int, default=100)
    p.add_argument("--affinity", action="store_true")
    a = p.parse_args()
    os.makedirs(a.dir, exist_ok=True)
    per = (a.services + a.files - 1) // a.files
    for f in range(a.files):
        lo, hi = f * per, min((f + 1) * per, a.services)
        if lo >= hi:
            break
        ns = f"team-{f % 20:02d}"
        sub = os.path.join(a.dir, ns)
        os.makedirs(sub, exist_ok=True)
        with open(os.path.join(sub, f"services-{f:03d}.yaml"), "w") as out:
            for i in range(lo, hi):
                out.write(service(i, ns, "ClientIP" if a.affinity else "None"))
                out.write(endpoints(i, ns, a.endpoints))


if __name__ == "__main__":
    main()
