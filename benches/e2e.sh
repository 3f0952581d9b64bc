#!/usr/bin/env bash
# End-to-end benchmark: client -- gateway -- server network namespaces
# (three hosts, two veth links, forwarding in the middle one), each workload through each gateway mode, interleaved and
# repeated, one table of medians and ratios at the end.
#
#   benches/e2e.sh [ROUNDS] [SECONDS]      (defaults: 3 rounds, 5 s per run)
#
# Modes (gateway namespace):
#   kernel      plain forwarding, no rules
#   kernel-ct   nf_conntrack, strict: INVALID dropped, ESTABLISHED/RELATED
#               accepted, NEW only by SYN, nf_conntrack_tcp_loose=0
#   nfq-ceil    NFQUEUE with the queue settings conntrackd uses, answered by
#               a minimal accept-everything program (examples/nfq_ceiling)
#   conntrackd  conntrackd with a rules/default.toml-like policy
#   conntrackd-handoff  the same with handoff = true (established bulk data
#               handed to the kernel by connmark; see README)
#   conntrackd-1q  conntrackd on one queue (the queue-scaling comparison)
#   conntrackd-synproxy  conntrackd with every TCP connection through the SYN
#               proxy (synproxy = true on the rule): cookies, translation
#   conntrackd-handoff-synproxy  hand-off mode with every TCP connection
#               proxied: the kernel carries and translates them (ctnetlink
#               sequence adjustment, the SYN proxy hooks' timestamp offset)
#   conntrackd-fullcopy  conntrackd with the proxy configured but idle
#               ([engine] synproxy = "adaptive", no flood): what whole-packet
#               copies without GSO cost every connection
# Workloads: iperf3 bulk TCP with 1 stream and with 4 streams from 4 client
# addresses (Gbit/s), short TCP connections per second (examples/shortconn,
# CONN_THREADS client threads, each connection from the next of 64 client
# addresses), UDP 64-byte datagrams delivered per second (iperf3 -u), and the
# CPU time of the whole machine during each run. Every load is bounded by
# SECONDS. The client has several addresses because --queue-balance hashes
# addresses, not ports: from one address every flow would land on one queue.
#
# Needs root, iproute2, iptables, iperf3, python3. Cleans up on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${1:-3}
SECS=${2:-5}
QUEUES=${QUEUES:-0:1}            # --queue-balance range for the NFQUEUE modes (not -1q)
MODES=${MODES:-"kernel kernel-ct nfq-ceil conntrackd conntrackd-1q conntrackd-handoff"}
WORKLOADS=${WORKLOADS:-"tcp1 tcp4 conns udp64"}
CONN_THREADS=${CONN_THREADS:-4}          # client threads of the short-connection workload
ID=e2e$$
C=$ID-c; G=$ID-g; S=$ID-s
OUT=$(mktemp -d)
PIDS=()

[ "$(id -u)" -eq 0 ] || { echo "e2e.sh needs root" >&2; exit 1; }
for t in ip iptables iperf3 python3; do
    command -v $t >/dev/null || { echo "e2e.sh needs $t" >&2; exit 1; }
done

cleanup() {
    for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    # iperf3 -D daemonizes: it outlives its namespace unless killed by its pid file.
    local daemons=()
    for f in "$OUT"/iperf3-*.pid; do [ -s "$f" ] && daemons+=("$(cat "$f")"); done
    [ ${#daemons[@]} -gt 0 ] && { kill "${daemons[@]}" 2>/dev/null || true; }
    wait 2>/dev/null || true   # our own children
    # The daemons are not our children: up to 2 s for them to go.
    for _ in $(seq 20); do
        [ ${#daemons[@]} -gt 0 ] && kill -0 "${daemons[@]}" 2>/dev/null || break
        sleep 0.1
    done
    for n in $C $G $S; do ip netns del $n 2>/dev/null || true; done
    rm -rf "$OUT"
}
trap cleanup EXIT

cargo build --release --quiet --bin conntrackd --example shortconn --example nfq_ceiling
BIN=${CARGO_TARGET_DIR:-target}/release
FIRST=${QUEUES%:*}; LAST=${QUEUES#*:}

# ---- the lab ----------------------------------------------------------------
for n in $C $G $S; do ip netns add $n; ip -n $n link set lo up; done
ip -n $C link add eth0 type veth peer name cli netns $G
ip -n $S link add eth0 type veth peer name srv netns $G
CLIENTS="198.18.0.2 198.18.0.3 198.18.0.4 198.18.0.5"          # tcp4: one stream each
# conns: round robin over 64 addresses, so that --queue-balance's address hash
# spreads connections over the queues as a gateway's many clients would.
CONN_CLIENTS=$(for i in $(seq 2 65); do echo -n "198.18.0.$i "; done)
for a in $CONN_CLIENTS; do ip -n $C addr add $a/24 dev eth0; done; ip -n $C link set eth0 up
ip -n $S addr add 198.19.0.2/24 dev eth0; ip -n $S link set eth0 up
ip -n $G addr add 198.18.0.1/24 dev cli;  ip -n $G link set cli up
ip -n $G addr add 198.19.0.1/24 dev srv;  ip -n $G link set srv up
ip -n $C route add default via 198.18.0.1
ip -n $S route add default via 198.19.0.1
ip netns exec $G sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'
# Thousands of short connections a second: without reuse of TIME_WAIT ports
# the client runs out of ports and measures itself, not the gateway.
ip netns exec $C sh -c 'echo 1 > /proc/sys/net/ipv4/tcp_tw_reuse; echo "1024 65000" > /proc/sys/net/ipv4/ip_local_port_range'

# One iperf3 server per client address (an iperf3 server runs one test at a time).
for p in 5201 5202 5203 5204; do ip netns exec $S iperf3 -s -D -p $p -I "$OUT/iperf3-$p.pid" >/dev/null; done
ip netns exec $S $BIN/examples/shortconn server 198.19.0.2:7000 & PIDS+=($!)
sleep 0.5

cat > "$OUT/rules.toml" <<RULES
[policy]
default = "drop"
[[rule]]
name = "lan-out"
action = "accept"
src = ["198.18.0.0/15"]
[daemon]
queues = "$FIRST-$LAST"
RULES
sed 's/^\[daemon\]/[daemon]\nhandoff = true/' "$OUT/rules.toml" > "$OUT/rules-handoff.toml"
sed 's/^src = \["198.18.0.0\/15"\]/&\nsynproxy = true/' "$OUT/rules.toml" > "$OUT/rules-synproxy.toml"
sed 's/^\[daemon\]/[daemon]\nhandoff = true/' "$OUT/rules-synproxy.toml" > "$OUT/rules-handoff-synproxy.toml"
sed 's/^\[daemon\]/[engine]\nsynproxy = "adaptive"\n[daemon]/' "$OUT/rules.toml" > "$OUT/rules-fullcopy.toml"

gw_reset() {
    # The kernel's conntrack entries of earlier runs (TIME_WAIT lasts 2 min:
    # short-connection runs in a row fill the table, and it drops packets).
    ip netns exec $G conntrack -F >/dev/null 2>&1 || true
    ip netns exec $G iptables -F; ip netns exec $G iptables -X 2>/dev/null || true
    ip netns exec $G iptables -t mangle -F
    ip netns exec $G iptables -P FORWARD ACCEPT
}

HELPER=""
mode_up() {
    gw_reset
    case $1 in
    kernel) ;;
    kernel-ct)
        ip netns exec $G sh -c 'echo 0 > /proc/sys/net/netfilter/nf_conntrack_tcp_loose' 2>/dev/null || true
        ip netns exec $G iptables -A FORWARD -m conntrack --ctstate INVALID -j DROP
        ip netns exec $G iptables -A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
        ip netns exec $G iptables -A FORWARD -p tcp --syn -m conntrack --ctstate NEW -j ACCEPT
        ip netns exec $G iptables -A FORWARD -p udp -m conntrack --ctstate NEW -j ACCEPT
        ip netns exec $G iptables -A FORWARD -j DROP ;;
    nfq-ceil)
        ip netns exec $G iptables -A FORWARD -j NFQUEUE --queue-balance $QUEUES
        ip netns exec $G $BIN/examples/nfq_ceiling $FIRST-$LAST & HELPER=$! ;;
    conntrackd)
        ip netns exec $G iptables -A FORWARD -j NFQUEUE --queue-balance $QUEUES
        ip netns exec $G $BIN/conntrackd --rules "$OUT/rules.toml" --state-file "" --log-level ${CTD_LOG:-warn} & HELPER=$! ;;
    conntrackd-synproxy|conntrackd-fullcopy)
        ip netns exec $G iptables -A FORWARD -j NFQUEUE --queue-balance $QUEUES
        ip netns exec $G $BIN/conntrackd --rules "$OUT/rules-${1#conntrackd-}.toml" --state-file "" --log-level ${CTD_LOG:-warn} & HELPER=$! ;;
    conntrackd-1q)
        ip netns exec $G iptables -A FORWARD -j NFQUEUE --queue-num $FIRST
        ip netns exec $G $BIN/conntrackd --rules "$OUT/rules.toml" --state-file "" --queue $FIRST --log-level ${CTD_LOG:-warn} & HELPER=$! ;;
    conntrackd-handoff|conntrackd-handoff-synproxy)
        ip netns exec $G $BIN/conntrackd --rules "$OUT/rules-${1#conntrackd-}.toml" --state-file "" --install-iptables --log-level warn & HELPER=$! ;;
    esac
    [ -n "$HELPER" ] && PIDS+=($HELPER)
    sleep 1
}

mode_down() {
    if [ -n "$HELPER" ]; then kill -TERM $HELPER 2>/dev/null || true; wait $HELPER 2>/dev/null || true; HELPER=""; fi
    gw_reset
}

busy_jiffies() { awk '/^cpu /{print $2+$3+$4+$7+$8}' /proc/stat; }
# CPU time (user + system, all threads) of the gateway's userspace program so
# far; 0 for the kernel modes. Its system time includes the forwarding the
# kernel does inside its verdict sendto.
helper_jiffies() {
    if [ -n "$HELPER" ] && [ -r /proc/$HELPER/stat ]; then
        awk '{sub(/^.*\) /, ""); print $12 + $13}' /proc/$HELPER/stat
    else
        echo 0
    fi
}

# Prints the workload's figure (higher is better).
run_workload() {
    case $1 in
    tcp1)
        ip netns exec $C timeout $((SECS + 10)) iperf3 -c 198.19.0.2 -p 5201 -t $SECS -J 2>/dev/null \
          | python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.2f" % (d["end"]["sum_received"]["bits_per_second"]/1e9))' \
          || echo 0 ;;
    tcp4)
        # Four single-stream clients at once, one per client address and server port.
        local i=0 a
        for a in $CLIENTS; do
            ip netns exec $C timeout $((SECS + 10)) iperf3 -c 198.19.0.2 -p $((5201 + i)) -B $a -t $SECS -J \
              > "$OUT/tcp4-$i.json" 2>/dev/null &
            i=$((i + 1))
        done
        wait
        python3 - "$OUT"/tcp4-*.json <<'PY' || echo 0
import json, sys
total = 0.0
for f in sys.argv[1:]:
    try: total += json.load(open(f))["end"]["sum_received"]["bits_per_second"]
    except Exception: pass
print("%.2f" % (total / 1e9))
PY
        ;;
    conns)
        ip netns exec $C timeout $((SECS + 10)) $BIN/examples/shortconn client 198.19.0.2:7000 $CONN_THREADS $SECS "$(echo $CONN_CLIENTS | tr ' ' ,)" \
          | awk '{print $2; if ($4 != 0) print "shortconn: " $4 " failed connections" | "cat >&2"}' || echo 0 ;;
    udp64)
        ip netns exec $C timeout $((SECS + 10)) iperf3 -c 198.19.0.2 -p 5201 -u -l 64 -b 0 -t $SECS -J 2>/dev/null \
          | python3 -c 'import json,sys; d=json.load(sys.stdin); s=d["end"]["sum"]; print("%.0f" % ((s["packets"]-s["lost_packets"])/s["seconds"]))' \
          || echo 0 ;;
    esac
}

echo "# round workload mode value cpu_seconds gateway_program_cpu_seconds" > "$OUT/results"
# Each round starts the mode order one further along, so that no mode always
# runs right after the same other one (a run leaves TIME_WAIT sockets, warm
# caches and a hot or cold CPU behind).
read -r -a MODE_LIST <<< "$MODES"
for round in $(seq 1 "$ROUNDS"); do
    for w in $WORKLOADS; do
        for i in "${!MODE_LIST[@]}"; do
            m=${MODE_LIST[$(( (i + round - 1) % ${#MODE_LIST[@]} ))]}
            mode_up $m
            j0=$(busy_jiffies); h0=$(helper_jiffies)
            v=$(run_workload $w)
            j1=$(busy_jiffies); h1=$(helper_jiffies)
            mode_down
            cpu=$(python3 -c "print('%.1f' % (($j1-$j0)/$(getconf CLK_TCK)))")
            gw=$(python3 -c "print('%.1f' % (($h1-$h0)/$(getconf CLK_TCK)))")
            echo "$round $w $m $v $cpu $gw" | tee -a "$OUT/results" >&2
        done
    done
done

# Ratios are paired: each round runs every mode back to back, so the ratio is
# taken within a round and the table shows the median over rounds (the
# machine's drift between rounds cancels; medians of values are shown too).
python3 - "$OUT/results" <<'PY'
import sys, statistics, collections
rows = [l.split() for l in open(sys.argv[1]) if not l.startswith('#')]
val = collections.defaultdict(list); cpu = collections.defaultdict(list)
by_round = {}
gw = collections.defaultdict(list)
for r, w, m, v, c, g in rows:
    val[(w, m)].append(float(v)); cpu[(w, m)].append(float(c)); gw[(w, m)].append(float(g))
    by_round[(r, w, m)] = float(v)
units = {"tcp1": "Gbit/s", "tcp4": "Gbit/s", "conns": "conn/s", "udp64": "pkt/s"}
modes = list(dict.fromkeys(r[2] for r in rows))
works = list(dict.fromkeys(r[1] for r in rows))
rounds = list(dict.fromkeys(r[0] for r in rows))
med = lambda xs: statistics.median(xs) if xs else float('nan')
def ratio(w, m, base):
    rs = [by_round[(r, w, m)] / by_round[(r, w, base)] for r in rounds
          if (r, w, base) in by_round and (r, w, m) in by_round and by_round[(r, w, base)] > 0]
    return "%.2f" % med(rs) if rs else "-"
print("\nmedians of %d rounds; ratios are medians of per-round ratios" % len(rounds))
print("cpu_s: machine-wide CPU seconds during the run; gw_s: CPU seconds of the gateway's program")
print("%-8s %-18s %14s %6s %6s %9s %10s" % ("workload", "mode", "median", "cpu_s", "gw_s", "/ceiling", "/kernel-ct"))
for w in works:
    for m in modes:
        v = med(val[(w, m)]); c = med(cpu[(w, m)])
        shown = ("%.2f %s" % (v, units[w])) if v < 1000 else ("%.0f %s" % (v, units[w]))
        g = med(gw[(w, m)])
        print("%-8s %-18s %14s %6.1f %6s %9s %10s" % (w, m, shown, c, ("%.1f" % g) if g > 0 else "-",
                                                      ratio(w, m, "nfq-ceil"), ratio(w, m, "kernel-ct")))
if "conntrackd" in modes and "conntrackd-1q" in modes:
    print("\nqueue scaling (conntrackd on the QUEUES range / on one queue):",
          ", ".join("%s %s" % (w, ratio(w, "conntrackd", "conntrackd-1q")) for w in works))
PY
