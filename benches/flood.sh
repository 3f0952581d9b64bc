#!/usr/bin/env bash
# SYN flood benchmark: does the gateway keep serving legitimate connections
# during and after a spoofed SYN flood? (issue 11, "What must be shown")
#
#   benches/flood.sh [RATE] [SECONDS]      (defaults: 50000 SYN/s for 6 s)
#
# For each gateway mode, in a fresh client -- gateway -- server namespace lab
# (as benches/e2e.sh builds it):
#   warm-up the client for 1 s, not counted (the server's threads, the
#           neighbour entries, the first TIME_WAIT sockets);
#   before  a real client (examples/shortconn, CONN_THREADS threads,
#           connect, 4-byte echo, close) for 3 s;
#   during  examples/synflood from the client's namespace: RATE * SECONDS
#           SYNs to the server's service port (198.19.0.2:FLOOD_PORT), from
#           random addresses of FLOOD_SRC (a /17 of 198.18.0.0/15 without the
#           client's 198.18.0.0/24), random ports and ISNs, bounded by SECONDS,
#           while the client runs for SECONDS;
#   after   the client right after the flood, for 1 s and then 2 s (the first
#           second shows how soon the gateway recovers; "after" is the 3 s).
# With FULL=1 every mode runs a second time with the flood at full speed
# (RATE 0: as fast as the sender goes, for SECONDS).
#
# Modes (gateway namespace):
#   none        plain forwarding, no rules
#   kernel-ct   nf_conntrack, strict: INVALID dropped, ESTABLISHED,RELATED
#               accepted, NEW only by SYN, nf_conntrack_tcp_loose=0
#   conntrackd  target/release/conntrackd on one queue (iptables FORWARD
#               -j NFQUEUE --queue-num 0, --queue 0) with CTD_RULES
#               (default rules/examples/stateful-allow-all.toml), logging at
#               info so that its final "stopped" line has the counters
#   conntrackd-synproxy
#               as conntrackd, with CTD_SYNPROXY_RULES (default
#               rules/examples/synproxy-allow-all.toml: every TCP connection
#               through conntrackd's SYN proxy, issue 21)
#   kernel-synproxy
#               the kernel's own SYNPROXY target, the standard recipe: raw
#               PREROUTING -i cli SYNs -j CT --notrack; FORWARD -i cli
#               INVALID,UNTRACKED TCP -j SYNPROXY KSP_OPTS (default
#               --sack-perm --timestamp --wscale 7 --mss 1460); FORWARD
#               INVALID -j DROP; policy ACCEPT (ESTABLISHED traffic and the
#               server's SYN+ACKs to the proxy's SYNs pass);
#               nf_conntrack_tcp_loose=0
#   kernel-synproxy-nots
#               the same without --timestamp (KSP_OPTS with --timestamp
#               removed). On a Linux >= 6.15 server, the kernel SYNPROXY's own
#               ACK to the server carries a TSecr the server never sent (it is
#               shifted by the proxy's timestamp offset), which the server's
#               SYN_RECV check rejects (TcpExtTSEcrRejected, column tsecr); the
#               connection then opens only when the client's next segment
#               carries an acceptable TSecr, else after the server's SYN+ACK
#               retransmission (~1 s later).
#
# The spoofed sources' replies: without a proxy the server answers each SYN
# with a SYN+ACK (and holds a SYN_RECV request or, once its listener's queue
# is full, sends a syncookie and holds nothing); with a proxy (conntrackd's or
# the kernel's) the gateway answers them itself with a cookie SYN+ACK from its
# own stack (OUTPUT), and the server should see none of them. The gateway
# routes FLOOD_SRC back over the client link via the client's own address (one
# neighbour entry, not one per spoofed address), so the replies cross the
# gateway as they would on a real gateway (without a proxy they cross its
# FORWARD chain: the trackers see SYN_SENT -> SYN_RECV), and the client's
# namespace drops them in its raw PREROUTING table. The gateway's rp_filter is
# off. Counted, in every mode: the flood's SYNs that reached the server
# (srv_syn: a counting rule, -s FLOOD_SRC --syn, first in the server's INPUT),
# the SYN+ACKs that came back to the client side from whichever sender (back),
# and the server's TcpExtTSEcrRejected (tsecr: ACKs refused in SYN_RECV for a
# TSecr it never sent).
#
# Table columns: legit conn/s before, during, in the first second after and
# in the 3 s after; the ratios during/before, after1/before, after/before;
# client errors before/during/after; the flood's SYNs sent and achieved rate;
# srv_syn, back and tsecr (above); for the conntrackd modes the daemon's peak
# RSS (VmHWM), whether it was still up at the end, its CPU time, and its
# eviction, refusal and SYN proxy counters from the final "stopped" line's
# reasons= (the whole lines follow the table); for the kernel-synproxy modes
# the gateway's /proc/net/stat/synproxy counters summed over CPUs.
#
# MODES, CONN_THREADS, FLOOD_SRC, FLOOD_PORT, CTD_RULES, CTD_SYNPROXY_RULES,
# CTD_ARGS, KSP_OPTS and FULL change a run. Needs root, iproute2, iptables, python3. Every load is
# bounded in time; namespaces and processes are removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."

RATE=${1:-50000}
SECS=${2:-6}
MODES=${MODES:-"none kernel-ct conntrackd"}
CONN_THREADS=${CONN_THREADS:-4}
FLOOD_SRC=${FLOOD_SRC:-198.18.128.0/17}
FLOOD_PORT=${FLOOD_PORT:-7000}
CTD_RULES=${CTD_RULES:-rules/examples/stateful-allow-all.toml}
CTD_SYNPROXY_RULES=${CTD_SYNPROXY_RULES:-rules/examples/synproxy-allow-all.toml}
KSP_OPTS=${KSP_OPTS:---sack-perm --timestamp --wscale 7 --mss 1460}
CTD_ARGS=${CTD_ARGS:-}
FULL=${FULL:-0}
BEFORE=3
SERVER=198.19.0.2
ID=fl$$
OUT=$(mktemp -d)
PIDS=()
NSS=()

[ "$(id -u)" -eq 0 ] || { echo "flood.sh needs root" >&2; exit 1; }
for t in ip iptables python3 timeout; do
    command -v $t >/dev/null || { echo "flood.sh needs $t" >&2; exit 1; }
done
case $RATE in ''|*[!0-9]*) echo "flood.sh: RATE must be a number of packets/s" >&2; exit 2 ;; esac
case $SECS in ''|*[!0-9]*) echo "flood.sh: SECONDS must be a whole number" >&2; exit 2 ;; esac
if [ "$SECS" -lt 1 ] || [ "$SECS" -gt 600 ]; then echo "flood.sh: SECONDS from 1 to 600" >&2; exit 2; fi
[ -r "$CTD_RULES" ] || { echo "flood.sh: no rules file $CTD_RULES" >&2; exit 2; }
[ -r "$CTD_SYNPROXY_RULES" ] || { echo "flood.sh: no rules file $CTD_SYNPROXY_RULES" >&2; exit 2; }
for m in $MODES; do
    case $m in
    none|kernel-ct|conntrackd|conntrackd-synproxy|kernel-synproxy|kernel-synproxy-nots) ;;
    *) echo "flood.sh: unknown mode $m" >&2; exit 2 ;;
    esac
done
# The spoofed range must be a benchmarking range and miss the lab's own hosts.
python3 - "$FLOOD_SRC" <<'PY' || exit 2
import ipaddress, sys
n = ipaddress.ip_network(sys.argv[1], strict=False)
lab = ipaddress.ip_network("198.18.0.0/15")
own = [ipaddress.ip_network("198.18.0.0/24"), ipaddress.ip_network("198.19.0.0/24")]
if n.version != 4 or not n.subnet_of(lab) or any(n.overlaps(o) for o in own):
    sys.exit("flood.sh: FLOOD_SRC must lie in 198.18.0.0/15 outside 198.18.0.0/24 and 198.19.0.0/24")
PY

# Kills what we started (by pid) and every process left in our namespaces,
# waits for them, removes the namespaces.
ns_kill() {
    local n=$1 p
    for p in $(ip netns pids "$n" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
}
cleanup() {
    local p n
    for p in "${PIDS[@]:-}"; do if [ -n "$p" ]; then kill "$p" 2>/dev/null || true; fi; done
    for n in "${NSS[@]:-}"; do [ -n "$n" ] && ns_kill "$n"; done
    wait 2>/dev/null || true   # our own children
    for n in "${NSS[@]:-}"; do if [ -n "$n" ]; then ip netns del "$n" 2>/dev/null || true; fi; done
    rm -rf "$OUT"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cargo build --release --quiet --bin conntrackd --examples
BIN=${CARGO_TARGET_DIR:-target}/release

# ---- the lab (fresh for each run) ---------------------------------------------
# The client connects from 16 addresses (as e2e.sh does from 64).
CONN_CLIENTS=$(seq -s, -f '198.18.0.%g' 2 17)
RUN=0
lab_up() {
    RUN=$((RUN + 1))
    C=$ID-$RUN-c; G=$ID-$RUN-g; S=$ID-$RUN-s
    local n a
    for n in $C $G $S; do NSS+=("$n"); ip netns add "$n"; ip -n "$n" link set lo up; done
    ip -n "$C" link add eth0 type veth peer name cli netns "$G"
    ip -n "$S" link add eth0 type veth peer name srv netns "$G"
    for a in ${CONN_CLIENTS//,/ }; do ip -n "$C" addr add "$a/24" dev eth0; done; ip -n "$C" link set eth0 up
    ip -n "$S" addr add $SERVER/24 dev eth0; ip -n "$S" link set eth0 up
    ip -n "$G" addr add 198.18.0.1/24 dev cli; ip -n "$G" link set cli up
    ip -n "$G" addr add 198.19.0.1/24 dev srv; ip -n "$G" link set srv up
    ip -n "$C" route add default via 198.18.0.1
    ip -n "$S" route add default via 198.19.0.1
    ip netns exec "$G" sh -c 'echo 1 > /proc/sys/net/ipv4/ip_forward'
    # Spoofed sources: accepted from the client link, their replies sent back
    # over it to the client's real address, where the client drops them.
    # shellcheck disable=SC2016 # expanded by the inner sh
    ip netns exec "$G" sh -c 'for f in /proc/sys/net/ipv4/conf/*/rp_filter; do echo 0 > "$f"; done'
    ip -n "$G" route add "$FLOOD_SRC" via 198.18.0.2 dev cli
    ip netns exec "$C" iptables -t raw -A PREROUTING -d "$FLOOD_SRC" -j DROP
    ip netns exec "$C" sh -c 'echo 1 > /proc/sys/net/ipv4/tcp_tw_reuse; echo "1024 65000" > /proc/sys/net/ipv4/ip_local_port_range'
    # The server keeps its defaults (syncookies on): a full SYN queue costs it
    # cookies, not memory. A counting rule for the flood's SYNs that reach it.
    ip netns exec "$S" iptables -A INPUT -s "$FLOOD_SRC" -p tcp --syn
    ip netns exec "$S" "$BIN/examples/shortconn" server $SERVER:7000 & PIDS+=($!)
    if [ "$FLOOD_PORT" != 7000 ]; then
        ip netns exec "$S" "$BIN/examples/shortconn" server "$SERVER:$FLOOD_PORT" & PIDS+=($!)
    fi
}

lab_down() {
    local n
    for n in $C $G $S; do ns_kill "$n"; done
    wait 2>/dev/null || true
    for n in $C $G $S; do ip netns del "$n" 2>/dev/null || true; done
    NSS=()
    PIDS=()
}

HELPER=""
CTD_LOG=""
mode_up() {
    HELPER=""
    case $1 in
    none) ;;
    kernel-ct)
        ip netns exec "$G" iptables -A FORWARD -m conntrack --ctstate INVALID -j DROP
        ip netns exec "$G" iptables -A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
        ip netns exec "$G" iptables -A FORWARD -p tcp --syn -m conntrack --ctstate NEW -j ACCEPT
        ip netns exec "$G" iptables -A FORWARD -p udp -m conntrack --ctstate NEW -j ACCEPT
        ip netns exec "$G" iptables -A FORWARD -j DROP
        ip netns exec "$G" sh -c 'echo 0 > /proc/sys/net/netfilter/nf_conntrack_tcp_loose'
        [ "$(ip netns exec "$G" cat /proc/sys/net/netfilter/nf_conntrack_tcp_loose)" = 0 ] \
          || echo "flood.sh: nf_conntrack_tcp_loose is not 0" >&2 ;;
    conntrackd|conntrackd-synproxy)
        local rules=$CTD_RULES
        [ "$1" = conntrackd-synproxy ] && rules=$CTD_SYNPROXY_RULES
        ip netns exec "$G" iptables -A FORWARD -j NFQUEUE --queue-num 0
        # shellcheck disable=SC2086 # CTD_ARGS: several words on purpose
        ip netns exec "$G" "$BIN/conntrackd" --rules "$rules" --state-file "" --queue 0 --log-level info $CTD_ARGS \
          > "$CTD_LOG" 2>&1 & HELPER=$!
        PIDS+=("$HELPER") ;;
    kernel-synproxy|kernel-synproxy-nots)
        local opts=$KSP_OPTS
        [ "$1" = kernel-synproxy-nots ] && opts=$(printf '%s\n' "$KSP_OPTS" | sed 's/--timestamp//')
        ip netns exec "$G" iptables -P FORWARD ACCEPT
        ip netns exec "$G" iptables -t raw -A PREROUTING -i cli -p tcp -m tcp --syn -j CT --notrack
        # shellcheck disable=SC2086 # opts: several words on purpose
        ip netns exec "$G" iptables -A FORWARD -i cli -p tcp -m conntrack --ctstate INVALID,UNTRACKED \
          -j SYNPROXY $opts
        ip netns exec "$G" iptables -A FORWARD -m conntrack --ctstate INVALID -j DROP
        ip netns exec "$G" sh -c 'echo 0 > /proc/sys/net/netfilter/nf_conntrack_tcp_loose'
        [ "$(ip netns exec "$G" cat /proc/sys/net/netfilter/nf_conntrack_tcp_loose)" = 0 ] \
          || echo "flood.sh: nf_conntrack_tcp_loose is not 0" >&2 ;;
    *) echo "flood.sh: unknown mode $1" >&2; exit 2 ;;
    esac
    sleep 1
    if [ -n "$HELPER" ] && ! kill -0 "$HELPER" 2>/dev/null; then
        echo "flood.sh: conntrackd did not start:" >&2; cat "$CTD_LOG" >&2; exit 1
    fi
}

# Stops conntrackd (SIGTERM, up to 5 s, then SIGKILL).
mode_down() {
    [ -n "$HELPER" ] || return 0
    kill -TERM "$HELPER" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$HELPER" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$HELPER" 2>/dev/null || true
    wait "$HELPER" 2>/dev/null || true
    HELPER=""
}

# "RATE ERRORS" of a client run of $1 seconds ("0 -" if it printed nothing).
client() {
    local out
    out=$(ip netns exec "$C" timeout $(($1 + 10)) "$BIN/examples/shortconn" client $SERVER:7000 \
            "$CONN_THREADS" "$1" "$CONN_CLIENTS" 2>/dev/null || true)
    local key rate _k errors
    read -r key rate _k errors <<< "$out"   # connections_per_second N errors E
    if [ "$key" = connections_per_second ]; then echo "$rate $errors"; else echo "0 -"; fi
}

# The packet count of the first rule of a chain.
rule_packets() {
    ip netns exec "$1" iptables -t "$2" -nvxL "$3" 2>/dev/null | awk 'NR == 3 {print $1; exit}'
}

# A TcpExt counter of namespace $1 (/proc/net/netstat is per namespace).
tcpext() {
    ip netns exec "$1" awk -v k="$2" '$1 == "TcpExt:" {
        if (!h) { for (i = 2; i <= NF; i++) n[i] = $i; h = 1 }
        else for (i = 2; i <= NF; i++) if (n[i] == k) { print $i; exit } }' /proc/net/netstat 2>/dev/null
}

# The gateway's kernel SYNPROXY counters (hex, one line per CPU), summed.
ksp_stats() {
    ip netns exec "$G" cat /proc/net/stat/synproxy 2>/dev/null | python3 -c '
import sys
rows = [l.split() for l in sys.stdin if l.strip()]
if len(rows) > 1:
    print("ksp: " + " ".join("%s=%d" % (k, sum(int(r[i], 16) for r in rows[1:]))
                              for i, k in enumerate(rows[0]) if i > 0))' || true
}

# One run: mode $1, flood rate $2 (0: full speed).
run() {
    local mode=$1 rate=$2 count b d a1 a2 f rss=- up=- cpu=- pkts=- stopped=""
    lab_up
    CTD_LOG=$OUT/conntrackd-$RUN.log
    mode_up "$mode"
    if [ "$rate" -eq 0 ]; then count=1000000000; else count=$((rate * SECS)); fi
    client 1 > /dev/null   # warm-up
    b=$(client $BEFORE)
    ip netns exec "$C" timeout $((SECS + 10)) "$BIN/examples/synflood" $SERVER:"$FLOOD_PORT" "$FLOOD_SRC" \
        "$rate" "$count" --seconds "$SECS" > "$OUT/synflood-$RUN" 2> "$OUT/synflood-$RUN.err" &
    f=$!; PIDS+=("$f")
    d=$(client "$SECS")
    wait "$f" || true
    a1=$(client 1)
    a2=$(client 2)
    if [ -n "$HELPER" ]; then
        if kill -0 "$HELPER" 2>/dev/null; then up=yes; else up=no; fi
        rss=$(awk '/^VmHWM:/ {printf "%.0f", $2 / 1024}' "/proc/$HELPER/status" 2>/dev/null || true)
        rss=${rss:--}
        # Its CPU time over the whole run (user + system), in seconds.
        cpu=$(awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$HELPER/stat" 2>/dev/null || true)
        cpu=${cpu:--}
    fi
    mode_down
    local srv back tsecr ksp=""
    srv=$(rule_packets "$S" filter INPUT); back=$(rule_packets "$C" raw PREROUTING)
    tsecr=$(tcpext "$S" TSEcrRejected)
    case $mode in
    conntrackd*)
        stopped=$(grep -a 'stopped' "$CTD_LOG" | tail -1 || true)
        echo "$RUN $mode rate=$rate: ${stopped:-no stopped line}" >> "$OUT/stopped"
        # Warnings and errors the daemon logged (the SYN proxy's send and
        # rewrite failures among them), for the record after the table.
        grep -aE ' (WARN|ERROR) ' "$CTD_LOG" | head -5 | sed "s/^/$RUN $mode rate=$rate: /" >> "$OUT/stopped" || true
        pkts=$(printf '%s\n' "$stopped" | grep -oE ' packets=[0-9]+' | head -1 | cut -d= -f2 || true)
        pkts=${pkts:--} ;;
    kernel-synproxy*)
        ksp=$(ksp_stats)
        echo "$RUN $mode rate=$rate: ${ksp:-no /proc/net/stat/synproxy}; gateway: $(ip netns exec "$G" conntrack -S 2>/dev/null \
              | awk '{for (i = 2; i <= NF; i++) { split($i, kv, "="); s[kv[1]] += kv[2] }} END {printf "conntrack invalid=%d drop=%d", s["invalid"], s["drop"]}' || true)" \
              >> "$OUT/stopped" ;;
    esac
    # The flood's line: sent N errors E seconds T rate R ...
    local fl
    fl=$(awk '{print $2, $4, $8}' "$OUT/synflood-$RUN" 2>/dev/null || true)
    [ -n "$fl" ] || { fl="0 - 0"; echo "synflood: $(cat "$OUT/synflood-$RUN.err")" >&2; }
    # Refusals and evictions as they appear in the stopped line's reasons=.
    local ctd
    ctd=$(printf '%s\n' "$stopped" | grep -owE '(evict[a-z_]*|half_open[a-z_]*|table_full|source_[a-z_]*|syn_cookie_[a-z_]*|synproxy_[a-z_]*)=[0-9]+' \
            | grep -v '^half_open=' | tr '\n' ' ' || true)
    # The kernel SYNPROXY's cookie counters.
    [ -z "$ksp" ] || ctd=$(printf '%s\n' "$ksp" | grep -owE '(syn_received|cookie_invalid|cookie_valid|cookie_retrans)=[0-9]+' | tr '\n' ' ')
    echo "$mode $rate $b $d $a1 $a2 $fl ${srv:--} ${back:--} ${tsecr:--} $rss $up $cpu $pkts ${ctd:--}" | tee -a "$OUT/results" >&2
    lab_down
}

RATES=$RATE
[ "$FULL" = 1 ] && [ "$RATE" != 0 ] && RATES="$RATE 0"
START=$(date -u '+%Y-%m-%d %H:%M UTC')
echo "# mode rate before err during err after1 err after2 err sent flood_errors flood_pps srv_syn back tsecr rss_mib up cpu_s packets ctd..." > "$OUT/results"
for r in $RATES; do
    for m in $MODES; do
        run "$m" "$r"
    done
done

python3 - "$OUT/results" "$OUT/stopped" "$START" "$(uname -r)" "$(nproc)" "$SECS" "$BEFORE" \
        "$CONN_THREADS" "$FLOOD_SRC" "$SERVER:$FLOOD_PORT" "$CTD_RULES" "$CTD_SYNPROXY_RULES" "$KSP_OPTS" \
        "$(cat /proc/sys/net/netfilter/nf_conntrack_max 2>/dev/null || echo -)" <<'PY'
import os, sys
res, stopped, start, kernel, cpus, secs, before, threads, src, dst, rules, sp_rules, ksp_opts, ct_max = sys.argv[1:]
rows = [l.split() for l in open(res) if not l.startswith('#')]
print("\nSYN flood benchmark (benches/flood.sh), %s, kernel %s, %s CPUs" % (start, kernel, cpus))
print("flood: %s s from %s to %s; client: %s threads, %s s before, %s s during, 1 s + 2 s after"
      % (secs, src, dst, threads, before, secs))
print("kernel-ct: nf_conntrack_max %s; conntrackd: %s, one queue; conntrackd-synproxy: %s; "
      "kernel-synproxy: SYNPROXY %s (-nots: without --timestamp)" % (ct_max, rules, sp_rules, ksp_opts))
print("conn/s: legitimate connections per second; /bef: ratio to before; err: client errors before/during/after")
print("sent/pps: the flood's SYNs and achieved rate; srv_syn: flood SYNs that reached the server; "
      "back: SYN+ACKs that came back to the client side (from the server, or from a proxy at the gateway)")
print("tsecr: the server's TcpExtTSEcrRejected (ACKs refused in SYN_RECV for a TSecr it never sent)")
print("cpu_s: conntrackd's CPU time over the run (user + system); ns/pkt: that per packet it decided")
hdr = ("mode", "rate", "before", "during", "after1", "after", "dur/bef", "aft1/bef", "aft/bef", "err",
       "sent", "pps", "srv_syn", "back", "tsecr", "rss_MiB", "up", "cpu_s", "ns/pkt",
       "gateway counters (conntrackd evictions/refusals/proxy; kernel SYNPROXY)")
fmt = "%-20s %6s %7s %7s %7s %7s %7s %8s %7s %9s %9s %7s %9s %9s %6s %7s %3s %6s %6s  %s"
print(fmt % hdr)
def f(x):
    try: return float(x)
    except ValueError: return None
def ratio(a, b):
    return "%.2f" % (a / b) if a is not None and b else "-"
for r in rows:
    mode, rate, b, eb, d, ed, a1, ea1, a2, ea2, sent, ferr, pps, srv, back, tsecr, rss, up, cpu, pkts = r[:20]
    ctd = " ".join(r[20:])
    per = "%.0f" % (f(cpu) * 1e9 / f(pkts)) if f(cpu) is not None and f(pkts) else "-"
    vb, vd, va1, va2 = f(b), f(d), f(a1), f(a2)
    va = (va1 + 2 * va2) / 3 if va1 is not None and va2 is not None else None
    if ea1 == "-" or ea2 == "-":
        ea = "-"
    else:
        ea = str(int(ea1) + int(ea2))
    print(fmt % (mode, rate if rate != "0" else "full", b, d, a1, "%.0f" % va if va is not None else "-",
                 ratio(vd, vb), ratio(va1, vb), ratio(va, vb), "%s/%s/%s" % (eb, ed, ea),
                 sent, pps, srv, back, tsecr, rss, up, cpu, per, ctd if ctd != "-" else ""))
if os.path.exists(stopped):
    print("\nconntrackd's final lines (and its warnings), the kernel SYNPROXY's counters:")
    for l in open(stopped):
        print("  " + l.rstrip())
PY
