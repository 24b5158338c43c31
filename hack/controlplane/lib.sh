# shellcheck shell=bash
# Functions to run the local Kubernetes control plane (strata-controlplane).
# Source this file; it defines:
#
#   controlplane_up STATE_DIR      build if needed, start, wait until ready
#   controlplane_down STATE_DIR    stop the process started by controlplane_up
#   controlplane_status STATE_DIR  print state; exit status 0 only when ready
#
# Environment:
#   STRATA_KUBE_PORT                  kube-apiserver port on 127.0.0.1 (56443)
#   STRATA_ETCD_PORT                  etcd client port (52379; peer = +1)
#   STRATA_CONTROLPLANE_TIMEOUT       seconds to wait for readiness (120)
#   STRATA_CONTROLPLANE_STOP_TIMEOUT  seconds between SIGTERM and SIGKILL (30)
#   STRATA_CONTROLPLANE_ARGS          extra arguments for strata-controlplane,
#                                     e.g. "--apiserver-arg=--v=2"
#   STRATA_CACHE                      build cache root (see build.sh)
#
# Files in STATE_DIR: admin.kubeconfig (system:masters), operator.kubeconfig
# (user strata-operator, RBAC applies), controlplane.log, controlplane.pid,
# ready (present while the control plane is up), etcd/ and pki/.

_controlplane_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Prints the pid from STATE_DIR/controlplane.pid if that process is alive and
# is strata-controlplane (guards against a recycled pid).
_controlplane_pid() {
  local pidfile="$1/controlplane.pid" pid
  [[ -f "$pidfile" ]] || return 1
  pid="$(<"$pidfile")"
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  if [[ -r "/proc/$pid/cmdline" ]]; then
    tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q 'strata-controlplane' || return 1
  fi
  echo "$pid"
}

_controlplane_readyz() {
  local kubeconfig="$1/admin.kubeconfig"
  [[ -f "$kubeconfig" ]] || return 1
  [[ "$(kubectl --kubeconfig "$kubeconfig" --request-timeout=5s get --raw /readyz 2>/dev/null)" == "ok" ]]
}

_controlplane_fail() {
  local state="$1"
  shift
  echo "controlplane: $*" >&2
  if [[ -f "$state/controlplane.log" ]]; then
    echo "controlplane: last lines of $state/controlplane.log:" >&2
    tail -n 40 "$state/controlplane.log" >&2
  fi
  return 1
}

controlplane_up() {
  local state="${1:?usage: controlplane_up STATE_DIR}"
  mkdir -p "$state"
  state="$(cd "$state" && pwd)"
  local kube_port="${STRATA_KUBE_PORT:-56443}"
  local etcd_port="${STRATA_ETCD_PORT:-52379}"
  local timeout="${STRATA_CONTROLPLANE_TIMEOUT:-120}"
  local pid bin

  if pid="$(_controlplane_pid "$state")"; then
    if [[ -f "$state/ready" ]] && _controlplane_readyz "$state"; then
      echo "controlplane: already running (pid $pid)" >&2
      return 0
    fi
    echo "controlplane: pid $pid is running but not ready yet; waiting" >&2
  else
    bin="$("$_controlplane_dir/build.sh")" || {
      echo "controlplane: build failed" >&2
      return 1
    }
    rm -f "$state/controlplane.pid" "$state/ready"
    printf '\n==== %s starting %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$bin" >>"$state/controlplane.log"
    # New session (setsid) so terminal signals to the caller don't reach it;
    # the inner shell records its own pid and then execs the binary, so the
    # pid file holds the binary's pid whether or not setsid forked.
    # shellcheck disable=SC2016,SC2086
    setsid nohup bash -c 'echo $$ >"$0"; exec "$@"' "$state/controlplane.pid" \
      "$bin" --state-dir "$state" --secure-port "$kube_port" --etcd-port "$etcd_port" \
      ${STRATA_CONTROLPLANE_ARGS:-} \
      </dev/null >>"$state/controlplane.log" 2>&1 &
    disown 2>/dev/null || true
    local i
    for ((i = 0; i < 100; i++)); do
      [[ -s "$state/controlplane.pid" ]] && break
      sleep 0.1
    done
    pid="$(cat "$state/controlplane.pid" 2>/dev/null || true)"
    [[ -n "$pid" ]] || { _controlplane_fail "$state" "process did not start"; return 1; }
    echo "controlplane: started pid $pid (kube-apiserver https://127.0.0.1:$kube_port, etcd 127.0.0.1:$etcd_port)" >&2
  fi

  local deadline=$((SECONDS + timeout))
  while ((SECONDS < deadline)); do
    if ! _controlplane_pid "$state" >/dev/null; then
      rm -f "$state/controlplane.pid"
      _controlplane_fail "$state" "strata-controlplane (pid $pid) exited before becoming ready"
      return 1
    fi
    if [[ -f "$state/ready" ]] && _controlplane_readyz "$state"; then
      echo "controlplane: ready; KUBECONFIG=$state/admin.kubeconfig" >&2
      return 0
    fi
    sleep 0.5
  done
  _controlplane_fail "$state" "not ready after ${timeout}s (pid $pid still running; stop it with controlplane_down $state)"
  return 1
}

controlplane_down() {
  local state="${1:?usage: controlplane_down STATE_DIR}"
  local timeout="${STRATA_CONTROLPLANE_STOP_TIMEOUT:-30}"
  local pid i
  if ! pid="$(_controlplane_pid "$state")"; then
    rm -f "$state/controlplane.pid"
    echo "controlplane: not running" >&2
    return 0
  fi
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < timeout * 10; i++)); do
    _controlplane_pid "$state" >/dev/null || break
    sleep 0.1
  done
  if _controlplane_pid "$state" >/dev/null; then
    echo "controlplane: pid $pid still running after ${timeout}s; sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
      _controlplane_pid "$state" >/dev/null || break
      sleep 0.1
    done
  fi
  rm -f "$state/controlplane.pid" "$state/ready"
  echo "controlplane: stopped (pid $pid)" >&2
}

controlplane_status() {
  local state="${1:?usage: controlplane_status STATE_DIR}"
  local pid
  if ! pid="$(_controlplane_pid "$state")"; then
    echo "controlplane: not running (state dir $state)"
    return 1
  fi
  if [[ -f "$state/ready" ]] && _controlplane_readyz "$state"; then
    echo "controlplane: running and ready (pid $pid, $(head -n1 "$state/ready"))"
    echo "  admin:    KUBECONFIG=$state/admin.kubeconfig"
    echo "  operator: KUBECONFIG=$state/operator.kubeconfig"
    return 0
  fi
  echo "controlplane: running but not ready (pid $pid); see $state/controlplane.log"
  return 1
}
