#!/usr/bin/env bash
# Builds the agent image offline, without Docker or a registry: the netlet
# and netlet-cni binaries plus what image/contents lists (the same list the
# Dockerfile installs), each ELF file with the shared libraries it loads,
# packed by umoci into an OCI image archive.
#
#   image/build.sh [--binary PATH] [--cni-binary PATH] [--tag TAG] OUT.tar
#
#   --binary PATH      the netlet binary (default: target/release/netlet, built
#                      with `cargo build --release --locked` when missing)
#   --cni-binary PATH  the netlet-cni binary, which the init container copies
#                      onto the node (default: target/release/netlet-cni,
#                      built statically linked, whatever the node's C library)
#   --tag TAG          the image's reference name in the archive (default: dev)
#
# Load it into containerd under a fully qualified name, as CRI resolves them:
#   ctr -n k8s.io images import --base-name docker.io/netlet/netlet OUT.tar
# (the archive's reference name TAG becomes docker.io/netlet/netlet:TAG).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
binary=""
cni_binary=""
tag=dev
out=""
while (($#)); do
    case $1 in
        --binary) binary=$2; shift 2 ;;
        --cni-binary) cni_binary=$2; shift 2 ;;
        --tag) tag=$2; shift 2 ;;
        -h|--help) sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) [[ -z $out ]] || { echo "image/build.sh: one output file only" >&2; exit 2; }; out=$1; shift ;;
    esac
done
[[ -n $out ]] || { echo "usage: image/build.sh [--binary PATH] [--tag TAG] OUT.tar" >&2; exit 2; }
log() { printf '[image/build.sh] %s\n' "$*" >&2; }

if [[ -z $binary ]]; then
    binary=$repo/target/release/netlet
    [[ -x $binary ]] || (cd "$repo" && cargo build --release --locked --bin netlet >&2)
fi
[[ -x $binary ]] || { log "error: no netlet binary at $binary"; exit 1; }
if [[ -z $cni_binary ]]; then
    # The node runs it, not the image: linked statically, as the Dockerfile does.
    (cd "$repo" && cargo rustc --release --locked -p netlet-cni --bin netlet-cni -- -C target-feature=+crt-static >&2)
    cni_binary=$repo/target/release/netlet-cni
fi
[[ -x $cni_binary ]] || { log "error: no netlet-cni binary at $cni_binary"; exit 1; }

# The packages of the list, and umoci, installed here if missing.
mapfile -t lines < <(sed -e 's/#.*//' "$here/contents" | awk 'NF')
packages=()
for line in "${lines[@]}"; do packages+=("$(awk '{print $1}' <<<"$line")"); done
missing=()
for p in "${packages[@]}" umoci; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    log "apt-get install ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/rootfs
# Debian's merged /usr: /bin, /sbin and /lib* point into /usr.
mkdir -p "$root"/usr/{bin,sbin,lib,lib64} "$root"/{etc,tmp,run,var/lib/netlet,proc,sys,dev}
for d in bin sbin lib lib64; do ln -s "usr/$d" "$root/$d"; done
chmod 1777 "$root/tmp"

# Where PATH goes in the image (merged /usr: /lib/x -> /usr/lib/x).
image_path() {
    case $1 in
        /bin/* | /sbin/* | /lib/* | /lib64/*) echo "$root/usr$1" ;;
        *) echo "$root$1" ;;
    esac
}

# Copies PATH to the same path in the image: a symlink as a symlink (and
# what it points to), a directory with everything in it, an ELF file with
# every library the dynamic loader resolves for it (and the loader).
copy() {
    local file=$1 dest
    dest=$(image_path "$file")
    [[ -e $dest || -L $dest ]] && return 0
    mkdir -p "$(dirname "$dest")"
    if [[ -L $file ]]; then
        ln -s "$(readlink "$file")" "$dest"
        copy "$(readlink -f "$file")"
    elif [[ -d $file ]]; then
        mkdir -p "$dest"
        local f
        for f in "$file"/*; do copy "$f"; done
    else
        cp --preserve=mode "$file" "$dest"
        if head -c 4 "$file" | grep -q 'ELF'; then
            local lib
            for lib in $(ldd "$file" 2>/dev/null | awk '/=> \// {print $3} /^\t\/lib/ {print $1}'); do copy "$lib"; done
        fi
    fi
}

copy_to() {
    local file=$1 dest=$2
    mkdir -p "$(dirname "$root$dest")"
    cp -L --preserve=mode "$file" "$root$dest"
}

copy_to "$binary" /usr/local/bin/netlet
copy_to "$cni_binary" /usr/local/bin/netlet-cni
for lib in $(ldd "$binary" "$cni_binary" | awk '/=> \// {print $3} /^\t\/lib/ {print $1}' | sort -u); do copy "$lib"; done
for line in "${lines[@]}"; do
    read -r package files <<<"$line"
    [[ -n $files ]] || { log "error: image/contents: $package lists no files"; exit 1; }
    for f in $files; do
        [[ -e $f ]] || { log "error: $f (of package $package) is not on this machine"; exit 1; }
        copy "$f"
    done
done
printf 'root:x:0:0:root:/root:/usr/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"

# An OCI layout with one image, its one layer the rootfs above.
layout=$work/oci
umoci init --layout "$layout"
umoci new --image "$layout:$tag"
umoci unpack --image "$layout:$tag" "$work/bundle" >/dev/null
cp -a "$root/." "$work/bundle/rootfs/"
umoci repack --image "$layout:$tag" "$work/bundle"
umoci config --image "$layout:$tag" \
    --config.entrypoint /usr/local/bin/netlet --config.cmd run \
    --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --config.label "org.opencontainers.image.source=https://github.com/netlet/netlet" \
    --architecture amd64 --os linux
umoci gc --layout "$layout"
mkdir -p "$(dirname "$out")"
tar -C "$layout" -cf "$out.tmp" .
mv -f "$out.tmp" "$out"
log "$(du -h "$out" | cut -f1) image $tag -> $out"
