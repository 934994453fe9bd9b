#!/usr/bin/env bash
# `floatzip pull` vs `curl` of the original bytes over a 1 Gbit/s link: two network
# namespaces joined by a veth pair shaped with tc (nothing leaves the machine).
#   sudo bench/pull_vs_curl.sh [FILE.safetensors] [RATE=1gbit]
# Needs root, iproute2 (ip, tc), curl and a release build.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$ROOT/target/release/floatzip
FILE=${1:-$ROOT/tests/fixtures/minilm-bf16.safetensors}
RATE=${2:-1gbit}
W=$(mktemp -d /tmp/fz-pull.XXXX)
SRV=fzsrv$$ CLI=fzcli$$
cleanup() {
  ip netns pids "$SRV" 2>/dev/null | xargs -r kill 2>/dev/null || true
  ip netns del "$SRV" 2>/dev/null || true
  ip netns del "$CLI" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
ip netns add "$SRV"; ip netns add "$CLI"
ip link add vs$$ type veth peer name vc$$
ip link set vs$$ netns "$SRV"; ip link set vc$$ netns "$CLI"
ip -n "$SRV" addr add 10.231.0.1/30 dev vs$$; ip -n "$CLI" addr add 10.231.0.2/30 dev vc$$
for ns in "$SRV" "$CLI"; do ip -n "$ns" link set lo up; done
ip -n "$SRV" link set vs$$ up; ip -n "$CLI" link set vc$$ up
# Shape both directions to RATE (token bucket, 1 ms of burst).
tc -n "$SRV" qdisc add dev vs$$ root tbf rate "$RATE" burst 256kb latency 50ms
tc -n "$CLI" qdisc add dev vc$$ root tbf rate "$RATE" burst 256kb latency 50ms
FLOATZIP_WRITE_TOKEN=bench ip netns exec "$SRV" "$BIN" serve --listen 10.231.0.1:8080 --storage "$W/data" > "$W/server.log" 2>&1 &
sleep 1
URL=http://10.231.0.1:8080/v1/models/bench/model/model.safetensors
ip netns exec "$CLI" "$BIN" push "$FILE" "$URL" --token bench > /dev/null
size=$(stat -c %s "$FILE")
echo "file: $FILE ($size bytes), link: $RATE"
for run in 1 2 3; do
  c=$(ip netns exec "$CLI" curl -sS -o "$W/curl.bin" -w '%{time_total}' "$URL")
  rm -f "$W/pull.bin"
  s=$(date +%s.%N)
  ip netns exec "$CLI" "$BIN" pull "$URL" -o "$W/pull.bin" ${PULL_ARGS:-} 2> "$W/pull.log"
  p=$(echo "$(date +%s.%N) - $s" | bc)
  first=$(grep -o 'first tensor after [0-9]* ms' "$W/pull.log" | grep -o '[0-9]*' || echo '?')
  cmp -s "$W/pull.bin" "$FILE" && cmp -s "$W/curl.bin" "$FILE" || { echo "bytes differ"; exit 1; }
  echo "run $run: curl ${c}s, floatzip pull ${p}s, pull/curl = $(echo "scale=3; $p / $c" | bc), first tensor after ${first} ms"
done
