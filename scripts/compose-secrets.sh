#!/usr/bin/env bash
# Creates the secrets the compose stack runs with, once, in deploy/secrets/ (kept out of git):
# - admin.key (the bootstrap admin key: yours), service.key and worker.key (the services' and the
#   workers' API keys);
# - ca.crt (a CA for this stack only; its key is discarded once the certificate is signed) and tls.crt / tls.key (the certificate every
#   service presents, for its compose name and for "nightshift", the name every client expects:
#   scaled workers are reached at container names no certificate can list in advance).
# Existing files are kept, so re-running is harmless.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=deploy/secrets
mkdir -p "$dir"
# Readable by the containers' user (uid 10001) through the read-only mount; the directory is
# this machine's, for a local stack. Production deployments take keys from a secret store.
umask 022
for name in admin service worker; do
  if [ ! -s "$dir/$name.key" ]; then
    # 256 random bits as hex.
    head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$dir/$name.key"
    echo "created $dir/$name.key"
  fi
done
if [ ! -s "$dir/tls.crt" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=nightshift compose CA" -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=nightshift" \
    -keyout "$dir/tls.key" -out "$dir/tls.csr" 2>/dev/null
  san="subjectAltName=DNS:nightshift,DNS:manager,DNS:scheduler,DNS:worker,DNS:memory,DNS:events,DNS:localhost,IP:127.0.0.1"
  openssl x509 -req -in "$dir/tls.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial -days 825 \
    -extfile <(printf '%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$san") -out "$dir/tls.crt" 2>/dev/null
  # The CA key is not kept (the directory is mounted into every container): nothing else is
  # ever signed with it; delete the four files to start over.
  rm -f "$dir/tls.csr" "$dir/ca.srl" "$dir/ca.key"
  echo "created $dir/ca.crt and $dir/tls.crt (services' certificate)"
fi
# openssl writes private keys 0600; the services run as uid 10001 and read it through the mount
# (this also mends a directory made before this line existed).
chmod 0644 "$dir/tls.key"
echo "use: nightshift --endpoint https://127.0.0.1:50051 --tls-ca $dir/ca.crt --api-key \"\$(cat $dir/admin.key)\" agent list"
