#!/usr/bin/env bash
# Installs the real third-party MCP servers the tools crate's tests talk to, idempotently:
#   - @modelcontextprotocol/server-filesystem (npm, stdio)
#   - mcp-server-time (PyPI, stdio) and the `mcp` Python SDK 2.x (PyPI, for the streamable-HTTP
#     fixture server http_server.py), in one venv (mcp-server-time itself runs on mcp 2.x)
#
# Everything lives under $NIGHTSHIFT_TEST_CACHE (default ~/.cache/nightshift-test), keyed by version,
# so a second run is a few file checks. Several test binaries may call this at once: a flock
# serialises them. Prints `KEY=VALUE` lines (paths) on stdout for the caller; logs go to stderr.
set -euo pipefail

FS_VERSION=2026.8.31
TIME_VERSION=2026.10.19
MCP_VERSION=2.3.0

CACHE="${NIGHTSHIFT_TEST_CACHE:-$HOME/.cache/nightshift-test}"
NPM_DIR="$CACHE/npm-fs-$FS_VERSION"
VENV="$CACHE/venv-time-$TIME_VERSION-mcp-$MCP_VERSION"
for tool in node npm python3 flock; do
    command -v "$tool" >/dev/null || { echo "setup: '$tool' is not installed; the MCP server tests need it" >&2; exit 1; }
done
mkdir -p "$CACHE"

exec 9>"$CACHE/setup.lock"
flock 9

FS_JS="$NPM_DIR/node_modules/@modelcontextprotocol/server-filesystem/dist/index.js"
if [ ! -f "$NPM_DIR/.ok" ] || [ ! -f "$FS_JS" ]; then
    echo "setup: npm install @modelcontextprotocol/server-filesystem@$FS_VERSION into $NPM_DIR" >&2
    rm -rf "$NPM_DIR"
    mkdir -p "$NPM_DIR"
    npm install --prefix "$NPM_DIR" --no-audit --no-fund --loglevel=error \
        "@modelcontextprotocol/server-filesystem@$FS_VERSION" >&2
    test -f "$FS_JS"
    touch "$NPM_DIR/.ok"
fi

python_venv() {
    local dir="$1"
    shift
    if [ ! -f "$dir/.ok" ]; then
        echo "setup: pip install $* into $dir" >&2
        rm -rf "$dir"
        python3 -m venv "$dir"
        "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "$@" >&2
        touch "$dir/.ok"
    fi
}

python_venv "$VENV" "mcp-server-time==$TIME_VERSION" "mcp==$MCP_VERSION"
test -x "$VENV/bin/mcp-server-time"
"$VENV/bin/python" -c "from mcp.server.mcpserver import MCPServer" >&2

echo "NODE=$(command -v node)"
echo "FS_SERVER_JS=$FS_JS"
echo "TIME_SERVER=$VENV/bin/mcp-server-time"
echo "MCP_PYTHON=$VENV/bin/python"
