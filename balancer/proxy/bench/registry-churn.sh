#!/usr/bin/env bash
# Churn benchmark: 1000 apps in a registry, the balancer on CPU 0 following it, wrk (CPU 1)
# rotating over the 1000 hosts; rounds alternate a run without churn and a run with 1000
# backend changes per second. Prints per-run req/s and p99, then medians and ratios.
set -euo pipefail
R=/work/main/target/release; ROUNDS=${ROUNDS:-3}; DUR=${DUR:-10}
redis-server --port 6390 --bind 127.0.0.1 --save "" --appendonly no --daemonize yes --logfile /tmp/rb/redis.log
sleep 0.3; redis-cli -p 6390 flushall >/dev/null
$R/examples/registry_fill redis://127.0.0.1:6390/0 1000 127.0.0.1:29101
cat > /tmp/rb/c.toml <<CONF
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
level = "warn"
CONF
taskset -c 0 $R/pier-balancer --config /tmp/rb/c.toml > /tmp/rb/cbal.log 2>&1 &
BPID=$!
sleep 1
cat > /tmp/rb/hosts.lua <<'LUA'
local reqs, n, i = {}, 1000, 0
function init(args) for k = 1, n do reqs[k] = wrk.format("GET", "/", { ["Host"] = "h" .. (k-1) .. ".bench.test" }) end end
function request() i = i + 1; if i > n then i = 1 end; return reqs[i] end
function done(s, lat, _) io.write(string.format("RESULT %.0f %d %d\n", s.requests / (s.duration / 1e6), lat:percentile(99), s.errors.connect + s.errors.read + s.errors.write + s.errors.status + s.errors.timeout)) end
LUA
taskset -c 1 wrk -t1 -c50 -d3s -s /tmp/rb/hosts.lua http://127.0.0.1:18170/ >/dev/null
: > /tmp/rb/churn-results.txt
for r in $(seq 1 $ROUNDS); do
  for mode in quiet churn; do
    if [ $mode = churn ]; then taskset -c 1 $R/examples/churn redis://127.0.0.1:6390/0 1000 $((DUR+1)) 1000 127.0.0.1:29101 > /tmp/rb/churn.out & CP=$!; sleep 0.5; fi
    t0=$(awk '{ s=$0; sub(/^.*\) /, "", s); split(s, a, " "); print a[12]+a[13] }' /proc/$BPID/stat)
    res=$(taskset -c 1 wrk -t1 -c50 -d${DUR}s -s /tmp/rb/hosts.lua http://127.0.0.1:18170/ | awk '/^RESULT/{print $2, $3, $4}')
    t1=$(awk '{ s=$0; sub(/^.*\) /, "", s); split(s, a, " "); print a[12]+a[13] }' /proc/$BPID/stat)
    res="$res $(echo "$res" | awk -v dt=$((t1-t0)) -v d=$DUR '{printf "%.3f", dt*10/($1*d/1000)}')"
    if [ $mode = churn ]; then wait $CP; cat /tmp/rb/churn.out; fi
    echo "$r $mode $res" | tee -a /tmp/rb/churn-results.txt
  done
done
echo "changes applied by the balancer: $(curl -s http://127.0.0.1:18171/metrics | awk '/^pier_registry_changes_applied_total/{print $2}')"
kill $BPID; redis-cli -p 6390 shutdown nosave >/dev/null 2>&1 || true
awk '{rps[$2]=rps[$2]" "$3; p99[$2]=p99[$2]" "$4; err[$2]+=$5; cpu[$2]=cpu[$2]" "$6}
  function med(s,  a,n,i,j,t){n=split(s,a," "); for(i=1;i<=n;i++)for(j=i+1;j<=n;j++)if(a[j]<a[i]){t=a[i];a[i]=a[j];a[j]=t}; return a[int((n+1)/2)]}
  END{q=med(rps["quiet"]); c=med(rps["churn"]); pq=med(p99["quiet"]); pc=med(p99["churn"]);
      cq=med(cpu["quiet"]); cc=med(cpu["churn"]);
      printf "median req/s quiet=%d churn=%d ratio=%.3f | median p99_us quiet=%d churn=%d ratio=%.3f | balancer cpu_ms/1k quiet=%.3f churn=%.3f ratio=%.3f | errors quiet=%d churn=%d\n", q, c, c/q, pq, pc, pc/pq, cq, cc, cc/cq, err["quiet"], err["churn"]}' /tmp/rb/churn-results.txt
