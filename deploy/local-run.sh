#!/usr/bin/env bash
# `make run`: the bridge on https://127.0.0.1:8043 for local use.
# Without BRIDGE_KAFKA_BOOTSTRAP_SERVERS it starts (or reuses) the local Kafka broker from
# deploy/kafka-local and talks to it over mutual TLS. Any BRIDGE_* variable already set wins.
set -euo pipefail
cd "$(dirname "$0")/.."
tls=.local/tls
deploy/tls/make-dev-certs.sh "$tls" >/dev/null
if [ -z "${BRIDGE_KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  "${PYTHON:-python3}" deploy/kafka-local/kafkalocal.py start --home .local/kafka --tls-dir "$tls"
  export BRIDGE_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9093 BRIDGE_KAFKA_SECURITY_PROTOCOL=SSL
  export BRIDGE_KAFKA_SSL_CAFILE="$tls/ca.pem" BRIDGE_KAFKA_SSL_CERTFILE="$tls/server.pem"
  export BRIDGE_KAFKA_SSL_KEYFILE="$tls/server.key"
  export BRIDGE_CREATE_TOPICS="${BRIDGE_CREATE_TOPICS:-true}"
  echo "make run: local Kafka at 127.0.0.1:9093 (SSL) / 127.0.0.1:9092 (PLAINTEXT); stop it with 'make kafka-stop'"
fi
if [ -z "${BRIDGE_TLS_CERTFILE:-}" ] && [ "${BRIDGE_INSECURE_HTTP:-false}" != "true" ]; then
  export BRIDGE_TLS_CERTFILE="$tls/server.pem" BRIDGE_TLS_KEYFILE="$tls/server.key"
  echo "make run: HTTPS with a local certificate; clients trust it with --cacert $tls/ca.pem"
fi
if [ -z "${BRIDGE_SERVICE_TOKENS:-}" ] && [ -z "${BRIDGE_SERVICE_TOKENS_FILE:-}" ] \
    && [ "${BRIDGE_ALLOW_NO_TOKEN:-false}" != "true" ]; then
  export BRIDGE_SERVICE_TOKENS=local-dev-token
  echo "make run: accepting service_token 'local-dev-token' (set BRIDGE_SERVICE_TOKENS, or BRIDGE_SERVICE_TOKENS_FILE, to change it)"
fi
if [ -z "${BRIDGE_SPOOL_DIR:-}" ]; then
  export BRIDGE_SPOOL_DIR=.local/spool
  echo "make run: outage spool in $BRIDGE_SPOOL_DIR (pushes are kept there while Kafka is away)"
fi
exec .venv/bin/python -m bridge serve
