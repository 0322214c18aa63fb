#!/usr/bin/env bash
# Memory per idle connection, A/B: for each of two Spooky binaries, a fresh proxy with one
# worker, CONNECTIONS connections (PROTO h2: HTTP/2 over TLS, h3, h1) that each made one
# request and stay open, and the proxy's RSS before and while they are held. Passes alternate
# between the two binaries; prints KiB per connection for each pass.
#
#   BASE_BIN=/tmp/before HEAD_BIN=target/release/spooky PROTO=h2 benches/idle.sh
#
# Knobs: BASE_BIN and HEAD_BIN (spooky binaries; HEAD_BIN defaults to the working tree's
# build, target/release/spooky-bench must exist), PROTO (h2|h3|h1), CONNECTIONS (2000),
# PASSES (2), SIZE (the one response's body in bytes, 1024: a larger one fills the upstream
# connection's read buffer, so buffers a connection keeps show as touched memory).
set -euo pipefail
cd "$(dirname "$0")/.."
PROTO=${PROTO:-h2}
CONNECTIONS=${CONNECTIONS:-2000}
PASSES=${PASSES:-2}
SIZE=${SIZE:-1024}
BASE_BIN=${BASE_BIN:?BASE_BIN: the spooky binary to compare with}
HEAD_BIN=${HEAD_BIN:-$PWD/target/release/spooky}
source benches/lib.sh
bench_init
BENCH="$PWD/target/release/spooky-bench"
[ -x "$BENCH" ] || cargo build --release --bin spooky-bench >&2

start_backend "$SIZE"

# KiB of RSS per idle connection for binary $1.
per_connection() {
  local port proxy holder rss0 rss1
  port=$(free_port)
  cat > "$work/idle.toml" <<TOML
[pipeline]
name = "idle"
chain = ["ingress", "admission", "route", "queue", "select", "hedge-retry", "dispatch", "egress"]
workers = 1
[[listeners]]
name = "edge"
bind = "127.0.0.1:$port"
protocols = ["h3", "h2", "http1"]
max_streams_per_connection = 256
max_connections = 20000
[[routes]]
name = "app"
upstream = "app"
[upstreams.app]
backends = [ { url = "http://127.0.0.1:$backend_port" } ]
TOML
  SPOOKY_LOG=warn "$1" run "$work/idle.toml" > "$work/proxy.out" 2>&1 &
  proxy=$!
  wait_for "$work/proxy.out" '^ready' || { echo "$1 did not start" >&2; exit 1; }
  rss0=$(rss_kib "$proxy")
  "$BENCH" idle --proto "$PROTO" --connections "$CONNECTIONS" --hold 60s \
    --url "https://127.0.0.1:$port/1k" > "$work/held.out" 2>&1 &
  holder=$!
  wait_held "$work/held.out" open 60 "$holder" ||
    { echo "idle: $(tail -2 "$work/held.out")" >&2; exit 1; }
  sleep 1
  rss1=$(rss_kib "$proxy")
  kill "$holder" "$proxy"
  wait "$holder" "$proxy" 2>/dev/null || true
  awk -v a="$rss0" -v b="$rss1" -v n="$CONNECTIONS" 'BEGIN { printf "%.1f", (b - a) / n }'
}

echo "KiB of RSS per idle $PROTO connection ($CONNECTIONS connections, one worker)"
printf '%-6s %10s %10s\n' pass base head
for p in $(seq "$PASSES"); do
  a=$(per_connection "$BASE_BIN")
  b=$(per_connection "$HEAD_BIN")
  printf '%-6s %10s %10s\n' "$p" "$a" "$b"
done
