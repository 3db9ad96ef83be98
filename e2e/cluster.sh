#!/usr/bin/env bash
# The Kubernetes-mode scenarios of tests/kubernetes.rs on a real cluster
# (kind, or any cluster your kubeconfig reaches) where netlet is installed.
#
#   e2e/cluster.sh [--install IMAGE] [--no-traffic] [--keep]
#
#   --install IMAGE  apply crds/ and manifests/ with the agent image IMAGE
#                    first (kind: `kind load docker-image IMAGE` before), and
#                    wait for the DaemonSet; default: netlet already runs
#   --no-traffic     skip the checks that need a helper pod on the nodes
#                    (ping between sandboxes); status and API checks only
#   --keep           leave the test objects in place
#
# Uses kubectl's current context (KUBECONFIG / --kubeconfig via KUBECTL,
# e.g. KUBECTL="kubectl --kubeconfig k.yaml"). Everything it creates is
# named netlet-e2e-* and removed at the end. Exit 0 means every scenario
# passed. Scenarios:
#   1. bridge: attachments on a node become Ready with unique addresses,
#      carry the teardown finalizer, and reach each other;
#   2. bad input: an attachment on a missing network is Ready=False with
#      reason NetworkNotFound and a Warning Event; the others are untouched;
#   3. deletion: a Network with attachments is DeletionPending; `kubectl
#      delete` of an attachment returns only after its node tore it down;
#   4. overlay (2+ schedulable nodes): attachments on different nodes reach
#      each other over VXLAN; no address is held twice; the blocks in
#      status.addressBlocks are distinct.
set -euo pipefail

KUBECTL=${KUBECTL:-kubectl}
NS=netlet-e2e
IMAGE=
TRAFFIC=1
KEEP=0
while (($#)); do
    case $1 in
        --install) IMAGE=${2:?--install needs an image}; shift 2 ;;
        --no-traffic) TRAFFIC=0; shift ;;
        --keep) KEEP=1; shift ;;
        *) sed -n '2,25p' "$0" >&2; exit 2 ;;
    esac
done
ROOT=$(cd "$(dirname "$0")/.." && pwd)
k() { $KUBECTL "$@"; }
log() { printf '[cluster.sh] %s\n' "$*" >&2; }
fail() { log "FAIL: $*"; exit 1; }
pass() { log "ok: $*"; }

# Poll until "$@" succeeds (timeout $WAIT seconds).
WAIT=${WAIT:-90}
wait_for() {
    local what=$1 deadline=$((SECONDS + WAIT))
    shift
    until "$@" >/dev/null 2>&1; do
        ((SECONDS < deadline)) || fail "timed out waiting for $what"
        sleep 1
    done
}
ready() { [[ $(k get "$1" "$2" ${3:+-n "$3"} -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}') == "${4:-True}" ]]; }
reason_is() { [[ $(k get "$1" "$2" ${3:+-n "$3"} -o jsonpath='{.status.conditions[?(@.type=="Ready")].reason}') == "$4" ]]; }
field() { k get attachment "$1" -n "$NS" -o jsonpath="{$2}"; }

cleanup() {
    ((KEEP)) && { log "--keep: leaving namespace $NS and networks netlet-e2e-*"; return; }
    k delete pod -n "$NS" --all --wait=false >/dev/null 2>&1 || true
    k delete portmappings,attachments -n "$NS" --all --timeout=60s >/dev/null 2>&1 || true
    k delete network netlet-e2e-bridge netlet-e2e-overlay --ignore-not-found --timeout=60s >/dev/null 2>&1 || true
    k delete namespace "$NS" --wait=false >/dev/null 2>&1 || true
}
trap cleanup EXIT

if [[ -n $IMAGE ]]; then
    log "installing netlet with image $IMAGE"
    k apply -f "$ROOT/crds/netlet.io.yaml"
    k apply -f "$ROOT/manifests/namespace.yaml" -f "$ROOT/manifests/rbac.yaml"
    sed "s#image: ghcr.io/netlet/netlet:.*#image: $IMAGE#" "$ROOT/manifests/daemonset.yaml" | k apply -f -
    k -n netlet-system rollout status daemonset/netlet --timeout=180s
fi
k get crd attachments.netlet.io >/dev/null || fail "netlet's CRDs are not installed (use --install IMAGE)"

mapfile -t NODES < <(k get nodes -o jsonpath='{range .items[*]}{.metadata.name}{"\n"}{end}' | head -3)
((${#NODES[@]})) || fail "no nodes"
N1=${NODES[0]}
log "nodes: ${NODES[*]}"
k create namespace "$NS" --dry-run=client -o yaml | k apply -f - >/dev/null

attachment() { # name network node
    printf -- '---\napiVersion: netlet.io/v1alpha1\nkind: Attachment\nmetadata: {name: %s, namespace: %s}\nspec: {network: %s, nodeName: %s, sandbox: {netns: %s}}\n' \
        "$1" "$NS" "$2" "$3" "$1"
}

# A privileged helper pod in the node's network namespace with /run/netns,
# to look into sandboxes (the agent image has ip and ping).
in_node() { # node command...
    local node=$1 pod
    shift
    pod=netlet-e2e-probe-$(printf '%s' "$node" | tr -c 'a-z0-9-' '-' | cut -c1-40)
    if ! k get pod -n "$NS" "$pod" >/dev/null 2>&1; then
        local image
        image=$(k get daemonset -n netlet-system netlet -o jsonpath='{.spec.template.spec.containers[0].image}')
        k apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Pod
metadata: {name: $pod, namespace: $NS}
spec:
  nodeName: $node
  hostNetwork: true
  tolerations: [{operator: Exists}]
  containers:
  - name: probe
    image: $image
    command: [sleep, "3600"]
    securityContext: {privileged: true}
    volumeMounts: [{name: netns, mountPath: /run/netns, mountPropagation: HostToContainer}]
  volumes: [{name: netns, hostPath: {path: /run/netns}}]
EOF
        k wait --for=condition=Ready -n "$NS" "pod/$pod" --timeout=120s >/dev/null
    fi
    k exec -n "$NS" "$pod" -- "$@"
}

# ---- 1. bridge ----
{
    printf -- '---\napiVersion: netlet.io/v1alpha1\nkind: Network\nmetadata: {name: netlet-e2e-bridge}\nspec: {ipam: {config: [{subnet: 172.29.7.0/24}]}, allowedSandboxes: [netns]}\n'
    attachment e2e-a1 netlet-e2e-bridge "$N1"
    attachment e2e-a2 netlet-e2e-bridge "$N1"
    attachment e2e-lost netlet-e2e-missing "$N1"
} | k apply -f - >/dev/null
for a in e2e-a1 e2e-a2; do wait_for "$a Ready" ready attachment "$a" "$NS"; done
ip1=$(field e2e-a1 .status.ipv4Address)
ip2=$(field e2e-a2 .status.ipv4Address)
[[ -n $ip1 && $ip1 != "$ip2" ]] || fail "addresses: '$ip1' '$ip2'"
[[ $(k get attachment e2e-a1 -n "$NS" -o jsonpath='{.metadata.finalizers}') == *netlet.io/teardown* ]] || fail "no teardown finalizer"
pass "bridge: e2e-a1 $ip1, e2e-a2 $ip2, finalizers set"
if ((TRAFFIC)); then
    in_node "$N1" ip netns exec e2e-a1 ping -c1 -W2 "${ip2%/*}" >/dev/null || fail "e2e-a1 cannot ping e2e-a2"
    pass "bridge: e2e-a1 pings e2e-a2"
fi

# ---- 2. bad input ----
wait_for "e2e-lost NetworkNotFound" reason_is attachment e2e-lost "$NS" NetworkNotFound
wait_for "an Event for e2e-lost" bash -c "$KUBECTL get events -n $NS -o jsonpath='{.items[*].reason}' | grep -q NetworkNotFound"
ready attachment e2e-a1 "$NS" || fail "a bad object disturbed a good one"
pass "bad input: NetworkNotFound in status and as an Event"

# ---- 3. deletion ----
k delete network netlet-e2e-bridge --wait=false >/dev/null
wait_for "DeletionPending" reason_is network netlet-e2e-bridge "" DeletionPending
k delete attachment e2e-a2 -n "$NS" --timeout=60s >/dev/null
if ((TRAFFIC)); then
    ! in_node "$N1" ip netns pids e2e-a2 >/dev/null 2>&1 || fail "e2e-a2's namespace outlived its object"
fi
k delete attachment e2e-a1 e2e-lost -n "$NS" --timeout=60s >/dev/null
wait_for "the network to go" bash -c "! $KUBECTL get network netlet-e2e-bridge"
pass "deletion: DeletionPending, then torn down through finalizers"

# ---- 4. overlay ----
if ((${#NODES[@]} < 2)); then
    log "skip: overlay needs two nodes (have ${#NODES[@]})"
else
    {
        printf -- '---\napiVersion: netlet.io/v1alpha1\nkind: Network\nmetadata: {name: netlet-e2e-overlay}\nspec:\n  driver: overlay\n  overlay: {vni: 7707, blockPrefixLength: 28}\n  ipam: {config: [{subnet: 10.207.0.0/24}]}\n  allowedSandboxes: [netns]\n'
        for i in "${!NODES[@]}"; do
            for j in 1 2 3; do attachment "e2e-o$i-$j" netlet-e2e-overlay "${NODES[$i]}"; done
        done
    } | k apply -f - >/dev/null
    for i in "${!NODES[@]}"; do for j in 1 2 3; do wait_for "e2e-o$i-$j Ready" ready attachment "e2e-o$i-$j" "$NS"; done; done
    dups=$(k get attachments -n "$NS" -o jsonpath='{range .items[*]}{.status.ipv4Address}{"\n"}{end}' | grep . | sort | uniq -d)
    [[ -z $dups ]] || fail "overlay: addresses held twice: $dups"
    blocks=$(k get network netlet-e2e-overlay -o jsonpath='{range .status.addressBlocks[*]}{.cidr}{"\n"}{end}')
    [[ -z $(sort <<<"$blocks" | uniq -d) ]] || fail "overlay: a block claimed twice: $blocks"
    pass "overlay: $((${#NODES[@]} * 3)) addresses, no duplicates; blocks $(tr '\n' ' ' <<<"$blocks")"
    if ((TRAFFIC)); then
        far=$(field e2e-o1-1 .status.ipv4Address)
        in_node "${NODES[0]}" ip netns exec e2e-o0-1 ping -c1 -W2 "${far%/*}" >/dev/null || fail "overlay: no reachability across nodes"
        pass "overlay: ${NODES[0]} -> ${NODES[1]} over VXLAN"
    fi
fi
log "all scenarios passed"
