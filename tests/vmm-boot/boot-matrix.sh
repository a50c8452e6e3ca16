#!/bin/sh
# Boots the guest kernel with moat-vmm in several ways, from the root of the
# added files (./bin/moat-vmm, ./boot/vmlinux, ./boot/initrd.cpio; the initrd's
# /init is tests/vmm-boot/init.c). For each case it prints
#   case <name> status=<exit status>
# then the console and moat-vmm's stderr, one line each, prefixed by
# "<name> console: " and "<name> stderr: ".
set -u
base="console=ttyS0 reboot=k panic=-1 quiet i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd"
tmp=$(mktemp -d)
run() {
    name=$1
    shift
    ./bin/moat-vmm --kernel ./boot/vmlinux --initrd ./boot/initrd.cpio --memory-mib 256 \
        --console "file:$tmp/$name.console" "$@" </dev/null 2>"$tmp/$name.err"
    echo "case $name status=$?"
    sed "s/^/$name console: /" "$tmp/$name.console" 2>/dev/null
    sed "s/^/$name stderr: /" "$tmp/$name.err"
}
run pvh --cmdline "$base"
run linux64 --cmdline "$base" --boot-protocol linux64
run smp --cmdline "$base" --vcpus 2
run panic --cmdline "$base -- panic"
rm -rf "$tmp"
