#!/usr/bin/env bash
# Build moat's guest kernel: tinyconfig of Debian's linux-source-6.1 plus our
# fragments, checked, built reproducibly, and cached by the hash of its inputs.
#
#   guest-kernel-config/build.sh ARCH OUTDIR
#
# ARCH is x86_64 (gives OUTDIR/vmlinux, an ELF with a PVH entry point) or arm64
# (gives OUTDIR/Image, cross-compiled with aarch64-linux-gnu-gcc). OUTDIR also gets
# the final `config` and `build-info` (build wall time, size, inputs hash).
#
# Cache: ${MOAT_CACHE:-~/.cache/moat}/kernel/<arch>-<hash>/, where the hash covers
# the fragments, this script, the linux-source-6.1 package version and the
# compiler version. A cached build is copied out in well under a second.
#
# Environment: LINUX_SOURCE_TARBALL (default /usr/src/linux-source-6.1.tar.xz),
# MOAT_CACHE, MOAT_KERNEL_JOBS (default: number of CPUs).
set -euo pipefail

usage() { echo "usage: $0 x86_64|arm64 OUTDIR" >&2; exit 2; }
[ $# -eq 2 ] || usage
arch=$1
outdir=$2
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tarball=${LINUX_SOURCE_TARBALL:-/usr/src/linux-source-6.1.tar.xz}
cache_root=${MOAT_CACHE:-$HOME/.cache/moat}/kernel
jobs=${MOAT_KERNEL_JOBS:-$(nproc)}

case $arch in
x86_64)
    karch=x86_64; cross=""; target=vmlinux; image=vmlinux; cc=gcc ;;
arm64)
    karch=arm64; cross=aarch64-linux-gnu-; target=Image; image=arch/arm64/boot/Image
    cc=aarch64-linux-gnu-gcc ;;
*) usage ;;
esac
fragments=("$here/common.config" "$here/$arch.config")

die() { echo "guest kernel ($arch): $*" >&2; exit 1; }

[ -r "$tarball" ] || die "kernel source $tarball not found (install linux-source-6.1: make deps)"
command -v "$cc" >/dev/null || die "compiler $cc not found (make deps)"
pkg_version=$(dpkg-query -W -f='${Version}' linux-source-6.1 2>/dev/null) ||
    die "cannot read the version of package linux-source-6.1"
cc_version=$("$cc" --version | head -n1)

hash=$(
    {
        for f in "${fragments[@]}" "$here/build.sh"; do
            printf '%s\n' "== $(basename "$f")"
            cat "$f"
        done
        printf 'linux-source-6.1 %s\n%s\n' "$pkg_version" "$cc_version"
    } | sha256sum | cut -c1-16
)
cache=$cache_root/$arch-$hash
out_name=$(basename "$image")

copy_out() {
    mkdir -p "$outdir"
    for f in "$out_name" config build-info; do
        # Copy only when different so make sees a stable mtime on cache hits.
        if ! cmp -s "$cache/$f" "$outdir/$f"; then
            cp "$cache/$f" "$outdir/$f.tmp" && mv "$outdir/$f.tmp" "$outdir/$f"
        fi
    done
    echo "guest kernel ($arch): $outdir/$out_name (cache $cache)"
}

mkdir -p "$cache_root"
exec 9>"$cache_root/.lock-$arch-$hash"
flock 9
if [ -f "$cache/$out_name" ]; then
    copy_out
    exit 0
fi

# Print every fragment line that .config does not honour. `=n` and "is not set"
# are satisfied by an absent symbol too (it cannot be on then).
verify_config() {
    awk '
        FNR == NR {
            if (match($0, /^CONFIG_[A-Za-z0-9_]+=/)) {
                sym = substr($0, 1, RLENGTH - 1); val = substr($0, RLENGTH + 1)
                if (val == "n") val = "not set"
                want[sym] = val
            } else if (match($0, /^# CONFIG_[A-Za-z0-9_]+ is not set$/)) {
                sym = $2; want[sym] = "not set"
            }
            next
        }
        match($0, /^CONFIG_[A-Za-z0-9_]+=/) {
            got[substr($0, 1, RLENGTH - 1)] = substr($0, RLENGTH + 1)
        }
        END {
            for (sym in want) {
                g = (sym in got) ? got[sym] : "not set"
                if (g != want[sym]) printf "  %s: asked %s, got %s\n", sym, want[sym], g
            }
        }
    ' <(cat "${fragments[@]}") "$1" | sort
}

work=$(mktemp -d "$cache_root/build-$arch.XXXXXX")
trap 'rm -rf "$work"' EXIT
start=$(date +%s)
echo "guest kernel ($arch): building linux-source-6.1 $pkg_version in $work (load: $(cut -d' ' -f1-3 /proc/loadavg))"
tar -xJf "$tarball" -C "$work"
src=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'linux-source-*' | head -n1)
[ -n "$src" ] || die "no linux-source-* directory in $tarball"
obj=$work/obj
mkdir -p "$obj"

export KBUILD_BUILD_TIMESTAMP="1970-01-01 00:00:00 UTC"
export KBUILD_BUILD_USER=moat
export KBUILD_BUILD_HOST=moat
export KBUILD_BUILD_VERSION=1
kmake() { make -s -C "$src" O="$obj" ARCH="$karch" CROSS_COMPILE="$cross" "$@"; }

kmake tinyconfig >/dev/null
cat "${fragments[@]}" >>"$obj/.config"
kmake olddefconfig >/dev/null 2>"$work/olddefconfig.log" || {
    cat "$work/olddefconfig.log" >&2
    die "make olddefconfig failed"
}
dropped=$(verify_config "$obj/.config")
if [ -n "$dropped" ]; then
    echo "guest kernel ($arch): these fragment options did not survive olddefconfig" >&2
    echo "(a dependency is off, or the symbol does not exist on $arch):" >&2
    echo "$dropped" >&2
    exit 1
fi

kmake -j"$jobs" "$target" >"$work/build.log" 2>&1 || {
    tail -n 50 "$work/build.log" >&2
    die "kernel build failed (log above)"
}
end=$(date +%s)

stage=$work/out
mkdir -p "$stage"
cp "$obj/$image" "$stage/$out_name"
cp "$obj/.config" "$stage/config"
{
    echo "arch=$arch"
    echo "hash=$hash"
    echo "linux_source_version=$pkg_version"
    echo "compiler=$cc_version"
    echo "build_seconds=$((end - start))"
    echo "jobs=$jobs"
    echo "load_at_end=$(cut -d' ' -f1-3 /proc/loadavg)"
    echo "image=$out_name"
    echo "image_bytes=$(stat -c %s "$stage/$out_name")"
    echo "image_sha256=$(sha256sum "$stage/$out_name" | cut -d' ' -f1)"
} >"$stage/build-info"
rm -rf "$cache"
mv "$stage" "$cache"
echo "guest kernel ($arch): built in $((end - start)) s"
copy_out
