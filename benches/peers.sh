#!/usr/bin/env bash
# HTTP/2 over TLS at the edge, side by side in one run: Spooky, HAProxy and nginx (Debian's
# packages) in front of the same HTTP/1.1 backend, loaded by h2load (nghttp2-client). Prints
# req/s, latency and each proxy's CPU time per request (from /proc), with ratios to Spooky.
#
#   benches/peers.sh                       # 20 000 requests per proxy
#   REQUESTS=5000 benches/peers.sh
#   BASE=aa57fe8 benches/peers.sh          # also Spooky at that revision, in the same run
#
# Knobs: REQUESTS, CLIENTS (connections), STREAMS (per connection), SIZE (response bytes),
# BASE (a git revision of Spooky to run beside the working tree: before/after in one run).
# Installs nghttp2-client, haproxy and nginx-light with apt-get when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

REQUESTS=${REQUESTS:-20000}
CLIENTS=${CLIENTS:-8}
STREAMS=${STREAMS:-16}
SIZE=${SIZE:-1024}
BASE=${BASE:-}

source benches/lib.sh
need h2load:nghttp2-client haproxy:haproxy nginx:nginx-light

cargo build --release --bins >&2
BIN=target/release
bench_init
if [ -n "$BASE" ]; then build_base "$BASE"; fi

make_cert

start_backend "$SIZE"
backend=$backend_port

# Spooky: h2 + http/1.1 over TLS, the full chain.
sp=$(free_port)
cat > "$work/spooky.toml" <<TOML
[pipeline]
name = "peers"
chain = ["ingress", "admission", "route", "queue", "select", "hedge-retry", "dispatch", "egress"]
[[listeners]]
name = "edge"
bind = "127.0.0.1:$sp"
protocols = ["h2", "http1"]
max_streams_per_connection = 256
tls = { cert = "$work/cert.pem", key = "$work/key.pem" }
[[routes]]
name = "app"
upstream = "app"
[upstreams.app]
backends = [ { url = "http://127.0.0.1:$backend" } ]
TOML
SPOOKY_LOG=warn "$BIN/spooky" run "$work/spooky.toml" > "$work/spooky.out" 2>&1 &
spooky_pid=$!
pids+=($spooky_pid)
proxies=(spooky)
if [ -n "$BASE" ]; then
  # The same pipeline on its own port, run by the base revision.
  bp=$(free_port)
  sed "s/127.0.0.1:$sp/127.0.0.1:$bp/" "$work/spooky.toml" > "$work/base.toml"
  SPOOKY_LOG=warn "$base_bin" run "$work/base.toml" > "$work/base.out" 2>&1 &
  base_pid=$!
  pids+=($base_pid)
  proxies+=("spooky@$base_rev")
fi
proxies+=(haproxy nginx)

# HAProxy and nginx: two threads or workers each, set up as in compare.sh (lib.sh).
hp=$(free_port)
run_haproxy "$hp" "$backend" 2 &
haproxy_pid=$!
pids+=($haproxy_pid)
np=$(free_port)
run_nginx "$np" "$backend" 2 &
nginx_pid=$!
pids+=($nginx_pid)

wait_for "$work/spooky.out" '^ready' || true
if [ -n "$BASE" ]; then wait_for "$work/base.out" '^ready' || true; fi
sleep 0.5
for p in $spooky_pid ${base_pid:-} $haproxy_pid $nginx_pid; do
  kill -0 "$p" 2>/dev/null || { echo "a proxy did not start:" >&2; cat "$work"/*.out "$work/nginx/logs/error.log" >&2; exit 1; }
done

declare -A rps cpu p50
run() { # name port pid
  local out t0 t1
  h2load -n 200 -c 2 -m 4 "https://127.0.0.1:$2/x" > /dev/null 2>&1 || true   # warm-up
  t0=$(cpu_ticks "$3")
  out=$(h2load -n "$REQUESTS" -c "$CLIENTS" -m "$STREAMS" "https://127.0.0.1:$2/x" 2>&1)
  t1=$(cpu_ticks "$3")
  local ok summary
  summary=$(h2load_summary "$out")
  ok=$(field ok "$summary")
  rps[$1]=$(field rps "$summary")
  cpu[$1]=$(cpu_us $((t1 - t0)) "$ok")
  p50[$1]=$(awk '/^time for request:/ {print $6}' <<<"$out")
  [ "${ok:-0}" = "$REQUESTS" ] || echo "$1: only ${ok:-0} of $REQUESTS requests succeeded" >&2
}
run spooky "$sp" "$spooky_pid"
if [ -n "$BASE" ]; then run "spooky@$base_rev" "$bp" "$base_pid"; fi
run haproxy "$hp" "$haproxy_pid"
run nginx "$np" "$nginx_pid"

printf '%-16s %12s %16s %14s %18s\n' "proxy" "req/s" "CPU us/request" "mean latency" "CPU vs spooky"
for p in "${proxies[@]}"; do
  ratio=$(awk -v a="${cpu[$p]}" -v b="${cpu[spooky]}" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else print "n/a" }')
  printf '%-16s %12s %16s %14s %18s\n' "$p" "${rps[$p]}" "${cpu[$p]}" "${p50[$p]}" "$ratio"
done
echo "(h2load -n $REQUESTS -c $CLIENTS -m $STREAMS, HTTP/2 over TLS, $SIZE-byte responses from one HTTP/1.1 backend)"
