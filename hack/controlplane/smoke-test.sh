#!/usr/bin/env bash
# Smoke test of the local control plane: starts it in a fresh state directory
# on spare ports, checks CRD status subresource + CEL validation, owner-
# reference garbage collection, namespace deletion, RBAC for the operator
# user, and a restart on the same etcd data, then stops it.
#
#   hack/controlplane/smoke-test.sh [STATE_DIR]
#
# Without STATE_DIR it uses a temporary directory, removed on success.
# Ports: STRATA_KUBE_PORT / STRATA_ETCD_PORT (default here 56543 / 52479, so
# it does not collide with a control plane on the default ports).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=lib.sh
source "$here/lib.sh"

export STRATA_KUBE_PORT="${STRATA_KUBE_PORT:-56543}"
export STRATA_ETCD_PORT="${STRATA_ETCD_PORT:-52479}"
passed=0
failed=0
if [[ $# -gt 0 ]]; then
  state="$1"
  if _controlplane_pid "$state" >/dev/null; then
    echo "smoke-test: a control plane is running in $state; stop it first" >&2
    exit 1
  fi
  rm -rf "$state/etcd" "$state/pki" "$state/ready"
  mkdir -p "$state"
  keep_state=1
else
  state="$(mktemp -d -t strata-cp-smoke.XXXXXX)"
  keep_state=0
fi
cleanup() {
  controlplane_down "$state" || true
  # Keep the state (and its controlplane.log) when something failed.
  if ((keep_state == 0 && failed == 0)); then rm -rf "$state"; fi
}
trap cleanup EXIT

check() {
  local name="$1"
  shift
  if "$@" >/dev/null; then
    echo "ok   $name"
    passed=$((passed + 1))
  else
    echo "FAIL $name"
    failed=$((failed + 1))
  fi
}

admin=(kubectl --kubeconfig "$state/admin.kubeconfig" --request-timeout=20s)
operator=(kubectl --kubeconfig "$state/operator.kubeconfig" --request-timeout=20s)

gone_within() { # seconds, then a kubectl get command
  local seconds="$1" i
  shift
  for ((i = 0; i < seconds * 5; i++)); do
    "$@" >/dev/null 2>&1 || return 0
    sleep 0.2
  done
  return 1
}

controlplane_up "$state"

check "get namespaces" "${admin[@]}" get ns default

"${admin[@]}" apply -f - >/dev/null <<'EOF'
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.smoke.strata.dev
spec:
  group: smoke.strata.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            x-kubernetes-validations:
            - rule: "self.replicas <= self.maxReplicas"
              message: "replicas must not exceed maxReplicas"
            properties:
              replicas: {type: integer}
              maxReplicas: {type: integer}
          status:
            type: object
            properties:
              ready: {type: boolean}
EOF
"${admin[@]}" wait --for=condition=Established crd/widgets.smoke.strata.dev --timeout=30s >/dev/null

widget() { # name replicas maxReplicas
  "${admin[@]}" apply -f - <<EOF
apiVersion: smoke.strata.dev/v1
kind: Widget
metadata: {name: $1, namespace: default}
spec: {replicas: $2, maxReplicas: $3}
EOF
}
check "valid custom resource accepted" widget good 1 3
invalid_rejected() { ! widget bad 5 3 >/dev/null 2>&1; }
check "CEL rule rejects invalid custom resource" invalid_rejected
status_subresource() {
  "${admin[@]}" patch widget good --subresource=status --type=merge -p '{"status":{"ready":true}}' >/dev/null &&
    "${admin[@]}" patch widget good --type=merge -p '{"status":{"ready":false}}' >/dev/null &&
    [[ "$("${admin[@]}" get widget good -o 'jsonpath={.status.ready}')" == "true" ]]
}
check "status subresource" status_subresource

gc_cascade() {
  "${admin[@]}" create configmap owner >/dev/null
  local uid
  uid="$("${admin[@]}" get configmap owner -o 'jsonpath={.metadata.uid}')"
  "${admin[@]}" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: ConfigMap
metadata:
  name: dependent
  namespace: default
  ownerReferences: [{apiVersion: v1, kind: ConfigMap, name: owner, uid: "$uid"}]
EOF
  "${admin[@]}" get configmap dependent >/dev/null
  "${admin[@]}" delete configmap owner >/dev/null
  gone_within 10 "${admin[@]}" get configmap dependent
}
check "garbage collector deletes dependent of deleted owner" gc_cascade

gc_foreground_cr_owner() {
  local uid
  uid="$("${admin[@]}" get widget good -o 'jsonpath={.metadata.uid}')"
  "${admin[@]}" apply -f - >/dev/null <<EOF
apiVersion: v1
kind: ConfigMap
metadata:
  name: child-of-widget
  namespace: default
  ownerReferences: [{apiVersion: smoke.strata.dev/v1, kind: Widget, name: good, uid: "$uid", blockOwnerDeletion: true}]
EOF
  "${admin[@]}" delete widget good --cascade=foreground --timeout=30s >/dev/null &&
    gone_within 10 "${admin[@]}" get configmap child-of-widget
}
check "foreground deletion with a custom resource owner" gc_foreground_cr_owner

namespace_deletion() {
  "${admin[@]}" create namespace smoke-doomed >/dev/null &&
    "${admin[@]}" -n smoke-doomed create configmap x >/dev/null &&
    "${admin[@]}" delete namespace smoke-doomed --timeout=60s >/dev/null
}
check "namespace deletion finalizes" namespace_deletion

can_i() { "${operator[@]}" auth can-i "$@" 2>/dev/null || true; }
check "operator user cannot list namespaces without RBAC" test "$(can_i list namespaces)" = no
"${admin[@]}" create clusterrole smoke-ns-reader --verb=get,list,watch --resource=namespaces >/dev/null
"${admin[@]}" create clusterrolebinding smoke-ns-reader --clusterrole=smoke-ns-reader --user=strata-operator >/dev/null
rbac_yes() {
  local i
  for ((i = 0; i < 20; i++)); do
    [[ "$(can_i list namespaces)" == yes ]] && return 0
    sleep 0.25
  done
  return 1
}
check "operator user can list namespaces after ClusterRoleBinding" rbac_yes
check "operator user still cannot create namespaces" test "$(can_i create namespaces)" = no
aggregated_view() { [[ -n "$("${admin[@]}" get clusterrole view -o 'jsonpath={.rules}')" ]]; }
check "aggregated ClusterRole view has rules" aggregated_view

"${admin[@]}" create configmap survivor --from-literal=k=v >/dev/null
controlplane_down "$state"
check "stopped" test ! -e "$state/controlplane.pid"
controlplane_up "$state"
survived() { [[ "$("${admin[@]}" get configmap survivor -o 'jsonpath={.data.k}')" == v ]]; }
check "objects survive a restart" survived
check "CRD survives a restart" "${admin[@]}" get crd widgets.smoke.strata.dev

pid="$(cat "$state/controlplane.pid")"
echo "strata-controlplane RSS: $(($(awk '/VmRSS/ {print $2}' "/proc/$pid/status") / 1024)) MiB"

echo "$passed passed, $failed failed"
((failed == 0))
