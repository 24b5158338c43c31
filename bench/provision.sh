#!/usr/bin/env bash
# Provisioning benchmark: 200 tenants through the API server and operator,
# against plain SQL doing the same database work, in one run.
#   bench/provision.sh [N] [CONCURRENCY]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# shellcheck source=/dev/null
source .stack/env
cargo build -q --bins
cargo run -q -p strata-bench --bin provision-bench -- "${1:-200}" "${2:-4}"
