#!/usr/bin/env bash
# Installs rotel (a real OpenTelemetry collector, from PyPI) for the trace tests, idempotently,
# into a venv under $NIGHTSHIFT_TEST_CACHE (default ~/.cache/nightshift-test) keyed by version.
# Prints `ROTEL=PATH` on stdout; logs go to stderr. Concurrent callers are serialised by flock.
set -euo pipefail

ROTEL_VERSION=0.0.1a15
CACHE="${NIGHTSHIFT_TEST_CACHE:-$HOME/.cache/nightshift-test}"
VENV="$CACHE/venv-rotel-$ROTEL_VERSION"
command -v python3 >/dev/null || { echo "setup: python3 is not installed; the trace tests need it" >&2; exit 1; }
mkdir -p "$CACHE"
exec 9>"$CACHE/setup-rotel.lock"
flock 9

if [ ! -f "$VENV/.ok" ]; then
    echo "setup: pip install rotel==$ROTEL_VERSION into $VENV" >&2
    rm -rf "$VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "rotel==$ROTEL_VERSION" >&2
    touch "$VENV/.ok"
fi
# The wheel ships the agent binary without its execute bit.
AGENT=$("$VENV/bin/python" -c 'import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), "rotel-agent"))')
test -f "$AGENT"
chmod +x "$AGENT"
echo "ROTEL=$AGENT"
