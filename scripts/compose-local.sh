#!/usr/bin/env bash
# The compose stack (docker-compose.yml) on this machine, from images built here, for machines
# that cannot pull images (deploy/README.md, "Local images"):
#
#   scripts/compose-local.sh up [--debug]      build what changed, start, wait until healthy
#   scripts/compose-local.sh down [--volumes]  stop it (--volumes: and drop its data)
#   scripts/compose-local.sh compose ARGS...   docker-compose with the stack's files and settings
#   scripts/compose-local.sh env               the variables that reach the engine (eval "$(...)")
#
# `up`:
# 1. uses the Docker engine at DOCKER_HOST (or the default socket) if one answers, else starts a
#    private one under $NIGHTSHIFT_DOCKER_DIR (default ~/.cache/nightshift-docker), installing
#    Debian's docker.io, docker-compose and debootstrap first if they are missing;
# 2. makes the Debian base image with debootstrap if there is no debian:bookworm-slim;
# 3. builds the backing servers' stand-ins from Debian's packages (deploy/local/Dockerfile) and
#    the Nightshift image from binaries built here by cargo (release; --debug packs the debug
#    build, which the test suite has already built) through the `prebuilt` target of
#    deploy/Dockerfile, the same runtime stage as the published image;
# 4. creates the stack's keys and certificates once (scripts/compose-secrets.sh), starts
#    docker-compose.yml with deploy/compose.local.yml (local images, no monitoring services, no
#    span export) and waits until every service is healthy.
# Everything is cached: a second `up` with nothing changed takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

engine_dir=${NIGHTSHIFT_DOCKER_DIR:-$HOME/.cache/nightshift-docker}
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-nightshift}
export NIGHTSHIFT_IMAGE=${NIGHTSHIFT_IMAGE:-nightshift:local}
# No OpenTelemetry collector in the local stack: export no spans.
export OTEL_EXPORTER_OTLP_ENDPOINT=""
# docker-compose.yml requires it for Grafana, which the local stack does not start.
export GRAFANA_ADMIN_PASSWORD=${GRAFANA_ADMIN_PASSWORD:-grafana-is-not-started-locally}
BINARIES=(nightshift nightshift-manager nightshift-scheduler nightshift-worker nightshift-events nightshift-memory nightshift-console)
UP_TIMEOUT=${NIGHTSHIFT_COMPOSE_UP_TIMEOUT:-240}

log() { echo "compose-local: $*" >&2; }
die() { log "$*"; exit 1; }

engine_answers() { docker version >/dev/null 2>&1; }

# 1. An engine: the caller's, else our private one (started if needed).
engine_up() {
  engine_answers && return
  export DOCKER_HOST="unix://$engine_dir/docker.sock"
  engine_answers && return
  if ! command -v dockerd >/dev/null || ! command -v docker-compose >/dev/null || ! command -v debootstrap >/dev/null; then
    log "installing Debian's docker.io, docker-compose and debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io docker-compose debootstrap >/dev/null
  fi
  mkdir -p "$engine_dir"
  log "starting a private Docker engine ($DOCKER_HOST, log $engine_dir/dockerd.log)"
  # setsid: the engine outlives this script and is not killed with its process group.
  setsid dockerd -H "$DOCKER_HOST" --data-root "$engine_dir/root" --exec-root "$engine_dir/exec" \
    --pidfile "$engine_dir/dockerd.pid" >>"$engine_dir/dockerd.log" 2>&1 </dev/null &
  for _ in $(seq 120); do
    engine_answers && return
    sleep 0.5
  done
  die "the Docker engine did not answer within 60 s; see $engine_dir/dockerd.log"
}

# Attach to an engine without starting one (down, compose, env).
engine_attach() {
  engine_answers && return
  export DOCKER_HOST="unix://$engine_dir/docker.sock"
  engine_answers || die "no Docker engine answers (start the stack with: $0 up)"
}

# `docker build` with BuildKit: the CLI on PATH if it has buildx, else Debian's 20.10 CLI, which
# drives the engine's built-in BuildKit itself.
build() {
  local cli=docker
  if ! docker buildx version >/dev/null 2>&1 && [ -x /usr/bin/docker ]; then cli=/usr/bin/docker; fi
  DOCKER_BUILDKIT=1 "$cli" build --quiet "$@" >/dev/null
}

compose() {
  local files=(-f docker-compose.yml -f deploy/compose.local.yml)
  if command -v docker-compose >/dev/null; then
    docker-compose "${files[@]}" "$@"
  else
    docker compose "${files[@]}" "$@"
  fi
}

# 2. The Debian base, made with debootstrap from the host's mirror when it cannot be pulled.
base_image() {
  docker image inspect debian:bookworm-slim >/dev/null 2>&1 && return
  local mirror rootfs
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
  [ -n "$mirror" ] || mirror=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  mirror=${mirror:-http://deb.debian.org/debian}
  rootfs=$(mktemp -d)
  log "making debian:bookworm-slim with debootstrap from $mirror"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$engine_dir/debootstrap.log" 2>&1 \
    || die "debootstrap failed; see $engine_dir/debootstrap.log"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import - debian:bookworm-slim >/dev/null
  rm -rf "$rootfs"
}

qdrant_binary() {
  local candidate
  for candidate in "${NIGHTSHIFT_QDRANT_BIN:-}" "$PWD/../shared/bin/qdrant" /work/shared/bin/qdrant; do
    if [ -n "$candidate" ] && [ -x "$candidate" ]; then echo "$candidate"; return; fi
  done
  die "no Qdrant binary: set NIGHTSHIFT_QDRANT_BIN (the machine's shared/bin/qdrant)"
}

# 3a. The backing servers' stand-ins.
backing_images() {
  local ctx=deploy/local
  rm -rf "$ctx/apt" && mkdir -p "$ctx/apt/sources.list.d" "$ctx/apt/apt.conf.d" "$ctx/bin"
  cp /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list "$ctx/apt/sources.list.d/" 2>/dev/null || true
  grep -l '^Acquire' /etc/apt/apt.conf.d/* 2>/dev/null | xargs -r cp -t "$ctx/apt/apt.conf.d/"
  cmp -s "$(qdrant_binary)" "$ctx/bin/qdrant" || install -m 0755 "$(qdrant_binary)" "$ctx/bin/qdrant"
  local target tag
  for target in postgres:15 nats:2.9 redis:7.0 qdrant:1.19; do
    tag="nightshift-local/$target"
    log "building $tag"
    build -f "$ctx/Dockerfile" --target "${target%%:*}" -t "$tag" "$ctx" || die "building $tag failed"
  done
}

# 3b. The Nightshift image from binaries built here.
nightshift_image() {
  local profile=$1 args=() b
  for b in "${BINARIES[@]}"; do args+=(--bin "$b"); done
  if [ "$profile" = release ]; then args+=(--release); fi
  log "building the binaries ($profile)"
  cargo build --quiet --locked "${args[@]}"
  mkdir -p deploy/prebuilt
  for b in "${BINARIES[@]}"; do
    # Without debug sections (the debug build keeps line tables): a smaller image, same code.
    objcopy --strip-debug "target/$profile/$b" "deploy/prebuilt/$b.new"
    if cmp -s "deploy/prebuilt/$b.new" "deploy/prebuilt/$b"; then rm "deploy/prebuilt/$b.new"; else mv "deploy/prebuilt/$b.new" "deploy/prebuilt/$b"; fi
  done
  log "building $NIGHTSHIFT_IMAGE"
  build -f deploy/Dockerfile --target prebuilt -t "$NIGHTSHIFT_IMAGE" . || die "building $NIGHTSHIFT_IMAGE failed"
}

# The state of every container, and the last lines of those that are not healthy.
unhealthy_logs() {
  local id
  compose ps >&2 || true
  for id in $(compose ps -q); do
    if [ "$(docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}' "$id")" = unhealthy ] \
      || [ "$(docker inspect -f '{{.State.Restarting}}' "$id")" = true ]; then
      echo "--- $(docker inspect -f '{{.Name}}' "$id"):" >&2
      docker logs --tail 10 "$id" >&2 2>&1 || true
    fi
  done
}

# 4. Wait until every running service is healthy (the one-shot `agents` must exit 0).
wait_healthy() {
  local deadline=$((SECONDS + UP_TIMEOUT)) pending id line name service status health code
  while :; do
    pending=()
    for id in $(compose ps -q); do
      line=$(docker inspect -f '{{.Name}} {{index .Config.Labels "com.docker.compose.service"}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}} {{.State.ExitCode}}' "$id")
      read -r name service status health code <<<"$line"
      name=${name#/}
      if [ "$service" = agents ]; then
        if [ "$status" != exited ]; then
          pending+=("$name:$status")
        elif [ "$code" != 0 ]; then
          die "$name exited with $code: $(docker logs --tail 5 "$id" 2>&1)"
        fi
      elif [ "$status" != running ] || [ "$health" != healthy ]; then
        pending+=("$name:$status/$health")
      fi
    done
    [ ${#pending[@]} -eq 0 ] && return
    if [ $SECONDS -ge $deadline ]; then
      unhealthy_logs
      die "not healthy after ${UP_TIMEOUT}s: ${pending[*]}"
    fi
    sleep 2
  done
}

up() {
  local profile=release
  while [ $# -gt 0 ]; do
    case "$1" in
      --debug) profile=debug ;;
      *) die "unknown option for up: $1" ;;
    esac
    shift
  done
  local started=$SECONDS
  engine_up
  mkdir -p "$engine_dir"
  base_image
  backing_images
  nightshift_image "$profile"
  if [ ! -s deploy/secrets/admin.key ] || [ ! -s deploy/secrets/tls.crt ]; then scripts/compose-secrets.sh >/dev/null; fi
  log "starting the stack (project $COMPOSE_PROJECT_NAME)"
  local out
  if ! out=$(compose up -d --no-build --remove-orphans 2>&1); then
    echo "$out" >&2
    unhealthy_logs
    die "docker-compose up failed"
  fi
  wait_healthy
  log "healthy after $((SECONDS - started)) s"
  cat >&2 <<EOF
compose-local: endpoints (TLS, certificate for "nightshift", "localhost" and 127.0.0.1):
  manager https://127.0.0.1:50051   memory https://127.0.0.1:50054   events https://127.0.0.1:50055
  console https://localhost:50056/ (trust deploy/secrets/ca.crt; sign in with deploy/secrets/admin.key)
  nightshift --endpoint https://127.0.0.1:50051 --tls-ca deploy/secrets/ca.crt --api-key-file deploy/secrets/admin.key agent list
  grpcurl -cacert deploy/secrets/ca.crt -H "authorization: Bearer \$(cat deploy/secrets/admin.key)" 127.0.0.1:50051 list
  $(engine_answers && [ -n "${DOCKER_HOST:-}" ] && echo "engine: export DOCKER_HOST=$DOCKER_HOST")
EOF
}

down() {
  local args=(--remove-orphans)
  while [ $# -gt 0 ]; do
    case "$1" in
      --volumes | -v) args+=(--volumes) ;;
      *) die "unknown option for down: $1" ;;
    esac
    shift
  done
  engine_attach
  compose down "${args[@]}"
}

case "${1:-}" in
  up) shift; up "$@" ;;
  down) shift; down "$@" ;;
  compose) shift; engine_attach; compose "$@" ;;
  env) engine_attach; echo "export DOCKER_HOST=${DOCKER_HOST:-unix:///var/run/docker.sock} COMPOSE_PROJECT_NAME=$COMPOSE_PROJECT_NAME NIGHTSHIFT_IMAGE=$NIGHTSHIFT_IMAGE OTEL_EXPORTER_OTLP_ENDPOINT= GRAFANA_ADMIN_PASSWORD=$GRAFANA_ADMIN_PASSWORD" ;;
  *) sed -n '2,9p' "$0" >&2; exit 2 ;;
esac
