#!/usr/bin/env bash
# Build the guest initramfs: a newc cpio archive whose /init is the static moat-agent,
# plus /dev/console (the kernel opens it as init's stdio) and the empty mount points.
#
#   agent/mkinitramfs.sh OUT [AGENT]
#
#   OUT    the archive to write
#   AGENT  a static moat-agent binary; default: build it (release, crt-static) with
#          cargo and use target/x86_64-unknown-linux-gnu/release/moat-agent
#
# Environment:
#   MOAT_INITRAMFS_COMPRESS=gzip   gzip the archive (default: none; the kernel reads a
#                                  plain cpio fastest, and the guest kernel is built
#                                  with CONFIG_RD_GZIP for the compressed form)
#
# The archive is written entry by entry (newc headers with printf), so no root and no
# mknod are needed for /dev/console. Everything is owned by 0:0.
set -euo pipefail

die() { echo "mkinitramfs: $*" >&2; exit 1; }
[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: $0 OUT [AGENT]"
out=$1
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

agent=${2:-}
if [ -z "$agent" ]; then
    (cd "$root" && RUSTFLAGS="-C target-feature=+crt-static" \
        cargo build --release --target x86_64-unknown-linux-gnu -p moat-agent) >&2 ||
        die "building the static agent failed"
    agent=$root/target/x86_64-unknown-linux-gnu/release/moat-agent
fi
[ -f "$agent" ] || die "no agent binary at $agent"
if file -L "$agent" 2>/dev/null | grep -q "dynamically linked"; then
    die "$agent is dynamically linked; build it with RUSTFLAGS='-C target-feature=+crt-static'"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/moat-initramfs.XXXXXX")
trap 'rm -rf "$work"' EXIT
init=$work/init
if command -v strip >/dev/null; then
    strip -o "$init" "$agent"
else
    cp "$agent" "$init"
fi

archive=$work/initramfs.cpio
: >"$archive"
ino=1

# pad FILE: zero bytes up to the next multiple of 4.
pad() {
    local size rem
    size=$(stat -c %s "$archive")
    rem=$(( (4 - size % 4) % 4 ))
    [ "$rem" -eq 0 ] || head -c "$rem" /dev/zero >>"$archive"
}

# entry NAME MODE(octal) SIZE RDEVMAJOR RDEVMINOR [DATAFILE]
entry() {
    local name=$1 mode=$2 size=$3 rmaj=$4 rmin=$5 data=${6:-}
    local namesize=$(( ${#name} + 1 ))
    printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
        "$ino" "$((8#$mode))" 0 0 1 0 "$size" 0 0 "$rmaj" "$rmin" "$namesize" 0 >>"$archive"
    printf '%s\0' "$name" >>"$archive"
    pad
    if [ -n "$data" ]; then
        cat "$data" >>"$archive"
        pad
    fi
    ino=$((ino + 1))
}

for d in dev proc sys run tmp mnt; do
    entry "$d" 040755 0 0 0
done
entry dev/console 020600 0 5 1
entry init 0100755 "$(stat -c %s "$init")" 0 0 "$init"
entry TRAILER!!! 0 0 0 0

case ${MOAT_INITRAMFS_COMPRESS:-none} in
none) cp "$archive" "$out" ;;
gzip) gzip -9 -c "$archive" >"$out" ;;
*) die "MOAT_INITRAMFS_COMPRESS must be none or gzip" ;;
esac
echo "mkinitramfs: wrote $out ($(stat -c %s "$out") bytes, /init from $agent)" >&2
