#!/usr/bin/env bash
# Checks the TLS listener against Mozilla's "intermediate" profile with sslyze.
#
#   bash balancer/proxy/bench/tls-posture.sh            # exits with sslyze's status
#
# Needs: sslyze (`pip install sslyze`), openssl. Builds pier-balancer (release), makes a
# throwaway CA and an ECDSA P-256 certificate for localhost signed by it (90 days: the
# profile caps lifespans), starts the balancer with one https listener on a free loopback
# port, runs `sslyze --mozilla_config=intermediate` trusting that CA, stops the balancer.
set -euo pipefail
cd "$(dirname "$0")/../../.."
command -v sslyze >/dev/null || { echo "sslyze is not installed: pip install sslyze" >&2; exit 2; }
cargo build --release -q -p pier-balancer
work=$(mktemp -d)
trap 'kill "${pid:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 365 \
  -subj "/CN=pier posture test CA" -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" -keyout "$work/ca.key" -out "$work/ca.pem" 2>/dev/null
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -subj "/CN=localhost" -keyout "$work/key.pem" -out "$work/leaf.csr" 2>/dev/null
printf 'subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\nbasicConstraints=CA:FALSE\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n' >"$work/ext"
openssl x509 -req -in "$work/leaf.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
  -CAcreateserial -days 90 -sha256 -extfile "$work/ext" -out "$work/cert.pem" 2>/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
http=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cat > "$work/routes.toml" <<ROUTES
[[app]]
name = "posture"
domains = ["localhost"]
static = { status = 200, body = "ok" }
ROUTES
cat > "$work/balancer.toml" <<CONF
[listen]
http = ["127.0.0.1:$http"]
https = ["127.0.0.1:$port"]
[routes]
file = "routes.toml"
[tls]
cert = "cert.pem"
key = "key.pem"
[log]
access = false
CONF
"${CARGO_TARGET_DIR:-target}"/release/pier-balancer --config "$work/balancer.toml" >"$work/log" 2>&1 &
pid=$!
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
sslyze --mozilla_config=intermediate --certinfo_ca_file "$work/ca.pem" "localhost:$port{127.0.0.1}"
