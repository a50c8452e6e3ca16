#!/bin/sh
# End-to-end run of the agent in a real microVM: moat-vmm boots the guest kernel with
# the agent as /init, shares a busybox rootfs (two layers, the upper one with a
# whiteout) over virtio-fs and reaches the agent over vsock. moat-agent-ctl runs one
# container and exits with its status. Runs inside the nested test host (busybox sh)
# or directly on a host with hardware KVM.
#
#   agent-e2e.sh DIR    DIR holds vmlinux, initrd.cpio, moat-vmm, moat-agent-ctl
#
# Prints `E2E ctl_exit=<n> vmm_exit=<n> wall_s=<s>` as its last stdout line and the
# VM's console on stderr when something went wrong.
set -u
d=$1
w=$(mktemp -d)
share=$w/share
l0=$share/layers/0
l1=$share/layers/1
mkdir -p "$l0/bin" "$l0/etc" "$l0/proc" "$l0/sys" "$l0/dev" "$l0/tmp" "$l0/root" "$l1/etc"
bb=/bin/busybox
[ -x "$bb" ] || bb=$(command -v busybox)
[ -x "$bb" ] || { echo "E2E setup: no busybox binary found" >&2; exit 1; }
cp "$bb" "$l0/bin/busybox"
for a in sh echo test cat ls sleep; do ln -s /bin/busybox "$l0/bin/$a"; done
echo "layer 0" >"$l0/etc/gone"
echo "layer 0" >"$l0/etc/motd"
echo "layer 1" >"$l1/etc/motd"
mknod "$l1/etc/gone" c 0 0 || { echo "E2E setup: mknod whiteout failed" >&2; exit 1; }

start=$(cut -d' ' -f1 /proc/uptime)
"$d/moat-vmm" --kernel "$d/vmlinux" --initrd "$d/initrd.cpio" --vcpus 1 --memory-mib 256 \
    --cmdline "console=ttyS0 reboot=k panic=-1 moat.fs=moat:/mnt/moat" \
    --console "file:$w/console.log" \
    --vsock-uds "$w/vsock.sock" --vsock-cid 3 \
    --fs "tag=moat,path=$share" \
    >"$w/vmm.out" 2>"$w/vmm.err" &
vmm=$!

# Wait for the VMM's vsock socket; a VMM that dies first (e.g. a device it does not
# support yet) ends the run at once, with its reason.
n=0
while [ ! -S "$w/vsock.sock" ] && kill -0 "$vmm" 2>/dev/null && [ $n -lt 600 ]; do
    sleep 0.1
    n=$((n + 1))
done
if [ ! -S "$w/vsock.sock" ]; then
    wait "$vmm"
    vmm_rc=$?
    echo "---- moat-vmm stderr" >&2
    cat "$w/vmm.err" >&2
    echo "E2E ctl_exit=none vmm_exit=$vmm_rc (the VMM did not open its vsock socket)"
    exit 0
fi

ctl() { "$d/moat-agent-ctl" --vsock "$w/vsock.sock" --wait-secs 120 "$@"; }
rootfs() {
    echo --layer /mnt/moat/layers/0 --layer /mnt/moat/layers/1 \
        --upper "/mnt/moat/upper-$1" --work "/mnt/moat/work-$1"
}

# cgroup limits (they cannot be tested in host mode): the container sees its own
# cgroup (cgroup namespace) with the limits, and the agent reports stats.
ctl run --id limits $(rootfs limits) --memory 67108864 --pids-limit 100 --stats \
    -- sh -c 'echo "limits $(cat /sys/fs/cgroup/memory.max) $(cat /sys/fs/cgroup/pids.max)"' \
    2>"$w/limits.err"
echo "limits_exit=$?"
cat "$w/limits.err" >&2

# The container the test is about; the VM powers off after it (one-shot).
ctl run --id c1 $(rootfs c1) --oneshot --timing \
    -- sh -c 'echo out; echo err >&2; test -e /etc/gone && echo whiteout-ignored >&2; cat /etc/motd; exit 3'
ctl=$?

# The agent powers the VM off by itself (one-shot); give it 60 s.
n=0
while kill -0 "$vmm" 2>/dev/null && [ $n -lt 600 ]; do
    sleep 0.1
    n=$((n + 1))
done
if kill -0 "$vmm" 2>/dev/null; then
    echo "E2E: the VM did not power off within 60 s" >&2
    kill -9 "$vmm"
fi
wait "$vmm"
vmm_rc=$?
end=$(cut -d' ' -f1 /proc/uptime)

if [ "$ctl" != 3 ] || [ "$vmm_rc" != 0 ]; then
    echo "---- moat-vmm stderr" >&2
    cat "$w/vmm.err" >&2
    echo "---- guest console" >&2
    cat "$w/console.log" >&2
fi
grep -E "moat-agent|exited with code" "$w/console.log" | head -20 >&2
grep "boot-marker" "$w/vmm.err" || echo "no boot-marker line from moat-vmm"
# The agent's start (guest uptime) and where its create time went, from its log.
grep -o 'moat-agent up.*uptime_s=[0-9.]*' "$w/console.log" | grep -o 'uptime_s=[0-9.]*'
grep 'create stages container=c1' "$w/console.log" | grep -o 'rootfs_us.*'
echo "upper: $(ls "$share/upper-c1" 2>&1 | tr '\n' ' ')"
echo "E2E ctl_exit=$ctl vmm_exit=$vmm_rc wall_s=$(awk "BEGIN { print $end - $start }")"
