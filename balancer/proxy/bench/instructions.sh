#!/usr/bin/env bash
# Instructions per proxied request, counted by callgrind: a figure that does not move with the
# load on a shared machine (the same binary and load give the same count), for comparing
# builds of the request path. Timings and req/s are in tls-compare.sh, ab.sh and compare.sh.
#
#   bash balancer/proxy/bench/instructions.sh [BINARY]     # N=60000 SCHEME=https by default
#
# Runs BINARY (default: this tree's release build) under `valgrind --tool=callgrind` on CPU 0
# in front of one nginx backend on CPU 1 (one worker each, the tls-compare.sh configuration),
# sends 2,000 warm-up requests with h2load, zeroes the counters, sends N more over 50
# keep-alive connections (HTTP/1.1, over TLS unless SCHEME=http), and prints the instructions
# the balancer process executed per request (the 50 handshakes included) and the functions
# that executed the most of them (their own instructions, not their callees').
# Needs: valgrind, nginx, h2load (nghttp2-client), openssl, taskset, python3.
set -euo pipefail
cd "$(dirname "$0")/../../.."
N=${N:-60000}
SCHEME=${SCHEME:-https}
TOP=${TOP:-25}
BACKEND_PORT=${BACKEND_PORT:-29301}
HTTPS_PORT=${HTTPS_PORT:-29344}
HTTP_PORT=${HTTP_PORT:-29380}
for t in valgrind callgrind_control nginx h2load openssl taskset python3; do
  command -v $t >/dev/null || { echo "missing $t (apt-get install -y valgrind nginx nghttp2-client)" >&2; exit 2; }
done
BIN=${1:-}
if [ -z "$BIN" ]; then
  cargo build --release -q -p pier-balancer
  BIN=${CARGO_TARGET_DIR:-target}/release/pier-balancer
fi
BIN=$(realpath "$BIN")
. balancer/proxy/bench/lib.sh
bench_workdir instr
bench_cert
bench_backend "$BACKEND_PORT" 1
bench_tls_balancer "$HTTP_PORT" "$HTTPS_PORT" "$BACKEND_PORT"
taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$W/cg.out" --compress-strings=no \
  --compress-pos=no "$BIN" --config "$W/balancer.toml" >"$W/pier.out" 2>&1 &
VG=$!
PIDS+=($VG)
if [ "$SCHEME" = https ]; then
  URL=https://bench.test/ PORT=$HTTPS_PORT
else
  URL=http://bench.test/ PORT=$HTTP_PORT
fi
load() { taskset -c 1 h2load --h1 -t 1 -c 50 -n "$1" --connect-to "127.0.0.1:$PORT" "$URL"; }
# Under valgrind the balancer takes a few seconds to start listening.
for _ in $(seq 120); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
  sleep 0.5
done
load 2000 >/dev/null
callgrind_control -z "$VG" >/dev/null 2>&1
out=$(load "$N")
ok=$(echo "$out" | awk '/^status codes:/ {print $3}')
[ "$ok" = "$N" ] || { echo "only ${ok:-0} of $N requests answered 2xx:" >&2; echo "$out" | tail -4 >&2; exit 1; }
callgrind_control -d "$VG" >/dev/null 2>&1
sleep 1
python3 - "$N" "$TOP" "$W"/cg.out.* <<'PY'
import collections, sys
reqs, top, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
own = collections.Counter()
fn, after_call = None, False
for line in open(path):
    if line.startswith("fn="):
        fn = line[3:].strip()
    elif line.startswith("calls="):
        after_call = True  # the next cost line is the callee's, not this function's
    elif line[:1].isdigit() or line[:1] in "+-*":
        parts = line.split()
        if len(parts) >= 2:
            if after_call:
                after_call = False
            else:
                own[fn] += int(parts[1])
total = sum(own.values())
print(f"instructions per request: {total / reqs:.0f}  ({total} for {reqs} requests)")
for name, n in own.most_common(top):
    print(f"{n / reqs:8.0f} {100 * n / total:5.1f}%  {name[:110]}")
PY
