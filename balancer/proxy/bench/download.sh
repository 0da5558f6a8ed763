#!/usr/bin/env bash
# Large downloads through pier-balancer: throughput and the balancer's CPU per GiB relayed, for
# one or more builds side by side (rounds interleaved).
#
#   bash balancer/proxy/bench/download.sh BINARY [BINARY...]
#   ROUNDS=5 FETCHES=40 CONNS=4 bash balancer/proxy/bench/download.sh /tmp/a /tmp/b
#
# One nginx worker on CPU 1 serves a 50 MB file; each BINARY in turn runs on CPU 0 (the
# bench_tls_balancer configuration, plain HTTP); CONNS curl loops on CPU 1 fetch the file
# FETCHES times in all, discarding it. Per run: GiB/s through the balancer (wall clock) and its
# CPU seconds (user + system, from /proc) per GiB relayed. Medians at the end.
# (curl, not pier-load: pier-load is built for many small answers, and drains a 50 MB body far
# slower than a proxy relays it.)
# Needs: nginx, curl, python3, taskset.
set -euo pipefail
cd "$(dirname "$0")/../../.."
[ $# -ge 1 ] || { echo "usage: download.sh BINARY [BINARY...]" >&2; exit 2; }
ROUNDS=${ROUNDS:-3}
FETCHES=${FETCHES:-40}
CONNS=${CONNS:-4}
BINS=()
for b in "$@"; do BINS+=("$(realpath "$b")"); done
. balancer/proxy/bench/lib.sh
bench_workdir download
bench_cert
BACKEND=$(bench_free_port)
mkdir -p "$W/www"
chmod 755 "$W"   # nginx's worker (nobody) reads the file
head -c 50000000 /dev/urandom >"$W/www/big"
cat >"$W/backend.conf" <<CONF
worker_processes 1;
pid $W/backend.pid;
events { worker_connections 4096; }
http {
$(bench_nginx_http_basics)
  sendfile on;
  server { listen 127.0.0.1:$BACKEND backlog=4096; root $W/www; }
}
CONF
taskset -c 1 nginx -p "$W" -c "$W/backend.conf" -e "$W/backend.err" -g 'daemon off;' >"$W/backend.out" 2>&1 &
PIDS+=($!)

cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
run() { # BINARY INDEX ROUND
  local http https pid before after
  http=$(bench_free_port) https=$(bench_free_port)
  bench_tls_balancer "$http" "$https" "$BACKEND"
  taskset -c 0 "$1" --config "$W/balancer.toml" >"$W/pier.out" 2>&1 &
  pid=$!
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$http") 2>/dev/null && break
    sleep 0.1
  done
  before=$(cpu_ticks "$pid")
  local start end c loops=()
  start=$(date +%s.%N)
  for c in $(seq "$CONNS"); do
    taskset -c 1 bash -c 'for _ in $(seq "$1"); do
        curl -sf -o /dev/null -H "Host: bench.test" "http://127.0.0.1:$2/big" || exit 1
      done' _ $((FETCHES / CONNS)) "$http" &
    loops+=($!)
  done
  for c in "${loops[@]}"; do wait "$c" || echo "a fetch failed (run $2, round $3)" >&2; done
  end=$(date +%s.%N)
  after=$(cpu_ticks "$pid")
  echo "$start $end $(( (FETCHES / CONNS) * CONNS ))" >"$W/time$2-$3"
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  echo $((after - before)) >"$W/cpu$2-$3"
}
for r in $(seq "$ROUNDS"); do
  for i in "${!BINS[@]}"; do run "${BINS[$i]}" "$i" "$r"; done
done
python3 - "$W" "$ROUNDS" "$(getconf CLK_TCK)" "${BINS[@]}" <<'PY'
import statistics, sys
w, rounds, hz, bins = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
print(f"{'binary':<40} {'GiB/s':>7} {'cpu s/GiB':>10}   (per round)")
for i, b in enumerate(bins):
    rates, cpus = [], []
    for r in range(1, rounds + 1):
        start, end, fetches = open(f"{w}/time{i}-{r}").read().split()
        gib = int(fetches) * 50_000_000 / 2**30
        rates.append(gib / (float(end) - float(start)))
        cpus.append(int(open(f"{w}/cpu{i}-{r}").read()) / hz / gib if gib else float("nan"))
    print(f"{b[-40:]:<40} {statistics.median(rates):7.2f} {statistics.median(cpus):10.3f}   "
          + " ".join(f"{x:.2f}/{y:.3f}" for x, y in zip(rates, cpus)))
PY
