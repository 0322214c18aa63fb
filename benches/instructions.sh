#!/usr/bin/env bash
# Instructions per proxied request, counted by valgrind's callgrind: a figure that does not
# move with the machine's load, for changes too small for CPU time to show (ab.sh resolves
# about ±3 % on a shared 2-core machine; this repeats within ±0.5 %). Runs the base and the
# head one after the other on the same backend, each under callgrind with counting switched
# on only while the measured requests run (after a warm-up), and prints Ir per request and
# the ratio. Kernel time, cache misses and wake-ups are not counted: confirm a gain that
# matters with ab.sh.
#
#   benches/instructions.sh                          # HEAD~1 against the working tree, HTTP/2
#   BASE_BIN=/tmp/old/spooky HEAD_BIN=/tmp/new/spooky PROTO=h1 benches/instructions.sh
#
# Knobs: BASE (a git revision) or BASE_BIN, HEAD_BIN, PROTO (h2|h1: h2load over TLS; h3:
# spooky-bench with --max-requests, from target/release), REQUESTS (counted, default 4000),
# CONNECTIONS (32), STREAMS (10, HTTP/2 and HTTP/3), SIZE (response bytes), KEEP=1 (leave the
# callgrind files in target/bench/ for callgrind_annotate). Installs valgrind and
# nghttp2-client when missing.
# Each connection's TLS handshake is inside the count (32 handshakes in 4 000 requests are
# about a tenth of it): raise REQUESTS to dilute them.
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=${BASE:-HEAD~1}
PROTO=${PROTO:-h2}
REQUESTS=${REQUESTS:-4000}
CONNECTIONS=${CONNECTIONS:-32}
STREAMS=${STREAMS:-10}
SIZE=${SIZE:-1024}
source benches/lib.sh
need valgrind:valgrind callgrind_control:valgrind h2load:nghttp2-client

bench_init
pick_binaries

start_backend "$SIZE"
BENCH="$PWD/target/release/spooky-bench"
case $PROTO in
  h2) load=(-c "$CONNECTIONS" -m "$STREAMS") ;;
  h1) load=(--h1 -c "$CONNECTIONS" -m 1) ;;
  h3) [ -x "$BENCH" ] || cargo build --release --bin spooky-bench ;;
  *) echo "PROTO must be h2, h1 or h3" >&2; exit 2 ;;
esac

# run_load N PORT: N requests through the proxy on PORT; prints how many succeeded.
run_load() {
  if [ "$PROTO" = h3 ]; then
    field ok "$("$BENCH" load --url "https://127.0.0.1:$2/x" --connections "$CONNECTIONS" \
      --streams "$STREAMS" --max-requests "$1" --duration 600s --machine 2>&1)"
  else
    h2load "${load[@]}" -n "$1" "https://127.0.0.1:$2/x" 2>&1 | sed -n 's/.* \([0-9]*\) succeeded.*/\1/p'
  fi
}

# count NAME BIN: Ir per request of BIN (one worker, the full chain) under callgrind.
count() {
  local name=$1 bin=$2 port pid out total
  port=$(free_port)
  cat > "$work/$name.toml" <<TOML
[pipeline]
name = "instructions"
chain = ["ingress", "admission", "route", "queue", "select", "hedge-retry", "dispatch", "egress"]
workers = 1
[[listeners]]
name = "edge"
bind = "127.0.0.1:$port"
protocols = ["h3", "h2", "http1"]
max_streams_per_connection = 256
[stages.dispatch]
pool_max_idle_per_backend = 512
[[routes]]
name = "app"
upstream = "app"
[upstreams.app]
backends = [ { url = "http://127.0.0.1:$backend_port", max_inflight = 1024 } ]
TOML
  SPOOKY_LOG=warn valgrind --tool=callgrind --instr-atstart=no \
    --callgrind-out-file="$work/callgrind.$name" "$bin" run "$work/$name.toml" \
    > "$work/$name.out" 2>&1 &
  pid=$!
  pids+=($pid)
  wait_for "$work/$name.out" '^ready' 120
  # Warm-up: connections, pools and tables filled before anything is counted.
  run_load 2000 "$port" > /dev/null
  callgrind_control -i on "$pid" > /dev/null 2>&1
  out=$(run_load "$REQUESTS" "$port")
  callgrind_control -i off "$pid" > /dev/null 2>&1
  callgrind_control -d "$pid" > /dev/null 2>&1
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  if [ "$out" != "$REQUESTS" ]; then
    echo "$name: ${out:-no} requests of $REQUESTS succeeded" >&2
    exit 1
  fi
  # The dump holds what was counted; the file written at exit holds only the shutdown.
  total=$(for f in "$work"/callgrind."$name"*; do
    callgrind_annotate "$f" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }'
  done | sort -n | tail -1)
  echo $((total / REQUESTS))
}

a=$(count base "$base_bin")
b=$(count head "$head_bin")
echo "$PROTO in, $REQUESTS requests, instructions per request (callgrind)"
printf 'base %s: %s\nhead: %s\n' "$base_rev" "$a" "$b"
awk -v a="$a" -v b="$b" 'BEGIN { printf "head/base %.3f\n", b / a }'
if [ "${KEEP:-0}" = 1 ]; then
  mkdir -p target/bench
  cp "$work"/callgrind.* target/bench/
  echo "callgrind files in target/bench/ (callgrind_annotate --inclusive=yes FILE)"
fi
