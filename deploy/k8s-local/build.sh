#!/usr/bin/env bash
# Builds the binaries of a single-node Kubernetes from the Go module proxy, once per version, into
# a cache directory outside the repository: kube-apiserver, kube-controller-manager,
# kube-scheduler, kubelet, kube-proxy, kubectl, etcd, CoreDNS, and the pause program.
# Nothing but this recipe is kept in the repository. A stamp file marks a finished build; a build
# cut short starts again where Go's own caches left it.
#
#   deploy/k8s-local/build.sh            # prints the directory that holds bin/
#   K8S_VERSION=v1.34.4 K8S_CACHE=/somewhere deploy/k8s-local/build.sh
set -euo pipefail

K8S_VERSION=${K8S_VERSION:-v1.34.4}
COREDNS_VERSION=${COREDNS_VERSION:-v1.12.1}
CACHE=${K8S_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cc-bridge-k8s}
OUT=$CACHE/$K8S_VERSION
STAMP=$OUT/.built-$K8S_VERSION-coredns-$COREDNS_VERSION
here=$(cd "$(dirname "$0")" && pwd)

if [ -f "$STAMP" ]; then echo "$OUT"; exit 0; fi
mkdir -p "$OUT/bin" "$OUT/src"
log() { echo "k8s-build: $*" >&2; }

# Staging modules (k8s.io/api, client-go, ...) are replaced by relative paths in
# k8s.io/kubernetes' own go.mod, which `go install` refuses. A wrapper module requires the main
# module and maps each staging module to its published v0.x.y twin.
staging_version=v0.${K8S_VERSION#v1.}
wrap=$OUT/src/kubernetes
mkdir -p "$wrap/etcd"
(
  cd "$wrap"
  export GOFLAGS=-mod=mod
  go mod download -json "k8s.io/kubernetes@$K8S_VERSION" >/dev/null
  modfile=$(go env GOMODCACHE)/cache/download/k8s.io/kubernetes/@v/$K8S_VERSION.mod
  {
    echo "module local/kubernetes-build"
    echo
    echo "go $(awk '$1 == "go" {print $2; exit}' "$modfile")"
    echo
    echo "require k8s.io/kubernetes $K8S_VERSION"
    echo
    echo "replace ("
    awk '$2 == "=>" && $3 ~ /^\.\/staging\// {print "\t" $1 " => " $1 " '"$staging_version"'"}' "$modfile"
    echo ")"
  } >go.mod
  # etcd as a program of this module, so it uses the etcd server version Kubernetes pins.
  cat >etcd/main.go <<'GO'
// Command etcd starts the etcd server with the version that the Kubernetes module graph pins.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  cat >tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
)
GO
  log "resolving modules for $K8S_VERSION"
  go mod tidy >&2
  ver="-X k8s.io/component-base/version.gitVersion=$K8S_VERSION"
  ver="$ver -X k8s.io/component-base/version.gitMajor=1"
  ver="$ver -X k8s.io/component-base/version.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2)"
  ver="$ver -X k8s.io/component-base/version.gitTreeState=clean"
  ver="$ver -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"
  for cmd in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
    [ -x "$OUT/bin/$cmd" ] && continue
    log "building $cmd"
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $ver" -o "$OUT/bin/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd"
    mv "$OUT/bin/$cmd.tmp" "$OUT/bin/$cmd"
  done
  if [ ! -x "$OUT/bin/etcd" ]; then
    log "building etcd"
    CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$OUT/bin/etcd.tmp" ./etcd
    mv "$OUT/bin/etcd.tmp" "$OUT/bin/etcd"
  fi
  if [ ! -x "$OUT/bin/pause" ]; then
    log "building pause"
    pause_c=$(go env GOMODCACHE)/k8s.io/kubernetes@$K8S_VERSION/build/pause/linux/pause.c
    gcc -Os -static -o "$OUT/bin/pause" -DVERSION="\"$K8S_VERSION\"" "$pause_c"
    strip "$OUT/bin/pause" || true
  fi
)

# CoreDNS in a module of its own: its dependency versions differ from Kubernetes'.
if [ ! -x "$OUT/bin/coredns" ]; then
  log "building coredns $COREDNS_VERSION"
  GOBIN=$OUT/bin.tmp CGO_ENABLED=0 go install -trimpath -ldflags "-s -w" "github.com/coredns/coredns@$COREDNS_VERSION"
  mv "$OUT/bin.tmp/coredns" "$OUT/bin/coredns"
  rmdir "$OUT/bin.tmp"
fi

touch "$STAMP"
log "done: $OUT/bin"
echo "$OUT"
