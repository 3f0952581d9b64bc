#!/usr/bin/env bash
# Where a fuzz run's coverage lies: the program counters libFuzzer printed
# as newly covered (`-print_pcs=1`), symbolized, each counted under the
# innermost source file of this repository it was compiled from (src/ by
# module, or fuzz/ for the targets themselves), else under dependencies and
# std. libFuzzer prints nothing for its first, empty input, so the log's
# last `cov:` is a little more than the total here. Needs llvm-symbolizer.
#
#   fuzz/pcs_by_file.sh TARGET LOG [TARGET_DIR]
#
# e.g. (from fuzz/)
#   cargo fuzz run -s none tcp_flows -- -max_total_time=180 -print_pcs=1 2>&1 | tee run.log
#   ./pcs_by_file.sh tcp_flows run.log
set -euo pipefail
TARGET=$1
LOG=$2
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=${3:-$ROOT/fuzz/target}/x86_64-unknown-linux-gnu/release/$TARGET
# Where the run loaded the binary: where the PC table was, less where it
# lies in the file.
loaded=$(grep -oE 'PC tables \([0-9]+ PCs\): [0-9]+ \[0x[0-9a-f]+' "$LOG" | grep -oE '0x[0-9a-f]+$')
static=0x$(nm "$BIN" | awk '$3 == "__start___sancov_pcs" { print $1 }')
base=$((loaded - static))
grep -oE 'NEW_PC: 0x[0-9a-f]+' "$LOG" | awk '{ print $2 }' | sort -u |
    while read -r pc; do printf '0x%x\n' $((pc - base)); done |
    llvm-symbolizer --obj="$BIN" --inlining=true |
    awk -v root="$ROOT/" '
        BEGIN { RS = ""; FS = "\n" }
        {
            where = "dependencies and std"
            # Frames innermost first: function, then file:line:column.
            for (i = 2; i <= NF; i += 2) {
                if (index($i, root) != 1) continue
                file = substr($i, length(root) + 1)
                sub(/:[0-9]+:[0-9]+$/, "", file)
                n = split(file, part, "/")
                if (part[1] == "src") where = (n > 2) ? "src/" part[2] : file
                else where = "fuzz/ (the targets)"
                break
            }
            count[where]++
            total++
        }
        END {
            for (w in count) printf "%7d  %s\n", count[w], w | "sort -rn"
            close("sort -rn")
            split("src/wire src/conntrack src/engine src/policy src/reason.rs src/time.rs", core, " ")
            for (i in core) engine += count[core[i]]
            printf "%7d  total\n%7d  in the engine (src/wire, conntrack, engine, policy, reason.rs, time.rs)\n", total, engine
        }'
