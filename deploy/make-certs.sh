#!/usr/bin/env bash
# Make a private certificate authority and the SuperLink's TLS certificate.
#
# Usage: deploy/make-certs.sh OUT_DIR [HOST_OR_IP ...]
#
# Every HOST_OR_IP becomes a subjectAltName of the server certificate: give each
# name or address the SuperNodes and the `flwr` CLI use to reach the coordinator
# (default: 127.0.0.1 and localhost, for a trial on one machine). A SuperNode
# refuses a coordinator whose certificate does not name the address it dialled.
#
# Writes into OUT_DIR (created if missing, never overwritten):
#   ca.key      the CA's private key: keep it offline; it signs server certificates
#   ca.crt      the CA certificate: copy to every SuperNode and to the flwr CLI
#   server.key  the SuperLink's private key: only on the coordinator
#   server.pem  the SuperLink's certificate: only on the coordinator
# Needs openssl (1.1.1 or 3.x).
set -euo pipefail

CA_DAYS="${FEDGE_CA_DAYS:-3650}"
SERVER_DAYS="${FEDGE_SERVER_CERT_DAYS:-825}"

if [[ $# -lt 1 || "$1" == "-h" || "$1" == "--help" ]]; then
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    [[ $# -lt 1 ]] && exit 2 || exit 0
fi
out_dir="$1"
shift
hosts=("$@")
if [[ ${#hosts[@]} -eq 0 ]]; then
    hosts=(127.0.0.1 localhost)
fi

command -v openssl >/dev/null || { echo "make-certs.sh: openssl not found on PATH" >&2; exit 2; }

for name in ca.key ca.crt server.key server.pem; do
    if [[ -e "$out_dir/$name" ]]; then
        echo "make-certs.sh: $out_dir/$name exists; refusing to overwrite it." \
            "Move it away or choose another OUT_DIR." >&2
        exit 1
    fi
done

# subjectAltName entries: an IPv4/IPv6 literal is an IP SAN, anything else DNS.
sans=()
for host in "${hosts[@]}"; do
    if [[ "$host" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ || "$host" == *:* ]]; then
        sans+=("IP:$host")
    else
        sans+=("DNS:$host")
    fi
done
san_list="$(IFS=,; echo "${sans[*]}")"

mkdir -p "$out_dir"
# Private keys are readable by their owner only.
umask 077
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The CA: ECDSA P-384, self-signed, allowed to sign certificates and nothing else.
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384 -out "$work/ca.key"
openssl req -x509 -new -sha384 -key "$work/ca.key" -days "$CA_DAYS" \
    -subj "/CN=fedge private CA" \
    -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" \
    -out "$work/ca.crt"

# The SuperLink's certificate, signed by the CA, for TLS server use only.
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$work/server.key"
openssl req -new -sha256 -key "$work/server.key" -subj "/CN=${hosts[0]}" \
    -out "$work/server.csr"
cat > "$work/server.ext" <<EXT
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = $san_list
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
EXT
openssl x509 -req -sha256 -in "$work/server.csr" -CA "$work/ca.crt" \
    -CAkey "$work/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
    -days "$SERVER_DAYS" -extfile "$work/server.ext" -out "$work/server.pem" 2>/dev/null
openssl verify -CAfile "$work/ca.crt" "$work/server.pem" >/dev/null

# Certificates are public; keys stay 0600. Move (not copy) so no key is left behind,
# and never clobber a file that appeared meanwhile (-n).
chmod 644 "$work/ca.crt" "$work/server.pem"
for name in ca.key ca.crt server.key server.pem; do
    mv -n "$work/$name" "$out_dir/$name"
    [[ -e "$work/$name" ]] && { echo "make-certs.sh: $out_dir/$name appeared meanwhile; not overwritten" >&2; exit 1; }
done

out_abs="$(cd "$out_dir" && pwd)"
cat <<MSG
Made in $out_abs:
  ca.key      CA private key. Keep it offline; needed only to issue a new server.pem.
  ca.crt      CA certificate. Copy to every SuperNode (--root-certificates) and to the
              machine running the flwr CLI (root-certificates in \$FLWR_HOME/config.toml).
  server.key  SuperLink private key. Only on the coordinator (--ssl-keyfile).
  server.pem  SuperLink certificate for: ${hosts[*]}
              Only on the coordinator (--ssl-certfile; --ssl-ca-certfile ca.crt).
Server certificate valid for $SERVER_DAYS days, CA for $CA_DAYS days.
MSG
