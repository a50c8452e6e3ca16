#!/usr/bin/env bash
# Build the nested KVM test host: a Debian cloud kernel, its KVM and virtio-console
# modules, and a busybox initramfs whose /init (tests/kvm-host/init) runs one
# command and reports its stdout, stderr and exit status over virtio-serial.
#
#   tests/kvm-host/build.sh [--arch ARCH] [--qemu] [OUTDIR]
#
#   --arch ARCH  x86_64 (default; OUTDIR default build/testhost) or arm64 (an
#                arm64 test host for qemu-system-aarch64 -M virt,virtualization=on;
#                OUTDIR default build/testhost-arm64)
#   --qemu       also the QEMU bundle, qemu.cpio (x86_64 only)
#
# OUTDIR gets: the kernel (x86_64: vmlinux, the uncompressed ELF; arm64: Image,
# which Debian ships uncompressed), base.cpio.gz (padded to 4 bytes, so further
# cpio archives can be appended), and for x86_64 ref-initrd.cpio (the reference
# boot's /init, from ref-init.c) and with --qemu, qemu.cpio: QEMU, its shared
# libraries and firmware, to run a reference VMM inside the test host.
#
# The kernel package (and, for arm64, busybox-static:arm64) is downloaded with
# `apt-get download` and unpacked once into
# ${MOAT_CACHE:-~/.cache/moat}/testhost/<package>_<version>/. Without apt lists
# (offline) the newest cached package is used. arm64 packages need the arm64
# architecture in dpkg (`dpkg --add-architecture arm64 && apt-get update`; `make
# deps` does it).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
want_qemu=0 arch=x86_64
while [ $# -gt 0 ]; do
    case $1 in
    --qemu) want_qemu=1; shift ;;
    --arch) [ $# -ge 2 ] || { echo "test host: --arch needs a value" >&2; exit 1; }; arch=$2; shift 2 ;;
    *) break ;;
    esac
done
cache_root=${MOAT_CACHE:-$HOME/.cache/moat}/testhost
case $arch in
x86_64)
    outdir=${1:-$here/../../build/testhost}
    meta=linux-image-cloud-amd64 dpkg_arch=""
    kernel_name=vmlinux
    # KVM is a module there; kvm-amd because QEMU's TCG emulates an AMD CPU with SVM.
    modules="irqbypass kvm kvm-amd virtio_ring virtio virtio_mmio virtio_console tun" ;;
arm64)
    outdir=${1:-$here/../../build/testhost-arm64}
    meta=linux-image-cloud-arm64 dpkg_arch=":arm64"
    kernel_name=Image
    # KVM is built into Debian's arm64 cloud kernel.
    modules="virtio_ring virtio virtio_mmio virtio_console tun" ;;
*) echo "test host: unknown --arch $arch (x86_64 or arm64)" >&2; exit 1 ;;
esac

die() { echo "test host ($arch): $*" >&2; exit 1; }
[ "$want_qemu" = 0 ] || [ "$arch" = x86_64 ] ||
    die "--qemu (a reference VMM inside the test host) is not supported yet for arm64"
mkdir -p "$cache_root" "$outdir"
exec 9>"$cache_root/.lock"
flock 9

# The newest cached directory named PATTERN, for offline use.
newest_cached() {
    find "$cache_root" -mindepth 1 -maxdepth 1 -type d -name "$1" | sort -V | tail -n1
}

# --- 1. the kernel package, unpacked and cached by version ------------------
pkg="" version=""
# apt-cache takes seconds on a busy machine: reuse the last answer until the apt
# lists change.
if [ -f "$outdir/package" ] && [ "$outdir/package" -nt /var/lib/apt/lists ]; then
    read -r pkg version <"$outdir/package" || true
    [ -f "$cache_root/${pkg}_$version/$kernel_name" ] || pkg="" version=""
fi
if [ -z "$pkg" ]; then
    pkg=$(apt-cache depends "$meta$dpkg_arch" 2>/dev/null |
        awk '/Depends: linux-image-[0-9]/ { sub(/:.*/, "", $2); print $2; exit }') || true
fi
if [ -n "$pkg" ] && [ -z "$version" ]; then
    version=$(apt-cache policy "$pkg$dpkg_arch" 2>/dev/null | awk '/Candidate:/ { print $2; exit }')
fi
if [ -z "$pkg" ] || [ -z "$version" ] || [ "$version" = "(none)" ]; then
    kdir=$(newest_cached "linux-image-*-cloud-${meta##*-}_*")
    [ -n "$kdir" ] || die "cannot resolve $meta$dpkg_arch (run apt-get update${dpkg_arch:+, after dpkg --add-architecture arm64}) and nothing is cached"
    echo "test host: no apt lists; using cached $(basename "$kdir")" >&2
else
    kdir=$cache_root/${pkg}_$version
fi

# Downloads package $1 (with its :arch) into a new temporary directory, unpacks
# it into <dir>/x, and prints the directory.
fetch_deb() {
    local t deb
    t=$(mktemp -d "$cache_root/dl.XXXXXX")
    echo "test host: fetching $1" >&2
    # (apt warns that _apt cannot write to the directory; that is harmless.)
    (cd "$t" && apt-get download -q "$1" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2) ||
        true
    deb=$(find "$t" -maxdepth 1 -name '*.deb' | head -n1)
    [ -n "$deb" ] || { rm -rf "$t"; die "apt-get download $1 gave no package"; }
    dpkg-deb -x "$deb" "$t/x"
    echo "$t"
}

if [ ! -f "$kdir/$kernel_name" ]; then
    tmp=$(fetch_deb "$pkg$dpkg_arch=$version")
    trap 'rm -rf "$tmp"' EXIT
    vmlinuz=$(find "$tmp/x/boot" -name 'vmlinuz-*' | head -n1)
    [ -n "$vmlinuz" ] || die "no /boot/vmlinuz-* in $pkg"
    mkdir -p "$tmp/out/modules"
    if [ "$arch" = x86_64 ]; then
        command -v lz4 >/dev/null || die "lz4 not found (make deps)"
        # The bzImage carries an LZ4 (legacy frame) vmlinux: find its magic, unpack it.
        off=$(grep -obUaP '\x02\x21\x4c\x18' "$vmlinuz" | head -n1 | cut -d: -f1)
        [ -n "$off" ] || die "no LZ4 payload in $vmlinuz"
        tail -c +"$((off + 1))" "$vmlinuz" | lz4 -dc >"$tmp/out/vmlinux" 2>/dev/null || true
        head -c 4 "$tmp/out/vmlinux" | grep -q 'ELF' || die "unpacked $vmlinuz is not an ELF vmlinux"
    else
        # Debian's arm64 kernel is a plain Image: "ARM\x64" at offset 56.
        [ "$(dd if="$vmlinuz" bs=1 skip=56 count=4 2>/dev/null)" = "$(printf 'ARM\x64')" ] ||
            die "$vmlinuz is not an uncompressed arm64 Image"
        cp "$vmlinuz" "$tmp/out/Image"
    fi
    for m in $modules; do
        ko=$(find "$tmp/x/lib/modules" -name "$m.ko" | head -n1)
        [ -n "$ko" ] || die "module $m.ko not found in $pkg"
        cp "$ko" "$tmp/out/modules/"
    done
    cp "$tmp/x/boot/config-"* "$tmp/out/config"
    echo "$pkg $version" >"$tmp/out/package"
    rm -rf "$kdir"
    mv "$tmp/out" "$kdir"
    rm -rf "$tmp"
    trap - EXIT
fi

# --- 2. base initramfs: busybox, our /init, the modules ---------------------
if [ "$arch" = x86_64 ]; then
    busybox=$(command -v busybox) || die "busybox not found (make deps: busybox-static)"
    file -L "$busybox" 2>/dev/null | grep -q 'statically linked' ||
        ldd "$busybox" 2>&1 | grep -q 'not a dynamic executable' ||
        die "$busybox is not static (make deps: busybox-static)"
    list_applets() { "$busybox" --list; }
else
    # busybox-static:arm64 cannot be installed beside the amd64 one: fetch and
    # cache its binary. It does not run here, so its applet list comes from the
    # amd64 busybox of the same Debian release.
    bversion=$(apt-cache policy busybox-static:arm64 2>/dev/null | awk '/Candidate:/ { print $2; exit }')
    if [ -n "$bversion" ] && [ "$bversion" != "(none)" ]; then
        bdir=$cache_root/busybox-static-arm64_$bversion
    else
        bdir=$(newest_cached 'busybox-static-arm64_*')
        [ -n "$bdir" ] || die "cannot resolve busybox-static:arm64 (dpkg --add-architecture arm64 && apt-get update) and nothing is cached"
    fi
    if [ ! -f "$bdir/busybox" ]; then
        btmp=$(fetch_deb "busybox-static:arm64=$bversion")
        [ -f "$btmp/x/bin/busybox" ] || { rm -rf "$btmp"; die "no /bin/busybox in busybox-static:arm64"; }
        mkdir -p "$btmp/out"
        cp "$btmp/x/bin/busybox" "$btmp/out/busybox"
        rm -rf "$bdir"
        mv "$btmp/out" "$bdir"
        rm -rf "$btmp"
    fi
    busybox=$bdir/busybox
    host_busybox=$(command -v busybox) || die "busybox not found (make deps: busybox-static)"
    list_applets() { "$host_busybox" --list; }
fi
stamp=$( {
    cat "$kdir/package" "$here/init" "$here/build.sh"
    sha256sum "$busybox"
} | sha256sum | cut -c1-16)
if [ ! -f "$outdir/base.cpio.gz" ] || [ "$(cat "$outdir/base.stamp" 2>/dev/null)" != "$stamp" ]; then
    root=$(mktemp -d)
    trap 'rm -rf "$root"' EXIT
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,etc,root,lib/modules,moat}
    cp "$busybox" "$root/bin/busybox"
    for applet in $(list_applets); do
        [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
    done
    cp "$here/init" "$root/init"
    chmod 755 "$root/init"
    cp "$kdir/modules/"*.ko "$root/lib/modules/"
    echo "$modules" >"$root/lib/modules/load-order"
    echo "root:x:0:0:root:/root:/bin/sh" >"$root/etc/passwd"
    echo "root:x:0:" >"$root/etc/group"
    (cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) |
        gzip -6 -n >"$outdir/base.cpio.gz.tmp"
    # Pad to 4 bytes: the kernel only finds an appended archive at an aligned offset.
    size=$(stat -c %s "$outdir/base.cpio.gz.tmp")
    pad=$(((4 - size % 4) % 4))
    head -c "$pad" /dev/zero >>"$outdir/base.cpio.gz.tmp"
    mv "$outdir/base.cpio.gz.tmp" "$outdir/base.cpio.gz"
    echo "$stamp" >"$outdir/base.stamp"
    rm -rf "$root"
    trap - EXIT
fi
cmp -s "$kdir/$kernel_name" "$outdir/$kernel_name" || cp "$kdir/$kernel_name" "$outdir/$kernel_name"
echo "$arch" >"$outdir/arch"

# --- 3. reference-boot initramfs: /init = ref-init.c, static ------------------
# (x86_64 only: no reference VMM runs in the arm64 test host yet.)
if [ "$arch" = arm64 ]; then
    cp "$kdir/package" "$outdir/package"
    echo "test host: $outdir ($(cat "$outdir/package"))"
    exit 0
fi
rstamp=$(cat "$here/ref-init.c" "$here/build.sh" | sha256sum | cut -c1-16)
if [ ! -f "$outdir/ref-initrd.cpio" ] || [ "$(cat "$outdir/ref-initrd.stamp" 2>/dev/null)" != "$rstamp" ]; then
    root=$(mktemp -d)
    trap 'rm -rf "$root"' EXIT
    gcc -static -Os -Wall -Wextra -Werror -o "$root/init" "$here/ref-init.c" ||
        die "cannot build ref-init.c statically (make deps: build-essential)"
    (cd "$root" && echo init | cpio -o -H newc -R 0:0 --quiet) >"$outdir/ref-initrd.cpio.tmp"
    mv "$outdir/ref-initrd.cpio.tmp" "$outdir/ref-initrd.cpio"
    echo "$rstamp" >"$outdir/ref-initrd.stamp"
    rm -rf "$root"
    trap - EXIT
fi
cp "$kdir/package" "$outdir/package"

# --- 4. optional QEMU bundle (reference VMM inside the test host) ------------
if [ "$want_qemu" = 1 ]; then
    qemu=$(command -v qemu-system-x86_64) || die "qemu-system-x86_64 not found (make deps)"
    qstamp=$( {
        stat -L -c '%n %s %Y' "$qemu" /usr/share/seabios/bios-256k.bin 2>/dev/null
        sha256sum "$here/build.sh"
    } | sha256sum | cut -c1-16)
    if [ ! -f "$outdir/qemu.cpio" ] || [ "$(cat "$outdir/qemu.stamp" 2>/dev/null)" != "$qstamp" ]; then
        root=$(mktemp -d)
        trap 'rm -rf "$root"' EXIT
        mkdir -p "$root/usr/bin" "$root/usr/share"
        cp "$qemu" "$root/usr/bin/"
        # Every shared library at its own path, plus the dynamic loader.
        ldd "$qemu" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' |
            while read -r lib; do
                mkdir -p "$root$(dirname "$lib")"
                cp -L "$lib" "$root$lib"
            done
        # Firmware for -M pc (SeaBIOS, PVH and linuxboot option ROMs) and -M microvm.
        # Debian's QEMU looks in /usr/share/qemu, then /usr/share/seabios.
        for d in /usr/share/qemu /usr/share/seabios; do
            mkdir -p "$root$d"
            for f in bios-256k.bin bios-microvm.bin pvh.bin linuxboot_dma.bin linuxboot.bin \
                kvmvapic.bin multiboot_dma.bin qboot.rom; do
                if [ -e "$d/$f" ]; then cp -L "$d/$f" "$root$d/"; fi
            done
        done
        [ -e "$root/usr/share/seabios/bios-256k.bin" ] || [ -e "$root/usr/share/qemu/bios-256k.bin" ] ||
            die "SeaBIOS bios-256k.bin not found (make deps: seabios)"
        (cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) \
            >"$outdir/qemu.cpio.tmp"
        mv "$outdir/qemu.cpio.tmp" "$outdir/qemu.cpio"
        echo "$qstamp" >"$outdir/qemu.stamp"
        rm -rf "$root"
        trap - EXIT
    fi
fi
echo "test host: $outdir ($(cat "$outdir/package"))"
