#!/usr/bin/env bash
# Side-by-side load: the same HTTP/1.1 backend loaded directly and through Spooky (HTTP/3),
# in one run, with the ratio; then both again at half of Spooky's peak rate for the latency
# the proxy adds. Also reports Spooky's CPU time per request (from /proc).
#
#   benches/proxy.sh                 # 5 s per run
#   DURATION=2s SMOKE=1 benches/proxy.sh   # CI smoke: short, prints the same table
#
# Knobs: DURATION, CONNECTIONS, STREAMS, SIZE (response bytes).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-4}
STREAMS=${STREAMS:-16}
SIZE=${SIZE:-1024}

source benches/lib.sh
cargo build --release --bins >&2
BIN=target/release
bench_init
start_backend "$SIZE"
port=$backend_port

cat > "$work/bench.toml" <<TOML
[pipeline]
name = "bench"
chain = ["ingress", "admission", "route", "queue", "select", "hedge-retry", "dispatch", "egress"]

[[listeners]]
name = "edge"
bind = "127.0.0.1:0"
max_streams_per_connection = 256

[[routes]]
name = "hello"
match = { path_prefix = "/hello" }
respond = { status = 200, body = "hello from spooky\n" }

[[routes]]
name = "app"
match = { path_prefix = "/" }
upstream = "app"

[upstreams.app]
backends = [ { url = "http://127.0.0.1:$port" } ]
TOML
SPOOKY_LOG=warn "$BIN/spooky" run "$work/bench.toml" > "$work/spooky.out" &
spid=$!
pids+=($spid)
wait_for "$work/spooky.out" '^ready' || true
h3=$(sed -n 's/.*protocol=h3 addr=//p' "$work/spooky.out")
[ -n "$h3" ] || { echo "spooky did not start" >&2; exit 1; }
h3port=${h3##*:}

load() { # url [rate]
  "$BIN/spooky-bench" load --url "$1" --connections "$CONNECTIONS" --streams "$STREAMS" \
    --duration "$DURATION" --rate "${2:-0}" --machine
}

direct=$(load "http://127.0.0.1:$port/x")
c0=$(cpu_ticks "$spid")
proxied=$(load "https://127.0.0.1:$h3port/x")
c1=$(cpu_ticks "$spid")
hello=$(load "https://127.0.0.1:$h3port/hello")

ok=$(field ok "$proxied")
cpu_us=$(cpu_us $((c1 - c0)) "$ok")
peak=$(field rps "$proxied")
half=$(awk -v r="$peak" 'BEGIN { printf "%d", r / 2 }')
direct_half=$(load "http://127.0.0.1:$port/x" "$half")
proxied_half=$(load "https://127.0.0.1:$h3port/x" "$half")

row() { printf '%-34s %9s %9s %9s %9s %9s\n' "$1" "$(field rps "$2")" "$(field p50_us "$2")" "$(field p90_us "$2")" "$(field p99_us "$2")" "$(field errors "$2")"; }
printf '%-34s %9s %9s %9s %9s %9s\n' "run ($DURATION, ${CONNECTIONS}x${STREAMS}, ${SIZE} B)" "req/s" "p50 us" "p90 us" "p99 us" "errors"
row "direct h1 → backend" "$direct"
row "h3 → spooky → h1 backend" "$proxied"
row "h3 → spooky direct response" "$hello"
row "direct at half peak ($half/s)" "$direct_half"
row "spooky at half peak ($half/s)" "$proxied_half"
awk -v d="$(field rps "$direct")" -v p="$peak" 'BEGIN { if (d > 0) printf "ratio proxied/direct req/s: %.2f\n", p / d }'
echo "spooky CPU per proxied request: ${cpu_us} µs (target < 40 µs)"
awk -v a="$(field p99_us "$proxied_half")" -v b="$(field p99_us "$direct_half")" 'BEGIN { printf "p99 added at half peak: %d µs (target < 1000 µs)\n", a - b }'
if [ "${SMOKE:-0}" = 1 ]; then
  [ "$(field ok "$proxied")" -gt 0 ] || { echo "smoke: no proxied request succeeded" >&2; exit 1; }
fi
