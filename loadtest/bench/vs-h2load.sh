#!/usr/bin/env bash
# pier-load --h2 vs h2load against the same 1-worker nginx (h2 with prior knowledge on a
# loopback port, or h2 over TLS 1.3 with SCHEME=https), same -t/-c/-m and duration, interleaved
# rounds (ABBA), each generator's own CPU time (user + sys) from /usr/bin/time. Prints every
# round, then medians and ratios.
#
#   loadtest/bench/vs-h2load.sh [ROUNDS] [SECONDS] [CONNECTIONS] [THREADS] [STREAMS]
#
# Environment: PORT (18080; h2c is served on PORT+1, TLS on PORT+2), PIER_LOAD (a built
# binary; default: cargo build --release), LAYOUT (free or pinned, as in vs-wrk.sh), SCHEME.
set -euo pipefail
rounds=${1:-5}
seconds=${2:-5}
conns=${3:-50}
threads=${4:-1}
streams=${5:-10}
port=${PORT:-18080}
layout=${LAYOUT:-free}
scheme=${SCHEME:-http}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
# shellcheck source=loadtest/bench/lib.sh
. "$here/lib.sh"
bench_layout
case $scheme in
http) url="http://127.0.0.1:$((port + 1))/" pier_tls=() ;;
https) url="https://127.0.0.1:$((port + 2))/" pier_tls=(-k) ;;
*)
    echo "SCHEME must be http or https" >&2
    exit 2
    ;;
esac

command -v h2load >/dev/null || apt-get install -y nghttp2-client >/dev/null
[ -x /usr/bin/time ] || apt-get install -y time >/dev/null
bench_pier_load "$root"

work=$(mktemp -d)
trap '"$here/nginx-target.sh" stop "$port" "$work/nginx"; rm -rf "$work"' EXIT
"${pin_server[@]}" "$here/nginx-target.sh" start "$port" "$work/nginx"

echo "# $(date -u +%FT%TZ) $(nproc) cores; $(h2load --version 2>&1 | head -1); $("$PIER_LOAD" --version)"
echo "# target: nginx $(nginx -v 2>&1 | sed 's/.*\///'), 1 worker, $url"
echo "# each run: -t$threads -c$conns -m$streams, ${seconds}s, layout $layout; cpu = user + sys of the generator"

# One run: prints "req_per_s requests cpu_s rss_kb".
run() {
    local tool=$1 out tfile=$work/time rps reqs
    if [ "$tool" = h2load ]; then
        out=$("${pin_gen[@]}" /usr/bin/time -f '%U %S %M' -o "$tfile" \
            h2load -t"$threads" -c"$conns" -m"$streams" -D"$seconds" "$url")
        rps=$(echo "$out" | awk '/^finished in/ {print $4}')
        reqs=$(echo "$out" | awk '/^requests:/ {print $8}')
    else
        out=$("${pin_gen[@]}" /usr/bin/time -f '%U %S %M' -o "$tfile" \
            "$PIER_LOAD" --h2 "${pier_tls[@]}" -t"$threads" -c"$conns" -m"$streams" -d"${seconds}s" "$url")
        rps=$(echo "$out" | awk '/^Requests\/sec:/ {print $2}')
        reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    fi
    awk -v rps="$rps" -v reqs="$reqs" '{printf "%s %s %.2f %s\n", rps, reqs, $1 + $2, $3}' "$tfile"
}

bench_rounds "$rounds" h2load
bench_medians h2load
