# Strata's front door. `make help` lists the targets.
#
#   make up     run the platform locally (real services + operator + data plane)
#   make test   run every check and test, as CI does

SHELL := /usr/bin/env bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help

CARGO ?= cargo
STACK := hack/stack.sh
ENV := .stack/env
# Talks to the stack's API server with the stack's kubeconfig, whatever
# KUBECONFIG or ~/.kube/config say; no target uses kubectl's implicit default.
KUBECTL := hack/kubectl.sh

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: up
up: stack-up build ## Start the stack, then the operator and data plane on it (prints where)
	hack/local.sh up

.PHONY: down
down: ## Stop the operator, data plane and the stack (data in .stack/ is kept)
	hack/local.sh down
	$(STACK) down

.PHONY: status
status: ## Show what runs
	$(STACK) status || true
	hack/local.sh status || true

.PHONY: stack-up
stack-up: ## Start PostgreSQL+pgvector, Redis, Garage (S3) and the kube-apiserver; apply CRDs and RBAC
	$(STACK) up
	$(KUBECTL) apply --server-side --force-conflicts -f crds/ -f config/rbac/ >/dev/null
	$(KUBECTL) wait --for condition=established --timeout=60s -f crds/ >/dev/null

.PHONY: stack-down
stack-down: ## Stop the stack's services
	$(STACK) down

.PHONY: build
build: ## Build the binaries
	$(CARGO) build --bins

.PHONY: test
test: stack-up lint chart-check sqlx-check ## Run every check and test against the real services (what CI runs)
	@# A local operator from `make up` would reconcile the tests' Tenants too.
	hack/local.sh down
	source $(ENV) && $(CARGO) test --workspace --no-fail-fast

.PHONY: readme-path
readme-path: ## The README's path on one stack: make up, the Quickstart, make test's checks (CI)
	hack/readme-path.sh

.PHONY: lint
lint: ## cargo fmt --check and clippy with warnings denied
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

.PHONY: chart-check
chart-check: stack-up ## Chart: CRD and RBAC copies in sync, helm lint, render and dry-run apply
	PATH="$$(hack/tools.sh helm):$$PATH" charts/check.sh

.PHONY: crds
crds: ## Regenerate crds/ from the Rust types
	$(CARGO) run -q -p strata-api --bin crdgen

.PHONY: openapi
openapi: ## Regenerate docs/openapi.json and docs/problems.md from the data plane's code
	$(CARGO) run -q -p strata-dataplane --bin openapi

.PHONY: sqlx-prepare
sqlx-prepare: stack-up ## Regenerate the offline query metadata in .sqlx/
	hack/sqlx.sh prepare

.PHONY: sqlx-check
sqlx-check: stack-up ## Fail when .sqlx/ is stale against the migrations and queries
	hack/sqlx.sh check

.PHONY: bench
bench: stack-up build ## Run the benchmarks in bench/ (see bench/README.md)
	bench/provision.sh

.PHONY: bench-api
bench-api: stack-up ## REST API vs the same queries sent directly (release builds; bench/README.md)
	$(CARGO) build --release -p strata-dataplane -p strata-bench && source $(ENV) && $(CARGO) run --release -q -p strata-bench --bin api-bench

.PHONY: bench-storage
bench-storage: stack-up ## Object PUT/GET through the API vs straight to S3, cores shared then split (release builds; bench/README.md)
	$(CARGO) build --release -p strata-dataplane -p strata-bench && source $(ENV) && \
	  $(CARGO) run --release -q -p strata-bench --bin storage-bench -- 10 16 1024 3 shared && \
	  $(CARGO) run --release -q -p strata-bench --bin storage-bench -- 10 16 1024 3 split

.PHONY: bench-cache
bench-cache: stack-up ## Document GET with L1 hit, L2 hit and cache off (release builds; bench/README.md)
	$(CARGO) build --release -p strata-dataplane -p strata-bench && source $(ENV) && $(CARGO) run --release -q -p strata-bench --bin cache-bench

.PHONY: bench-output-cache
bench-output-cache: stack-up ## Document list page from the output cache vs. cache off, and the rate limiter's cost (release builds; bench/README.md)
	$(CARGO) build --release -p strata-dataplane -p strata-bench && source $(ENV) && $(CARGO) run --release -q -p strata-bench --bin output-cache-bench

.PHONY: images
images: ## Container images of the operator and data plane, no Docker needed (hack/image.sh; docs/shipping.md)
	hack/image.sh build

.PHONY: node-up
node-up: stack-up ## A real Kubernetes node for the e2e tests, on a control plane of its own (root; hack/lib/node.sh)
	$(STACK) node-up

.PHONY: node-down
node-down: ## Stop the node and remove what it put on the host
	$(STACK) node-down

.PHONY: e2e
e2e: images node-up ## End-to-end tests: the chart with the images just built, on the local node (tests/e2e)
	$(STACK) node-import "$$(hack/image.sh dir)/strata-operator.tar" "$$(hack/image.sh dir)/strata-dataplane.tar"
	KUBECONFIG="$$($(STACK) node-kubeconfig)" STRATA_E2E_HOST=10.244.0.1 STRATA_E2E_HOST_PROCS=1 tests/e2e/run.sh

.PHONY: e2e-kind
e2e-kind: images stack-up ## The same e2e suite on a kind cluster from kind-config.yaml (needs Docker and kind)
	tests/e2e/kind.sh
