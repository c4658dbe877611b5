#!/usr/bin/env python3
"""Lints and renders helm/nightshift with the embedded Helm SDK (helm-python-sdk), writes one
manifest file per values file, and checks what a schema check cannot see (probes, Secrets,
appProtocol, ...). Used by scripts/lint-deploy.sh; exits non-zero on any finding.

    check_chart.py CHART OUT_DIR NAME=VALUES_FILE|- ...
"""
from __future__ import annotations

import sys
from pathlib import Path

import helm_python
import yaml

KUBE_VERSION = "v1.30.0"
RELEASE, NAMESPACE = "nightshift", "nightshift"
# Kinds without a schema in kubernetes-validate (CRDs); everything else must be core Kubernetes.
CRD_KINDS = {"ServiceMonitor", "GRPCRoute", "Certificate"}
GRPC_SERVICES = {
    "manager": "nightshift.v1.ManagerService",
    "scheduler": "nightshift.v1.SchedulerService",
    "worker": "nightshift.v1.WorkerService",
    "events": "nightshift.v1.EventService",
    "memory": "nightshift.v1.MemoryService",
}
# Keys that may carry credentials must never land in a ConfigMap.
SECRET_KEYS = ("DATABASE_URL", "STORES__EPISODIC", "STORES__LONG_TERM", "STORES__PROCEDURAL", "API_KEY", "TOKEN")


def fail(errors: list[str], msg: str) -> None:
    errors.append(msg)


def check_manifests(label: str, docs: list[dict], values: dict, errors: list[str]) -> None:
    tls = bool(values.get("tls", {}).get("enabled"))
    scheme = "https" if tls else "http"
    kinds: dict[str, list[dict]] = {}
    for d in docs:
        kinds.setdefault(d["kind"], []).append(d)
    deployments = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in kinds.get("Deployment", [])}
    services = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in kinds.get("Service", [])}
    for comp in ("manager", "scheduler", "worker", "events", "console"):
        if comp not in deployments:
            fail(errors, f"{label}: no Deployment for {comp}")
    for comp, dep in deployments.items():
        spec = dep["spec"]["template"]["spec"]
        (c,) = spec["containers"]
        # The console's port serves its pages (and gRPC health): named http.
        port_name = "http" if comp == "console" else "grpc"
        port = next(p["containerPort"] for p in c["ports"] if p["name"] == port_name)
        if c["command"] != [f"nightshift-{comp}"]:
            fail(errors, f"{label}: {comp} runs {c['command']}")
        # The kubelet's gRPC probe speaks no TLS: with TLS on, the probes open the port.
        kind = "tcpSocket" if tls else "grpc"
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            if c.get(probe, {}).get(kind, {}).get("port") != port:
                fail(errors, f"{label}: {comp} {probe} is not a {kind} probe on {port}")
        if not tls and c.get("readinessProbe", {}).get("grpc", {}).get("service") != GRPC_SERVICES.get(comp):
            fail(errors, f"{label}: {comp} readiness probe does not name {GRPC_SERVICES[comp]}")
        mounts = [m["mountPath"] for m in c.get("volumeMounts", [])]
        if tls != ("/etc/nightshift/tls" in mounts):
            fail(errors, f"{label}: {comp} mounts {mounts} with tls.enabled={tls}")
        res = c.get("resources", {})
        if not res.get("requests") or not res.get("limits"):
            fail(errors, f"{label}: {comp} lacks resource requests/limits")
        if not spec["securityContext"].get("runAsNonRoot"):
            fail(errors, f"{label}: {comp} may run as root")
        svc = services.get(comp)
        if svc is None:
            fail(errors, f"{label}: no Service for {comp}")
        else:
            grpc_ports = [p for p in svc["spec"]["ports"] if p["name"] == port_name]
            wanted = ("https" if tls else "http",) if comp == "console" else ("grpc", "kubernetes.io/h2c")
            if not grpc_ports or grpc_ports[0].get("appProtocol") not in wanted:
                fail(errors, f"{label}: Service {comp} has no {'/'.join(wanted)} appProtocol")
        if comp == "worker":
            refs = [e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e]
            wanted = [s["name"] for s in values["worker"]["apiKeysSecrets"]]
            if refs != wanted:
                fail(errors, f"{label}: worker envFrom secretRefs {refs} != worker.apiKeysSecrets {wanted}")
    for cm in kinds.get("ConfigMap", []):
        data = cm.get("data") or {}
        if tls and not any(k.endswith("_TLS__CERT_FILE") for k in data):
            fail(errors, f"{label}: ConfigMap {cm['metadata']['name']} has no TLS settings with tls.enabled")
        for k, v in data.items():
            if k.endswith(SECRET_KEYS) or "password" in str(v).lower():
                fail(errors, f"{label}: ConfigMap {cm['metadata']['name']} holds a secret-looking key {k}")
    # The workers reach the memory service through the chart-wired memory_endpoint.
    configmaps = {d["metadata"]["labels"]["app.kubernetes.io/component"]: d for d in kinds.get("ConfigMap", [])}
    worker_env = (configmaps.get("worker", {}).get("data") or {})
    memory_endpoint = worker_env.get("NIGHTSHIFT_WORKER_MEMORY_ENDPOINT")
    if values["memory"]["enabled"]:
        if "memory" not in deployments or "memory" not in services:
            fail(errors, f"{label}: memory.enabled but no memory Deployment/Service")
        else:
            svc = services["memory"]["metadata"]
            wanted = f"{scheme}://{svc['name']}.{svc['namespace']}.svc:{values['memory']['port']}"
            if memory_endpoint != wanted:
                fail(errors, f"{label}: worker NIGHTSHIFT_WORKER_MEMORY_ENDPOINT={memory_endpoint!r}, want {wanted!r}")
            (wc,) = deployments["worker"]["spec"]["template"]["spec"]["containers"]
            cm_refs = [e["configMapRef"]["name"] for e in wc.get("envFrom", []) if "configMapRef" in e]
            if configmaps["worker"]["metadata"]["name"] not in cm_refs:
                fail(errors, f"{label}: the worker Deployment does not load its ConfigMap (envFrom {cm_refs})")
    else:
        if "memory" in deployments:
            fail(errors, f"{label}: memory Deployment rendered although memory.enabled is false")
        if memory_endpoint:
            fail(errors, f"{label}: worker has memory endpoint {memory_endpoint!r} but memory is disabled")
    worker = values["worker"]
    hpas = kinds.get("HorizontalPodAutoscaler", [])
    if worker["autoscaling"]["enabled"] != bool(hpas):
        fail(errors, f"{label}: worker HPA rendered={bool(hpas)} but autoscaling.enabled={worker['autoscaling']['enabled']}")
    if hpas and "replicas" in deployments["worker"]["spec"]:
        fail(errors, f"{label}: the worker Deployment sets replicas although an HPA scales it")
    if not kinds.get("PodDisruptionBudget"):
        fail(errors, f"{label}: no PodDisruptionBudget")
    if values["serviceMonitor"]["enabled"] != bool(kinds.get("ServiceMonitor")):
        fail(errors, f"{label}: ServiceMonitor rendering does not follow serviceMonitor.enabled")
    unknown = {k for k in kinds if k in CRD_KINDS}
    print(f"  {label}: {len(docs)} objects: " + ", ".join(f"{k}×{len(v)}" for k, v in sorted(kinds.items()))
          + (f" (CRDs, not schema-checked: {', '.join(sorted(unknown))})" if unknown else ""))


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def main() -> int:
    chart_dir, out_dir, cases = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    out_dir.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    chart = helm_python.Chart.load(str(chart_dir))
    defaults = yaml.safe_load((chart_dir / "values.yaml").read_text())
    for case in cases:
        label, _, values_file = case.partition("=")
        values = {} if values_file in ("", "-") else helm_python.values_from_yaml(Path(values_file).read_text())
        report = helm_python.lint(str(chart_dir), values, strict=True, namespace=NAMESPACE, kube_version=KUBE_VERSION)
        for m in report.get("messages", []):
            if m["severity"] >= 2:
                fail(errors, f"{label}: helm lint: {m['path']}: {m['error']}")
        for e in report.get("errors", []):
            fail(errors, f"{label}: helm lint: {e}")
        try:
            rendered = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        except helm_python.HelmError as e:
            fail(errors, f"{label}: render failed: {e}")
            continue
        texts = [t for path, t in sorted(rendered.items()) if not path.endswith("NOTES.txt") and t.strip()]
        out = out_dir / f"{label}.yaml"
        out.write_text("\n---\n".join(texts) + "\n")
        docs = [d for d in yaml.safe_load_all(out.read_text()) if d]
        check_manifests(label, docs, deep_merge(defaults, values), errors)
    chart.close()
    for e in errors:
        print(f"ERROR {e}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
