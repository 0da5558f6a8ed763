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
