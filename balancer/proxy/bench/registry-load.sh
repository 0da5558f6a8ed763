#!/usr/bin/env bash
# Registry load benchmark: fills a dedicated redis-server with N apps, starts the
# release pier-balancer on it, and prints full-load time, RSS and propagation (see
# docs/benchmarks/registry.md), with its own redis-server and nginx backend on free ports.
# usage: balancer/proxy/bench/registry-load.sh N  -- fills a fresh redis with N apps, starts the
# balancer on it, measures full-load time, RSS and propagation.
set -euo pipefail
N=$1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/lib.sh"
bench_registry registry
bench_on_exit() { redis-cli -p "$REDIS" shutdown nosave >/dev/null 2>&1 || true; }
redis-server --port $REDIS --bind 127.0.0.1 --save "" --appendonly no --daemonize yes --pidfile "$W/redis.pid" --logfile "$W/redis.log"
sleep 0.3
redis-cli -p $REDIS flushall >/dev/null
$R/examples/registry_fill redis://127.0.0.1:$REDIS/0 $N 127.0.0.1:$BACKEND
cat > $W/b.toml <<CONF
[listen]
http = ["127.0.0.1:$LISTEN"]
[admin]
listen = "127.0.0.1:$ADMIN"
[routes]
redis = "redis://127.0.0.1:$REDIS/0"
snapshot_file = ""
[runtime]
workers = 1
[log]
access = false
CONF
T0=$(date +%s%N)
$R/pier-balancer --config $W/b.toml > $W/bal.log 2>&1 &
BPID=$!
PIDS+=("$BPID")
until grep -q "registry resync applied" $W/bal.log; do sleep 0.05; done
T1=$(date +%s%N)
grep "registry resync applied" $W/bal.log | sed 's/.*registry resync applied//'
echo "N=$N process start to table installed: $(( (T1-T0)/1000000 )) ms"
sleep 1
echo "RSS: $(awk '/VmRSS/{print $2}' /proc/$BPID/status) KiB, peak $(awk '/VmHWM/{print $2}' /proc/$BPID/status) KiB"
curl -s -o /dev/null -w "h1.bench.test -> %{http_code}\n" -H "Host: h1.bench.test" http://127.0.0.1:$LISTEN/
$R/examples/propagation redis://127.0.0.1:$REDIS/0 127.0.0.1:$LISTEN 200 127.0.0.1:$BACKEND
kill $BPID; wait $BPID 2>/dev/null || true
redis-cli -p $REDIS shutdown nosave >/dev/null 2>&1 || true
