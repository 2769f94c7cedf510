#!/usr/bin/env bash
# A container engine for the compose project and the container test, on a Debian machine without
# Docker: rootful podman from Debian's packages, configured by the files beside this script.
#
#   deploy/containers/setup-engine.sh          install what is missing, then print the settings
#   eval "$(deploy/containers/setup-engine.sh)"  ... and use them in this shell
#
# Prints KEY=VALUE lines (shell-quoted) that point podman at this directory's configuration:
#   CONTAINERS_STORAGE_CONF  storage.conf: overlay driver; images under
#                            /var/lib/cc-gateway-bridge/containers, outside any working copy, so
#                            base images are built once per machine and survive clean clones
#   CONTAINERS_CONF          containers.conf: runc, cgroupfs, file events, reachable ulimits
#   CONTAINERS_REGISTRIES_CONF registries.conf: short names mean docker.io, as with Docker
# Nothing is written under /etc/containers, so a podman already configured on the machine keeps
# its own settings and storage.
#
# Idempotent: a second run only checks that the packages are installed (well under a second).
# Exit codes: 0 ready; 3 this machine cannot have the engine (not root, or no apt-get); other
# codes are failures.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
STATE=/var/lib/cc-gateway-bridge/containers
RUN=/run/cc-gateway-bridge/containers
PACKAGES=(podman runc netavark aardvark-dns iptables catatonit uidmap mmdebstrap)

cannot() { echo "setup-engine: $*" >&2; exit 3; }

[ "$(id -u)" -eq 0 ] || cannot "rootful podman needs root (this is uid $(id -u))"

missing=()
for package in "${PACKAGES[@]}"; do
    dpkg-query -W -f '${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
done
if [ "${#missing[@]}" -gt 0 ]; then
    command -v apt-get >/dev/null || cannot "no apt-get to install ${missing[*]}"
    echo "setup-engine: installing ${missing[*]}" >&2
    export DEBIAN_FRONTEND=noninteractive
    # A fresh machine may have no package lists yet; refresh them only when the install needs it.
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
        || { apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2; }
fi

mkdir -p "$STATE/storage" "$STATE/networks" "$RUN"

cat <<EOF
CONTAINERS_STORAGE_CONF=$HERE/storage.conf
CONTAINERS_CONF=$HERE/containers.conf
CONTAINERS_REGISTRIES_CONF=$HERE/registries.conf
EOF
