#!/usr/bin/env bash
# Installs ChromaDB (pinned) into a cached venv, idempotently, and prints the venv's path.
# Used by tests/vector_contract.rs; safe to run concurrently (flock) and offline once cached.
set -euo pipefail
CHROMA_VERSION="${CHROMA_VERSION:-1.5.9}"
CACHE="${NIGHTSHIFT_TEST_CACHE:-$HOME/.cache/nightshift-test}"
VENV="$CACHE/venv-chromadb-$CHROMA_VERSION"
mkdir -p "$CACHE"
exec 9>"$CACHE/chromadb.lock"
flock 9
if [ ! -f "$VENV/.ok" ]; then
    rm -rf "$VENV"
    python3 -m venv "$VENV" >&2
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "chromadb==$CHROMA_VERSION" >&2
    "$VENV/bin/chroma" --help >/dev/null
    touch "$VENV/.ok"
fi
echo "$VENV"
