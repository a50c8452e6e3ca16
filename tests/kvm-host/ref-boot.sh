#!/bin/sh
# Reference boot, run inside the test host (busybox sh): boot the guest kernel
# with QEMU on the test host's /dev/kvm to a static /init that prints
# "MOAT-REF-INIT uptime=<seconds>" and reboots.
#
#   ref-boot.sh KERNEL INITRD [RUNS] [MACHINE]
#
# MACHINE is pc (default) or microvm. For each run it prints the guest's console
# and a line "ref-boot run=<i> machine=<m> wall=<s> guest_uptime=<s>" (wall from
# the VMM's start to its exit, at the test host's 10 ms clock resolution).
# Exits non-zero if any run fails to reach /init.
set -u
kernel=$1 initrd=$2 runs=${3:-1} machine=${4:-pc}
case $machine in
pc) mopts="-M pc" ;;
microvm) mopts="-M microvm,${MOAT_REF_MICROVM_OPTS:-x-option-roms=off,isa-serial=on,rtc=on}" ;;
*) echo "ref-boot: unknown machine $machine" >&2; exit 2 ;;
esac
now() { cut -d' ' -f1 /proc/uptime; }
logdir=$(mktemp -d "${TMPDIR:-/tmp}/ref-boot.XXXXXX") || exit 1
trap 'rm -rf "$logdir"' EXIT
rc=0
i=1
while [ "$i" -le "$runs" ]; do
    log=$logdir/run-$i.log
    start=$(now)
    timeout "${MOAT_REF_TIMEOUT:-120}" qemu-system-x86_64 $mopts -enable-kvm -cpu qemu64 -m 256 -smp 1 \
        -nodefaults -no-user-config -display none -no-reboot \
        -serial "file:$log" -kernel "$kernel" -initrd "$initrd" \
        -append "console=ttyS0 panic=-1 reboot=t ${MOAT_REF_APPEND-quiet}" </dev/null
    qrc=$?
    end=$(now)
    cat "$log"
    up=$(sed -n 's/.*MOAT-REF-INIT uptime=\([0-9.]*\).*/\1/p' "$log" | tail -n1)
    wall=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.2f", b - a }')
    if [ -z "$up" ]; then
        echo "ref-boot run=$i machine=$machine failed: qemu status $qrc, no MOAT-REF-INIT marker" >&2
        rc=1
    else
        echo "ref-boot run=$i machine=$machine wall=$wall guest_uptime=$up"
    fi
    i=$((i + 1))
done
exit $rc
