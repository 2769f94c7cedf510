# The bridge's container image: `cc-bridge serve` as an unprivileged user, nothing else inside.
#
#   docker build -t cc-gateway-bridge:0.1.0 .
#
# Settings come from BRIDGE_* variables at run time (see docs/configuration.md).
# TLS certificates, keys and service tokens are mounted or injected by the platform; the image
# never contains any. Both stages use the same pinned base so the virtual environment built in
# the first one runs unchanged in the second.

FROM python:3.11.15-slim-bookworm AS build

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1

WORKDIR /src
# Only what `pip install .` reads: the project metadata, the pins and the package.
COPY pyproject.toml constraints.txt README.md ./
COPY bridge/ bridge/
# Every dependency is pinned by constraints.txt. Byte code is compiled now, because the running
# container's file system is read-only; pip and setuptools leave the environment afterwards, as
# nothing installs anything at run time.
RUN python -m venv /opt/cc-bridge \
    && /opt/cc-bridge/bin/pip install --no-cache-dir --constraint constraints.txt '.[server]' \
    && /opt/cc-bridge/bin/python -m pip uninstall --yes --quiet pip setuptools \
    && /opt/cc-bridge/bin/python -m compileall -q /opt/cc-bridge/lib


FROM python:3.11.15-slim-bookworm AS runtime

LABEL org.opencontainers.image.title="cc-gateway-bridge" \
      org.opencontainers.image.description="CC-Gateway agent-event pushes over HTTPS, published to Kafka in order per agent" \
      org.opencontainers.image.licenses="Apache-2.0"

# A fixed numeric id, so that Kubernetes can check runAsNonRoot and file ownership is predictable.
# The outage spool's mount point (BRIDGE_SPOOL_DIR) belongs to that user: a new volume mounted
# there takes this owner, so the bridge can write its spool while the root file system is read-only.
RUN groupadd --system --gid 10001 cc-bridge \
    && useradd --system --uid 10001 --gid cc-bridge --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin cc-bridge \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/cc-bridge/spool

COPY --from=build /opt/cc-bridge /opt/cc-bridge

ENV PATH=/opt/cc-bridge/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    BRIDGE_HOST=0.0.0.0 \
    BRIDGE_MANAGEMENT_HOST=0.0.0.0

USER 10001:10001

# 8043: the push endpoint (HTTPS). 8081: /healthz, /readyz and /metrics (plain HTTP).
EXPOSE 8043 8081

# The bridge drains in-flight pushes on SIGTERM for up to BRIDGE_SHUTDOWN_TIMEOUT_S seconds;
# give the container at least that long to stop (docker stop -t, stop_grace_period, ...).
STOPSIGNAL SIGTERM

# Liveness only: /healthz answers while the process runs. Readiness (Kafka reachable) is
# /readyz, which load balancers and Kubernetes probe themselves. Slim images have no curl.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('BRIDGE_MANAGEMENT_PORT', '8081'); sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:%s/healthz' % port, timeout=2).status == 200 else 1)"]

ENTRYPOINT ["cc-bridge"]
CMD ["serve"]
