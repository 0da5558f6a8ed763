#!/usr/bin/env bash
# Noisy neighbour (issue 15): app B's latency at a fixed rate, alone and while app A is flooded
# at RATIO times B's rate with its backend stalled (it accepts connections and never answers).
#
#   bash balancer/proxy/bench/noisy-neighbour.sh [BINARY]
#   B_RATE=1000 RATIO=10 DURATION=10s ROUNDS=3 LIMITS=on bash balancer/proxy/bench/noisy-neighbour.sh
#   SERVER=nginx bash balancer/proxy/bench/noisy-neighbour.sh     # or SERVER=haproxy
#   A_BACKEND=fast A_RATE=30000 bash balancer/proxy/bench/noisy-neighbour.sh
#
# A_BACKEND=fast gives app A a fast backend (nginx, like B's) instead of the stalled one: its flood
# then costs the proxy CPU rather than sockets (the case of [limits] overload_lag), at A_RATE
# req/s (default RATIO times B's). LIMITS=off also turns overload_lag off.
#
# SERVER picks the proxy in front (default pier). Their nearest equivalents of pier's per-app
# limit (1000 in flight, 100 queued for at most 5 s), LIMITS=on: nginx, one worker,
# `limit_conn` per Host of 1000 (nginx has no queue: past it, 503 at once); HAProxy 2.6,
# nbthread 1, `maxconn 1000` on app A's server with `timeout queue 5s` (its queue is unbounded).
# LIMITS=off leaves both without. All keep connections to the backends alive.
#
# APPARATUS=rt (the default) runs what measures B -- B's generator and B's backend -- at
# real-time priority (SCHED_FIFO 50): on this 2-core machine they share CPU 1 with the flood's
# generator, and without it B's latency measures that core (the flood's generator delaying B's)
# rather than the proxy. A real-time task preempts the flood's generator as soon as it is
# runnable, as if it had a machine of its own; what still reaches B is the proxy's CPU 0 and
# the kernel's loopback work. APPARATUS=plain runs everything at normal priority (the figures
# before 2026-12-07). With A_BACKEND=fast app A then gets a backend of its own (a second nginx
# at normal priority), so A's requests are not served at B's priority.
#
# FLOOD_TO=control is the control experiment: the same flood goes not to the proxy but to an
# nginx of its own on CPU 1 (normal priority) that answers every request `503` at once. The
# proxy then carries B alone, so what B's p99 gains is the flood's share of the measuring
# machine (CPU 1, the kernel's loopback work), which no proxy can remove on this layout.
#
# One pier-balancer worker on CPU 0 (the bench_tls_balancer configuration with apps a and b,
# isolation as configured: LIMITS=on keeps the defaults, LIMITS=off sets app_max_in_flight = 0),
# B's backend one nginx worker and the stalled backend (Python) on CPU 1, the load generators
# (pier-load, open model, latency from each request's scheduled start) on CPU 1. Each round
# measures B alone, then B with A's flood running beside it, and prints for each: B's
# responses, errors (failed requests and non-2xx), p50 and p99, and for the flood A's status
# classes. Rounds alternate nothing else; the medians of B's p99 are printed at the end with
# their ratio (the issue's goal: B's p99 with the flood within 1.5x of alone, no errors).
# Needs: nginx (haproxy for SERVER=haproxy), python3, curl, taskset, chrt; builds pier-balancer and pier-load (release) unless BINARY.
set -euo pipefail
cd "$(dirname "$0")/../../.."
B_RATE=${B_RATE:-1000}
RATIO=${RATIO:-10}
DURATION=${DURATION:-10s}
FLOOD_DURATION=${FLOOD_DURATION:-12s}   # the flood starts 1 s before B's run and outlasts it
ROUNDS=${ROUNDS:-3}
LIMITS=${LIMITS:-on}
A_CONNS=${A_CONNS:-3000}
A_BACKEND=${A_BACKEND:-stalled}
A_RATE=${A_RATE:-$((B_RATE * RATIO))}
APPARATUS=${APPARATUS:-rt}
FLOOD_TO=${FLOOD_TO:-proxy}
case "$APPARATUS" in
  rt) RT=(chrt -f 50) ;;
  plain) RT=() ;;
  *) echo "APPARATUS must be rt or plain" >&2; exit 2 ;;
esac
BIN=${1:-}
cargo build --release -q -p pier-load
[ -n "$BIN" ] || { cargo build --release -q -p pier-balancer; BIN=${CARGO_TARGET_DIR:-target}/release/pier-balancer; }
BIN=$(realpath "$BIN")
LOAD=$(realpath "${CARGO_TARGET_DIR:-target}/release/pier-load")
. balancer/proxy/bench/lib.sh
bench_workdir noisy
bench_cert
BACKEND=$(bench_free_port) STALLED=$(bench_free_port) HTTP=$(bench_free_port) HTTPS=$(bench_free_port)
BENCH_BACKEND_PREFIX="${RT[*]}" bench_backend "$BACKEND" 1
# The stalled backend: accepts, reads, never answers (connections held until the balancer
# gives up on them).
taskset -c 1 python3 - "$STALLED" <<'PY' &
import asyncio, sys
async def hold(reader, writer):
    try:
        while await reader.read(65536):
            pass
    except ConnectionError:
        pass
    writer.close()
async def main():
    server = await asyncio.start_server(hold, "127.0.0.1", int(sys.argv[1]), backlog=4096)
    async with server:
        await server.serve_forever()
asyncio.run(main())
PY
PIDS+=($!)
ulimit -n 65536 2>/dev/null || true
SERVER=${SERVER:-pier}
if [ "$LIMITS" = off ]; then
  BALANCER_EXTRA=$'[limits]\napp_max_in_flight = 0\noverload_lag = "0s"'
fi
case "$A_BACKEND" in
  stalled) A_PORT=$STALLED ;;
  fast)
    # At real-time priority B's backend would serve A's flood at that priority too.
    if [ "$APPARATUS" = rt ]; then A_PORT=$(bench_free_port); bench_backend "$A_PORT" 1 backend-a; else A_PORT=$BACKEND; fi
    ;;
  *) echo "A_BACKEND must be stalled or fast" >&2; exit 2 ;;
esac
start_nginx() {
  local limit=""
  [ "$LIMITS" = on ] && limit="limit_conn perhost 1000; limit_conn_status 503;"
  cat >"$W/nginx.conf" <<CONF
worker_processes 1;
worker_rlimit_nofile 20000;
pid $W/nginx.pid;
events { worker_connections 16000; }
http {
$(bench_nginx_http_basics)
  limit_conn_zone \$host zone=perhost:10m;
  upstream a { server 127.0.0.1:$A_PORT; keepalive 64; }
  upstream b { server 127.0.0.1:$BACKEND; keepalive 64; }
  server {
    listen 127.0.0.1:$HTTP backlog=4096;
    server_name a.test;
    location / { $limit proxy_pass http://a; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_read_timeout 60s; }
  }
  server {
    listen 127.0.0.1:$HTTP;
    server_name b.test;
    location / { $limit proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection ""; }
  }
}
CONF
  taskset -c 0 nginx -p "$W" -c "$W/nginx.conf" -e "$W/nginx.err" -g 'daemon off;' >"$W/nginx.out" 2>&1 &
  PIDS+=($!)
}
start_haproxy() {
  local maxconn="" 
  [ "$LIMITS" = on ] && maxconn="maxconn 1000"
  cat >"$W/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn 9000
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout queue 5s
  option http-keep-alive
frontend f
  bind 127.0.0.1:$HTTP
  use_backend a if { hdr_beg(host) -i a.test }   # pier-load sends "a.test:PORT"
  default_backend b
backend a
  server s 127.0.0.1:$A_PORT $maxconn
backend b
  server s 127.0.0.1:$BACKEND
CONF
  taskset -c 0 haproxy -f "$W/haproxy.cfg" -db >"$W/haproxy.out" 2>&1 &
  PIDS+=($!)
}
case "$SERVER" in
  nginx) start_nginx ;;
  haproxy) start_haproxy ;;
  pier) ;;
  *) echo "SERVER must be pier, nginx or haproxy" >&2; exit 2 ;;
esac
[ "$SERVER" = pier ] && {
bench_tls_balancer "$HTTP" "$HTTPS" "$BACKEND"
cat >"$W/routes.toml" <<ROUTES
[[app]]
name = "a"
domains = ["a.test"]
backends = ["127.0.0.1:$A_PORT"]
[[app]]
name = "b"
domains = ["b.test"]
backends = ["127.0.0.1:$BACKEND"]
ROUTES
taskset -c 0 "$BIN" --config "$W/balancer.toml" >"$W/pier.out" 2>&1 &
PIDS+=($!)
}
# The proxy measured: for nginx its worker (the master holds no connection).
proxy_pid() {
  if [ "$SERVER" = nginx ]; then pgrep -P "${PIDS[-1]}" | head -1; else echo "${PIDS[-1]}"; fi
}
bench_expect_200 "http://127.0.0.1:$BACKEND/"
[ "$A_BACKEND" = fast ] && bench_expect_200 "http://127.0.0.1:$A_PORT/"
bench_expect_200 "http://127.0.0.1:$HTTP/" b.test

b_load() { # NAME
  "${RT[@]}" taskset -c 1 "$LOAD" -t1 -c50 -R "$B_RATE" -d "$DURATION" --no-progress --timeout 5s \
    -H "Host: b.test" --json "$W/$1.json" "http://127.0.0.1:$HTTP/" >/dev/null 2>&1 || true
}
FLOOD_PORT=$HTTP
case "$FLOOD_TO" in
  proxy) ;;
  control)
    FLOOD_PORT=$(bench_free_port)
    BENCH_BACKEND_RETURN='503 "overloaded\n"' bench_backend "$FLOOD_PORT" 1 control
    ;;
  *) echo "FLOOD_TO must be proxy or control" >&2; exit 2 ;;
esac
a_flood() {
  taskset -c 1 "$LOAD" -t1 -c "$A_CONNS" -R "$A_RATE" -d "$FLOOD_DURATION" --no-progress \
    --timeout 30s -H "Host: a.test" --json "$W/flood.json" "http://127.0.0.1:$FLOOD_PORT/" >/dev/null 2>&1 || true
}
summary() { # FILE LABEL
  python3 - "$1" "$2" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
lat = r["latency_us"]["corrected"]["percentiles"]
st = r["status"]
non2xx = sum(v for k, v in st.items() if not k.startswith("2")) if isinstance(st, dict) else 0
print(f"{sys.argv[2]:<14} responses={r['requests']['responses']:>7} failed={r['errors']['failed_total']:>5} "
      f"non2xx={non2xx:>5} p50={lat['50']/1000:7.2f}ms p99={lat['99']/1000:8.2f}ms")
PY
}
flood_summary() {
  python3 - "$W/flood.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{'  flood (A)':<14} responses={r['requests']['responses']:>7} failed={r['errors']['failed_total']:>5} status={json.dumps(r['status'])}")
PY
}
echo "$SERVER ($([ "$SERVER" = pier ] && echo "$BIN")), limits $LIMITS, apparatus $APPARATUS, flood to $FLOOD_TO, B at $B_RATE req/s, A ($A_BACKEND backend) at $A_RATE req/s over $A_CONNS connections, $DURATION per run"
for r in $(seq "$ROUNDS"); do
  b_load "alone$r"
  summary "$W/alone$r.json" "B alone"
  a_flood &
  FLOOD=$!
  sleep 1
  b_load "flood$r"
  wait "$FLOOD" || true
  summary "$W/flood$r.json" "B with flood"
  flood_summary
  pp=$(proxy_pid)
  echo "  proxy RSS $(ps -o rss= -p "$pp") KiB, open fds $(ls /proc/"$pp"/fd | wc -l)"
  sleep 2
done
python3 - "$W" "$ROUNDS" <<'PY'
import json, statistics, sys
w, n = sys.argv[1], int(sys.argv[2])
p99 = lambda f: json.load(open(f"{w}/{f}.json"))["latency_us"]["corrected"]["percentiles"]["99"] / 1000
alone = statistics.median(p99(f"alone{i}") for i in range(1, n + 1))
flood = statistics.median(p99(f"flood{i}") for i in range(1, n + 1))
print(f"median B p99: alone {alone:.2f} ms, with the flood {flood:.2f} ms, ratio {flood / alone:.2f}")
PY
