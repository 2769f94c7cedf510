#!/usr/bin/env bash
# Asks a broker which API versions it supports (the compose file's health check).
exec "$(dirname "$0")/kafka-run-class.sh" org.apache.kafka.tools.BrokerApiVersionsCommand "$@"
