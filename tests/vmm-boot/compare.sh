#!/bin/sh
# Runs inside the nested test host: boots the same kernel and initrd with
# moat-vmm, QEMU (-M pc) and, when /firecracker exists, Firecracker, through
# bootmeter, RUNS rounds. Prints one line per boot:
#   <vmm> round=<n> <bootmeter fields> [marker_us=..]
# The first VM of a test-host session boots markedly faster than the next ones
# (measured: 1.7 s, then 2.4-2.7 s, whatever the VMM or entry), so one
# unmeasured boot comes first, and each round starts with a different VMM.
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
vmms="moat-vmm qemu-pc"
[ -x /firecracker ] && vmms="$vmms firecracker"

boot() {
    case $1 in
    moat-vmm)
        out=$(/bootmeter "init reached" $mem -- /moat-vmm --kernel /vmlinux \
            --initrd /initrd.cpio --memory-mib $mem --cmdline "$args" --console stdout \
            --log debug 2>/tmp/moat.err)
        marker=$(sed -n 's/^moat-vmm: boot-marker \([0-9]*\) us$/\1/p' /tmp/moat.err)
        started=$(sed -n 's/.*vcpus started elapsed_us=\([0-9]*\).*/\1/p' /tmp/moat.err)
        out="$out marker_us=${marker:-none} vcpus_started_us=${started:-none}"
        ;;
    qemu-pc)
        out=$(/bootmeter --fifo /tmp/qemu.fifo "init reached" $mem -- qemu-system-x86_64 \
            -M pc -enable-kvm -cpu host -m $mem -smp 1 -nodefaults -no-user-config \
            -display none -no-reboot -serial file:/tmp/qemu.fifo \
            -kernel /vmlinux -initrd /initrd.cpio -append "$args" 2>/tmp/qemu.err)
        ;;
    firecracker)
        out=$(/bootmeter "init reached" $mem -- /firecracker --no-api \
            --config-file /tmp/fc.json --level Debug 2>/tmp/fc.err)
        ;;
    esac
    echo "$1 round=$2 ${out#bootmeter: }"
}

boot moat-vmm 0 >/dev/null
round=1
while [ "$round" -le "$runs" ]; do
    # Rotate: round r starts with VMM number r (mod the count).
    set -- $vmms
    shift $(((round - 1) % $#))
    order="$*"
    set -- $vmms
    for v in $vmms; do
        case " $order " in *" $v "*) ;; *) order="$order $v" ;; esac
    done
    for v in $order; do boot "$v" "$round"; done
    round=$((round + 1))
done
