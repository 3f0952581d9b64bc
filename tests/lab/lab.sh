#!/usr/bin/env bash
# A manual lab: client -- gateway -- server network namespaces joined by veth
# (the same topology as the integration tests in tests/common/lab/), for
# trying conntrackd by hand and measuring it.
#
#   tests/lab/lab.sh up [PREFIX]       create namespaces PREFIX-{client,gw,server}
#   tests/lab/lab.sh down [PREFIX]     delete them
#   tests/lab/lab.sh bench [PREFIX]    iperf3 through the gateway (3 s, both directions)
#
# Then, for example:
#   ip netns exec ctdlab-gw iptables -A FORWARD -j NFQUEUE --queue-balance 0:1 --queue-bypass
#   ip netns exec ctdlab-gw target/release/conntrackd --rules rules/default.toml --queue 0-1
#   ip netns exec ctdlab-client curl http://198.19.0.2:8080/
#
# Addresses: client 198.18.0.2/24 and 2001:db8:1::2/64 (gateway .1 / ::1),
#            server 198.19.0.2/24 and 2001:db8:2::2/64 (gateway .1 / ::1).
set -euo pipefail

cmd=${1:-up}
p=${2:-ctdlab}
c=$p-client g=$p-gw s=$p-server

up() {
    ip netns add "$c"
    ip netns add "$g"
    ip netns add "$s"
    ip -n "$c" link add eth0 type veth peer name cli netns "$g"
    ip -n "$s" link add eth0 type veth peer name srv netns "$g"
    for ns in "$c" "$g" "$s"; do
        ip -n "$ns" link set lo up
        ip netns exec "$ns" sysctl -qw net.ipv6.conf.all.accept_ra=0 net.ipv6.conf.default.accept_ra=0
    done
    ip netns exec "$g" sysctl -qw net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1
    ip -n "$c" addr add 198.18.0.2/24 dev eth0
    ip -n "$c" addr add 2001:db8:1::2/64 dev eth0 nodad
    ip -n "$g" addr add 198.18.0.1/24 dev cli
    ip -n "$g" addr add 2001:db8:1::1/64 dev cli nodad
    ip -n "$g" addr add 198.19.0.1/24 dev srv
    ip -n "$g" addr add 2001:db8:2::1/64 dev srv nodad
    ip -n "$s" addr add 198.19.0.2/24 dev eth0
    ip -n "$s" addr add 2001:db8:2::2/64 dev eth0 nodad
    ip -n "$c" link set eth0 up
    ip -n "$s" link set eth0 up
    ip -n "$g" link set cli up
    ip -n "$g" link set srv up
    ip -n "$c" route add default via 198.18.0.1
    ip -n "$c" -6 route add default via 2001:db8:1::1
    ip -n "$s" route add default via 198.19.0.1
    ip -n "$s" -6 route add default via 2001:db8:2::1
    echo "lab up: $c -- $g -- $s"
}

down() {
    for ns in "$c" "$g" "$s"; do
        ip netns del "$ns" 2>/dev/null || true
    done
}

bench() {
    ip netns exec "$s" iperf3 -s -1 -D -p 5201 >/dev/null
    sleep 0.3
    echo "client -> server:"
    ip netns exec "$c" iperf3 -c 198.19.0.2 -p 5201 -t 3 -f g | grep -E 'sender|receiver'
    ip netns exec "$s" iperf3 -s -1 -D -p 5201 >/dev/null
    sleep 0.3
    echo "server -> client (-R):"
    ip netns exec "$c" iperf3 -c 198.19.0.2 -p 5201 -t 3 -f g -R | grep -E 'sender|receiver'
}

case $cmd in
    up) up ;;
    down) down ;;
    bench) bench ;;
    *) echo "usage: $0 up|down|bench [PREFIX]" >&2; exit 2 ;;
esac
