#!/usr/bin/env bash
# Builds kube-apiserver and kube-controller-manager for the Kubernetes tests (tests/k8s)
# into ~/.cache/cloud-api-adaptor/k8s/<version>/ and prints that directory.
#
# Debian has no kube-apiserver and nothing else is reachable but the package registries,
# so it is built from the Go module proxy.  `go install k8s.io/kubernetes/cmd/...@v` fails
# ("contains replace directives"): k8s.io/kubernetes requires its staging modules at v0.0.0
# and replaces them with ./staging/src/..., which a dependency's go.mod cannot do.  So a
# throw-away wrapper module requires k8s.io/kubernetes and replaces every staging module
# with its published v0.x.y tag; the list is derived from kubernetes' own go.mod.
#
# Already-built binaries are detected and reused (a warm run takes milliseconds); a cold
# build takes ~5-10 min on 2 cores and ~3 GB of build cache, removed afterwards.
# A lock makes concurrent callers (two test runs, make) wait for one build.
set -euo pipefail
version=${KUBE_VERSION:-v1.37.2}
cache_root=${CAA_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/cloud-api-adaptor}
out=$cache_root/k8s/$version
binaries=(kube-apiserver kube-controller-manager)

have_all() {
  local b
  for b in "${binaries[@]}"; do [ -x "$out/$b" ] || return 1; done
}

mkdir -p "$out"
if have_all; then echo "$out"; exit 0; fi
exec 9>"$out/.lock"
flock 9
if have_all; then echo "$out"; exit 0; fi

command -v go >/dev/null || { echo "build-kube: go is not installed" >&2; exit 2; }
work=$(mktemp -d "${TMPDIR:-/tmp}/caa-kube-build.XXXXXX")
trap 'chmod -R u+w "$work" 2>/dev/null; rm -rf "$work"' EXIT
export GOCACHE=$work/gocache   # ~3 GB, not worth keeping once the binaries exist
export GOFLAGS=-mod=mod CGO_ENABLED=0
cd "$work"

staging_version=v0.${version#v1.}
# kubernetes' own go.mod names its staging modules: "k8s.io/api => ./staging/src/k8s.io/api"
kube_gomod=$(go mod download -json "k8s.io/kubernetes@$version" \
  | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",\{0,1\}$/\1/p')
[ -f "$kube_gomod" ] || { echo "build-kube: cannot fetch k8s.io/kubernetes@$version" >&2; exit 1; }
mapfile -t staging < <(sed -n 's|^[[:space:]]*\(k8s\.io/[^[:space:]]*\) => \./staging/.*|\1|p' "$kube_gomod" | sort -u)
[ ${#staging[@]} -gt 10 ] || { echo "build-kube: no staging modules found in $kube_gomod" >&2; exit 1; }
go_directive=$(sed -n 's/^go \([0-9.]*\).*/\1/p' "$kube_gomod" | head -1)

{
  echo "module caa-kube-build"
  echo
  echo "go $go_directive"
  echo
  echo "require k8s.io/kubernetes $version"
  echo
  for m in "${staging[@]}"; do echo "replace $m => $m $staging_version"; done
} > go.mod

minor=${version#v1.}; minor=${minor%%.*}
ldflags="-s -w"
for kv in "gitVersion=$version" "gitMajor=1" "gitMinor=$minor" "gitTreeState=clean"; do
  ldflags="$ldflags -X k8s.io/component-base/version.$kv -X k8s.io/client-go/pkg/version.$kv"
done
mkdir -p bin
for b in "${binaries[@]}"; do
  echo "build-kube: building $b $version (cold: several minutes)" >&2
  nice go build -trimpath -ldflags "$ldflags" -o "bin/$b" "k8s.io/kubernetes/cmd/$b"
done
for b in "${binaries[@]}"; do
  mv -f "bin/$b" "$out/$b.tmp" && mv -f "$out/$b.tmp" "$out/$b"
done
echo "$out"
