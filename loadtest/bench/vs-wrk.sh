#!/usr/bin/env bash
# pier-load vs wrk against the same 1-worker nginx on loopback, same -t/-c/-d, interleaved
# rounds (ABBA order so drift hits both), each generator's own CPU time (user + sys) from
# /usr/bin/time. Prints every round, then medians and ratios.
#
#   loadtest/bench/vs-wrk.sh [ROUNDS] [DURATION] [CONNECTIONS] [THREADS]
#
# Environment:
#   PORT       nginx's port (18080)
#   PIER_LOAD  path to a built pier-load (default: cargo build --release)
#   LAYOUT     free (default): the scheduler places generator and nginx on the two cores;
#              pinned: nginx on CPU 1, the generator (all its threads) on CPU 0 (taskset)
#   PIPELINE   requests outstanding per connection (1): pier-load --pipeline N, wrk with a
#              Lua script that sends N requests per write (wrk's own pipelining recipe)
#   SCHEME     http (default) or https: HTTP/1.1 keep-alive over TLS 1.3 (nginx's TLS port,
#              a self-signed certificate; pier-load -k, wrk does not verify)
set -euo pipefail
rounds=${1:-5}
duration=${2:-10s}
conns=${3:-50}
threads=${4:-1}
port=${PORT:-18080}
layout=${LAYOUT:-free}
pipeline=${PIPELINE:-1}
scheme=${SCHEME:-http}
case $layout in
free) pin_gen=() pin_server=() ;;
pinned) pin_gen=(taskset -c 0) pin_server=(taskset -c 1) ;;
*)
    echo "LAYOUT must be free or pinned" >&2
    exit 2
    ;;
esac
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)

for tool in wrk nginx; do
    if ! command -v $tool >/dev/null; then apt-get install -y wrk nginx >/dev/null; fi
done
[ -x /usr/bin/time ] || apt-get install -y time >/dev/null
if [ -z "${PIER_LOAD:-}" ]; then
    (cd "$root" && cargo build --release -p pier-load >&2)
    PIER_LOAD=$(cd "$root" && realpath -m "${CARGO_TARGET_DIR:-target}/release/pier-load")
fi

work=$(mktemp -d)
trap '"$here/nginx-target.sh" stop "$port" "$work/nginx"; rm -rf "$work"' EXIT
"${pin_server[@]}" "$here/nginx-target.sh" start "$port" "$work/nginx"
case $scheme in
http) url="http://127.0.0.1:$port/" pier_tls=() ;;
https) url="https://127.0.0.1:$((port + 2))/" pier_tls=(-k) ;;
*)
    echo "SCHEME must be http or https" >&2
    exit 2
    ;;
esac
wrk_args=() pier_args=("${pier_tls[@]}")
if [ "$pipeline" -gt 1 ]; then
    # wrk pipelines only through Lua: one write of N identical requests per round trip.
    cat >"$work/pipeline.lua" <<LUA
init = function(args)
   local r = {}
   for i = 1, $pipeline do r[i] = wrk.format(nil, "/") end
   req = table.concat(r)
end
request = function() return req end
LUA
    wrk_args=(-s "$work/pipeline.lua")
    pier_args+=(--pipeline "$pipeline")
fi

echo "# $(date -u +%FT%TZ) $(nproc) cores; wrk $(wrk -v 2>&1 | head -1 | awk '{print $2}'); $("$PIER_LOAD" --version)"
echo "# target: nginx $(nginx -v 2>&1 | sed 's/.*\///'), 1 worker, $url"
echo "# each run: -t$threads -c$conns -d$duration, pipeline $pipeline, layout $layout; cpu = user + sys of the generator process;"
echo "# load1 = 1-minute load average before the run; this benchmark alone keeps it near 2 (generator + nginx), clearly more means other work shared the 2 cores"
printf '%-6s %-10s %12s %12s %8s %14s %9s %6s\n' round tool req/s requests cpu_s req/cpu_s maxrss_kb load1

# One run: prints "req_per_s requests cpu_s rss_kb".
run() {
    local tool=$1 out tfile=$work/time
    if [ "$tool" = wrk ]; then
        out=$("${pin_gen[@]}" /usr/bin/time -f '%U %S %M' -o "$tfile" \
            wrk -t"$threads" -c"$conns" -d"$duration" "${wrk_args[@]}" "$url")
    else
        out=$("${pin_gen[@]}" /usr/bin/time -f '%U %S %M' -o "$tfile" \
            "$PIER_LOAD" -t"$threads" -c"$conns" -d"$duration" "${pier_args[@]}" "$url")
    fi
    local rps reqs
    rps=$(echo "$out" | awk '/^Requests\/sec:/ {print $2}')
    reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    awk -v rps="$rps" -v reqs="$reqs" '{printf "%s %s %.2f %s\n", rps, reqs, $1 + $2, $3}' "$tfile"
}

: >"$work/results"
for r in $(seq "$rounds"); do
    if [ $((r % 2)) -eq 1 ]; then order="wrk pier-load"; else order="pier-load wrk"; fi
    for tool in $order; do
        load=$(cut -d' ' -f1 /proc/loadavg)
        read -r rps reqs cpu rss < <(run "$tool")
        per=$(awk -v n="$reqs" -v c="$cpu" 'BEGIN {printf "%.0f", n / c}')
        printf '%-6s %-10s %12s %12s %8s %14s %9s %6s\n' "$r" "$tool" "$rps" "$reqs" "$cpu" "$per" "$rss" "$load"
        echo "$tool $rps $per" >>"$work/results"
        sleep 1
    done
done

median() { sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
w_rps=$(awk '$1 == "wrk" {print $2}' "$work/results" | median)
p_rps=$(awk '$1 == "pier-load" {print $2}' "$work/results" | median)
w_per=$(awk '$1 == "wrk" {print $3}' "$work/results" | median)
p_per=$(awk '$1 == "pier-load" {print $3}' "$work/results" | median)
echo
printf 'median req/s           wrk %10.0f   pier-load %10.0f   ratio %.3f\n' "$w_rps" "$p_rps" "$(awk -v a="$p_rps" -v b="$w_rps" 'BEGIN {print a / b}')"
printf 'median req/cpu-second  wrk %10.0f   pier-load %10.0f   ratio %.3f\n' "$w_per" "$p_per" "$(awk -v a="$p_per" -v b="$w_per" 'BEGIN {print a / b}')"
