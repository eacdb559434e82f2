#!/usr/bin/env bash
# The client on a router (CPE): a LAN host behind it keeps its sessions across the router's WAN
# switches, in both `[lan]` modes.
#
#   ns lan: eth0 198.19.50.10/24, default via 198.19.50.1
#        <== veth ==> lan0 198.19.50.1/24   ns client (the router): roam0 100.64.0.2, uplinks wlan0, wwan0
#   ns server: roamtun server on 198.18.0.1:7700 (over up1 and up2), roamsrv0 100.64.0.1
#
# The LAN host runs what a user behind the router would have open (tests/netns/apps.py): a transfer
# both ways, sha256-checked at both ends, an interactive session and a UDP stream, all to the server's
# virtual IP; in routed mode also a session the server side opens to the LAN host. The router's WAN
# changes underneath (a planned switch, a link taken down). Each case prints one line; the file ends
# with "router: N passed, M failed". Run as root.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=../../scripts/lib/netns.sh
. "$ROOT/scripts/lib/netns.sh"
NS_L="rt-l-$$"
EXTRA_NS=("$NS_L")
trap netns_cleanup EXIT
SERVER_ADDR=198.18.0.1
SIZE=${ROAMTUN_TRANSFER:-$((64 << 20))}

# shellcheck source=../../scripts/lib/roaming.sh
. "$ROOT/scripts/lib/roaming.sh"

l() { ip netns exec "$NS_L" "$@"; }

# setup MODE [SERVER_KNOWS]: the router with [lan] in MODE; with SERVER_KNOWS=yes the server lists
# the LAN as the peer's lan_prefixes.
setup() {
    netns_topology
    netns_second_uplink
    ip netns add "$NS_L"
    l ip link set lo up
    ip link add eth0 netns "$NS_L" type veth peer name lan0 netns "$NS_C"
    l ip addr add 198.19.50.10/24 dev eth0
    c ip addr add 198.19.50.1/24 dev lan0
    l ip link set eth0 up
    c ip link set lan0 up
    l ip route add default via 198.19.50.1
    CLIENT_EXTRA="uplinks = [\"wlan0\", \"wwan0\"]
[lan]
prefixes = [\"198.19.50.0/24\"]
mode = \"$1\"" netns_configs
    # The router's [[peer]] is the last table of server.toml.
    [ "${2:-}" = yes ] && echo 'lan_prefixes = ["198.19.50.0/24"]' >>"$WORK/server.toml"
    netns_start_daemons || fail "the daemons did not start"
}

# The LAN host's apps (and, with SERVER_OPENS=yes, a session the server side opens to it), the
# transfer paced at RATE bytes/s each way.
start_lan_workload() {
    local rate=$1
    spawn "$WORK/apps.log" "$NS_S" $APPS bulk-server 100.64.0.1 7200 "$WORK/bulk.ready"
    spawn "$WORK/apps.log" "$NS_S" $APPS echo-server 100.64.0.1 7000 "$WORK/echo.ready"
    spawn "$WORK/apps.log" "$NS_S" $APPS udp-echo-server 100.64.0.1 7003 "$WORK/udp.ready"
    spawn "$WORK/apps.log" "$NS_L" $APPS echo-server 198.19.50.10 7100 "$WORK/lecho.ready"
    for f in bulk echo udp lecho; do wait_ready "$WORK/$f.ready" || fail "app $f did not start"; done
    spawn "$WORK/bulk.out" "$NS_L" $APPS bulk-client 100.64.0.1 7200 --size "$SIZE" --rate "$rate" --timeout 240
    BULK_PID=$LAST_PID
    spawn "$WORK/interactive.out" "$NS_L" $APPS interactive 100.64.0.1 7000 "$WORK/stop" --timeout 240
    INTER_PID=$LAST_PID
    if [ "${SERVER_OPENS:-}" = yes ]; then
        spawn "$WORK/sinteractive.out" "$NS_S" $APPS interactive 198.19.50.10 7100 "$WORK/stop" --timeout 240
    else
        # No session from the server side: a stand-in that succeeds, so finish_workload has one.
        spawn "$WORK/sinteractive.out" "$NS_S" sh -c 'while [ ! -e "$1" ]; do sleep 0.1; done; echo "interactive: none (masquerade)"' sh "$WORK/stop"
    fi
    SINTER_PID=$LAST_PID
    spawn "$WORK/udp.out" "$NS_L" $APPS udp-stream 100.64.0.1 7003 "$WORK/stop" --timeout 240
    UDP_PID=$LAST_PID
}

# seen_as ADDRESS: the server's apps see the LAN host's connections come from ADDRESS.
seen_as() {
    spawn "$WORK/apps.log" "$NS_S" $APPS peer-server 100.64.0.1 7300 "$WORK/peer.ready"
    wait_ready "$WORK/peer.ready" || fail "peer-server did not start"
    local seen
    seen=$(l timeout 15 $APPS ask-peer 100.64.0.1 7300) || fail "the LAN host cannot reach the server's virtual IP"
    echo "source:      the server's app sees the LAN host as $seen"
    [ "$seen" = "$1" ] || fail "the server's app saw $seen, not $1"
}

forwarding() { c cat /proc/sys/net/ipv4/ip_forward; }

# Stops the router's client daemon and checks that it put back what it changed.
stop_router_and_check_restored() {
    kill "$CLIENT_PID"
    wait_for 10 "the client daemon to exit" sh -c "! kill -0 $CLIENT_PID"
    [ "$(forwarding)" = 0 ] || fail "ip_forward is still $(forwarding) after the client stopped"
    if c nft list table inet roamtun_lan_roam0 >/dev/null 2>&1; then
        fail "the LAN masquerade table is still there after the client stopped"
    fi
    echo "restored:    ip_forward 0 and no roamtun nftables table after the client stopped"
}

test_routed_lan_keeps_its_sessions_and_its_addresses_across_a_link_down() {
    setup routed yes
    [ "$(forwarding)" = 1 ] || fail "the router does not forward (ip_forward $(forwarding))"
    seen_as 198.19.50.10
    SERVER_OPENS=yes start_lan_workload $((16 << 20))
    progress 16
    EPOCH0=$(epoch)
    c ip link set wlan0 down
    wait_resumed || fail "the session did not resume"
    finish_workload
    expect_switches "unexpected:wlan0>wwan0"
    stop_router_and_check_restored
}

test_masqueraded_lan_needs_nothing_from_the_server_and_survives_switches() {
    setup masquerade
    c nft list table inet roamtun_lan_roam0 >/dev/null || fail "no LAN masquerade table on the router"
    seen_as 100.64.0.2
    start_lan_workload $((16 << 20))
    progress 16
    switch_to wwan0
    progress 8
    EPOCH0=$(epoch)
    c ip link set wwan0 down
    wait_resumed || fail "the session did not resume"
    finish_workload
    expect_switches "planned:wlan0>wwan0 unexpected:wwan0>wlan0"
    stop_router_and_check_restored
}

test_a_routed_lan_the_server_does_not_list_is_refused() {
    setup routed
    spawn "$WORK/apps.log" "$NS_S" $APPS peer-server 100.64.0.1 7300 "$WORK/peer.ready"
    wait_ready "$WORK/peer.ready" || fail "peer-server did not start"
    local out
    if out=$(l timeout 15 $APPS ask-peer 100.64.0.1 7300 2>&1); then
        fail "the server let a LAN host it was not told of connect: $out"
    fi
    echo "refused:     $(echo "$out" | tail -n 1)"
    local violated
    violated=$(json_get "$WORK/server.sock" 's["peers"][0]["counters"]["streams_violated"]')
    [ "$violated" -ge 1 ] || fail "the server does not count the refused stream (streams_violated $violated)"
    # The router's own apps are not affected.
    c timeout 15 $APPS ask-peer 100.64.0.1 7300 | grep -qx 100.64.0.2 || fail "the router's own app cannot connect"
}

for t in $(declare -F | awk '{print $3}' | grep '^test_'); do
    run "$t"
done
echo "router: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
