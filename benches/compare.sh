#!/usr/bin/env bash
# The comparison suite: Spooky beside Caddy (HTTP/3), HAProxy, nginx and Caddy (HTTP/2 and
# HTTP/1.1 over TLS), all in front of one nginx origin, measured one proxy at a time,
# alternating, in one run. See benches/README.md for what each peer is set up with and why.
#
#   benches/compare.sh            # 3 rounds, about 20 minutes on 2 cores
#   benches/compare.sh --smoke    # 1 short round: checks the suite works (CI), judges nothing
#
# Knobs: ROUNDS (3), SECS (seconds per saturation run, 8), CONNS (32), STREAMS (10 per
# connection), PIN (1: each proxy on CPU 0 with one worker, origin and load on CPU 1; needs
# two cores), PEERS (default "spooky caddy haproxy nginx"), IDLE_QUIC (10000) and IDLE_TLS
# (5000): idle connections for the memory-per-connection figure; SLOW (1000): slow readers.
#
# Prints a table of medians and Spooky/peer ratios, and writes every sample and median as JSON
# to target/bench/compare.json. Installs what it needs from Debian's packages: nghttp2-client
# (h2load), haproxy, nginx-light and caddy.
set -euo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
if [ "${1:-}" = --smoke ]; then SMOKE=1; fi
ROUNDS=${ROUNDS:-3}
SECS=${SECS:-8}
CONNS=${CONNS:-32}
STREAMS=${STREAMS:-10}
PEERS=${PEERS:-"spooky caddy haproxy nginx"}
if [ "$SMOKE" = 1 ]; then ROUNDS=1; SECS=1; fi
PIN=${PIN:-$([ "$(nproc)" -ge 2 ] && echo 1 || echo 0)}
if [ "$PIN" = 1 ]; then PROXY_CPUS=0; LOAD=(taskset -c 1); else PROXY_CPUS=""; LOAD=(); fi

source benches/lib.sh
need h2load:nghttp2-client haproxy:haproxy nginx:nginx-light caddy:caddy
cargo build --release --bins >&2
BIN=$PWD/target/release
bench_init
out_dir=target/bench
mkdir -p "$out_dir"
samples="$work/samples.tsv"
: > "$samples"

make_cert

# --- The origin: nginx serving a 1 KiB and a 1 MiB file over HTTP/1.1, one worker, on CPU 1.
mkdir -p "$work/www" "$work/origin/logs"
chmod 755 "$work" "$work/www"   # nginx workers run as another user when started by root
head -c 1024 /dev/zero | tr '\0' x > "$work/www/1k"
head -c 1048576 /dev/zero | tr '\0' x > "$work/www/1m"
origin=$(free_port)
cat > "$work/origin.conf" <<CFG
worker_processes 1;
pid $work/origin/nginx.pid;
error_log $work/origin/logs/error.log;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000;
  keepalive_timeout 60s;
  server { listen 127.0.0.1:$origin; root $work/www; }
}
CFG
"${LOAD[@]}" nginx -p "$work/origin" -c "$work/origin.conf" -g 'daemon off;' > "$work/origin.out" 2>&1 &
pids+=($!)

# --- The proxies. start_proxy NAME WORKERS: starts it on its own port (sets port[NAME],
# pid[NAME]); each on CPU 0 when pinned.
declare -A port pid
# Runs in the background job's subshell: pins it, then becomes the proxy (exec, or one of
# lib.sh's run_* functions, which exec it), so that $! is the proxy itself.
pinned() {
  if [ -n "$PROXY_CPUS" ]; then taskset -pc "$PROXY_CPUS" $BASHPID > /dev/null; fi
  if declare -F "$1" > /dev/null; then "$@"; else exec "$@"; fi
}

start_proxy() {
  local name=$1 workers=$2 p
  p=$(free_port)
  port[$name]=$p
  case $name in
    spooky)
      cat > "$work/spooky.toml" <<TOML
[pipeline]
name = "compare"
chain = ["ingress", "admission", "route", "queue", "select", "hedge-retry", "dispatch", "egress"]
workers = $workers
[[listeners]]
name = "edge"
bind = "127.0.0.1:$p"
protocols = ["h3", "h2", "http1"]
max_streams_per_connection = 256
max_connections = 20000
tls = { cert = "$work/cert.pem", key = "$work/key.pem" }
[stages.dispatch]
pool_max_idle_per_backend = 512
[[routes]]
name = "app"
upstream = "app"
[upstreams.app]
backends = [ { url = "http://127.0.0.1:$origin", max_inflight = 1024 } ]
TOML
      SPOOKY_LOG=warn pinned "$BIN/spooky" run "$work/spooky.toml" > "$work/spooky.out" 2>&1 &
      ;;
    haproxy) pinned run_haproxy "$p" "$origin" "$workers" & ;;
    nginx) pinned run_nginx "$p" "$origin" "$workers" & ;;
    caddy)
      mkdir -p "$work/caddy"
      cat > "$work/Caddyfile" <<CFG
{
  admin off
  auto_https disable_redirects
  default_sni localhost
  servers {
    protocols h1 h2 h3
  }
}
https://127.0.0.1:$p, https://localhost:$p {
  tls $work/cert.pem $work/key.pem
  reverse_proxy 127.0.0.1:$origin {
    transport http {
      keepalive_idle_conns 512
      keepalive_idle_conns_per_host 512
    }
  }
}
CFG
      XDG_DATA_HOME="$work/caddy" XDG_CONFIG_HOME="$work/caddy" GOMAXPROCS=$workers \
        pinned caddy run --config "$work/Caddyfile" --adapter caddyfile > "$work/caddy.out" 2>&1 &
      ;;
  esac
  pid[$name]=$!
  pids+=($!)
}

stop_proxy() {
  kill "${pid[$1]}" 2>/dev/null || true
  wait "${pid[$1]}" 2>/dev/null || true
}

# Waits until the proxy answers a GET over HTTP/2 (10 s at most).
wait_up() {
  local out
  for _ in $(seq 100); do
    out=$(h2load -n 1 -c 1 "https://127.0.0.1:${port[$1]}/1k" 2>&1 || true)
    if grep -q '1 succeeded' <<<"$out"; then
      return 0
    fi
    sleep 0.1
  done
  echo "$1 did not come up: $out" >&2
  cat "$work/$1.out" "$work/nginx/logs/error.log" 2>/dev/null | tail -20 >&2
  exit 1
}

# record ROUND PROXY PROTO METRIC VALUE
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$@" >> "$samples"; }

# Saturation: h2load (its own C client keeps up with every peer) for req/s and CPU per request,
# then spooky-bench closed loop for p50/p99 at saturation.
saturate() { # round name proto
  local r=$1 n=$2 proto=$3 url="https://127.0.0.1:${port[$2]}/1k" c0 c1 out ok rps
  c0=$(cpu_ticks "${pid[$n]}")
  case $proto in
    h3) out=$("${LOAD[@]}" "$BIN/spooky-bench" load --proto h3 --url "$url" --connections "$CONNS" \
          --streams "$STREAMS" --duration "${SECS}s" --machine)
        ok=$(field ok "$out"); rps=$(field rps "$out")
        record "$r" "$n" "$proto" p50_us "$(field p50_us "$out")"
        record "$r" "$n" "$proto" p99_us "$(field p99_us "$out")" ;;
    h2) out=$(h2load_summary "$("${LOAD[@]}" h2load -D "$SECS" -c "$CONNS" -m "$STREAMS" "$url" 2>&1)")
        ok=$(field ok "$out"); rps=$(field rps "$out") ;;
    h1) out=$(h2load_summary "$("${LOAD[@]}" h2load --h1 -D "$SECS" -c "$CONNS" -m 1 "$url" 2>&1)")
        ok=$(field ok "$out"); rps=$(field rps "$out") ;;
  esac
  c1=$(cpu_ticks "${pid[$n]}")
  record "$r" "$n" "$proto" rps "$rps"
  record "$r" "$n" "$proto" cpu_us "$(cpu_us $((c1 - c0)) "$ok")"
  record "$r" "$n" "$proto" rss_kib "$(rss_kib "${pid[$n]}")"
  if [ "$proto" != h3 ]; then
    # Latency at saturation from spooky-bench (h2load reports only a mean).
    out=$("${LOAD[@]}" "$BIN/spooky-bench" load --proto "$proto" --url "$url" --connections "$CONNS" \
      --streams "$STREAMS" --duration "$((SECS / 2 + 1))s" --machine)
    record "$r" "$n" "$proto" p50_us "$(field p50_us "$out")"
    record "$r" "$n" "$proto" p99_us "$(field p99_us "$out")"
  fi
}

# Open loop at RATE requests/s: p50/p99 from when each request was due.
offered() { # round name proto rate url
  local out
  # Warm-up at the same rate, not measured: a process's first seconds (heap growth, new
  # upstream connections) would otherwise own the tail.
  if [ "$SMOKE" = 0 ]; then
    "${LOAD[@]}" "$BIN/spooky-bench" load --proto "$3" --url "$5" --connections "$CONNS" \
      --streams "$STREAMS" --rate "$4" --duration 2s --machine > /dev/null
  fi
  out=$("${LOAD[@]}" "$BIN/spooky-bench" load --proto "$3" --url "$5" --connections "$CONNS" \
    --streams "$STREAMS" --rate "$4" --duration "$((SECS / 2 + 1))s" --machine)
  record "$1" "$2" "$3" rate_p50_us "$(field p50_us "$out")"
  record "$1" "$2" "$3" rate_p99_us "$(field p99_us "$out")"
  record "$1" "$2" "$3" rate_ok "$(field ok "$out")"
}

# 1 MiB downloads over HTTP/2 (h2load -m 1: one at a time per connection) and, where the
# proxy speaks it, over HTTP/3 (spooky-bench, the same 4 connections × 1), MiB/s (h2load's
# "MB/s" counts in powers of 1024 too).
download() { # round name
  local out mbs
  if [[ " $(protocols_of "$2") " == *" h3 "* ]]; then
    quic_download "$1" "$2" h3 "https://127.0.0.1:${port[$2]}/1m"
  fi
  out=$("${LOAD[@]}" h2load -D "$SECS" -c 4 -m 1 "https://127.0.0.1:${port[$2]}/1m" 2>&1)
  # h2load prints its rate in B/s, KB/s, MB/s or GB/s (powers of 1024).
  mbs=$(sed -n 's/^finished in .*, \([0-9.]*\)\([KMG]*\)B\/s.*/\1 \2/p' <<<"$out" |
    awk '{ m = ($2 == "G") ? 1024 : ($2 == "M") ? 1 : ($2 == "K") ? 1 / 1024 : 1 / 1048576; printf "%.0f", $1 * m }')
  [ -n "$mbs" ] || echo "$2: no 1 MiB download rate: $(grep -E '^(finished|requests|status)' <<<"$out")" >&2
  record "$1" "$2" h2 download_mb_s "${mbs:-0}"
}

# A 1 MiB download rate over QUIC from spooky-bench load (PROTO h3 through a proxy, quic from
# the raw quinn server), MiB/s.
quic_download() { # round name proto url
  local out
  out=$("${LOAD[@]}" "$BIN/spooky-bench" load --proto "$3" --url "$4" --connections 4 \
    --streams 1 --duration "${SECS}s" --machine)
  [ "$(field errors "$out")" = 0 ] || echo "$2: $3 download errors: $out" >&2
  record "$1" "$2" h3 download_mb_s "$(field mib_s "$out")"
}

# RSS (KiB) a fresh proxy gains while a spooky-bench command holds something open, in
# $held_kib: starts NAME with one worker, runs `spooky-bench ARGS --url https://…PATH` (which
# prints a line starting with MARKER once all is held, within WAIT seconds), waits SETTLE
# seconds, then ends both. $held_kib is empty (and stderr says why) if the command never got
# there.
held_rss_kib() { # name marker wait settle path spooky-bench-args...
  local n=$1 marker=$2 wait=$3 settle=$4 path=$5 rss0 holder
  shift 5
  held_kib=""
  start_proxy "$n" 1
  wait_up "$n"
  rss0=$(rss_kib "${pid[$n]}")
  "${LOAD[@]}" "$BIN/spooky-bench" "$@" --url "https://127.0.0.1:${port[$n]}$path" \
    > "$work/held.out" 2>&1 &
  holder=$!
  if wait_held "$work/held.out" "$marker" "$wait" "$holder"; then
    sleep "$settle"
    held_kib=$(( $(rss_kib "${pid[$n]}") - rss0 ))
  else
    echo "$n: spooky-bench $1 did not get there: $(tail -2 "$work/held.out")" >&2
  fi
  kill "$holder" 2>/dev/null || true
  wait "$holder" 2>/dev/null || true
  stop_proxy "$n"
}

# Memory per idle connection: N connections that each made one request and stay open, KiB.
idle_memory() { # name proto n
  held_rss_kib "$1" open 120 1 /1k idle --proto "$2" --connections "$3" --hold 60s
  [ -z "$held_kib" ] || record 1 "$1" "$2" idle_kib_per_conn "$(awk -v k="$held_kib" -v c="$3" 'BEGIN { printf "%.1f", k / c }')"
}

protocols_of() { case $1 in spooky|caddy) echo "h3 h2 h1" ;; *) echo "h2 h1" ;; esac; }

# --- One worker each, pinned: the per-core comparison.
for _ in $(seq 100); do
  h2load --h1 -n 1 -c 1 "http://127.0.0.1:$origin/1k" 2>/dev/null | grep -q '1 succeeded' && break
  sleep 0.1
done
for n in $PEERS; do start_proxy "$n" 1; done
for n in $PEERS; do wait_up "$n"; done
# The floor for HTTP/3 downloads: raw QUIC (quinn, default transport settings, no HTTP/3, no
# proxy, no upstream) serving the same 1 MiB, on the proxies' core.
quinn_port=$(free_port)
pinned "$BIN/spooky-bench" quic-serve --addr "127.0.0.1:$quinn_port" --size 1048576 \
  > "$work/quinn.out" 2>&1 &
pids+=($!)
for _ in $(seq 50); do grep -q '^quic listening' "$work/quinn.out" && break; sleep 0.1; done
declare -A rate
for r in $(seq "$ROUNDS"); do
  # Alternate the order each round, so that machine noise spreads over every peer.
  order=($PEERS)
  shift_by=$(( (r - 1) % ${#order[@]} ))
  order=("${order[@]:$shift_by}" "${order[@]:0:$shift_by}")
  for n in "${order[@]}"; do
    for proto in $(protocols_of "$n"); do
      echo "round $r: $n $proto" >&2
      saturate "$r" "$n" "$proto"
    done
    download "$r" "$n"
  done
  quic_download "$r" quinn quic "https://127.0.0.1:$quinn_port/"
  if [ "$r" = 1 ]; then
    # Half of Spooky's saturation rate in round 1: the fixed offered load for every peer.
    for proto in h3 h2 h1; do
      rate[$proto]=$(awk -F'\t' -v p="$proto" '$2=="spooky" && $3==p && $4=="rps" {printf "%d", $5 / 2}' "$samples")
      [ -n "${rate[$proto]}" ] && [ "${rate[$proto]}" -gt 0 ] || rate[$proto]=1000
    done
  fi
  for n in "${order[@]}"; do
    for proto in $(protocols_of "$n"); do
      offered "$r" "$n" "$proto" "${rate[$proto]}" "https://127.0.0.1:${port[$n]}/1k"
    done
  done
  offered "$r" origin h1 "${rate[h1]}" "http://127.0.0.1:$origin/1k"
done
for n in $PEERS; do stop_proxy "$n"; done

# --- Idle connections: memory per connection, each proxy fresh.
IDLE_QUIC=${IDLE_QUIC:-$([ "$SMOKE" = 1 ] && echo 200 || echo 10000)}
IDLE_TLS=${IDLE_TLS:-$([ "$SMOKE" = 1 ] && echo 200 || echo 5000)}
for n in $PEERS; do
  case $n in spooky|caddy) idle_memory "$n" h3 "$IDLE_QUIC" ;; esac
  idle_memory "$n" h2 "$IDLE_TLS"
done

# --- Slow readers: 1 000 responses of 1 MiB over HTTP/2, each read no further than its head
# (64 KiB windows); the proxy's RSS with them held, beyond its RSS before, in MiB.
SLOW=${SLOW:-$([ "$SMOKE" = 1 ] && echo 100 || echo 1000)}
for n in $PEERS; do
  # What the proxy buffers arrives after the heads: 2 s to settle.
  held_rss_kib "$n" held 60 2 /1m slow --requests "$SLOW" --hold 60s
  [ -z "$held_kib" ] || record 1 "$n" h2 slow_readers_mib "$(awk -v k="$held_kib" 'BEGIN { printf "%.1f", k / 1024 }')"
done

# --- Two workers each, on both cores with the load: throughput only (the load competes).
PROXY_CPUS=""
for n in $PEERS; do start_proxy "$n" 2; done
for n in $PEERS; do wait_up "$n"; done
for n in $PEERS; do
  url="https://127.0.0.1:${port[$n]}/1k"
  c0=$(cpu_ticks "${pid[$n]}")
  out=$(h2load_summary "$(h2load -D "$SECS" -c "$CONNS" -m "$STREAMS" -t 1 "$url" 2>&1)")
  c1=$(cpu_ticks "${pid[$n]}")
  record 1 "$n" h2_2workers rps "$(field rps "$out")"
  record 1 "$n" h2_2workers cpu_us "$(cpu_us $((c1 - c0)) "$(field ok "$out")")"
done
for n in $PEERS; do stop_proxy "$n"; done

python3 - "$samples" "$out_dir/compare.json" "$SMOKE" "$PIN" <<'PY'
import json, statistics, sys, os, platform
samples, out, smoke, pin = sys.argv[1], sys.argv[2], sys.argv[3] == "1", sys.argv[4] == "1"
rows = [l.rstrip("\n").split("\t") for l in open(samples) if l.strip()]
by = {}
for r, proxy, proto, metric, value in rows:
    try:
        v = float(value)
    except ValueError:
        continue
    by.setdefault((proxy, proto, metric), []).append(v)
med = {k: statistics.median(v) for k, v in by.items()}
def get(p, proto, m):
    return med.get((p, proto, m))
def ratio(a, b):
    return f"{a / b:.2f}x" if a is not None and b else "-"
cpu = open("/proc/cpuinfo").read()
model = next((l.split(":", 1)[1].strip() for l in cpu.splitlines() if l.startswith("model name")), platform.machine())
print()
print(f"machine: {os.cpu_count()} cores, {model}; {'pinned: proxy on CPU 0 with one worker, origin and load on CPU 1' if pin else 'not pinned'}")
cols = ["req/s", "CPU µs/req", "p50 µs", "p99 µs", f"p50 @rate", f"p99 @rate", "RSS MiB", "1MiB MB/s"]
print(f"{'proxy':10} {'proto':6} " + " ".join(f"{c:>11}" for c in cols) + "   CPU/req vs spooky")
order = ["spooky", "caddy", "haproxy", "nginx", "origin", "quinn"]
proxies = sorted({k[0] for k in med}, key=lambda p: order.index(p) if p in order else 9)
for proto in ["h3", "h2", "h1"]:
    for p in proxies:
        if get(p, proto, "rps") is None and get(p, proto, "rate_p99_us") is None:
            continue
        vals = [get(p, proto, "rps"), get(p, proto, "cpu_us"), get(p, proto, "p50_us"), get(p, proto, "p99_us"),
                get(p, proto, "rate_p50_us"), get(p, proto, "rate_p99_us"),
                (get(p, proto, "rss_kib") or 0) / 1024 or None,
                get(p, proto, "download_mb_s") if proto != "h1" else None]
        cells = " ".join(f"{'-' if v is None else (f'{v:.0f}' if v >= 100 else f'{v:.1f}'):>11}" for v in vals)
        print(f"{p:10} {proto:6} {cells}   {ratio(get('spooky', proto, 'cpu_us'), get(p, proto, 'cpu_us')) if p != 'spooky' else ''}")
quinn = get("quinn", "h3", "download_mb_s")
if quinn:
    print()
    print(f"HTTP/3 1 MiB downloads (MiB/s, 4 connections x 1 stream) against raw QUIC from quinn (no HTTP/3, no proxy): quinn {quinn:.0f}")
    for p in proxies:
        v = get(p, "h3", "download_mb_s")
        if v is not None and p != "quinn":
            print(f"  {p:10} {v:>8.0f}   raw QUIC is {quinn / v:.2f}x as fast" if v else f"  {p:10} {v:>8.0f}")
print()
print("memory per idle connection (KiB of RSS, each made one request; fresh proxy, one worker):")
for p in proxies:
    q, t = get(p, "h3", "idle_kib_per_conn"), get(p, "h2", "idle_kib_per_conn")
    if q is not None or t is not None:
        print(f"  {p:10} QUIC {'-' if q is None else f'{q:.1f}':>7}   TLS (h2) {'-' if t is None else f'{t:.1f}':>7}")
print()
print("slow readers: RSS added by stalled 1 MiB responses over HTTP/2 (MiB, fresh proxy):")
for p in proxies:
    v = get(p, "h2", "slow_readers_mib")
    if v is not None:
        print(f"  {p:10} {v:>8.1f}")
print()
print("two workers each, unpinned (load on the same cores):")
for p in proxies:
    r, c = get(p, "h2_2workers", "rps"), get(p, "h2_2workers", "cpu_us")
    if r is not None:
        print(f"  {p:10} h2  {r:>10.0f} req/s  {c if c is not None else 0:>6.1f} CPU µs/req")
json.dump({"smoke": smoke, "pinned": pin, "cores": os.cpu_count(), "cpu": model,
           "medians": [{"proxy": k[0], "proto": k[1], "metric": k[2], "value": v} for k, v in sorted(med.items())],
           "samples": [{"round": int(r), "proxy": p, "proto": pr, "metric": m, "value": v} for r, p, pr, m, v in rows]},
          open(out, "w"), indent=1)
print(f"\n(medians of the rounds; every sample in {out})")
if smoke:
    missing = [p for p in proxies if p not in ("origin", "quinn") and not any(get(p, proto, "rps") for proto in ["h2", "h3"])]
    if "spooky" in proxies and not quinn:
        missing.append("quinn (raw QUIC downloads)")
    if missing:
        sys.exit(f"smoke: no successful run for {missing}")
PY
