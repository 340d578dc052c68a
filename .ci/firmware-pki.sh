#!/usr/bin/env bash
# Test-only PKI for the TLS firmware (examples/firmware, feature tls), made
# at test time so that no key is committed. Usage: firmware-pki.sh DIR
#
# Two CAs, all keys ECDSA P-256 (what embedded-tls' rustpki verifies):
#   fleet     the device's CA: signs the server (tinyproto.test) and the device
#   stranger  another CA: signs an impostor server and a stranger device
# Writes, in DIR:
#   PEM for `tinyproto serve --tls-*`: fleet-ca.pem, server.pem, server-key.pem,
#     impostor.pem, impostor-key.pem
#   DER for the firmware's build.rs: ca.der (fleet), device.der and
#     device-key.der (SEC1), stranger.der and stranger-key.der
set -euo pipefail
dir=${1:?usage: firmware-pki.sh DIR}
mkdir -p "$dir"
cd "$dir"
command -v openssl >/dev/null 2>&1 || {
    apt-get update -qq && apt-get install -y -qq --no-install-recommends openssl >/dev/null
}

key() { openssl ecparam -name prime256v1 -genkey -noout -out "$1" 2>/dev/null; }

# ca NAME: a self-signed CA certificate NAME-ca.pem with key NAME-ca-key.pem.
ca() {
    key "$1-ca-key.pem"
    openssl req -x509 -new -key "$1-ca-key.pem" -sha256 -days 2 -subj "/CN=tinyproto test CA $1" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" \
        -out "$1-ca.pem" 2>/dev/null
}

# leaf OUT CA CN USAGE [SAN]: a certificate OUT.pem (key OUT-key.pem) signed by CA.
leaf() {
    local out=$1 ca=$2 cn=$3 usage=$4 san=${5:-}
    key "$out-key.pem"
    openssl req -new -key "$out-key.pem" -subj "/CN=$cn" -out "$out.csr" 2>/dev/null
    {
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,digitalSignature"
        echo "extendedKeyUsage=$usage"
        if [ -n "$san" ]; then echo "subjectAltName=$san"; fi
    } >"$out.ext"
    openssl x509 -req -in "$out.csr" -CA "$ca-ca.pem" -CAkey "$ca-ca-key.pem" -CAcreateserial \
        -sha256 -days 2 -extfile "$out.ext" -out "$out.pem" 2>/dev/null
    rm -f "$out.csr" "$out.ext"
}

ca fleet
ca stranger
leaf server fleet tinyproto.test serverAuth DNS:tinyproto.test
leaf impostor stranger tinyproto.test serverAuth DNS:tinyproto.test
leaf device fleet device-0001 clientAuth
leaf stranger stranger device-0001 clientAuth

openssl x509 -in fleet-ca.pem -outform DER -out ca.der
for who in device stranger; do
    openssl x509 -in "$who.pem" -outform DER -out "$who.der"
    openssl ec -in "$who-key.pem" -outform DER -out "$who-key.der" 2>/dev/null
done
echo "firmware-pki: CA, server, impostor, device and stranger certificates in $dir"
