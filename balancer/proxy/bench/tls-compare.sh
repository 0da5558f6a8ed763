#!/usr/bin/env bash
# pier-balancer vs nginx over TLS, one worker each, same backend, same client (h2load):
#   - h2:         h2load -c 50 -m 10 for DURATION, HTTP/2 over TLS (ALPN)
#   - tls-h1:     h2load --h1 -c 50 -m 1 for DURATION, HTTP/1.1 keep-alive over TLS
#   - handshakes: h2load --h1, HANDSHAKES connections made as fast as the proxy takes them,
#                 one request each (full handshakes: h2load does not resume sessions)
#   - tls-h1-wrk: wrk -t1 -c 50 over TLS (OpenSSL), HTTP/1.1 keep-alive: the same load as
#                 tls-h1 from a client that spends less CPU per request than h2load
#                 (not in the default SCENARIOS; needs wrk)
#   - tls-h1-pierload: pier-load -t1 -c 50 over TLS (rustls), HTTP/1.1 keep-alive: the same
#                 load from this project's generator (not in the default SCENARIOS)
# Rounds are interleaved (nginx, pier, nginx, pier, ...); the table gives medians, the CPU
# the proxy itself spent per request (from /proc/PID/stat), per-round ratios pier/nginx, and
# the CPU the client (h2load, wrk or pier-load) spent per request against each (GNU time).
#
#   bash balancer/proxy/bench/tls-compare.sh            # REPEATS=5 DURATION=10 by default
#
# Layout: proxies on CPU 0, backend and h2load on CPU 1. On two cores the client side can be
# the bottleneck (h2load's own handshakes cost more than the server's); PROXY_QUOTA=N puts both
# proxies in a cgroup (v1 cpu controller) capped at N% of a core, so the proxy is the
# bottleneck and req/s compares capacity at equal CPU. Certificates: a fresh
# ECDSA P-256 key (the profile both use: Mozilla intermediate ciphers and curves).
# EQUAL_HEADERS=1 makes nginx add what pier adds to every proxied request and response
# (X-Forwarded-For/-Proto/-Port/-Host, X-Request-Id, X-Request-Start, Via), so both do the
# same work; by default nginx adds none of them.
# FLOOR=1 runs the floor relay (balancer/proxy/examples/floor_relay.rs: TLS, then a blind copy
# to the backend, no HTTP work at all) in pier's place: the ceiling any proxy could reach here.
# PIER_BIN=PATH runs that pier-balancer binary instead of building this tree's (to compare
# builds under the same conditions).
# Needs: nginx, h2load (nghttp2-client), openssl, taskset, GNU time (/usr/bin/time).
set -euo pipefail
cd "$(dirname "$0")/../../.."
REPEATS=${REPEATS:-5}
DURATION=${DURATION:-10}
CONNS=${CONNS:-50}
HANDSHAKES=${HANDSHAKES:-20000}
SCENARIOS=${SCENARIOS:-h2 tls-h1 handshakes}
BACKEND_PORT=${BACKEND_PORT:-29101}
NGINX_PORT=${NGINX_PORT:-29443}
PIER_PORT=${PIER_PORT:-29444}
PIER_HTTP=${PIER_HTTP:-29480}
PROXY_CPU=${PROXY_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
[ -x /usr/bin/time ] || { echo "missing /usr/bin/time (apt-get install -y time)" >&2; exit 2; }
for t in nginx h2load openssl taskset awk; do
  command -v $t >/dev/null || { echo "missing $t (apt-get install -y nginx nghttp2-client openssl)" >&2; exit 2; }
done
PIER_BIN=${PIER_BIN:-}
if [ -z "$PIER_BIN" ]; then
  cargo build --release -q -p pier-balancer
  PIER_BIN=${CARGO_TARGET_DIR:-target}/release/pier-balancer
fi
[ "${FLOOR:-0}" = 1 ] && cargo build --release -q -p pier-balancer --example floor_relay
case " $SCENARIOS " in *" tls-h1-pierload "*) cargo build --release -q -p pier-load ;; esac
. balancer/proxy/bench/lib.sh
bench_workdir tls-bench
CG=""
bench_on_exit() { if [ -n "$CG" ]; then rmdir "$CG" 2>/dev/null || true; fi; }
bench_cert
bench_backend "$BACKEND_PORT" "$CLIENT_CPU"
EXTRA_NGINX=""
if [ "${EQUAL_HEADERS:-0}" = 1 ]; then
  EXTRA_NGINX='      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Port $server_port;
      proxy_set_header X-Forwarded-Host $host;
      proxy_set_header X-Request-Id $request_id;
      proxy_set_header X-Request-Start "t=${msec}";
      proxy_set_header Via "1.1 nginx";
      add_header Via "1.1 nginx";'
fi
cat > "$W/nginx.conf" <<CONF
worker_processes 1;
pid $W/nginx.pid;
events { worker_connections 65536; }
http {
  access_log off;
  keepalive_timeout 65; keepalive_requests 100000000; tcp_nodelay on;
  http2_max_concurrent_streams 128;
  upstream backend { server 127.0.0.1:$BACKEND_PORT; keepalive 64; keepalive_requests 100000000; }
  server {
    listen 127.0.0.1:$NGINX_PORT ssl http2 backlog=4096;
    server_name bench.test;
    ssl_certificate $W/cert.pem;
    ssl_certificate_key $W/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ecdh_curve X25519:prime256v1:secp384r1;
    ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305;
    ssl_prefer_server_ciphers off;
    ssl_session_cache shared:SSL:10m;
    location / {
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
$EXTRA_NGINX
    }
  }
}
CONF
bench_tls_balancer "$PIER_HTTP" "$PIER_PORT" "$BACKEND_PORT"

taskset -c "$PROXY_CPU" nginx -p "$W" -c "$W/nginx.conf" -g 'daemon off;' >"$W/nginx.out" 2>&1 &
PIDS+=($!)
if [ "${FLOOR:-0}" = 1 ]; then
  taskset -c "$PROXY_CPU" "${CARGO_TARGET_DIR:-target}"/release/examples/floor_relay "127.0.0.1:$PIER_PORT" \
    "127.0.0.1:$BACKEND_PORT" "$W/cert.pem" "$W/key.pem" >"$W/pier.out" 2>&1 &
else
  taskset -c "$PROXY_CPU" "$PIER_BIN" --config "$W/balancer.toml" >"$W/pier.out" 2>&1 &
fi
PIDS+=($!)
sleep 1
nginx_worker=$(pgrep -P "$(cat "$W/nginx.pid")" | head -1)
pier_pid=${PIDS[2]}
if [ -n "${PROXY_QUOTA:-}" ]; then
  CG=/sys/fs/cgroup/cpu/pier-tls-bench-$$
  mkdir "$CG"
  echo 100000 >"$CG/cpu.cfs_period_us"
  echo $((PROXY_QUOTA * 1000)) >"$CG/cpu.cfs_quota_us"
  for p in "$(cat "$W/nginx.pid")" "$nginx_worker" "$pier_pid"; do echo "$p" >"$CG/cgroup.procs"; done
fi

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tick_hz=$(getconf CLK_TCK)

# run TARGET SCENARIO -> prints "reqs_per_s cpu_us_per_req ok_requests"
run() {
  local port pid
  if [ "$1" = nginx ]; then port=$NGINX_PORT pid=$nginx_worker; else port=$PIER_PORT pid=$pier_pid; fi
  local url="https://bench.test/" args
  case $2 in
    h2) args=(-c "$CONNS" -m 10 -D "$DURATION") ;;
    tls-h1) args=(--h1 -c "$CONNS" -m 1 -D "$DURATION") ;;
    handshakes) args=(--h1 -c "$HANDSHAKES" -n "$HANDSHAKES" -r 100 --rate-period 10ms) ;;
    tls-h1-wrk | tls-h1-pierload) args=() ;;
  esac
  local before after out rps ok
  before=$(cpu_ticks "$pid")
  if [ "$2" = tls-h1-wrk ]; then
    out=$(/usr/bin/time -f "%U %S" -o "$W/client.time" taskset -c "$CLIENT_CPU" wrk -t1 -c "$CONNS" -d "${DURATION}s" -H "Host: bench.test" \
      "https://127.0.0.1:$port/" 2>&1)
    after=$(cpu_ticks "$pid")
    rps=$(echo "$out" | awk '/^Requests\/sec:/ {print $2}')
    ok=$(echo "$out" | awk '/requests in/ {t = $1} /Non-2xx/ {b = $NF} END {print t - b}')
  elif [ "$2" = tls-h1-pierload ]; then
    out=$(/usr/bin/time -f "%U %S" -o "$W/client.time" taskset -c "$CLIENT_CPU" "${CARGO_TARGET_DIR:-target}"/release/pier-load -t1 -c "$CONNS" -d "${DURATION}s" -k \
      --connect-to "127.0.0.1:$port" "$url" 2>&1)
    after=$(cpu_ticks "$pid")
    rps=$(echo "$out" | awk '/^Requests\/sec:/ {print $2}')
    ok=$(echo "$out" | awk '/requests in/ {t = $1} /Non-2xx/ {b = $NF} END {print t - b}')
  else
    out=$(/usr/bin/time -f "%U %S" -o "$W/client.time" taskset -c "$CLIENT_CPU" h2load -t 1 "${args[@]}" --connect-to "127.0.0.1:$port" "$url" 2>&1)
    after=$(cpu_ticks "$pid")
    rps=$(echo "$out" | awk '/^finished in/ {gsub(",","",$4); print $4}')
    ok=$(echo "$out" | awk '/^status codes:/ {print $3}')
  fi
  echo "$out" >>"$W/h2load.log"
  if [ -z "$rps" ] || [ "${ok:-0}" = 0 ]; then
    echo "h2load against $1 ($2) gave no answers:" >&2; echo "$out" | tail -5 >&2
    cat "$W/nginx.out" "$W/pier.out" >&2; exit 1
  fi
  local client
  client=$(awk '{ print $1 + $2 }' "$W/client.time")
  awk -v r="$rps" -v ok="$ok" -v t=$((after - before)) -v hz="$tick_hz" -v c="$client" \
    'BEGIN { printf "%.0f %.1f %d %.1f\n", r, (ok > 0 ? t * 1e6 / hz / ok : 0), ok, (ok > 0 ? c * 1e6 / ok : 0) }'
}

# Warm-up.
for tgt in nginx pier; do
  taskset -c "$CLIENT_CPU" h2load -t 1 -c 10 -n 2000 --connect-to "127.0.0.1:$([ $tgt = nginx ] && echo $NGINX_PORT || echo $PIER_PORT)" https://bench.test/ >/dev/null 2>&1 || true
done

echo "tls-compare: FLOOR=${FLOOR:-0} EQUAL_HEADERS=${EQUAL_HEADERS:-0} REPEATS=$REPEATS DURATION=${DURATION}s CONNS=$CONNS HANDSHAKES=$HANDSHAKES PROXY_QUOTA=${PROXY_QUOTA:-none}% layout: proxies on CPU $PROXY_CPU, backend + h2load on CPU $CLIENT_CPU"
for sc in $SCENARIOS; do
  : >"$W/$sc.nginx"; : >"$W/$sc.pier"; : >"$W/$sc.ratio"
  for i in $(seq "$REPEATS"); do
    n=$(run nginx "$sc"); p=$(run pier "$sc")
    echo "$n" >>"$W/$sc.nginx"; echo "$p" >>"$W/$sc.pier"
    awk -v n="$n" -v p="$p" 'BEGIN { split(n, a, " "); split(p, b, " "); printf "%.3f %.3f\n", b[1] / a[1], (a[2] > 0 ? b[2] / a[2] : 0) }' >>"$W/$sc.ratio"
    echo "  $sc round $i: nginx $n | pier $p" >&2
  done
  med() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
  printf "%-11s nginx %8s req/s %7s us/req | pier %8s req/s %7s us/req | ratio req/s %s cpu %s | client us/req %s %s\n" "$sc" \
    "$(cut -d' ' -f1 "$W/$sc.nginx" | med)" "$(cut -d' ' -f2 "$W/$sc.nginx" | med)" \
    "$(cut -d' ' -f1 "$W/$sc.pier" | med)" "$(cut -d' ' -f2 "$W/$sc.pier" | med)" \
    "$(cut -d' ' -f1 "$W/$sc.ratio" | med)" "$(cut -d' ' -f2 "$W/$sc.ratio" | med)" \
    "$(cut -d' ' -f4 "$W/$sc.nginx" | med)" "$(cut -d' ' -f4 "$W/$sc.pier" | med)"
done
