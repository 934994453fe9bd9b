#!/usr/bin/env bash
# Server benchmark on loopback: RSS during a large upload and 8 parallel downloads, curl
# throughput of the original bytes, and wrk req/s for small ranges.
#   bench/server_perf.sh [SIZE_MIB=2048] [WORKDIR=/tmp/fz-perf]
# Needs: a release build (cargo build --release), curl, wrk (apt-get install wrk), python3.
set -euo pipefail
SIZE=${1:-2048}
W=${2:-/tmp/fz-perf}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/target/release/floatzip
PORT=18080
URL=http://127.0.0.1:$PORT/v1/models/perf/big/model.safetensors
mkdir -p "$W"; cd "$W"
[ -f big.safetensors ] && [ "$(stat -c %s big.safetensors)" -gt $((SIZE << 20)) ] || python3 "$ROOT/bench/make_big.py" big.safetensors "$SIZE"
SHA=$(sha256sum big.safetensors | cut -c1-64)
rm -rf data tmp; mkdir -p tmp
FLOATZIP_WRITE_TOKEN=perf FLOATZIP_TEMP_DIR=$W/tmp RUST_LOG=warn "$BIN" serve --listen 127.0.0.1:$PORT --storage "$W/data" > server.log 2>&1 &
PID=$!
trap 'kill -TERM $PID 2>/dev/null || true' EXIT
sleep 0.5
: > rss.log
(while kill -0 $PID 2>/dev/null; do awk '/VmRSS/ {print $2}' /proc/$PID/status >> rss.log 2>/dev/null; sleep 0.1; done) &
peak() { sort -n rss.log | tail -1; : > rss.log; }
echo "file: $(stat -c %s big.safetensors) bytes; idle RSS KiB: $(awk '/VmRSS/ {print $2}' /proc/$PID/status)"
curl -sS -o /dev/null -T big.safetensors -H "Authorization: Bearer perf" -w 'upload: %{speed_upload} B/s\n' "$URL"
echo "peak RSS during upload KiB: $(peak)"
curl -sS -w 'single curl download: %{speed_download} B/s\n' -o dl.bin "$URL"
[ "$(sha256sum dl.bin | cut -c1-64)" = "$SHA" ] && echo "sha256 identical" || { echo "SHA MISMATCH"; exit 1; }
rm -f dl.bin
echo "peak RSS single download KiB: $(peak)"
for i in 1 2 3 4 5 6 7 8; do curl -sS -w "%{speed_download}\n" -o /dev/null "$URL" > "speed.$i" & done
curl -sS -o /dev/null -T big.safetensors -H "Authorization: Bearer perf" -w 'upload during 8 downloads: %{speed_upload} B/s\n' "${URL%/model.safetensors}2/model.safetensors"
wait $(jobs -p | grep -v "^$PID$" | tail -n 8) 2>/dev/null || true
sleep 0.5
echo "8 parallel downloads B/s each: $(cat speed.* | tr '\n' ' ')"; rm -f speed.*
echo "peak RSS during 1 upload + 8 downloads KiB: $(peak)"
curl -sS -w 'container (?format=fz) download: %{speed_download} B/s\n' -o /dev/null "$URL?format=fz"
if command -v wrk >/dev/null; then
  echo "wrk, 4 connections, 10 s, 4 KiB ranges:"
  wrk -t2 -c4 -d10s -H "Range: bytes=1000000-1004095" "$URL" | grep -E "Requests/sec|Transfer/sec|Latency"
fi
