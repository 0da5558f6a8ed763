#!/usr/bin/env bash
# A/B of two pier-balancer binaries on the same core: CPU per request, the figure that moves
# when the request path changes (req/s in ../shared/bench/compare.sh is capped by the generator
# core on a two-core machine).
#
#   bash balancer/proxy/bench/ab.sh OLD_BINARY NEW_BINARY     # ROUNDS=7 DURATION=8 by default
#
# Both binaries run at once on CPU 0 with the configuration compare-run.sh writes (1000 apps,
# one worker, access log off), in front of one nginx backend on CPU 1; wrk (-t1 -c50, Host
# rotated over the 1000 names, on CPU 1) drives them in alternation, A then B, ROUNDS times.
# Each line gives req/s and the CPU milliseconds each balancer process spent per 1000 requests
# (from /proc/PID/stat); the last line is the median of the per-round ratios B/A.
# Needs: nginx, wrk, taskset.
set -euo pipefail
A=${1:?usage: ab.sh OLD_BINARY NEW_BINARY}
B=${2:?usage: ab.sh OLD_BINARY NEW_BINARY}
ROUNDS=${ROUNDS:-7}
DURATION=${DURATION:-8}
BACKEND_PORT=${BACKEND_PORT:-29201}
PORT_A=${PORT_A:-29270}
PORT_B=${PORT_B:-29272}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
for t in nginx wrk taskset awk; do
  command -v $t >/dev/null || { echo "missing $t (apt-get install -y nginx wrk)" >&2; exit 2; }
done
. "$here/lib.sh"
bench_workdir ab
bench_hosts "$W/hosts.txt" "$BACKEND_PORT"
cat >"$W/hosts.lua" <<'LUA'
local reqs, n, i = {}, 1000, 0
function init(args)
  for k = 1, n do reqs[k] = wrk.format("GET", "/", { ["Host"] = "h" .. ((k * 7919) % n) .. ".bench.test" }) end
end
function request() i = i + 1; if i > n then i = 1 end; return reqs[i] end
function done(s) io.write(string.format("RESULT %.1f\n", s.requests / (s.duration / 1e6))) end
LUA
bench_backend "$BACKEND_PORT" 1
PIER_BALANCER=$A setsid taskset -c 0 bash "$here/compare-run.sh" "$PORT_A" "$W/hosts.txt" >"$W/a.out" 2>&1 &
PIDS+=($!)
PIER_BALANCER=$B setsid taskset -c 0 bash "$here/compare-run.sh" "$PORT_B" "$W/hosts.txt" >"$W/b.out" 2>&1 &
PIDS+=($!)
sleep 2
pid_a=$(pgrep -f "^$A --config" | head -1)
pid_b=$(pgrep -f "^$B --config" | head -1)
[ -n "$pid_a" ] && [ -n "$pid_b" ] || { echo "a balancer did not start" >&2; cat "$W/a.out" "$W/b.out" >&2; exit 1; }
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
one() { # port pid -> "req/s cpu_ms_per_1k"
  local t0 t1 rps
  t0=$(ticks "$2")
  rps=$(taskset -c 1 wrk -t1 -c50 -d"${DURATION}s" -s "$W/hosts.lua" "http://127.0.0.1:$1/" | awk '/^RESULT/ { print $2 }')
  t1=$(ticks "$2")
  awk -v r="$rps" -v t=$((t1 - t0)) -v hz="$hz" -v d="$DURATION" 'BEGIN { printf "%.0f %.3f", r, t * 1000 / hz / (r * d / 1000) }'
}
one "$PORT_A" "$pid_a" >/dev/null
one "$PORT_B" "$pid_b" >/dev/null
: >"$W/ratios"
for i in $(seq "$ROUNDS"); do
  a=$(one "$PORT_A" "$pid_a")
  b=$(one "$PORT_B" "$pid_b")
  echo "round $i  A $a  B $b"
  awk -v a="$a" -v b="$b" 'BEGIN { split(a, x, " "); split(b, y, " "); print y[2] / x[2] }' >>"$W/ratios"
done
sort -n "$W/ratios" | awk '{ v[NR] = $1 } END { m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
  printf "CPU per request B/A: median %.3f of %d rounds (min %.3f, max %.3f)\n", m, NR, v[1], v[NR] }'
