#!/usr/bin/env bash
# Makes the root filesystem the systemd lab boots (tests/package_systemd.rs):
# a minimal Debian bookworm with systemd as PID 1, dbus, iptables, iproute2.
# Made once and reused by path: when DIR already holds a finished rootfs
# (DIR/.conntrackd-rootfs-v2, the version bumped whenever the list of
# packages changes: an older DIR is made again), nothing is done. Tests never write to DIR: each
# boots it with `systemd-nspawn --ephemeral` (a throwaway copy).
#
#   packaging/systemd-lab/rootfs.sh [DIR]     (default /var/cache/conntrackd/systemd-lab-rootfs)
#
# The mirror is the Debian one this machine's apt uses (MIRROR= overrides).
# Needs root and debootstrap (apt-get install debootstrap); about 260 MB and
# two minutes.
set -euo pipefail
dir=${1:-/var/cache/conntrackd/systemd-lab-rootfs}
stamp="$dir/.conntrackd-rootfs-v2"
if [ -e "$stamp" ]; then
    echo "rootfs: $dir exists (made $(cat "$stamp")), reused"
    exit 0
fi
if [ -z "${MIRROR:-}" ]; then
    # deb822 (URIs: …) or one-line (deb URI SUITE …) sources; the first Debian
    # archive (not -security, not a third-party repository) that carries bookworm.
    MIRROR=$(
        {
            for f in /etc/apt/sources.list.d/*.sources; do
                [ -e "$f" ] || continue
                awk '/^URIs:/ {u=$2} /^Suites:/ && / bookworm( |$)/ && u {print u; u=""}' "$f"
            done
            for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
                [ -e "$f" ] || continue
                awk '$1 == "deb" && $0 ~ / bookworm / { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; break } }' "$f"
            done
        } | grep -v -- '-security' | grep -E '/debian/?$' | head -n 1
    )
fi
[ -n "$MIRROR" ] || { echo "rootfs: no Debian bookworm mirror in /etc/apt/sources.list(.d); set MIRROR=" >&2; exit 1; }
command -v debootstrap >/dev/null || { echo "rootfs: needs debootstrap (apt-get install debootstrap)" >&2; exit 1; }
# Built beside DIR and renamed into place at the end: an interrupted run
# leaves no half-made DIR that the next run would reuse.
tmp="$dir.partial"
rm -rf "$tmp"
mkdir -p "$(dirname "$dir")"
# procps: /bin/kill, the unit's ExecReload (the package depends on it, and
# the container has no network to fetch dependencies from).
echo "rootfs: debootstrap bookworm from $MIRROR into $dir"
debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus,iptables,iproute2,procps \
    bookworm "$tmp" "$MIRROR" >"$tmp.log" 2>&1 || { tail -n 30 "$tmp.log" >&2; exit 1; }
# What a booted container needs from its rootfs: a machine id systemd does not
# have to invent on each ephemeral boot, no getty on the console (the test
# reads the console from a pipe), and the same apt mirror.
systemd-machine-id-setup --root="$tmp" >/dev/null 2>&1 || true
echo "deb $MIRROR bookworm main" >"$tmp/etc/apt/sources.list"
date -u +%FT%TZ >"$tmp/.conntrackd-rootfs-v2"
rm -rf "$dir"
mv "$tmp" "$dir"
rm -f "$tmp.log"
echo "rootfs: $dir made ($(du -sh "$dir" | cut -f1))"
