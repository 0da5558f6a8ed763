#!/usr/bin/env bash
# Memory of idle HTTP/1.1 keep-alive connections: RSS growth of pier-balancer per connection.
#
#   bash balancer/proxy/bench/idle-memory.sh [BINARY]     # N=6000 per batch by default
#
# Starts one nginx backend and the balancer (the compare-run.sh configuration: 1000 apps, one
# worker), then two batches of N client connections that each send one request, read the
# answer and stay open. The first batch's growth includes what the allocator keeps after the
# first requests; the second batch's growth, measured 4 s after it opened (past the balancer's
# one-second idle release of buffers), is the steady cost of one more idle connection.
# Needs: nginx, python3; N must fit the open-file limit (ulimit -n) twice over.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../../.." && pwd)
# cargo builds into $CARGO_TARGET_DIR when it is set (relative to the repository root here).
target=$(cd "$root" && realpath -m "${CARGO_TARGET_DIR:-target}")
BIN=${1:-$target/release/pier-balancer}
N=${N:-6000}
BACKEND_PORT=${BACKEND_PORT:-29301}
PORT=${PORT:-29370}
. "$here/lib.sh"
bench_workdir idle
bench_hosts "$W/hosts.txt" "$BACKEND_PORT"
cat >"$W/hold.py" <<'PY'
import resource, socket, sys, time
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
n, port, host, hold = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
socks = []
for _ in range(n):
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    socks.append(s)
ok = sum(1 for s in socks if s.recv(65536).startswith(b"HTTP/1.1 200"))
print(f"{ok} of {n} answered", flush=True)
time.sleep(hold)
PY
bench_backend "$BACKEND_PORT"
PIER_BALANCER=$BIN setsid bash "$here/compare-run.sh" "$PORT" "$W/hosts.txt" >"$W/pier.out" 2>&1 &
PIDS+=($!)
sleep 2
pid=$(pgrep -f "^$BIN --config" | head -1)
[ -n "$pid" ] || { echo "balancer did not start" >&2; cat "$W/pier.out" >&2; exit 1; }
rss() { awk '/^VmRSS/ { print $2 }' "/proc/$pid/status"; }
r0=$(rss)
python3 "$W/hold.py" "$N" "$PORT" h1.bench.test 14 &
PIDS+=($!)
sleep 5
r1=$(rss)
python3 "$W/hold.py" "$N" "$PORT" h2.bench.test 6 &
PIDS+=($!)
sleep 5
r2=$(rss)
awk -v n="$N" -v a="$r0" -v b="$r1" -v c="$r2" 'BEGIN {
  printf "RSS KiB: start %d, after batch 1 %d, after batch 2 %d\n", a, b, c
  printf "per idle connection: batch 1 %.1f KiB, batch 2 %.1f KiB\n", (b - a) / n, (c - b) / n }'
