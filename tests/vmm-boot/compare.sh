#!/bin/sh
# Run by moat-bench (`make bench`) inside the nested test host, or here in the
# direct tier: boots the same kernel and initrd with moat-vmm, QEMU -M pc,
# QEMU -M microvm and, when DIR/firecracker exists, Firecracker, each through
# bootmeter, RUNS rounds, in an order rotated every round. One line per boot:
#   result vmm=<name> round=<n> line_ms=.. exit_ms=.. rss_kib=.. guest_rss_kib=..
#          vmm_rss_kib=.. vmm_anon_kib=.. status=.. uptime_s=.. marker_us=..
#          memory_us=.. loaded_us=.. vcpus_started_us=.. first_run_us=..
# (line_ms: VMM start to the console line of /init; exit_ms: VMM start to its
# exit; memory sampled when that line shows; uptime_s: the guest's uptime as
# /init printed it; the rest are moat-vmm's, on its own process-start clock:
# boot marker, build steps from --log debug (VM and guest memory ready, kernel
# and initrd loaded, vCPUs started) and vCPU 0's first KVM_RUN; "none" where
# not measured).
# In the first seconds of a test-host session VMs boot unevenly, whatever the
# VMM: the first one fast, the next two or three slowly (measured: moat-vmm
# loading its kernel in 0.2 s, then 1.0-2.3 s, then 0.2 s again; Firecracker
# 0.7 s from its start to the guest's clock, then 1.4-1.5 s, then 0.7 s). So an
# unmeasured round of every VMM comes first ("warmup" lines); without it the
# first measured round, which starts with moat-vmm, pays for it.
#
#   compare.sh DIR RUNS
#
# DIR holds moat-vmm, bootmeter, vmlinux, initrd.cpio (whose /init prints
# "init reached, uptime <s> s" and reboots: tests/vmm-boot/init.c), and
# optionally firecracker. QEMU comes from the test host's --qemu bundle.
set -u
dir=$(cd "$1" && pwd) || exit 2
runs=${2:-3}
mem=256
timeout_s=${MOAT_BENCH_BOOT_TIMEOUT:-120}
# The same kernel command line for every VMM, but for how the guest resets:
# reboot=k pulses the i8042 reset line, which moat-vmm, Firecracker and QEMU
# -M pc emulate; -M microvm has no i8042 (the guest then hangs after "Restarting
# system"), so it gets reboot=t, a triple fault, which QEMU turns into a reset.
args="console=ttyS0 reboot=k panic=-1 quiet i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd"
microvm_args=$(echo "$args" | sed 's/reboot=k/reboot=t/')
tmp=$(mktemp -d)
cat >"$tmp/fc.json" <<JSON
{
  "boot-source": { "kernel_image_path": "$dir/vmlinux", "initrd_path": "$dir/initrd.cpio",
                   "boot_args": "$args" },
  "drives": [],
  "machine-config": { "vcpu_count": 1, "mem_size_mib": $mem }
}
JSON
vmms="moat-vmm qemu-pc qemu-microvm"
if [ -x "$dir/firecracker" ]; then
    vmms="$vmms firecracker"
else
    echo "firecracker: not built (set MOAT_FIRECRACKER)"
fi
pattern="init reached"

boot() {
    case $1 in
    moat-vmm)
        out=$("$dir/bootmeter" --timeout "$timeout_s" "$pattern" $mem -- "$dir/moat-vmm" \
            --kernel "$dir/vmlinux" --initrd "$dir/initrd.cpio" --memory-mib $mem \
            --cmdline "$args" --console stdout --log debug 2>"$tmp/err")
        ;;
    qemu-pc | qemu-microvm)
        machine="-M pc" append=$args
        if [ "$1" = qemu-microvm ]; then
            machine="-M microvm,x-option-roms=off,isa-serial=on,rtc=on" append=$microvm_args
        fi
        out=$("$dir/bootmeter" --fifo "$tmp/qemu.fifo" --timeout "$timeout_s" "$pattern" $mem -- \
            qemu-system-x86_64 $machine -enable-kvm -cpu host -m $mem -smp 1 -nodefaults \
            -no-user-config -display none -no-reboot -serial "file:$tmp/qemu.fifo" \
            -kernel "$dir/vmlinux" -initrd "$dir/initrd.cpio" -append "$append" 2>"$tmp/err")
        ;;
    firecracker)
        out=$("$dir/bootmeter" --timeout "$timeout_s" "$pattern" $mem -- "$dir/firecracker" \
            --no-api --config-file "$tmp/fc.json" 2>"$tmp/err")
        ;;
    esac
    # bootmeter copies the console to its stderr, beside the VMM's own stderr.
    uptime=$(sed -n 's/.*init reached, uptime \([0-9.]*\) s.*/\1/p' "$tmp/err" | head -n1)
    marker=$(sed -n 's/^moat-vmm: boot-marker \([0-9]*\) us$/\1/p' "$tmp/err" | head -n1)
    # moat-vmm's build steps (--log debug), on its process-start clock.
    step() { sed -n "s/.*$1.*elapsed_us=\([0-9]*\).*/\1/p" "$tmp/err" | head -n1; }
    memory=$(step "vm and guest memory ready")
    loaded=$(step "kernel and initrd loaded")
    started=$(step "vcpus started")
    first=$(step "first KVM_RUN vcpu=0")
    echo "$3 vmm=$1 round=$2 ${out#bootmeter: } uptime_s=${uptime:-none}" \
        "marker_us=${marker:-none} memory_us=${memory:-none} loaded_us=${loaded:-none}" \
        "vcpus_started_us=${started:-none} first_run_us=${first:-none}"
    case $out in
    *status=0) ;;
    *) echo "$1 round $2 failed; its stderr and console:" >&2; tail -n 20 "$tmp/err" >&2 ;;
    esac
}

for v in $vmms; do boot "$v" 0 warmup; done
round=1
while [ "$round" -le "$runs" ]; do
    # Rotate: round r starts with VMM number r (mod the count).
    set -- $vmms
    shift $(((round - 1) % $#))
    order="$*"
    for v in $vmms; do
        case " $order " in *" $v "*) ;; *) order="$order $v" ;; esac
    done
    for v in $order; do boot "$v" "$round" result; done
    round=$((round + 1))
done
rm -rf "$tmp"
