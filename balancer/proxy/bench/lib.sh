# Shared pieces of the benchmark scripts in this folder (sourced, not run).
#
#   bench_workdir NAME          work directory $W, process list PIDS, cleanup on exit (processes
#                               or their groups killed; then a function bench_on_exit, if
#                               defined; $W removed unless KEEP=1)
#   bench_backend PORT [CPU] [NAME]
#                               nginx, one worker, `return 200 "ok\n"` on 127.0.0.1:PORT, keep-alive
#                               never recycled, pinned to CPU if given; its PID joins PIDS; NAME
#                               keeps a second one's files apart; BENCH_BACKEND_PREFIX (e.g.
#                               "chrt -f 50") goes before the command; BENCH_BACKEND_RETURN
#                               replaces the answer (nginx `return` arguments)
#   bench_expect_200 URL [HOST] up to 10 s for URL (with that Host header) to answer 200; else
#                               says what it got and exits 1 (a benchmark of error pages is void)
#   bench_cert                  a fresh ECDSA P-256 certificate for bench.test in $W/cert.pem,
#                               $W/key.pem (the key type both nginx and pier are measured with)
#   bench_tls_balancer H S B    pier-balancer config for bench.test over TLS (see below)
#   bench_hosts FILE PORT       1000 names h<i>.bench.test, each to 127.0.0.1:PORT (the hosts file
#                               format of compare.sh and compare-run.sh)
#   bench_free_port             a loopback port free now
#   bench_routes BACKEND_PORT   (stdout) a routes file: the 1000 apps h<i>.bench.test of compare-run.sh
#                               and the app bench.test, all to 127.0.0.1:BACKEND_PORT
#   bench_stop PID...           SIGTERM, up to 5 s for each to exit (pier drains), then SIGKILL
#   bench_registry NAME         for the registry benchmarks: release pier-balancer and the
#                               examples built, bench_workdir NAME, free ports REDIS LISTEN ADMIN
#                               BACKEND, the nginx backend on BACKEND (CPU 1), R = the release dir

bench_workdir() {
  W=$(mktemp -d "/tmp/pier-$1.XXXXXX")
  PIDS=()
  trap bench_cleanup EXIT
}

bench_routes() {
  local i
  for i in $(seq 0 999); do
    printf '[[app]]\nname = "a%d"\ndomains = ["h%d.bench.test"]\nbackends = ["127.0.0.1:%d"]\n' "$i" "$i" "$1"
  done
  printf '[[app]]\nname = "bench"\ndomains = ["bench.test"]\nbackends = ["127.0.0.1:%d"]\n' "$1"
}

bench_stop() {
  local p
  for p in "$@"; do kill "$p" 2>/dev/null || true; done
  for p in "$@"; do
    for _ in $(seq 50); do
      [ "$(awk '{ print $3 }' "/proc/$p/stat" 2>/dev/null || echo Z)" = Z ] && break
      sleep 0.1
    done
    kill -9 "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
}

bench_cleanup() {
  for p in "${PIDS[@]}"; do kill -- "-$p" 2>/dev/null || kill "$p" 2>/dev/null || true; done
  sleep 0.3
  if declare -F bench_on_exit >/dev/null; then bench_on_exit; fi
  [ -n "${KEEP:-}" ] || rm -rf "$W"
}

# bench_nginx_http_basics: the lines every nginx here starts its http block with: no access
# log, temporary files in $W, keep-alive connections never recycled.
bench_nginx_http_basics() {
  printf '%s\n' "  access_log off;" \
    "  client_body_temp_path $W/cb; proxy_temp_path $W/p; fastcgi_temp_path $W/f;" \
    "  uwsgi_temp_path $W/u; scgi_temp_path $W/s;" \
    "  keepalive_timeout 65; keepalive_requests 100000000;"
}

bench_backend() {
  local port=$1 cpu=${2:-} name=${3:-backend} answer=${BENCH_BACKEND_RETURN:-'200 "ok\n"'}
  local -a run=(${BENCH_BACKEND_PREFIX:-})
  [ -n "$cpu" ] && run+=(taskset -c "$cpu")
  cat >"$W/$name.conf" <<CONF
worker_processes 1;
pid $W/$name.pid;
events { worker_connections 65536; }
http {
$(bench_nginx_http_basics)
  server { listen 127.0.0.1:$port backlog=4096; location / { return $answer; } }
}
CONF
  "${run[@]}" nginx -p "$W" -c "$W/$name.conf" -e "$W/$name.err" -g 'daemon off;' >"$W/$name.out" 2>&1 &
  PIDS+=($!)
}

bench_expect_200() {
  local url=$1 host=${2:-} status=000
  local -a hdr=()
  [ -n "$host" ] && hdr=(-H "Host: $host")
  for _ in $(seq 100); do
    status=$(curl -s -o /dev/null -w '%{http_code}' "${hdr[@]}" "$url" || true)
    [ "$status" = 200 ] && return 0
    sleep 0.1
  done
  echo "$url${host:+ (Host: $host)} answers $status, not 200: is everything installed (nginx, haproxy)? KEEP=1 keeps the logs in $W" >&2
  exit 1
}

bench_cert() {
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 90 \
    -subj "/CN=bench.test" -addext "subjectAltName=DNS:bench.test" \
    -keyout "$W/key.pem" -out "$W/cert.pem" 2>/dev/null
}

bench_hosts() {
  awk -v b="127.0.0.1:$2" 'BEGIN { for (i = 0; i < 1000; i++) printf "h%d.bench.test %s\n", i, b }' >"$1"
}

# bench_tls_balancer HTTP_PORT HTTPS_PORT BACKEND_PORT: $W/routes.toml (app "bench", domain
# bench.test, one backend) and $W/balancer.toml (one worker, TLS with bench_cert's pair, access
# log off, then $BALANCER_EXTRA if set: more TOML, e.g. $'[limits]\napp_max_in_flight = 0')
# for pier-balancer.
bench_tls_balancer() {
  cat >"$W/routes.toml" <<ROUTES
[[app]]
name = "bench"
domains = ["bench.test"]
backends = ["127.0.0.1:$3"]
ROUTES
  cat >"$W/balancer.toml" <<CONF
[listen]
http = ["127.0.0.1:$1"]
https = ["127.0.0.1:$2"]
[tls]
cert = "cert.pem"
key = "key.pem"
[routes]
file = "routes.toml"
watch = false
[runtime]
workers = 1
max_connections = 200000
[log]
level = "warn"
access = false
${BALANCER_EXTRA:-}
CONF
}

bench_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

bench_registry() {
  local root
  root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../.." && pwd)
  (cd "$root" && cargo build --release -p pier-balancer --bins --examples >&2 &&
    cargo build --release -p pier-registry --examples >&2)
  R=$(cd "$root" && realpath -m "${CARGO_TARGET_DIR:-target}/release")
  bench_workdir "$1"
  REDIS=$(bench_free_port) LISTEN=$(bench_free_port) ADMIN=$(bench_free_port) BACKEND=$(bench_free_port)
  bench_backend "$BACKEND" 1
}
