#!/usr/bin/env bash
# A laptop's full tunnel and the server's managed exit NAT, in network namespaces with real daemons:
#
#   ns client                              ns server                                ns inet ("the internet")
#   roam0 100.64.0.2, fd00:64::2           roamsrv0 100.64.0.1, fd00:64::1
#   wlan0 198.18.1.2/24 fd00:1::2/64 <==> up1 198.18.1.1/24 fd00:1::1/64
#   default via 198.18.1.1, fd00:1::1      eth0 198.18.5.1/24 fd00:5::1/64  <==>  eth0 198.18.5.2/24 fd00:5::2/64
#   (the DHCP-like main table)             default via 198.18.5.2, fd00:5::2       lo 198.18.100.1, fd00:100::1
#
# The client routes 0.0.0.0/0 and ::/0 into its tunnel beside its own default routes, with no uplink
# named (so only the relay's fwmark keeps the relay out of the TUN) and strict rp_filter; the server
# has exit_interface = "eth0", so the clients leave masqueraded as 198.18.5.1 / fd00:5::1. ns inet
# knows no route to the clients or to the client's uplink: only the exit NAT can get answers back.
#
#   * full_tunnel_*: echo transfers (every byte compared both ways) and pings to ns inet over IPv4
#     and IPv6; ns inet sees the server's exit address; nftables counters on the client's wlan0
#     count nothing but the relay (a ping before the tunnel proves they would count a leak); after a
#     "network manager" rewrites the main table, and removed our rules, the tunnel still works;
#   * ipv4_only_*: a client with IPv4 virtual IPs only, on a host with IPv6: IPv6 fails at once
#     (unreachable), nothing leaves beside the relay;
#   * exit_interface_keeps_*: the server's eth0 learned its IPv6 address and default route from a
#     router advertisement; with exit mode forwarding they stay, and a new advertisement is heard;
#   * stop_and_sigkill_*: the client's rules and tables and the server's `nft list ruleset` and
#     accept_ra are the same after a stop as before the start, also after SIGKILL, a new start and a
#     stop; a leftover exit NAT table (as a daemon without owned tables would leave it) is removed.
#
# `fulltunnel.sh CASE` runs the cases whose name contains CASE. Each case prints one line; the file
# ends with "fulltunnel: N passed, M failed". Run as root.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=../../scripts/lib/netns.sh
. "$ROOT/scripts/lib/netns.sh"
NS_I="rt-i-$$"
EXTRA_NS=("$NS_I")
trap netns_cleanup EXIT

PASSED=0
FAILED=0
ONLY=${1:-}

i() { ip netns exec "$NS_I" "$@"; }

run() {
    local name=$1
    [ -n "$ONLY" ] && [[ "$name" != *"$ONLY"* ]] && return
    local rc start=$SECONDS
    ("$name") >"$WORK/case.out" 2>&1
    rc=$?
    if [ $rc -eq 0 ]; then
        PASSED=$((PASSED + 1))
        printf 'ok   %-52s %3ds  %s\n' "$name" $((SECONDS - start)) "$(tail -n 1 "$WORK/case.out")"
    else
        FAILED=$((FAILED + 1))
        printf 'FAIL %-52s %3ds\n' "$name" $((SECONDS - start))
        sed 's/^/     | /' "$WORK/case.out"
        for log in server client; do
            echo "     | --- $log log (tail)"; tail -n 15 "$WORK/$log.log" 2>/dev/null | sed 's/^/     | /'
        done
    fi
    # Each case builds its own namespaces.
    netns_cleanup_case
}

fail() {
    echo "$*"
    exit 1
}

# Stops what a case started and removes its namespaces, keeping $WORK for the next case.
netns_cleanup_case() {
    KEEP_WORK=1 netns_cleanup
    : >"$PIDFILE"
    rm -f "$WORK"/*.sock "$WORK"/*.log "$WORK"/*.ready "$WORK"/*.forwarding
}

topology() {
    netns_topology
    ip netns add "$NS_I"
    i ip link set lo up
    ip link add eth0 netns "$NS_S" type veth peer name eth0 netns "$NS_I"
    c ip -6 addr add fd00:1::2/64 dev wlan0 nodad
    s ip -6 addr add fd00:1::1/64 dev up1 nodad
    s ip addr add 198.18.5.1/24 dev eth0
    s ip -6 addr add fd00:5::1/64 dev eth0 nodad
    i ip addr add 198.18.5.2/24 dev eth0
    i ip -6 addr add fd00:5::2/64 dev eth0 nodad
    i ip addr add 198.18.100.1/32 dev lo
    i ip -6 addr add fd00:100::1/128 dev lo
    s ip link set eth0 up
    i ip link set eth0 up
    # The client's DHCP-like defaults, through the uplink; the server's, towards the internet.
    c ip route add default via 198.18.1.1 dev wlan0
    c ip -6 route add default via fd00:1::1 dev wlan0
    s ip route add default via 198.18.5.2 dev eth0
    s ip -6 route add default via fd00:5::2 dev eth0
    # A router as exit mode finds it: IPv6 accepts router advertisements (as without forwarding).
    s sysctl -qw net.ipv6.conf.eth0.accept_ra=1
    # Strict reverse-path filtering, as some distributions set it.
    c sysctl -qw net.ipv4.conf.all.rp_filter=1 net.ipv4.conf.wlan0.rp_filter=1
}

# configs: the two files; CLIENT_VIPS and CLIENT_ROUTES (TOML list bodies) change the client's.
configs() {
    local ck sk vips=${CLIENT_VIPS:-'"100.64.0.2", "fd00:64::2"'} routes=${CLIENT_ROUTES:-'"0.0.0.0/0", "::/0"'}
    ck=$("$ROAMTUN" genkey)
    sk=$("$ROAMTUN" genkey)
    cat >"$WORK/server.toml" <<EOF
private_key = "$sk"
listen = "198.18.1.1:7700"
virtual_ips = ["100.64.0.1", "fd00:64::1"]
client_prefixes = ["100.64.0.0/10", "fd00:64::/64"]
exit_interface = "eth0"
control_socket = "$WORK/server.sock"

[[peer]]
name = "laptop"
public_key = "$(echo "$ck" | "$ROAMTUN" pubkey)"
virtual_ips = [$vips]
EOF
    cat >"$WORK/client.toml" <<EOF
private_key = "$ck"
virtual_ips = [$vips]
routes = [$routes]
control_socket = "$WORK/client.sock"

[server]
address = "198.18.1.1:7700"
public_key = "$(echo "$sk" | "$ROAMTUN" pubkey)"
EOF
    chmod 600 "$WORK/server.toml" "$WORK/client.toml"
}

start_server() {
    rm -f "$WORK/server.sock"
    spawn "$WORK/server.log" "$NS_S" env ROAMTUN_LOG=info "$ROAMTUN" server -c "$WORK/server.toml"
    SERVER_PID=$LAST_PID
    wait_for 10 "server control socket" status_json "$WORK/server.sock" || fail "the server did not start"
}

start_client() {
    rm -f "$WORK/client.sock"
    spawn "$WORK/client.log" "$NS_C" env ROAMTUN_LOG=info "$ROAMTUN" client -c "$WORK/client.toml"
    CLIENT_PID=$LAST_PID
    wait_for 15 "client to connect to the server" client_connected || fail "the client did not connect"
}

# stop PID: SIGTERM and a bounded wait for the exit.
stop() {
    kill -TERM "$1"
    wait_for 10 "pid $1 to exit" sh -c "! kill -0 $1" || fail "pid $1 did not stop"
    wait "$1" 2>/dev/null
}

# Counters on the client's uplink: "relay" counts the relay's packets to the server, "other" every
# other packet leaving wlan0 but IPv6 neighbour discovery and multicast (the link's own chatter).
leak_watch() {
    c nft -f - <<'EOF'
table inet leakwatch {
    counter relay {}
    counter other {}
    chain out {
        type filter hook output priority 0; policy accept;
        oifname "wlan0" ip daddr 198.18.1.1 tcp dport 7700 counter name relay accept
        oifname "wlan0" ip6 daddr ff00::/8 accept
        oifname "wlan0" icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert, nd-router-solicit } accept
        oifname "wlan0" counter name other
    }
}
EOF
}

# counter NAME: its packet count.
counter() { c nft list counter inet leakwatch "$1" | sed -n 's/.*packets \([0-9]*\) bytes.*/\1/p'; }

# Everything of the client's routing a full tunnel touches, and the server's firewall and accept_ra.
client_routing() {
    c ip -4 rule
    c ip -6 rule
    # (An empty table does not exist: `ip` says so on stderr.)
    c ip -4 route show table 52100 2>/dev/null
    c ip -6 route show table 52100 2>/dev/null
    c ip -4 route show table main
}
server_state() {
    s nft list ruleset
    s sysctl net.ipv6.conf.eth0.accept_ra net.ipv4.ip_forward net.ipv6.conf.all.forwarding
}

# through_tunnel LABEL ADDR: echo transfers, a ping and the source the internet host sees.
through_tunnel() {
    local out seen
    out=$(c $APPS echo-clients "$2" 9000 --count 4 --size $((1 << 20)) --timeout 60) || fail "$1 echo to $2: $out"
    echo "$1: $out"
    c ping -c 2 -W 2 -q "$2" >/dev/null || fail "$1: no ping answer from $2 through the tunnel"
    seen=$(c $APPS ask-peer "$2" 9001) || fail "$1: no answer from the peer server on $2"
    echo "$1: $2 sees the client as $seen"
    case "$2" in
        *:*) [ "$seen" = fd00:5::1 ] || fail "$1: the internet host sees $seen, not the server's exit address fd00:5::1" ;;
        *) [ "$seen" = 198.18.5.1 ] || fail "$1: the internet host sees $seen, not the server's exit address 198.18.5.1" ;;
    esac
}

internet_apps() {
    local addr
    for addr in 198.18.100.1 fd00:100::1; do
        spawn "$WORK/inet.log" "$NS_I" $APPS echo-server "$addr" 9000 "$WORK/echo-$addr.ready"
        spawn "$WORK/inet.log" "$NS_I" $APPS peer-server "$addr" 9001 "$WORK/peer-$addr.ready"
        wait_ready "$WORK/echo-$addr.ready"
        wait_ready "$WORK/peer-$addr.ready"
    done
}

test_full_tunnel_carries_both_families_past_the_default_route_and_nothing_leaks() {
    topology
    configs
    leak_watch
    internet_apps
    # Without the tunnel, the pings leave through wlan0 (and get no answer): "other" counts them.
    c ping -c 1 -W 1 198.18.100.1 >/dev/null 2>&1
    c ping -c 1 -W 1 fd00:100::1 >/dev/null 2>&1
    local leaked_before
    leaked_before=$(counter other)
    [ "$leaked_before" -ge 2 ] || fail "the leak counter saw $leaked_before packets of two pings sent around the tunnel (nothing to check)"
    c nft reset counters table inet leakwatch >/dev/null
    start_server
    start_client
    [ "$(counter other)" = 0 ] || fail "$(counter other) packets left wlan0 outside the relay while the client started"
    through_tunnel ipv4 198.18.100.1
    through_tunnel ipv6 fd00:100::1
    [ -n "$(c ip -4 route show default)" ] || fail "the main table's default route is gone"
    # Only the relay's marked packets leave past the tunnel's table.
    c ss -tne dst 198.18.1.1:7700 | grep -q "fwmark:0x5254" || fail "the relay socket is not marked: $(c ss -tne dst 198.18.1.1:7700)"
    c ip route get 198.18.100.1 | grep -q "dev roam0" || fail "unmarked: $(c ip route get 198.18.100.1)"
    c ip route get 198.18.100.1 mark 0x5254 | grep -q "via 198.18.1.1 dev wlan0" || fail "marked: $(c ip route get 198.18.100.1 mark 0x5254)"
    c ip route get 198.18.1.1 | grep -q "dev wlan0" || fail "the server is not reached through wlan0: $(c ip route get 198.18.1.1)"
    echo "rules: $(c ip -4 rule | grep -c 520) IPv4, $(c ip -6 rule | grep -c 520) IPv6; table 52100: $(c ip -4 route show table 52100 | tr '\n' ';') $(c ip -6 route show table 52100 | tr '\n' ';')"

    # A network manager rewrites the main table (flushed, then its routes back with other metrics)
    # and has flushed our `not fwmark` rules: the uplink change that follows puts them back.
    c ip -4 rule del priority 5203
    c ip -6 rule del priority 5203
    c ip -4 route flush table main
    c ip -4 route add 198.18.1.0/24 dev wlan0 proto kernel scope link src 198.18.1.2 metric 600
    c ip -4 route add default via 198.18.1.1 dev wlan0 proto dhcp metric 600
    c ip -6 route del default via fd00:1::1 dev wlan0
    c ip -6 route add default via fd00:1::1 dev wlan0 proto ra metric 600
    wait_for 10 "the full tunnel's rules to be put back" sh -c \
        "ip netns exec $NS_C ip -4 rule show priority 5203 | grep -q 'not from all fwmark 0x5254 lookup 52100' &&
         ip netns exec $NS_C ip -6 rule show priority 5203 | grep -q 'not from all fwmark 0x5254 lookup 52100'" ||
        fail "the removed rules were not put back: $(c ip -4 rule show priority 5203) / $(c ip -6 rule show priority 5203)"
    grep -q "put back rules or routes that were removed" "$WORK/client.log" || fail "the log does not say that rules were put back"
    through_tunnel "ipv4 after the rewrite" 198.18.100.1
    through_tunnel "ipv6 after the rewrite" fd00:100::1

    local relay other
    relay=$(counter relay)
    other=$(counter other)
    echo "wlan0 out: $relay relay packets to 198.18.1.1:7700, $other other packets (before the tunnel: $leaked_before)"
    [ "$relay" -gt 100 ] || fail "only $relay relay packets for 16 MiB of echo (is the counter right?)"
    [ "$other" = 0 ] || fail "$other packets left wlan0 outside the relay: $(c nft list table inet leakwatch)"
}

test_ipv4_only_full_tunnel_blocks_ipv6_instead_of_leaking_it() {
    topology
    CLIENT_VIPS='"100.64.0.2"' CLIENT_ROUTES='"0.0.0.0/0"' configs
    leak_watch
    internet_apps
    start_server
    start_client
    through_tunnel ipv4 198.18.100.1
    # The host has IPv6 (wlan0 fd00:1::2, a default via fd00:1::1) but the tunnel carries none: an
    # app's IPv6 connection fails at once instead of leaving around the tunnel.
    local out start=$SECONDS
    out=$(c $APPS ask-peer fd00:100::1 9001 2>&1) && fail "an IPv6 connection got through: $out"
    echo "ipv6: $(echo "$out" | tail -n 1)"
    echo "$out" | grep -Eqi "unreachable|no route to host" || fail "the IPv6 connection did not fail as unreachable: $out"
    [ $((SECONDS - start)) -le 2 ] || fail "the IPv6 connection took $((SECONDS - start)) s to fail, not at once"
    c ping -6 -c 1 -W 1 fd00:100::1 >/dev/null 2>&1 && fail "an IPv6 ping got an answer"
    local other
    other=$(counter other)
    echo "wlan0 out: $(counter relay) relay packets, $other other packets; IPv6 to fd00:100::1 unreachable"
    [ "$other" = 0 ] || fail "$other packets left wlan0 outside the relay: $(c nft list table inet leakwatch)"
}

# ra_default: the server's default route from a router advertisement, if it has one.
ra_default() { s ip -6 route show default proto ra; }

test_exit_interface_keeps_its_router_advertised_address_and_route() {
    topology
    configs
    # eth0's address and default route come from ns inet's advertisements, not from us.
    s ip -6 route del default via fd00:5::2 dev eth0
    wait_for 10 "ns inet's link-local address" sh -c "ip netns exec $NS_I ip -6 addr show dev eth0 scope link | grep -qv tentative" ||
        fail "ns inet has no usable link-local address"
    wait_for 10 "the advertised default route" sh -c "ip netns exec $NS_I python3 $ROOT/tests/netns/router_advert.py eth0 fd00:5:: && [ -n \"\$(ip netns exec $NS_S ip -6 route show default proto ra)\" ]" ||
        fail "the server did not take the router advertisement (nothing to check)"
    local address
    address=$(s ip -6 addr show dev eth0 scope global dynamic | sed -n 's/.*inet6 \(fd00:5:[^/]*\)\/64.*/\1/p')
    [ -n "$address" ] || fail "no advertised (SLAAC) address on eth0 (nothing to check)"
    start_server
    [ "$(s sysctl -n net.ipv6.conf.all.forwarding)" = 1 ] || fail "exit mode did not turn IPv6 forwarding on"
    [ -n "$(ra_default)" ] || fail "turning forwarding on dropped the advertised default route"
    # Still listening to the router while forwarding: a new prefix gives a new address.
    wait_for 10 "an address from a new advertisement" sh -c "ip netns exec $NS_I python3 $ROOT/tests/netns/router_advert.py eth0 fd00:6:: && ip netns exec $NS_S ip -6 addr show dev eth0 | grep -q 'inet6 fd00:6:'" ||
        fail "a router advertisement during exit mode was ignored"
    s ip -6 addr show dev eth0 | grep -q "inet6 $address/64" || fail "the advertised address $address is gone"
    echo "forwarding on: $(ra_default | cut -d' ' -f1-5), $address kept, fd00:6::/64 learned while forwarding"
    stop "$SERVER_PID"
    [ "$(s sysctl -n net.ipv6.conf.eth0.accept_ra)" = 1 ] || fail "accept_ra on eth0 is $(s sysctl -n net.ipv6.conf.eth0.accept_ra) after the stop, not 1 as before"
}

test_stop_and_sigkill_leave_routing_and_ruleset_as_before() {
    topology
    configs
    internet_apps
    # The host's own firewall, which must stay as it is.
    s nft -f - <<'EOF'
table inet host {
    chain forward { type filter hook forward priority 10; policy accept; ct state invalid drop; }
}
EOF
    local client_before server_before
    client_before=$(client_routing)
    server_before=$(server_state)
    start_server
    start_client
    s nft list table inet roamtun_roamsrv0 >/dev/null || fail "no exit NAT table while running (nothing to check)"
    [ "$(s sysctl -n net.ipv6.conf.eth0.accept_ra)" = 2 ] || fail "accept_ra on eth0 is $(s sysctl -n net.ipv6.conf.eth0.accept_ra) while forwarding, not 2"
    [ "$(client_routing)" != "$client_before" ] || fail "the client changed no rule or table (nothing to check)"
    stop "$CLIENT_PID"
    stop "$SERVER_PID"
    [ "$(client_routing)" = "$client_before" ] || fail "after a stop the client's routing differs: $(diff <(echo "$client_before") <(client_routing))"
    [ "$(server_state)" = "$server_before" ] || fail "after a stop the server's ruleset or sysctls differ: $(diff <(echo "$server_before") <(server_state))"
    echo "stop: client rules and tables, server ruleset and sysctls as before"

    start_server
    start_client
    kill -9 "$CLIENT_PID" "$SERVER_PID"
    wait "$CLIENT_PID" "$SERVER_PID" 2>/dev/null
    [ "$(c ip -4 rule show priority 5203)" != "" ] || fail "SIGKILL left no client rule behind (nothing to check)"
    [ "$(s sysctl -n net.ipv6.conf.eth0.accept_ra)" = 2 ] || fail "SIGKILL left accept_ra as it was (nothing to check)"
    local owned_gone=yes
    s nft list table inet roamtun_roamsrv0 >/dev/null 2>&1 && owned_gone=no
    # A leftover as a daemon without an owned table would leave it; the next start removes it.
    s nft -f - <<'EOF'
table inet roamtun_roamsrv0 {
    chain postrouting { type nat hook postrouting priority srcnat; policy accept; }
}
EOF
    start_server
    start_client
    grep -q "removed the nftables table a previous daemon left behind" "$WORK/server.log" || fail "the server does not say it removed the leftover table"
    grep -q "full tunnel: removed the rules and routes a previous daemon left behind" "$WORK/client.log" || fail "the client does not say it removed the leftover rules"
    through_tunnel "after SIGKILL and a new start" 198.18.100.1
    stop "$CLIENT_PID"
    stop "$SERVER_PID"
    [ "$(client_routing)" = "$client_before" ] || fail "after SIGKILL, start and stop the client's routing differs: $(diff <(echo "$client_before") <(client_routing))"
    [ "$(server_state)" = "$server_before" ] || fail "after SIGKILL, start and stop the server's ruleset or sysctls differ: $(diff <(echo "$server_before") <(server_state))"
    echo "SIGKILL (owned exit table gone with the process: $owned_gone), start, stop: client rules and tables, server ruleset and sysctls as before"
}

for t in $(declare -F | awk '{print $3}' | grep '^test_'); do
    run "$t"
done
echo "fulltunnel: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
