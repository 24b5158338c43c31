#!/usr/bin/env bash
# Re-fetches the API docs renderer vendored in dataplane/assets/redoc/ from the
# npm registry (`npm pack`, the package tarball exactly as published), by the
# pinned version below. The data plane embeds these files (include_str!) so
# /docs works with no internet. To update: bump VERSION, run this, look at
# /docs in a browser (dataplane/assets/redoc/README.md says how), commit.
#
#   hack/vendor-redoc.sh
set -euo pipefail

VERSION=2.5.4
DEST=$(cd "$(dirname "$0")/.." && pwd)/dataplane/assets/redoc

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "redoc@$VERSION" >/dev/null && tar xzf "redoc-$VERSION.tgz")
cp "$work/package/bundles/redoc.standalone.js" "$DEST/"
cp "$work/package/bundles/redoc.standalone.js.LICENSE.txt" "$DEST/"
cp "$work/package/LICENSE" "$DEST/LICENSE"
echo "$VERSION" >"$DEST/VERSION"
sha256sum "$DEST/redoc.standalone.js"
