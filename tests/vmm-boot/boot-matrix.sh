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
# "devices host: ..." with what the guest wrote into its share.
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
# The virtio devices, driven by the guest's own drivers.
mkdir -p "$tmp/share"
echo "hello from the host" >"$tmp/share/hello.txt"
dd if=/dev/zero of="$tmp/disk.img" bs=1024 count=1024 2>/dev/null
printf 'moat-disk-ok\n' | dd of="$tmp/disk.img" conv=notrunc 2>/dev/null
run devices --cmdline "$base -- devices" --rng --disk "path=$tmp/disk.img,ro" \
    --fs "tag=share,path=$tmp/share" --vsock-cid 3 --vsock-uds "$tmp/v.sock"
echo "devices host: from-guest.txt: $(cat "$tmp/share/from-guest.txt" 2>&1)"
rm -rf "$tmp"
