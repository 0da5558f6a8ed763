#!/usr/bin/env bash
# Open-model rate accuracy: asks pier-load for several constant rates against a 1-worker nginx
# on loopback and prints asked vs achieved responses/s, the deviation, and the corrected and
# uncorrected p99.
#
#   loadtest/bench/rate.sh [DURATION] [CONNECTIONS] RATE...
#   e.g. loadtest/bench/rate.sh 10s 100 10000 50000 80000
set -euo pipefail
duration=${1:-10s}
conns=${2:-100}
shift 2 || true
rates=("$@")
[ ${#rates[@]} -eq 0 ] && rates=(10000 50000 80000)
port=${PORT:-18090}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
if [ -z "${PIER_LOAD:-}" ]; then
    (cd "$root" && cargo build --release -p pier-load >&2)
    PIER_LOAD=$(cd "$root" && realpath -m "${CARGO_TARGET_DIR:-target}/release/pier-load")
fi
work=$(mktemp -d)
trap '"$here/nginx-target.sh" stop "$port" "$work/nginx"; rm -rf "$work"' EXIT
"$here/nginx-target.sh" start "$port" "$work/nginx"
echo "# pier-load -t1 -c$conns -d$duration --warmup 1s -R RATE http://127.0.0.1:$port/"
printf '%10s %12s %10s %10s %12s %14s\n' asked achieved deviation unsent p99_corr p99_service
for rate in "${rates[@]}"; do
    "$PIER_LOAD" -t1 -c"$conns" -d"$duration" --warmup 1s -R "$rate" --json "$work/r.json" \
        "http://127.0.0.1:$port/" >/dev/null
    python3 - "$work/r.json" "$rate" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
asked = float(sys.argv[2])
got = r["requests"]["rps"]
lat = r["latency_us"]
print(f'{asked:10.0f} {got:12.1f} {100 * (got - asked) / asked:+9.2f}% {r["requests"]["unsent"]:10d} '
      f'{lat["corrected"]["percentiles"]["99"]:10d}us {lat["service"]["percentiles"]["99"]:12d}us')
PY
    sleep 1
done
