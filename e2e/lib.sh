# Helpers shared by the e2e scripts (sourced): logging, root, apt, and
# processes we started (by PID, checked against a directory of ours).
# shellcheck shell=bash

log() { printf '[%s] %s\n' "${LOG_TAG:-e2e}" "$*" >&2; }
die() { log "error: $*"; exit 1; }

as_root() {
    if [[ $(id -u) -eq 0 ]]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        die "need root for: $*"
    fi
}

apt_install() {
    log "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "$@" >&2
}

# Seconds since $1 (or until $2), one decimal.
elapsed() {
    awk -v a="$1" -v b="${2:-$(date +%s.%N)}" 'BEGIN { printf "%.1f", b - a }'
}

abs_dir() {
    [[ -n ${1:-} ]] || usage
    mkdir -p "$1"
    (cd "$1" && pwd -P)
}

# Alive and not a zombie.
pid_alive() {
    local pid=$1 state
    state=$(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null) || return 1
    state=${state%% *}
    [[ -n $state && $state != Z && $state != X ]]
}

# The PID is one of ours: its command line names DIR (guards against PID reuse).
pid_ours() {
    local pid=$1 dir=$2
    local cmdline
    pid_alive "$pid" || return 1
    cmdline=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ $cmdline == *"$dir/"* ]]
}

# Waits up to TENTHS tenths of a second for PID to exit; fails if it did not.
wait_exit() {
    local pid=$1 tenths=$2 _
    for _ in $(seq "$tenths"); do
        pid_alive "$pid" || return 0
        sleep 0.1
    done
    ! pid_alive "$pid"
}

kill_wait() {
    local pid=$1 dir=$2
    pid_ours "$pid" "$dir" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    wait_exit "$pid" 150 && return 0
    log "pid $pid ignored SIGTERM for 15 s; SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait_exit "$pid" 100 || die "pid $pid would not die"
}
