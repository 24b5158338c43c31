#!/usr/bin/env bash
# Developer tools built from the Go module proxy into the cache, keyed by
# version (built once per machine). Prints the directory holding the binary.
#
#   hack/tools.sh helm
set -euo pipefail

CACHE=${STRATA_CACHE:-$HOME/.cache/strata}
HELM_VERSION=v3.22.0

case ${1:-} in
helm)
	dir=$CACHE/helm-$HELM_VERSION
	if [[ ! -x $dir/helm ]]; then
		echo "tools: building helm $HELM_VERSION into $dir (once)" >&2
		mkdir -p "$dir"
		GOBIN=$dir CGO_ENABLED=0 go install "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
	fi
	echo "$dir"
	;;
*)
	echo "usage: hack/tools.sh helm" >&2
	exit 2
	;;
esac
