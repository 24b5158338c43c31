# syntax=docker/dockerfile:1
# Images of strata-operator and strata-dataplane, for people with Docker or
# Buildx. Without a Docker engine, `make images` (hack/image.sh) builds the
# same images from the same release binaries (docs/shipping.md).
#
#   docker build --target operator  -t ghcr.io/strata-dev/strata-operator:0.1.0 .
#   docker build --target dataplane -t ghcr.io/strata-dev/strata-dataplane:0.1.0 .
#
# Both run as the distroless "nonroot" user (65532) with no shell; the
# binaries need a writable /tmp only (the chart mounts an emptyDir there and
# sets readOnlyRootFilesystem).

ARG RUST_VERSION=1.95
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG CREATED=1970-01-01T00:00:00Z

FROM docker.io/library/rust:${RUST_VERSION}-slim-bookworm AS build
WORKDIR /src
# Compile-time checked queries use the offline metadata in .sqlx/
# (.cargo/config.toml sets SQLX_OFFLINE): no database needed here.
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p strata-operator -p strata-dataplane && \
    mkdir -p /out && \
    cp target/release/strata-operator target/release/strata-dataplane /out/ && \
    strip --strip-all /out/strata-operator /out/strata-dataplane

# glibc, libgcc_s, CA certificates, /etc/passwd with nonroot (65532): what
# hack/oci-image.py puts in its base layer.
FROM gcr.io/distroless/cc-debian12:nonroot AS base

FROM base AS operator
ARG VERSION
ARG REVISION
ARG CREATED
LABEL org.opencontainers.image.title="strata-operator" \
      org.opencontainers.image.description="Strata operator: turns Tenant and Bucket resources into databases and storage" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="https://github.com/strata-dev/strata" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="Strata"
COPY --from=build /out/strata-operator /usr/local/bin/strata-operator
USER 65532:65532
EXPOSE 8081
ENTRYPOINT ["/usr/local/bin/strata-operator"]

FROM base AS dataplane
ARG VERSION
ARG REVISION
ARG CREATED
LABEL org.opencontainers.image.title="strata-dataplane" \
      org.opencontainers.image.description="Strata data plane: the tenants' REST APIs" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="https://github.com/strata-dev/strata" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="Strata"
COPY --from=build /out/strata-dataplane /usr/local/bin/strata-dataplane
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/strata-dataplane"]
