#!/usr/bin/env bash
# Make a SuperNode's authentication key pair (OpenSSH ECDSA P-384, no passphrase).
#
# Usage: deploy/make-node-key.sh OUT_DIR NAME
#
# Writes OUT_DIR/NAME (private key: stays on the node, passed to flower-supernode
# --auth-supernode-private-key) and OUT_DIR/NAME.pub (public key: sent to the
# coordinator's operator, who registers it with `flwr supernode register`).
# Never overwrites an existing key. Needs ssh-keygen (OpenSSH).
set -euo pipefail

if [[ $# -ne 2 || "$1" == "-h" || "$1" == "--help" ]]; then
    sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
    [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]] && exit 0 || exit 2
fi
out_dir="$1"
name="$2"
if [[ ! "$name" =~ ^[A-Za-z0-9_.-]+$ ]]; then
    echo "make-node-key.sh: NAME must be letters, digits, '_', '.' or '-'; got '$name'" >&2
    exit 2
fi
command -v ssh-keygen >/dev/null || { echo "make-node-key.sh: ssh-keygen not found on PATH" >&2; exit 2; }
key="$out_dir/$name"
for path in "$key" "$key.pub"; do
    if [[ -e "$path" ]]; then
        echo "make-node-key.sh: $path exists; refusing to overwrite it." \
            "A registered node keeps its key; choose another NAME for a new one." >&2
        exit 1
    fi
done

mkdir -p "$out_dir"
# </dev/null: ssh-keygen must never stop to ask anything.
ssh-keygen -q -t ecdsa -b 384 -N "" -C "$name" -f "$key" </dev/null

key_abs="$(cd "$out_dir" && pwd)/$name"
cat <<MSG
Made SuperNode key pair '$name':
  $key_abs      private key. Stays on the node (supernode.sh FEDGE_NODE_KEY).
  $key_abs.pub  public key. Give it to the coordinator, who runs:
      flwr supernode register $name.pub <connection>
MSG
