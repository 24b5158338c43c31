#!/usr/bin/env bash
# The README's path, in the README's order, on one stack, as a new user types it:
#
#   1. make up
#   2. the Quickstart: source .stack/env; kubectl apply -f examples/tenant.yaml;
#      the Tenant becomes Ready; the credentials in Secret acme-database connect
#      (psql: the tenant's own role, no superuser, pgvector installed);
#      kubectl describe; kubectl apply -f examples/bucket.yaml
#   3. the checks `make test` runs before its tests: make lint chart-check sqlx-check
#
# `make test` after this is the README's next command; CI runs both (.ci/run).
#
# Steps 1 and 3 run with KUBECONFIG pointing at a tripwire: a "cluster" that is
# only a listener recording connections, standing in for the other cluster a
# developer's shell or ~/.kube/config may point at. Whatever talks to the stack
# must name the stack's kubeconfig itself, so the tripwire must see nothing
# (issue 7: the chart check used kubectl's default and reached the data plane
# on localhost:8080). Step 2 does what the README says: source .stack/env.
#
# Removes what it created: the example Bucket, and the Tenant with its database
# (the example says deletionPolicy: Retain, so it is switched to Delete first).
# A Tenant or Bucket that existed before is left alone. The platform stays up,
# as after `make up`; `make down` stops it.
#
#   hack/readme-path.sh      (STRATA_README_TIMEOUT: seconds to Ready, default 180)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"
MAKE=${MAKE:-make}
TIMEOUT=${STRATA_README_TIMEOUT:-180}
TMP=$(mktemp -d)
TENANT=acme       # metadata.name in examples/tenant.yaml
BUCKET=acme-images # metadata.name in examples/bucket.yaml
NS=default

started=$SECONDS
step_started=$SECONDS
say() { printf '\n[readme-path %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
done_step() {
	printf '[readme-path] ok: %s (%ss)\n' "$1" "$((SECONDS - step_started))"
	step_started=$SECONDS
}
fail() {
	printf '[readme-path] FAIL: %s\n' "$*" >&2
	exit 1
}
# For our own bookkeeping and cleanup, not part of the README path.
stack_kubectl() { hack/kubectl.sh --request-timeout=20s "$@"; }

created_tenant=0
created_bucket=0
tripwire_pid=
tripwire_reported=0

tripwire_report() { # phase; fails when anything connected to the tripwire
	if [[ -s $TMP/tripwire.log ]]; then
		tripwire_reported=1
		echo "[readme-path] FAIL: during $1 something used kubectl's implicit default instead of the stack's kubeconfig:" >&2
		sed 's/^/    /' "$TMP/tripwire.log" >&2
		return 1
	fi
	kill -0 "$tripwire_pid" 2>/dev/null || {
		echo "[readme-path] FAIL: the tripwire listener died; its absence could hide a connection" >&2
		return 1
	}
}

cleanup() {
	local rc=$?
	set +e
	if ((created_bucket || created_tenant)); then
		say "cleanup: removing the example objects this run created"
	fi
	if ((created_bucket)); then
		stack_kubectl -n "$NS" delete bucket "$BUCKET" --ignore-not-found --timeout=60s || rc=1
	fi
	if ((created_tenant)); then
		# The operator runs the deletion (finalizer): it drops the database,
		# the role and the catalog entry; the owned Secrets go with the Tenant.
		stack_kubectl -n "$NS" patch tenant "$TENANT" --type=merge \
			-p '{"spec":{"deletionPolicy":"Delete"}}' >/dev/null 2>&1
		if ! stack_kubectl -n "$NS" delete tenant "$TENANT" --ignore-not-found --timeout=120s; then
			echo "[readme-path] FAIL: tenant $TENANT was not deleted; operator log: .stack/run/operator.log" >&2
			rc=1
		elif [[ -s $TMP/tenant-db ]]; then
			local left
			left=$(
				# shellcheck source=/dev/null
				source .stack/env &&
					"$STRATA_PG_BIN_DIR/psql" -X -At "$STRATA_DATABASE_URL" \
						-c "SELECT count(*) FROM pg_database WHERE datname = '$(<"$TMP/tenant-db")'"
			)
			if [[ $left != 0 ]]; then
				echo "[readme-path] FAIL: database $(<"$TMP/tenant-db") of the deleted tenant still exists" >&2
				rc=1
			else
				echo "[readme-path] ok: tenant $TENANT and its database $(<"$TMP/tenant-db") removed"
			fi
		fi
	fi
	if [[ -n $tripwire_pid ]]; then
		if [[ -s $TMP/tripwire.log ]]; then
			rc=1
			((tripwire_reported)) || tripwire_report "this run"
		fi
		kill "$tripwire_pid" 2>/dev/null
		wait "$tripwire_pid" 2>/dev/null
	fi
	rm -rf "$TMP"
	if ((rc == 0)); then
		say "PASS: the README path in $((SECONDS - started))s; the platform is still up (make down stops it)"
	else
		say "FAILED after $((SECONDS - started))s"
	fi
	exit "$rc"
}
trap cleanup EXIT

# --- the tripwire -------------------------------------------------------------
python3 -u - "$TMP/tripwire.port" "$TMP/tripwire.log" <<'PY' &
import os, socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(64)
# Written whole, then renamed: the shell polls for the file.
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(str(s.getsockname()[1]))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
while True:
    c, addr = s.accept()
    with open(sys.argv[2], "a") as f:
        f.write(f"{time.strftime('%H:%M:%S')} connection from {addr[0]}:{addr[1]}\n")
    c.close()
PY
tripwire_pid=$!
for _ in $(seq 1 50); do [[ -s $TMP/tripwire.port ]] && break; sleep 0.1; done
[[ -s $TMP/tripwire.port ]] || fail "the tripwire listener did not start"
cat >"$TMP/tripwire.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: someone-elses
  cluster: {server: "https://127.0.0.1:$(<"$TMP/tripwire.port")", insecure-skip-tls-verify: true}
users:
- name: someone
  user: {token: not-the-stack}
contexts:
- name: someone-elses
  context: {cluster: someone-elses, user: someone}
current-context: someone-elses
EOF
export KUBECONFIG=$TMP/tripwire.kubeconfig
# Only the README's way to point the checks elsewhere, never one left in the shell.
unset STRATA_CHECK_KUBECONFIG

# --- 1. make up ---------------------------------------------------------------
say "1. make up   (KUBECONFIG=tripwire on 127.0.0.1:$(<"$TMP/tripwire.port"))"
"$MAKE" up
tripwire_report "make up"
done_step "make up"

# --- 2. the Quickstart --------------------------------------------------------
say "2. Quickstart: source .stack/env; kubectl apply -f examples/tenant.yaml; ..."
stack_kubectl -n "$NS" get tenant "$TENANT" >/dev/null 2>&1 || created_tenant=1
stack_kubectl -n "$NS" get bucket "$BUCKET" >/dev/null 2>&1 || created_bucket=1
((created_tenant)) || echo "[readme-path] note: tenant $NS/$TENANT existed before this run; it is left in place"
(
	# shellcheck source=/dev/null
	source .stack/env
	[[ ${KUBECONFIG:-} == "$(hack/stack.sh kubeconfig)" ]] ||
		fail ".stack/env does not point KUBECONFIG at the stack's API server (it says '${KUBECONFIG:-}')"
	kubectl apply -f examples/tenant.yaml
	if ! kubectl wait --for=condition=Ready tenant/"$TENANT" --timeout="${TIMEOUT}s"; then
		kubectl describe tenant "$TENANT" >&2 || true
		echo "--- last lines of .stack/run/operator.log" >&2
		tail -n 40 .stack/run/operator.log >&2 || true
		fail "tenant $TENANT is not Ready after ${TIMEOUT}s"
	fi
	kubectl get tenants
	phase=$(kubectl get tenant "$TENANT" -o jsonpath='{.status.phase}')
	[[ $phase == Ready ]] || fail "tenant $TENANT: Ready condition but phase '$phase'"

	# The README's credentials command, verbatim; the URL holds a password, so
	# it is used, never printed.
	url=$(kubectl get secret acme-database -o jsonpath='{.data.url}' | base64 -d)
	[[ -n $url ]] || fail "Secret acme-database has no url"
	row=$("$STRATA_PG_BIN_DIR/psql" -X -At -v ON_ERROR_STOP=1 "$url" -c "
		SELECT current_user, current_database(), rolsuper,
		       coalesce((SELECT extversion FROM pg_extension WHERE extname = 'vector'), 'none')
		FROM pg_roles WHERE rolname = current_user") ||
		fail "the credentials in Secret acme-database do not connect"
	IFS='|' read -r user db super vector <<<"$row"
	[[ $super == f ]] || fail "the tenant's role $user is a superuser"
	[[ $vector != none ]] || fail "pgvector is not installed in the tenant database $db"
	printf '%s' "$db" >"$TMP/tenant-db"
	echo "   credentials connect: role $user, database $db, pgvector $vector"

	kubectl describe tenant "$TENANT" >"$TMP/describe.out"
	grep -q 'Ready' "$TMP/describe.out" || fail "kubectl describe tenant $TENANT shows no Ready condition"
	kubectl apply -f examples/bucket.yaml && kubectl get buckets
)
done_step "Quickstart"

# --- 3. the checks of make test -----------------------------------------------
say "3. make lint chart-check sqlx-check   (KUBECONFIG=tripwire)"
"$MAKE" lint chart-check sqlx-check
tripwire_report "make lint chart-check sqlx-check"
done_step "make test's checks"
