#!/usr/bin/env bash
# Strata's end-to-end suite: the Helm chart with the images just built, on a
# real cluster (the local node of `make node-up`, or kind), against the local
# stack's PostgreSQL, Redis and S3. Every step must pass; the first failure
# stops the run (with the cluster's state printed) and the exit status is 1.
#
#   helm install → both Deployments Available (pods non-root, read-only root
#   filesystem; the data plane's probes and metrics through its Service) →
#   a Tenant and a Bucket Ready → the tenant's API through the Service:
#   invitation, document write, vector search, object upload/download →
#   delete the leading operator pod, the other takes over and reconciles →
#   helm upgrade with a changed value rolls both Deployments (no restarts, no
#   failed request through the Service meanwhile, the cursor key kept) →
#   delete the Tenant: its database and its objects are gone → helm
#   uninstall leaves nothing of the release (the CRDs stay).
#
# Usage (make e2e / make e2e-kind set all of this up):
#   KUBECONFIG=<cluster> STRATA_E2E_HOST=<address pods reach the stack at> tests/e2e/run.sh
#
# Environment:
#   KUBECONFIG                the cluster (required; never kubectl's implicit default)
#   STRATA_E2E_HOST           address at which pods reach the stack's services
#                             (the local node: 10.244.0.1; kind: the Docker network's gateway)
#   STRATA_E2E_SERVICE_ACCESS clusterip (default: the host routes Service IPs, as
#                             on the local node) or nodeport (kind: the Service
#                             is a NodePort, reached at the node's address)
#   STRATA_E2E_NAMESPACE      release namespace (default strata-e2e)
#   STRATA_E2E_KEEP=1         leave everything in place after a failure
#   STRATA_E2E_HOST_PROCS=1   the pods' processes are this host's (the local
#                             node): check their uid, capabilities and
#                             read-only root in /proc too
# and the stack's variables from .stack/env (sourced when present).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd -P)
cd "$ROOT"
: "${KUBECONFIG:?KUBECONFIG must name the e2e cluster}"
E2E_KUBECONFIG=$KUBECONFIG
# .stack/env sets KUBECONFIG to the stack's API server: keep ours.
# shellcheck source=/dev/null
[[ -f .stack/env ]] && source .stack/env
KUBECONFIG=$E2E_KUBECONFIG
export KUBECONFIG
[[ -s $KUBECONFIG ]] || { echo "e2e: KUBECONFIG=$KUBECONFIG is not a file" >&2; exit 1; }
# Never the stack's own API server: an operator in it would reconcile the
# Tenants of `cargo test`, and the cleanup deletes a namespace.
if [[ $(cd "$(dirname "$KUBECONFIG")" && pwd -P) == "$ROOT/.stack/kube" ]]; then
	echo "e2e: KUBECONFIG is the stack's API server; use the node's (hack/stack.sh node-kubeconfig) or kind's" >&2
	exit 1
fi
HOST=${STRATA_E2E_HOST:?STRATA_E2E_HOST must be the address pods reach the stack at}
ACCESS=${STRATA_E2E_SERVICE_ACCESS:-clusterip}
[[ $ACCESS == clusterip || $ACCESS == nodeport ]] || { echo "e2e: STRATA_E2E_SERVICE_ACCESS must be clusterip or nodeport" >&2; exit 1; }
NS=${STRATA_E2E_NAMESPACE:-strata-e2e}
RELEASE=strata
PLATFORM_DB=strata_e2e
CHART=charts/strata
for v in STRATA_DATABASE_URL STRATA_DATAPLANE_DATABASE_URL STRATA_REDIS_URL STRATA_S3_ENDPOINT \
	STRATA_S3_ACCESS_KEY_ID STRATA_S3_SECRET_ACCESS_KEY STRATA_S3_BUCKET STRATA_S3_REGION STRATA_PG_BIN_DIR; do
	[[ -n ${!v:-} ]] || { echo "e2e: $v is not set (make stack-up; source .stack/env)" >&2; exit 1; }
done
command -v helm >/dev/null || PATH="$("$ROOT/hack/tools.sh" helm):$PATH"
for tool in kubectl helm curl jq; do
	command -v "$tool" >/dev/null || { echo "e2e: $tool is not on PATH" >&2; exit 1; }
done

SUFFIX=$(od -An -vtx1 -N3 /dev/urandom | tr -d ' \n')
TENANT=e2e-$SUFFIX
BUCKET=e2e-files-$SUFFIX
TMP=$(mktemp -d)
STARTED=$SECONDS
declare -a TIMINGS=()

k() { kubectl --request-timeout=30s "$@"; }
kn() { k -n "$NS" "$@"; }
# Messages go to fd 3 (the terminal's stderr): never swallowed by a caller's
# redirection or captured by $(...).
exec 3>&2
say() { printf '[e2e %s] %s\n' "$(date +%H:%M:%S)" "$*" >&3; }
psql_admin() { "$STRATA_PG_BIN_DIR/psql" "$STRATA_DATABASE_URL" -v ON_ERROR_STOP=1 -tAqc "$1"; }
# with_host URL: the same URL with its host:port replaced by $HOST and the same port.
with_host() { sed -E "s#@127\.0\.0\.1:#@$HOST:#; s#^(redis|http)://127\.0\.0\.1:#\1://$HOST:#" <<<"$1"; }

dump_state() {
	say "cluster state at the failure:"
	k get nodes -o wide 2>&1 | sed 's/^/    /' || true
	kn get all,lease,secret,pdb -o wide 2>&1 | sed 's/^/    /' || true
	k get tenants,buckets -A -o wide 2>&1 | sed 's/^/    /' || true
	local p
	for p in $(kn get pods -o name 2>/dev/null); do
		say "--- $p"
		kn describe "$p" 2>&1 | tail -n 15 | sed 's/^/    /' || true
		kn logs "$p" --tail=30 --all-containers 2>&1 | sed 's/^/    /' || true
	done
	kn get events --sort-by=.lastTimestamp 2>&1 | tail -n 25 | sed 's/^/    /' || true
}

cleanup() {
	local status=$?
	if ((status != 0)); then
		dump_state
		if [[ ${STRATA_E2E_KEEP:-} == 1 ]]; then
			say "FAILED; STRATA_E2E_KEEP=1: namespace $NS, release $RELEASE and database $PLATFORM_DB left in place"
			rm -rf "$TMP"
			exit "$status"
		fi
	fi
	# Whatever a failed run left: Tenants first (their finalizers need the
	# operator), then the release, the namespace and the platform database.
	k delete tenants,buckets -n "$NS" --all --wait=true --timeout=120s >/dev/null 2>&1 || true
	helm uninstall "$RELEASE" -n "$NS" --wait --timeout 120s >/dev/null 2>&1 || true
	k delete namespace "$NS" --wait=true --timeout=120s >/dev/null 2>&1 || true
	psql_admin "DROP DATABASE IF EXISTS $PLATFORM_DB WITH (FORCE)" >/dev/null 2>&1 || true
	rm -rf "$TMP"
	if ((status == 0)); then
		say "PASSED in $((SECONDS - STARTED))s"
	else
		say "FAILED after $((SECONDS - STARTED))s"
	fi
	printf '  %s\n' "${TIMINGS[@]}"
	exit "$status"
}
trap cleanup EXIT

fail() {
	say "FAIL: $*"
	exit 1
}

# step NAME FUNCTION: run one step, time it, stop at its failure.
step() {
	local name=$1 t0=$SECONDS
	shift
	say "== $name"
	"$@" || fail "$name"
	TIMINGS+=("$(printf '%-58s %4ss' "$name" "$((SECONDS - t0))")")
}

# until_ok TIMEOUT DESC COMMAND...: poll every second.
until_ok() {
	local timeout=$1 desc=$2 deadline=$((SECONDS + $1))
	shift 2
	until "$@" >/dev/null 2>&1; do
		((SECONDS < deadline)) || { say "timed out after ${timeout}s: $desc"; return 1; }
		sleep 1
	done
}

# --- the data plane through its Service ---------------------------------------
API_BASE=""
service_url() {
	if [[ $ACCESS == clusterip ]]; then
		local ip port
		ip=$(kn get service "$RELEASE-dataplane" -o jsonpath='{.spec.clusterIP}')
		port=$(kn get service "$RELEASE-dataplane" -o jsonpath='{.spec.ports[0].port}')
		API_BASE="http://$ip:$port"
	else
		# kind: the host cannot route Service IPs, but reaches the node's
		# address (the Docker network), where kube-proxy serves the NodePort.
		local node port
		node=$(k get nodes -o jsonpath='{.items[0].status.addresses[?(@.type=="InternalIP")].address}')
		port=$(kn get service "$RELEASE-dataplane" -o jsonpath='{.spec.ports[0].nodePort}')
		[[ -n $node && -n $port ]] || { say "no node address or NodePort"; return 1; }
		API_BASE="http://$node:$port"
	fi
	until_ok 30 "the data plane Service at $API_BASE" curl -fsS "$API_BASE/healthz"
}

# api METHOD PATH [curl args...]: a request to the tenant's API; prints the
# body, fails on a status >= 400 (the body is shown).
api() {
	local method=$1 path=$2 code
	shift 2
	code=$(curl -sS -o "$TMP/body" -w '%{http_code}' -X "$method" "$API_BASE/v1/tenants/$TENANT$path" \
		-H "Authorization: Bearer ${KEY:-none}" "$@") || return 1
	if ((code >= 400)); then
		say "$method $path -> $code: $(head -c 600 "$TMP/body")"
		return 1
	fi
	cat "$TMP/body"
}

# --- steps --------------------------------------------------------------------

preflight() {
	k get --raw /readyz >/dev/null || return 1
	local ready
	ready=$(k get nodes -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}')
	grep -qx True <<<"$ready" || { say "no Ready node"; return 1; }
	# A previous run's leftovers go first.
	if k get namespace "$NS" >/dev/null 2>&1; then
		say "removing namespace $NS left by an earlier run"
		k delete tenants,buckets -n "$NS" --all --wait=true --timeout=120s >/dev/null 2>&1 || true
		helm uninstall "$RELEASE" -n "$NS" --wait >/dev/null 2>&1 || true
		k delete namespace "$NS" --wait=true --timeout=120s || return 1
	fi
	psql_admin "DROP DATABASE IF EXISTS $PLATFORM_DB WITH (FORCE)" >/dev/null
}

secrets() {
	k create namespace "$NS" >/dev/null
	local admin catalog s3
	admin=$(with_host "$STRATA_DATABASE_URL")
	catalog=$(with_host "${STRATA_DATAPLANE_DATABASE_URL%/*}/$PLATFORM_DB")
	s3=$(with_host "$STRATA_S3_ENDPOINT")
	kn create secret generic strata-database --from-literal=url="$admin" >/dev/null
	kn create secret generic strata-catalog --from-literal=url="$catalog" >/dev/null
	kn create secret generic strata-redis --from-literal=url="$(with_host "$STRATA_REDIS_URL")" >/dev/null
	kn create secret generic strata-s3 --from-literal=accessKeyId="$STRATA_S3_ACCESS_KEY_ID" \
		--from-literal=secretAccessKey="$STRATA_S3_SECRET_ACCESS_KEY" >/dev/null
	HELM_VALUES=(
		--set database.platformDatabase="$PLATFORM_DB"
		--set redis.existingSecret=strata-redis
		--set storage.s3.endpoint="$s3"
		--set storage.s3.region="$STRATA_S3_REGION"
		--set storage.s3.bucket="$STRATA_S3_BUCKET"
	)
	[[ $ACCESS == nodeport ]] && HELM_VALUES+=(--set dataplane.service.type=NodePort)
	return 0
}

install() {
	local t0=$SECONDS
	helm install "$RELEASE" "$CHART" -n "$NS" "${HELM_VALUES[@]}" >"$TMP/install.out" || { cat "$TMP/install.out"; return 1; }
	grep -q 'make images' "$TMP/install.out" || { say "NOTES do not say how to get the images"; return 1; }
	until_ok 180 "both Deployments Available" deployments_available || return 1
	say "both Deployments Available $((SECONDS - t0))s after helm install"
	# Pod start: creation to Ready, per pod.
	kn get pods -o json | jq -r '.items[] | "\(.metadata.name) \(.metadata.creationTimestamp) \(.status.conditions[] | select(.type=="Ready") | .lastTransitionTime)"' |
		while read -r pod created ready; do
			say "pod $pod ready $(($(date -d "$ready" +%s) - $(date -d "$created" +%s)))s after it was created"
		done
}

# deployments_available: both Available; a pod stuck in a state that no
# waiting fixes (image not there, bad config, crash loop) fails at once.
deployments_available() {
	local stuck
	stuck=$(kn get pods -o json | jq -r '.items[] | .metadata.name as $p | .status.containerStatuses[]?
		| select(.state.waiting.reason // "" | test("ErrImagePull|ImagePullBackOff|ErrImageNeverPull|CreateContainerConfigError|CrashLoopBackOff"))
		| "\($p): \(.state.waiting.reason): \(.state.waiting.message // "")"')
	if [[ -n $stuck ]]; then
		say "stuck: $stuck"
		exit 1
	fi
	[[ $(kn get deployment "$RELEASE-operator" "$RELEASE-dataplane" \
		-o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Available")].status}{" "}{end}') == "True True " ]]
}

pods_hardened() {
	local pods
	pods=$(kn get pods -o json)
	# Two of each, all Running and Ready, no restarts.
	jq -e '[.items[] | select(.metadata.labels["app.kubernetes.io/component"] == "operator")] | length == 2' <<<"$pods" >/dev/null || { say "not 2 operator pods"; return 1; }
	jq -e '[.items[] | select(.metadata.labels["app.kubernetes.io/component"] == "dataplane")] | length == 2' <<<"$pods" >/dev/null || { say "not 2 data plane pods"; return 1; }
	if ! jq -e 'all(.items[]; .status.phase == "Running" and all(.status.containerStatuses[]; .ready and .restartCount == 0))' <<<"$pods" >/dev/null; then
		local p
		for p in $(jq -r '.items[] | select(any(.status.containerStatuses[]; .restartCount > 0)) | .metadata.name' <<<"$pods"); do
			say "pod $p restarted; its previous run ended with: $(kn logs "$p" --previous --tail=4 2>&1 | tr '\n' ' ')"
		done
		say "a pod is not Running/Ready or restarted"
		return 1
	fi
	# Non-root, read-only root filesystem, nothing extra: as admitted and run.
	jq -e 'all(.items[]; .spec.securityContext.runAsNonRoot == true and .spec.securityContext.runAsUser == 65532
		and all(.spec.containers[]; .securityContext.readOnlyRootFilesystem == true
			and .securityContext.allowPrivilegeEscalation == false
			and .securityContext.capabilities.drop == ["ALL"]
			and .securityContext.seccompProfile.type == "RuntimeDefault"))' <<<"$pods" >/dev/null ||
		{ say "a pod lacks the security context"; return 1; }
	# The images are the ones just built (hack/image.sh's references, the
	# chart's defaults), run from the image the runtime has (imageID).
	local want got
	for want in $(hack/image.sh refs); do
		got=$(jq -r --arg img "$want" '[.items[] | select(.spec.containers[0].image == $img and (.status.containerStatuses[0].imageID | length > 0))] | length' <<<"$pods")
		((got == 2)) || { say "image $want: $got pods run it, want 2"; return 1; }
	done
	# On the local node the containers are host processes: check what the
	# kernel says, not only what the spec asks for.
	if [[ ${STRATA_E2E_HOST_PROCS:-} == 1 ]]; then
		local name pid n=0
		for name in strata-operator strata-dataplane; do
			for pid in $(pgrep -f "^/usr/local/bin/$name( |$)"); do
				# Only this release's containers (their cgroup is a kubepods one).
				grep -q kubepods "/proc/$pid/cgroup" 2>/dev/null || continue
				[[ $(awk '/^Uid:/ {print $2 $3 $4 $5}' "/proc/$pid/status") == 65532655326553265532 ]] ||
					{ say "$name (pid $pid) does not run as 65532"; return 1; }
				awk '$5 == "/" { split($6, o, ","); if (o[1] != "ro") exit 1 }' "/proc/$pid/mountinfo" ||
					{ say "$name (pid $pid): root filesystem is not mounted read-only"; return 1; }
				[[ $(awk '/^CapEff:/ {print $2}' "/proc/$pid/status") == 0000000000000000 ]] ||
					{ say "$name (pid $pid) has capabilities"; return 1; }
				n=$((n + 1))
			done
		done
		((n >= 4)) || { say "found $n container processes on the host, want 4"; return 1; }
		say "on the host: $n container processes run as 65532, no capabilities, root filesystem read-only"
	fi
	kn get pods -o wide | sed 's/^/    /'
}

service_probes() {
	service_url || return 1
	[[ $(curl -fsS "$API_BASE/healthz") ]] || return 1
	curl -fsS "$API_BASE/readyz" >/dev/null || { say "/readyz through the Service"; return 1; }
	curl -fsS "$API_BASE/metrics" >"$TMP/metrics" || return 1
	grep -q '^# TYPE' "$TMP/metrics" || { say "/metrics is not Prometheus text"; return 1; }
	say "probes and metrics answer at $API_BASE ($(grep -c '^# TYPE' "$TMP/metrics") metric families)"
}

tenant_ready() {
	kn apply -f - <<EOF >/dev/null || return 1
apiVersion: strata.dev/v1alpha1
kind: Tenant
metadata:
  name: $TENANT
spec:
  displayName: E2E $SUFFIX
  adminEmail: admin@$TENANT.example
  deletionPolicy: Delete
EOF
	kn wait "tenant/$TENANT" --for=jsonpath='{.status.phase}'=Ready --timeout=180s || return 1
	DB_NAME=$(kn get "tenant/$TENANT" -o jsonpath='{.status.databaseName}')
	TENANT_UID=$(kn get "tenant/$TENANT" -o jsonpath='{.metadata.uid}')
	[[ $(psql_admin "SELECT count(*) FROM pg_database WHERE datname = '$DB_NAME'") == 1 ]] ||
		{ say "database $DB_NAME does not exist"; return 1; }
	OWNER_ROLE=$(psql_admin "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = '$DB_NAME'")
	LOGIN_ROLE=$(kn get secret "$TENANT-database" -o jsonpath='{.data.url}' | base64 -d | sed -E 's#^postgres(ql)?://([^:@]+).*#\2#')
	[[ $OWNER_ROLE == strata_o_* && $LOGIN_ROLE == strata_t_* ]] || { say "unexpected roles '$OWNER_ROLE' '$LOGIN_ROLE'"; return 1; }
	say "tenant $TENANT Ready, database $DB_NAME"
}

bucket_ready() {
	kn apply -f - <<EOF >/dev/null || return 1
apiVersion: strata.dev/v1alpha1
kind: Bucket
metadata:
  name: $BUCKET
spec:
  tenantRef: $TENANT
  name: files
  quota:
    bytes: 10485760
  antivirusScan: false
EOF
	kn wait "bucket/$BUCKET" --for=condition=Ready --timeout=120s || return 1
	BUCKET_LOCATION=$(kn get "bucket/$BUCKET" -o jsonpath='{.status.backendBucket}')
	say "bucket $BUCKET Ready at $BUCKET_LOCATION"
}

tenant_api() {
	local token
	token=$(kn get secret "$TENANT-admin-invite" -o jsonpath='{.data.token}' | base64 -d)
	[[ -n $token ]] || { say "no invitation token"; return 1; }
	KEY=$(api POST /invitations/accept -H 'Content-Type: application/json' -d "{\"token\": \"$token\"}" | jq -r .key.key)
	[[ $KEY == sk_* ]] || { say "invitation accept gave no API key"; return 1; }
	local json=(-H 'Content-Type: application/json')
	api POST /collections "${json[@]}" -d '{"name": "notes", "vector": {"dimension": 3, "metric": "cosine"},
		"schema": {"type": "object", "required": ["title"]}}' >/dev/null || return 1
	api POST /collections/notes/documents "${json[@]}" -d '{"id": "a", "data": {"title": "alpha"}}' >/dev/null || return 1
	api POST /collections/notes/documents "${json[@]}" -d '{"id": "b", "data": {"title": "beta"}}' >/dev/null || return 1
	[[ $(api GET /collections/notes/documents/a | jq -r .data.title) == alpha ]] || { say "document read-back"; return 1; }
	api POST /collections/notes/vectors "${json[@]}" -d '{"vectors": [
		{"id": "a#0", "vector": [1, 0, 0], "document_id": "a"},
		{"id": "b#0", "vector": [0, 1, 0], "document_id": "b"}]}' >/dev/null || return 1
	local hit
	hit=$(api POST /collections/notes/search "${json[@]}" -d '{"vector": [0.9, 0.1, 0], "k": 1}' | jq -r '.hits[0].id // .items[0].id // empty')
	[[ $hit == 'a#0' ]] || { say "vector search: nearest is '$hit', want a#0 ($(cat "$TMP/body"))"; return 1; }
	# Objects: upload, download, compare.
	head -c 200000 /dev/urandom >"$TMP/object"
	api PUT /buckets/files/objects/e2e/blob.bin -H 'Content-Type: application/octet-stream' \
		--data-binary "@$TMP/object" >/dev/null || return 1
	api GET /buckets/files/objects/e2e/blob.bin >"$TMP/object.back" || return 1
	cmp -s "$TMP/object" "$TMP/object.back" || { say "downloaded object differs from the upload"; return 1; }
	local stored
	stored=$(s3_count "t/$TENANT_UID/") || return 1
	((stored > 0)) || { say "the object is not in the S3 backend under t/$TENANT_UID/"; return 1; }
	say "invitation, document write/read, vector search, object upload/download (200 kB) all through the Service"
}

# s3_count PREFIX: objects under PREFIX in the backend bucket (SigV4 by
# curl; the prefix percent-encoded, the empty body's hash sent as S3 wants).
s3_count() {
	local body
	body=$(curl -fsS --aws-sigv4 "aws:amz:$STRATA_S3_REGION:s3" \
		--user "$STRATA_S3_ACCESS_KEY_ID:$STRATA_S3_SECRET_ACCESS_KEY" \
		-H 'x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855' \
		"$STRATA_S3_ENDPOINT/$STRATA_S3_BUCKET?list-type=2&prefix=$(jq -rn --arg p "$1" '$p|@uri')") || return 1
	grep -q '<ListBucketResult' <<<"$body" || return 1
	grep -o '<Key>' <<<"$body" | wc -l
}

bucket_gone() { ! kn get "bucket/$BUCKET" >/dev/null 2>&1; }
objects_gone() { [[ $(s3_count "t/$TENANT_UID/") == 0 ]]; }

lease_holder() { kn get lease "$RELEASE-operator" -o jsonpath='{.spec.holderIdentity}'; }
# new_holder OLD: someone other than OLD holds the Lease.
new_holder() {
	local h
	h=$(lease_holder)
	[[ -n $h && $h != "$1" ]]
}

leader_failover() {
	local leader other new t0
	leader=$(lease_holder)
	[[ -n $leader ]] || { say "no leader holds the Lease"; return 1; }
	other=$(kn get pods -l app.kubernetes.io/component=operator -o name | sed 's#pod/##' | grep -vx "$leader" | head -n1)
	[[ -n $other ]] || { say "no standby operator pod"; return 1; }
	say "leader $leader, standby $other; deleting the leader's pod"
	t0=$SECONDS
	kn delete pod "$leader" --wait=false >/dev/null || return 1
	until_ok 60 "a new Lease holder" new_holder "$leader" || return 1
	new=$(lease_holder)
	say "$new holds the Lease $((SECONDS - t0))s later$([[ $new == "$other" ]] && echo ' (the standby)')"
	# The new leader reconciles: a spec change reaches Ready's observedGeneration.
	kn patch "tenant/$TENANT" --type merge -p '{"spec": {"displayName": "E2E after failover"}}' >/dev/null || return 1
	local gen
	gen=$(kn get "tenant/$TENANT" -o jsonpath='{.metadata.generation}')
	kn wait "tenant/$TENANT" --timeout=120s \
		--for=jsonpath="{.status.conditions[?(@.type==\"Ready\")].observedGeneration}"="$gen" || return 1
	kn wait --for=condition=Available --timeout=120s "deployment/$RELEASE-operator"
}

upgrade_rolls() {
	local key_before key_after rs_before rs_after failures=0 requests=0
	key_before=$(kn get secret "$RELEASE-cursor-key" -o jsonpath='{.data.cursorKey}')
	rs_before=$(kn get rs -o jsonpath='{range .items[?(@.status.replicas>0)]}{.metadata.name}{"\n"}{end}' | sort)
	# Requests through the Service during the whole roll.
	(
		while [[ ! -f $TMP/stop ]]; do
			if curl -fsS -m 3 -o /dev/null "$API_BASE/readyz"; then echo ok; else echo fail; fi
			sleep 0.2
		done >"$TMP/roll-requests"
	) &
	local prober=$!
	helm upgrade "$RELEASE" "$CHART" -n "$NS" --reuse-values --set 'logLevel=info\,strata=debug' \
		--set dataplane.podAnnotations.e2e/upgraded=yes --wait --timeout 5m >"$TMP/upgrade.out" ||
		{ touch "$TMP/stop"; wait "$prober"; cat "$TMP/upgrade.out"; return 1; }
	kn rollout status "deployment/$RELEASE-operator" --timeout=120s >/dev/null || return 1
	kn rollout status "deployment/$RELEASE-dataplane" --timeout=120s >/dev/null || return 1
	touch "$TMP/stop"
	wait "$prober"
	requests=$(wc -l <"$TMP/roll-requests")
	failures=$(grep -c fail "$TMP/roll-requests" || true)
	rs_after=$(kn get rs -o jsonpath='{range .items[?(@.status.replicas>0)]}{.metadata.name}{"\n"}{end}' | sort)
	[[ $rs_before != "$rs_after" ]] || { say "no new ReplicaSets: nothing rolled"; return 1; }
	# Old pods still terminating (the data plane's preStop sleep) are not
	# Ready by design; every pod that stays must be Ready and never restarted.
	kn get pods -o json | jq -e '[.items[] | select(.metadata.deletionTimestamp == null)] | length > 0 and all(.[]; .status.phase == "Running" and all(.status.containerStatuses[]; .ready and .restartCount == 0))' >/dev/null ||
		{ say "after the upgrade a pod is not Ready or restarted"; return 1; }
	key_after=$(kn get secret "$RELEASE-cursor-key" -o jsonpath='{.data.cursorKey}')
	[[ $key_before == "$key_after" ]] || { say "helm upgrade changed the cursor key"; return 1; }
	[[ $(helm history "$RELEASE" -n "$NS" -o json | jq -r '.[-1].status') == deployed ]] || return 1
	say "rolled: $requests requests to the Service during the roll, $failures failed"
	((failures == 0)) || return 1
	# The API still serves after the roll (same key, new pods).
	[[ $(api GET /collections/notes/documents/b | jq -r .data.title) == beta ]]
}

tenant_deleted() {
	# Only the Tenant: its Buckets go with it.
	kn delete "tenant/$TENANT" --wait=true --timeout=180s >/dev/null || return 1
	until_ok 60 "bucket $BUCKET deleted with its tenant" bucket_gone || return 1
	[[ $(psql_admin "SELECT count(*) FROM pg_database WHERE datname = '$DB_NAME'") == 0 ]] ||
		{ say "database $DB_NAME still exists"; return 1; }
	[[ $(psql_admin "SELECT count(*) FROM pg_roles WHERE rolname IN ('$OWNER_ROLE', '$LOGIN_ROLE')") == 0 ]] ||
		{ say "roles $OWNER_ROLE, $LOGIN_ROLE of the tenant are left"; return 1; }
	until_ok 60 "objects under t/$TENANT_UID/ removed" objects_gone || return 1
	kn get secret "$TENANT-database" >/dev/null 2>&1 && { say "the tenant's credentials Secret is left"; return 1; }
	say "bucket, database $DB_NAME, roles, objects and Secrets gone"
}

uninstall_clean() {
	helm uninstall "$RELEASE" -n "$NS" --wait --timeout 120s >/dev/null || return 1
	until_ok 60 "release pods gone" bash -c "[[ -z \$(kubectl -n $NS get pods -o name) ]]" || return 1
	local left
	left=$(kn get all,secret,configmap,lease,pdb,serviceaccount,role,rolebinding,networkpolicy,hpa \
		-l "app.kubernetes.io/instance=$RELEASE" -o name 2>/dev/null)
	left+=$(kn get lease -o name 2>/dev/null)
	left+=$(kn get secret -o name 2>/dev/null | grep -v -e strata-database -e strata-catalog -e strata-redis -e strata-s3 || true)
	left+=$(k get clusterrole,clusterrolebinding -l "app.kubernetes.io/instance=$RELEASE" -o name 2>/dev/null)
	[[ -z $left ]] || { say "left behind by helm uninstall: $left"; return 1; }
	k get crd tenants.strata.dev buckets.strata.dev >/dev/null || { say "the CRDs must stay"; return 1; }
	say "nothing of the release is left; the CRDs stay"
}

say "cluster $(k config view --minify -o jsonpath='{.clusters[0].cluster.server}'), stack reached from pods at $HOST, Service access: $ACCESS"
step "preflight (cluster ready, leftovers removed)" preflight
step "Secrets for the database, catalog, Redis and S3" secrets
step "helm install, both Deployments Available" install
step "pods: 2+2 Running, non-root, read-only root fs, images just built" pods_hardened
step "data plane probes and metrics through the Service" service_probes
step "Tenant Ready (database exists)" tenant_ready
step "Bucket Ready" bucket_ready
step "tenant API through the Service: document, vector search, object" tenant_api
step "leading operator pod deleted, the other takes over and reconciles" leader_failover
step "helm upgrade rolls without errors" upgrade_rolls
step "Tenant deleted: its Bucket, database, roles, objects gone" tenant_deleted
step "helm uninstall leaves nothing but the CRDs" uninstall_clean
