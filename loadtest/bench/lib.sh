# Shared by the generator-vs-generator scripts (vs-wrk.sh, vs-h2load.sh): sourced, not run.
#
#   bench_layout            pin_gen and pin_server (taskset prefixes) from $LAYOUT: free
#                           (default, no pinning) or pinned (server on CPU 1, generator on CPU 0)
#   bench_pier_load ROOT    $PIER_LOAD, built with cargo (release) unless already set
#   bench_rounds N OTHER    N interleaved rounds (ABBA: OTHER first in odd rounds) of the
#                           caller's `run TOOL` (which prints "req_per_s requests cpu_s rss_kb"),
#                           one row per run, kept in $work/results
#   bench_medians OTHER     median req/s and requests per CPU-second of both, and the ratios
#                           pier-load / OTHER (the lines vs-wrk-matrix.sh reads)

bench_layout() {
    case ${LAYOUT:-free} in
    free) pin_gen=() pin_server=() ;;
    pinned) pin_gen=(taskset -c 0) pin_server=(taskset -c 1) ;;
    *)
        echo "LAYOUT must be free or pinned" >&2
        exit 2
        ;;
    esac
}

bench_pier_load() {
    if [ -z "${PIER_LOAD:-}" ]; then
        (cd "$1" && cargo build --release -p pier-load >&2)
        PIER_LOAD=$(cd "$1" && realpath -m "${CARGO_TARGET_DIR:-target}/release/pier-load")
    fi
}

bench_rounds() {
    local rounds=$1 other=$2 r tool order load rps reqs cpu rss per
    printf '%-6s %-10s %12s %12s %8s %14s %9s %6s\n' round tool req/s requests cpu_s req/cpu_s maxrss_kb load1
    : >"$work/results"
    for r in $(seq "$rounds"); do
        if [ $((r % 2)) -eq 1 ]; then order="$other pier-load"; else order="pier-load $other"; fi
        for tool in $order; do
            load=$(cut -d' ' -f1 /proc/loadavg)
            read -r rps reqs cpu rss < <(run "$tool")
            per=$(awk -v n="$reqs" -v c="$cpu" 'BEGIN {printf "%.0f", n / c}')
            printf '%-6s %-10s %12s %12s %8s %14s %9s %6s\n' "$r" "$tool" "$rps" "$reqs" "$cpu" "$per" "$rss" "$load"
            echo "$tool $rps $per" >>"$work/results"
            sleep 1
        done
    done
}

bench_medians() {
    local other=$1 o_rps p_rps o_per p_per
    median() { sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
    o_rps=$(awk -v t="$other" '$1 == t {print $2}' "$work/results" | median)
    p_rps=$(awk '$1 == "pier-load" {print $2}' "$work/results" | median)
    o_per=$(awk -v t="$other" '$1 == t {print $3}' "$work/results" | median)
    p_per=$(awk '$1 == "pier-load" {print $3}' "$work/results" | median)
    echo
    printf 'median req/s           %s %10.0f   pier-load %10.0f   ratio %.3f\n' "$other" "$o_rps" "$p_rps" "$(awk -v a="$p_rps" -v b="$o_rps" 'BEGIN {print a / b}')"
    printf 'median req/cpu-second  %s %10.0f   pier-load %10.0f   ratio %.3f\n' "$other" "$o_per" "$p_per" "$(awk -v a="$p_per" -v b="$o_per" 'BEGIN {print a / b}')"
}
