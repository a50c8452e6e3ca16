#!/usr/bin/env bash
# Run one command as root inside the nested KVM test host (QEMU TCG, emulated AMD
# CPU with SVM, so the test host has an ordinary /dev/kvm; or with --arch arm64,
# an emulated arm64 CPU with EL2 under -M virt,virtualization=on,gic-version=3),
# and give back its stdout, stderr and exit status.
#
#   tests/kvm-host/run.sh [--arch x86_64|arm64] [--add SRC:DST]... [--env NAME=VALUE]...
#                         [--mem MiB] [--cpus N] [--timeout SECS] [--qemu]
#                         [--out-dir DIR] -- CMD [ARGS...]
#
#   --arch ARCH     the test host's architecture (default x86_64); arm64 looks for
#                   its files in $MOAT_TESTHOST_ARM64_DIR (default build/testhost-arm64)
#   --add SRC:DST   copy file or directory SRC to DST (absolute) in the test host's
#                   writable root (tmpfs); CMD runs from /, so ./DST works too
#   --env N=V       environment for CMD
#   --mem MiB       test-host memory (default 2048)
#   --cpus N        test-host vCPUs (default 1)
#   --timeout SECS  wall-clock limit for the whole run (default 300)
#   --qemu          also install QEMU (the reference VMM) in the test host
#                   (x86_64 only)
#   --out-dir DIR   keep the run's files in DIR: stdout, stderr, status, console.log
#                   (default: a temporary directory, removed after a good run)
#
# CMD's stdout goes to stdout and its stderr to stderr; run.sh exits with CMD's
# status. When the test host itself fails (timeout, crash, setup error) run.sh
# prints why on stderr, with the console log's tail, and exits with 125.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
mem=2048 cpus=1 timeout_s=300 qemu_bundle=0 out_dir="" keep=0 arch=x86_64
adds=() envs=()

usage() {
    sed -n '/^#   tests/,/^# CMD/p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 125
}
harness_fail() {
    echo "kvm test host: $*" >&2
    exit 125
}

while [ $# -gt 0 ]; do
    case $1 in
    --arch) [ $# -ge 2 ] || usage; arch=$2; shift 2 ;;
    --add) [ $# -ge 2 ] || usage; adds+=("$2"); shift 2 ;;
    --env) [ $# -ge 2 ] || usage; envs+=("$2"); shift 2 ;;
    --mem) [ $# -ge 2 ] || usage; mem=$2; shift 2 ;;
    --cpus) [ $# -ge 2 ] || usage; cpus=$2; shift 2 ;;
    --timeout) [ $# -ge 2 ] || usage; timeout_s=$2; shift 2 ;;
    --qemu) qemu_bundle=1; shift ;;
    --out-dir) [ $# -ge 2 ] || usage; out_dir=$2; keep=1; shift 2 ;;
    --) shift; break ;;
    *) usage ;;
    esac
done
[ $# -ge 1 ] || usage
for n in "$mem" "$cpus" "$timeout_s"; do
    case $n in '' | *[!0-9]*) harness_fail "not a number: $n" ;; esac
done
case $arch in
x86_64) artifacts=${MOAT_TESTHOST_DIR:-$here/../../build/testhost} ;;
arm64)
    artifacts=${MOAT_TESTHOST_ARM64_DIR:-$here/../../build/testhost-arm64}
    [ "$qemu_bundle" = 0 ] || harness_fail "--qemu is not supported yet with --arch arm64" ;;
*) harness_fail "unknown --arch $arch (x86_64 or arm64)" ;;
esac

# Build or reuse the test host (cheap when nothing changed).
build_args=(--arch "$arch")
[ "$qemu_bundle" = 1 ] && build_args+=(--qemu)
"$here/build.sh" "${build_args[@]}" "$artifacts" >/dev/null ||
    harness_fail "building the test host failed"

if [ -z "$out_dir" ]; then
    out_dir=$(mktemp -d "${TMPDIR:-/tmp}/moat-testhost.XXXXXX")
else
    mkdir -p "$out_dir"
    rm -f "$out_dir"/{stdout,stderr,status,console.log,extra.cpio,initrd}
fi
stage=$(mktemp -d "${TMPDIR:-/tmp}/moat-testhost-stage.XXXXXX")
cleanup() { rm -rf "$stage"; }
trap cleanup EXIT

# POSIX single quoting, for busybox sh: 'it'\''s'.
quote() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }

mkdir -p "$stage/root/moat"
for a in "${adds[@]}"; do
    src=${a%%:*}
    dst=${a#*:}
    [ "$src" != "$a" ] || harness_fail "--add wants SRC:DST, got $a"
    case $dst in /*) ;; *) harness_fail "--add destination must be absolute: $dst" ;; esac
    case "/$dst/" in */../*) harness_fail "--add destination must not contain ..: $dst" ;; esac
    [ -e "$src" ] || harness_fail "--add source not found: $src"
    mkdir -p "$stage/root$(dirname "$dst")"
    cp -a "$src" "$stage/root$dst"
done
{
    printf 'exec'
    for arg in "$@"; do printf ' %s' "$(quote "$arg")"; done
    printf '\n'
} >"$stage/root/moat/cmd"
: >"$stage/root/moat/env"
for e in "${envs[@]}"; do
    name=${e%%=*}
    case $name in '' | *[!A-Za-z0-9_]* | [0-9]*) harness_fail "bad --env name: $e" ;; esac
    printf 'export %s=%s\n' "$name" "$(quote "${e#*=}")" >>"$stage/root/moat/env"
done

# The initrd is the cached base archive with ours appended (uncompressed: the
# added binaries would cost more to gunzip under TCG than to copy).
(cd "$stage/root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) \
    >"$stage/extra.cpio"
initrd=$stage/initrd
cat "$artifacts/base.cpio.gz" >"$initrd"
[ "$qemu_bundle" = 1 ] && cat "$artifacts/qemu.cpio" >>"$initrd"
cat "$stage/extra.cpio" >>"$initrd"

: >"$out_dir/stdout"
: >"$out_dir/stderr"
: >"$out_dir/status"
# Under TCG the guest's TSC is the host's. The guest calibrates it against the PIT,
# which fails now and then on a loaded host ("tsc: Unable to calibrate against
# PIT"), and that boot then hangs for good (microvm has no HPET or ACPI PM timer).
# Handing the guest the host's TSC frequency skips that calibration.
host_tsc_khz() {
    local mhz
    mhz=$(dmesg 2>/dev/null | sed -n 's/.*tsc: Refined TSC clocksource calibration: \([0-9.]*\) MHz.*/\1/p' | tail -n1)
    [ -n "$mhz" ] || mhz=$(dmesg 2>/dev/null | sed -n 's/.*tsc: Detected \([0-9.]*\) MHz.*/\1/p' | tail -n1)
    if [ -z "$mhz" ] && grep -qw constant_tsc /proc/cpuinfo; then
        mhz=$(awk '/^cpu MHz/ { print $4; exit }' /proc/cpuinfo)
    fi
    [ -n "$mhz" ] && echo "$mhz * 1000 / 1" | bc
}
if [ "$arch" = x86_64 ]; then
    # tsc=reliable: the clocksource watchdog checks the TSC against jiffies,
    # which lose ticks under TCG on a loaded host; at load 8-10 it marked the
    # (sound) TSC unstable in each of 3 runs, and the test host then ran on
    # 4 ms jiffies.
    tsc_khz=${MOAT_TESTHOST_TSC_KHZ:-$(host_tsc_khz || true)}
    append="console=ttyS0 panic=-1 reboot=t tsc=reliable ${MOAT_TESTHOST_APPEND:-quiet loglevel=4}"
    [ -n "$tsc_khz" ] && append="$append tsc_early_khz=$tsc_khz"
    qemu=(qemu-system-x86_64 -M microvm,x-option-roms=off,isa-serial=on,rtc=on)
    qemu_pkg=qemu-system-x86
    kernel=$artifacts/vmlinux
else
    # virtualization=on: the test host boots at EL2, so its built-in KVM works.
    # The PL011 is ttyAMA0; PSCI SYSTEM_RESET ends QEMU under -no-reboot.
    append="console=ttyAMA0 panic=-1 ${MOAT_TESTHOST_APPEND:-quiet loglevel=4}"
    qemu=(qemu-system-aarch64 -M virt,virtualization=on,gic-version=3)
    qemu_pkg=qemu-system-arm
    kernel=$artifacts/Image
fi
command -v "${qemu[0]}" >/dev/null ||
    harness_fail "${qemu[0]} not found (make deps: $qemu_pkg)"

start=$(date +%s.%N)
set +e
timeout -k 5 "$timeout_s" "${qemu[@]}" \
    -accel tcg -cpu max -smp "$cpus" -m "$mem" \
    -nodefaults -no-user-config -display none -no-reboot \
    -serial "file:$out_dir/console.log" \
    -device virtio-serial-device \
    -chardev "file,id=out,path=$out_dir/stdout" \
    -device virtserialport,chardev=out,name=moat.stdout \
    -chardev "file,id=err,path=$out_dir/stderr" \
    -device virtserialport,chardev=err,name=moat.stderr \
    -chardev "file,id=st,path=$out_dir/status" \
    -device virtserialport,chardev=st,name=moat.status \
    -kernel "$kernel" -initrd "$initrd" \
    -append "$append" \
    </dev/null >"$out_dir/qemu.log" 2>&1
qemu_rc=$?
set -e
end=$(date +%s.%N)
wall=$(echo "$end - $start" | bc)
echo "wall_seconds=$wall" >>"$out_dir/status"

fail_with_log() {
    echo "kvm test host: $*" >&2
    echo "--- qemu: $(tail -n 5 "$out_dir/qemu.log")" >&2
    echo "--- console ($out_dir/console.log), last lines:" >&2
    tail -n 30 "$out_dir/console.log" >&2 || true
    exit 125
}
if [ "$qemu_rc" = 124 ] || [ "$qemu_rc" = 137 ]; then
    fail_with_log "timed out after ${timeout_s}s (the test host or the command hung)"
fi
[ "$qemu_rc" = 0 ] || fail_with_log "qemu exited with status $qemu_rc"
if grep -q '^setup_error=' "$out_dir/status"; then
    fail_with_log "setup failed: $(grep '^setup_error=' "$out_dir/status" | cut -d= -f2-)"
fi
# Setup can fail before the status port exists; init says so on the console.
if ! grep -q '^exit=' "$out_dir/status" && grep -q 'moat-testhost: setup failed:' "$out_dir/console.log"; then
    fail_with_log "$(grep -m1 -o 'setup failed:.*' "$out_dir/console.log")"
fi
rc=$(sed -n 's/^exit=\([0-9]*\)$/\1/p' "$out_dir/status")
[ -n "$rc" ] || fail_with_log "the test host ended without reporting an exit status"

cat "$out_dir/stdout"
cat "$out_dir/stderr" >&2
[ "$keep" = 1 ] || rm -rf "$out_dir"
exit "$rc"
