#!/usr/bin/env python3
"""Runs/s through the compose stack that scripts/compose-local.sh started (docs/benchmarks.md).

    scripts/compose-local.sh up
    scripts/compose-bench.py --agents 100 --workers 2 --secs 30

N agents at `interval: 1s` with the default agent settings (memory on), each run one tool call
(`calculate_area`) between two turns of the scripted OpenAI-compatible server, which runs as a
container on the stack's network (a stand-in for a model, instant, so that the stack is what is
measured). Everything goes through the published ports with the `nightshift` CLI, as a user
would. Prints completed runs/s in the window, runs still queued at its end, the start lag
(due -> started) p50/p99 at the CLI's one-second resolution, and the containers' CPU and memory.
The agents are deleted at the end.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LLM = "nightshift-bench-llm"


def sh(*args, check=True):
    out = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, env=ENV)
    if check and out.returncode != 0:
        sys.exit(f"{' '.join(args)}: {out.stdout}{out.stderr}")
    return out.stdout


def cli(*args, check=True):
    """The CLI against the stack's published manager port, as its admin; its JSON output."""
    out = sh(CLI, "--endpoint", "https://127.0.0.1:50051", "--tls-ca", "deploy/secrets/ca.crt",
             "--api-key-file", "deploy/secrets/admin.key", "-o", "json", *args, check=check)
    try:
        return json.loads(out)
    except ValueError:  # a command that prints no JSON (or failed, with check=False)
        return out


def ts(s):
    return datetime.fromisoformat(s.replace("Z", "+00:00")).timestamp()


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--secs", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--profile", default="release", help="cargo profile of the nightshift CLI and the scripted LLM")
    a = ap.parse_args()

    global CLI
    CLI = os.path.join(ROOT, "target", a.profile, "nightshift")
    sh("cargo", "build", "--quiet", "--locked", *(["--release"] if a.profile == "release" else []),
       "--bin", "nightshift", "--bin", "nightshift-scripted-llm")
    project = ENV.get("COMPOSE_PROJECT_NAME", "nightshift")
    sh("docker", "rm", "-f", LLM, check=False)
    sh("docker", "run", "-d", "--name", LLM, "--network", f"{project}_default", "--network-alias", "llm", "-v",
       f"{ROOT}/target/{a.profile}/nightshift-scripted-llm:/usr/local/bin/nightshift-scripted-llm:ro",
       "debian:bookworm-slim", "nightshift-scripted-llm", "0.0.0.0:8080")
    sh("scripts/compose-local.sh", "compose", "up", "-d", "--no-build", "--no-recreate", "--scale",
       f"worker={a.workers}")
    names = [f"bench-{i}" for i in range(a.agents)]
    manifest = "".join(
        f"---\nname: {n}\nmodel: {{provider: openai, model: scripted, base_url: 'http://llm:8080/v1'}}\n"
        "task:\n  query: |\n    Compute the area.\n"
        "    call calculate_area {\"shape\": \"rectangle\", \"width\": 3, \"height\": 4}\n"
        "schedule: {interval: 1s}\ntools: {local: [calculate_area]}\n" for n in names)
    path = f"/tmp/nightshift-compose-bench-{os.getpid()}.yaml"
    with open(path, "w") as f:
        f.write(manifest)
    try:
        cli("agent", "apply", "-f", path)
        time.sleep(a.warmup)
        stats0 = cpu_of_containers(project)
        t0 = time.time()
        time.sleep(a.secs)
        t1 = time.time()
        stats1 = cpu_of_containers(project)
        mem = sh("docker", "stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}}")
        for n in names:
            cli("agent", "pause", n)
        done, queued, lags = 0, 0, []
        for n in names:
            for r in cli("runs", "list", "--agent", n, "--limit", "1000"):
                if r["status"] == "succeeded" and t0 <= ts(r["finished_at"]) < t1:
                    done += 1
                    if "scheduled_for" in r:
                        lags.append(ts(r["started_at"]) - ts(r["scheduled_for"]))
                if r["status"] == "queued" and ts(r.get("scheduled_for", r["created_at"])) < t1:
                    queued += 1
        cpu = sum(stats1.get(k, 0) - v for k, v in stats0.items()) / 1e9
        print(f"agents {a.agents}, workers {a.workers}, window {a.secs} s")
        print(f"completed runs/s: {done / (t1 - t0):.1f}  ({done} runs)")
        print(f"start lag p50/p99: {pct(lags, 50):.0f} / {pct(lags, 99):.0f} s (1 s resolution)")
        print(f"runs queued (due before the window's end) after it: {queued}")
        print(f"CPU of all containers: {cpu / (t1 - t0) * 100:.0f} % of a core, {cpu * 1000 / max(done, 1):.1f} ms per run")
        per = sorted(((stats1.get(k, 0) - v) / 1e6 / max(done, 1), k) for k, v in stats0.items())
        names_of = {c: sh("docker", "inspect", "-f", "{{.Name}}", c).strip().lstrip("/") for _, c in per}
        print("CPU per run by container: " + ", ".join(f"{names_of[c]} {ms:.2f} ms" for ms, c in reversed(per)))
        print("memory after the window:\n" + mem)
    finally:
        for n in names:
            cli("agent", "delete", n, check=False)
        sh("docker", "rm", "-f", LLM, check=False)


def cpu_of_containers(project):
    """CPU time (ns) of each running container of the project, read from its cgroup (v1 or v2)."""
    out = {}
    for cid in sh("docker", "ps", "-q", "--filter", f"label=com.docker.compose.project={project}").split():
        pid = sh("docker", "inspect", "-f", "{{.State.Pid}}", cid).strip()
        with open(f"/proc/{pid}/cgroup") as f:
            groups = dict((line.split(":", 2)[1], line.split(":", 2)[2].strip()) for line in f)
        v1 = next((p for k, p in groups.items() if "cpuacct" in k.split(",")), None)
        if v1 is not None:
            for base in ("/sys/fs/cgroup/cpuacct", "/sys/fs/cgroup/cpu,cpuacct"):
                if os.path.exists(f"{base}{v1}/cpuacct.usage"):
                    with open(f"{base}{v1}/cpuacct.usage") as f:
                        out[cid] = int(f.read())
                    break
        elif "" in groups:
            for base in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified"):
                if os.path.exists(f"{base}{groups['']}/cpu.stat"):
                    with open(f"{base}{groups['']}/cpu.stat") as f:
                        out[cid] = next(int(l.split()[1]) for l in f if l.startswith("usage_usec")) * 1000
                    break
    return out


ENV = dict(os.environ)
for word in subprocess.run([os.path.join(ROOT, "scripts/compose-local.sh"), "env"], capture_output=True, text=True,
                           check=True).stdout.replace("export ", "").split():
    k, _, v = word.partition("=")
    ENV[k] = v

if __name__ == "__main__":
    main()
