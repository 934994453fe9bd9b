#!/usr/bin/env bash
# End-to-end checks of the container image and the compose stack, on loopback only (host
# network). From the repository root, with a docker engine running and the images buildable
# (docker/offline-base-images.sh first where Docker Hub cannot be reached):
#
#   docker/smoke-test.sh image      # docker build + run: non-root, healthy, upload/download, stop
#   docker/smoke-test.sh compose    # compose.yaml + compose.offline.yaml: server over s3s-fs
#
# Env: IMAGE (floatzip), FLOATZIP_PORT (18080), S3_PORT (19000), FIXTURE, SKIP_BUILD=1.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-image}
IMAGE=${IMAGE:-floatzip}
export FLOATZIP_PORT=${FLOATZIP_PORT:-18080} S3_PORT=${S3_PORT:-19000}
FIXTURE=${FIXTURE:-tests/fixtures/minilm-bf16.safetensors}
export FLOATZIP_WRITE_TOKEN=${FLOATZIP_WRITE_TOKEN:-smoke-$RANDOM$RANDOM}
export DOCKER_BUILDKIT=1 COMPOSE_DOCKER_CLI_BUILD=1
base=http://127.0.0.1:$FLOATZIP_PORT
url=$base/v1/models/smoke/test/model.safetensors
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

ok() { printf 'ok   %s\n' "$*"; }
fail() { printf 'FAIL %s\n' "$*" >&2; exit 1; }

wait_healthy() { # container
  local s
  for _ in $(seq 1 60); do
    s=$(docker inspect -f '{{.State.Health.Status}}' "$1")
    [ "$s" = healthy ] && { ok "$1 healthcheck: $s"; return; }
    sleep 1
  done
  docker logs "$1" | tail -20 >&2
  fail "$1 healthcheck: $s after 60 s"
}

round_trip() {
  local code
  code=$(curl -s -o /dev/null -w '%{http_code}' -T "$FIXTURE" "$url")
  [ "$code" = 401 ] && ok "upload without token: 401" || fail "upload without token: $code"
  curl -fsS -T "$FIXTURE" -H "Authorization: Bearer $FLOATZIP_WRITE_TOKEN" "$url" >"$work/put.json" \
    || fail "upload"
  ok "upload $FIXTURE: $(head -c 200 "$work/put.json")"
  download_matches
}

download_matches() {
  curl -fsS -o "$work/got" "$url" || fail "download"
  local want got
  want=$(sha256sum <"$FIXTURE" | cut -d' ' -f1)
  got=$(sha256sum <"$work/got" | cut -d' ' -f1)
  [ "$want" = "$got" ] && ok "download sha256 $got matches" || fail "sha256 $got != $want"
}

case $mode in
image)
  name=floatzip-smoke
  [ -n "${SKIP_BUILD:-}" ] || docker build --network host -f docker/Dockerfile -t "$IMAGE" .
  docker rm -fv "$name" >/dev/null 2>&1 || true
  trap 'docker rm -fv "$name" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
  docker run -d --name "$name" --network host \
    -e FLOATZIP_WRITE_TOKEN -e FLOATZIP_LISTEN=127.0.0.1:$FLOATZIP_PORT "$IMAGE" >/dev/null
  wait_healthy "$name"
  uid=$(docker exec "$name" sh -c 'grep ^Uid: /proc/1/status' | awk '{print $2, $3}')
  [ "$uid" = "10001 10001" ] && ok "pid 1 runs as uid 10001 (real, effective)" || fail "pid 1 Uid: $uid"
  round_trip
  docker exec "$name" sh -c 'find /var/lib/floatzip/data -type f | head; stat -c "%U %n" /var/lib/floatzip/data/blobs/*' \
    | sed 's/^/     /'
  t0=$(date +%s.%N)
  docker stop -t 30 "$name" >/dev/null
  t1=$(date +%s.%N)
  code=$(docker inspect -f '{{.State.ExitCode}}' "$name")
  secs=$(echo "$t1 - $t0" | bc)
  [ "$code" = 0 ] && ok "docker stop: exit code 0 after ${secs}s" || fail "docker stop: exit code $code"
  docker logs "$name" 2>&1 | tail -3 | sed 's/^/     /'
  ;;
compose)
  # Compose v2 reads compose.yaml as is. v1 (docker-compose 1.x, end of life) gets a copy
  # without what it cannot take: the top-level `name:` (unknown to it; the same project name
  # and directory are passed instead) and the server's port mapping (docker-compose >= 1.28
  # refuses ports together with network_mode: host; v2 ignores them there).
  if docker compose version >/dev/null 2>&1; then
    dc() { docker compose -f docker/compose.yaml -f docker/compose.offline.yaml "$@"; }
  else
    sed -e '/^name:/d' -e '/^    ports:/,/^      - /d' docker/compose.yaml >"$work/compose.yaml"
    dc() { docker-compose --project-directory docker -p floatzip \
             -f "$work/compose.yaml" -f docker/compose.offline.yaml "$@"; }
  fi
  trap 'dc down -v >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
  if [ -z "${SKIP_BUILD:-}" ]; then dc build; fi
  dc up -d
  cid=$(dc ps -q floatzip)
  wait_healthy "$cid"
  [ "$(dc ps -a -q create-bucket | xargs docker inspect -f '{{.State.ExitCode}}')" = 0 ] \
    && ok "create-bucket exited 0" || fail "create-bucket"
  round_trip
  echo "     bucket contents (s3s-fs volume):"
  dc exec -T minio sh -c 'cd /data && find floatzip -type f' | sed 's/^/       /'
  dc exec -T minio sh -c 'test -n "$(find /data/floatzip/v1/blobs -name "*.fz")"' \
    && ok "container blob stored in bucket floatzip under v1/" || fail "no blob in the bucket"
  # The server keeps no state: a new container serves the same file from the bucket.
  dc rm -fsv floatzip >/dev/null 2>&1
  dc up -d --no-deps floatzip
  wait_healthy "$(dc ps -q floatzip)"
  download_matches
  ;;
*) echo "usage: $0 image|compose" >&2; exit 2 ;;
esac
echo "smoke test ($mode): passed"
