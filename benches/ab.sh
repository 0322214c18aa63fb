#!/usr/bin/env bash
# A/B: Spooky at another revision against the working tree, side by side in one run, on the
# same backend, alternating rounds so that machine noise hits both alike. Reports req/s and
# CPU per proxied request (HTTP/1.1 backend) for each, and their ratios.
#
#   benches/ab.sh                  # base = HEAD~1, HTTP/3 in (spooky-bench load)
#   BASE=bb84a50 ROUNDS=5 benches/ab.sh
#   PROTO=h2 benches/ab.sh         # HTTP/2 over TLS in (h2load; nghttp2-client is installed)
#
# Knobs: BASE (a git revision) or BASE_BIN (a spooky binary built before), HEAD_BIN (instead
# of the working tree's build; target/release/spooky-bench must exist), EXTRA_B (TOML
# appended to the working tree's pipeline), PROTO (h3|h2), ROUNDS, DURATION (h3), REQUESTS (h2),
# CONNECTIONS, STREAMS, SIZE, PIN=1 (both proxies on CPU 0, backend and load generator on
# CPU 1: steadier figures on a shared 2-core machine).
set -euo pipefail
cd "$(dirname "$0")/.."

BASE=${BASE:-HEAD~1}
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-4}
STREAMS=${STREAMS:-16}
SIZE=${SIZE:-1024}
PROTO=${PROTO:-h3}
REQUESTS=${REQUESTS:-30000}
PIN=${PIN:-0}
if [ "$PIN" = 1 ]; then proxy_cpu=(taskset -c 0); load_cpu=(taskset -c 1); else proxy_cpu=(); load_cpu=(); fi
source benches/lib.sh
if [ "$PROTO" = h2 ]; then need h2load:nghttp2-client; fi

bench_init

# HEAD_BIN: a binary to weigh instead of the working tree's (no build; e.g. two saved builds);
# BASE_BIN: one built before (e.g. target/ab-base/release/spooky from an earlier run).
pick_binaries
A="$base_bin"
B="$head_bin"
BENCH="$PWD/target/release/spooky-bench"

start_backend "$SIZE"
port=$backend_port
if [ "$PIN" = 1 ]; then taskset -pc 1 "${pids[-1]}" > /dev/null; fi
cat > "$work/bench.toml" <<TOML
[pipeline]
name = "bench"
chain = ["ingress", "admission", "route", "queue", "select", "hedge-retry", "dispatch", "egress"]

[[listeners]]
name = "edge"
bind = "127.0.0.1:0"
protocols = ["h3", "h2"]
max_streams_per_connection = 256

[[routes]]
name = "app"
match = { path_prefix = "/" }
upstream = "app"

[upstreams.app]
backends = [ { url = "http://127.0.0.1:$port" } ]
TOML

# The working tree's pipeline may differ by EXTRA_B (TOML appended, e.g. a stage's keys), to
# weigh a setting with BASE_BIN set to the same binary.
cp "$work/bench.toml" "$work/bench-head.toml"
printf '%b\n' "${EXTRA_B:-}" >> "$work/bench-head.toml"

# Starts Spooky from binary $1 (output in $work/$2.out): sets $started_pid and $started_port.
# Not in a subshell, so that its process joins $pids and is stopped on exit.
start() {
  local toml="$work/bench.toml"
  if [ "$2" = head ]; then toml="$work/bench-head.toml"; fi
  SPOOKY_LOG=warn "${proxy_cpu[@]}" "$1" run "$toml" > "$work/$2.out" &
  started_pid=$!
  pids+=($started_pid)
  wait_for "$work/$2.out" '^ready' || true
  local addr
  addr=$(sed -n "s/.*protocol=$([ "$PROTO" = h2 ] && echo tcp || echo h3) addr=//p" "$work/$2.out")
  [ -n "$addr" ] || { echo "$2 did not start" >&2; exit 1; }
  started_port=${addr##*:}
}
start "$A" base
apid=$started_pid aport=$started_port
start "$B" head
bpid=$started_pid bport=$started_port

measure() { # pid port → "rps cpu_us"
  local c0 c1 out
  c0=$(cpu_ticks "$1")
  if [ "$PROTO" = h2 ]; then
    out=$(h2load_summary "$("${load_cpu[@]}" h2load -n "$REQUESTS" -c "$CONNECTIONS" -m "$STREAMS" \
      "https://127.0.0.1:$2/x" 2>&1)")
  else
    out=$("${load_cpu[@]}" "$BENCH" load --url "https://127.0.0.1:$2/x" --connections "$CONNECTIONS" \
      --streams "$STREAMS" --duration "$DURATION" --machine)
  fi
  c1=$(cpu_ticks "$1")
  echo "$(field rps "$out" | cut -d. -f1) $(cpu_us $((c1 - c0)) "$(field ok "$out")")"
}

echo "$PROTO in, base $base_rev vs working tree"
printf '%-6s %12s %12s %12s %12s\n' round "base req/s" "head req/s" "base µs/req" "head µs/req"
: > "$work/rows"
for r in $(seq "$ROUNDS"); do
  # Alternate which goes first.
  if [ $((r % 2)) = 1 ]; then
    read -r ar ac < <(measure "$apid" "$aport"); read -r br bc < <(measure "$bpid" "$bport")
  else
    read -r br bc < <(measure "$bpid" "$bport"); read -r ar ac < <(measure "$apid" "$aport")
  fi
  printf '%-6s %12s %12s %12s %12s\n' "$r" "$ar" "$br" "$ac" "$bc"
  echo "$ar $br $ac $bc" >> "$work/rows"
done
awk -v base="$base_rev" '{ ar += $1; br += $2; ac += $3; bc += $4 }
  END { printf "sums over %d rounds: head/base req/s %.3f, head/base CPU per request %.3f (base %s)\n",
        NR, br / ar, bc / ac, base }' "$work/rows"
# Each round measures both back to back, so its ratio cancels most of the machine's drift;
# the median of those ratios is the steadiest figure on a shared machine.
awk '{ print $4 / $3 }' "$work/rows" | sort -n | awk '{ r[NR] = $1 }
  END { m = (NR % 2) ? r[(NR + 1) / 2] : (r[NR / 2] + r[NR / 2 + 1]) / 2;
        printf "median of per-round head/base CPU per request: %.3f (min %.3f, max %.3f)\n", m, r[1], r[NR] }'
