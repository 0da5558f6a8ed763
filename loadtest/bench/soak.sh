#!/usr/bin/env bash
# Memory soak: runs pier-load against a 1-worker nginx on loopback and samples its resident
# memory (VmRSS) every INTERVAL seconds. Memory should be flat after the first seconds.
#
#   loadtest/bench/soak.sh [DURATION_S] [INTERVAL_S] -- [extra pier-load flags]
#   e.g. loadtest/bench/soak.sh 600 10 -- -t1 -c50 -R 5000
set -euo pipefail
duration=${1:-600}
interval=${2:-10}
shift 2 || true
[ "${1:-}" = "--" ] && shift
flags=("$@")
[ ${#flags[@]} -eq 0 ] && flags=(-t1 -c50)
port=${PORT:-18095}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
if [ -z "${PIER_LOAD:-}" ]; then
    (cd "$root" && cargo build --release -p pier-load >&2)
    PIER_LOAD=$(cd "$root" && realpath -m "${CARGO_TARGET_DIR:-target}/release/pier-load")
fi
work=$(mktemp -d)
trap '"$here/nginx-target.sh" stop "$port" "$work/nginx"; rm -rf "$work"' EXIT
"$here/nginx-target.sh" start "$port" "$work/nginx"

"$PIER_LOAD" "${flags[@]}" -d"${duration}s" "http://127.0.0.1:$port/" >"$work/out" &
pid=$!
echo "# pier-load ${flags[*]} -d${duration}s; VmRSS every ${interval}s"
printf '%8s %10s\n' elapsed_s rss_kb
start=$(date +%s)
while kill -0 "$pid" 2>/dev/null; do
    rss=$(awk '/^VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
    [ -n "$rss" ] && printf '%8s %10s\n' "$(($(date +%s) - start))" "$rss" | tee -a "$work/rss"
    sleep "$interval"
done
wait "$pid" || true
echo
grep -E 'requests in|Requests/sec|Socket errors|In flight' "$work/out" || true
awk 'NR == 2 {first = $2} {last = $2; if ($2 > max) max = $2} END {printf "rss first sample after warm-up %d kB, last %d kB, max %d kB\n", first, last, max}' "$work/rss"
