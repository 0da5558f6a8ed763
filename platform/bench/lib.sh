# Shared by the platform's bench scripts (sourced, never run): free ports, killing what was left
# under a directory, starting a balancer that follows the platform's Redis, and clocks.

# A free port on 127.0.0.1.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# SIGKILLs every process whose working directory is under $1 (instances a killed runner left).
kill_under() {
    local d
    for d in /proc/[0-9]*; do
        case "$(readlink "$d/cwd" 2>/dev/null)" in "$1"/*) kill -9 "${d#/proc/}" 2>/dev/null || true ;; esac
    done
}

# Starts pier-balancer on $http_port (admin $admin_port) following $redis, apps under
# *.apps.bench, access log off; its pid is added to pids. Uses $bin and $work.
start_balancer() {
    cat >"$work/balancer.toml" <<TOML
[listen]
http = ["127.0.0.1:$http_port"]
[admin]
listen = "127.0.0.1:$admin_port"
[routes]
redis = "$redis"
snapshot_file = ""
app_domains = ["apps.bench"]
[log]
access = false
TOML
    "$bin/pier-balancer" --config "$work/balancer.toml" >"$work/balancer.log" 2>&1 &
    pids+=($!)
}

now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2])-float(sys.argv[1]):.2f}')" "$1" "$(now)"; }

# Stops every process in pids: SIGTERM, up to $1 seconds for them to go (a runner drains its
# instances first), then SIGKILL, and whatever was left under $work.
stop_all() {
    local p alive i
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for ((i = 0; i < $1 * 10; i++)); do
        alive=0
        for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    kill_under "$work"
}

# A private redis-server on $redis_port (its files in $work); sets $redis, adds it to pids.
start_redis() {
    redis="redis://127.0.0.1:$redis_port/0"
    redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
    pids+=($!)
}
