#!/usr/bin/env bash
# Builds the pinned helm v3 and kustomize v5 from the Go module proxy (`go install`), for the
# deploy tests (tests/deploy) and for anyone rendering the chart locally.
#
# Binaries land in .cache/go-bin (gitignored) under versioned names, so a bumped pin rebuilds
# and a cached one costs nothing. GOPATH and GOCACHE live under .cache too, so a rebuild reuses
# the module downloads and compiled packages. Each built binary is also kept in a per-user store
# ($XDG_CACHE_HOME or ~/.cache, under cloud-api-adaptor/go-bin) and taken from there first, so a
# fresh clone on the same machine (CI) does not rebuild. The first build takes about 3 minutes
# on 2 cores (helm is most of it).
#
# Prints one `name=path` line per tool on stdout; progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."

HELM_VERSION=v3.21.4
KUSTOMIZE_VERSION=v5.8.1 # v5.8.3 needs go >= 1.27
# The Kubernetes version helm assumes without a cluster (.Capabilities.KubeVersion, lint's deprecation
# checks): the k8s.io/client-go minor helm is built with, as helm's own Makefile sets it.
HELM_KUBE_MINOR=36

cache="$PWD/.cache"
bin="$cache/go-bin"
store="${XDG_CACHE_HOME:-$HOME/.cache}/cloud-api-adaptor/go-bin"
mkdir -p "$bin"
export GOPATH="$cache/go" GOCACHE="$cache/go-build" GOFLAGS="-trimpath -buildvcs=false" CGO_ENABLED=0

tmp=""
trap '[ -z "$tmp" ] || rm -rf "$tmp"' EXIT

# install NAME VERSION PACKAGE [-X flags...]
install() {
  local name=$1 version=$2 package=$3
  shift 3
  local file="$name-$version"
  if [ ! -x "$bin/$file" ] && [ -x "$store/$file" ]; then
    cp "$store/$file" "$bin/.$file.tmp" && mv "$bin/.$file.tmp" "$bin/$file"
  fi
  if [ ! -x "$bin/$file" ]; then
    if ! command -v go >/dev/null 2>&1; then
      echo "install-deploy-tools: go is not on PATH (needed to build $name)" >&2
      exit 1
    fi
    tmp=$(mktemp -d "$bin/.build.XXXXXX")
    echo "install-deploy-tools: building $name $version (cached afterwards)" >&2
    local start=$SECONDS
    GOBIN="$tmp" go install -ldflags="-s -w $*" "$package@$version" >&2
    mv "$tmp/$name" "$bin/$file"
    rm -rf "$tmp"
    tmp=""
    echo "install-deploy-tools: built $name $version in $((SECONDS - start)) s" >&2
    if mkdir -p "$store" 2>/dev/null; then
      cp "$bin/$file" "$store/.$file.tmp" && mv "$store/.$file.tmp" "$store/$file"
    fi
  fi
  echo "$name=$bin/$file"
}

helm_x=""
for pkg in pkg/chartutil pkg/lint/rules; do
  helm_x+=" -X helm.sh/helm/v3/$pkg.k8sVersionMajor=1 -X helm.sh/helm/v3/$pkg.k8sVersionMinor=$HELM_KUBE_MINOR"
done
install helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm \
  "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION$helm_x"
install kustomize "$KUSTOMIZE_VERSION" sigs.k8s.io/kustomize/kustomize/v5 \
  "-X sigs.k8s.io/kustomize/api/provenance.version=$KUSTOMIZE_VERSION"
