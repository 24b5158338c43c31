# shellcheck shell=bash
# Redis 7 for the local stack: Debian's redis-server binary, but our own
# instance (own port, own data dir, own pid) -- never the system service.

REDIS_PORT=${STRATA_REDIS_PORT:-56379}
REDIS_DIR=$STACK/redis
REDIS_LOG=$REDIS_DIR/redis.log
REDIS_PIDFILE=$REDIS_DIR/redis.pid

redis_install() {
	have redis-server && have redis-cli && return 0
	((EUID == 0)) || die "redis: redis-server is not installed; run: sudo apt-get install -y redis-server"
	log "redis: installing Debian package redis-server"
	local apt_log=$STACK/apt-redis.log
	# Wait for a concurrent apt/dpkg (another setup script) instead of failing.
	local -a apt=(apt-get -y -q -o DPkg::Lock::Timeout=300)
	# Try without 'apt-get update' first: the package lists are usually
	# there already and updating them costs time.
	if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" install redis-server >"$apt_log" 2>&1; then
		log "redis: install failed with the current package lists; running apt-get update"
		{
			DEBIAN_FRONTEND=noninteractive "${apt[@]}" update &&
				DEBIAN_FRONTEND=noninteractive "${apt[@]}" install redis-server
		} >>"$apt_log" 2>&1 || fail_with_log redis "$apt_log" "apt-get install redis-server failed"
	fi
	if ! have redis-server || ! have redis-cli; then
		die "redis: redis-server/redis-cli still missing after apt-get install"
	fi
}

redis_pid() { read_pidfile "$REDIS_PIDFILE"; }
redis_running() { pid_alive "$(redis_pid)" redis-server; }
redis_ready() { [[ $(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]; }

redis_up() {
	redis_install
	if redis_running; then
		wait_for "redis readiness" 15 "$(redis_pid)" redis_ready ||
			fail_with_log redis "$REDIS_LOG" "running (pid $(redis_pid)) but no PONG on 127.0.0.1:$REDIS_PORT"
		log "redis: already running (pid $(redis_pid)) on 127.0.0.1:$REDIS_PORT"
		return 0
	fi
	require_free_port redis "$REDIS_PORT" STRATA_REDIS_PORT
	mkdir -p "$REDIS_DIR"
	log "redis: starting $(redis-server --version | awk '{print $3}') on 127.0.0.1:$REDIS_PORT (log: $REDIS_LOG)"
	# No config file: everything on the command line so the system's
	# /etc/redis/redis.conf (port 6379, its own dirs) never applies.
	# --daemonize no + start_bg: we own the pid. The default RDB save points
	# are kept so data survives 'down'/'up' (SIGTERM makes redis save).
	start_bg "$REDIS_LOG" "$REDIS_PIDFILE" \
		redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --protected-mode yes \
		--dir "$REDIS_DIR" --dbfilename dump.rdb --appendonly no \
		--save "3600 1 300 100 60 10000" --daemonize no --logfile ""
	wait_for "redis readiness" 30 "$(redis_pid)" redis_ready ||
		fail_with_log redis "$REDIS_LOG" "no PONG on 127.0.0.1:$REDIS_PORT"
	log "redis: ready (pid $(redis_pid))"
}

redis_down() {
	local pid
	pid=$(redis_pid)
	if ! pid_alive "$pid" redis-server; then
		log "redis: not running"
		rm -f "$REDIS_PIDFILE"
		return 0
	fi
	stop_pid redis "$pid" redis-server 30 TERM
	rm -f "$REDIS_PIDFILE"
}

redis_status() {
	local pid
	pid=$(redis_pid)
	if pid_alive "$pid" redis-server; then
		if redis_ready; then
			printf '%-9s %-8s pid %-8s 127.0.0.1:%s  %s\n' redis running "$pid" "$REDIS_PORT" "$REDIS_DIR"
			return 0
		fi
		printf '%-9s %-8s pid %-8s 127.0.0.1:%s  (no PONG)\n' redis degraded "$pid" "$REDIS_PORT"
		return 1
	fi
	printf '%-9s %-8s\n' redis stopped
	return 1
}

redis_logs() { printf '%s\n' "$REDIS_LOG"; }

redis_env() {
	env_line STRATA_REDIS_URL "redis://127.0.0.1:$REDIS_PORT"
}
