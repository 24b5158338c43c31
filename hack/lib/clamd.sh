# shellcheck shell=bash
# clamd (ClamAV daemon) for the local stack: Debian's clamav-daemon binary, but
# our own instance (own port, config, pid, log) -- never the system service --
# with a local signature database that detects only the EICAR test string.
# No freshclam, no signature downloads: the data plane's antivirus hook and
# its tests need a real clamd speaking INSTREAM, not the real virus database.

CLAMD_PORT=${STRATA_CLAMD_PORT:-53310}
CLAMD_DIR=$STACK/clamd
CLAMD_DB=$CLAMD_DIR/db
CLAMD_TMP=$CLAMD_DIR/tmp
CLAMD_CFG=$CLAMD_DIR/clamd.conf
CLAMD_LOG=$CLAMD_DIR/clamd.log
CLAMD_PIDFILE=$CLAMD_DIR/clamd.pid
# Limits, in bytes. Data over them is reported, never passed as clean: over
# StreamMaxLength INSTREAM answers "size limit exceeded. ERROR"; over
# MaxFileSize/MaxScanSize (a big upload, or a small archive that expands)
# AlertExceedsMax makes it Heuristics.Limits.Exceeded.* instead of OK.
# MaxFileSize is below StreamMaxLength so that the second case is reachable
# with a plain upload, and tested. Exported so tests know what "too big" is.
CLAMD_STREAM_MAX=$((64 * 1024 * 1024))
CLAMD_MAX_FILE=$((32 * 1024 * 1024))
CLAMD_MAX_SCAN=$((128 * 1024 * 1024))

# The EICAR test string (https://www.eicar.org/download-anti-malware-testfile/),
# hex-encoded so that this file is not itself a test "virus" to scanners.
CLAMD_EICAR_HEX=58354f2150254041505b345c505a58353428505e2937434329377d2445494341522d5354414e444152442d414e544956495255532d544553542d46494c452124482b482a

clamd_install() {
	have clamd && return 0
	((EUID == 0)) || die "clamd: clamd is not installed; run: sudo apt-get install -y --no-install-recommends clamav-daemon"
	log "clamd: installing Debian package clamav-daemon (no signature download)"
	local apt_log=$STACK/apt-clamd.log
	# --no-install-recommends: clamdscan & co are not needed. The package's
	# freshclam dependency is installed but never run by us, and its service
	# is not started in containers (policy-rc.d) -- nor needed anywhere.
	local -a apt=(apt-get -y -q -o DPkg::Lock::Timeout=300 --no-install-recommends)
	if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" install clamav-daemon >"$apt_log" 2>&1; then
		log "clamd: install failed with the current package lists; running apt-get update"
		{
			DEBIAN_FRONTEND=noninteractive "${apt[@]}" update &&
				DEBIAN_FRONTEND=noninteractive "${apt[@]}" install clamav-daemon
		} >>"$apt_log" 2>&1 || fail_with_log clamd "$apt_log" "apt-get install clamav-daemon failed"
	fi
	have clamd || die "clamd: clamd still missing after apt-get install"
}

# The signature database: one extended (.ndb) signature, target type 0 (any
# file), at any offset. ClamAV reports signatures from unsigned databases with
# an `.UNOFFICIAL` suffix: `Eicar-Test-Signature.UNOFFICIAL`.
clamd_write_db() {
	mkdir -p "$CLAMD_DB" "$CLAMD_TMP"
	local sig="Eicar-Test-Signature:0:*:$CLAMD_EICAR_HEX"
	if [[ $(cat "$CLAMD_DB/strata-local.ndb" 2>/dev/null) != "$sig" ]]; then
		printf '%s\n' "$sig" >"$CLAMD_DB/strata-local.ndb.tmp"
		mv "$CLAMD_DB/strata-local.ndb.tmp" "$CLAMD_DB/strata-local.ndb"
	fi
}

# clamd_write_config: (re)writes clamd.conf; true when it changed.
clamd_write_config() {
	local tmp=$CLAMD_CFG.tmp
	cat >"$tmp" <<EOF
# Managed by hack/lib/clamd.sh -- rewritten on every 'hack/stack.sh up'.
# Our own clamd: loopback TCP only, local signatures only, everything in
# $CLAMD_DIR.
Foreground yes
# The pid file and the log ($CLAMD_LOG) are written by hack/stack.sh
# (start_bg), which owns the process: in the foreground clamd logs to stdout
# (a LogFile as well would double every line).
LogTime yes
TCPSocket $CLAMD_PORT
TCPAddr 127.0.0.1
DatabaseDirectory $CLAMD_DB
TemporaryDirectory $CLAMD_TMP
# Report data clamd could not scan completely (as Heuristics.Limits.Exceeded.*)
# instead of answering OK for its unscanned tail.
AlertExceedsMax yes
StreamMaxLength $CLAMD_STREAM_MAX
MaxFileSize $CLAMD_MAX_FILE
MaxScanSize $CLAMD_MAX_SCAN
MaxThreads 8
ReadTimeout 30
CommandReadTimeout 30
# No database reload checks: the database is ours and changes only with 'up'.
SelfCheck 0
EOF
	if ! cmp -s "$tmp" "$CLAMD_CFG"; then
		mv "$tmp" "$CLAMD_CFG"
		return 0
	fi
	rm -f "$tmp"
	return 1
}

clamd_pid() { read_pidfile "$CLAMD_PIDFILE"; }
clamd_running() { pid_alive "$(clamd_pid)" clamd; }

# clamd_request BYTES...: send a raw request (printf format) and print the
# NUL-terminated answer. For z-prefixed commands clamd ends replies with NUL.
clamd_request() {
	(
		exec 3<>"/dev/tcp/127.0.0.1/$CLAMD_PORT" || exit 1
		# shellcheck disable=SC2059 # the request is a printf format on purpose
		printf "$@" >&3
		local reply
		IFS= read -r -d '' -t 5 reply <&3 || exit 1
		printf '%s\n' "$reply"
	) 2>/dev/null
}

clamd_ready() { [[ $(clamd_request 'zPING\0') == PONG ]]; }

# INSTREAM the EICAR string: proves our signature is loaded, as a client sees it.
clamd_detects_eicar() {
	local body len reply
	# shellcheck disable=SC2001 # pairs of hex digits: no ${var//} form for that
	body=$(sed 's/../\\x&/g' <<<"$CLAMD_EICAR_HEX")
	len=$((${#CLAMD_EICAR_HEX} / 2))
	reply=$(clamd_request "zINSTREAM\\0\\x00\\x00\\x00\\x$(printf %02x "$len")$body\\x00\\x00\\x00\\x00") || return 1
	[[ $reply == "stream: Eicar-Test-Signature"*" FOUND" ]]
}

clamd_up() {
	clamd_install
	mkdir -p "$CLAMD_DIR"
	clamd_write_db
	# clamd holds no state: a running one with an outdated config (new
	# limits, another port) is simply restarted.
	if clamd_write_config && clamd_running; then
		log "clamd: configuration changed; restarting it"
		clamd_down
	fi
	if clamd_running; then
		wait_for "clamd readiness" 30 "$(clamd_pid)" clamd_ready ||
			fail_with_log clamd "$CLAMD_LOG" "running (pid $(clamd_pid)) but no PONG on 127.0.0.1:$CLAMD_PORT"
		log "clamd: already running (pid $(clamd_pid)) on 127.0.0.1:$CLAMD_PORT"
		return 0
	fi
	require_free_port clamd "$CLAMD_PORT" STRATA_CLAMD_PORT
	log "clamd: starting $(clamd --version | awk '{print $2}' | cut -d/ -f1) on 127.0.0.1:$CLAMD_PORT (log: $CLAMD_LOG)"
	start_bg "$CLAMD_LOG" "$CLAMD_PIDFILE" clamd --config-file="$CLAMD_CFG"
	wait_for "clamd readiness" 60 "$(clamd_pid)" clamd_ready ||
		fail_with_log clamd "$CLAMD_LOG" "no PONG on 127.0.0.1:$CLAMD_PORT"
	clamd_detects_eicar ||
		fail_with_log clamd "$CLAMD_LOG" "INSTREAM of the EICAR test string was not reported as Eicar-Test-Signature"
	log "clamd: ready (pid $(clamd_pid)), EICAR detected"
}

clamd_down() {
	local pid
	pid=$(clamd_pid)
	if ! pid_alive "$pid" clamd; then
		log "clamd: not running"
		rm -f "$CLAMD_PIDFILE"
		return 0
	fi
	stop_pid clamd "$pid" clamd 20 TERM
	rm -f "$CLAMD_PIDFILE"
}

clamd_status() {
	local pid
	pid=$(clamd_pid)
	if pid_alive "$pid" clamd; then
		if clamd_ready; then
			printf '%-9s %-8s pid %-8s 127.0.0.1:%s  %s\n' clamd running "$pid" "$CLAMD_PORT" "$CLAMD_DIR"
			return 0
		fi
		printf '%-9s %-8s pid %-8s 127.0.0.1:%s  (no PONG)\n' clamd degraded "$pid" "$CLAMD_PORT"
		return 1
	fi
	printf '%-9s %-8s\n' clamd stopped
	return 1
}

clamd_logs() { printf '%s\n' "$CLAMD_LOG"; }

clamd_env() {
	env_line STRATA_CLAMD_ADDR "127.0.0.1:$CLAMD_PORT"
	env_line STRATA_CLAMD_STREAM_MAX_LENGTH "$CLAMD_STREAM_MAX"
	env_line STRATA_CLAMD_MAX_FILE_SIZE "$CLAMD_MAX_FILE"
}
