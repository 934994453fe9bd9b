#!/usr/bin/env bash
# snapshot_download through floatzip vs. a plain static Hub server holding the uncompressed
# files, both on loopback (see bench/hf_snapshot.py for what exactly is measured).
#   bench/hf_snapshot.sh [--runs N] [--model-dir DIR]
# Builds the release binary; needs Python with huggingface_hub (FLOATZIP_HF_PYTHON, else
# the venv .ci/run makes at /tmp/floatzip-hfvenv, else python3).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
cargo build --release --locked --quiet
PY=${FLOATZIP_HF_PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x /tmp/floatzip-hfvenv/bin/python ]; then PY=/tmp/floatzip-hfvenv/bin/python; else PY=python3; fi
fi
unset HF_HUB_ENABLE_HF_TRANSFER
exec "$PY" bench/hf_snapshot.py --bin "${CARGO_TARGET_DIR:-$ROOT/target}/release/floatzip" "$@"
