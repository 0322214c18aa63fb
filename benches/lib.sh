# Pieces the bench scripts share; sourced by them, not run.

# A scratch directory ($work) and a list of background processes ($pids): on exit the
# processes are killed, an `on_exit` function runs if the script defined one, and the
# directory goes.
bench_init() {
  work=$(mktemp -d)
  pids=()
  trap bench_cleanup EXIT
}

bench_cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  sleep 0.2
  if declare -F on_exit >/dev/null; then on_exit; fi
  if [ -d "$work/base" ]; then git worktree remove --force "$work/base" 2>/dev/null || true; fi
  rm -rf "$work"
}

# Installs the Debian package of each missing command: need h2load:nghttp2-client …
need() {
  local missing=() pair sudo
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    sudo=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
    $sudo apt-get update -q >&2 && $sudo apt-get install -y -q "${missing[@]}" >&2
  fi
}

# Builds Spooky at git revision $1 in a worktree under $work, into target/ab-base (kept between
# runs): sets $base_rev and $base_bin. The worktree goes at exit (see bench_cleanup).
build_base() {
  base_rev=$(git rev-parse --short "$1")
  git worktree add --detach "$work/base" "$base_rev" >&2
  CARGO_TARGET_DIR="$PWD/target/ab-base" cargo build --release --bin spooky \
    --manifest-path "$work/base/Cargo.toml" >&2
  base_bin="$PWD/target/ab-base/release/spooky"
}

# The two binaries a side-by-side script weighs: $BASE_BIN (built before: no rebuild) or the
# revision $BASE built by build_base, against $HEAD_BIN or the working tree's build. Sets
# $base_bin, $base_rev and $head_bin.
pick_binaries() {
  if [ -z "${HEAD_BIN:-}" ]; then cargo build --release --bins >&2; fi
  if [ -n "${BASE_BIN:-}" ]; then
    base_bin=$BASE_BIN base_rev=$BASE_BIN
  else
    build_base "$BASE"
  fi
  head_bin="${HEAD_BIN:-$PWD/target/release/spooky}"
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits (up to $3 seconds, 10 by default) until file $1 has a line matching $2.
wait_for() {
  for _ in $(seq $(( ${3:-10} * 10 ))); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  return 1
}

# The load tool's HTTP/1.1 backend with $1-byte responses, on a free port: sets $backend_port.
start_backend() {
  backend_port=$(free_port)
  target/release/spooky-bench backend --addr "127.0.0.1:$backend_port" --size "$1" \
    > "$work/backend.out" &
  pids+=($!)
  wait_for "$work/backend.out" listening
}

# A process and all its descendants.
tree_of() {
  local c
  echo "$1"
  for c in $(pgrep -P "$1" || true); do tree_of "$c"; done
}

# Resident memory (KiB) of a process and its children.
rss_kib() {
  local total=0 p
  for p in $(tree_of "$1"); do
    total=$((total + $(awk '/^VmRSS/ {print $2}' "/proc/$p/status" 2>/dev/null || echo 0)))
  done
  echo "$total"
}

# Waits up to $3 seconds until file $1 has a line starting with $2, or until process $4 (the
# one writing it) ends; succeeds if the line came.
wait_held() { # file marker seconds pid
  for _ in $(seq $(($3 * 10))); do
    grep -q "^$2" "$1" && return 0
    kill -0 "$4" 2>/dev/null || break
    sleep 0.1
  done
  grep -q "^$2" "$1"
}

# CPU ticks (user + system) of a process and its descendants (nginx workers).
cpu_ticks() {
  local total=0 p
  for p in $(tree_of "$1"); do
    [ -r "/proc/$p/stat" ] || continue
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$total"
}
tck=$(getconf CLK_TCK)

# CPU µs per request from $1 ticks over $2 requests.
cpu_us() {
  awk -v t="$1" -v k="$tck" -v n="${2:-0}" \
    'BEGIN { if (n > 0) printf "%.1f", t / k * 1e6 / n; else print "n/a" }'
}

# The value of `name=value` in a line of `spooky-bench --machine` (or h2load_summary) output.
field() { sed -n "s/.*$1=\([0-9.]*\).*/\1/p" <<<"$2"; }

# h2load's output as `rps=… ok=…`.
h2load_summary() {
  echo "rps=$(sed -n 's/^finished in .*, \([0-9.]*\) req\/s.*/\1/p' <<<"$1") ok=$(sed -n 's/.* \([0-9]*\) succeeded.*/\1/p' <<<"$1")"
}

# A self-signed ECDSA P-256 certificate for localhost and 127.0.0.1 in $work: cert.pem, key.pem,
# and haproxy.pem (the two together, as HAProxy takes them).
make_cert() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
  cat "$work/cert.pem" "$work/key.pem" > "$work/haproxy.pem"
}

# The peers' setups (benches/README.md says why each line is there). Each writes its config
# to $work for a proxy on 127.0.0.1:$1 in front of the HTTP/1.1 origin on 127.0.0.1:$2 with
# $3 threads or workers, then runs it in the foreground (start it with `&`).

# HAProxy: h2 and http/1.1 over TLS, keep-alive to the origin (http-reuse always).
run_haproxy() {
  cat > "$work/haproxy.cfg" <<CFG
global
  nbthread $3
  maxconn 8000
  tune.ssl.default-dh-param 2048
defaults
  mode http
  timeout connect 2s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend edge
  bind 127.0.0.1:$1 ssl crt $work/haproxy.pem alpn h2,http/1.1
  default_backend app
backend app
  server origin 127.0.0.1:$2
CFG
  exec haproxy -f "$work/haproxy.cfg" -db > "$work/haproxy.out" 2>&1
}

# nginx: h2 and http/1.1 over TLS, an upstream keep-alive pool of 512, no access log.
run_nginx() {
  mkdir -p "$work/nginx/logs"
  cat > "$work/nginx.conf" <<CFG
worker_processes $3;
pid $work/nginx/nginx.pid;
error_log $work/nginx/logs/error.log;
events { worker_connections 8192; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream app { server 127.0.0.1:$2; keepalive 512; }
  server {
    listen 127.0.0.1:$1 ssl http2;
    ssl_certificate $work/cert.pem;
    ssl_certificate_key $work/key.pem;
    http2_max_concurrent_streams 256;
    location / { proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CFG
  exec nginx -p "$work/nginx" -c "$work/nginx.conf" -g 'daemon off;' > "$work/nginx.out" 2>&1
}
