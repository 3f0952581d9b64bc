#!/usr/bin/env bash
# Builds the Debian package as the README says (`cargo deb`) and checks what
# it ships: a stripped binary (its symbols in the -dbgsym package beside it),
# the rules, unit, man pages and examples where the README says they go.
#
#   packaging/check-deb.sh        (needs cargo-deb: cargo install --locked cargo-deb)
set -euo pipefail
cd "$(dirname "$0")/.."
cargo deb --quiet >/dev/null
dir=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/debian
deb=$(ls -t "$dir"/conntrackd-fw_*.deb | head -1)
dbgsym=$(ls -t "$dir"/conntrackd-fw-dbgsym_*.ddeb | head -1)
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
dpkg-deb -x "$deb" "$out/pkg"
dpkg-deb -x "$dbgsym" "$out/dbg"
fail() { echo "check-deb: $*" >&2; exit 1; }
bin="$out/pkg/usr/sbin/conntrackd"
[ -x "$bin" ] || fail "no /usr/sbin/conntrackd"
file "$bin" | grep -q ', stripped' || fail "the binary is not stripped: $(file "$bin")"
size=$(stat -c %s "$bin")
[ "$size" -lt $((20 * 1024 * 1024)) ] || fail "the binary is $size bytes"
find "$out/dbg" -name '*.debug' | grep -q . || fail "no debug symbols in $dbgsym"
for f in etc/conntrackd/rules.toml usr/share/man/man8/conntrackd.8.gz \
         usr/share/doc/conntrackd-fw/examples/iptables/nat.rules.v4; do
    [ -e "$out/pkg/$f" ] || [ -e "$out/pkg/${f%.gz}" ] || fail "missing /$f"
done
find "$out/pkg" -name 'conntrackd.service' | grep -q . || fail "no conntrackd.service"
echo "check-deb: $(basename "$deb"): binary stripped ($((size / 1024 / 1024)) MB), symbols in $(basename "$dbgsym")"
