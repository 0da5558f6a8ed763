#!/usr/bin/env bash
# Starts (or stops) a 1-worker nginx serving a small static page on a loopback port: the
# common target of the pier-load benchmarks. Usage: nginx-target.sh start|stop [PORT] [DIR]
#
# Besides plain HTTP/1.1 on PORT it serves h2 with prior knowledge (h2c) on PORT+1 and TLS 1.3
# on PORT+2 (HTTP/1.1 and h2 by ALPN, a self-signed P-256 certificate made in DIR).
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
    if [ ! -s "$dir/cert.pem" ]; then
        openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
            -subj "/CN=localhost" -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
            -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
    fi
    # As root, nginx's worker would run as nobody and could not read a page under a private
    # temp dir (mktemp -d is 0700): every answer would be a 403.
    user_line=""
    if [ "$(id -u)" = 0 ]; then user_line="user root;"; fi
    cat >"$dir/nginx.conf" <<CONF
$user_line
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
        listen 127.0.0.1:$((port + 1)) http2;
        listen 127.0.0.1:$((port + 2)) ssl http2;
        ssl_certificate $dir/cert.pem;
        ssl_certificate_key $dir/key.pem;
        ssl_protocols TLSv1.3;
        root $dir/html;
        location / { }
    }
}
CONF
    nginx -c "$dir/nginx.conf" -p "$dir"
    for _ in $(seq 50); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            # The page itself must come back: a benchmark of error pages measures nothing.
            status=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/" || true)
            if [ "$status" != 200 ]; then
                echo "nginx on port $port answers $status, not 200 (see $dir/logs/error.log)" >&2
                exit 1
            fi
            exit 0
        fi
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
