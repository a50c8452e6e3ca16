#!/bin/sh
# Runs inside the nested test host: boots the same kernel and initrd with
# moat-vmm, QEMU (-M pc) and, when /firecracker exists, Firecracker, RUNS times
# each, interleaved, through bootmeter. Prints one line per run:
#   <vmm> <bootmeter fields> [marker_us=..]
# Expects /moat-vmm, /bootmeter, /vmlinux, /initrd.cpio (whose init prints
# "init reached" and reboots); QEMU from run.sh --qemu.
set -u
runs=${1:-3}
mem=256
args="console=ttyS0 reboot=k panic=-1 quiet i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd"
cat >/tmp/fc.json <<JSON
{
  "boot-source": { "kernel_image_path": "/vmlinux", "initrd_path": "/initrd.cpio",
                   "boot_args": "$args" },
  "drives": [],
  "machine-config": { "vcpu_count": 1, "mem_size_mib": $mem }
}
JSON
i=1
while [ "$i" -le "$runs" ]; do
    out=$(/bootmeter "init reached" $mem -- /moat-vmm --kernel /vmlinux --initrd /initrd.cpio \
        --memory-mib $mem --cmdline "$args" --console stdout 2>/tmp/moat.err)
    marker=$(sed -n 's/^moat-vmm: boot-marker \([0-9]*\) us$/\1/p' /tmp/moat.err)
    echo "moat-vmm ${out#bootmeter: } marker_us=${marker:-none}"
    out=$(/bootmeter --fifo /tmp/qemu.fifo "init reached" $mem -- qemu-system-x86_64 \
        -M pc -enable-kvm -cpu host -m $mem -smp 1 -nodefaults -no-user-config \
        -display none -no-reboot -serial file:/tmp/qemu.fifo \
        -kernel /vmlinux -initrd /initrd.cpio -append "$args" 2>/tmp/qemu.err)
    echo "qemu-pc ${out#bootmeter: }"
    if [ -x /firecracker ]; then
        out=$(/bootmeter "init reached" $mem -- /firecracker --no-api --config-file /tmp/fc.json \
            --boot-timer --level Info 2>/tmp/fc.err)
        echo "firecracker ${out#bootmeter: }"
    fi
    i=$((i + 1))
done
echo "--- moat-vmm stderr (last run):"; cat /tmp/moat.err
echo "--- qemu stderr (last run):"; cat /tmp/qemu.err
echo "--- firecracker stderr (last run):"; cat /tmp/fc.err 2>/dev/null | tail -5
