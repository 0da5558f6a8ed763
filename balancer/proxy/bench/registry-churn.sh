#!/usr/bin/env bash
# Churn benchmark: 1000 apps in a registry, the balancer on CPU 0 following it, wrk and the
# backend on CPU 1 rotating over the 1000 hosts; rounds alternate a run without churn and a run
# with 1000 backend changes per second. Redis and the churn generator run on CHURN_CPU (default
# 0, the balancer's own core: the stricter layout, they take CPU from the balancer). Prints
# per-run req/s, p99 and the balancer's CPU per 1000 requests, then medians and the median of
# the per-round paired ratios (churn/quiet), as ../shared/bench/compare.sh reports them.
set -euo pipefail
ROUNDS=${ROUNDS:-3}; DUR=${DUR:-10}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$here/lib.sh"
bench_registry registry-churn
bench_on_exit() { redis-cli -p "$REDIS" shutdown nosave >/dev/null 2>&1 || true; }
taskset -c ${CHURN_CPU:-0} redis-server --port $REDIS --bind 127.0.0.1 --save "" --appendonly no --daemonize yes --pidfile "$W/redis.pid" --logfile "$W/redis.log"
sleep 0.3; redis-cli -p $REDIS flushall >/dev/null
$R/examples/registry_fill redis://127.0.0.1:$REDIS/0 1000 127.0.0.1:$BACKEND
cat > $W/c.toml <<CONF
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
level = "warn"
CONF
taskset -c 0 $R/pier-balancer --config $W/c.toml > $W/cbal.log 2>&1 &
BPID=$!
PIDS+=("$BPID")
sleep 1
cat > $W/hosts.lua <<'LUA'
local reqs, n, i = {}, 1000, 0
function init(args) for k = 1, n do reqs[k] = wrk.format("GET", "/", { ["Host"] = "h" .. (k-1) .. ".bench.test" }) end end
function request() i = i + 1; if i > n then i = 1 end; return reqs[i] end
function done(s, lat, _) io.write(string.format("RESULT %.0f %d %d\n", s.requests / (s.duration / 1e6), lat:percentile(99), s.errors.connect + s.errors.read + s.errors.write + s.errors.status + s.errors.timeout)) end
LUA
taskset -c 1 wrk -t1 -c50 -d3s -s $W/hosts.lua http://127.0.0.1:$LISTEN/ >/dev/null
: > $W/churn-results.txt
for r in $(seq 1 $ROUNDS); do
  for mode in quiet churn; do
    if [ $mode = churn ]; then taskset -c ${CHURN_CPU:-0} $R/examples/churn redis://127.0.0.1:$REDIS/0 1000 $((DUR+1)) 1000 127.0.0.1:$BACKEND > $W/churn.out & CP=$!; sleep 0.5; fi
    t0=$(awk '{ s=$0; sub(/^.*\) /, "", s); split(s, a, " "); print a[12]+a[13] }' /proc/$BPID/stat)
    res=$(taskset -c 1 wrk -t1 -c50 -d${DUR}s -s $W/hosts.lua http://127.0.0.1:$LISTEN/ | awk '/^RESULT/{print $2, $3, $4}')
    t1=$(awk '{ s=$0; sub(/^.*\) /, "", s); split(s, a, " "); print a[12]+a[13] }' /proc/$BPID/stat)
    res="$res $(echo "$res" | awk -v dt=$((t1-t0)) -v d=$DUR '{printf "%.3f", dt*10/($1*d/1000)}')"
    if [ $mode = churn ]; then wait $CP; cat $W/churn.out; fi
    echo "$r $mode $res" | tee -a $W/churn-results.txt
  done
done
echo "changes applied by the balancer: $(curl -s http://127.0.0.1:$ADMIN/metrics | awk '/^pier_registry_changes_applied_total/{print $2}')"
kill $BPID; redis-cli -p $REDIS shutdown nosave >/dev/null 2>&1 || true
awk '{ r = $1; m = $2; rps[m, r] = $3; p99[m, r] = $4; cpu[m, r] = $6; err[m] += $5; if (r > n) n = r }
  function med(a, k,   i, j, t) { for (i = 1; i <= k; i++) for (j = i + 1; j <= k; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }; return (k % 2) ? a[(k + 1) / 2] : (a[k / 2] + a[k / 2 + 1]) / 2 }
  END {
    for (r = 1; r <= n; r++) { q[r] = rps["quiet", r]; c[r] = rps["churn", r]; rr[r] = c[r] / q[r]; pr[r] = p99["churn", r] / p99["quiet", r]; cr[r] = cpu["churn", r] / cpu["quiet", r] }
    printf "median req/s quiet=%d churn=%d | paired ratios (median over %d rounds): req/s=%.3f p99=%.3f balancer_cpu_per_req=%.3f | errors quiet=%d churn=%d\n", med(q, n), med(c, n), n, med(rr, n), med(pr, n), med(cr, n), err["quiet"], err["churn"] }' $W/churn-results.txt
