#!/bin/sh
# Boots the guest kernel with moat-vmm in several ways, from the root of the
# added files (./bin/moat-vmm, ./boot/vmlinux or ./boot/Image, ./boot/initrd.cpio;
# the initrd's /init is tests/vmm-boot/init.c).
#
#   boot-matrix.sh [x86_64|arm64]      (default x86_64)
#
# For each case it prints
#   case <name> status=<exit status>
# then the console and moat-vmm's stderr, one line each, prefixed by
# "<name> console: " and "<name> stderr: ". The devices case also prints
# "devices host: ..." (what the guest wrote into its share, and whether the
# read-only share changed) and "devices peer ..." (the host end of vsock:
# ./bin/moat-vsock-peer's status and output, when that binary is there).
set -u
arch=${1:-x86_64}
case $arch in
x86_64)
    kernel=./boot/vmlinux
    base="console=ttyS0 reboot=k panic=-1 quiet i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd" ;;
arm64)
    kernel=./boot/Image
    base="console=ttyS0 panic=-1 quiet" ;;
*) echo "boot-matrix: unknown architecture $arch" >&2; exit 2 ;;
esac
tmp=$(mktemp -d)
run() {
    name=$1
    shift
    ./bin/moat-vmm --kernel "$kernel" --initrd ./boot/initrd.cpio --memory-mib 256 \
        --console "file:$tmp/$name.console" "$@" </dev/null 2>"$tmp/$name.err"
    echo "case $name status=$?"
    sed "s/^/$name console: /" "$tmp/$name.console" 2>/dev/null
    sed "s/^/$name stderr: /" "$tmp/$name.err"
}
if [ "$arch" = x86_64 ]; then
    run pvh --cmdline "$base" --log debug
    run linux64 --cmdline "$base" --boot-protocol linux64 --log debug
else
    # init powers off (PSCI SYSTEM_OFF) unless told to reboot (SYSTEM_RESET).
    run poweroff --cmdline "$base" --log debug
    run reboot --cmdline "$base -- reboot"
    # The x86 entry protocols are refused as configuration errors.
    run pvh --cmdline "$base" --boot-protocol pvh
fi
run smp --cmdline "$base" --vcpus 2
run panic --cmdline "$base -- panic"
# The virtio devices, driven by the guest's own drivers: rng, a read-only disk,
# a read-write share, a read-only share (every write must fail with EROFS and
# leave the host's files as they were) and vsock both ways with
# ./bin/moat-vsock-peer, which runs here beside moat-vmm.
vsock_bytes=${VSOCK_BYTES:-1048576}
mkdir -p "$tmp/share" "$tmp/ro/sub"
echo "hello from the host" >"$tmp/share/hello.txt"
echo "read-only from the host" >"$tmp/ro/hello.txt"
echo "keep me" >"$tmp/ro/sub/keep.txt"
# Names, sizes, modes, mtimes and contents of everything in the ro share.
ro_manifest() {
    (cd "$tmp/ro" && find . | sort | while read -r f; do
        stat -c '%n %s %a %Y' "$f"
        [ -f "$f" ] && sha256sum "$f"
    done) | sha256sum | cut -d' ' -f1
}
ro_before=$(ro_manifest)
dd if=/dev/zero of="$tmp/disk.img" bs=1024 count=1024 2>/dev/null
printf 'moat-disk-ok\n' | dd of="$tmp/disk.img" conv=notrunc 2>/dev/null
# The vsock exchange needs the peer built for this architecture (the x86_64
# test adds it; without it the guest is not asked to exchange).
peer="" vsock_opt=""
if [ -x ./bin/moat-vsock-peer ]; then
    ./bin/moat-vsock-peer --uds "$tmp/v.sock" --guest-port 5000 --host-port 5001 \
        --bytes "$vsock_bytes" --timeout 300 >"$tmp/peer.out" 2>"$tmp/peer.err" &
    peer=$!
    vsock_opt="vsock=5000:5001:$vsock_bytes"
    n=0
    while [ ! -S "$tmp/v.sock_5001" ] && [ $n -lt 200 ]; do
        sleep 0.05
        n=$((n + 1))
    done
fi
# moat_vmm::vmm=debug: the line saying the seccomp filters are installed.
run devices --cmdline "$base -- devices ro=ro $vsock_opt" --rng --log moat_vmm::vmm=debug \
    --disk "path=$tmp/disk.img,ro" --fs "tag=share,path=$tmp/share" \
    --fs "tag=ro,path=$tmp/ro,ro" --vsock-cid 3 --vsock-uds "$tmp/v.sock"
if [ -n "$peer" ]; then
    # The guest reboots only after both exchanges ended, so the peer is done or
    # about to be; do not wait for its own timeout if the guest failed.
    (sleep 20 && kill "$peer" 2>/dev/null) &
    killer=$!
    wait "$peer"
    echo "devices peer status=$?"
    kill "$killer" 2>/dev/null
    sed "s/^/devices peer: /" "$tmp/peer.out" "$tmp/peer.err"
else
    echo "devices peer: not run (no ./bin/moat-vsock-peer)"
fi
echo "devices host: from-guest.txt: $(cat "$tmp/share/from-guest.txt" 2>&1)"
echo "devices host: ro manifest before=$ro_before after=$(ro_manifest)"
rm -rf "$tmp"
