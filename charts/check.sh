#!/usr/bin/env bash
# Checks the Helm chart in charts/strata against the repository:
#   1. charts/strata/crds/ holds exactly the files of crds/, byte for byte;
#   2. the operator ClusterRole rules in the chart equal those of
#      config/rbac/operator-clusterrole.yaml (PyYAML when python3 has it, else a
#      normalised text comparison of the `rules:` blocks);
#   3. when `helm` is on PATH: `helm lint --strict`, renders with several value
#      sets, renders that must fail (template checks, and values.schema.json:
#      wrong types, missing required values, unknown keys), and `helm template | kubectl apply
#      --dry-run=client -f -`. Renders for Kubernetes $STRATA_CHECK_KUBE_VERSION
#      (default 1.34.0). Without helm, says so and skips only this part.
#      The dry run needs an API server (kubectl asks it for the resource
#      types). It uses the local stack's (`make stack-up`), or the cluster of
#      the kubeconfig in $STRATA_CHECK_KUBECONFIG when you set that; never
#      kubectl's implicit default ($KUBECONFIG, ~/.kube/config, else
#      localhost:8080), which may be some other cluster or no API server at all.
#
# Usage: charts/check.sh            (from anywhere)
#        STRATA_CHECK_TEXT_ONLY=1 charts/check.sh   forces the text comparison in 2.
#        STRATA_CHECK_KUBECONFIG=~/.kube/config charts/check.sh   dry run against your cluster
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"

CHART=charts/strata
RBAC_FILE=config/rbac/operator-clusterrole.yaml
CHART_ROLE=$CHART/templates/clusterrole.yaml

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# --- 1. CRDs ---------------------------------------------------------------
echo "== 1. chart CRDs are byte-identical copies of crds/"
shopt -s nullglob
repo_crds=(crds/*.yaml)
chart_crds=("$CHART"/crds/*)
shopt -u nullglob
[[ ${#repo_crds[@]} -gt 0 ]] || fail "no CRDs in crds/"
for f in "${repo_crds[@]}"; do
    copy=$CHART/crds/$(basename "$f")
    [[ -f $copy ]] || fail "$copy is missing (cp $f $CHART/crds/)"
done
for copy in "${chart_crds[@]}"; do
    src=crds/$(basename "$copy")
    [[ -f $src ]] || fail "$copy has no counterpart $src (remove it)"
    if ! cmp -s "$src" "$copy"; then
        diff -u "$src" "$copy" | head -40 >&2 || true
        fail "$copy differs from $src (cp $src $CHART/crds/)"
    fi
    echo "   ok  $copy == $src"
done

# --- 2. ClusterRole rules ----------------------------------------------------
echo "== 2. chart ClusterRole rules equal $RBAC_FILE"

# Prints the `rules:` block of a YAML file or Helm template: from the top-level
# `rules:` line to the next top-level key, template action, document separator
# or the end of the file.
rules_block() {
    awk '
        /^rules:[[:space:]]*$/ { on = 1; print; next }
        on && /^(---|\{\{|[^[:space:]#])/ { exit }
        on { print }
    ' "$1"
}

rules_block "$RBAC_FILE" >"$TMP/rbac-rules.yaml"
rules_block "$CHART_ROLE" >"$TMP/chart-rules.yaml"
[[ -s $TMP/rbac-rules.yaml ]] || fail "no top-level rules: block in $RBAC_FILE"
[[ -s $TMP/chart-rules.yaml ]] || fail "no top-level rules: block in $CHART_ROLE"
if grep -q '{{' "$TMP/chart-rules.yaml"; then
    fail "the rules in $CHART_ROLE must be literal YAML, without template actions"
fi
grep -q '^kind: ClusterRole$' "$CHART_ROLE" || fail "$CHART_ROLE is not a ClusterRole"

if [[ ${STRATA_CHECK_TEXT_ONLY:-} != 1 ]] && python3 -c 'import yaml' 2>/dev/null; then
    python3 - "$RBAC_FILE" "$TMP/chart-rules.yaml" <<'PY'
import sys
import yaml

rbac_path, chart_rules_path = sys.argv[1], sys.argv[2]
with open(rbac_path) as f:
    docs = [d for d in yaml.safe_load_all(f) if d]
if len(docs) != 1 or docs[0].get("kind") != "ClusterRole":
    sys.exit(f"FAIL: {rbac_path} should hold exactly one ClusterRole")
want = docs[0]["rules"]
with open(chart_rules_path) as f:
    got = yaml.safe_load(f)["rules"]
if got != want:
    print("FAIL: ClusterRole rules differ", file=sys.stderr)
    print("  " + rbac_path + ":\n    " + yaml.safe_dump(want, sort_keys=True).replace("\n", "\n    "), file=sys.stderr)
    print("  chart template:\n    " + yaml.safe_dump(got, sort_keys=True).replace("\n", "\n    "), file=sys.stderr)
    sys.exit(1)
print(f"   ok  {len(want)} rules identical (compared parsed with PyYAML {yaml.__version__})")
PY
else
    # Text comparison: drop comments, blank lines and trailing blanks, remove
    # the block's common indentation and blanks inside flow sequences.
    normalise() {
        sed -e 's/[[:space:]]#.*$//' -e '/^[[:space:]]*#/d' -e 's/[[:space:]]*$//' -e '/^$/d' "$1" |
            awk '
                { lines[NR] = $0; match($0, /^ */); if (NR > 1 && (min == "" || RLENGTH < min)) min = RLENGTH }
                END { for (i = 1; i <= NR; i++) { l = lines[i]; if (i > 1) l = substr(l, min + 1); print l } }
            ' |
            sed -e 's/\[[[:space:]]*/[/g' -e 's/[[:space:]]*\]/]/g' -e 's/[[:space:]]*,[[:space:]]*/, /g' \
                -e "s/'/\"/g"
    }
    normalise "$TMP/rbac-rules.yaml" >"$TMP/rbac-rules.norm"
    normalise "$TMP/chart-rules.yaml" >"$TMP/chart-rules.norm"
    if ! diff -u "$TMP/rbac-rules.norm" "$TMP/chart-rules.norm" >&2; then
        fail "ClusterRole rules differ (text comparison; left: $RBAC_FILE, right: $CHART_ROLE)"
    fi
    echo "   ok  $(grep -c '^- ' "$TMP/rbac-rules.norm") rules identical (normalised text comparison; PyYAML not used)"
fi

# --- 3. helm lint / template / kubectl dry run ---------------------------------
echo "== 3. helm lint, helm template | kubectl apply --dry-run=client"
if ! command -v helm >/dev/null 2>&1; then
    echo "   SKIP: no helm binary on PATH; checks 1 and 2 passed, 3 was not run"
    echo "PASS (with 3 skipped)"
    exit 0
fi
echo "   using $(command -v helm) ($(helm version --short 2>/dev/null || echo unknown version))"

# kubectl's client-side dry run below still asks an API server for its
# resource types. Which one is chosen here, explicitly, before helm runs:
# exporting KUBECONFIG also covers helm, should it ever look for a cluster.
if [[ -n ${STRATA_CHECK_KUBECONFIG:-} ]]; then
    [[ -s $STRATA_CHECK_KUBECONFIG ]] || fail "STRATA_CHECK_KUBECONFIG=$STRATA_CHECK_KUBECONFIG is not a file"
    export KUBECONFIG=$STRATA_CHECK_KUBECONFIG
    origin="STRATA_CHECK_KUBECONFIG"
else
    KUBECONFIG=$(hack/stack.sh kubeconfig) || fail "no local stack API server for the --dry-run=client check (run make stack-up, or set STRATA_CHECK_KUBECONFIG)"
    export KUBECONFIG
    origin="the local stack"
fi

helm lint "$CHART" >"$TMP/lint.out" 2>&1 || { cat "$TMP/lint.out" >&2; fail "helm lint $CHART"; }
helm lint --strict "$CHART" >"$TMP/lint-strict.out" 2>&1 || { cat "$TMP/lint-strict.out" >&2; fail "helm lint --strict $CHART"; }
echo "   ok  helm lint (and --strict)"

# `helm template` assumes Kubernetes 1.20 unless told, below the chart's kubeVersion.
KUBE_VERSION=${STRATA_CHECK_KUBE_VERSION:-1.34.0}
render() { helm template strata "$CHART" --namespace strata --kube-version "$KUBE_VERSION" "$@"; }

# Value sets that must render.
render >"$TMP/default.yaml"
render --set metrics.serviceMonitor.enabled=true --set metrics.serviceMonitor.labels.release=prom \
    --set redis.existingSecret=strata-redis --set operator.watchNamespace=tenants \
    --set operator.apiBaseURL=https://api.strata.example \
    --set dataplane.podDisruptionBudget.maxUnavailable=1 \
    --set operator.image.digest=sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef \
    >"$TMP/full.yaml"
render --set operator.replicas=1 --set operator.leaderElection=false --set dataplane.replicas=1 \
    --set rbac.create=false --set operator.serviceAccount.create=false --set operator.serviceAccount.name=byo \
    >"$TMP/minimal.yaml"
grep -q 'kind: ServiceMonitor' "$TMP/full.yaml" || fail "serviceMonitor.enabled=true rendered no ServiceMonitor"
grep -q 'name: STRATA_REDIS_URL' "$TMP/full.yaml" || fail "redis.existingSecret rendered no STRATA_REDIS_URL"
! grep -q 'name: STRATA_REDIS_URL' "$TMP/default.yaml" || fail "STRATA_REDIS_URL rendered without redis.existingSecret"
! grep -q 'kind: ServiceMonitor' "$TMP/default.yaml" || fail "ServiceMonitor rendered by default"
render --set database.dataplaneRole=strata_dp_prod | grep -A1 'name: STRATA_DATAPLANE_ROLE' |
    grep -q '"strata_dp_prod"' || fail "database.dataplaneRole did not reach the operator's STRATA_DATAPLANE_ROLE"
! grep -q 'kind: PodDisruptionBudget' "$TMP/minimal.yaml" || fail "PDB rendered for a single data plane replica"
! grep -Eq 'kind: (ClusterRole|ServiceAccount)' "$TMP/minimal.yaml" || fail "RBAC rendered with rbac.create=false"
echo "   ok  renders: defaults, everything on, single replicas without RBAC"

# Value sets that must be refused.
must_fail() {
    local why=$1
    shift
    if render "$@" >/dev/null 2>"$TMP/err"; then
        fail "rendered although $why: $*"
    fi
}
must_fail "2 operator replicas without leader election" --set operator.leaderElection=false
must_fail "no database Secret" --set database.existingSecret=
must_fail "no catalog Secret" --set catalog.existingSecret=
must_fail "shutdown grace >= termination grace" --set dataplane.shutdownGraceSeconds=30
must_fail "shutdown grace + preStop sleep >= termination grace" --set dataplane.shutdownGraceSeconds=25
must_fail "HPA min > max" --set dataplane.autoscaling.enabled=true --set dataplane.autoscaling.minReplicas=5 \
    --set dataplane.autoscaling.maxReplicas=3
must_fail "fs storage without a shared volume" --set storage.backend=fs
must_fail "s3 storage without its Secret" --set storage.s3.existingSecret=
echo "   ok  inconsistent values are refused"

# values.schema.json: bad values fail with the schema's message (not a
# template error further down), each for the reason given.
must_fail_schema() {
    local why=$1 want=$2
    shift 2
    if render "$@" >/dev/null 2>"$TMP/err"; then
        fail "schema accepted $why: $*"
    fi
    grep -q "values don't meet the specifications of the schema" "$TMP/err" ||
        { cat "$TMP/err" >&2; fail "$why was refused, but not by values.schema.json: $*"; }
    grep -qF -- "$want" "$TMP/err" ||
        { cat "$TMP/err" >&2; fail "$why: the schema's message does not name $want"; }
}
must_fail_schema "a string for an integer" "/operator/replicas" --set operator.replicas=two
must_fail_schema "a string for a boolean" "/operator/leaderElection" --set-string operator.leaderElection=yes
must_fail_schema "a missing required value (database)" "missing property 'database'" --set database=null
must_fail_schema "a missing required value (image repository)" "missing property 'repository'" \
    --set dataplane.image.repository=null
must_fail_schema "an empty required Secret name" "/catalog/existingSecret" --set catalog.existingSecret=
must_fail_schema "an unknown storage backend" "/storage/backend" --set storage.backend=gcs
must_fail_schema "a malformed digest" "/operator/image/digest" --set operator.image.digest=latest
must_fail_schema "a misspelt key" "additional properties 'replica' not allowed" --set dataplane.replica=3
must_fail_schema "a port out of range" "/dataplane/port" --set dataplane.port=70000
must_fail_schema "a role name SQL would need quoting for" "/database/dataplaneRole" \
    --set 'database.dataplaneRole=dp;drop'
echo "   ok  values.schema.json refuses wrong types, missing required values, unknown keys"

render --set dataplane.autoscaling.enabled=true --set networkPolicy.enabled=true \
    --set storage.backend=fs --set storage.fs.existingClaim=strata-objects \
    --set cursorKey.existingSecret=my-cursor --set tenantDatabase.existingSecret=strata-dataplane-login \
    --set antivirus.clamdAddress=clamd.av:3310 --set 'rateLimits.trustedProxies={10.0.0.0/8,192.168.0.0/16}' \
    >"$TMP/options.yaml"
grep -q 'kind: HorizontalPodAutoscaler' "$TMP/options.yaml" || fail "autoscaling.enabled rendered no HPA"
grep -q 'kind: NetworkPolicy' "$TMP/options.yaml" || fail "networkPolicy.enabled rendered no NetworkPolicy"
! grep -q 'kind: HorizontalPodAutoscaler' "$TMP/default.yaml" || fail "HPA rendered by default"
! grep -q 'kind: NetworkPolicy' "$TMP/default.yaml" || fail "NetworkPolicy rendered by default"
grep -q 'claimName: strata-objects' "$TMP/options.yaml" || fail "fs backend rendered no volume"
grep -q 'value: "10.0.0.0/8,192.168.0.0/16"' "$TMP/options.yaml" || fail "trustedProxies not joined"
! grep -q 'cursor-key' "$TMP/options.yaml" || fail "a cursor key Secret rendered although cursorKey.existingSecret is set"
grep -q 'kind: Lease' "$TMP/default.yaml" || fail "no leader Lease rendered"
! grep -q 'kind: Lease' "$TMP/minimal.yaml" || fail "a Lease rendered without leader election"
echo "   ok  options render: HPA, NetworkPolicy, fs volume, own cursor key, trusted proxies, Lease"

# The rendered ClusterRole carries the same rules as the file.
if python3 -c 'import yaml' 2>/dev/null; then
    python3 - "$RBAC_FILE" "$TMP/default.yaml" <<'PY'
import sys
import yaml

with open(sys.argv[1]) as f:
    want = yaml.safe_load(f)["rules"]
with open(sys.argv[2]) as f:
    docs = [d for d in yaml.safe_load_all(f) if d]
roles = [d for d in docs if d["kind"] == "ClusterRole"]
if len(roles) != 1 or roles[0]["rules"] != want:
    sys.exit("FAIL: the rendered ClusterRole's rules differ from " + sys.argv[1])
env = {e["name"]: e for d in docs if d["kind"] == "Deployment"
       for c in d["spec"]["template"]["spec"]["containers"] for e in c.get("env", [])}
for name in ["STRATA_DATABASE_URL", "STRATA_PLATFORM_DATABASE", "STRATA_OPERATOR_PROBE_ADDR",
             "STRATA_CONCURRENCY", "STRATA_LEADER_ELECTION", "POD_NAMESPACE", "POD_NAME",
             "STRATA_LOG_FORMAT", "STRATA_API_BASE_URL", "STRATA_DATAPLANE_ADDR",
             "STRATA_CATALOG_URL", "STRATA_MAX_BODY_BYTES"]:
    if name not in env:
        sys.exit(f"FAIL: {name} is not set on any container")
assert env["STRATA_OPERATOR_PROBE_ADDR"]["value"] == "0.0.0.0:8081", env["STRATA_OPERATOR_PROBE_ADDR"]
assert env["STRATA_DATAPLANE_ADDR"]["value"] == "0.0.0.0:8080", env["STRATA_DATAPLANE_ADDR"]
assert env["STRATA_LOG_FORMAT"]["value"] == "json"
for secret_env in ["STRATA_DATABASE_URL", "STRATA_CATALOG_URL", "STRATA_CURSOR_KEY",
                   "STRATA_S3_ACCESS_KEY_ID", "STRATA_S3_SECRET_ACCESS_KEY"]:
    assert "secretKeyRef" in env[secret_env]["valueFrom"], secret_env
deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
for name, d in deployments.items():
    pod = d["spec"]["template"]["spec"]
    c = pod["containers"][0]
    names = {e["name"] for e in c["env"]}
    # Both address the same object bytes.
    for n in ["STRATA_STORAGE_BACKEND", "STRATA_S3_BUCKET", "STRATA_S3_REGION"]:
        assert n in names, f"{name}: {n} missing"
    sc = c["securityContext"]
    assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"] and sc["capabilities"]["drop"] == ["ALL"], name
    assert sc["seccompProfile"]["type"] == "RuntimeDefault" and not sc["allowPrivilegeEscalation"], name
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"], name
    for probe, path in [("startupProbe", "/healthz"), ("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")]:
        assert c[probe]["httpGet"]["path"] == path, (name, probe)
    assert ":" in c["image"] and not c["image"].endswith(":"), c["image"]
secrets = [d for d in docs if d["kind"] == "Secret"]
assert len(secrets) == 1 and secrets[0]["metadata"]["name"] == "strata-cursor-key", secrets
import base64
key = base64.b64decode(base64.b64decode(secrets[0]["data"]["cursorKey"]))
assert len(key) >= 32, "cursor key shorter than 32 bytes"
print("   ok  rendered ClusterRole rules and container environment as expected")
PY
fi

kube() { kubectl --kubeconfig "$KUBECONFIG" --request-timeout=20s "$@"; }
kube get --raw=/readyz >/dev/null 2>&1 ||
    fail "the API server of $KUBECONFIG ($origin) is not ready; for the local stack: make stack-up"
render --include-crds | kube apply --dry-run=client -f - >"$TMP/apply.out" 2>&1 ||
    { cat "$TMP/apply.out" >&2; fail "helm template $CHART | kubectl apply --dry-run=client -f - (KUBECONFIG=$KUBECONFIG)"; }
sed 's/^/   /' "$TMP/apply.out"
echo "   ok  kubectl apply --dry-run=client against $origin ($(kube config view --minify -o 'jsonpath={.clusters[0].cluster.server}' 2>/dev/null || echo "$KUBECONFIG"))"
echo "PASS"
