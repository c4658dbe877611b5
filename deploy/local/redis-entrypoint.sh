#!/bin/bash
# The official redis image is built with protected mode off, so that other containers on the
# compose network (never the host: no port is published) can connect without a password; Debian's
# redis-server keeps it on. Same command line otherwise.
set -euo pipefail
if [ "${1:-}" = redis-server ]; then
  shift
  exec redis-server "$@" --protected-mode no
fi
exec "$@"
