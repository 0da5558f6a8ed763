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
case $layout in
free) pin_gen=() pin_server=() ;;
pinned) pin_gen=(taskset -c 0) pin_server=(taskset -c 1) ;;
*)
    echo "LAYOUT must be free or pinned" >&2
    exit 2
    ;;
esac
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
if [ -z "${PIER_LOAD:-}" ]; then
    (cd "$root" && cargo build --release -p pier-load >&2)
    PIER_LOAD=$(cd "$root" && realpath -m "${CARGO_TARGET_DIR:-target}/release/pier-load")
fi

work=$(mktemp -d)
trap '"$here/nginx-target.sh" stop "$port" "$work/nginx"; rm -rf "$work"' EXIT
"${pin_server[@]}" "$here/nginx-target.sh" start "$port" "$work/nginx"

echo "# $(date -u +%FT%TZ) $(nproc) cores; $(h2load --version 2>&1 | head -1); $("$PIER_LOAD" --version)"
echo "# target: nginx $(nginx -v 2>&1 | sed 's/.*\///'), 1 worker, $url"
echo "# each run: -t$threads -c$conns -m$streams, ${seconds}s, layout $layout; cpu = user + sys of the generator"
printf '%-6s %-10s %12s %12s %8s %14s %9s %6s\n' round tool req/s requests cpu_s req/cpu_s maxrss_kb load1

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

: >"$work/results"
for r in $(seq "$rounds"); do
    if [ $((r % 2)) -eq 1 ]; then order="h2load pier-load"; else order="pier-load h2load"; fi
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
h_rps=$(awk '$1 == "h2load" {print $2}' "$work/results" | median)
p_rps=$(awk '$1 == "pier-load" {print $2}' "$work/results" | median)
h_per=$(awk '$1 == "h2load" {print $3}' "$work/results" | median)
p_per=$(awk '$1 == "pier-load" {print $3}' "$work/results" | median)
echo
printf 'median req/s           h2load %10.0f   pier-load %10.0f   ratio %.3f\n' "$h_rps" "$p_rps" "$(awk -v a="$p_rps" -v b="$h_rps" 'BEGIN {print a / b}')"
printf 'median req/cpu-second  h2load %10.0f   pier-load %10.0f   ratio %.3f\n' "$h_per" "$p_per" "$(awk -v a="$p_per" -v b="$h_per" 'BEGIN {print a / b}')"
