#!/usr/bin/env bash
# Builds the container images of strata-operator and strata-dataplane without
# a Docker engine: release binaries (cargo, into $CARGO_TARGET_DIR), stripped,
# then hack/oci-image.py assembles each image (distroless-style: the binary,
# the shared libraries it links, CA certificates, user 65532; no shell).
#
#   hack/image.sh [build]   build both images (fast when nothing changed)
#   hack/image.sh refs      print the image references, one per line
#   hack/image.sh dir       print the output directory
#   hack/image.sh push REGISTRY   push both images as REGISTRY/<name>:<tag>
#                           with crane (built once from the Go module proxy
#                           into $STRATA_CACHE; your ~/.docker/config.json
#                           credentials apply), e.g. push ghcr.io/acme
#
# Output in $STRATA_IMAGE_DIR (default $CARGO_TARGET_DIR/images, outside the
# clone): <name>.oci/ (OCI image layout) and <name>.tar (that layout plus a
# Docker manifest.json: `ctr images import`, `docker load`, `podman load`).
# Push with any registry client, e.g. `crane push $dir/strata-operator.oci REF`
# or `skopeo copy oci:$dir/strata-operator.oci docker://REF`.
#
# Image references: $STRATA_IMAGE_REGISTRY/<name>:<version> where the
# registry defaults to ghcr.io/strata-dev (the chart's default repositories)
# and the version is the workspace's ([workspace.package] in Cargo.toml, the
# chart's appVersion). STRATA_IMAGE_TAG overrides the tag.
# With Docker, the Dockerfile builds the same images: see docs/shipping.md.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
OUT=${STRATA_IMAGE_DIR:-$CARGO_TARGET_DIR/images}
REGISTRY=${STRATA_IMAGE_REGISTRY:-ghcr.io/strata-dev}
VERSION=$(awk '/^\[workspace.package\]/ { on = 1; next } /^\[/ { on = 0 } on && $1 == "version" { gsub(/"/, "", $3); print $3; exit }' Cargo.toml)
[[ -n $VERSION ]] || { echo "image.sh: no version in [workspace.package] of Cargo.toml" >&2; exit 1; }
TAG=${STRATA_IMAGE_TAG:-$VERSION}
COMPONENTS=(strata-operator strata-dataplane)

ref() { echo "$REGISTRY/$1:$TAG"; }

build() {
	local started=$SECONDS
	echo "image.sh: cargo build --release -p strata-operator -p strata-dataplane" >&2
	cargo build --release --locked -p strata-operator -p strata-dataplane >&2
	mkdir -p "$OUT/bin"

	local revision epoch created
	revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
	# The commit's time, not now: the same commit gives the same image digest.
	epoch=$(git log -1 --format=%ct 2>/dev/null || echo 0)
	created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)
	local name desc stamp want
	for name in "${COMPONENTS[@]}"; do
		case $name in
		strata-operator) desc="Strata operator: turns Tenant and Bucket resources into databases and storage" ;;
		strata-dataplane) desc="Strata data plane: the tenants' REST APIs" ;;
		esac
		# Rebuild only when the binary, the assembler or the labels changed.
		want=$( {
			sha256sum "$CARGO_TARGET_DIR/release/$name" hack/oci-image.py
			echo "$(ref "$name") $revision $created"
		} | sha256sum | cut -c1-32)
		stamp=$OUT/$name.stamp
		if [[ -f $stamp && $(<"$stamp") == "$want" && -f $OUT/$name.tar ]]; then
			echo "image.sh: $(ref "$name") is up to date" >&2
			continue
		fi
		cp "$CARGO_TARGET_DIR/release/$name" "$OUT/bin/$name"
		strip --strip-all "$OUT/bin/$name"
		SOURCE_DATE_EPOCH=$epoch python3 hack/oci-image.py \
			--binary "$OUT/bin/$name" --name "$name" --ref "$(ref "$name")" --out "$OUT" \
			--port "$([[ $name == strata-operator ]] && echo 8081 || echo 8080)" \
			--label "org.opencontainers.image.title=$name" \
			--label "org.opencontainers.image.description=$desc" \
			--label "org.opencontainers.image.version=$VERSION" \
			--label "org.opencontainers.image.revision=$revision" \
			--label "org.opencontainers.image.created=$created" \
			--label "org.opencontainers.image.source=https://github.com/strata-dev/strata" \
			--label "org.opencontainers.image.licenses=Apache-2.0" \
			--label "org.opencontainers.image.vendor=Strata" >"$OUT/$name.json"
		echo "$want" >"$stamp"
	done
	for name in "${COMPONENTS[@]}"; do
		python3 - "$OUT/$name.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"image.sh: {d['ref']}  {d['digest'][:19]}…  {d['compressed_bytes']/1e6:.1f} MB compressed, "
      f"{d['uncompressed_bytes']/1e6:.1f} MB unpacked  ({d['archive']})", file=sys.stderr)
PY
	done
	echo "image.sh: done in $((SECONDS - started))s" >&2
}

CRANE_VERSION=v0.20.6

crane() {
	local dir=${STRATA_CACHE:-$HOME/.cache/strata}/crane-$CRANE_VERSION
	if [[ ! -x $dir/crane ]]; then
		echo "image.sh: building crane $CRANE_VERSION into $dir (once)" >&2
		GOBIN=$dir GOFLAGS=-mod=mod go install "github.com/google/go-containerregistry/cmd/crane@$CRANE_VERSION" >&2
	fi
	"$dir/crane" "$@"
}

push() {
	local registry=${1:?usage: hack/image.sh push REGISTRY (e.g. ghcr.io/acme)} name
	for name in "${COMPONENTS[@]}"; do
		[[ -d $OUT/$name.oci ]] || { echo "image.sh: no $OUT/$name.oci; run hack/image.sh build first" >&2; exit 1; }
		crane push "$OUT/$name.oci" "$registry/$name:$TAG"
	done
}

case ${1:-build} in
build) build ;;
push)
	shift
	push "$@"
	;;
refs) for name in "${COMPONENTS[@]}"; do ref "$name"; done ;;
dir) echo "$OUT" ;;
*)
	echo "usage: hack/image.sh [build|refs|dir|push REGISTRY]" >&2
	exit 2
	;;
esac
