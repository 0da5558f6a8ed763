#!/usr/bin/env bash
# The platform's figures, with release builds, every part a real process on this machine:
#   1. deploy of the stdlib example to its first 200 through the balancer (build included);
#   2. the same for the gunicorn example, its wheels cached (target/wheelhouse, made by .ci/test);
#   3. failed requests under `pier-load -R` while a deploy, a scale-down and a rollback run;
#   4. a runner SIGKILLed with its instances to traffic restored (the app's only instance);
#   5. a runner's own RSS and CPU while it supervises 50 idle instances.
#
#   platform/bench/platform.sh            (as root: per-app users and cgroups are in force)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
source platform/bench/lib.sh
cargo build --release -p pier-cli -p pier-balancer -p pier-load >&2
bin=$(realpath -m "${CARGO_TARGET_DIR:-target}/release")
work=$(mktemp -d)
chmod 711 "$work"
pids=()
cleanup() {
    stop_all 3
    rm -rf "$work"
}
trap cleanup EXIT


redis_port=$(free_port); api_port=$(free_port); http_port=$(free_port); admin_port=$(free_port)
start_redis
export PIER_OPERATOR_TOKEN="bench-$(date +%s%N)" PIER_TOKEN PIER_API_URL="http://127.0.0.1:$api_port"
PIER_TOKEN=$PIER_OPERATOR_TOKEN
sleep 0.3
pip_args=()
if ls target/wheelhouse/*.whl >/dev/null 2>&1; then
    pip_args=(--pip-arg=--no-index "--pip-arg=--find-links=$root/target/wheelhouse")
fi
"$bin/pier" api --listen "127.0.0.1:$api_port" --redis "$redis" --slug-store "$work/slugs" "${pip_args[@]}" >"$work/api.log" 2>&1 &
pids+=($!)
"$bin/pier" coordinator --redis "$redis" --id c1 >"$work/coordinator.log" 2>&1 &
pids+=($!)
runner() { # ip capacity
    "$bin/pier" runner --redis "$redis" --id "r-$1" --address "$1" --capacity "$2" \
        --workdir "$work/runner-$1" --slug-store "$work/slugs" >"$work/runner-$1.log" 2>&1 &
    pids+=($!)
    runner_pid=$!
}
runner 127.0.0.2 60; r2=$runner_pid
runner 127.0.0.3 60; r3=$runner_pid
start_balancer
until curl -s "$PIER_API_URL/healthz" >/dev/null; do sleep 0.05; done
until curl -s "http://127.0.0.1:$admin_port/healthz" >/dev/null; do sleep 0.05; done

status_of() { curl -s -o /dev/null -w '%{http_code}' -H "Host: $1.apps.bench" "http://127.0.0.1:$http_port/" || true; }
wait_200() { until [ "$(status_of "$1")" = 200 ]; do sleep 0.02; done; }

echo "# platform figures ($(date -u +%FT%TZ), $(nproc) cores, release build, $(id -un))"

echo "## 1. deploy of platform/examples/hello-stdlib to its first 200 through the balancer"
"$bin/pier" apps create hello >/dev/null
t0=$(now)
"$bin/pier" deploy hello platform/examples/hello-stdlib >"$work/deploy1.out"
wait_200 hello
echo "stdlib: $(since "$t0") s (pier deploy, build, placement, boot, health check, routing)"

echo "## 2. deploy of platform/examples/hello-gunicorn, wheels cached"
"$bin/pier" apps create wsgi >/dev/null
t0=$(now)
"$bin/pier" deploy wsgi platform/examples/hello-gunicorn >"$work/deploy2.out"
wait_200 wsgi
echo "gunicorn: $(since "$t0") s (pip install from the wheel cache included)"

echo "## 3. failed requests under pier-load -R 400 -c 20 during a deploy, a scale-down and a rollback"
"$bin/pier" scale hello web=3 >/dev/null
until [ "$("$bin/pier" ps hello | grep -c $'\tup ')" = 3 ]; do sleep 0.2; done
"$bin/pier-load" -t1 -c20 -d25s -R 400 -H "Host: hello.apps.bench" --json "$work/load.json" \
    "http://127.0.0.1:$http_port/" >"$work/load.out" 2>&1 &
load_pid=$!
sleep 2
"$bin/pier" config set hello GREETING=hi >/dev/null                      # a new release, rolled out
until "$bin/pier" releases hello | grep -q $'^\\*v2\trunning'; do sleep 0.2; done
sleep 2
"$bin/pier" scale hello web=1 >/dev/null                                  # two instances drain
sleep 5
"$bin/pier" rollback hello v1 >/dev/null                                  # v3 from v1's slug and config
until "$bin/pier" releases hello | grep -q $'^\\*v3\trunning'; do sleep 0.2; done
wait "$load_pid" || true
python3 - "$work/load.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s, e = r["status"], r["errors"]
print(f"responses {r['requests']['responses']}, 2xx {s['2xx']}, 5xx {s['5xx']}, "
      f"transport errors {e['failed_total']} (connect {e['connect']}, read {e['read']}, timeout {e['timeout']}), "
      f"p99 {r['latency_us']['corrected']['percentiles']['99']/1000:.1f} ms")
PY

echo "## 4. a runner SIGKILLed with its instances to traffic restored (the app's only instance)"
line=$("$bin/pier" ps hello | grep $'\tup ')
case "$line" in *r-127.0.0.2*) victim=$r2; vdir="$work/runner-127.0.0.2" ;; *) victim=$r3; vdir="$work/runner-127.0.0.3" ;; esac
t0=$(now)
kill -9 "$victim"
kill_under "$vdir"
first_fail=""
until [ "$(status_of hello)" = 200 ] && [ -n "$first_fail" ]; do
    [ -z "$first_fail" ] && [ "$(status_of hello)" != 200 ] && first_fail=$(since "$t0")
    sleep 0.02
done
echo "traffic restored $(since "$t0") s after the kill (coordinator --dead-after 3 s, then boot and health check)"

echo "## 5. a runner's own cost while supervising 50 idle instances"
survivor=$([ "$victim" = "$r2" ] && echo "$r3" || echo "$r2")
"$bin/pier" apps create idle >/dev/null
"$bin/pier" deploy idle platform/examples/hello-stdlib --wait 0 >/dev/null
"$bin/pier" scale idle web=50 >/dev/null
until [ "$("$bin/pier" ps idle | grep -c $'\tup ')" = 50 ]; do sleep 0.5; done
sleep 5
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
c0=$(ticks "$survivor"); sleep 30; c1=$(ticks "$survivor")
rss=$(awk '/VmRSS/ {print $2}' "/proc/$survivor/status")
echo "runner with $("$bin/pier" ps idle | grep -c r-) idle instances (+ hello's): RSS ${rss} KiB, CPU $(python3 -c "print(f'{($c1-$c0)/100/30*100:.2f}')" ) % of a core over 30 s"
