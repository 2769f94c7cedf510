#!/usr/bin/env bash
# Prints the path of a promtool (Prometheus' rule checker), fetching it once from Debian's
# `prometheus` package when the machine has none. Only the promtool binary is unpacked, into a
# cache outside the working copy; the package is not installed, so no Prometheus server is set
# up or started.
#
#   deploy/monitoring/get-promtool.sh          -> /var/cache/cc-gateway-bridge/promtool/.../promtool
#
# Cache: /var/cache/cc-gateway-bridge/promtool as root, else ${XDG_CACHE_HOME:-~/.cache}/cc-gateway-bridge/promtool.
# Idempotent: later runs print the cached path at once. Exit 3 when it cannot be had here
# (no promtool, and no apt-get or dpkg-deb to fetch one).
set -euo pipefail

if command -v promtool >/dev/null; then
    command -v promtool
    exit 0
fi
if [ "$(id -u)" -eq 0 ]; then
    cache=/var/cache/cc-gateway-bridge/promtool
else
    cache="${XDG_CACHE_HOME:-$HOME/.cache}/cc-gateway-bridge/promtool"
fi
found="$(find "$cache" -path '*/usr/bin/promtool' -type f 2>/dev/null | sort | tail -n 1 || true)"
if [ -n "$found" ]; then
    echo "$found"
    exit 0
fi
for tool in apt-get dpkg-deb; do
    command -v "$tool" >/dev/null || { echo "get-promtool: no promtool and no $tool to fetch one" >&2; exit 3; }
done

mkdir -p "$cache"
work="$(mktemp -d "$cache/download.XXXXXX")"
trap 'rm -rf "$work"' EXIT
chmod 0755 "$work"  # readable by apt's unprivileged download user
cd "$work"
# A fresh machine may have no package lists yet: refresh them only when the download needs it
# (and only root can).
if ! apt-get download -qq prometheus >&2; then
    [ "$(id -u)" -eq 0 ] || { echo "get-promtool: apt-get download failed; run apt-get update as root" >&2; exit 3; }
    apt-get update -qq >&2
    apt-get download -qq prometheus >&2
fi
package="$(ls prometheus_*.deb)"
version="${package#prometheus_}"
version="${version%.deb}"
dpkg-deb --fsys-tarfile "$package" | tar -x -C "$work" ./usr/bin/promtool
mkdir -p "$cache/$version/usr/bin"
mv "$work/usr/bin/promtool" "$cache/$version/usr/bin/promtool"
echo "$cache/$version/usr/bin/promtool"
