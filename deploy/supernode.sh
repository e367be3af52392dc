#!/usr/bin/env bash
# Start a data owner's Flower SuperNode: TLS to the coordinator, authenticated by
# the node's own key, reading the node's own data file. A wrapper around
# `fedge node start`, which builds and runs the flower-supernode command.
#
# Usage: [VAR=value ...] deploy/supernode.sh [fedge node start options] [-- flower-supernode options]
#
# Settings (environment variables, or the `fedge node start` flag in brackets):
#   FEDGE_SUPERLINK    coordinator as HOST:PORT; HOST must be named in its
#                      certificate (make-certs.sh HOST ...)    [--superlink] required
#   FEDGE_NODE_KEY     this node's private key (make-node-key.sh), whose .pub
#                      the coordinator registered               [--node-key] required
#   FEDGE_CA_CERT      the federation's CA certificate, default ./certs/ca.crt
#   FEDGE_DATA_PATH    this node's CSV / Parquet / npz file ('data-path')
#   FEDGE_STATE_DIR    where the node keeps its privacy ledgers ('state-dir'), so a
#                      restarted node continues its epsilon; default ./fedge-state
#   FEDGE_NODE_CONFIG  further node config, e.g. 'partition-id=0 num-partitions=2'
#                      for a built-in data set instead of FEDGE_DATA_PATH
#   FEDGE_NODE_PORT    local port for the node's ClientApp runtime; differs per
#                      SuperNode on one host; default 9094
# `fedge` is taken from the fedge checkout's .venv, else from PATH.
set -euo pipefail

if [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; then
    sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi

fedge="$(cd "$(dirname "$0")/.." && pwd)/.venv/bin/fedge"
if [[ ! -x "$fedge" ]]; then
    fedge="$(command -v fedge)" || {
        echo "supernode.sh: fedge not found; run make setup in the fedge checkout" >&2
        exit 2
    }
fi
# exec: the SuperNode receives the service manager's signals directly.
exec "$fedge" node start "$@"
