#!/usr/bin/env bash
# Builds Knit's container images with podman (Debian's podman, no daemon), FROM scratch (no base
# image is pulled), and prints their sizes:
#   ghcr.io/knit-mesh/knit-proxy:VERSION and ghcr.io/knit-mesh/knit-control:VERSION
# VERSION is the workspace version in Cargo.toml, the tag `knit install` and the injector default to.
#   scripts/images.sh [--check] [--no-build] [--save DIR]
#     --check     then prove each image self-contained (needs root): mount its root filesystem
#                 (podman create + podman mount, nothing started), run its binary and the proxy's
#                 iptables chrooted there (`knit-proxy init` for real, in a throwaway network
#                 namespace), check every ELF file's libraries resolve inside the image, that there
#                 is no shell, the entrypoint, the labels and the image's user (2102 for the proxy,
#                 2103 for knit-control); then try `podman run` (reported, not required).
#     --no-build  check or save the images already built instead of building them
#     --save DIR  also write each image as an OCI archive, DIR/<name>-VERSION.tar
# The release binaries are built first (cargo build --release --locked: nothing to do when they
# are current) unless --no-build. Contexts are staged in target/images/<name>/ (see
# Containerfile for what goes in). Storage: the default (overlay) when it works; otherwise vfs in
# a store of its own, /var/lib/containers/storage-vfs, since podman refuses a second driver in the
# same store (KNIT_IMAGE_STORAGE=vfs|overlay forces one). Debian packages: podman, iptables,
# binutils (strip), util-linux (unshare).
set -euo pipefail
cd "$(dirname "$0")/.."

CHECK=0 BUILD=1 SAVE=
while (($#)); do
    case $1 in
        --check) CHECK=1 ;;
        --no-build) BUILD=0 ;;
        --save) SAVE=${2:?--save needs a directory}; shift ;;
        -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "images: unknown argument $1 (see --help)" >&2; exit 64 ;;
    esac
    shift
done

die() {
    echo "images: $*" >&2
    exit 1
}

IMAGES=(knit-proxy knit-control)
REGISTRY=ghcr.io/knit-mesh
VERSION=$(awk '/^\[workspace.package\]/{p=1; next} /^\[/{p=0} p && $1 == "version" {gsub(/"/, "", $3); print $3; exit}' Cargo.toml)
[ -n "$VERSION" ] || die "no version in Cargo.toml's [workspace.package]"
BIN=target/release
STAGE=target/images
declare -A UID_OF=([knit-proxy]=2102 [knit-control]=2103)

command -v podman >/dev/null || die "podman is missing (apt-get install podman)"

# --- storage: overlay if it works here, else vfs in a store of its own ---------------------------
VFS_ROOT=/var/lib/containers/storage-vfs VFS_RUNROOT=/run/containers/storage-vfs
if [ "$(id -u)" != 0 ]; then
    VFS_ROOT=${XDG_DATA_HOME:-$HOME/.local/share}/containers/storage-vfs
    VFS_RUNROOT=${XDG_RUNTIME_DIR:-/tmp/knit-$(id -u)}/containers/storage-vfs
fi
STORE=()
use_vfs() {
    STORE=(--storage-driver vfs --root "$VFS_ROOT" --runroot "$VFS_RUNROOT")
    echo "==> storage: vfs ($1); use the images with: podman ${STORE[*]} ..."
}
case ${KNIT_IMAGE_STORAGE:-} in
    vfs) use_vfs "KNIT_IMAGE_STORAGE=vfs" ;;
    overlay) STORE=(--storage-driver overlay) ;;
    "")
        # podman tests an overlay mount when it opens the store: a kernel or a file system without
        # overlay (overlay on overlay in a container, for one) fails here.
        if info=$(podman info --format '{{.Store.GraphDriverName}}' 2>&1); then
            echo "==> storage: $info (podman's default store)"
        else
            use_vfs "the default store failed: $(tail -n 1 <<<"$info")"
        fi
        ;;
    *) die "KNIT_IMAGE_STORAGE must be vfs or overlay" ;;
esac
pod() { podman "${STORE[@]}" "$@"; }

# --- release binaries -----------------------------------------------------------------------------
# Always through cargo (a no-op when they are current), so an image never holds a stale binary.
if ((BUILD)); then
    echo "==> release binaries (cargo build --release --locked)"
    cargo build --release --locked -p knit-proxy -p knit-control
fi
for b in "${IMAGES[@]}"; do
    [ "$("$BIN/$b" --version 2>/dev/null)" = "$b $VERSION" ] || die "$BIN/$b is not version $VERSION: build it (without --no-build)"
done

# --- staging ----------------------------------------------------------------------------------------
# Copies FILE to ROOT at the same path, following symlinks (the loader's /lib64 link, Debian's
# /lib -> usr/lib), so the image holds plain files at exactly the paths the loader looks for.
put() {
    local root=$1 file=$2
    mkdir -p "$root$(dirname "$file")"
    cp -L --preserve=mode "$file" "$root$file"
}

# Copies the libraries `ldd` lists for ELF (and the loader) into ROOT.
put_libs() {
    local root=$1 elf=$2 out lib
    out=$(ldd "$elf") || die "ldd $elf failed: is it a dynamic executable for this machine?"
    ! grep -q 'not found' <<<"$out" || die "ldd $elf: $(grep 'not found' <<<"$out")"
    for lib in $(awk '{for (i = 1; i <= NF; i++) if ($i ~ /^\//) print $i}' <<<"$out"); do
        put "$root" "$lib"
    done
}

stage() {
    local name=$1 uid=${UID_OF[$1]} root=$STAGE/$1
    rm -rf "$root"
    mkdir -p "$root/etc"
    strip -o "$root/$name" "$BIN/$name"
    put_libs "$root" "$BIN/$name"
    printf 'root:x:0:0:root:/root:/sbin/nologin\n%s:x:%s:%s:%s:/nonexistent:/sbin/nologin\n' "$name" "$uid" "$uid" "$name" >"$root/etc/passwd"
    printf 'root:x:0:\n%s:x:%s:\n' "$name" "$uid" >"$root/etc/group"
    printf 'hosts: files dns\n' >"$root/etc/nsswitch.conf"
    if [ "$name" = knit-proxy ]; then
        local nft legacy sbin xtdir m l
        nft=$(command -v xtables-nft-multi || true) legacy=$(command -v xtables-legacy-multi || true)
        [ -n "$nft" ] && [ -n "$legacy" ] || die "iptables is missing (apt-get install iptables): knit-proxy init needs it in the image"
        for m in "$nft" "$legacy"; do
            put "$root" "$(readlink -f "$m")"
            put_libs "$root" "$m"
        done
        # The multi-call binaries act by the name they are run as (Debian's default: nft).
        sbin=$(dirname "$(readlink -f "$nft")")
        for l in iptables ip6tables iptables-nft ip6tables-nft; do ln -s "$(basename "$(readlink -f "$nft")")" "$root$sbin/$l"; done
        for l in iptables-legacy ip6tables-legacy; do ln -s "$(basename "$(readlink -f "$legacy")")" "$root$sbin/$l"; done
        # The extensions libxtables loads from its compiled-in directory: what init's rules use
        # (found with LD_DEBUG=files; --check runs init from the image, so a missing one fails it).
        # (grep reads all of strings' output: with -m1, strings could die of SIGPIPE under pipefail.)
        xtdir=$(strings "$(ldd "$nft" | awk '$1 ~ /^libxtables/ {print $3}')" | grep -x '/.*/xtables') ||
            die "no xtables directory in libxtables"
        xtdir=${xtdir%%$'\n'*}
        for m in standard comment multiport addrtype owner REDIRECT; do
            put "$root" "$xtdir/libxt_$m.so"
            put_libs "$root" "$xtdir/libxt_$m.so"
        done
        # The mount point of the emptyDir that holds iptables' lock under a read-only root.
        mkdir -p "$root/run"
    fi
}

tag_of() { echo "$REGISTRY/$1:$VERSION"; }

# Builds every image into the current store; false if one fails (its log is printed).
build_all() {
    local name build old
    for name in "${IMAGES[@]}"; do
        echo "==> building $(tag_of "$name")"
        old=$(pod image inspect --format '{{.Id}}' "$(tag_of "$name")" 2>/dev/null || true)
        # --layers=false: no cached image per instruction, only the image itself.
        build=(build --layers=false --file Containerfile --target "$name" --tag "$(tag_of "$name")" --timestamp "$EPOCH"
            --build-arg "VERSION=$VERSION" --build-arg "REVISION=$REVISION"
            --build-arg "SOURCE=${KNIT_IMAGE_SOURCE:-https://github.com/knit-mesh/knit}" "$STAGE")
        pod "${build[@]}" >"$STAGE/$name.build.log" 2>&1 || { cat "$STAGE/$name.build.log" >&2; return 1; }
        # The image this tag named before, now untagged: removed (kept if something else uses it).
        if [ -n "$old" ] && [ "$old" != "$(pod image inspect --format '{{.Id}}' "$(tag_of "$name")")" ]; then
            pod rmi "$old" >/dev/null 2>&1 || true
        fi
    done
}

if ((BUILD)); then
    for b in "${IMAGES[@]}"; do [ -x "$BIN/$b" ] || die "$BIN/$b is missing"; done
    REVISION=$(git rev-parse HEAD 2>/dev/null || echo unknown)
    [ "$REVISION" = unknown ] || git diff --quiet HEAD 2>/dev/null || REVISION+=-dirty
    # Reproducible: the same staged files give the same image ID (no build-time timestamps).
    EPOCH=$(git log -1 --format=%ct 2>/dev/null || echo 0)
    rm -rf "$STAGE"
    mkdir -p "$STAGE"
    for name in "${IMAGES[@]}"; do
        echo "==> staging $STAGE/$name"
        stage "$name"
    done
    if ! build_all; then
        # Overlay can pass podman's test and still fail on a real layer: all again, on vfs.
        ((${#STORE[@]} == 0)) && [ -z "${KNIT_IMAGE_STORAGE:-}" ] || die "building the images failed"
        use_vfs "building on the default store failed"
        build_all || die "building the images failed"
    fi
fi

echo "==> images"
for name in "${IMAGES[@]}"; do
    pod image exists "$(tag_of "$name")" || die "$(tag_of "$name") is not built"
    bytes=$(pod image inspect --format '{{.Size}}' "$(tag_of "$name")")
    printf '%-45s %6.1f MB (%s bytes; binary %s bytes stripped)\n' "$(tag_of "$name")" "$(awk -v b="$bytes" 'BEGIN {print b / 1e6}')" \
        "$bytes" "$(stat -c %s "$STAGE/$name/$name" 2>/dev/null || echo '?')"
done

if [ -n "$SAVE" ]; then
    mkdir -p "$SAVE"
    for name in "${IMAGES[@]}"; do
        rm -f "$SAVE/$name-$VERSION.tar"
        pod save --quiet --format oci-archive --output "$SAVE/$name-$VERSION.tar" "$(tag_of "$name")"
        echo "==> saved $SAVE/$name-$VERSION.tar ($(stat -c %s "$SAVE/$name-$VERSION.tar") bytes)"
    done
fi

((CHECK)) || exit 0

# --- self-containment -------------------------------------------------------------------------------
# Each image's root filesystem is mounted as a container's (podman create + podman mount: the
# image's layer under an empty writable one, nothing started), and its programs run chrooted
# there with only the image's environment (its ENV), as a runtime would run them. The runtime's
# mounts are stood in for in a private mount namespace: /dev/null (Rust's Command opens it for
# `init`'s iptables children) and a tmpfs on /run (the injector's emptyDir for iptables' lock).
[ "$(id -u)" = 0 ] || die "--check needs root (mounts, chroot, network namespaces)"
command -v unshare >/dev/null && command -v chroot >/dev/null || die "--check needs unshare and chroot (util-linux, coreutils)"
failures=0
check() {
    local what=$1 out
    shift
    if out=$("$@" 2>&1); then
        echo "ok   $what"
    else
        echo "FAIL $what"
        sed 's/^/       /' <<<"$out"
        failures=$((failures + 1))
    fi
}

# In the image's root with only the image's environment, as USER (uid:gid), run ARGS.
in_image() {
    local root=$1 user=$2
    shift 2
    unshare --mount sh -c '
        root=$1; shift
        mount --bind /dev/null "$root/dev/null"
        mount -t tmpfs -o size=1m tmpfs "$root/run"
        exec "$@"
    ' sh "$root" env -i "${IMAGE_ENV[@]}" "$(command -v chroot)" --userspec="$user" "$root" "$@"
}

# ARGS run in the image and print EXPECT.
prints() {
    local root=$1 user=$2 expect=$3 out
    shift 3
    out=$(in_image "$root" "$user" "$@") || { echo "$out"; return 1; }
    grep -qF -- "$expect" <<<"$out" || { echo "output: $out"; return 1; }
}

# Every ELF file in the image loads with only the image's libraries: the image's own loader lists
# each one's dependencies from inside the chroot ("not found" if one is missing).
libs_resolve() {
    local root=$1 loader f out status=0
    loader=
    for f in "$root"/lib64/ld-linux-* "$root"/lib/ld-linux*; do
        [ -f "$f" ] && loader=${f#"$root"/} && break
    done
    [ -n "$loader" ] || { echo "no dynamic loader in the image"; return 1; }
    while IFS= read -r f; do
        [ "$f" = "$loader" ] && continue
        [ "$(head -c 4 "$root/$f" | od -An -c | tr -d ' \n')" = '177ELF' ] || continue
        echo "/$f"
        out=$(chroot "$root" "/$loader" --list "/$f" 2>&1) || { echo "  $out"; status=1; continue; }
        ! grep -q 'not found' <<<"$out" || { echo "  $out"; status=1; }
    done < <(cd "$root" && find . -type f | sed 's|^\./||' | sort)
    return $status
}

no_shell() {
    local found
    found=$(cd "$1" && find . \( -name sh -o -name bash -o -name dash -o -name ash -o -name busybox \) | sed 's|^\.||')
    [ ! -e "$1/bin/sh" ] && [ -z "$found" ] || { echo "found: ${found:-/bin/sh}"; return 1; }
}

image_is() {
    local got
    got=$(pod image inspect --format "$2" "$1")
    [ "$got" = "$3" ] || { echo "$2: $got, not $3"; return 1; }
}

labels() {
    local tag=$1 k v status=0
    for k in title version licenses source revision description; do
        v=$(pod image inspect --format "{{index .Labels \"org.opencontainers.image.$k\"}}" "$tag")
        echo "org.opencontainers.image.$k=$v"
        case $k in
            title) [ "$v" = "$2" ] ;;
            version) [ "$v" = "$3" ] ;;
            licenses) [ "$v" = Apache-2.0 ] ;;
            *) [ -n "$v" ] ;;
        esac || status=1
    done
    return $status
}

# `knit-proxy init` for real, from the image and as root (the init container's securityContext),
# in a new network namespace: it installs its chains with IPTABLES, the image's iptables lists them
# (the proxy's UID exempt, the rest redirected to 4140), and `init --remove` deletes them.
proxy_init() {
    local root=$1 ipt=$2 subnet=169.254.0.0/16
    [ "${ipt#ip6}" = "$ipt" ] || subnet=fe80::/10
    unshare --net --mount sh -c '
        set -e
        root=$1 ipt=$2 subnet=$3
        shift 3
        mount --bind /dev/null "$root/dev/null"
        mount -t tmpfs -o size=1m tmpfs "$root/run"
        "$@" /knit-proxy init --iptables "$ipt" --proxy-uid 2102 --skip-outbound-ports 5432 --skip-subnets "$subnet"
        rules=$("$@" "$ipt" -t nat -S KNIT_PROXY_OUTPUT)
        echo "$rules"
        echo "$rules" | grep -q -- "--uid-owner 2102 .*-j RETURN"
        echo "$rules" | grep -q -- "-j REDIRECT --to-ports 4140"
        "$@" /knit-proxy init --iptables "$ipt" --remove
        ! "$@" "$ipt" -t nat -S KNIT_PROXY_OUTPUT 2>/dev/null
    ' sh "$root" "$ipt" "$subnet" env -i "${IMAGE_ENV[@]}" "$(command -v chroot)" "$root"
}

CONTAINERS=()
cleanup() {
    local c
    for c in "${CONTAINERS[@]}"; do pod rm --force "$c" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT

echo "==> self-containment"
for name in "${IMAGES[@]}"; do
    tag=$(tag_of "$name") uid=${UID_OF[$name]}
    cid=$(pod create --network none --name "knit-images-check-$name-$$" "$tag") || die "podman create $tag failed"
    CONTAINERS+=("$cid")
    root=$(pod mount "$cid") || die "podman mount failed for a container of $tag"
    mapfile -t IMAGE_ENV < <(pod image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$tag" | sed '/^$/d')
    echo "--- $tag, root filesystem at $root"
    # What the image holds, before anything is written to the container's layer.
    check "$name: no shell in the image" no_shell "$root"
    check "$name: every ELF file's libraries resolve inside the image" libs_resolve "$root"
    check "$name: the image's user is $uid" image_is "$tag" '{{.Config.User}}' "$uid"
    check "$name: entrypoint /$name" image_is "$tag" '{{json .Config.Entrypoint}}' "[\"/$name\"]"
    check "$name: OCI labels title, version, licenses; source, revision, description set" labels "$tag" "$name" "$VERSION"
    # Mount points for the runtime's mounts, in the container's writable layer.
    mkdir -p "$root/dev" "$root/run"
    touch "$root/dev/null"
    check "$name: /$name --version runs chrooted in the image as $uid" prints "$root" "$uid:$uid" "$name $VERSION" "/$name" --version
    if [ "$name" = knit-proxy ]; then
        check "knit-proxy: /knit-proxy --help" prints "$root" "$uid:$uid" "knit-proxy init --help" /knit-proxy --help
        check "knit-proxy: /knit-proxy init --dry-run" prints "$root" "$uid:$uid" "-j REDIRECT --to-ports 4143" /knit-proxy init --dry-run
        for ipt in iptables iptables-legacy ip6tables; do
            check "knit-proxy: init --iptables $ipt installs, lists and removes its chains (root, new netns)" proxy_init "$root" "$ipt"
        done
    else
        check "knit-control: /knit-control --help" prints "$root" "$uid:$uid" "Usage: knit-control" /knit-control --help
    fi
done

# podman run, where this machine allows containers: reported, not required (the chroot checks
# above are the proof).
echo "==> podman run (informational)"
for name in "${IMAGES[@]}"; do
    tag=$(tag_of "$name")
    if out=$(pod run --rm --network none --read-only "$tag" --version 2>&1); then
        echo "ok   podman run --rm --network none --read-only $tag --version: $out"
        if [ "$name" = knit-proxy ]; then
            run=(run --rm --network none --read-only --tmpfs /run --user 0 --cap-drop ALL --cap-add NET_ADMIN,NET_RAW "$tag" init)
            if out=$(pod "${run[@]}" 2>&1); then
                echo "ok   podman ${run[*]}: $(tail -n 1 <<<"$out")"
            else
                echo "note podman ${run[*]} failed: $out"
            fi
        fi
    else
        echo "note podman run is not available here: $out"
    fi
done

if ((failures)); then
    echo "==> $failures image check(s) failed"
    exit 1
fi
echo "==> all image checks passed"
