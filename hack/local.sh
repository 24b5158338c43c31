#!/usr/bin/env bash
# Runs strata-operator and strata-dataplane as local processes on the stack
# (`make up` / `make down`). Logs and pids under .stack/run/.
#
#   hack/local.sh up | down | status
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"
RUN=$ROOT/.stack/run
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/debug
# Ports: see "Local ports" in README.md, the one place they are listed (and
# why these: not 8080, kubectl's fallback; not in the range the kernel hands
# out as client source ports). They are the binaries' own defaults.
OPERATOR_ADDR=127.0.0.1:${STRATA_OPERATOR_PORT:-28081}
DATAPLANE_ADDR=127.0.0.1:${STRATA_DATAPLANE_PORT:-28080}
mkdir -p "$RUN"

alive() { [[ -f $RUN/$1.pid ]] && kill -0 "$(<"$RUN/$1.pid")" 2>/dev/null; }

# port_in_use ADDR: something accepts TCP connections on host:port.
port_in_use() { (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; }

wait_ready() { # name url
	for _ in $(seq 1 120); do
		if ! alive "$1"; then
			echo "$1 exited; last lines of $RUN/$1.log:" >&2
			tail -n 30 "$RUN/$1.log" >&2
			return 1
		fi
		curl -fsS "$2" >/dev/null 2>&1 && return 0
		sleep 0.5
	done
	echo "$1 not ready at $2 after 60s; last lines of $RUN/$1.log:" >&2
	tail -n 30 "$RUN/$1.log" >&2
	return 1
}

start() { # name addr command...
	local name=$1 addr=$2
	shift 2
	if alive "$name"; then
		# One started before a port change (or with another STRATA_*_PORT)
		# would never answer on addr: restart it there.
		if [[ $(cat "$RUN/$name.addr" 2>/dev/null) == "$addr" ]]; then
			echo "$name already running (pid $(<"$RUN/$name.pid"))"
			return
		fi
		stop "$name"
	fi
	# A listener we did not start would answer our readiness probe in place
	# of the process we start (which then fails to bind): refuse instead.
	if port_in_use "$addr"; then
		echo "$name: $addr is already in use by a process hack/local.sh did not start;" \
			"stop it or pick another port (README.md, \"Local ports\")" >&2
		return 1
	fi
	nohup "$@" >"$RUN/$name.log" 2>&1 &
	echo $! >"$RUN/$name.pid"
	echo "$addr" >"$RUN/$name.addr"
}

stop() { # name
	local name=$1 pid
	alive "$name" || { rm -f "$RUN/$name.pid" "$RUN/$name.addr"; return 0; }
	pid=$(<"$RUN/$name.pid")
	kill -TERM "$pid"
	for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
	kill -0 "$pid" 2>/dev/null && kill -KILL "$pid"
	rm -f "$RUN/$name.pid" "$RUN/$name.addr"
	echo "stopped $name"
}

case ${1:-} in
up)
	# shellcheck source=/dev/null
	source .stack/env
	# Object bytes: the operator (bucket deletion) and the data plane (the
	# storage API) must address the same store. The stack's S3 server
	# (Garage) unless STRATA_STORAGE_BACKEND says otherwise (`fs`: under
	# STRATA_STORAGE_ROOT); clamd from .stack/env (STRATA_CLAMD_ADDR).
	export STRATA_STORAGE_BACKEND=${STRATA_STORAGE_BACKEND:-s3}
	export STRATA_S3_BUCKET=${STRATA_S3_BUCKET:-strata-data}
	start operator "$OPERATOR_ADDR" env KUBECONFIG="$STRATA_OPERATOR_KUBECONFIG" \
		STRATA_OPERATOR_PROBE_ADDR="$OPERATOR_ADDR" \
		STRATA_API_BASE_URL="http://$DATAPLANE_ADDR" \
		"$BIN/strata-operator"
	start dataplane "$DATAPLANE_ADDR" env STRATA_CATALOG_URL="${STRATA_DATABASE_URL%/*}/strata_platform" \
		STRATA_DATAPLANE_ADDR="$DATAPLANE_ADDR" \
		"$BIN/strata-dataplane"
	wait_ready operator "http://$OPERATOR_ADDR/readyz"
	wait_ready dataplane "http://$DATAPLANE_ADDR/readyz"
	cat <<MSG

Strata is running locally:
  operator       http://$OPERATOR_ADDR/{healthz,readyz,metrics}   log: .stack/run/operator.log
  data plane     http://$DATAPLANE_ADDR/{healthz,readyz,metrics}  log: .stack/run/dataplane.log
  PostgreSQL     ${STRATA_DATABASE_URL%%:*}://…@127.0.0.1:${STRATA_PG_PORT:-55432} (pgvector)
  Redis          $STRATA_REDIS_URL
  S3 (Garage)    $STRATA_S3_ENDPOINT  objects in bucket $STRATA_S3_BUCKET ($STRATA_STORAGE_BACKEND backend), tests in $STRATA_S3_TEST_BUCKET
  clamd          ${STRATA_CLAMD_ADDR:-not configured}
  Kubernetes     KUBECONFIG=$KUBECONFIG

Try it:
  source .stack/env
  kubectl apply -f examples/tenant.yaml
  kubectl get tenants -w

Stop everything with: make down
MSG
	;;
down)
	stop dataplane
	stop operator
	;;
status)
	for n in operator dataplane; do
		if alive $n; then echo "$n: running (pid $(<"$RUN/$n.pid"), $(cat "$RUN/$n.addr" 2>/dev/null || echo "address unknown"))"; else echo "$n: stopped"; fi
	done
	;;
*)
	echo "usage: hack/local.sh up|down|status" >&2
	exit 2
	;;
esac
