#!/usr/bin/env bash
# Formats or inspects the KRaft storage: kafka-storage.sh format --cluster-id ID --config FILE
exec "$(dirname "$0")/kafka-run-class.sh" kafka.tools.StorageTool "$@"
