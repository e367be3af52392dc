#!/usr/bin/env bash
# Start the coordinator's Flower SuperLink with TLS and SuperNode authentication.
#
# Usage: [VAR=value ...] deploy/superlink.sh [extra flower-superlink options]
#
# Settings (environment variables; defaults in brackets):
#   FEDGE_CERT_DIR     folder made by make-certs.sh                        [./certs]
#   FEDGE_CA_CERT      CA certificate                       [$FEDGE_CERT_DIR/ca.crt]
#   FEDGE_SERVER_CERT  SuperLink certificate            [$FEDGE_CERT_DIR/server.pem]
#   FEDGE_SERVER_KEY   SuperLink private key            [$FEDGE_CERT_DIR/server.key]
#   FEDGE_HOST         address to listen on; 0.0.0.0 = every interface    [0.0.0.0]
#   FEDGE_PORT         the one port for SuperNodes and the flwr CLI          [9100]
#   FEDGE_DATABASE     SQLite file keeping runs and registered nodes
#                      across restarts                        [./superlink-state.db]
# flower-superlink is taken from PATH (put the fedge virtualenv's bin/ first).
#
# SuperNodes must be registered before they can join:
#   flwr supernode register node0.pub <connection>
# Runtime dependency installation stays off: the app's dependencies are already
# installed, and letting Flower resolve them would pull a CUDA build of torch.
set -euo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi

cert_dir="${FEDGE_CERT_DIR:-./certs}"
ca_cert="${FEDGE_CA_CERT:-$cert_dir/ca.crt}"
server_cert="${FEDGE_SERVER_CERT:-$cert_dir/server.pem}"
server_key="${FEDGE_SERVER_KEY:-$cert_dir/server.key}"
host="${FEDGE_HOST:-0.0.0.0}"
port="${FEDGE_PORT:-9100}"
database="${FEDGE_DATABASE:-./superlink-state.db}"

for file in "$ca_cert" "$server_cert" "$server_key"; do
    if [[ ! -r "$file" ]]; then
        echo "superlink.sh: cannot read $file; make it with deploy/make-certs.sh" \
            "or set FEDGE_CERT_DIR" >&2
        exit 2
    fi
done
command -v flower-superlink >/dev/null || {
    echo "superlink.sh: flower-superlink not on PATH; activate the fedge virtualenv" >&2
    exit 2
}
mkdir -p "$(dirname "$database")"

# Telemetry off unless the operator turns it on.
export FLWR_TELEMETRY_ENABLED="${FLWR_TELEMETRY_ENABLED:-0}"
# exec: the SuperLink receives the service manager's signals directly.
exec flower-superlink \
    --ssl-ca-certfile "$ca_cert" \
    --ssl-certfile "$server_cert" \
    --ssl-keyfile "$server_key" \
    --enable-supernode-auth \
    --host "$host" \
    --port "$port" \
    --database "$database" \
    --disable-runtime-dependency-installation \
    "$@"
