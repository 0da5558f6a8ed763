#!/usr/bin/env bash
# 100,000 idle HTTP/1.1 keep-alive connections, held and closed ROUNDS times: the memory they
# cost at that scale, and whether it comes back when they close. pier-balancer, nginx and the
# tokio floor (balancer/proxy/examples/idle_floor.rs), one after the other, one table.
#
#   bash balancer/proxy/bench/conn-100k.sh [BINARY]      # TOTAL=100000 ROUNDS=10 by default
#   SERVERS=pier ROUNDS=3 bash balancer/proxy/bench/conn-100k.sh
#
# A process may hold at most `ulimit -Hn` open files, and this machine caps that at 20000
# without the capability to raise it (CAP_SYS_RESOURCE). So each server runs PROCS processes
# (default 7) that share one listening address with SO_REUSEPORT, as nginx's workers do, each
# one worker with its open-file limit raised to the hard limit; the kernel spreads connections
# among them (about TOTAL/PROCS each). The figure is the sum of their RSS:
#   pier   PROCS pier-balancer processes, `workers = 1`, the 1000 apps of compare-run.sh plus
#          bench.test, access log off, keep-alive 300 s
#   nginx  one nginx, `worker_processes PROCS`, `listen ... reuseport`, proxying to the backend
#          with keep-alive (keepalive 64); the workers' RSS (the master holds no connection)
#   floor  PROCS idle_floor processes: a task per connection, no buffer, no timer
# Behind pier and nginx, one nginx backend answering `ok`, not counted.
#
# Clients: PROCS Python processes, TOTAL/PROCS connections each, every one from its own
# loopback source address, a new one each round (127.<round>.<client>.1), so ports never run
# out and no round meets the last one's TIME_WAIT. Each connection sends one request, reads its
# answer and stays open. With all TOTAL connections held, RSS is read after SETTLE seconds
# (default 5: past pier's one-second release of an idle connection's buffers); then the clients
# close them all, and RSS is read again SETTLE seconds after the last one is gone.
#
# Printed per round: connections held, RSS held, KiB per connection (growth over the RSS before
# the first round), RSS after the close. Then the start, the last round's after-close RSS and
# their ratio: the goal is that it returns within 10 % of where it started, with no growth over
# the rounds. Kernel socket memory is in no figure.
#
# Needs: nginx, python3, the release binary and the floor example
# (cargo build --release -p pier-balancer --bins --example idle_floor). Every client gives its
# connections up after HOLD seconds at most (default 120); every process started here is
# stopped at the end. About 3 minutes per server and 10 rounds on the 2-core machine.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../../.." && pwd)
target=$(cd "$root" && realpath -m "${CARGO_TARGET_DIR:-target}")
BIN=${1:-$target/release/pier-balancer}
FLOOR=${FLOOR:-$target/release/examples/idle_floor}
TOTAL=${TOTAL:-100000}
ROUNDS=${ROUNDS:-10}
PROCS=${PROCS:-7}
SETTLE=${SETTLE:-5}
HOLD=${HOLD:-120}
SERVERS=${SERVERS:-pier nginx floor}
for t in nginx python3 ss; do
  command -v $t >/dev/null || { echo "missing $t (apt-get install -y nginx python3 iproute2)" >&2; exit 2; }
done
case " $SERVERS " in *" pier "*)
  [ -x "$BIN" ] || { echo "no $BIN (cargo build --release -p pier-balancer)" >&2; exit 2; } ;; esac
case " $SERVERS " in *" floor "*)
  [ -x "$FLOOR" ] || { echo "no $FLOOR (cargo build --release -p pier-balancer --example idle_floor)" >&2; exit 2; } ;; esac
ulimit -n "$(ulimit -Hn)"
PER=$(((TOTAL + PROCS - 1) / PROCS))
if [ $((PER * 13 / 10)) -ge "$(ulimit -n)" ]; then
  echo "TOTAL/PROCS = $PER connections per process is too close to the open-file limit $(ulimit -n): raise PROCS" >&2
  exit 2
fi
. "$here/lib.sh"
bench_workdir conn-100k
BACKEND=$(bench_free_port) PORT=$(bench_free_port)
bench_backend "$BACKEND"

cat >"$W/client.py" <<'PY'
# One client process: N connections from SOURCE to PORT, one request each, answers read, then
# held until the file RELEASE exists (or HOLD seconds pass); then all closed. Writes "ok K of N"
# to OUT once they are open.
import os, resource, socket, sys, time

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
port, source, n, out, release, hold = (int(sys.argv[1]), sys.argv[2], int(sys.argv[3]),
                                       sys.argv[4], sys.argv[5], float(sys.argv[6]))
deadline = time.monotonic() + hold
socks, err = [], ""
request = b"GET / HTTP/1.1\r\nHost: bench.test\r\n\r\n"
for _ in range(n):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
        s.sendall(request)
        got = b""
        while b"ok\n" not in got:
            chunk = s.recv(4096)
            if not chunk:
                raise ConnectionError("closed before the answer")
            got += chunk
        socks.append(s)
    except OSError as e:
        err = str(e)
with open(out + ".tmp", "w") as f:
    f.write(f"ok {len(socks)} of {n}" + (f" (last error: {err})" if err else "") + "\n")
os.replace(out + ".tmp", out)
while not os.path.exists(release) and time.monotonic() < deadline:
    time.sleep(0.2)
for s in socks:
    s.close()
PY

# The routes of compare-run.sh (1000 apps) plus bench.test.
bench_routes "$BACKEND" >"$W/routes.toml"
cat >"$W/balancer.toml" <<CONF
[listen]
http = ["127.0.0.1:$PORT"]
[routes]
file = "routes.toml"
watch = false
[runtime]
workers = 1
max_connections = 200000
[timeouts]
client_keepalive = "300s"
[log]
level = "warn"
access = false
CONF
mkdir -p "$W/nginx"
cat >"$W/nginx/nginx.conf" <<CONF
worker_processes $PROCS;
worker_rlimit_nofile $(ulimit -n);
pid $W/nginx/nginx.pid;
events { worker_connections $(ulimit -n); }
http {
  access_log off;
  client_body_temp_path $W/nginx/cb; proxy_temp_path $W/nginx/p; fastcgi_temp_path $W/nginx/f;
  uwsgi_temp_path $W/nginx/u; scgi_temp_path $W/nginx/s;
  keepalive_timeout 300s; keepalive_requests 100000000;
  proxy_http_version 1.1;
  upstream backend { server 127.0.0.1:$BACKEND; keepalive 64; keepalive_requests 100000000; keepalive_timeout 300s; }
  server {
    listen 127.0.0.1:$PORT reuseport backlog=4096;
    location / { proxy_pass http://backend; proxy_set_header Connection ""; proxy_set_header Host \$host; }
  }
}
CONF

# start SERVER: sets SRVS (the processes to stop) and MEASURED (those whose RSS counts).
start() {
  SRVS=() MEASURED=()
  case $1 in
    pier)
      for i in $(seq "$PROCS"); do
        "$BIN" --config "$W/balancer.toml" >"$W/pier-$i.out" 2>&1 &
        SRVS+=($!)
        sleep 0.2
      done
      MEASURED=("${SRVS[@]}") ;;
    nginx)
      rm -f "$W/nginx/nginx.pid"
      nginx -p "$W/nginx" -c "$W/nginx/nginx.conf" -e "$W/nginx/error.log" -g 'daemon off;' >"$W/nginx/out" 2>&1 &
      SRVS=($!)
      for _ in $(seq 50); do
        mapfile -t MEASURED < <(pgrep -P "${SRVS[0]}" || true)
        [ "${#MEASURED[@]}" -ge "$PROCS" ] && break
        sleep 0.1
      done ;;
    floor)
      for i in $(seq "$PROCS"); do
        "$FLOOR" "127.0.0.1:$PORT" >"$W/floor-$i.out" 2>&1 &
        SRVS+=($!)
      done
      MEASURED=("${SRVS[@]}") ;;
  esac
  PIDS+=("${SRVS[@]}")
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && { sleep 1; return 0; }
    sleep 0.1
  done
  echo "$1 did not start:" >&2
  cat "$W"/pier-*.out "$W"/nginx/out "$W"/nginx/error.log "$W"/floor-*.out 2>/dev/null >&2 || true
  exit 1
}

rss_kib() { # the sum of MEASURED's resident set sizes
  local p sum=0 r
  for p in "${MEASURED[@]}"; do
    r=$(awk '/^VmRSS/ { print $2 }' "/proc/$p/status" 2>/dev/null || echo 0)
    sum=$((sum + ${r:-0}))
  done
  echo "$sum"
}

established() { # connections to PORT, as the servers' side sees them
  ss -Htn state established "( sport = :$PORT )" | wc -l
}

mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

declare -A RESULT
for server in $SERVERS; do
  start "$server"
  base=$(rss_kib)
  echo "$server: $PROCS processes, RSS $(mib "$base") MiB at start" >&2
  per_round=()
  for r in $(seq "$ROUNDS"); do
    rm -f "$W"/ready-* "$W/release"
    clients=()
    for c in $(seq "$PROCS"); do
      python3 "$W/client.py" "$PORT" "127.$((r + 10)).$c.1" "$PER" "$W/ready-$c" "$W/release" "$HOLD" &
      clients+=($!)
    done
    for _ in $(seq $((HOLD * 10))); do
      [ "$(ls "$W"/ready-* 2>/dev/null | wc -l)" -ge "$PROCS" ] && break
      sleep 0.1
    done
    held=$(awk '{ n += $2 } END { print n + 0 }' "$W"/ready-* 2>/dev/null || echo 0)
    sleep "$SETTLE"
    held_rss=$(rss_kib)
    seen=$(established)
    touch "$W/release"
    for c in "${clients[@]}"; do wait "$c" 2>/dev/null || true; done
    for _ in $(seq 300); do
      [ "$(established)" -le 10 ] && break
      sleep 0.1
    done
    sleep "$SETTLE"
    after=$(rss_kib)
    per=$(awk -v a="$held_rss" -v b="$base" -v n="$held" 'BEGIN { printf "%.2f", n ? (a - b) / n : 0 }')
    line=$(printf '%-6s round %2d: held %6d (%6d established)  RSS held %7s MiB  %5s KiB/conn  after close %6s MiB' \
      "$server" "$r" "$held" "$seen" "$(mib "$held_rss")" "$per" "$(mib "$after")")
    echo "$line" >&2
    [ "$held" -ge "$TOTAL" ] || echo "  (not every connection was held: $(cat "$W"/ready-* | tr '\n' ' '))" >&2
    per_round+=("$per")
  done
  sorted=$(printf '%s\n' "${per_round[@]}" | sort -n)
  median=$(echo "$sorted" | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
  RESULT[$server]=$(printf '%-6s %12s %12s %10s %14s %8s' "$server" "$(mib "$base")" \
    "$(mib "$held_rss")" "$median" "$(mib "$after")" \
    "$(awk -v a="$after" -v b="$base" 'BEGIN { printf "%.2f", a / b }')")
  bench_stop "${SRVS[@]}"
done

echo
echo "$TOTAL idle HTTP/1.1 connections over $PROCS processes, $ROUNDS rounds ($(date -u '+%Y-%m-%d %H:%M UTC'))"
printf '%-6s %12s %12s %10s %14s %8s\n' server "start MiB" "held MiB" "KiB/conn" "after MiB" "after/start"
for server in $SERVERS; do echo "${RESULT[$server]}"; done
echo
echo "held: the last round, all connections open; KiB/conn: the median over the rounds of"
echo "(RSS held - RSS at start) / connections held; after: the last round, SETTLE s after the"
echo "last connection closed. Sums over the processes (nginx: its workers)."
