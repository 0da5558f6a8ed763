#!/usr/bin/env bash
# Static files (pier.toml) through the balancer: a 20 KB file served by the runner's front
# (/static/20k.bin) against the same bytes served by the app itself (/from-app/20k.bin), same
# app (platform/examples/hello-static), same instance; and, for the front's own cost on the
# app's paths, the same app deployed without pier.toml (no front: the balancer reaches it
# directly). Req/s from pier-load (closed model), and the CPU the app's process and the runner
# used during each run (/proc/PID/stat).
#
#   platform/bench/static.sh [--no-build] [ROUNDS] [SECONDS] [CONNECTIONS]
#
# Prints a line per run and the medians; writes each run's pier-load JSON to target/bench-static/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
source platform/bench/lib.sh
if [ "${1:-}" = "--no-build" ]; then
    shift
else
    cargo build --release -p pier-cli -p pier-balancer -p pier-load >&2
fi
rounds=${1:-5}
secs=${2:-10}
conns=${3:-16}
bin=$(realpath -m "${CARGO_TARGET_DIR:-target}/release")
out="$root/target/bench-static"
mkdir -p "$out"
work=$(mktemp -d)
chmod 711 "$work"
pids=()
cleanup() {
    stop_all 10
    rm -rf "$work"
}
trap cleanup EXIT

redis_port=$(free_port); api_port=$(free_port); http_port=$(free_port); admin_port=$(free_port)
start_redis
export PIER_OPERATOR_TOKEN="bench-$(date +%s%N)" PIER_TOKEN PIER_API_URL="http://127.0.0.1:$api_port"
PIER_TOKEN=$PIER_OPERATOR_TOKEN
sleep 0.3
"$bin/pier" api --listen "127.0.0.1:$api_port" --redis "$redis" --slug-store "$work/slugs" >"$work/api.log" 2>&1 &
pids+=($!)
"$bin/pier" coordinator --redis "$redis" --id c1 >"$work/coordinator.log" 2>&1 &
pids+=($!)
"$bin/pier" runner --redis "$redis" --id r-127.0.0.2 --address 127.0.0.2 \
    --workdir "$work/runner" --slug-store "$work/slugs" --handover 0 >"$work/runner.log" 2>&1 &
runner_pid=$!
pids+=($runner_pid)
start_balancer
until curl -s "$PIER_API_URL/healthz" >/dev/null; do sleep 0.05; done
until curl -s "http://127.0.0.1:$admin_port/healthz" >/dev/null; do sleep 0.05; done

# The example with a 20 KB file (20480 bytes of fixed pseudo-random data: no compressed twin).
cp -r platform/examples/hello-static "$work/app"
python3 -c 'import random, sys; r = random.Random(20); sys.stdout.buffer.write(bytes(r.getrandbits(8) for _ in range(20480)))' \
    >"$work/app/static/20k.bin"
cp -r "$work/app" "$work/plain"
rm "$work/plain/pier.toml"
"$bin/pier" apps create site >/dev/null
"$bin/pier" deploy site "$work/app" >"$work/deploy-site.out"
"$bin/pier" apps create plain >/dev/null
"$bin/pier" deploy plain "$work/plain" >"$work/deploy-plain.out"
status_of() { curl -s -o /dev/null -w '%{http_code}' -H "Host: $1.apps.bench" "http://127.0.0.1:$http_port$2" || true; }
until [ "$(status_of site /static/20k.bin)" = 200 ] && [ "$(status_of site /from-app/20k.bin)" = 200 ] \
    && [ "$(status_of plain /from-app/20k.bin)" = 200 ]; do sleep 0.05; done
for check in site/static site/from-app plain/from-app; do
    cmp <(curl -s -H "Host: ${check%%/*}.apps.bench" "http://127.0.0.1:$http_port/${check#*/}/20k.bin") "$work/app/static/20k.bin"
done

# Each app's process: the python3 running in its unpacked slug (<workdir>/slugs/<app>-<digest>).
pid_of() {
    for d in /proc/[0-9]*; do
        case "$(readlink "$d/cwd" 2>/dev/null)" in
        "$work/runner/slugs/$1-"*) [ "$(cat "$d/comm")" = python3 ] && echo "${d#/proc/}" ;;
        esac
    done
}
site_pid=$(pid_of site); plain_pid=$(pid_of plain)
[ -n "$site_pid" ] && [ -n "$plain_pid" ] || { echo "app processes not found" >&2; exit 1; }
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

echo "# static files (pier.toml): 20 KB through the balancer ($(date -u +%FT%TZ), $(nproc) cores, release build, $(id -un))"
echo "# pier-load -t1 -c$conns -d${secs}s, $rounds rounds; app pids $site_pid (site), $plain_pid (plain), runner pid $runner_pid"
printf '%-8s %-6s %10s %8s %8s %14s %14s\n' served round req/s 2xx non2xx app_cpu_% runner_cpu_%
results="$work/results.tsv"
: >"$results"
for round in $(seq 1 "$rounds"); do
    for what in runner app direct; do
        case $what in
        runner) host=site.apps.bench; path=/static/20k.bin; app_pid=$site_pid ;;
        app) host=site.apps.bench; path=/from-app/20k.bin; app_pid=$site_pid ;;
        direct) host=plain.apps.bench; path=/from-app/20k.bin; app_pid=$plain_pid ;;
        esac
        json="$out/$what-$round.json"
        a0=$(ticks "$app_pid"); r0=$(ticks "$runner_pid"); t0=$(date +%s.%N)
        "$bin/pier-load" -t1 -c"$conns" -d"${secs}s" -H "Host: $host" --no-progress --json "$json" \
            "http://127.0.0.1:$http_port$path" >/dev/null
        a1=$(ticks "$app_pid"); r1=$(ticks "$runner_pid"); t1=$(date +%s.%N)
        python3 - "$json" "$what" "$round" "$a0" "$a1" "$r0" "$r1" "$t0" "$t1" "$hz" >>"$results" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
what, rnd = sys.argv[2], sys.argv[3]
a0, a1, r0, r1 = map(int, sys.argv[4:8])
t0, t1, hz = float(sys.argv[8]), float(sys.argv[9]), int(sys.argv[10])
wall = t1 - t0
s = j["status"]
non2xx = s["1xx"] + s["3xx"] + s["4xx"] + s["5xx"] + s["other"] + j["errors"]["failed_total"]
print(f"{what}\t{rnd}\t{j['requests']['rps']:.0f}\t{s['2xx']}\t{non2xx}\t"
      f"{(a1 - a0) / hz / wall * 100:.1f}\t{(r1 - r0) / hz / wall * 100:.1f}")
PY
        tail -n1 "$results" | awk -F'\t' '{printf "%-8s %-6s %10s %8s %8s %14s %14s\n", $1, $2, $3, $4, $5, $6, $7}'
    done
done
python3 - "$results" <<'PY'
import statistics, sys
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1])]
med = {}
names = {"runner": "/static/ by the runner", "app": "/from-app/ by the app, through the front",
         "direct": "/from-app/ by the app without pier.toml (no front)"}
for what in ("runner", "app", "direct"):
    rs = [r for r in rows if r[0] == what]
    med[what] = tuple(statistics.median(float(r[i]) for r in rs) for i in (2, 5, 6))
    print(f"median {what:6} ({names[what]}): {med[what][0]:.0f} req/s, app process "
          f"{med[what][1]:.1f} % of a core, runner {med[what][2]:.1f} % of a core")
print(f"ratio, served by the runner / by the app: {med['runner'][0] / med['app'][0]:.1f}x "
      f"(/ by the app without a front: {med['runner'][0] / med['direct'][0]:.1f}x)")
PY
