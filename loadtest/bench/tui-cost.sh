#!/usr/bin/env bash
# What --tui costs the generator: pier-load against the 1-worker nginx target with and without
# the live view, both on a terminal (script(1) gives each a pseudo-terminal: the plain run shows
# its progress line), interleaved rounds in ABBA order, each run's req/s and its own CPU time.
#
#   loadtest/bench/tui-cost.sh [ROUNDS] [DURATION] [CONNECTIONS]
#
# Environment: PORT (18080), PIER_LOAD (a built binary; default: cargo build --release).
set -euo pipefail
rounds=${1:-6}
duration=${2:-5s}
conns=${3:-50}
port=${PORT:-18080}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
[ -x /usr/bin/time ] || apt-get install -y time >/dev/null
command -v script >/dev/null || apt-get install -y bsdutils >/dev/null
if [ -z "${PIER_LOAD:-}" ]; then
    (cd "$root" && cargo build --release -p pier-load >&2)
    PIER_LOAD=$(cd "$root" && realpath -m "${CARGO_TARGET_DIR:-target}/release/pier-load")
fi
"$here/nginx-target.sh" start "$port" >/dev/null
trap '"$here/nginx-target.sh" stop "$port" >/dev/null' EXIT
work=$(mktemp -d)

one() { # mode round
    local flags=""
    [ "$1" = tui ] && flags="--tui"
    local out="$work/$1-$2"
    COLUMNS=120 LINES=40 script -qfec "/usr/bin/time -f 'cpu %U %S' -o $out.time \
        $PIER_LOAD -t1 -c$conns -d$duration $flags http://127.0.0.1:$port/" "$out.tty" >/dev/null
    local rps cpu
    rps=$(grep -a 'Requests/sec:' "$out.tty" | tr -d '\r' | awk '{print $2}')
    cpu=$(awk '/^cpu/ {print $2 + $3}' "$out.time")
    echo "$1 $2 $rps $cpu" | tee -a "$work/all"
}

echo "mode round req/s cpu_s"
for r in $(seq "$rounds"); do
    if [ $((r % 2)) = 1 ]; then one plain "$r"; one tui "$r"; else one tui "$r"; one plain "$r"; fi
done
python3 - "$work/all" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
def med(mode, i): return statistics.median(float(r[i]) for r in rows if r[0] == mode)
p_rps, t_rps = med("plain", 2), med("tui", 2)
p_cpu, t_cpu = med("plain", 3), med("tui", 3)
print(f"median req/s: plain {p_rps:.0f}, --tui {t_rps:.0f}, ratio {t_rps / p_rps:.3f}")
print(f"median CPU s: plain {p_cpu:.2f}, --tui {t_cpu:.2f}; requests per CPU-second ratio "
      f"{(t_rps / t_cpu) / (p_rps / p_cpu):.3f}")
PY
rm -rf "$work"
