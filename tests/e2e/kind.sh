#!/usr/bin/env bash
# The e2e suite (tests/e2e/run.sh) on a kind cluster, where Docker exists
# (`make e2e-kind`): create the cluster from kind-config.yaml (once), load
# the images that hack/image.sh built, relay the local stack's services onto
# the kind network's gateway so that pods reach them, run the suite.
#
# Environment: KIND (default kind), STRATA_KIND_CLUSTER (default strata, as
# in kind-config.yaml), STRATA_KIND_DELETE=1 deletes the cluster afterwards.
# Linux with a Docker engine: pods reach the host at the gateway of the
# Docker network "kind" (Docker Desktop's VM would need another address:
# set STRATA_E2E_HOST yourself).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
cd "$ROOT"
KIND=${KIND:-kind}
CLUSTER=${STRATA_KIND_CLUSTER:-strata}
KUBECONFIG=$ROOT/.stack/kind-$CLUSTER.kubeconfig
export KUBECONFIG
command -v "$KIND" >/dev/null || { echo "e2e-kind: '$KIND' is not on PATH (https://kind.sigs.k8s.io)" >&2; exit 1; }
if ! command -v docker >/dev/null || ! docker info >/dev/null 2>&1; then
	echo "e2e-kind: needs a running Docker engine" >&2
	exit 1
fi
# shellcheck source=/dev/null
source .stack/env

if ! "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
	"$KIND" create cluster --name "$CLUSTER" --config kind-config.yaml --kubeconfig "$KUBECONFIG" --wait 120s
else
	"$KIND" export kubeconfig --name "$CLUSTER" --kubeconfig "$KUBECONFIG"
fi

dir=$(hack/image.sh dir)
for name in strata-operator strata-dataplane; do
	"$KIND" load image-archive --name "$CLUSTER" "$dir/$name.tar"
done

# The stack listens on 127.0.0.1 only: relay its ports onto the kind
# network's gateway (reachable from the kind node, not from elsewhere).
host=${STRATA_E2E_HOST:-$(docker network inspect kind -f '{{range .IPAM.Config}}{{.Gateway}} {{end}}' | tr ' ' '\n' | grep -m1 -E '^[0-9]+\.')}
[[ -n $host ]] || { echo "e2e-kind: cannot find the kind network's IPv4 gateway" >&2; exit 1; }
forward_bin=$(hack/controlplane/build.sh forward)
maps=()
for port in "${STRATA_PG_PORT:-55432}" "${STRATA_REDIS_PORT:-56379}" "${STRATA_S3_PORT:-53900}"; do
	maps+=(--map "$host:$port=127.0.0.1:$port")
done
"$forward_bin" "${maps[@]}" &
forward=$!
stop() {
	local status=$?
	kill "$forward" 2>/dev/null || true
	if [[ ${STRATA_KIND_DELETE:-} == 1 ]]; then
		"$KIND" delete cluster --name "$CLUSTER" || true
	fi
	exit "$status"
}
trap stop EXIT

STRATA_E2E_HOST=$host STRATA_E2E_SERVICE_ACCESS=nodeport tests/e2e/run.sh
