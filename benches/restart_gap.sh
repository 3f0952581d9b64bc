#!/usr/bin/env bash
# The restart gap: SIGTERM of a running conntrackd to the new process's
# "conntrackd started" (its saved table loaded, its queue bound), from the
# two processes' JSON log timestamps, ROUNDS times, in a throwaway network
# namespace. With N (default 0) established connections in the state file.
#
#   sudo benches/restart_gap.sh [ROUNDS] [N]
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
N=${2:-0}
BIN=${CARGO_TARGET_DIR:-target}/release
cargo build --release --bin conntrackd --example state_file >/dev/null 2>&1
NS=gap-$$
DIR=$(mktemp -d)
cleanup() { ip netns del "$NS" 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
ip netns add "$NS"
cat > "$DIR/rules.toml" <<RULES
[engine]
max_connections = $((N + 1024))
[daemon]
state_file = "$DIR/table"
control_socket = ""
[policy]
default = "accept"
RULES
if [ "$N" -gt 0 ]; then
    STATE_OUT="$DIR/table" "$BIN/examples/state_file" "$N" >/dev/null
fi
for i in $(seq "$ROUNDS"); do
    ip netns exec "$NS" "$BIN/conntrackd" --rules "$DIR/rules.toml" --log-format json 2>"$DIR/a.log" & A=$!
    for _ in $(seq 500); do grep -q "conntrackd started" "$DIR/a.log" && break; sleep 0.01; done
    kill -TERM "$A"; wait "$A" || true
    ip netns exec "$NS" "$BIN/conntrackd" --rules "$DIR/rules.toml" --log-format json 2>"$DIR/b.log" & B=$!
    for _ in $(seq 1000); do grep -q "conntrackd started" "$DIR/b.log" && break; sleep 0.01; done
    kill -TERM "$B"; wait "$B" || true
    python3 - "$DIR/a.log" "$DIR/b.log" "$i" <<'PY'
import json, sys
from datetime import datetime
def lines(p): return [json.loads(l) for l in open(p) if l.startswith("{")]
ts = lambda r: datetime.fromisoformat(r["timestamp"].replace("Z", "+00:00")).timestamp()
sig = next(ts(r) for r in lines(sys.argv[1]) if "SIGTERM" in r.get("message", ""))
start = next(ts(r) for r in lines(sys.argv[2]) if r.get("message") == "conntrackd started")
restored = next((r.get("restored") for r in lines(sys.argv[2]) if "restored" in r), 0)
print(f"round {sys.argv[3]}: SIGTERM -> new process started: {(start - sig) * 1000:.1f} ms ({restored} connections restored)")
PY
done
