#!/usr/bin/env bash
# Runs the shell blocks of examples/api-walkthrough.md in order, against the
# running local platform (`make up` first), so the page stays true.
#
# It uses a fresh tenant (the page's `acme` renamed to wt-<random>, with
# deletionPolicy Delete) and deletes it at the end, so it neither needs nor
# touches a tenant you made; `make ...` lines are skipped (the platform is
# already up). Each block's commands are echoed; the first failing command
# stops it, and so does any error answer but the page's one deliberate 422.
#
#   hack/walkthrough.sh
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"
PAGE=examples/api-walkthrough.md
TENANT=wt-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')
TMP=$(mktemp -d)
# shellcheck source=/dev/null
source .stack/env

cleanup() {
	kubectl delete tenant "$TENANT" -n default --ignore-not-found --wait=false >/dev/null 2>&1 || true
	rm -rf "$TMP"
}
trap cleanup EXIT

sed -e "s/^  name: acme$/  name: $TENANT/" -e 's/deletionPolicy: Retain/deletionPolicy: Delete/' \
	examples/tenant.yaml >"$TMP/tenant.yaml"

# The ```sh blocks, in order, as one script.
awk '/^```sh$/ {on = 1; next} /^```$/ {on = 0; next} on' "$PAGE" |
	grep -v '^make ' |
	sed -e "s#examples/tenant.yaml#$TMP/tenant.yaml#g" -e "s/acme/$TENANT/g" >"$TMP/walkthrough.sh"

echo "walkthrough: tenant $TENANT"
bash -euo pipefail -x "$TMP/walkthrough.sh" | tee "$TMP/out"
# curl exits 0 on 4xx/5xx: find the problem documents in what was printed.
problems=$(grep -oE '"type": ?"https://strata.dev/problems/[a-z-]+"' "$TMP/out" | sed -E 's#.*/##; s/"//' | sort | tr '\n' ' ')
if [[ $problems != "validation-failed " ]]; then
	echo "walkthrough: unexpected error answers: $problems(only the schema example's validation-failed is expected)" >&2
	exit 1
fi
echo "walkthrough: every block of $PAGE ran"
