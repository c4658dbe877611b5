#!/usr/bin/env bash
# Creates the API keys the compose stack authenticates with, once, in deploy/secrets/ (kept out
# of git): admin.key (the bootstrap admin key: yours), service.key and worker.key (the services'
# and the workers' keys). An existing key is kept, so re-running is harmless.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=deploy/secrets
mkdir -p "$dir"
for name in admin service worker; do
  if [ ! -s "$dir/$name.key" ]; then
    # 256 random bits as hex; readable by the containers' user (uid 10001) through the mount.
    (umask 022; head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/$name.key")
    echo "created $dir/$name.key"
  fi
done
echo "use: nightshift --api-key \"\$(cat $dir/admin.key)\" agent list"
