# shellcheck shell=bash
# Garage (Rust S3 server) for the local stack: a single node, sqlite metadata,
# built from crates.io once per version into $STRATA_CACHE.

GARAGE_VERSION=2.5.0
GARAGE_PREFIX=$STRATA_CACHE/garage-$GARAGE_VERSION
GARAGE_BIN=$GARAGE_PREFIX/bin/garage
GARAGE_BUILD_LOG=$STRATA_CACHE/garage-$GARAGE_VERSION-build.log

S3_PORT=${STRATA_S3_PORT:-53900}
# RPC and admin ports follow the S3 port unless set explicitly, so one
# override (STRATA_S3_PORT) moves the whole service.
GARAGE_RPC_PORT=${STRATA_S3_RPC_PORT:-$((S3_PORT + 1))}
GARAGE_ADMIN_PORT=${STRATA_S3_ADMIN_PORT:-$((S3_PORT + 3))}
S3_REGION=garage
S3_TEST_BUCKET=strata-test
# The one backend bucket of strata-storage's S3 backend (--s3-bucket): every
# Strata bucket lives in it under its own prefix.
S3_DATA_BUCKET=strata-data
S3_KEY_NAME=strata-dev

GARAGE_DIR=$STACK/garage
GARAGE_CFG=$GARAGE_DIR/garage.toml
GARAGE_SECRETS=$GARAGE_DIR/secrets.env
GARAGE_LOG=$GARAGE_DIR/garage.log
GARAGE_PIDFILE=$GARAGE_DIR/garage.pid
# Written after layout/key/bucket setup succeeded for this config; when it is
# missing (e.g. a previous 'up' died half-way), setup runs again even if the
# server is already up.
# The suffix is the setup's version: bump it when garage_bootstrap gains a
# step, so a running stack gets the new step on its next 'up'.
GARAGE_READY_MARKER=$GARAGE_DIR/bootstrapped-v2

garage() { "$GARAGE_BIN" -c "$GARAGE_CFG" "$@"; }

# --- install -----------------------------------------------------------------

garage_install() {
	[[ -x $GARAGE_BIN ]] && return 0
	have cargo || die "garage: cargo is required to build garage $GARAGE_VERSION (install Rust via rustup)"
	mkdir -p "$STRATA_CACHE"
	# One build at a time per cache (two checkouts running 'up' together).
	# The lock fd is confined to this subshell so that servers started later
	# never inherit it.
	(
		exec 9>"$STRATA_CACHE/garage-$GARAGE_VERSION.lock"
		if ! flock -n 9; then
			log "garage: another 'up' is building garage $GARAGE_VERSION; waiting for it"
			flock 9
		fi
		[[ -x $GARAGE_BIN ]] && exit 0
		log "garage: building garage $GARAGE_VERSION from crates.io into $GARAGE_PREFIX"
		log "garage: this is a one-time ~15-40 min compile on 2 cores; log: $GARAGE_BUILD_LOG"
		# The flags are fixed (and --locked): the binary is keyed by version
		# only. bundled-libs avoids needing system libsodium/zstd/sqlite
		# headers; sqlite is the only metadata engine we use; no k2v/metrics.
		# (If someone runs the identical command by hand concurrently, cargo's
		# own lock on the target dir serialises the two builds.)
		CARGO_TARGET_DIR=$STRATA_CACHE/garage-build cargo install garage \
			--version "$GARAGE_VERSION" --locked --no-default-features \
			--features bundled-libs,sqlite --root "$GARAGE_PREFIX" \
			>"$GARAGE_BUILD_LOG" 2>&1 ||
			fail_with_log garage "$GARAGE_BUILD_LOG" "cargo install garage $GARAGE_VERSION failed"
	) || exit 1
	[[ -x $GARAGE_BIN ]] || die "garage: build finished but $GARAGE_BIN is missing"
}

# --- config -------------------------------------------------------------------

# Secrets are generated once and kept in secrets.env (mode 600), so the S3
# credentials handed to tests stay the same across down/up, and even across a
# wipe of the Garage metadata (the key is imported, not created).
garage_secrets() {
	mkdir -p "$GARAGE_DIR"
	if [[ ! -s $GARAGE_SECRETS ]]; then
		(
			umask 077
			{
				echo "# Generated once by hack/lib/garage.sh; delete .stack/garage to rotate."
				echo "GARAGE_RPC_SECRET=$(random_hex 32)"
				echo "GARAGE_ADMIN_TOKEN=$(random_hex 32)"
				echo "GARAGE_METRICS_TOKEN=$(random_hex 32)"
				# Same shapes as keys Garage generates itself: GK + 24 hex, 64 hex.
				echo "GARAGE_S3_KEY_ID=GK$(random_hex 12)"
				echo "GARAGE_S3_SECRET=$(random_hex 32)"
			} >"$GARAGE_SECRETS"
		)
	fi
	chmod 600 "$GARAGE_SECRETS"
	# shellcheck disable=SC1090
	source "$GARAGE_SECRETS"
}

garage_write_config() {
	mkdir -p "$GARAGE_DIR/meta" "$GARAGE_DIR/data"
	local tmp=$GARAGE_CFG.tmp
	(
		umask 077
		cat >"$tmp" <<EOF
# Managed by hack/lib/garage.sh -- rewritten on every 'hack/stack.sh up'.
metadata_dir = "$GARAGE_DIR/meta"
data_dir = "$GARAGE_DIR/data"
db_engine = "sqlite"
# Single node, so a single copy of everything.
replication_factor = 1
# Local stack only: skip fsync for speed, like the postgres settings.
metadata_fsync = false
data_fsync = false

rpc_bind_addr = "127.0.0.1:$GARAGE_RPC_PORT"
rpc_public_addr = "127.0.0.1:$GARAGE_RPC_PORT"
rpc_secret = "$GARAGE_RPC_SECRET"

[s3_api]
s3_region = "$S3_REGION"
api_bind_addr = "127.0.0.1:$S3_PORT"
# Virtual-host style (<bucket>.s3.garage.localhost); clients normally use
# path style against 127.0.0.1.
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$GARAGE_ADMIN_PORT"
admin_token = "$GARAGE_ADMIN_TOKEN"
metrics_token = "$GARAGE_METRICS_TOKEN"
EOF
	)
	# Config changed (ports...)? Then setup must be re-checked on next start.
	if ! cmp -s "$tmp" "$GARAGE_CFG"; then
		mv "$tmp" "$GARAGE_CFG"
		rm -f "$GARAGE_READY_MARKER"
	else
		rm -f "$tmp"
	fi
}

# --- probes -------------------------------------------------------------------

garage_pid() { read_pidfile "$GARAGE_PIDFILE"; }
garage_running() { pid_alive "$(garage_pid)" garage; }
# The CLI talks to the daemon over RPC: success means the node is up.
garage_rpc_ready() { garage status >/dev/null 2>&1; }
# Any HTTP answer (403 without credentials) means the S3 endpoint is serving.
garage_s3_listening() { curl -s -o /dev/null -m 2 "http://127.0.0.1:$S3_PORT/"; }

# s3_curl METHOD PATH [curl args...]: SigV4-signed request with our key,
# path-style. --aws-sigv4 needs curl >= 7.75.
s3_curl() {
	local method=$1 path=$2
	shift 2
	curl -sS -f -m 10 -X "$method" \
		--aws-sigv4 "aws:amz:$S3_REGION:s3" --user "$GARAGE_S3_KEY_ID:$GARAGE_S3_SECRET" \
		-H "x-amz-content-sha256: UNSIGNED-PAYLOAD" \
		"http://127.0.0.1:$S3_PORT$path" "$@"
}

# Real S3 round trip with the test key: PUT, GET, compare, DELETE.
garage_s3_roundtrip() {
	local obj=/$S3_TEST_BUCKET/.strata-stack-probe-$$ body got
	body="probe $(date +%s) $RANDOM"
	s3_curl PUT "$obj" --data-binary "$body" -o /dev/null || return 1
	got=$(s3_curl GET "$obj") || return 1
	s3_curl DELETE "$obj" -o /dev/null || return 1
	[[ $got == "$body" ]]
}

# --- bootstrap: layout, key, bucket (all idempotent) ---------------------------

# garage_json ENDPOINT EXPR: call a parameterless admin API endpoint through
# the CLI (`garage json-api`: stable JSON, unlike the human-readable tables)
# and print a python expression evaluated over the decoded response `r`.
garage_json() {
	local endpoint=$1 expr=$2
	garage json-api "$endpoint" |
		python3 -c "import json,sys; r=json.load(sys.stdin); print($expr)"
}

garage_bootstrap() {
	local out node_id has_role version
	# 1. Layout: give this node a storage role once. Until then the node
	#    cannot store anything.
	node_id=$(garage node id -q 2>/dev/null | cut -d@ -f1) || true
	[[ -n $node_id ]] || fail_with_log garage "$GARAGE_LOG" "cannot read node id"
	has_role=$(garage_json GetClusterLayout "any(x['id'] == '$node_id' for x in r['roles'])") ||
		fail_with_log garage "$GARAGE_LOG" "cannot read the cluster layout"
	if [[ $has_role != True ]]; then
		version=$(garage_json GetClusterLayout "r['version']") ||
			fail_with_log garage "$GARAGE_LOG" "cannot read the cluster layout version"
		log "garage: assigning layout to node ${node_id:0:16}… (version $((version + 1)))"
		out=$({
			garage layout assign -z dc1 -c 1G "$node_id" &&
				garage layout apply --version "$((version + 1))"
		} 2>&1) || fail_with_log garage "$GARAGE_LOG" "layout assign/apply failed: $out"
	fi
	wait_for "garage cluster health" 30 "$(garage_pid)" garage_healthy ||
		fail_with_log garage "$GARAGE_LOG" "cluster not healthy after layout apply"

	# 2. Access key, imported with our stored id/secret so it is stable.
	if ! garage key info "$GARAGE_S3_KEY_ID" >/dev/null 2>&1; then
		log "garage: importing access key $S3_KEY_NAME ($GARAGE_S3_KEY_ID)"
		out=$(garage key import --yes -n "$S3_KEY_NAME" "$GARAGE_S3_KEY_ID" "$GARAGE_S3_SECRET" 2>&1) ||
			fail_with_log garage "$GARAGE_LOG" "key import failed: $out"
	fi
	# Tests create their own buckets with this key.
	out=$(garage key allow --create-bucket "$GARAGE_S3_KEY_ID" 2>&1) ||
		fail_with_log garage "$GARAGE_LOG" "key allow --create-bucket failed: $out"

	# 3. The shared test bucket and the data bucket, owned by the key. The
	#    data plane would create the data bucket itself; creating it here
	#    makes it work with a key that may not create buckets as well.
	local bucket
	for bucket in "$S3_TEST_BUCKET" "$S3_DATA_BUCKET"; do
		if ! garage bucket info "$bucket" >/dev/null 2>&1; then
			log "garage: creating bucket $bucket"
			out=$(garage bucket create "$bucket" 2>&1) ||
				fail_with_log garage "$GARAGE_LOG" "bucket create $bucket failed: $out"
		fi
		out=$(garage bucket allow --read --write --owner "$bucket" --key "$GARAGE_S3_KEY_ID" 2>&1) ||
			fail_with_log garage "$GARAGE_LOG" "bucket allow $bucket failed: $out"
	done

	# 4. Prove it with a signed S3 round trip, as a client would do it.
	wait_for "S3 PUT/GET round trip" 20 "$(garage_pid)" garage_s3_roundtrip ||
		fail_with_log garage "$GARAGE_LOG" "signed S3 PUT/GET on s3://$S3_TEST_BUCKET failed"
	touch "$GARAGE_READY_MARKER"
	rm -f "$GARAGE_DIR/bootstrapped" # the marker before it was versioned
}

garage_healthy() {
	[[ $(garage_json GetClusterHealth "r['status']") == healthy ]]
}

# --- lifecycle ----------------------------------------------------------------

garage_up() {
	garage_install
	garage_secrets
	if garage_running; then
		wait_for "garage RPC" 30 "$(garage_pid)" garage_rpc_ready ||
			fail_with_log garage "$GARAGE_LOG" "running (pid $(garage_pid)) but RPC not answering"
		if [[ -f $GARAGE_READY_MARKER ]]; then
			log "garage: already running (pid $(garage_pid)) on 127.0.0.1:$S3_PORT"
			return 0
		fi
		log "garage: running (pid $(garage_pid)) but setup incomplete; finishing it"
		garage_bootstrap
		return 0
	fi
	local port
	for port in "$S3_PORT" "$GARAGE_RPC_PORT" "$GARAGE_ADMIN_PORT"; do
		require_free_port garage "$port" STRATA_S3_PORT
	done
	garage_write_config
	log "garage: starting $GARAGE_VERSION, S3 on 127.0.0.1:$S3_PORT (log: $GARAGE_LOG)"
	# NO_COLOR: garage colours its log even when writing to a file.
	NO_COLOR=1 RUST_LOG=${STRATA_GARAGE_LOG:-garage=info} start_bg "$GARAGE_LOG" "$GARAGE_PIDFILE" \
		"$GARAGE_BIN" -c "$GARAGE_CFG" server
	wait_for "garage RPC" 60 "$(garage_pid)" garage_rpc_ready ||
		fail_with_log garage "$GARAGE_LOG" "node did not come up"
	wait_for "garage S3 endpoint" 30 "$(garage_pid)" garage_s3_listening ||
		fail_with_log garage "$GARAGE_LOG" "S3 API not listening on 127.0.0.1:$S3_PORT"
	# Layout/key/bucket live in metadata_dir and survive restarts, but the
	# steps are idempotent and cheap, so re-check them on every fresh start.
	garage_bootstrap
	log "garage: ready (pid $(garage_pid)), bucket s3://$S3_TEST_BUCKET"
}

garage_down() {
	local pid
	pid=$(garage_pid)
	if ! pid_alive "$pid" garage; then
		log "garage: not running"
		rm -f "$GARAGE_PIDFILE"
		return 0
	fi
	stop_pid garage "$pid" garage 20 TERM
	rm -f "$GARAGE_PIDFILE"
}

garage_status() {
	local pid
	pid=$(garage_pid)
	if pid_alive "$pid" garage; then
		if garage_s3_listening; then
			printf '%-9s %-8s pid %-8s 127.0.0.1:%s  %s\n' garage running "$pid" "$S3_PORT" "$GARAGE_DIR"
			return 0
		fi
		printf '%-9s %-8s pid %-8s 127.0.0.1:%s  (S3 not answering)\n' garage degraded "$pid" "$S3_PORT"
		return 1
	fi
	if [[ -x $GARAGE_BIN ]]; then
		printf '%-9s %-8s\n' garage stopped
	else
		printf '%-9s %-8s (not built yet: %s)\n' garage stopped "$GARAGE_BIN"
	fi
	return 1
}

garage_logs() { printf '%s\n' "$GARAGE_LOG"; }

garage_env() {
	[[ -s $GARAGE_SECRETS ]] || return 0
	# shellcheck disable=SC1090
	source "$GARAGE_SECRETS"
	env_line STRATA_S3_ENDPOINT "http://127.0.0.1:$S3_PORT"
	env_line STRATA_S3_REGION "$S3_REGION"
	env_line STRATA_S3_ACCESS_KEY_ID "$GARAGE_S3_KEY_ID"
	env_line STRATA_S3_SECRET_ACCESS_KEY "$GARAGE_S3_SECRET"
	env_line STRATA_S3_TEST_BUCKET "$S3_TEST_BUCKET"
	env_line STRATA_S3_BUCKET "$S3_DATA_BUCKET"
	# Admin API (bucket/key management by the operator, if it needs it).
	env_line STRATA_S3_ADMIN_ENDPOINT "http://127.0.0.1:$GARAGE_ADMIN_PORT"
	env_line STRATA_S3_ADMIN_TOKEN "$GARAGE_ADMIN_TOKEN"
}
