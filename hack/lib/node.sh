# shellcheck shell=bash
# A real Kubernetes node beside the local stack, for the e2e tests (no Docker):
# its own control plane (strata-controlplane --node-ip: API server reachable
# from pods, ServiceAccount tokens, and the deployment, replicaset,
# node-lifecycle, endpointslice and root-CA controllers), kube-scheduler,
# kubelet and kube-proxy (strata-node, from the same Go module), Debian's
# containerd, runc and CNI plugins, and TCP relays (strata-forward) that let pods reach the
# stack's loopback-only services. Sourced by hack/stack.sh (node-up,
# node-down, node-status); needs root.
#
# Why a control plane of its own: an operator running in-cluster reconciles
# every Tenant of its API server, including the ones `cargo test` creates on
# the stack's; and the stack's API server stays loopback-only and unchanged.
#
# Addresses (see `hack/stack.sh --help`):
#   bridge strata0 10.244.0.1/24     pod network; the node's InternalIP
#   10.0.0.0/24                      Service IPs (kubernetes = 10.0.0.1)
#   127.0.0.1 + 10.244.0.1:57443     the node cluster's kube-apiserver
#   127.0.0.1:57379, 57380           its etcd (client, peer)
#   10.244.0.1:57250                 kubelet API (logs, exec); 127.0.0.1:57248 healthz
#   127.0.0.1:57249, 57256           kube-proxy metrics, healthz
#   127.0.0.1:57259                  kube-scheduler
#   10.244.0.1:<stack ports>         relays to PostgreSQL, Redis, Garage S3, clamd
#
# Everything the node puts on the host is removed by node_down: pods (through
# the CRI, so CNI tears down veths, namespaces and masquerade rules),
# kube-proxy's iptables chains (kube-proxy --cleanup), mounts under
# .stack/node, the kubepods cgroups, the bridge, and the ip_forward and
# bridge-nf-call-iptables settings it changed.

NODE_DIR=$STACK/node
NODE_NAME=strata-node
NODE_IP=10.244.0.1
NODE_CIDR=10.244.0.0/24
NODE_BRIDGE=strata0
NODE_KUBE_PORT=${STRATA_NODE_KUBE_PORT:-57443}
NODE_ETCD_PORT=${STRATA_NODE_ETCD_PORT:-57379}
NODE_KUBE_STATE=$NODE_DIR/kube
NODE_KUBECONFIG=$NODE_KUBE_STATE/admin.kubeconfig
NODE_CTRD_DIR=$NODE_DIR/containerd
NODE_CTRD_SOCK=$NODE_CTRD_DIR/containerd.sock
NODE_CGROUP=strata-node
NODE_PAUSE_IMAGE=strata.local/pause:3.10
NODE_PACKAGES=(containerd runc containernetworking-plugins iptables conntrack)
NODE_CNI_BIN=/usr/lib/cni

node_log() { log "node: $*"; }

node_bin() { "$ROOT/hack/controlplane/build.sh" node; }

node_ctr() { ctr --address "$NODE_CTRD_SOCK" --namespace k8s.io "$@"; }

node_kubectl() { kubectl --kubeconfig "$NODE_KUBECONFIG" --request-timeout=20s "$@"; }

node_require_root() {
	((EUID == 0)) || die "node: needs root (containerd, network namespaces, iptables, cgroups); run as root or use 'make e2e-kind'"
	[[ $(uname -s) == Linux ]] || die "node: Linux only; use 'make e2e-kind' elsewhere"
}

# Debian's containerd, runc and CNI plugins (the same install pattern as
# redis.sh: no 'apt-get update' unless the current lists fail).
node_install() {
	local missing=() p
	for p in containerd runc ctr iptables conntrack; do have "$p" || missing+=("$p"); done
	[[ -x $NODE_CNI_BIN/bridge ]] || missing+=(cni-plugins)
	((${#missing[@]} == 0)) && return 0
	have apt-get || die "node: missing ${missing[*]} and no apt-get; install ${NODE_PACKAGES[*]}"
	node_log "installing ${NODE_PACKAGES[*]} (Debian packages; missing: ${missing[*]})"
	local apt_log=$STACK/apt-node.log
	local -a apt=(apt-get -y -q -o DPkg::Lock::Timeout=300 --no-install-recommends)
	if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "${NODE_PACKAGES[@]}" >"$apt_log" 2>&1; then
		{ DEBIAN_FRONTEND=noninteractive "${apt[@]}" update &&
			DEBIAN_FRONTEND=noninteractive "${apt[@]}" install "${NODE_PACKAGES[@]}"; } >>"$apt_log" 2>&1 ||
			fail_with_log node "$apt_log" "apt-get install ${NODE_PACKAGES[*]} failed"
	fi
	# Debian starts its own containerd; ours runs with its own socket and
	# state, the system one is not needed.
	if have systemctl && systemctl is-active --quiet containerd 2>/dev/null; then
		systemctl disable --now containerd >/dev/null 2>&1 || true
	fi
}

# node_sysctl KEY VALUE: set a sysctl, remembering the previous value once
# (restored by node_down).
node_sysctl() {
	local key=$1 value=$2 file=/proc/sys/${1//.//}
	[[ -w $file ]] || return 0
	[[ -f $NODE_DIR/sysctl.$key ]] || cat "$file" >"$NODE_DIR/sysctl.$key"
	echo "$value" >"$file"
}

node_network_up() {
	if ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
		ip link add "$NODE_BRIDGE" type bridge
	fi
	ip addr replace "$NODE_IP/24" dev "$NODE_BRIDGE"
	ip link set "$NODE_BRIDGE" up
	node_sysctl net.ipv4.ip_forward 1
	modprobe br_netfilter >/dev/null 2>&1 || true
	node_sysctl net.bridge.bridge-nf-call-iptables 1
	mkdir -p "$NODE_DIR/cni/net.d" "$NODE_DIR/cni/ipam"
	cat >"$NODE_DIR/cni/net.d/10-strata.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "strata",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$NODE_BRIDGE",
      "isGateway": true,
      "ipMasq": true,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$NODE_DIR/cni/ipam",
        "ranges": [[{ "subnet": "$NODE_CIDR", "gateway": "$NODE_IP" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
EOF
}

# The kubepods cgroups live under /strata-node in every v1 hierarchy (and in
# the unified one), so that node_down can remove exactly them.
node_cgroups_up() {
	local d
	for d in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
		[[ -d $d && -w $d ]] || continue
		[[ -e $d/cgroup.procs ]] || continue
		mkdir -p "$d$NODE_CGROUP"
	done
}

node_cgroups_down() {
	local d
	for d in /sys/fs/cgroup/*/"$NODE_CGROUP" /sys/fs/cgroup/"$NODE_CGROUP"; do
		[[ -d $d ]] || continue
		# Deepest first; a cgroup with processes left refuses (reported).
		find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true
		[[ -d $d ]] && warn "node: cgroup $d still has processes; not removed"
	done
	return 0
}

node_containerd_up() {
	mkdir -p "$NODE_CTRD_DIR"
	cat >"$NODE_CTRD_DIR/config.toml" <<EOF
version = 2
root = "$NODE_CTRD_DIR/root"
state = "$NODE_CTRD_DIR/state"
[grpc]
  address = "$NODE_CTRD_SOCK"
[ttrpc]
  address = "$NODE_CTRD_SOCK.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$NODE_PAUSE_IMAGE"
  # The VM's root lacks CAP_SYS_RESOURCE: without this every sandbox fails
  # with "can't get final child's PID from pipe: EOF".
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$NODE_CNI_BIN"
    conf_dir = "$NODE_DIR/cni/net.d"
[plugins."io.containerd.internal.v1.opt"]
  path = "$NODE_CTRD_DIR/opt"
EOF
	node_start containerd containerd --config "$NODE_CTRD_DIR/config.toml"
	wait_for "containerd" 30 "$(read_pidfile "$NODE_DIR/containerd.pid")" node_ctr version ||
		fail_with_log containerd "$NODE_DIR/containerd.log" "containerd did not answer on $NODE_CTRD_SOCK"
}

# The sandbox ("pause") image, built here: upstream's pause.c from the
# k8s.io/kubernetes module, static, in an image made by hack/oci-image.py.
node_pause_image() {
	node_ctr images ls -q | grep -qx "$NODE_PAUSE_IMAGE" && return 0
	local src out=$NODE_DIR/pause
	src=$(cd "$ROOT/hack/controlplane" && go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c
	[[ -f $src ]] || die "node: $src not found (go mod download k8s.io/kubernetes)"
	mkdir -p "$out"
	gcc -Os -static -Wall -Werror -DVERSION=v3.10-strata -o "$out/pause" "$src" ||
		die "node: cannot compile pause.c (needs gcc and libc6-dev)"
	strip "$out/pause"
	python3 "$ROOT/hack/oci-image.py" --binary "$out/pause" --name pause --ref "$NODE_PAUSE_IMAGE" \
		--out "$out" --label org.opencontainers.image.title=pause >/dev/null
	node_ctr images import "$out/pause.tar" >/dev/null
}

# node_import TAR...: containerd image archives (hack/image.sh output).
node_import() {
	local tar
	for tar in "$@"; do
		node_ctr images import "$tar" >/dev/null || die "node: ctr images import $tar failed"
	done
}

# node_start NAME COMMAND...: start a node process in the background (logs
# in .stack/node/NAME.log) unless it already runs.
node_start() {
	local name=$1
	shift
	local pidfile=$NODE_DIR/$name.pid pid
	pid=$(read_pidfile "$pidfile")
	if pid_alive "$pid"; then
		return 0
	fi
	printf '\n==== %s starting %s\n' "$(date -u +%Y-%m-%dT%H:%M:%SZ)" "$*" >>"$NODE_DIR/$name.log"
	setsid nohup "$@" </dev/null >>"$NODE_DIR/$name.log" 2>&1 &
	echo $! >"$pidfile"
	disown 2>/dev/null || true
}

node_stop() { # NAME [timeout]
	local pidfile=$NODE_DIR/$1.pid pid i
	pid=$(read_pidfile "$pidfile")
	if pid_alive "$pid"; then
		kill -TERM "$pid" 2>/dev/null || true
		# pid_alive, not kill -0: an exited process stays a zombie until
		# its adoptive parent reaps it, which can take long in a container.
		for ((i = 0; i < ${2:-30} * 10; i++)); do
			pid_alive "$pid" || break
			sleep 0.1
		done
		if pid_alive "$pid"; then
			warn "node: $1 (pid $pid) still running after ${2:-30}s; sending SIGKILL"
			kill -KILL "$pid" 2>/dev/null || true
		fi
	fi
	rm -f "$pidfile"
}

# Shims outlive containerd (cri-reset normally leaves none); ours are the
# ones with our containerd's socket on their command line.
node_stop_shims() {
	local f pid
	for f in /proc/[0-9]*/cmdline; do
		pid=${f#/proc/}
		pid=${pid%/cmdline}
		[[ $(cat /proc/"$pid"/comm 2>/dev/null) == containerd-shim* ]] || continue
		tr '\0' ' ' <"$f" 2>/dev/null | grep -qF -- "-address $NODE_CTRD_SOCK " || continue
		kill -TERM "$pid" 2>/dev/null || true
	done
}

node_controlplane_up() {
	load_controlplane || die "node: $CP_LIB not found"
	STRATA_KUBE_PORT=$NODE_KUBE_PORT STRATA_ETCD_PORT=$NODE_ETCD_PORT \
		STRATA_CONTROLPLANE_ARGS="--node-ip=$NODE_IP --node-name=$NODE_NAME" \
		controlplane_up "$NODE_KUBE_STATE" || die "node: its control plane did not start (log: $NODE_KUBE_STATE/controlplane.log)"
}

node_kubelet_up() {
	local bin=$1 run
	# A fresh kubelet root per run: kubelet 1.36's records of pulled images
	# can refuse an image that is present (ErrImageNeverPull).
	run=$NODE_DIR/kubelet-$(date +%s)
	mkdir -p "$run"
	ln -sfn "$run" "$NODE_DIR/kubelet"
	cat >"$NODE_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 57250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 57248
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $NODE_KUBE_STATE/pki/ca.crt}
authorization: {mode: AlwaysAllow}
containerRuntimeEndpoint: unix://$NODE_CTRD_SOCK
# cgroups are v1 here (hybrid): kubelet 1.36 refuses them unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /$NODE_CGROUP
podCIDR: $NODE_CIDR
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
failSwapOn: false
maxPods: 60
serializeImagePulls: false
# A development machine's disk: do not evict for a fuller disk, nor collect
# the imported images (they cannot be pulled again).
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
nodeStatusReportFrequency: 10s
EOF
	node_start kubelet "$bin" kubelet --config "$NODE_DIR/kubelet.yaml" \
		--kubeconfig "$NODE_KUBE_STATE/kubelet.kubeconfig" --root-dir "$run" --cert-dir "$run/pki" \
		--hostname-override "$NODE_NAME" --node-ip "$NODE_IP" --v=1
}

node_proxy_up() {
	local bin=$1
	cat >"$NODE_DIR/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $NODE_KUBE_STATE/kube-proxy.kubeconfig}
hostnameOverride: $NODE_NAME
mode: iptables
clusterCIDR: $NODE_CIDR
healthzBindAddress: 127.0.0.1:57256
metricsBindAddress: 127.0.0.1:57249
nodePortAddresses: [$NODE_IP/32]
# Leave the host's conntrack table size alone.
conntrack: {maxPerCore: 0}
EOF
	node_start kube-proxy "$bin" kube-proxy --config "$NODE_DIR/kube-proxy.yaml" --v=1
}

node_scheduler_up() {
	local bin=$1 kc=$NODE_KUBE_STATE/kube-scheduler.kubeconfig
	node_start kube-scheduler "$bin" kube-scheduler --kubeconfig "$kc" \
		--authentication-kubeconfig "$kc" --authorization-kubeconfig "$kc" \
		--leader-elect=false --bind-address 127.0.0.1 --secure-port 57259 \
		--cert-dir "$NODE_DIR/scheduler-certs" --v=1
}

# Relays from the pod network's gateway to the stack's services (which
# listen on 127.0.0.1 only): pods use 10.244.0.1:<the same port>.
node_forward_up() {
	local bin maps=() p
	bin=$("$ROOT/hack/controlplane/build.sh" forward) || die "node: building strata-forward failed"
	for p in "$PG_PORT" "$REDIS_PORT" "$S3_PORT" "$CLAMD_PORT"; do
		maps+=(--map "$NODE_IP:$p=127.0.0.1:$p")
	done
	node_start forward "$bin" "${maps[@]}"
}

node_ready() {
	[[ $(node_kubectl get node "$NODE_NAME" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]] || return 1
	# The node-lifecycle controller removes the not-ready taint once Ready.
	! node_kubectl get node "$NODE_NAME" -o 'jsonpath={.spec.taints[*].key}' 2>/dev/null | grep -q 'not-ready'
}

node_up() {
	node_require_root
	local started=$SECONDS bin
	mkdir -p "$NODE_DIR"
	node_install
	bin=$(node_bin) || die "node: building strata-node failed"
	echo "$bin" >"$NODE_DIR/bin"
	node_network_up
	node_cgroups_up
	node_controlplane_up
	node_forward_up
	node_containerd_up
	node_pause_image
	node_scheduler_up "$bin"
	node_proxy_up "$bin"
	local kubelet_pid
	kubelet_pid=$(read_pidfile "$NODE_DIR/kubelet.pid")
	pid_alive "$kubelet_pid" || node_kubelet_up "$bin"
	wait_for "node $NODE_NAME Ready" 120 "$(read_pidfile "$NODE_DIR/kubelet.pid")" node_ready ||
		fail_with_log kubelet "$NODE_DIR/kubelet.log" "node $NODE_NAME not Ready"
	node_log "ready after $((SECONDS - started))s: KUBECONFIG=$NODE_KUBECONFIG (pods reach the stack's services at $NODE_IP)"
}

# The kubelet's own iptables chains (kube-proxy --cleanup leaves them):
# KUBE-FIREWALL with its INPUT/OUTPUT jumps, and the canary and hint chains.
node_iptables_clean() {
	local cmd table chain
	for cmd in iptables ip6tables; do
		have "$cmd" || continue
		for chain in INPUT OUTPUT; do
			while "$cmd" -w -t filter -D "$chain" -j KUBE-FIREWALL 2>/dev/null; do :; done
		done
		for table in filter nat mangle; do
			for chain in KUBE-FIREWALL KUBE-KUBELET-CANARY KUBE-IPTABLES-HINT; do
				"$cmd" -w -t "$table" -F "$chain" 2>/dev/null || continue
				"$cmd" -w -t "$table" -X "$chain" 2>/dev/null || warn "node: cannot delete $cmd $table chain $chain"
			done
		done
	done
}

# node_umount_under DIR: unmount everything mounted below DIR, deepest first.
node_umount_under() {
	local dir=$1 m
	[[ -d $dir ]] || return 0
	dir=$(cd "$dir" && pwd -P)
	awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r | while read -r m; do
		umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || warn "node: cannot unmount $m"
	done
}

node_down() {
	node_require_root
	[[ -d $NODE_DIR ]] || { node_log "not set up"; return 0; }
	# The binary node_up ran (never a new build on the way down).
	local bin="" n running=0
	[[ -f $NODE_DIR/bin ]] && bin=$(<"$NODE_DIR/bin")
	[[ -x $bin ]] || bin=""
	for n in forward containerd kube-scheduler kube-proxy kubelet; do
		pid_alive "$(read_pidfile "$NODE_DIR/$n.pid")" && running=1
	done
	ip link show "$NODE_BRIDGE" >/dev/null 2>&1 && running=1
	[[ -f $NODE_KUBE_STATE/controlplane.pid ]] && running=1
	if ((!running)); then
		node_log "not running"
		return 0
	fi
	# Node pieces before the API server (else its shutdown waits 60 s).
	node_stop kubelet
	if [[ -n $bin && -S $NODE_CTRD_SOCK ]] && pid_alive "$(read_pidfile "$NODE_DIR/containerd.pid")"; then
		"$bin" cri-reset --endpoint "unix://$NODE_CTRD_SOCK" >>"$NODE_DIR/containerd.log" 2>&1 ||
			warn "node: removing pod sandboxes failed (see $NODE_DIR/containerd.log)"
	fi
	node_stop containerd
	node_stop_shims
	node_stop kube-proxy
	if [[ -n $bin ]]; then
		"$bin" kube-proxy --cleanup >>"$NODE_DIR/kube-proxy.log" 2>&1 || warn "node: kube-proxy --cleanup failed (see $NODE_DIR/kube-proxy.log)"
	fi
	node_iptables_clean
	node_stop kube-scheduler
	node_stop forward
	if load_controlplane; then
		controlplane_down "$NODE_KUBE_STATE" || true
	fi
	node_umount_under "$NODE_DIR"
	node_cgroups_down
	ip link show "$NODE_BRIDGE" >/dev/null 2>&1 && ip link delete "$NODE_BRIDGE"
	local f key
	for f in "$NODE_DIR"/sysctl.*; do
		[[ -f $f ]] || continue
		key=${f##*/sysctl.}
		cat "$f" >"/proc/sys/${key//.//}" 2>/dev/null || true
		rm -f "$f"
	done
	# The kubelet roots of past runs (mounts are gone now).
	rm -rf "$NODE_DIR"/kubelet-* "$NODE_DIR/kubelet" "$NODE_DIR/cni/ipam"
	node_log "stopped; host state removed"
}

node_status() {
	local n rc=0 pid
	for n in forward containerd kube-scheduler kube-proxy kubelet; do
		pid=$(read_pidfile "$NODE_DIR/$n.pid")
		if pid_alive "$pid"; then echo "node $n: running (pid $pid)"; else echo "node $n: stopped"; rc=1; fi
	done
	if node_ready 2>/dev/null; then
		echo "node $NODE_NAME: Ready (KUBECONFIG=$NODE_KUBECONFIG)"
	else
		echo "node $NODE_NAME: not ready"
		rc=1
	fi
	return "$rc"
}
