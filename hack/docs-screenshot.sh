#!/usr/bin/env bash
# Screenshots the data plane's /docs page in headless Chromium with only
# loopback reachable (names resolve to nothing but 127.0.0.1, and any other
# connection goes to a dead proxy), so the picture shows what a reader with
# no internet gets: everything the page needs must come from the binary.
# Chromium's console (CSP reports included) goes to stderr.
#
#   hack/docs-screenshot.sh [URL] [OUT]   (default: the local data plane,
#                                          docs/img/docs-page.png)
# Needs Debian's chromium (apt-get install -y chromium).
set -euo pipefail

URL=${1:-http://127.0.0.1:${STRATA_DATAPLANE_PORT:-28080}/docs}
OUT=${2:-$(cd "$(dirname "$0")/.." && pwd)/docs/img/docs-page.png}

chromium --headless --no-sandbox --disable-gpu \
	--host-resolver-rules="MAP * ~NOTFOUND, EXCLUDE 127.0.0.1" \
	--proxy-server=127.0.0.1:9 --proxy-bypass-list=127.0.0.1 \
	--enable-logging=stderr --v=0 \
	--virtual-time-budget=20000 --window-size=1400,1000 \
	--screenshot="$OUT" "$URL" 2>&1 | grep -F 'CONSOLE' >&2 || true
echo "wrote $OUT"
