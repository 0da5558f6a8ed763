#!/usr/bin/env bash
# Router lines and stats at full load, side by side in one run: two release pier-balancers on the
# same Redis registry (1000 apps h<i>.bench.test, one nginx backend), one with [telemetry] off,
# one with router lines and stats on, loaded in interleaved rounds by pier-load (closed model,
# 1 thread, 50 connections, Host rotated over the 1000 names). Split layout as compare.sh: the
# balancers on CPU 0; pier-load, nginx and Redis on CPU 1.
#
# Prints per round req/s, the balancer's CPU ms per 1000 requests (its writer thread included)
# and Redis's, then the medians and the on/off ratios.
#
#   balancer/proxy/bench/router-lines.sh            (REPEATS=5 DURATION=10s by default)
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../../.." && pwd)
source "$here/lib.sh"
REPEATS=${REPEATS:-5}
DURATION=${DURATION:-10s}
cd "$root"
cargo build --release -p pier-balancer -p pier-load >&2
cargo build --release -p pier-registry --example registry_fill >&2
bin=$(realpath -m "${CARGO_TARGET_DIR:-target}/release")
bench_workdir router-lines
backend=$(bench_free_port) redis_port=$(bench_free_port) off=$(bench_free_port) on=$(bench_free_port) admin=$(bench_free_port)
bench_backend "$backend" 1
taskset -c 1 redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >"$W/redis.log" 2>&1 &
PIDS+=($!)
redis_pid=$!
until redis-cli -p "$redis_port" ping >/dev/null 2>&1; do sleep 0.05; done
"$bin/examples/registry_fill" "redis://127.0.0.1:$redis_port/0" 1000 "127.0.0.1:$backend" >/dev/null

balancer() { # NAME PORT TELEMETRY-TOML ADMIN-PORT
  cat >"$W/$1.toml" <<CONF
[listen]
http = ["127.0.0.1:$2"]
[admin]
listen = "127.0.0.1:$4"
[routes]
redis = "redis://127.0.0.1:$redis_port/0"
snapshot_file = ""
[runtime]
workers = 1
max_connections = 200000
[log]
level = "warn"
access = false
[telemetry]
$3
CONF
  taskset -c 0 "$bin/pier-balancer" --config "$W/$1.toml" >"$W/$1.log" 2>&1 &
  PIDS+=($!)
  eval "${1}_pid=$!"
}
balancer off "$off" $'router_lines = false\nstats = false' "$(bench_free_port)"
balancer on "$on" $'router_lines = true\nstats = true\nid = "bench"' "$admin"
for p in "$off" "$on"; do
  for _ in $(seq 100); do curl -sf -o /dev/null -H "Host: h1.bench.test" "http://127.0.0.1:$p/" && break; sleep 0.1; done
  curl -sf -o /dev/null -H "Host: h1.bench.test" "http://127.0.0.1:$p/" || { echo "balancer on $p does not serve" >&2; exit 1; }
done

cpu_ms() { awk '{ print ($14 + $15) * 10 }' "/proc/$1/stat"; }
run() { # NAME PORT PID [RATE] -> "rps cpu_ms_per_1000 redis_ms_per_1000"
  local b0 r0 b1 r1 rate=()
  [ -n "${4:-}" ] && rate=(-R "$4")
  b0=$(cpu_ms "$3"); r0=$(cpu_ms "$redis_pid")
  taskset -c 1 "$bin/pier-load" -t 1 -c 50 -d "$DURATION" --no-progress "${rate[@]}" \
    --host-pattern 'h{0..999}.bench.test' --json "$W/$1.json" "http://127.0.0.1:$2/" >/dev/null
  b1=$(cpu_ms "$3"); r1=$(cpu_ms "$redis_pid")
  python3 - "$W/$1.json" "$b0" "$b1" "$r0" "$r1" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
n = r["requests"]["responses"]
b = float(sys.argv[3]) - float(sys.argv[2]); rd = float(sys.argv[5]) - float(sys.argv[4])
assert r["errors"]["failed_total"] == 0, r["errors"]
print(f'{r["requests"]["rps"]:.0f} {b * 1000 / n:.1f} {rd * 1000 / n:.1f}')
PY
}

rounds() { # FILE [RATE]: REPEATS interleaved off/on rounds, printed and kept in FILE, then medians
  printf "%-6s %-4s %10s %16s %16s\n" round mode req/s "cpu ms/1k req" "redis ms/1k req"
  : >"$1"
  for i in $(seq 1 "$REPEATS"); do
    for mode in off on; do
      port=${!mode}; pid_var="${mode}_pid"
      read -r rps cpu rcpu < <(run "$mode" "$port" "${!pid_var}" "${2:-}")
      printf "%-6s %-4s %10s %16s %16s\n" "$i" "$mode" "$rps" "$cpu" "$rcpu"
      echo "$i $mode $rps $cpu $rcpu" >>"$1"
    done
  done
  python3 - "$1" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
def med(mode, col):
    return statistics.median(float(r[col]) for r in rows if r[1] == mode)
ratios = [float(b[2]) / float(a[2]) for a, b in zip(rows[0::2], rows[1::2])]
cpu = [float(b[3]) / float(a[3]) for a, b in zip(rows[0::2], rows[1::2])]
print(f"median req/s: off {med('off', 2):.0f}, on {med('on', 2):.0f}; per-round on/off ratio: median {statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})")
print(f"median balancer CPU ms per 1000 requests: off {med('off', 3):.1f}, on {med('on', 3):.1f} (per-round on/off median {statistics.median(cpu):.3f}); Redis with lines on: {med('on', 4):.1f}")
PY
}

echo "# router lines on/off ($(date -u +%FT%TZ), $(nproc) cores, release build, $REPEATS rounds of $DURATION)"
rounds "$W/results"
# The same at a fixed rate both balancers sustain: what a request costs the balancer when it is
# not saturated (at full load, Redis's work on CPU 1 also slows the load generator and backend).
RATE=${RATE:-20000}
echo "# at a fixed $RATE req/s (open model)"
rounds "$W/fixed" "$RATE"
lines=$(redis-cli -p "$redis_port" eval "local n = 0 for _, k in ipairs(redis.call('keys', 'pier:logs:*')) do n = n + redis.call('xlen', k) end return n" 0)
dropped=$(curl -s "http://127.0.0.1:$admin/metrics" 2>/dev/null | awk '/^pier_telemetry_dropped_total/ { print $2 }')
echo "router lines in the streams at the end (capped at ~10,000 per app): $lines"
written=$(curl -s "http://127.0.0.1:$admin/metrics" 2>/dev/null | awk '/^pier_router_lines_total/ { print $2 }')
echo "balancer with lines on: pier_router_lines_total $written, pier_telemetry_dropped_total $dropped"
