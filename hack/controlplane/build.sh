#!/usr/bin/env bash
# Builds strata-controlplane (or, with the argument "node", strata-node: the
# kubelet, kube-proxy and kube-scheduler of hack/lib/node.sh, from node/; or
# "forward", strata-forward, the TCP relay of node.sh and tests/e2e/kind.sh)
# into a cache outside the repository and prints the binary's path on
# stdout. A no-op when that exact build already exists.
#
#   build.sh [controlplane|node|forward]
#   STRATA_CACHE   cache root (default: $HOME/.cache/strata)
#
# The cache key is the pinned k8s.io/kubernetes version plus a hash of go.mod,
# go.sum and the Go sources (both programs), so any change to them builds a
# new binary. Both share one module and one Go build cache.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

case "${1:-controlplane}" in
  controlplane) name=strata-controlplane target=. ;;
  node) name=strata-node target=./node ;;
  forward) name=strata-forward target=./forward ;;
  *)
    echo "usage: build.sh [controlplane|node|forward]" >&2
    exit 2
    ;;
esac

k8s_version="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v[0-9]/ { print $2; exit }' go.mod)"
if [[ -z "$k8s_version" ]]; then
  echo "build.sh: cannot find the k8s.io/kubernetes version in go.mod" >&2
  exit 1
fi

shopt -s nullglob
sources=(go.mod go.sum *.go node/*.go forward/*.go)
shopt -u nullglob
hash="$(
  for f in "${sources[@]}"; do
    printf '%s\0' "$f"
    cat "$f"
  done | sha256sum | cut -c1-16
)"

cache_root="${STRATA_CACHE:-$HOME/.cache/strata}"
out_dir="$cache_root/controlplane-$k8s_version-$hash"
bin="$out_dir/$name"

if [[ -x "$bin" ]]; then
  echo "$bin"
  exit 0
fi

if ! command -v go >/dev/null 2>&1; then
  echo "build.sh: 'go' is not on PATH (needed once to build $bin)" >&2
  exit 1
fi

mkdir -p "$out_dir"
# One build per binary at a time: `stack.sh up` may have started this very
# build in the background (to overlap it with Garage's); wait for it.
exec 9>"$out_dir/.$name.lock"
flock 9
if [[ -x "$bin" ]]; then
  echo "$bin"
  exit 0
fi
tmp="$out_dir/.$name.tmp.$$"
trap 'rm -f "$tmp"' EXIT

# Stamp the binary with the Kubernetes release, as the upstream build does;
# the API server derives its version and emulation/compatibility version
# from it.
minor="${k8s_version#v1.}"
minor="${minor%%.*}"
build_date="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
ldflags="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$k8s_version"
  ldflags+=" -X $pkg.gitMajor=1"
  ldflags+=" -X $pkg.gitMinor=$minor"
  ldflags+=" -X $pkg.gitTreeState=clean"
  ldflags+=" -X $pkg.buildDate=$build_date"
done

echo "build.sh: building $name ($k8s_version) into $out_dir (first build takes several minutes)" >&2
CGO_ENABLED=0 go build -mod=readonly -trimpath -buildvcs=false -ldflags "$ldflags" -o "$tmp" "$target"
mv -f "$tmp" "$bin"
echo "$bin"
