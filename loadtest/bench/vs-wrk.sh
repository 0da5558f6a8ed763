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
#   FLOOR      1: a third tool in the same rounds, the CPU floor of a generator on this kernel
#              (loadtest/examples/request_floor.rs: one write and one read a request, no
#              parsing or timing; plain HTTP only): how far any generator could go past wrk
set -euo pipefail
rounds=${1:-5}
duration=${2:-10s}
conns=${3:-50}
threads=${4:-1}
port=${PORT:-18080}
layout=${LAYOUT:-free}
pipeline=${PIPELINE:-1}
scheme=${SCHEME:-http}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=loadtest/bench/lib.sh
. "$here/lib.sh"
bench_layout

for tool in wrk nginx; do
    if ! command -v $tool >/dev/null; then apt-get install -y wrk nginx >/dev/null; fi
done
[ -x /usr/bin/time ] || apt-get install -y time >/dev/null
bench_pier_load "$root"
others=wrk
if [ "${FLOOR:-0}" = 1 ]; then
    [ "$scheme" = http ] || { echo "FLOOR=1 measures plain HTTP only" >&2; exit 2; }
    (cd "$root" && cargo build --release -p pier-load --example request_floor >&2)
    floor_bin=$(cd "$root" && realpath -m "${CARGO_TARGET_DIR:-target}/release/examples/request_floor")
    others="wrk floor"
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

# One run: prints "req_per_s requests cpu_s rss_kb".
run() {
    local tool=$1 out tfile=$work/time
    if [ "$tool" = wrk ]; then
        out=$("${pin_gen[@]}" /usr/bin/time -f '%U %S %M' -o "$tfile" \
            wrk -t"$threads" -c"$conns" -d"$duration" "${wrk_args[@]}" "$url")
    elif [ "$tool" = floor ]; then
        out=$("${pin_gen[@]}" /usr/bin/time -f '%U %S %M' -o "$tfile" \
            "$floor_bin" "$url" "$threads" "$conns" "${duration%s}" "$pipeline")
    else
        out=$("${pin_gen[@]}" /usr/bin/time -f '%U %S %M' -o "$tfile" \
            "$PIER_LOAD" -t"$threads" -c"$conns" -d"$duration" "${pier_args[@]}" "$url")
    fi
    local rps reqs
    rps=$(echo "$out" | awk '/^Requests\/sec:/ {print $2}')
    reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    awk -v rps="$rps" -v reqs="$reqs" '{printf "%s %s %.2f %s\n", rps, reqs, $1 + $2, $3}' "$tfile"
}

bench_rounds "$rounds" "$others"
bench_medians "$others"
