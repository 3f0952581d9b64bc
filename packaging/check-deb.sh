#!/usr/bin/env bash
# Builds the Debian package as the README says (`cargo deb`) and checks what
# it ships: a stripped binary (its symbols in the -dbgsym package beside it),
# the rules, unit, man pages and examples where the README says they go.
#
# Then lintian, which must find nothing above "info" that packaging/lintian/
# does not override with its reason, and the changelog's newest entry must
# be the package's version.
#
#   packaging/check-deb.sh        (needs cargo-deb: cargo install --locked cargo-deb;
#                                  and lintian: apt-get install lintian)
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
version=$(dpkg-deb -f "$deb" Version)
logged=$(sed -n '1s/^[^ ]* (\([^)]*\)).*/\1/p' packaging/changelog)
[ "$version" = "$logged" ] || fail "the package is $version, packaging/changelog's newest entry $logged"
command -v lintian >/dev/null || fail "lintian is not installed (apt-get install lintian)"
rc=0
tags=$(lintian --fail-on error,warning "$deb" 2>&1) || rc=$?
# (lintian warns when run as root; that line is not about the package)
[ "$rc" -eq 0 ] || fail "lintian found errors or warnings:
$(grep -v 'running with root privileges' <<<"$tags")"
echo "check-deb: $(basename "$deb"): binary stripped ($((size / 1024 / 1024)) MB), symbols in $(basename "$dbgsym"); lintian clean but for the overrides in packaging/lintian/"
