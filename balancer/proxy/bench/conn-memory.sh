#!/usr/bin/env bash
# Memory per connection, side by side: RSS growth per connection of pier-balancer, nginx,
# HAProxy and a minimal tokio server, for six kinds of connection, one table.
#
#   bash balancer/proxy/bench/conn-memory.sh [BINARY]     # N=4000 per batch by default
#
# Servers, one worker each, all in front of the same backends, their timeouts raised to 300 s:
#   pier     pier-balancer (BINARY, default target/release/pier-balancer), one per-core worker,
#            1000 apps besides the two measured (the compare-run.sh routes), access log off
#   nginx    nginx, worker_processes 1, proxy_pass with keep-alive to the backend (keepalive 64),
#            http2 on its TLS listener, WebSocket proxying (Upgrade and Connection passed on),
#            streaming both ways (proxy_request_buffering off, proxy_buffering off: with its
#            buffering defaults nginx would spool the slow downloads to temporary files).
#            Measured: the worker process (it holds every connection; the master does not move).
#   haproxy  HAProxy, nbthread 1, mode http, alpn h2,http/1.1 on its TLS listener
#   floor    balancer/proxy/examples/idle_floor.rs: a task per connection that waits for
#            readability with no buffer of its own and answers from a static buffer; with a
#            certificate, the same behind tokio-rustls (pier's TLS settings). Idle h1 and TLS
#            rows only: it is no proxy, so it has no WebSocket, upload or download to hold.
# Backends (not measured, not counted): nginx (`ok` on /, a 50 MB file on /big) and a Python
# asyncio server in the work directory (WebSocket echo; uploads read and never answered).
#
# Kinds (rows); each is N connections opened one after the other by one Python client:
#   h1        HTTP/1.1 keep-alive: one request, its answer read, then idle
#   tls       the same over TLS (ALPN http/1.1, ECDSA P-256 certificate made here)
#   h2        TLS with ALPN h2: preface, SETTINGS, one GET on stream 1, its answer read, then
#             idle with no open stream
#   ws        a WebSocket upgraded through the proxy to the Python backend, one message echoed,
#             then idle: the proxy holds both the client's and the backend's connection
#   upload    POST with Content-Length 10 MiB, 1 KiB of it sent, then nothing: an upload in
#             progress (the backend counts it once the first bytes reach it)
#   download  GET of the 50 MB file with a 64 KiB client receive buffer; the client reads
#             64 KiB and stops reading: a download in progress, the proxy's buffers full.
#             DOWNLOAD_N connections per batch (default 500, at most N), not N: each one also
#             holds about 1 MiB of kernel memory (the send buffer the kernel grows for the
#             proxy's client socket, even with the client's MSS at 1460), and 2 x 500 stay
#             under the machine's tcp_mem pressure threshold (1.5 GiB here); more would push
#             every TCP socket on the machine into memory pressure. pier's and nginx's
#             per-connection RSS came out the same with 200, 500 and 2000 per batch.
#
# For each server and kind a fresh server process, then two batches of N connections: the first
# batch's growth includes what the allocator keeps after first use; the second batch's, read
# SETTLE seconds after it opened (default 5: past pier's one-second release of idle buffers),
# while the first stays open, is the steady cost of one more connection of that kind: the
# number in the table. RSS only: kernel socket buffers are not in it (nor in anyone's).
# Connections of each batch come from their own 127.0.0.x address.
#
#   N=2000 bash balancer/proxy/bench/conn-memory.sh
#   SERVERS="pier nginx" KINDS="ws download" bash balancer/proxy/bench/conn-memory.sh
#
# Needs: nginx, haproxy, python3, openssl; the release binary and the example
# (cargo build --release -p pier-balancer --bins --example idle_floor). Two batches of WebSocket
# tunnels are 4N open files in the proxy: the script raises its open-file limit to the hard
# limit, which must allow that (20000 allows N=4000).
# Every client holds its connections HOLD seconds at most (default 300); every process started
# here is stopped at the end.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../../.." && pwd)
# cargo builds into $CARGO_TARGET_DIR when it is set (relative to the repository root here).
target=$(cd "$root" && realpath -m "${CARGO_TARGET_DIR:-target}")
BIN=${1:-$target/release/pier-balancer}
FLOOR=${FLOOR:-$target/release/examples/idle_floor}
N=${N:-4000}
# Stalled downloads hold kernel memory (below): fewer of them, at most N.
DOWNLOAD_N=${DOWNLOAD_N:-500}
[ "$DOWNLOAD_N" -le "$N" ] || DOWNLOAD_N=$N
SETTLE=${SETTLE:-5}
HOLD=${HOLD:-300}
KINDS=${KINDS:-h1 tls h2 ws upload download}
SERVERS=${SERVERS:-pier nginx haproxy floor}
for t in nginx haproxy python3 openssl awk; do
  command -v $t >/dev/null || { echo "missing $t (apt-get install -y nginx haproxy python3 openssl)" >&2; exit 2; }
done
case " $SERVERS " in *" pier "*)
  [ -x "$BIN" ] || { echo "no $BIN (cargo build --release -p pier-balancer)" >&2; exit 2; } ;; esac
case " $SERVERS " in *" floor "*)
  [ -x "$FLOOR" ] || { echo "no $FLOOR (cargo build --release -p pier-balancer --example idle_floor)" >&2; exit 2; } ;; esac
. "$here/lib.sh"
bench_workdir conn-memory
ulimit -n "$(ulimit -Hn)"
bench_cert
cat "$W/cert.pem" "$W/key.pem" >"$W/haproxy.pem"
# The backend nginx's workers run as nobody: they must reach the 50 MB file.
chmod 711 "$W"
mkdir -m 755 "$W/www" "$W/backend" "$W/nginx" "$W/pier"
head -c $((50 * 1024 * 1024)) /dev/zero >"$W/www/big"
chmod 644 "$W/www/big"
BACKEND=$(bench_free_port) PYBACK=$(bench_free_port)
HTTP=$(bench_free_port) HTTPS=$(bench_free_port)

# --- backends -------------------------------------------------------------------------------
cat >"$W/backend/nginx.conf" <<CONF
worker_processes 1;
worker_rlimit_nofile 20000;
pid $W/backend/nginx.pid;
events { worker_connections 20000; }
http {
  access_log off;
  client_body_temp_path $W/backend/cb; proxy_temp_path $W/backend/p; fastcgi_temp_path $W/backend/f;
  uwsgi_temp_path $W/backend/u; scgi_temp_path $W/backend/s;
  sendfile on;
  keepalive_timeout 300s; keepalive_requests 100000000; send_timeout 300s;
  server {
    # A small send buffer: 2N stalled downloads would otherwise hold MiBs of kernel memory each.
    listen 127.0.0.1:$BACKEND backlog=4096 sndbuf=64k;
    location = /big { root $W/www; default_type application/octet-stream; }
    location / { return 200 "ok\n"; }
  }
}
CONF
nginx -p "$W/backend" -c "$W/backend/nginx.conf" -e "$W/backend/error.log" -g 'daemon off;' >"$W/backend/out" 2>&1 &
PIDS+=($!)
cat >"$W/backend.py" <<'PY'
# conn-memory.sh's second backend: WebSocket echo (RFC 6455 handshake and frames) and
# uploads that are read and never answered. Writes "ws OPEN upload OPEN" to STATS twice a
# second: the tunnels and uploads open right now.
import asyncio, base64, hashlib, os, resource, sys

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
port, stats = int(sys.argv[1]), sys.argv[2]
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
open_ = {"ws": 0, "upload": 0}


async def websocket(r, w):
    while True:
        h = await r.readexactly(2)
        op, length = h[0] & 0x0F, h[1] & 0x7F
        if length == 126:
            length = int.from_bytes(await r.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await r.readexactly(8), "big")
        mask = await r.readexactly(4) if h[1] & 0x80 else b"\0\0\0\0"
        data = bytes(b ^ mask[i % 4] for i, b in enumerate(await r.readexactly(length)))
        if op == 8:
            w.write(b"\x88\x00")
            await w.drain()
            return
        op = 10 if op == 9 else op
        n = len(data)
        size = bytes([n]) if n < 126 else (b"\x7e" + n.to_bytes(2, "big") if n < 65536 else b"\x7f" + n.to_bytes(8, "big"))
        w.write(bytes([0x80 | op]) + size + data)
        await w.drain()


async def handle(r, w):
    kind = None
    try:
        head = await r.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(b":")
            headers[k.strip().lower()] = v.strip()
        if headers.get(b"upgrade", b"").lower() == b"websocket":
            key = headers.get(b"sec-websocket-key", b"")
            accept = base64.b64encode(hashlib.sha1(key + GUID).digest())
            w.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                    b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
            await w.drain()
            kind = "ws"
            open_[kind] += 1
            await websocket(r, w)
        elif lines[0].startswith(b"POST /upload"):
            length = int(headers.get(b"content-length", b"0"))
            got = 0
            while got < length:
                chunk = await r.read(65536)
                if not chunk:
                    return
                got += len(chunk)
                if kind is None:
                    kind = "upload"
                    open_[kind] += 1
            w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n")
            await w.drain()
        else:
            w.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\nConnection: close\r\n\r\nno\n")
            await w.drain()
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
        pass
    finally:
        if kind:
            open_[kind] -= 1
        w.close()


async def report():
    while True:
        with open(stats + ".tmp", "w") as f:
            f.write(f"ws {open_['ws']} upload {open_['upload']}\n")
        os.replace(stats + ".tmp", stats)
        await asyncio.sleep(0.5)


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    asyncio.get_running_loop().create_task(report())
    async with server:
        await server.serve_forever()


asyncio.run(main())
PY
python3 "$W/backend.py" "$PYBACK" "$W/backend.stats" >"$W/backend.out" 2>&1 &
PIDS+=($!)
cat >"$W/client.py" <<'PY'
# conn-memory.sh's client: opens N connections of one kind, one after the other, brings each
# to the state measured, writes "ok K of N" to OUT and holds them all for HOLD seconds.
import resource, socket, ssl, sys, time

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
kind, n, port, host, src, hold, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), \
    sys.argv[4], sys.argv[5], float(sys.argv[6]), sys.argv[7]
deadline = time.monotonic() + hold


def connect(rcvbuf=0):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        # An Ethernet-sized MSS instead of loopback's 64 KiB: the server's send buffer grows
        # with its MSS, to MiBs per stalled connection on loopback (kernel memory, not RSS).
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 1460)
    s.bind((src, 0))
    s.settimeout(30)
    s.connect(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def tls(alpn):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols([alpn])
    return ctx


def read_head(s):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(65536)
        if not chunk:
            raise EOFError("closed before the end of the head")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    return head, rest


def read_response(s):
    head, rest = read_head(s)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            length = int(v)
    while len(rest) < length:
        chunk = s.recv(65536)
        if not chunk:
            raise EOFError("closed in the body")
        rest += chunk
    return head.startswith(b"HTTP/1.1 200")


def frame(kind_, flags, stream, payload=b""):
    return len(payload).to_bytes(3, "big") + bytes([kind_, flags]) + stream.to_bytes(4, "big") + payload


def recv_exact(s, k):
    data = b""
    while len(data) < k:
        chunk = s.recv(k - len(data))
        if not chunk:
            raise EOFError("closed")
        data += chunk
    return data


def h2_request(s):
    # Preface, empty SETTINGS, then GET / as HEADERS (END_STREAM | END_HEADERS) on stream 1:
    # :method GET, :scheme https, :path / from the static table, :authority as a literal
    # without indexing (indexed name 1).
    block = b"\x82\x87\x84\x01" + bytes([len(host)]) + host.encode()
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + frame(4, 0, 0) + frame(1, 0x5, 1, block))
    status = None
    while True:
        h = recv_exact(s, 9)
        length, t, flags, sid = int.from_bytes(h[:3], "big"), h[3], h[4], int.from_bytes(h[5:], "big") & 0x7FFFFFFF
        payload = recv_exact(s, length)
        if t == 4 and not flags & 1:
            s.sendall(frame(4, 1, 0))
        elif t == 7 or (t == 3 and sid == 1):
            return False
        elif sid == 1 and t == 1 and status is None:
            status = payload[:1] == b"\x88"  # :status 200, indexed
        if sid == 1 and t in (0, 1) and flags & 1:
            return bool(status)


def ws_open(s):
    s.sendall((f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head, rest = read_head(s)
    if not head.startswith(b"HTTP/1.1 101"):
        return False
    # One masked text frame "hi" (mask 0), echoed back unmasked.
    s.sendall(b"\x81\x82\x00\x00\x00\x00hi")
    while len(rest) < 4:
        chunk = s.recv(64)
        if not chunk:
            return False
        rest += chunk
    return rest[:4] == b"\x81\x02hi"


socks, ok, err = [], 0, ""
for i in range(n):
    try:
        if kind == "h1":
            s = connect()
            s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            good = read_response(s)
        elif kind == "tls":
            s = tls("http/1.1").wrap_socket(connect(), server_hostname="bench.test")
            s.sendall(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            good = read_response(s)
        elif kind == "h2":
            s = tls("h2").wrap_socket(connect(), server_hostname="bench.test")
            good = s.selected_alpn_protocol() == "h2" and h2_request(s)
        elif kind == "ws":
            s = connect()
            good = ws_open(s)
        elif kind == "upload":
            s = connect()
            s.sendall((f"POST /upload HTTP/1.1\r\nHost: {host}\r\nContent-Length: {10 * 1024 * 1024}\r\n"
                       "Content-Type: application/octet-stream\r\n\r\n").encode() + b"u" * 1024)
            good = True  # nothing comes back: the backend's count tells whether it arrived
        elif kind == "download":
            # A small receive buffer and MSS: the kernel's memory for the stalled downloads
            # stays small (tcp_mem bounds it for the whole machine).
            s = connect(rcvbuf=64 * 1024)
            s.sendall(f"GET /big HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            got = s.recv(65536)
            while len(got) < 64 * 1024:
                chunk = s.recv(65536)
                if not chunk:
                    break
                got += chunk
            good = got.startswith(b"HTTP/1.1 200") and len(got) >= 64 * 1024
        else:
            sys.exit(f"unknown kind {kind}")
        socks.append(s)
        ok += good
    except Exception as e:  # counted, not fatal: the report says how many made it
        err = f"{type(e).__name__}: {e}"
    if time.monotonic() > deadline:
        break
with open(out, "w") as f:
    f.write(f"ok {ok} of {n}" + (f" (last error: {err})" if err else "") + "\n")
time.sleep(max(0.0, deadline - time.monotonic()))
PY

# --- the servers measured -------------------------------------------------------------------
{
  bench_routes "$BACKEND"
  printf '[[app]]\nname = "py"\ndomains = ["py.bench.test"]\nbackends = ["127.0.0.1:%d"]\n' "$PYBACK"
} >"$W/pier/routes.toml"
cat >"$W/pier/balancer.toml" <<CONF
[listen]
http = ["127.0.0.1:$HTTP"]
https = ["127.0.0.1:$HTTPS"]
[tls]
cert = "../cert.pem"
key = "../key.pem"
[routes]
file = "routes.toml"
watch = false
[runtime]
workers = 1
max_connections = 200000
# No cap on one app's requests in flight (the default, 1000, would queue and refuse most of the
# uploads and downloads measured here; nginx and HAProxy are not capped either).
[limits]
app_max_in_flight = 0
# Long enough that nothing measured times out while both batches are held.
[timeouts]
client_keepalive = "300s"
client_body = "300s"
upstream_idle = "300s"
first_byte = "300s"
[log]
level = "warn"
access = false
CONF
cat >"$W/nginx/nginx.conf" <<CONF
worker_processes 1;
worker_rlimit_nofile 20000;
pid $W/nginx/nginx.pid;
events { worker_connections 20000; }
http {
  access_log off;
  client_body_temp_path $W/nginx/cb; proxy_temp_path $W/nginx/p; fastcgi_temp_path $W/nginx/f;
  uwsgi_temp_path $W/nginx/u; scgi_temp_path $W/nginx/s;
  keepalive_timeout 300s; keepalive_requests 100000000;
  client_body_timeout 300s; send_timeout 300s; client_max_body_size 0;
  proxy_http_version 1.1;
  proxy_request_buffering off; proxy_buffering off;
  proxy_read_timeout 300s; proxy_send_timeout 300s;
  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_ecdh_curve X25519:prime256v1:secp384r1;
  ssl_session_cache shared:SSL:10m;
  map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }
  upstream backend { server 127.0.0.1:$BACKEND; keepalive 64; keepalive_requests 100000000; keepalive_timeout 300s; }
  upstream py { server 127.0.0.1:$PYBACK; }
  server {
    listen 127.0.0.1:$HTTP backlog=4096;
    listen 127.0.0.1:$HTTPS ssl http2 backlog=4096;
    ssl_certificate $W/cert.pem;
    ssl_certificate_key $W/key.pem;
    location / { proxy_pass http://backend; proxy_set_header Connection ""; proxy_set_header Host \$host; }
  }
  server {
    listen 127.0.0.1:$HTTP;
    server_name py.bench.test;
    location / {
      proxy_pass http://py;
      proxy_set_header Host \$host;
      proxy_set_header Upgrade \$http_upgrade;
      proxy_set_header Connection \$connection_upgrade;
    }
  }
}
CONF
cat >"$W/haproxy.cfg" <<CONF
global
  nbthread 1
  maxconn $((2 * N + 500))
defaults
  mode http
  timeout connect 5s
  timeout client 300s
  timeout server 300s
  timeout http-request 300s
  timeout http-keep-alive 300s
  timeout tunnel 1h
frontend front
  bind 127.0.0.1:$HTTP backlog 4096
  bind 127.0.0.1:$HTTPS ssl crt $W/haproxy.pem alpn h2,http/1.1 backlog 4096
  use_backend py if { hdr(host) -i py.bench.test }
  default_backend backend
backend backend
  server b1 127.0.0.1:$BACKEND
backend py
  server p1 127.0.0.1:$PYBACK
CONF

applies() { # SERVER KIND
  [ "$1" != floor ] || [ "$2" = h1 ] || [ "$2" = tls ]
}

# start SERVER KIND: sets SRV (the process to stop) and MEASURED (the process whose RSS counts)
start() {
  case $1 in
    pier)
      "$BIN" --config "$W/pier/balancer.toml" >"$W/pier/out" 2>&1 &
      SRV=$! MEASURED=$! ;;
    nginx)
      rm -f "$W/nginx/nginx.pid"
      nginx -p "$W/nginx" -c "$W/nginx/nginx.conf" -e "$W/nginx/error.log" -g 'daemon off;' >"$W/nginx/out" 2>&1 &
      SRV=$! MEASURED=""
      for _ in $(seq 50); do
        MEASURED=$(pgrep -P "$SRV" | head -1 || true)
        [ -n "$MEASURED" ] && break
        sleep 0.1
      done ;;
    haproxy)
      haproxy -f "$W/haproxy.cfg" -db >"$W/haproxy.out" 2>&1 &
      SRV=$! MEASURED=$! ;;
    floor)
      if [ "$2" = tls ]; then
        "$FLOOR" "127.0.0.1:$HTTPS" "$W/cert.pem" "$W/key.pem" >"$W/floor.out" 2>&1 &
      else
        "$FLOOR" "127.0.0.1:$HTTP" >"$W/floor.out" 2>&1 &
      fi
      SRV=$! MEASURED=$! ;;
  esac
  PIDS+=("$SRV")
  local port=$HTTP
  case $2 in tls | h2) port=$HTTPS ;; esac
  for _ in $(seq 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && { sleep 0.5; return 0; }
    sleep 0.1
  done
  echo "$1 did not start:" >&2
  cat "$W"/pier/out "$W"/nginx/out "$W"/nginx/error.log "$W"/haproxy.out "$W"/floor.out 2>/dev/null >&2 || true
  exit 1
}

# stop PID...: stop these processes (started here) and forget them.
stop() {
  local p keep=()
  bench_stop "$@"
  for p in "${PIDS[@]}"; do
    case " $* " in *" $p "*) ;; *) keep+=("$p") ;; esac
  done
  PIDS=("${keep[@]}")
}

rss() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }

SRC=10 # each batch connects from its own 127.0.0.SRC
# batch KIND COUNT PORT HOST OUT: starts a client batch, waits until it holds its connections
batch() {
  SRC=$(( SRC >= 250 ? 10 : SRC + 1 ))
  python3 "$W/client.py" "$1" "$2" "$3" "$4" "127.0.0.$SRC" "$HOLD" "$5" >>"$W/client.err" 2>&1 &
  CLIENTS+=($!)
  PIDS+=($!)
  local waited=0
  until [ -s "$5" ]; do
    sleep 0.2
    waited=$((waited + 1))
    [ "$waited" -lt $((HOLD * 5)) ] || { echo "client $1 never finished" >&2; exit 1; }
  done
}

: >"$W/results"
echo "conn-memory: N=$N per batch (download: $DOWNLOAD_N), SETTLE=${SETTLE}s, servers: $SERVERS; kinds: $KINDS" >&2
for server in $SERVERS; do
  for kind in $KINDS; do
    applies "$server" "$kind" || continue
    start "$server" "$kind"
    port=$HTTP host=bench.test n=$N
    case $kind in tls | h2) port=$HTTPS ;; ws | upload) host=py.bench.test ;; download) n=$DOWNLOAD_N ;; esac
    CLIENTS=()
    r0=$(rss "$MEASURED")
    batch "$kind" "$n" "$port" "$host" "$W/ok1"
    sleep "$SETTLE"
    r1=$(rss "$MEASURED")
    batch "$kind" "$n" "$port" "$host" "$W/ok2"
    sleep "$SETTLE"
    r2=$(rss "$MEASURED")
    held=""
    case $kind in ws | upload) held=" backend holds: $(cat "$W/backend.stats")" ;; esac
    tcpmem=$(awk '/^TCP:/ { print $NF }' /proc/net/sockstat)
    ok1=$(cut -d' ' -f2 "$W/ok1") ok2=$(cut -d' ' -f2 "$W/ok2")
    # Tunnels and uploads count only if the backend holds them all (a proxy may have queued or
    # refused some): otherwise the row is starred.
    case $kind in ws | upload)
      [ "$(awk -v k="$kind" '{ for (i = 1; i < NF; i++) if ($i == k) print $(i + 1) }' "$W/backend.stats")" -ge $((2 * n)) ] || ok2=-1 ;;
    esac
    printf '%s %s %d %d %d %d %d %d\n' "$server" "$kind" "$r0" "$r1" "$r2" "$ok1" "$ok2" "$n" >>"$W/results"
    printf '  %-8s %-9s RSS KiB %7d -> %7d -> %7d  batch 1: %s  batch 2: %s  kernel TCP pages %s%s\n' \
      "$server" "$kind" "$r0" "$r1" "$r2" "$(cat "$W/ok1")" "$(cat "$W/ok2")" "$tcpmem" "$held" >&2
    stop "${CLIENTS[@]}" "$SRV"
    rm -f "$W/ok1" "$W/ok2"
    sleep 1
  done
done

awk -v n="$N" -v dn="$DOWNLOAD_N" -v kinds="$KINDS" -v date="$(date -u '+%Y-%m-%d %H:%M UTC')" '
  { b1[$1, $2] = ($4 - $3) / $8; b2[$1, $2] = ($5 - $4) / $8; ok[$1, $2] = ($6 == $8 && $7 == $8) }
  function cell(s, k) { return ((s, k) in b2) ? sprintf("%.1f%s", b2[s, k], ok[s, k] ? "" : "*") : "n/a" }
  function first(s, k) { return ((s, k) in b1) ? sprintf("%.1f", b1[s, k]) : "n/a" }
  END {
    printf "\nRSS growth per connection, KiB (second batch of %d, download %d; steady; %s)\n", n, dn, date
    printf "%-10s %9s %9s %9s %9s %11s\n", "kind", "pier", "nginx", "haproxy", "floor", "pier/nginx"
    split(kinds, ks, " ")
    for (i = 1; i in ks; i++) {
      k = ks[i]
      ratio = (("pier", k) in b2 && ("nginx", k) in b2 && b2["nginx", k] > 0) ? sprintf("%.2f", b2["pier", k] / b2["nginx", k]) : "n/a"
      printf "%-10s %9s %9s %9s %9s %11s\n", k, cell("pier", k), cell("nginx", k), cell("haproxy", k), cell("floor", k), ratio
    }
    printf "\nfirst batch (includes what the allocator keeps after first use), KiB per connection\n"
    printf "%-10s %9s %9s %9s %9s\n", "kind", "pier", "nginx", "haproxy", "floor"
    for (i = 1; i in ks; i++) {
      k = ks[i]
      printf "%-10s %9s %9s %9s %9s\n", k, first("pier", k), first("nginx", k), first("haproxy", k), first("floor", k)
    }
    print "\npier, haproxy, floor: the whole process; nginx: its one worker (the master holds no connection)."
    print "ws, upload, download: the proxy holds the client side and the backend side; the backends"
    print "(nginx, Python) are separate processes, not counted. Kernel socket buffers are in no figure."
    print "* = not every connection of a batch reached its state (see the lines above the table)."
  }' "$W/results"
