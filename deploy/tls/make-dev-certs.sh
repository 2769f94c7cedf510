#!/usr/bin/env bash
# Creates TLS material for local development and tests: a throw-away certificate authority and
# one certificate for localhost / 127.0.0.1 signed by it (used by the bridge's HTTPS listener, by
# the local Kafka broker's SSL listener, and as the bridge's Kafka client certificate).
# Never use these files in production. Existing files are kept (the script is idempotent).
set -euo pipefail
out=${1:?usage: make-dev-certs.sh OUTPUT_DIR}
mkdir -p "$out"
cd "$out"
if [ -s ca.pem ] && [ -s server.pem ] && [ -s server.key ] && [ -s server-bundle.pem ]; then
  exit 0
fi
umask 077
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
  -subj "/CN=cc-bridge local development CA" -keyout ca.key -out ca.pem \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
printf '%s\n' "subjectAltName=DNS:localhost,IP:127.0.0.1" \
  "basicConstraints=CA:FALSE" "keyUsage=critical,digitalSignature" \
  "extendedKeyUsage=serverAuth,clientAuth" > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 825 \
  -extfile server.ext -out server.pem 2>/dev/null
# Kafka reads a PEM key store as one file: the PKCS#8 key followed by the certificate chain.
cat server.key server.pem ca.pem > server-bundle.pem
rm -f server.csr server.ext ca.srl
echo "TLS material written to $out (local CA: ca.pem)"
