# shellcheck shell=bash
# Shared helpers for hack/stack.sh and the per-service libraries in hack/lib/.
#
# Sourced, never executed. Expects the caller to run under `set -euo pipefail`
# and to have set ROOT (repo root), STACK ($ROOT/.stack) and STRATA_CACHE.

# ---------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------

# All diagnostics go to stderr so that stdout stays machine-readable
# (`stack.sh env` prints the env file on stdout and nothing else).
log() { printf '[stack %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
warn() { printf '[stack %s] WARNING: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

die() {
	printf '\n[stack] ERROR: %s\n\n' "$*" >&2
	exit 1
}

have() { command -v "$1" >/dev/null 2>&1; }

# fail_with_log SERVICE LOGFILE MESSAGE
# A service failed to start: show the end of its log so the cause is visible
# right in the terminal / CI output, then abort loudly.
fail_with_log() {
	local service=$1 logfile=$2 msg=$3 lines=${STACK_FAIL_LOG_LINES:-60}
	{
		printf '\n'
		printf '=%.0s' {1..78}
		printf '\n[stack] %s FAILED: %s\n' "$service" "$msg"
		if [[ -s $logfile ]]; then
			printf '[stack] last %s lines of %s:\n' "$lines" "$logfile"
			printf -- '-%.0s' {1..78}
			printf '\n'
			tail -n "$lines" "$logfile"
			printf -- '-%.0s' {1..78}
			printf '\n'
		else
			printf '[stack] (log %s is empty or missing)\n' "$logfile"
		fi
		printf '=%.0s' {1..78}
		printf '\n'
	} >&2
	exit 1
}

# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------

# read_pidfile FILE -> prints the pid (first line) or nothing.
read_pidfile() {
	local f=$1
	[[ -s $f ]] || return 0
	head -n 1 "$f" | tr -d '[:space:]'
}

# pid_alive PID [COMM]
# True when PID exists and, if COMM is given, its /proc/PID/comm equals COMM.
# The comm check guards against pid reuse: a stale pid file must never make
# us treat (or kill) an unrelated process as one of ours.
pid_alive() {
	local pid=${1:-} comm=${2:-} actual stat
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	kill -0 "$pid" 2>/dev/null || return 1
	# A zombie has exited and only waits to be reaped by its (adoptive)
	# parent, which can take seconds in a container: treat it as dead.
	stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
	stat=${stat##*) }
	[[ ${stat:0:1} != Z ]] || return 1
	[[ -z $comm ]] && return 0
	actual=$(cat "/proc/$pid/comm" 2>/dev/null) || return 1
	# The kernel truncates comm to 15 characters.
	[[ $actual == "${comm:0:15}" ]]
}

# pid_gone PID: true once PID no longer exists at all (not even as a zombie).
pid_gone() { ! kill -0 "$1" 2>/dev/null; }

# start_bg LOGFILE PIDFILE CMD [ARGS...]
# Start CMD detached from our session (setsid) so that Ctrl-C on the terminal
# that ran `up`, or the end of the calling shell, does not take the service
# down with it. stdout+stderr are appended to LOGFILE; the pid goes to PIDFILE.
# Because a background job of a non-interactive shell is not a process-group
# leader, setsid(1) execs in place and $! is the service's own pid.
start_bg() {
	local logfile=$1 pidfile=$2
	shift 2
	# Logs are appended across restarts; a banner separates the runs.
	printf '\n==== %s hack/stack.sh starting: %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >>"$logfile"
	setsid "$@" >>"$logfile" 2>&1 </dev/null &
	echo $! >"$pidfile"
}

# stop_pid NAME PID COMM TIMEOUT [SIGNAL]
# Ask a process we started to stop with SIGNAL (default TERM), wait up to
# TIMEOUT seconds, then SIGKILL it. Refuses to touch a pid whose comm does
# not match (pid reuse).
stop_pid() {
	local name=$1 pid=$2 comm=$3 timeout=$4 sig=${5:-TERM}
	pid_alive "$pid" "$comm" || return 0
	log "stopping $name (pid $pid, SIG$sig)"
	kill "-$sig" "$pid" 2>/dev/null || true
	local deadline=$((SECONDS + timeout))
	while pid_alive "$pid" "$comm"; do
		if ((SECONDS >= deadline)); then
			warn "$name (pid $pid) still alive after ${timeout}s, sending SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
			local kdeadline=$((SECONDS + 5))
			while pid_alive "$pid" "$comm" && ((SECONDS < kdeadline)); do sleep 0.1; done
			pid_alive "$pid" "$comm" && die "$name (pid $pid) survived SIGKILL"
			return 0
		fi
		sleep 0.1
	done
}

# wait_for DESC TIMEOUT WATCH_PID CMD [ARGS...]
# Poll CMD until it succeeds or TIMEOUT seconds pass. If WATCH_PID is
# non-empty and that process dies meanwhile, give up at once instead of
# waiting out the timeout (a crashed server will never become ready).
wait_for() {
	local desc=$1 timeout=$2 watch=$3
	shift 3
	local deadline=$((SECONDS + timeout))
	until "$@" >/dev/null 2>&1; do
		if [[ -n $watch ]] && ! kill -0 "$watch" 2>/dev/null; then
			log "process $watch exited while waiting for $desc"
			return 1
		fi
		if ((SECONDS >= deadline)); then
			log "timed out after ${timeout}s waiting for $desc"
			return 1
		fi
		sleep 0.2
	done
}

# ---------------------------------------------------------------------------
# Network / files / secrets
# ---------------------------------------------------------------------------

# port_in_use PORT: true if something accepts TCP connections on 127.0.0.1:PORT.
port_in_use() {
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# require_free_port SERVICE PORT ENVVAR
# Called right before starting a service we do not already run: a listener
# on our port is someone else's (another checkout's stack, a system service).
require_free_port() {
	local service=$1 port=$2 var=$3
	if port_in_use "$port"; then
		die "$service: 127.0.0.1:$port is already in use by a process this stack did not start" \
			"(another checkout's stack?). Stop it, or pick another port with $var=..."
	fi
}

# random_hex NBYTES -> 2*NBYTES lowercase hex characters from the kernel CSPRNG.
random_hex() {
	od -An -vtx1 -N"$1" /dev/urandom | tr -d ' \n'
}

# ensure_secret FILE NBYTES: create FILE (mode 600) with a random hex secret
# once; later calls keep the existing value so credentials stay stable.
ensure_secret() {
	local f=$1 n=$2
	if [[ ! -s $f ]]; then
		(umask 077 && random_hex "$n" >"$f")
	fi
	chmod 600 "$f"
}

# env_line NAME VALUE -> a sourceable `export NAME=VALUE` line, shell-quoted.
env_line() {
	printf 'export %s=%q\n' "$1" "$2"
}
