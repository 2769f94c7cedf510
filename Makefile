# The two commands: `make run` (the bridge, with a local Kafka unless one is configured) and
# `make test` (unit and integration tests against a real broker the tests start themselves).
PYTHON ?= python3
VENV := .venv
LOCAL := .local
TLS := $(LOCAL)/tls
KAFKA_LOCAL := $(PYTHON) deploy/kafka-local/kafkalocal.py
KAFKA_CLUSTER := $(PYTHON) deploy/kafka-local/kafkacluster.py

.PHONY: run test lint unit kafka kafka-stop kafka-cluster kafka-cluster-stop kafka-jars certs venv npm lock clean consume bench fault wallboard container-test k8s-up k8s-down k8s-test

run: venv certs
	@deploy/local-run.sh

test: venv kafka-jars npm lint
	$(VENV)/bin/pytest

# Static checks (part of `make test`): ruff over the repository, mypy --strict over bridge/.
lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

unit: venv npm
	$(VENV)/bin/pytest tests/unit

# The container test: the image built from the Dockerfile and the compose project (Kafka, three
# bridge replicas, the router) run in the project's own podman, which it installs from
# Debian's packages when missing (root only: deploy/containers/setup-engine.sh). Skipped where
# no engine can be set up, except under CI (the CI variable set), where that is a failure.
container-test: venv kafka-jars
	$(VENV)/bin/pytest -m container -s tests/container

# A real single-node Kubernetes (root, docs/kubernetes-local.md): `k8s-up` builds what is missing
# (the binaries from the Go module proxy, cached per version; the images with podman), starts the
# cluster, deploys deploy/kubernetes/overlays/local and prints KEY=VALUE lines for scripts;
# `k8s-down` removes everything it started. `k8s-test` is up, the tests under tests/k8s, down.
# Not part of `make test` nor of CI: a cold start builds for tens of minutes.
K8S_LOCAL := deploy/k8s-local/cluster.py
k8s-up: venv kafka-jars
	@$(VENV)/bin/python $(K8S_LOCAL) up

k8s-down:
	@$(PYTHON) $(K8S_LOCAL) down

k8s-test: venv kafka-jars
	@status=0; $(VENV)/bin/python $(K8S_LOCAL) up >/dev/null && $(VENV)/bin/pytest -m k8s -s tests/k8s || status=1; \
	  $(PYTHON) $(K8S_LOCAL) down || status=1; exit $$status

# Only the fault drills (also part of `make test`); the long form is python -m bench.faults.
fault: venv kafka-jars
	$(VENV)/bin/pytest -m fault -s tests/fault

# The benchmark (not a test): the bridge against its HTTP and Kafka ceilings and a naive
# receiver and a Go reference receiver, in one run on this machine. Needs Go 1.26+. Smoke run:
# make bench BENCH_ARGS=--quick
BENCH_ARGS ?=
bench: venv kafka-jars
	$(VENV)/bin/python -m bench.benchmark $(BENCH_ARGS)

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11 or later is needed (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -c constraints.txt -e '.[server,test,bench]'
	@touch $@

# The official AsyncAPI parser (Node.js), at the versions pinned in its package-lock.json; the
# tests validate docs/contracts/asyncapi.yaml with it.
ASYNCAPI_CHECK := tests/asyncapi-validator
npm: $(ASYNCAPI_CHECK)/node_modules/.installed

$(ASYNCAPI_CHECK)/node_modules/.installed: $(ASYNCAPI_CHECK)/package.json $(ASYNCAPI_CHECK)/package-lock.json
	cd $(ASYNCAPI_CHECK) && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error
	@touch $@

certs:
	@deploy/tls/make-dev-certs.sh $(TLS)

kafka-jars:
	@$(KAFKA_LOCAL) jars

kafka: certs
	@$(KAFKA_LOCAL) start --home $(LOCAL)/kafka --tls-dir $(TLS)

kafka-stop:
	@$(KAFKA_LOCAL) stop --home $(LOCAL)/kafka

# Three brokers (RF 3, min ISR 2) on ports 19092-19116; see deploy/kafka-local/kafkacluster.py.
kafka-cluster: certs
	@$(KAFKA_CLUSTER) start --home $(LOCAL)/kafka-cluster --tls-dir $(TLS)

kafka-cluster-stop:
	@if [ -f $(LOCAL)/kafka-cluster/cluster.json ]; then $(KAFKA_CLUSTER) stop --home $(LOCAL)/kafka-cluster; fi

# Re-pin constraints.txt from a fresh resolution of pyproject.toml's ranges.
lock:
	rm -rf $(LOCAL)/lock-venv && $(PYTHON) -m venv $(LOCAL)/lock-venv
	$(LOCAL)/lock-venv/bin/pip install --quiet --upgrade pip
	$(LOCAL)/lock-venv/bin/pip install --quiet '.[server,test,bench]'
	$(LOCAL)/lock-venv/bin/pip freeze --exclude cc-gateway-bridge > constraints.txt
	rm -rf $(LOCAL)/lock-venv

clean: kafka-stop kafka-cluster-stop
	rm -rf $(VENV) $(LOCAL) deploy/kafka-local/target build *.egg-info $(ASYNCAPI_CHECK)/node_modules

# A wallboard (current state per agent) built on bridge.consumer, reading what `make run` writes.
WALLBOARD_ARGS ?=
wallboard: venv
	$(VENV)/bin/python -m examples.wallboard $(WALLBOARD_ARGS)

# Print what the bridge wrote: make consume [TOPIC=cc.agent.events] [BOOTSTRAP=host:port]
# [CLIENT_CONFIG=client.properties], e.g. over SASL_SSL with the local broker's SCRAM user:
# make consume BOOTSTRAP=127.0.0.1:9095 CLIENT_CONFIG=.local/kafka/client-sasl_ssl-scram-sha-512.properties
TOPIC ?= cc.agent.events
BOOTSTRAP ?= 127.0.0.1:9092
CLIENT_CONFIG ?=
consume: kafka-jars
	java -cp 'deploy/kafka-local/target/lib/*' -Dlog4j2.configurationFile=deploy/kafka-local/log4j2.properties \
	  org.apache.kafka.tools.consumer.ConsoleConsumer --bootstrap-server $(BOOTSTRAP) --topic $(TOPIC) \
	  $(if $(CLIENT_CONFIG),--consumer.config $(CLIENT_CONFIG)) \
	  --from-beginning --property print.key=true --property print.headers=true
