#!/usr/bin/env bash
# The client on a router (CPE): two LAN hosts behind it keep their sessions across the router's WAN
# switches, in both `[lan]` modes.
#
#   ns lan-a: eth0 198.19.50.10/24 ┐
#   ns lan-b: eth0 198.19.50.11/24 ┴ veth ==> bridge lan0 198.19.50.1/24 in ns client (the router):
#                                             roam0 100.64.0.2, uplinks wlan0, wwan0
#   ns server: roamtun server on 198.18.0.1:7700 (over up1 and up2), roamsrv0 100.64.0.1
#
# Each LAN host runs what a user behind the router would have open (tests/netns/apps.py): a transfer
# both ways, sha256-checked at both ends, an interactive session and a UDP stream, all to the server's
# virtual IP; in routed mode also a session the server side opens to each LAN host. The router's WAN
# changes underneath (a planned switch, then a link taken down). Two more cases give the LAN an IPv6
# prefix (fd00:50::/64, host fd00:50::10) beside the IPv4 one and the daemons IPv6 virtual IPs
# (fd00:64::1, fd00:64::2), in each mode. Each case prints one line; the file
# ends with "router: N passed, M failed". Run as root.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=../../scripts/lib/netns.sh
. "$ROOT/scripts/lib/netns.sh"
LAN_NS=("rt-a-$$" "rt-b-$$")
LAN_IP=(198.19.50.10 198.19.50.11)
EXTRA_NS=("${LAN_NS[@]}")
trap netns_cleanup EXIT
SERVER_ADDR=198.18.0.1

# shellcheck source=../../scripts/lib/roaming.sh
. "$ROOT/scripts/lib/roaming.sh"
# Two hosts share the router's tunnel: half the single-host transfer each.
SIZE=${ROAMTUN_TRANSFER:-$((128 << 20))}

# setup MODE [SERVER_KNOWS]: the router with [lan] in MODE; with SERVER_KNOWS=yes the server lists
# the LAN as the peer's lan_prefixes.
setup() {
    netns_topology
    netns_second_uplink
    c ip link add lan0 type bridge
    c ip addr add 198.19.50.1/24 dev lan0
    c ip link set lan0 up
    local i
    for i in 0 1; do
        ip netns add "${LAN_NS[$i]}"
        ip netns exec "${LAN_NS[$i]}" ip link set lo up
        ip link add eth0 netns "${LAN_NS[$i]}" type veth peer name "lan0p$i" netns "$NS_C"
        ip netns exec "${LAN_NS[$i]}" ip addr add "${LAN_IP[$i]}/24" dev eth0
        ip netns exec "${LAN_NS[$i]}" ip link set eth0 up
        c ip link set "lan0p$i" master lan0 up
        ip netns exec "${LAN_NS[$i]}" ip route add default via 198.19.50.1
    done
    CLIENT_EXTRA="uplinks = [\"wlan0\", \"wwan0\"]
[lan]
prefixes = [\"198.19.50.0/24\"]
mode = \"$1\"" netns_configs
    # The router's [[peer]] is the last table of server.toml.
    [ "${2:-}" = yes ] && echo 'lan_prefixes = ["198.19.50.0/24"]' >>"$WORK/server.toml"
    netns_start_daemons || fail "the daemons did not start"
}

# Every LAN host's apps (and, with SERVER_OPENS=yes, a session the server side opens to each), each
# transfer paced at RATE bytes/s each way.
start_lan_workload() {
    local rate=$1 i
    # The verdicts of an earlier case's servers must not count for this one.
    : >"$WORK/apps.log"
    spawn "$WORK/apps.log" "$NS_S" $APPS bulk-server 100.64.0.1 7200 "$WORK/bulk.ready"
    spawn "$WORK/apps.log" "$NS_S" $APPS echo-server 100.64.0.1 7000 "$WORK/echo.ready"
    spawn "$WORK/apps.log" "$NS_S" $APPS udp-echo-server 100.64.0.1 7003 "$WORK/udp.ready"
    for i in 0 1; do
        spawn "$WORK/apps.log" "${LAN_NS[$i]}" $APPS echo-server "${LAN_IP[$i]}" 7100 "$WORK/lecho$i.ready"
    done
    for f in bulk echo udp lecho0 lecho1; do wait_ready "$WORK/$f.ready" || fail "app $f did not start"; done
    WAIT_FIRST=()
    WAIT_AFTER=()
    UDP_PIDS=()
    for i in 0 1; do
        spawn "$WORK/bulk$i.out" "${LAN_NS[$i]}" $APPS bulk-client 100.64.0.1 7200 --size "$SIZE" --rate "$rate" --timeout 240
        WAIT_FIRST+=("$LAST_PID")
        spawn "$WORK/interactive$i.out" "${LAN_NS[$i]}" $APPS interactive 100.64.0.1 7000 "$WORK/stop" --timeout 240
        WAIT_AFTER+=("$LAST_PID")
        if [ "${SERVER_OPENS:-}" = yes ]; then
            spawn "$WORK/sinteractive$i.out" "$NS_S" $APPS interactive "${LAN_IP[$i]}" 7100 "$WORK/stop" --timeout 240
            WAIT_AFTER+=("$LAST_PID")
        fi
        spawn "$WORK/udp$i.out" "${LAN_NS[$i]}" $APPS udp-stream 100.64.0.1 7003 "$WORK/stop" --timeout 240
        UDP_PIDS+=("$LAST_PID")
    done
}

# Waits for every LAN host's apps; fails unless all of them verified what they got.
finish_lan_workload() {
    local rc=0 pid i
    for pid in "${WAIT_FIRST[@]}"; do wait "$pid" || rc=1; done
    touch "$WORK/stop"
    for pid in "${WAIT_AFTER[@]}"; do wait "$pid" || rc=1; done
    for pid in "${UDP_PIDS[@]}"; do wait "$pid" || true; done
    for i in 0 1; do
        echo "bulk:        ${LAN_IP[$i]}: $(tail -n 1 "$WORK/bulk$i.out")"
        echo "interactive: ${LAN_IP[$i]} opened: $(tail -n 1 "$WORK/interactive$i.out" | sed 's/^interactive: //')"
        if [ "${SERVER_OPENS:-}" = yes ]; then
            echo "interactive: server opened to ${LAN_IP[$i]}: $(tail -n 1 "$WORK/sinteractive$i.out" | sed 's/^interactive: //')"
        fi
        echo "udp-stream:  ${LAN_IP[$i]}: $(tail -n 1 "$WORK/udp$i.out" | sed 's/^udp-stream: //')"
    done
    local verified
    verified=$(grep -c "bulk-server: received $SIZE/$SIZE bytes, sha256 ok" "$WORK/apps.log")
    [ "$verified" -eq 2 ] || { echo "the server side verified $verified of 2 transfers"; rc=1; }
    [ $rc -eq 0 ] || fail "an app saw a failure"
}

# seen_as I ADDRESS: the server's apps see LAN host I's connections come from ADDRESS.
seen_as() {
    [ -e "$WORK/peer.ready" ] || {
        spawn "$WORK/apps.log" "$NS_S" $APPS peer-server 100.64.0.1 7300 "$WORK/peer.ready"
        wait_ready "$WORK/peer.ready" || fail "peer-server did not start"
    }
    local seen
    seen=$(ip netns exec "${LAN_NS[$1]}" timeout 15 $APPS ask-peer 100.64.0.1 7300) ||
        fail "LAN host ${LAN_IP[$1]} cannot reach the server's virtual IP"
    echo "source:      the server's app sees LAN host ${LAN_IP[$1]} as $seen"
    [ "$seen" = "$2" ] || fail "the server's app saw $seen, not $2"
}

forwarding() { c cat /proc/sys/net/ipv4/ip_forward; }
server_session_is_not() { [ "$(json_get "$WORK/server.sock" 's["peers"][0]["session"]')" != "$1" ]; }

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

# lan_keeps_its_sessions MODE SERVER_KNOWS: both LAN hosts' apps across a planned switch and a link
# taken down, each seen by the server as it should be in MODE.
lan_keeps_its_sessions() {
    setup "$1" "$2"
    [ "$(forwarding)" = 1 ] || fail "the router does not forward (ip_forward $(forwarding))"
    if [ "$1" = masquerade ]; then
        c nft list table inet roamtun_lan_roam0 >/dev/null || fail "no LAN masquerade table on the router"
    fi
    local lan
    lan=$(json_get "$WORK/client.sock" 's["lan"]["mode"] + " " + ",".join(s["lan"]["prefixes"])')
    [ "$lan" = "$1 198.19.50.0/24" ] || fail "the router's status shows its [lan] as '$lan'"
    lan=$(json_get "$WORK/server.sock" '",".join(s["peers"][0]["lan_prefixes"])')
    [ "$lan" = "$([ "$2" = yes ] && echo 198.19.50.0/24)" ] || fail "the server's status shows the peer's LAN as '$lan'"
    "$ROAMTUN" status --socket "$WORK/client.sock" | grep -qx "  lan:          198.19.50.0/24 ($1)" ||
        fail "roamtun status does not show the LAN"
    local i
    for i in 0 1; do
        if [ "$1" = routed ]; then seen_as "$i" "${LAN_IP[$i]}"; else seen_as "$i" 100.64.0.2; fi
    done
    start_lan_workload $((8 << 20))
    progress 16
    switch_to wwan0
    progress 16
    EPOCH0=$(epoch)
    c ip link set wwan0 down
    wait_resumed || fail "the session did not resume"
    finish_lan_workload
    expect_switches "planned:wlan0>wwan0 unexpected:wwan0>wlan0"
    stop_router_and_check_restored
}

test_routed_lan_keeps_its_sessions_and_its_addresses_across_switches() {
    SERVER_OPENS=yes lan_keeps_its_sessions routed yes
}

test_masqueraded_lan_needs_nothing_from_the_server_and_survives_switches() {
    lan_keeps_its_sessions masquerade no
}

# An IPv6 LAN (fd00:50::/64) beside the IPv4 one, in MODE: both daemons get IPv6 virtual IPs, the
# router a second LAN prefix, and in routed mode the server lists it. LAN host 0 (fd00:50::10) runs
# a transfer both ways, an interactive session and a UDP stream to the server's IPv6 virtual IP
# across a planned switch; the server's app sees it as SEEN.
ipv6_lan_keeps_its_sessions() {
    local mode=$1 seen=$2
    setup "$mode" "$([ "$mode" = routed ] && echo yes)"
    kill "$CLIENT_PID" "$SERVER_PID"
    wait_for 10 "the daemons to stop" sh -c "! kill -0 $CLIENT_PID 2>/dev/null && ! kill -0 $SERVER_PID 2>/dev/null"
    c ip -6 addr add fd00:50::1/64 dev lan0 nodad
    ip netns exec "${LAN_NS[0]}" ip -6 addr add fd00:50::10/64 dev eth0 nodad
    ip netns exec "${LAN_NS[0]}" ip -6 route add default via fd00:50::1
    sed -i -e 's|^virtual_ips = \["100.64.0.1"\]|virtual_ips = ["100.64.0.1", "fd00:64::1"]|' \
        -e 's|^client_prefixes = \["100.64.0.0/10"\]|client_prefixes = ["100.64.0.0/10", "fd00:64::/64"]|' \
        -e 's|^virtual_ips = \["100.64.0.2"\]|virtual_ips = ["100.64.0.2", "fd00:64::2"]|' \
        -e 's|^lan_prefixes = \["198.19.50.0/24"\]|lan_prefixes = ["198.19.50.0/24", "fd00:50::/64"]|' "$WORK/server.toml"
    sed -i -e 's|^virtual_ips = \["100.64.0.2"\]|virtual_ips = ["100.64.0.2", "fd00:64::2"]|' \
        -e 's|^routes = \["100.64.0.0/10"\]|routes = ["100.64.0.0/10", "fd00:64::/64"]|' \
        -e 's|^prefixes = \["198.19.50.0/24"\]|prefixes = ["198.19.50.0/24", "fd00:50::/64"]|' "$WORK/client.toml"
    netns_start_daemons || fail "the daemons did not start with IPv6"
    [ "$(c cat /proc/sys/net/ipv6/conf/all/forwarding)" = 1 ] || fail "the router does not forward IPv6"
    spawn "$WORK/apps.log" "$NS_S" $APPS peer-server fd00:64::1 7300 "$WORK/peer.ready"
    spawn "$WORK/apps.log" "$NS_S" $APPS bulk-server fd00:64::1 7200 "$WORK/bulk.ready"
    spawn "$WORK/apps.log" "$NS_S" $APPS echo-server fd00:64::1 7000 "$WORK/echo.ready"
    spawn "$WORK/apps.log" "$NS_S" $APPS udp-echo-server fd00:64::1 7003 "$WORK/udp.ready"
    for f in peer bulk echo udp; do wait_ready "$WORK/$f.ready" || fail "app $f did not start"; done
    local got
    got=$(ip netns exec "${LAN_NS[0]}" timeout 15 $APPS ask-peer fd00:64::1 7300) ||
        fail "LAN host fd00:50::10 cannot reach the server's IPv6 virtual IP"
    echo "source:      the server's app sees LAN host fd00:50::10 as $got"
    [ "$got" = "$seen" ] || fail "the server's app saw $got, not $seen"
    spawn "$WORK/bulk.out" "${LAN_NS[0]}" $APPS bulk-client fd00:64::1 7200 --size "$SIZE" --rate $((8 << 20)) --timeout 240
    local bulk=$LAST_PID
    spawn "$WORK/interactive.out" "${LAN_NS[0]}" $APPS interactive fd00:64::1 7000 "$WORK/stop" --timeout 240
    local interactive=$LAST_PID
    spawn "$WORK/udp.out" "${LAN_NS[0]}" $APPS udp-stream fd00:64::1 7003 "$WORK/stop" --timeout 240
    local udp=$LAST_PID
    progress 16
    switch_to wwan0
    progress 16
    wait "$bulk" || fail "the IPv6 transfer failed: $(tail -n 2 "$WORK/bulk.out")"
    touch "$WORK/stop"
    wait "$interactive" || fail "the IPv6 interactive session failed: $(tail -n 2 "$WORK/interactive.out")"
    wait "$udp" || true
    grep -q "bulk-server: received $SIZE/$SIZE bytes, sha256 ok" "$WORK/apps.log" ||
        fail "the server side did not verify the IPv6 transfer"
    echo "bulk:        fd00:50::10: $(tail -n 1 "$WORK/bulk.out")"
    echo "interactive: fd00:50::10: $(tail -n 1 "$WORK/interactive.out" | sed 's/^interactive: //')"
    echo "udp-stream:  fd00:50::10: $(tail -n 1 "$WORK/udp.out" | sed 's/^udp-stream: //')"
    grep -Eq 'echoed [1-9]' "$WORK/udp.out" || fail "no IPv6 datagram came back: $(tail -n 1 "$WORK/udp.out")"
    expect_switches "planned:wlan0>wwan0"
}

test_an_ipv6_lan_routed_keeps_its_sessions_and_its_addresses() {
    ipv6_lan_keeps_its_sessions routed fd00:50::10
}

test_an_ipv6_lan_masqueraded_keeps_its_sessions() {
    ipv6_lan_keeps_its_sessions masquerade fd00:64::2
}

test_a_routed_lan_is_refused_until_a_reload_lists_it() {
    setup routed
    spawn "$WORK/apps.log" "$NS_S" $APPS peer-server 100.64.0.1 7300 "$WORK/peer.ready"
    wait_ready "$WORK/peer.ready" || fail "peer-server did not start"
    local out
    if out=$(ip netns exec "${LAN_NS[0]}" timeout 15 $APPS ask-peer 100.64.0.1 7300 2>&1); then
        fail "the server let a LAN host it was not told of connect: $out"
    fi
    echo "refused:     $(echo "$out" | tail -n 1)"
    local violated
    violated=$(json_get "$WORK/server.sock" 's["peers"][0]["counters"]["streams_violated"]')
    [ "$violated" -ge 1 ] || fail "the server does not count the refused stream (streams_violated $violated)"
    # The router's own apps are not affected.
    c timeout 15 $APPS ask-peer 100.64.0.1 7300 | grep -qx 100.64.0.2 || fail "the router's own app cannot connect"
    # The server learns of the LAN by a reload, without a restart: the route into its TUN comes,
    # the router's session starts again with its LAN, and both sides reach each other.
    local session
    session=$(json_get "$WORK/server.sock" 's["peers"][0]["session"]')
    echo 'lan_prefixes = ["198.19.50.0/24"]' >>"$WORK/server.toml"
    out=$("$ROAMTUN" reload --socket "$WORK/server.sock" 2>&1) || fail "roamtun reload failed: $out"
    [[ "$out" == *"routes into the TUN: added (198.19.50.0/24), removed ()"* ]] || fail "the reload's answer: $out"
    [[ "$out" != *"restart"* ]] || fail "the reload asks for a restart: $out"
    s ip route show 198.19.50.0/24 | grep -q "dev roamsrv0" || fail "no route to the LAN into the server's TUN: $(s ip route)"
    wait_for 20 "the router's new session" server_session_is_not "$session" || fail "the router's session did not start again"
    wait_for 20 "the router to reconnect" client_connected || fail "the router did not reconnect"
    seen_as 0 "${LAN_IP[0]}"
    spawn "$WORK/apps.log" "${LAN_NS[1]}" $APPS peer-server "${LAN_IP[1]}" 7301 "$WORK/lanpeer.ready"
    wait_ready "$WORK/lanpeer.ready" || fail "the LAN host's peer-server did not start"
    local back
    back=$(s timeout 15 $APPS ask-peer "${LAN_IP[1]}" 7301) || fail "the server side cannot reach LAN host ${LAN_IP[1]}"
    echo "reloaded:    $out; then ${LAN_IP[0]} reached the server as itself and the server reached ${LAN_IP[1]} (seen as $back)"
    # And taken away again: the route goes.
    sed -i '/^lan_prefixes = /d' "$WORK/server.toml"
    out=$("$ROAMTUN" reload --socket "$WORK/server.sock" 2>&1) || fail "roamtun reload failed: $out"
    [[ "$out" == *"routes into the TUN: added (), removed (198.19.50.0/24)"* ]] || fail "the second reload's answer: $out"
    [ -z "$(s ip route show 198.19.50.0/24)" ] || fail "the LAN's route stayed: $(s ip route show 198.19.50.0/24)"
    echo "reloaded:    $out"
}

for t in $(declare -F | awk '{print $3}' | grep '^test_'); do
    run "$t"
done
echo "router: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
