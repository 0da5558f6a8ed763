# Shared by the generator-vs-generator scripts (vs-wrk.sh, vs-h2load.sh): sourced, not run.
#
#   bench_layout            pin_gen and pin_server (taskset prefixes) from $LAYOUT: free
#                           (default, no pinning) or pinned (server on CPU 1, generator on CPU 0)
#   bench_pier_load ROOT    $PIER_LOAD, built with cargo (release) unless already set
#   bench_rounds N "OTHER..."
#                           N interleaved rounds (ABBA: the others first in odd rounds, pier-load
#                           first and the others in reverse in even ones) of the caller's `run
#                           TOOL` (which prints "req_per_s requests cpu_s rss_kb"), one row per
#                           run, kept in $work/results
#   bench_medians "OTHER..."
#                           median req/s and requests per CPU-second of pier-load and the first
#                           other, and the ratios pier-load / OTHER (the lines vs-wrk-matrix.sh
#                           reads); for each further other, its ratios to the first and
#                           pier-load's to it

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
    local rounds=$1 others=$2 reversed="" r tool order load rps reqs cpu rss per
    for tool in $others; do reversed="$tool $reversed"; done
    printf '%-6s %-10s %12s %12s %8s %14s %9s %6s\n' round tool req/s requests cpu_s req/cpu_s maxrss_kb load1
    : >"$work/results"
    for r in $(seq "$rounds"); do
        if [ $((r % 2)) -eq 1 ]; then order="$others pier-load"; else order="pier-load $reversed"; fi
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
    local others=$1 other first o_rps p_rps o_per p_per f_rps f_per
    median() { sort -g | awk '{a[NR] = $1} END {print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }
    of() { awk -v t="$1" -v f="$2" '$1 == t {print $f}' "$work/results" | median; }
    ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a / b}'; }
    first=${others%% *}
    p_rps=$(of pier-load 2) p_per=$(of pier-load 3)
    f_rps=$(of "$first" 2) f_per=$(of "$first" 3)
    echo
    printf 'median req/s           %s %10.0f   pier-load %10.0f   ratio %s\n' "$first" "$f_rps" "$p_rps" "$(ratio "$p_rps" "$f_rps")"
    printf 'median req/cpu-second  %s %10.0f   pier-load %10.0f   ratio %s\n' "$first" "$f_per" "$p_per" "$(ratio "$p_per" "$f_per")"
    for other in ${others#"$first"}; do
        o_rps=$(of "$other" 2) o_per=$(of "$other" 3)
        printf '%s: req/s %.0f, req/cpu-second %.0f; %s / %s: %s and %s; pier-load / %s: %s and %s\n' \
            "$other" "$o_rps" "$o_per" "$other" "$first" "$(ratio "$o_rps" "$f_rps")" "$(ratio "$o_per" "$f_per")" \
            "$other" "$(ratio "$p_rps" "$o_rps")" "$(ratio "$p_per" "$o_per")"
    done
}
