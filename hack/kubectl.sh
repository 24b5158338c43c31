#!/usr/bin/env bash
# kubectl against the local stack's kube-apiserver, as its cluster admin.
#
#   hack/kubectl.sh get tenants -A
#
# Every script and make target that talks to the stack goes through this (or
# passes the stack's kubeconfig explicitly), never through kubectl's implicit
# default: that is $KUBECONFIG or ~/.kube/config when present, some other
# cluster of the developer's, and localhost:8080 when not, which is nobody's
# API server (issue 7: the chart check once asked a data plane listening
# there for OpenAPI). The --kubeconfig flag makes kubectl read that file only.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
kubeconfig=$("$ROOT/hack/stack.sh" kubeconfig)
exec kubectl --kubeconfig "$kubeconfig" "$@"
