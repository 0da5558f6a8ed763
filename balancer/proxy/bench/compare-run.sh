#!/usr/bin/env bash
# Starts pier-balancer the way ../shared/bench/compare.sh expects a candidate proxy:
#   compare.sh 'balancer/proxy/bench/compare-run.sh {port} {hosts}' 18070
# Turns the harness's hosts file ("h<i>.bench.test 127.0.0.1:<port>" per line) into a routes
# file with one app per hostname, writes a config listening on {port} with the access log off,
# and execs the release binary. WORKERS and MODE choose the runtime layout (default 1 per-core).
set -euo pipefail
port=$1 hosts=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../../.." && pwd)
# cargo builds into $CARGO_TARGET_DIR when it is set (relative to the repository root here).
target=$(cd "$root" && realpath -m "${CARGO_TARGET_DIR:-target}")
bin=${PIER_BALANCER:-$target/release/pier-balancer}
dir=$(mktemp -d /tmp/pier-bench.XXXXXX)
awk '{ printf "[[app]]\nname = \"a%d\"\ndomains = [\"%s\"]\nbackends = [\"%s\"]\n", NR, $1, $2 }' "$hosts" > "$dir/routes.toml"
cat > "$dir/balancer.toml" <<CONF
[listen]
http = ["127.0.0.1:$port"]
[routes]
file = "routes.toml"
watch = false
[runtime]
workers = ${WORKERS:-1}
mode = "${MODE:-per-core}"
[log]
level = "warn"
access = false
CONF
exec "$bin" --config "$dir/balancer.toml"
