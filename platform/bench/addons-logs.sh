#!/usr/bin/env bash
# Add-on and log figures, release builds, every part a real process (run as root: PostgreSQL runs
# as the postgres user):
#   1. `pier addons create APP postgres` and `... redis` wall time, five apps each;
#   2. a flood of app output: 200,000 lines of 100 bytes printed as fast as Python can, how many
#      the runner shipped and how many it dropped (its queue holds 20,000).
#
#   platform/bench/addons-logs.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
cd "$root"
source platform/bench/lib.sh
cargo build --release -p pier-cli >&2
bin=$(realpath -m "${CARGO_TARGET_DIR:-target}/release")
work=$(mktemp -d)
chmod 711 "$work"
pids=()
pgbin=$(ls -d /usr/lib/postgresql/*/bin | sort | tail -1)
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    sleep 2
    runuser -u postgres -- "$pgbin/pg_ctl" -D "$work/pg" stop -m immediate >/dev/null 2>&1 || true
    kill_under "$work"
    rm -rf "$work"
}
trap cleanup EXIT

pg_port=$(free_port); redis_port=$(free_port); addon_redis_port=$(free_port); api_port=$(free_port)
mkdir -p "$work/pg" && chown postgres "$work/pg" && echo admin >"$work/pw" && chown postgres "$work/pw"
runuser -u postgres -- "$pgbin/initdb" -D "$work/pg" -U postgres --auth-local=trust \
    --auth-host=scram-sha-256 --pwfile="$work/pw" >/dev/null
runuser -u postgres -- "$pgbin/pg_ctl" -D "$work/pg" -l "$work/pg/server.log" \
    -o "-p $pg_port -c listen_addresses=127.0.0.1 -k $work/pg" start >/dev/null
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
pids+=($!)
redis-server --port "$addon_redis_port" --bind 127.0.0.1 --save "" --appendonly no >/dev/null 2>&1 &
pids+=($!)
redis="redis://127.0.0.1:$redis_port/0"
export PIER_OPERATOR_TOKEN="bench-$(date +%s%N)" PIER_API_URL="http://127.0.0.1:$api_port"
export PIER_TOKEN=$PIER_OPERATOR_TOKEN
sleep 0.5
"$bin/pier" api --listen "127.0.0.1:$api_port" --redis "$redis" --slug-store "$work/slugs" \
    --addon-postgres "postgres://postgres:admin@127.0.0.1:$pg_port/postgres" \
    --addon-redis "redis://127.0.0.1:$addon_redis_port/0" >"$work/api.log" 2>&1 &
pids+=($!)
"$bin/pier" coordinator --redis "$redis" --id c1 >"$work/coordinator.log" 2>&1 &
pids+=($!)
"$bin/pier" runner --redis "$redis" --id r1 --address 127.0.0.2 --workdir "$work/runner" \
    --slug-store "$work/slugs" >"$work/runner.log" 2>&1 &
pids+=($!)
until curl -s "$PIER_API_URL/healthz" >/dev/null; do sleep 0.05; done

echo "# add-on and log figures ($(date -u +%FT%TZ), $(nproc) cores, release build)"
echo "## 1. addons create, five apps each (seconds, median)"
for kind in postgres redis; do
    times=()
    for i in 1 2 3 4 5; do
        app="$kind-$i"
        "$bin/pier" apps create "$app" >/dev/null
        t0=$(now)
        "$bin/pier" addons create "$app" "$kind" >/dev/null
        times+=("$(python3 -c "import sys; print(float(sys.argv[2])-float(sys.argv[1]))" "$t0" "$(now)")")
    done
    python3 - "$kind" "${times[@]}" <<'PY'
import statistics, sys
t = sorted(float(x) for x in sys.argv[2:])
print(f"{sys.argv[1]}: median {statistics.median(t)*1000:.0f} ms (min {t[0]*1000:.0f}, max {t[-1]*1000:.0f})")
PY
done

echo "## 2. a flood of app output"
app_dir="$work/flood"
mkdir -p "$app_dir"
cat >"$app_dir/Procfile" <<'P'
web: python3 flood.py
P
cat >"$app_dir/flood.py" <<'PY'
import os, socket, sys, time, threading
s = socket.socket(); s.bind((os.environ["PIER_HOST"], int(os.environ["PORT"]))); s.listen()
def flood():
    time.sleep(1)
    line = "x" * 99 + "\n"
    t0 = time.time()
    for _ in range(200_000):
        sys.stdout.write(line)
    sys.stdout.flush()
    with open(os.path.join(os.environ["HOME"], "flood-seconds"), "w") as f:
        f.write(f"{time.time()-t0:.3f}")
threading.Thread(target=flood, daemon=True).start()
while True:
    c, _ = s.accept(); c.close()
PY
"$bin/pier" apps create flood >/dev/null
"$bin/pier" deploy flood "$app_dir" >/dev/null
sleep 8
took=$(cat "$work"/runner/instances/*/flood-seconds 2>/dev/null | head -1 || true)
dropped=$("$bin/pier" runners | awk -F'log lines dropped: ' '{print $2}' | head -1)
echo "200,000 lines printed in ${took:-?} s; the runner dropped ${dropped:-?} of them, shipped the rest (the stream keeps the last ~10,000)"
