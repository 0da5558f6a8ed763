#!/usr/bin/env bash
# Starts (or stops) a 1-worker nginx serving a small static page on a loopback port: the
# common target of the pier-load benchmarks. Usage: nginx-target.sh start|stop [PORT] [DIR]
set -euo pipefail
cmd=${1:?start|stop}
port=${2:-18080}
dir=${3:-/tmp/pier-load-bench-nginx}

case "$cmd" in
start)
    if ! command -v nginx >/dev/null; then
        echo "installing nginx" >&2
        apt-get install -y nginx >/dev/null
    fi
    mkdir -p "$dir/html" "$dir/logs"
    printf '<html><body>pier-load benchmark target</body></html>\n' >"$dir/html/index.html"
    cat >"$dir/nginx.conf" <<CONF
worker_processes 1;
daemon on;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000000;
    keepalive_timeout 300s;
    server {
        listen 127.0.0.1:$port;
        root $dir/html;
        location / { }
    }
}
CONF
    nginx -c "$dir/nginx.conf" -p "$dir"
    for _ in $(seq 50); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then exit 0; fi
        sleep 0.1
    done
    echo "nginx did not start on port $port" >&2
    exit 1
    ;;
stop)
    if [ -f "$dir/nginx.pid" ]; then
        kill "$(cat "$dir/nginx.pid")" 2>/dev/null || true
        rm -f "$dir/nginx.pid"
    fi
    ;;
*)
    echo "usage: $0 start|stop [PORT] [DIR]" >&2
    exit 2
    ;;
esac
