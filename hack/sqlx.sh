#!/usr/bin/env bash
# Compile-time-checked queries (sqlx offline mode).
#
#   hack/sqlx.sh prepare   regenerate .sqlx/ from a scratch database
#   hack/sqlx.sh check     fail when .sqlx/ is stale
#
# The scratch database holds both schemas the queries run against: the
# platform catalog (schema `catalog`) and a tenant database (schema `public`).
# sqlx-cli is installed once into the cache, keyed by version.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"
# shellcheck source=/dev/null
source .stack/env
SQLX_VERSION=0.8.6
CACHE=${STRATA_CACHE:-$HOME/.cache/strata}
SQLX_ROOT=$CACHE/sqlx-cli-$SQLX_VERSION

if [[ ! -x $SQLX_ROOT/bin/cargo-sqlx ]]; then
	echo "sqlx: installing sqlx-cli $SQLX_VERSION into $SQLX_ROOT (once)" >&2
	CARGO_TARGET_DIR=$CACHE/sqlx-cli-build cargo install sqlx-cli --version "$SQLX_VERSION" --locked \
		--no-default-features --features postgres,rustls --root "$SQLX_ROOT" >&2
fi

PSQL=${STRATA_PG_BIN_DIR:-}/psql
[[ -x $PSQL ]] || { echo "sqlx: bundled psql not found; run hack/stack.sh up" >&2; exit 1; }
psql() { "$PSQL" -X -q -v ON_ERROR_STOP=1 "$@"; }

SCRATCH=strata_sqlx
ADMIN_URL=$STRATA_DATABASE_URL
SCRATCH_URL=${ADMIN_URL%/*}/$SCRATCH
psql "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $SCRATCH WITH (FORCE)" -c "CREATE DATABASE $SCRATCH"
psql "$SCRATCH_URL" -c "CREATE EXTENSION vector"
for f in migrations/platform/*.sql migrations/tenant/*.sql; do
	psql "$SCRATCH_URL" -f "$f"
done

mode=${1:-check}
args=(--workspace)
[[ $mode == check ]] && args+=(--check)
[[ $mode == prepare || $mode == check ]] || { echo "usage: hack/sqlx.sh prepare|check" >&2; exit 2; }
if ! SQLX_OFFLINE=false DATABASE_URL=$SCRATCH_URL PATH=$SQLX_ROOT/bin:$PATH cargo sqlx prepare "${args[@]}" -- --all-targets; then
	[[ $mode == check ]] && echo "sqlx: .sqlx/ is stale: run 'make sqlx-prepare' and commit .sqlx/" >&2
	exit 1
fi
psql "$ADMIN_URL" -c "DROP DATABASE IF EXISTS $SCRATCH WITH (FORCE)"
