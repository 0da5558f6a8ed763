#!/usr/bin/env bash
# Every layout of issue 16 through vs-wrk.sh, one after another, and a table of the median
# ratios (pier-load / wrk) at the end:
#   layouts free and pinned x -c50 and -c500 x -t1 and -t2 x plain and --pipeline 16.
#
#   loadtest/bench/vs-wrk-matrix.sh [ROUNDS] [DURATION]
#
# Environment: PIER_LOAD (a built binary; default: cargo build --release), PORT; LAYOUTS,
# CONNS, THREADS, PIPELINES narrow the matrix (space-separated lists); FLOOR=1 adds the CPU
# floor (vs-wrk.sh) and two columns, the floor's req/cpu-s over wrk's and pier-load's over
# the floor's.
set -euo pipefail
rounds=${1:-4}
duration=${2:-5s}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
if [ -z "${PIER_LOAD:-}" ]; then
    (cd "$root" && cargo build --release -p pier-load >&2)
    PIER_LOAD=$(cd "$root" && realpath -m "${CARGO_TARGET_DIR:-target}/release/pier-load")
fi
export PIER_LOAD
summary=$(mktemp)
trap 'rm -f "$summary"' EXIT
for layout in ${LAYOUTS:-free pinned}; do
    for pipeline in ${PIPELINES:-1 16}; do
        for threads in ${THREADS:-1 2}; do
            for conns in ${CONNS:-50 500}; do
                echo "## layout $layout, -t$threads -c$conns, pipeline $pipeline"
                out=$(LAYOUT=$layout PIPELINE=$pipeline "$here/vs-wrk.sh" "$rounds" "$duration" "$conns" "$threads")
                echo "$out"
                echo
                rps=$(echo "$out" | awk '/^median req\/s / {print $NF}')
                per=$(echo "$out" | awk '/^median req\/cpu-second/ {print $NF}')
                floor=$(echo "$out" | awk '/^floor:/ {gsub(/;/, ""); print $11, $17}')
                printf '%-7s %-4s %-5s %-9s %8s %10s %s\n' "$layout" "-t$threads" "-c$conns" "$pipeline" "$rps" "$per" "$floor" >>"$summary"
            done
        done
    done
done
echo "## medians, pier-load / wrk (goals: req/s >= 1.05, req/cpu-s >= 1.2)"
printf '%-7s %-4s %-5s %-9s %8s %10s %s\n' layout t c pipeline req/s req/cpu-s "${FLOOR:+floor/wrk pier-load/floor (req/cpu-s)}"
cat "$summary"
