#!/usr/bin/env bash
# Registry load benchmark: fills a dedicated redis-server (port 6390) with N apps, starts the
# release pier-balancer on it, and prints full-load time, RSS and propagation (see
# docs/benchmarks/registry.md). Needs an HTTP backend on 127.0.0.1:29101 for the 200 checks.
# usage: bench.sh N  -- fills a fresh redis with N apps, starts the balancer on it, measures
# full-load time, RSS and propagation.
set -euo pipefail
N=$1; R=/work/main/target/release
redis-server --port 6390 --bind 127.0.0.1 --save "" --appendonly no --daemonize yes --logfile /tmp/rb/redis.log
sleep 0.3
redis-cli -p 6390 flushall >/dev/null
$R/examples/registry_fill redis://127.0.0.1:6390/0 $N 127.0.0.1:29101
cat > /tmp/rb/b.toml <<CONF
[listen]
http = ["127.0.0.1:18170"]
[admin]
listen = "127.0.0.1:18171"
[routes]
redis = "redis://127.0.0.1:6390/0"
snapshot_file = ""
[runtime]
workers = 1
[log]
access = false
CONF
T0=$(date +%s%N)
$R/pier-balancer --config /tmp/rb/b.toml > /tmp/rb/bal.log 2>&1 &
BPID=$!
until grep -q "registry resync applied" /tmp/rb/bal.log; do sleep 0.05; done
T1=$(date +%s%N)
grep "registry resync applied" /tmp/rb/bal.log | sed 's/.*registry resync applied//'
echo "N=$N process start to table installed: $(( (T1-T0)/1000000 )) ms"
sleep 1
echo "RSS: $(awk '/VmRSS/{print $2}' /proc/$BPID/status) KiB, peak $(awk '/VmHWM/{print $2}' /proc/$BPID/status) KiB"
curl -s -o /dev/null -w "h1.bench.test -> %{http_code}\n" -H "Host: h1.bench.test" http://127.0.0.1:18170/
$R/examples/propagation redis://127.0.0.1:6390/0 127.0.0.1:18170 200 127.0.0.1:29101
kill $BPID; wait $BPID 2>/dev/null || true
redis-cli -p 6390 shutdown nosave >/dev/null 2>&1 || true
