#!/usr/bin/env bash
# A server among several clients, without exit mode: each client reaches the server's virtual IP and
# nothing else, hits its own limits and nobody else's, and cannot speak for another address.
#
#   ns laptop: roam0 100.64.0.2   wlan0 198.18.1.2 <== veth ==> up1 198.18.1.1   ns server: roamsrv0 100.64.0.1
#   ns phone : roam0 100.64.0.3   wlan0 198.18.4.2 <== veth ==> up4 198.18.4.1              (listens on both)
#   ns behind:                    eth0  198.18.9.2 <== veth ==> up9 198.18.9.1   (a network behind the server)
#
# The laptop routes 100.64.0.0/10, 198.18.9.0/24 and 198.18.4.1/32 into its tunnel, so its apps try the
# server's other addresses, the network behind it and the phone. The server runs with
# `max_flows_per_session = 40`, and 20 of the laptop's own in its `[[peer]]` table (a reload raises it
# to 25); the last case restarts it with `allowed_destinations = ["198.18.9.0/24"]`.
# Each case prints one line; the file ends with "isolation: N passed, M failed". Run as root.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=../../scripts/lib/netns.sh
. "$ROOT/scripts/lib/netns.sh"
NS_P="rt-p-$$"
NS_I="rt-i-$$"
EXTRA_NS=("$NS_P" "$NS_I")
trap netns_cleanup EXIT

PASSED=0
FAILED=0
ONLY=${1:-}

p() { ip netns exec "$NS_P" "$@"; }
i() { ip netns exec "$NS_I" "$@"; }

run() {
    local name=$1
    [ -n "$ONLY" ] && [[ "$name" != *"$ONLY"* ]] && return
    local rc start=$SECONDS
    ("$name") >"$WORK/case.out" 2>&1
    rc=$?
    if [ $rc -eq 0 ]; then
        PASSED=$((PASSED + 1))
        printf 'ok   %-48s %3ds  %s\n' "$name" $((SECONDS - start)) "$(tail -n 1 "$WORK/case.out")"
    else
        FAILED=$((FAILED + 1))
        printf 'FAIL %-48s %3ds\n' "$name" $((SECONDS - start))
        sed 's/^/     | /' "$WORK/case.out"
        for log in server laptop phone; do
            echo "     | --- $log log (tail)"; tail -n 10 "$WORK/$log.log" | sed 's/^/     | /'
        done
    fi
}

fail() {
    echo "$*"
    exit 1
}

topology() {
    netns_topology
    ip netns add "$NS_P"
    ip netns add "$NS_I"
    ip link add wlan0 netns "$NS_P" type veth peer name up4 netns "$NS_S"
    ip link add up9 netns "$NS_S" type veth peer name eth0 netns "$NS_I"
    p ip link set lo up
    i ip link set lo up
    p ip addr add 198.18.4.2/24 dev wlan0
    s ip addr add 198.18.4.1/24 dev up4
    s ip addr add 198.18.9.1/24 dev up9
    i ip addr add 198.18.9.2/24 dev eth0
    p ip link set wlan0 up
    s ip link set up4 up
    s ip link set up9 up
    i ip link set eth0 up
    # No masquerade: the network behind routes the clients' virtual IPs back through the server.
    i ip route add 100.64.0.0/10 via 198.18.9.1
}

# write_server_config EXTRA [LAPTOP_FLOWS]: the server's config with both peers; EXTRA goes before
# the tables; the laptop may have LAPTOP_FLOWS flows (20 unless given).
write_server_config() {
    cat >"$WORK/server.toml" <<EOF
private_key = "$SERVER_KEY"
listen = ["198.18.1.1:7700", "198.18.4.1:7700"]
virtual_ips = ["100.64.0.1"]
client_prefixes = ["100.64.0.0/10"]
control_socket = "$WORK/server.sock"
$1

[tuning]
max_flows_per_session = 40

[[peer]]
name = "laptop"
public_key = "$(echo "$LAPTOP_KEY" | "$ROAMTUN" pubkey)"
virtual_ips = ["100.64.0.2"]
max_flows_per_session = ${2:-20}

[[peer]]
name = "phone"
public_key = "$(echo "$PHONE_KEY" | "$ROAMTUN" pubkey)"
virtual_ips = ["100.64.0.3"]
EOF
    chmod 600 "$WORK/server.toml"
}

# write_client_config NAME KEY VIP SERVER_ADDR ROUTES
write_client_config() {
    cat >"$WORK/$1.toml" <<EOF
private_key = "$2"
virtual_ips = ["$3"]
routes = [$5]
control_socket = "$WORK/$1.sock"

[server]
address = "$4:7700"
public_key = "$(echo "$SERVER_KEY" | "$ROAMTUN" pubkey)"
EOF
    chmod 600 "$WORK/$1.toml"
}

connected() {
    status_json "$WORK/$1.sock" | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["peers"][0]["connected"] else 1)'
}

start_server() {
    rm -f "$WORK/server.sock"
    spawn "$WORK/server.log" "$NS_S" env ROAMTUN_LOG=info "$ROAMTUN" server -c "$WORK/server.toml"
    echo "$LAST_PID" >"$WORK/server.pid"
    wait_for 10 "server control socket" test -S "$WORK/server.sock"
}

# server_counter PEER KEY: one counter of a peer's session in the server's status.
server_counter() {
    json_get "$WORK/server.sock" "next(p for p in s['peers'] if p['name'] == '$1')['counters']['$2']"
}

server_peer() {
    json_get "$WORK/server.sock" "next(p for p in s['peers'] if p['name'] == '$1')['$2']"
}

counter_above() { [ "$(server_counter "$1" "$2")" -gt "$3" ]; }
peer_field_is() { [ "$(server_peer "$1" "$2")" = "$3" ]; }

start_apps() {
    spawn "$WORK/apps.log" "$NS_S" $APPS echo-server 0.0.0.0 7000 "$WORK/echo.ready"
    spawn "$WORK/apps.log" "$NS_S" $APPS peer-server 0.0.0.0 7001 "$WORK/peer.ready"
    spawn "$WORK/apps.log" "$NS_S" $APPS udp-echo-server 0.0.0.0 7003 "$WORK/udp.ready"
    spawn "$WORK/apps.log" "$NS_S" $APPS udp-sink 0.0.0.0 7005 "$WORK/sink.ready" "$WORK/sink.out"
    spawn "$WORK/apps.log" "$NS_I" $APPS peer-server 198.18.9.2 8081 "$WORK/inet.ready"
    spawn "$WORK/apps.log" "$NS_I" $APPS udp-echo-server 198.18.9.2 7003 "$WORK/inetudp.ready"
    spawn "$WORK/apps.log" "$NS_P" $APPS peer-server 100.64.0.3 7100 "$WORK/phone.ready"
    spawn "$WORK/apps.log" "$NS_P" $APPS udp-echo-server 100.64.0.3 7103 "$WORK/phoneudp.ready"
    local f
    for f in echo peer udp sink inet inetudp phone phoneudp; do wait_ready "$WORK/$f.ready" || return 1; done
}

test_the_servers_virtual_ip_works() {
    local seen
    seen=$(c $APPS ask-peer 100.64.0.1 7001) || fail "no TCP to the server's virtual IP"
    [ "$seen" = 100.64.0.2 ] || fail "the server app saw $seen"
    c $APPS udp-client 100.64.0.1 7003 --count 100 --window 8 --timeout 10 || fail "UDP to the server's virtual IP"
    echo "100.64.0.1: TCP (the server app saw 100.64.0.2) and 100 UDP echoes"
}

test_the_server_hosts_other_addresses_are_refused() {
    local a
    for a in 198.18.9.1 198.18.4.1; do
        c $APPS refused "$a" 7001 --limit 1.0 || fail "TCP to $a:7001 was not refused fast"
        c $APPS udp-silent "$a" 7003 --wait 1.0 || fail "UDP to $a:7003 got an answer"
    done
    echo "198.18.9.1 and 198.18.4.1 (the server's link addresses): TCP refused fast, UDP unanswered"
}

test_loopback_is_refused() {
    local before
    before=$(server_counter laptop datagrams_forbidden)
    # Apps cannot route 127.0.0.1 into a TUN: the packets are written into roam0 directly.
    c $APPS inject roam0 syn 100.64.0.2:45000 127.0.0.1:7001 --limit 1.0 || fail "a SYN to 127.0.0.1 was not reset"
    c $APPS inject roam0 udp 100.64.0.2:45000 127.0.0.1:7003 || fail "could not inject"
    wait_for 5 "the datagram to 127.0.0.1 to be counted" counter_above laptop datagrams_forbidden "$before" \
        || fail "the server did not count the datagram to 127.0.0.1"
    echo "127.0.0.1: SYN reset, datagram dropped and counted (datagrams_forbidden)"
}

test_the_network_behind_the_server_is_refused() {
    c $APPS refused 198.18.9.2 8081 --limit 1.0 || fail "TCP to 198.18.9.2:8081 was not refused fast"
    c $APPS udp-silent 198.18.9.2 7003 --wait 1.0 || fail "UDP to 198.18.9.2 got an answer"
    echo "198.18.9.2 (behind the server): TCP refused fast, UDP unanswered"
}

test_another_client_is_refused() {
    c $APPS refused 100.64.0.3 7100 --limit 1.0 || fail "TCP to the phone was not refused fast"
    c $APPS udp-silent 100.64.0.3 7103 --wait 1.0 || fail "UDP to the phone got an answer"
    echo "100.64.0.3 (the phone): TCP refused fast, UDP unanswered"
}

test_refusals_are_counted_in_the_status() {
    local streams datagrams
    streams=$(server_counter laptop streams_forbidden)
    datagrams=$(server_counter laptop datagrams_forbidden)
    # 198.18.9.1, 198.18.4.1, 198.18.9.2, 100.64.0.3, 127.0.0.1; UDP: 5 each to four, one to 127.0.0.1.
    [ "$streams" -ge 5 ] || fail "streams_forbidden = $streams, expected at least 5"
    [ "$datagrams" -ge 21 ] || fail "datagrams_forbidden = $datagrams, expected at least 21"
    [ "$(server_counter phone streams_forbidden)" = 0 ] || fail "the phone's counter moved"
    "$ROAMTUN" status --socket "$WORK/server.sock" | grep -q "not allowed:  $streams connections" \
        || fail "the human status does not show the refusals"
    echo "server status, laptop: streams_forbidden $streams, datagrams_forbidden $datagrams; phone: 0"
}

test_spoofed_sources_never_reach_the_server() {
    local opened_before
    opened_before=$(server_counter laptop tcp_streams_opened)
    c $APPS inject roam0 udp 100.64.0.9:5555 100.64.0.1:7005 || fail "could not inject"
    c $APPS inject roam0 udp 100.64.0.3:5555 100.64.0.1:7005 || fail "could not inject"
    c $APPS inject roam0 syn 100.64.0.9:5556 100.64.0.1:7001 --limit 1.0 || fail "a spoofed SYN was not reset"
    # Written the same way, after them: once it arrives, the spoofed ones would have too.
    c $APPS inject roam0 udp 100.64.0.2:5555 100.64.0.1:7005 || fail "could not inject"
    wait_for 5 "the laptop's own datagram at the server" grep -q "^100.64.0.2 " "$WORK/sink.out" \
        || fail "even the laptop's own injected datagram did not arrive"
    grep -v "^100.64.0.2 " "$WORK/sink.out" && fail "a datagram with a foreign source reached the server"
    [ "$(server_counter laptop tcp_streams_opened)" = "$opened_before" ] || fail "the server opened a spoofed connection"
    echo "sources 100.64.0.9 and 100.64.0.3 written into the laptop's TUN: none reached the server; its own did"
}

test_a_greedy_client_hits_its_own_limit_only() {
    local summary echo
    spawn "$WORK/apps.log" "$NS_C" $APPS hold-many 100.64.0.1 7000 30 "$WORK/greedy.ready" "$WORK/greedy.stop"
    wait_for 30 "the laptop's 30 connection attempts" test -e "$WORK/greedy.ready" || fail "hold-many did not finish"
    summary=$(cat "$WORK/greedy.ready")
    [ "$summary" = "opened 20 refused 10" ] || fail "laptop: $summary, expected opened 20 refused 10"
    [ "$(server_peer laptop tcp_flows)" = 20 ] || fail "server: laptop has $(server_peer laptop tcp_flows) flows"
    [ "$(server_peer laptop limits)" = "{'tcp_flows': 20, 'udp_flows': 1024, 'paths': 8}" ] ||
        fail "server status, laptop's limits: $(server_peer laptop limits)"
    "$ROAMTUN" status --socket "$WORK/server.sock" | grep -Eq "flows: +20 of 20 TCP, [0-9]+ of 1024 UDP" ||
        fail "the human status does not show the laptop at its limit: $("$ROAMTUN" status --socket "$WORK/server.sock")"
    c $APPS refused 100.64.0.1 7000 --limit 1.0 || fail "the laptop's 31st connection was not refused fast"
    # Meanwhile the phone, under the server's 40, holds more than the laptop may and still moves
    # verified data as if nothing happened.
    spawn "$WORK/apps.log" "$NS_P" $APPS hold-many 100.64.0.1 7000 30 "$WORK/phone-many.ready" "$WORK/phone-many.stop"
    wait_for 30 "the phone's 30 connection attempts" test -e "$WORK/phone-many.ready" || fail "hold-many did not finish"
    summary=$(cat "$WORK/phone-many.ready")
    [ "$summary" = "opened 30 refused 0" ] || fail "phone: $summary, expected opened 30 refused 0 (its limit is 40)"
    echo=$(p $APPS echo-clients 100.64.0.1 7000 --count 10 --size $((1 << 20)) --timeout 60) || fail "phone: $echo"
    touch "$WORK/phone-many.stop"
    [ "$(server_counter phone streams_refused_limit)" = 0 ] || fail "the phone was refused"
    local refused
    refused=$(server_counter laptop streams_refused_limit)
    [ "$refused" -ge 11 ] || fail "laptop streams_refused_limit = $refused"
    echo "laptop (own limit 20): opened 20, refused 10 (+1), streams_refused_limit $refused; phone (server's 40) meanwhile: 30 held and $echo"
}

test_a_reload_raises_a_peers_limit_while_its_session_runs() {
    local out summary session
    session=$(server_peer laptop session)
    [ "$(server_peer laptop tcp_flows)" = 20 ] || fail "the laptop does not hold its 20 flows (greedy case first)"
    write_server_config "" 25
    out=$("$ROAMTUN" reload --socket "$WORK/server.sock" 2>&1) || fail "roamtun reload failed: $out"
    [[ "$out" == *"new limits for laptop"* ]] || fail "the reload does not report the laptop's new limit: $out"
    [ "$(server_peer laptop limits)" = "{'tcp_flows': 25, 'udp_flows': 1024, 'paths': 8}" ] ||
        fail "server status after the reload, laptop's limits: $(server_peer laptop limits)"
    spawn "$WORK/apps.log" "$NS_C" $APPS hold-many 100.64.0.1 7000 10 "$WORK/more.ready" "$WORK/more.stop"
    wait_for 30 "the laptop's 10 more connection attempts" test -e "$WORK/more.ready" || fail "hold-many did not finish"
    summary=$(cat "$WORK/more.ready")
    [ "$summary" = "opened 5 refused 5" ] || fail "laptop after the reload: $summary, expected opened 5 refused 5"
    [ "$(server_peer laptop session)" = "$session" ] || fail "the reload ended the laptop's session"
    touch "$WORK/greedy.stop" "$WORK/more.stop"
    wait_for 10 "the laptop's flows to close" peer_field_is laptop tcp_flows 0 \
        || fail "the laptop's flows did not close"
    c $APPS ask-peer 100.64.0.1 7001 >/dev/null || fail "the laptop cannot connect after closing its flows"
    echo "reload: $out; the laptop, holding 20, opened 5 more and was refused 5, in the same session $session"
}

test_allowed_destinations_open_the_network_behind() {
    kill -TERM "$(cat "$WORK/server.pid")"
    wait_for 10 "the server to exit" sh -c "! kill -0 $(cat "$WORK/server.pid")" || fail "server did not exit"
    write_server_config 'allowed_destinations = ["198.18.9.0/24"]'
    start_server || fail "server did not start"
    wait_for 30 "the laptop to reconnect" connected laptop || fail "laptop did not reconnect"
    wait_for 30 "the phone to reconnect" connected phone || fail "phone did not reconnect"
    local seen
    seen=$(c $APPS ask-peer 198.18.9.2 8081) || fail "198.18.9.2 not reachable with allowed_destinations"
    [ "$seen" = 100.64.0.2 ] || fail "198.18.9.2 saw $seen"
    c $APPS udp-client 198.18.9.2 7003 --count 50 --window 8 --timeout 10 || fail "UDP to 198.18.9.2"
    c $APPS refused 100.64.0.3 7100 --limit 1.0 || fail "the phone became reachable"
    c $APPS refused 198.18.4.1 7001 --limit 1.0 || fail "198.18.4.1 became reachable"
    echo "with allowed_destinations = [198.18.9.0/24]: 198.18.9.2 reached (saw 100.64.0.2, 50 UDP echoes); the phone and 198.18.4.1 still refused"
}

topology
SERVER_KEY=$("$ROAMTUN" genkey)
LAPTOP_KEY=$("$ROAMTUN" genkey)
PHONE_KEY=$("$ROAMTUN" genkey)
write_server_config ""
write_client_config laptop "$LAPTOP_KEY" 100.64.0.2 198.18.1.1 '"100.64.0.0/10", "198.18.9.0/24", "198.18.4.1/32"'
write_client_config phone "$PHONE_KEY" 100.64.0.3 198.18.4.1 '"100.64.0.0/10"'
start_server || { cat "$WORK/server.log"; exit 1; }
spawn "$WORK/laptop.log" "$NS_C" env ROAMTUN_LOG=info "$ROAMTUN" client -c "$WORK/laptop.toml"
spawn "$WORK/phone.log" "$NS_P" env ROAMTUN_LOG=info "$ROAMTUN" client -c "$WORK/phone.toml"
wait_for 15 "the laptop to connect" connected laptop || { cat "$WORK"/*.log; exit 1; }
wait_for 15 "the phone to connect" connected phone || { cat "$WORK"/*.log; exit 1; }
start_apps || { echo "test apps did not start"; cat "$WORK/apps.log"; exit 1; }

run test_the_servers_virtual_ip_works
run test_the_server_hosts_other_addresses_are_refused
run test_loopback_is_refused
run test_the_network_behind_the_server_is_refused
run test_another_client_is_refused
run test_refusals_are_counted_in_the_status
run test_spoofed_sources_never_reach_the_server
run test_a_greedy_client_hits_its_own_limit_only
run test_a_reload_raises_a_peers_limit_while_its_session_runs
run test_allowed_destinations_open_the_network_behind

echo "isolation: $PASSED passed, $FAILED failed"
[ $FAILED -eq 0 ]
