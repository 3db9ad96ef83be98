#!/usr/bin/env bash
# A real Kubernetes API server (v1.20.2) for tests, offline; listens on
# 127.0.0.1 unless NETLET_KUBE_BIND_ADDRESS says otherwise.
#
# Built from Debian's `kubernetes` source package (1.20.5+really1.20.2, the
# whole upstream tree with vendor/) with Debian's Go; etcd is Debian's
# etcd-server. The same build also makes the node's binaries that
# e2e/local-cluster.sh runs (kubelet, scheduler, controller-manager, the
# pause container). See e2e/README.md.
#
#   e2e/kube-apiserver.sh build              build every binary unless cached; prints the cache dir
#   e2e/kube-apiserver.sh start DIR          etcd + apiserver with state under DIR; prints DIR/kubeconfig
#   e2e/kube-apiserver.sh stop DIR           kill the PIDs in DIR/pids and wait for them
#   e2e/kube-apiserver.sh restart-apiserver DIR   restart only the apiserver (same flags, same port)
#
# Environment:
#   NETLET_KUBE_CACHE        cache root (default /var/cache/netlet-kube); binaries in $NETLET_KUBE_CACHE/v1.20.2/
#   NETLET_KUBE_KEEP_BUILD=1 keep the source tree and Go build cache (~2 GB) after a successful build
#   NETLET_KUBE_READY_TIMEOUT seconds to wait for /readyz (default 60)
#   NETLET_KUBE_BIND_ADDRESS  address the apiserver listens on (default 127.0.0.1); tests run
#                            the whole script inside a throwaway netns with 0.0.0.0 so
#                            agents in other namespaces reach it over a veth
#   NETLET_KUBE_SANS          more IP addresses (comma-separated) the serving certificate is valid for
#   NETLET_KUBE_USERS         static token users: "USER" or "USER=GROUP,GROUP" entries, space-separated;
#                            each token is written to DIR/tokens/USER (":" as "_")
#   NETLET_KUBE_CONTROLLERS=1 a controller-manager will run: ServiceAccount admission stays on
set -euo pipefail

KUBE_VERSION=v1.20.2
KUBE_MAJOR=1
KUBE_MINOR=20
DEB_SRC_PKG=kubernetes
DEB_SRC_VERSION_PREFIX=1.20.5+really1.20.2
CACHE_ROOT=${NETLET_KUBE_CACHE:-/var/cache/netlet-kube}
BIN_DIR=$CACHE_ROOT/$KUBE_VERSION
READY_TIMEOUT=${NETLET_KUBE_READY_TIMEOUT:-60}
# Bump when the build recipe changes (patches, flags, binaries): cached
# binaries with another recipe are rebuilt. SOURCE_RECIPE versions the
# prepared source tree (patches), which a new binary list does not touch.
BUILD_RECIPE=3
SOURCE_RECIPE=2
# What `build` makes: Go commands of the tree, plus `pause` (C, static).
GO_BINARIES=(kube-apiserver kubectl kubelet kube-scheduler kube-controller-manager)
BINARIES=("${GO_BINARIES[@]}" pause)

LOG_TAG=kube-apiserver.sh
# shellcheck source=e2e/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    grep '^#   e2e/kube-apiserver.sh' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# ---------------------------------------------------------------- build ----

ensure_runtime_deps() {
    local missing=()
    command -v etcd >/dev/null || missing+=(etcd-server)
    command -v openssl >/dev/null || missing+=(openssl)
    command -v curl >/dev/null || missing+=(curl)
    if ((${#missing[@]})); then
        [[ -n $(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -print -quit 2>/dev/null) ]] ||
            as_root apt-get update -q >&2
        apt_install "${missing[@]}"
    fi
}

source_available() {
    local out
    out=$(apt-cache showsrc "$DEB_SRC_PKG" 2>/dev/null) || return 1
    grep -q "^Version: $DEB_SRC_VERSION_PREFIX" <<<"$out"
}

ensure_build_deps() {
    local missing=()
    command -v go >/dev/null || missing+=(golang-go)
    command -v rsync >/dev/null || missing+=(rsync)
    command -v dpkg-source >/dev/null || missing+=(dpkg-dev)
    command -v make >/dev/null || missing+=(make)
    command -v gcc >/dev/null || missing+=(gcc libc6-dev)
    [[ -d /usr/share/gocode/src/github.com/modern-go/reflect2 ]] ||
        missing+=(golang-github-modern-go-reflect2-dev)
    # Source packages need a deb-src entry; derive one from the deb822 sources.
    local src_list=/etc/apt/sources.list.d/netlet-deb-src.sources
    local need_update=0
    if ! source_available; then
        if [[ ! -e $src_list ]]; then
            [[ -r /etc/apt/sources.list.d/debian.sources ]] ||
                die "no /etc/apt/sources.list.d/debian.sources to derive a deb-src entry from"
            log "adding deb-src entries in $src_list"
            sed 's/^Types:[[:space:]]*deb[[:space:]]*$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources |
                as_root tee "$src_list" >/dev/null
        fi
        need_update=1
    fi
    if ((need_update)) || ((${#missing[@]})); then
        as_root apt-get update -q >&2
    fi
    if ((${#missing[@]})); then apt_install "${missing[@]}"; fi
    source_available ||
        die "apt has no source package $DEB_SRC_PKG $DEB_SRC_VERSION_PREFIX*"
}

binaries_cached() {
    local b
    for b in "${BINARIES[@]}"; do [[ -x $BIN_DIR/$b ]] || return 1; done
    [[ $(cat "$BIN_DIR/.recipe" 2>/dev/null) == "$BUILD_RECIPE" ]] &&
        [[ $("$BIN_DIR/kubectl" version --client --short 2>/dev/null) == *"$KUBE_VERSION"* ]]
}

cmd_build() {
    if binaries_cached; then
        echo "$BIN_DIR"
        return 0
    fi
    mkdir -p "$CACHE_ROOT"
    # One build at a time (tests may call `build` in parallel); the subshell
    # keeps the lock fd and the Go environment away from the servers `start`
    # launches afterwards.
    (
        flock 9
        binaries_cached || build_locked
    ) 9>"$CACHE_ROOT/.build.lock"
    echo "$BIN_DIR"
}

build_locked() {
    ensure_build_deps
    ensure_runtime_deps

    local work=$CACHE_ROOT/build
    local tree=$work/kubernetes
    local gopath=$work/gopath
    local t0=$SECONDS
    mkdir -p "$work"
    if [[ $(cat "$tree/.netlet-prepared" 2>/dev/null) != "$SOURCE_RECIPE" ]]; then
        rm -rf "$tree" "$work"/dl
        mkdir -p "$work/dl"
        log "downloading source package $DEB_SRC_PKG"
        (cd "$work/dl" && apt-get source --download-only "$DEB_SRC_PKG" >&2)
        local dsc
        dsc=$(find "$work/dl" -maxdepth 1 -name "${DEB_SRC_PKG}_${DEB_SRC_VERSION_PREFIX}*.dsc" -print -quit)
        [[ -n $dsc ]] || die "apt-get source fetched no ${DEB_SRC_PKG}_${DEB_SRC_VERSION_PREFIX}*.dsc"
        log "unpacking $(basename "$dsc")"
        dpkg-source -x "$dsc" "$tree" >&2
        rm -rf "$work/dl"
        # reflect2 1.0.1 crashes under Go >= 1.18; Debian ships 1.0.2.
        log "replacing vendored github.com/modern-go/reflect2 with Debian's"
        rm -rf "$tree/vendor/github.com/modern-go/reflect2"
        mkdir -p "$tree/vendor/github.com/modern-go/reflect2"
        cp -rL /usr/share/gocode/src/github.com/modern-go/reflect2/. "$tree/vendor/github.com/modern-go/reflect2/"
        rm -f "$tree/vendor/github.com/modern-go/reflect2"/*_test.go
        # Since Go 1.16 reflect.Zero shares one zero value, so the schema type
        # check `reflect.DeepEqual(reflect.Zero(T), reflect.ValueOf(data))`
        # holds for "" and the server rejects every empty string in a
        # non-nullable string field ("in body must be of type string:
        # \"null\"", also a CRD's `default: ''`). Upstream's fix
        # (kubernetes#99804, kube-openapi#230, in 1.21) drops that check.
        local f
        for f in vendor/k8s.io/kube-openapi/pkg/validation/validate/type.go \
                 vendor/github.com/go-openapi/validate/type.go; do
            grep -qF 'if data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {' "$tree/$f" ||
                die "$f: zero-value check not found (patch no longer applies)"
            sed -i 's/if data == nil || reflect.DeepEqual(reflect.Zero(reflect.TypeOf(data)), reflect.ValueOf(data)) {/if data == nil {/' "$tree/$f"
        done
        echo "$SOURCE_RECIPE" >"$tree/.netlet-prepared"
    fi

    # GOPATH mode, as upstream 1.20 built (module mode fails on this tree).
    mkdir -p "$gopath/src/k8s.io"
    ln -sfn "$tree" "$gopath/src/k8s.io/kubernetes"
    export GOPATH=$gopath GO111MODULE=off GOFLAGS='' CGO_ENABLED=0
    export GOCACHE=$work/gocache HOME=${HOME:-$work}
    export GOTOOLCHAIN=local GOPROXY=off
    local src=$gopath/src/k8s.io/kubernetes

    if [[ ! -f $tree/pkg/generated/openapi/zz_generated.openapi.go ]]; then
        log "generating pkg/generated/openapi/zz_generated.openapi.go (make gen_openapi)"
        (cd "$src" && make gen_openapi >&2)
        [[ -f $tree/pkg/generated/openapi/zz_generated.openapi.go ]] || die "make gen_openapi made no zz_generated.openapi.go"
    fi

    local ldflags="" pkg
    for pkg in k8s.io/kubernetes/vendor/k8s.io/component-base/version \
               k8s.io/kubernetes/vendor/k8s.io/client-go/pkg/version; do
        ldflags+=" -X $pkg.gitVersion=$KUBE_VERSION -X $pkg.gitMajor=$KUBE_MAJOR -X $pkg.gitMinor=$KUBE_MINOR"
        ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
    done
    mkdir -p "$work/out"
    local b
    for b in "${GO_BINARIES[@]}"; do
        log "go build ./cmd/$b ($(go version | awk '{print $3}'))"
        (cd "$src" && go build -trimpath -ldflags "-s -w$ldflags" -o "$work/out/$b" "./cmd/$b")
    done
    # The pod sandbox's process, as upstream builds it (static, no libc at run time).
    log "gcc build/pause/linux/pause.c"
    gcc -Os -Wall -Werror -static -DVERSION=v3.2-netlet -o "$work/out/pause" "$tree/build/pause/linux/pause.c"
    mkdir -p "$BIN_DIR"
    for b in "${BINARIES[@]}"; do
        install -m 0755 "$work/out/$b" "$BIN_DIR/.$b.tmp"
        mv -f "$BIN_DIR/.$b.tmp" "$BIN_DIR/$b"
    done
    echo "$BUILD_RECIPE" >"$BIN_DIR/.recipe"
    binaries_cached || die "built binaries do not report $KUBE_VERSION"
    log "built in $((SECONDS - t0)) s"
    if [[ ${NETLET_KUBE_KEEP_BUILD:-0} != 1 ]]; then
        chmod -R u+w "$work" 2>/dev/null || true
        rm -rf "$work"
    fi
}

# ---------------------------------------------------------------- run ------

free_port() {
    python3 - <<'EOF' 2>/dev/null && return 0
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
EOF
    local p
    for _ in $(seq 100); do
        p=$((20000 + RANDOM % 30000))
        [[ -z $(ss -ltnH "sport = :$p" 2>/dev/null) ]] && { echo "$p"; return 0; }
    done
    die "no free port"
}

write_pids() {
    local dir=$1
    {
        [[ -f $dir/etcd.pid ]] && cat "$dir/etcd.pid"
        [[ -f $dir/apiserver.pid ]] && cat "$dir/apiserver.pid"
    } >"$dir/pids.tmp" || true
    mv -f "$dir/pids.tmp" "$dir/pids"
}

wait_etcd() {
    local dir=$1 pid=$2 port=$3 deadline=$((SECONDS + READY_TIMEOUT))
    until [[ $(curl -fsS --max-time 2 "http://127.0.0.1:$port/health" 2>/dev/null) == *'"health":"true"'* ]]; do
        pid_alive "$pid" || { tail -n 30 "$dir/logs/etcd.log" >&2; die "etcd exited"; }
        ((SECONDS < deadline)) || { tail -n 30 "$dir/logs/etcd.log" >&2; die "etcd not healthy after ${READY_TIMEOUT}s"; }
        sleep 0.1
    done
}

wait_apiserver() {
    local dir=$1 pid=$2 port=$3 token=$4 deadline=$((SECONDS + READY_TIMEOUT))
    until [[ $(curl -ksS --max-time 2 -H "Authorization: Bearer $token" \
                "https://127.0.0.1:$port/readyz" 2>/dev/null) == ok ]]; do
        pid_alive "$pid" || { tail -n 40 "$dir/logs/kube-apiserver.log" >&2; die "kube-apiserver exited"; }
        ((SECONDS < deadline)) || {
            tail -n 40 "$dir/logs/kube-apiserver.log" >&2
            die "kube-apiserver not ready after ${READY_TIMEOUT}s"
        }
        sleep 0.1
    done
}

launch_apiserver() {
    local dir=$1
    # shellcheck disable=SC1091
    source "$dir/env"
    local args=(
        --bind-address="${BIND_ADDRESS:-127.0.0.1}"
        --advertise-address=127.0.0.1
        --secure-port="$APISERVER_PORT"
        --tls-cert-file="$dir/certs/apiserver.crt"
        --tls-private-key-file="$dir/certs/apiserver.key"
        --client-ca-file="$dir/certs/ca.crt"
        --kubelet-client-certificate="$dir/certs/apiserver-kubelet-client.crt"
        --kubelet-client-key="$dir/certs/apiserver-kubelet-client.key"
        --kubelet-preferred-address-types=InternalIP,Hostname
        --etcd-servers="http://127.0.0.1:$ETCD_CLIENT_PORT"
        --token-auth-file="$dir/tokens.csv"
        --authorization-mode=Node,RBAC
        --enable-admission-plugins=NodeRestriction
        --service-account-issuer=https://kubernetes.default.svc.cluster.local
        --service-account-key-file="$dir/certs/sa.key"
        --service-account-signing-key-file="$dir/certs/sa.key"
        --service-cluster-ip-range=10.96.0.0/24
        --endpoint-reconciler-type=none
        --allow-privileged=true
        --profiling=false
        --logtostderr=true
    )
    # Without a controller-manager nothing creates the `default`
    # ServiceAccount (or the token secrets) that this admission plugin
    # demands of every Pod.
    [[ ${CONTROLLERS:-0} == 1 ]] || args+=(--disable-admission-plugins=ServiceAccount)
    "$KUBE_APISERVER" "${args[@]}" </dev/null >>"$dir/logs/kube-apiserver.log" 2>&1 &
    echo $! >"$dir/apiserver.pid"
    write_pids "$dir"
}

# A CA of this API server's own, its serving certificate (valid for
# 127.0.0.1, the in-cluster names and Service address, and
# NETLET_KUBE_SANS), and the client certificate it shows kubelets.
make_certs() {
    local dir=$1 certs=$1/certs sans ip
    [[ -f $certs/sa.key ]] || openssl genrsa -out "$certs/sa.key" 2048 2>/dev/null
    [[ -f $certs/ca.crt ]] && return 0
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=netlet-e2e-ca" \
        -keyout "$certs/ca.key" -out "$certs/ca.crt" 2>/dev/null
    sans="IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default"
    sans+=",DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
    for ip in ${NETLET_KUBE_SANS//,/ }; do sans+=",IP:$ip"; done
    sign "$certs" apiserver "/CN=kube-apiserver" "subjectAltName=$sans
extendedKeyUsage=serverAuth"
    sign "$certs" apiserver-kubelet-client "/CN=kube-apiserver-kubelet-client/O=system:masters" "extendedKeyUsage=clientAuth"
}

# sign CERTS NAME SUBJECT EXTENSIONS: NAME.key and NAME.crt signed by the CA.
sign() {
    local certs=$1 name=$2 subject=$3 ext=$4
    openssl req -newkey rsa:2048 -nodes -subj "$subject" -keyout "$certs/$name.key" -out "$certs/$name.csr" 2>/dev/null
    openssl x509 -req -in "$certs/$name.csr" -CA "$certs/ca.crt" -CAkey "$certs/ca.key" -CAcreateserial \
        -days 30 -out "$certs/$name.crt" -extfile <(printf '%s\n' "$ext") 2>/dev/null
    rm -f "$certs/$name.csr"
}

# Static tokens for NETLET_KUBE_USERS, space-separated USER or
# USER=GROUP,GROUP entries: each user's token in tokens/USER (":" as "_").
write_user_tokens() {
    local dir=$1 entry user groups token
    mkdir -p "$dir/tokens"
    for entry in ${NETLET_KUBE_USERS:-}; do
        user=${entry%%=*}
        groups=""
        [[ $entry == *=* ]] && groups=${entry#*=}
        token=$(openssl rand -hex 24)
        printf '%s,%s,%s,"%s"\n' "$token" "$user" "$user" "$groups" >>"$dir/tokens.csv"
        printf '%s\n' "$token" >"$dir/tokens/${user//:/_}"
        chmod 600 "$dir/tokens/${user//:/_}"
    done
}

cmd_start() {
    local dir
    dir=$(abs_dir "${1:-}")
    if [[ -f $dir/pids ]]; then
        local p
        while read -r p; do
            pid_ours "$p" "$dir" && die "$dir already has running processes (pid $p); stop it first"
        done <"$dir/pids"
    fi
    cmd_build >/dev/null
    ensure_runtime_deps
    # A start that fails half-way stops what it started.
    START_DIR=$dir
    trap 'if [[ -n ${START_DIR:-} ]]; then log "start failed; stopping"; cmd_stop "$START_DIR" || true; fi' EXIT
    local t0
    t0=$(date +%s.%N)
    mkdir -p "$dir/etcd" "$dir/certs" "$dir/logs"
    chmod 700 "$dir/etcd"

    local etcd_client etcd_peer api_port token
    etcd_client=$(free_port)
    etcd_peer=$(free_port)
    api_port=$(free_port)
    while [[ $etcd_peer == "$etcd_client" ]]; do etcd_peer=$(free_port); done
    while [[ $api_port == "$etcd_client" || $api_port == "$etcd_peer" ]]; do api_port=$(free_port); done
    token=$(openssl rand -hex 24)

    printf '%s,admin,admin,system:masters\n' "$token" >"$dir/tokens.csv"
    printf '%s\n' "$token" >"$dir/token"
    chmod 600 "$dir/tokens.csv" "$dir/token"
    write_user_tokens "$dir"
    make_certs "$dir"
    cat >"$dir/env" <<EOF
KUBE_APISERVER=$BIN_DIR/kube-apiserver
KUBECTL=$BIN_DIR/kubectl
ETCD_CLIENT_PORT=$etcd_client
ETCD_PEER_PORT=$etcd_peer
APISERVER_PORT=$api_port
APISERVER_URL=https://127.0.0.1:$api_port
TOKEN=$token
BIND_ADDRESS=${NETLET_KUBE_BIND_ADDRESS:-127.0.0.1}
CONTROLLERS=${NETLET_KUBE_CONTROLLERS:-0}
EOF

    etcd --name netlet \
        --data-dir "$dir/etcd" \
        --listen-client-urls "http://127.0.0.1:$etcd_client" \
        --advertise-client-urls "http://127.0.0.1:$etcd_client" \
        --listen-peer-urls "http://127.0.0.1:$etcd_peer" \
        --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
        --initial-cluster "netlet=http://127.0.0.1:$etcd_peer" \
        --initial-cluster-state new \
        --heartbeat-interval 10 --election-timeout 100 \
        --log-level warn --logger zap \
        </dev/null >>"$dir/logs/etcd.log" 2>&1 &
    echo $! >"$dir/etcd.pid"
    write_pids "$dir"
    wait_etcd "$dir" "$(cat "$dir/etcd.pid")" "$etcd_client"
    local t_etcd
    t_etcd=$(date +%s.%N)

    launch_apiserver "$dir"
    wait_apiserver "$dir" "$(cat "$dir/apiserver.pid")" "$api_port" "$token"

    cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: netlet-e2e
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority-data: $(base64 -w0 "$dir/certs/ca.crt")
users:
- name: admin
  user:
    token: $token
contexts:
- name: netlet-e2e
  context:
    cluster: netlet-e2e
    user: admin
current-context: netlet-e2e
EOF
    chmod 600 "$dir/kubeconfig"
    START_DIR=
    log "ready on https://127.0.0.1:$api_port in $(elapsed "$t0") s (etcd $(elapsed "$t0" "$t_etcd") s)"
    echo "$dir/kubeconfig"
}

cmd_stop() {
    local dir
    dir=$(abs_dir "${1:-}")
    [[ -f $dir/pids ]] || { log "no $dir/pids: nothing to stop"; return 0; }
    # Apiserver first (it is the later line), then etcd.
    local p
    for p in $(tac "$dir/pids"); do
        kill_wait "$p" "$dir"
    done
    rm -f "$dir/pids" "$dir/etcd.pid" "$dir/apiserver.pid"
}

cmd_restart_apiserver() {
    local dir
    dir=$(abs_dir "${1:-}")
    [[ -f $dir/env && -f $dir/apiserver.pid && -f $dir/etcd.pid ]] || die "$dir was not started by this script"
    pid_ours "$(cat "$dir/etcd.pid")" "$dir" || die "etcd of $dir is not running"
    kill_wait "$(cat "$dir/apiserver.pid")" "$dir"
    # shellcheck disable=SC1091
    source "$dir/env"
    : "${APISERVER_PORT:?}" "${TOKEN:?}"
    # The port was just released by our own process; wait until it is bindable.
    local _
    for _ in $(seq 100); do
        [[ -z $(ss -ltnH "sport = :$APISERVER_PORT" 2>/dev/null) ]] && break
        sleep 0.1
    done
    local t0
    t0=$(date +%s.%N)
    launch_apiserver "$dir"
    wait_apiserver "$dir" "$(cat "$dir/apiserver.pid")" "$APISERVER_PORT" "$TOKEN"
    log "apiserver restarted, ready in $(elapsed "$t0") s"
    echo "$dir/kubeconfig"
}

case ${1:-} in
    build) cmd_build ;;
    start) cmd_start "${2:-}" ;;
    stop) cmd_stop "${2:-}" ;;
    restart-apiserver) cmd_restart_apiserver "${2:-}" ;;
    *) usage ;;
esac
