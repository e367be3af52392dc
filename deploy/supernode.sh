#!/usr/bin/env bash
# Start a data owner's Flower SuperNode: TLS to the coordinator, authenticated by
# the node's own key, reading the node's own data file.
#
# Usage: [VAR=value ...] deploy/supernode.sh [extra flower-supernode options]
#
# Settings (environment variables; defaults in brackets):
#   FEDGE_SUPERLINK    coordinator as HOST:PORT; HOST must be named in its
#                      certificate (make-certs.sh HOST ...)               [required]
#   FEDGE_NODE_KEY     this node's private key (make-node-key.sh), whose .pub
#                      the coordinator registered                          [required]
#   FEDGE_CA_CERT      the federation's CA certificate              [./certs/ca.crt]
#   FEDGE_DATA_PATH    this node's CSV / Parquet / npz file ('data-path')   [unset]
#   FEDGE_STATE_DIR    where the node keeps its privacy ledgers ('state-dir'), so a
#                      restarted node continues its epsilon          [./fedge-state]
#   FEDGE_NODE_CONFIG  further node config, e.g. 'partition-id=0 num-partitions=2'
#                      for a built-in data set instead of FEDGE_DATA_PATH    [unset]
#   FEDGE_NODE_PORT    local port for the node's ClientApp runtime; differs per
#                      SuperNode on one host                                 [9094]
# flower-supernode is taken from PATH (put the fedge virtualenv's bin/ first).
set -euo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi

fail() { echo "supernode.sh: $*" >&2; exit 2; }

superlink="${FEDGE_SUPERLINK:-}"
node_key="${FEDGE_NODE_KEY:-}"
ca_cert="${FEDGE_CA_CERT:-./certs/ca.crt}"
data_path="${FEDGE_DATA_PATH:-}"
state_dir="${FEDGE_STATE_DIR:-./fedge-state}"
node_port="${FEDGE_NODE_PORT:-9094}"

[[ -n "$superlink" ]] || fail "set FEDGE_SUPERLINK to the coordinator's HOST:PORT"
[[ -n "$node_key" ]] || fail "set FEDGE_NODE_KEY to this node's private key (make-node-key.sh)"
[[ -r "$node_key" ]] || fail "cannot read node key $node_key"
[[ -r "$ca_cert" ]] || fail "cannot read CA certificate $ca_cert; copy the coordinator's ca.crt or set FEDGE_CA_CERT"
[[ -z "$data_path" || -r "$data_path" ]] || fail "cannot read data file $data_path"
command -v flower-supernode >/dev/null || fail "flower-supernode not on PATH; activate the fedge virtualenv"
# Node config values are quoted strings; a '"' would end one early.
[[ "$data_path$state_dir" != *'"'* ]] || fail "paths must not contain '\"'"

mkdir -p "$state_dir"
# Absolute paths: the node config must not depend on a working directory.
state_dir="$(cd "$state_dir" && pwd)"
node_config="state-dir=\"$state_dir\""
if [[ -n "$data_path" ]]; then
    data_path="$(cd "$(dirname "$data_path")" && pwd)/$(basename "$data_path")"
    node_config="data-path=\"$data_path\" $node_config"
fi
if [[ -n "${FEDGE_NODE_CONFIG:-}" ]]; then
    node_config="$node_config $FEDGE_NODE_CONFIG"
fi

export FLWR_TELEMETRY_ENABLED="${FLWR_TELEMETRY_ENABLED:-0}"
exec flower-supernode \
    --root-certificates "$ca_cert" \
    --superlink "$superlink" \
    --auth-supernode-private-key "$node_key" \
    --port "$node_port" \
    --node-config "$node_config" \
    "$@"
