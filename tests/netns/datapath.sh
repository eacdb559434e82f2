#!/usr/bin/env bash
# The data path end to end, with real apps in two network namespaces joined by one veth uplink:
#
#   ns client: curl, iperf3, nc, ping, apps.py -> roam0 100.64.0.2 -> roamtun client -> wlan0 198.18.1.2
#   ns server: roamtun server on up1 198.18.1.1:7700 -> roamsrv0 100.64.0.1 -> http, iperf3, echo servers
#   ns inet  : (exit mode) 198.18.9.2 behind the server's second link 198.18.9.1
#
# Each case prints one line; the file ends with "N passed, N failed". Run as root.
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

run() {
    local name=$1
    [ -n "$ONLY" ] && [[ "$name" != *"$ONLY"* ]] && return
    local out rc start=$SECONDS
    # A subshell, so `fail` ends the case; not $(...), whose pipe the apps a case starts in the
    # background would hold open.
    ("$name") >"$WORK/case.out" 2>&1
    rc=$?
    out=$(cat "$WORK/case.out")
    if [ $rc -eq 0 ]; then
        PASSED=$((PASSED + 1))
        printf 'ok   %-40s %3ds  %s\n' "$name" $((SECONDS - start)) "$(echo "$out" | tail -n 1)"
    else
        FAILED=$((FAILED + 1))
        printf 'FAIL %-40s %3ds\n' "$name" $((SECONDS - start))
        echo "$out" | sed 's/^/     | /'
        echo "     | --- client log (tail)"; tail -n 15 "$WORK/client.log" | sed 's/^/     | /'
        echo "     | --- server log (tail)"; tail -n 15 "$WORK/server.log" | sed 's/^/     | /'
    fi
}

# Ends the current case (each runs in a subshell) with a message.
fail() {
    echo "$*"
    exit 1
}

# An exit-mode destination behind the server: ns inet with an HTTP server on 198.18.9.2.
setup_inet() {
    ip netns add "$NS_I"
    ip link add up9 netns "$NS_S" type veth peer name eth0 netns "$NS_I"
    s ip addr add 198.18.9.1/24 dev up9
    s ip link set up9 up
    ip netns exec "$NS_I" ip link set lo up
    ip netns exec "$NS_I" ip addr add 198.18.9.2/24 dev eth0
    ip netns exec "$NS_I" ip link set eth0 up
    # The one masquerade rule exit mode needs (docs/config.md): clients' virtual IPs leave as the server.
    s nft -f - <<'EOF'
table ip roamtun_exit {
    chain postrouting {
        type nat hook postrouting priority srcnat;
        ip saddr 100.64.0.0/10 oifname "up9" masquerade
    }
}
EOF
}

start_servers() {
    mkdir -p "$WORK/www"
    head -c $((64 << 20)) /dev/urandom >"$WORK/www/blob"
    spawn "$WORK/apps.log" "$NS_S" $APPS http-server 100.64.0.1 8080 "$WORK/www" "$WORK/http.ready"
    spawn "$WORK/apps.log" "$NS_S" $APPS echo-server 0.0.0.0 7000 "$WORK/echo.ready"
    spawn "$WORK/apps.log" "$NS_S" $APPS peer-server 0.0.0.0 7001 "$WORK/peer.ready"
    spawn "$WORK/apps.log" "$NS_S" $APPS halfclose-server 0.0.0.0 7002 "$WORK/half.ready"
    spawn "$WORK/apps.log" "$NS_S" $APPS udp-echo-server 100.64.0.1 7003 "$WORK/udp.ready"
    spawn "$WORK/apps.log" "$NS_S" iperf3 -s -B 100.64.0.1 -p 5201
    spawn "$WORK/apps.log" "$NS_I" $APPS peer-server 198.18.9.2 8081 "$WORK/inet.ready"
    for f in http echo peer half udp inet; do wait_ready "$WORK/$f.ready" || return 1; done
    wait_for 10 "iperf3 server" s sh -c 'ss -ltn | grep -q ":5201 "'
}

test_curl_download_64MiB() {
    c curl -sS --max-time 60 -o "$WORK/down" http://100.64.0.1:8080/blob || fail "curl failed"
    local a b
    a=$(sha256sum <"$WORK/www/blob" | cut -d' ' -f1)
    b=$(sha256sum <"$WORK/down" | cut -d' ' -f1)
    [ "$a" = "$b" ] || fail "sha256 differs: server $a, client $b"
    echo "64 MiB downloaded, sha256 equal ($a)"
}

test_curl_upload_64MiB() {
    head -c $((64 << 20)) /dev/urandom >"$WORK/up"
    local want got
    want=$(sha256sum <"$WORK/up" | cut -d' ' -f1)
    got=$(c curl -sS --max-time 60 -T "$WORK/up" http://100.64.0.1:8080/upload) || fail "curl failed"
    [ "$want" = "$got" ] || fail "server saw sha256 $got, client sent $want"
    echo "64 MiB uploaded, the server computed the same sha256"
}

test_200_concurrent_echo_connections() {
    c $APPS echo-clients 100.64.0.1 7000 --count 200 --size $((1 << 20)) --timeout 120
}

test_server_sees_client_virtual_ip() {
    local seen
    seen=$(c $APPS ask-peer 100.64.0.1 7001) || fail "connection failed"
    [ "$seen" = "100.64.0.2" ] || fail "server app saw peer $seen, expected 100.64.0.2"
    echo "server app's getpeername() = $seen"
}

test_server_initiated_connection() {
    spawn "$WORK/apps.log" "$NS_C" $APPS peer-server 100.64.0.2 7100 "$WORK/cpeer.ready"
    wait_ready "$WORK/cpeer.ready" || return 1
    local seen
    seen=$(s $APPS ask-peer 100.64.0.2 7100) || fail "server could not connect to the client's virtual IP"
    [ "$seen" = "100.64.0.1" ] || fail "client app saw peer $seen, expected 100.64.0.1"
    echo "server -> client virtual IP works; client app saw $seen"
}

test_half_close() {
    c $APPS halfclose-client 100.64.0.1 7002 --size $((4 << 20))
}

test_refused_connection_is_refused_fast() {
    c $APPS refused 100.64.0.1 7999 --limit 1.0
}

test_udp_echo_10000() {
    c $APPS udp-client 100.64.0.1 7003 --count 10000 --window 32 --timeout 60
}

test_ping_server_virtual_ip() {
    local out
    out=$(c ping -c 5 -i 0.2 -W 2 100.64.0.1) || fail "ping failed: $out"
    echo "$out" | grep -q ' 0% packet loss' || fail "$out"
    echo "$out" | tail -n 1
}

test_iperf3_both_directions() {
    local up down
    up=$(c iperf3 -c 100.64.0.1 -p 5201 -t 3 -J | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9,2))') || fail "upload run failed"
    down=$(c iperf3 -c 100.64.0.1 -p 5201 -t 3 -R -J | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9,2))') || fail "download run failed"
    echo "iperf3 completed: up $up Gbit/s, down $down Gbit/s"
}

server_flows_at_least() { [ "$(json_get "$WORK/server.sock" 's["tcp_flows"]')" -ge "$1" ]; }
server_flows_below() { [ "$(json_get "$WORK/server.sock" 's["tcp_flows"]')" -lt "$1" ]; }
# SYNs the client namespace's kernel has sent again (TcpExt TCPSynRetrans).
syn_retransmits() {
    c awk '/^TcpExt:/ { if (!h) { split($0, k); h = 1 } else for (i = 2; i <= NF; i++) if (k[i] == "TCPSynRetrans") print $i }' /proc/net/netstat
}

# The kernel drops what finds a TUN's queue full instead of pushing back, and a SYN dropped there
# costs the app a second or more: with hundreds of flows busy, a new connection must still get in.
test_new_connections_open_beside_400_busy_flows() {
    local i pids=() drops0 drops1 syn0 syn1 opened=0 alive=0 t0 took
    for i in 1 2 3 4; do spawn "$WORK/apps.log" "$NS_S" iperf3 -s -1 -B 100.64.0.1 -p $((5300 + i)); done
    wait_for 10 "the iperf3 servers" s sh -c '[ $(ss -ltnH | grep -c "100.64.0.1:530[1-4] ") -eq 4 ]' || fail "iperf3 servers did not start"
    drops0=$(c cat /sys/class/net/roam0/statistics/tx_dropped)
    # Longer than the new connections can take; stopped once they are done. Not through `c`: $! must
    # be timeout itself (ip netns exec execs it), which passes TERM on to iperf3.
    for i in 1 2 3 4; do
        ip netns exec "$NS_C" timeout 90 iperf3 -c 100.64.0.1 -p $((5300 + i)) -P 100 -t 60 >"$WORK/busy-$i.out" 2>&1 &
        pids+=($!)
        echo "$!" >>"$PIDFILE"
    done
    wait_for 20 "400 flows through the tunnel" server_flows_at_least 400 || fail "the busy flows did not all open"
    syn0=$(syn_retransmits)
    t0=$SECONDS
    for i in $(seq 5); do
        c $APPS echo-clients 100.64.0.1 7000 --count 1 --size 4096 --timeout 10 >>"$WORK/probe.out" 2>&1 && opened=$((opened + 1))
    done
    took=$((SECONDS - t0))
    syn1=$(syn_retransmits)
    for i in "${pids[@]}"; do kill -0 "$i" 2>/dev/null && alive=$((alive + 1)); done
    for i in "${pids[@]}"; do kill -TERM "$i" 2>/dev/null; wait "$i" 2>/dev/null; done
    # The next cases need a quiet tunnel.
    wait_for 20 "the busy flows to close" server_flows_below 10 || fail "the busy flows did not close after their iperf3 clients stopped"
    drops1=$(c cat /sys/class/net/roam0/statistics/tx_dropped)
    [ "$alive" -eq 4 ] || fail "only $alive of 4 busy iperf3 clients ran until the new connections were done ($took s): $(tail -qn 2 "$WORK"/busy-*.out)"
    [ "$opened" -eq 5 ] || fail "only $opened of 5 new connections echoed their bytes: $(tail -n 3 "$WORK/probe.out")"
    [ "$drops1" -eq "$drops0" ] || fail "the kernel dropped $((drops1 - drops0)) packets at the full TUN queue"
    [ "$syn1" -eq "$syn0" ] || fail "the new connections' SYNs were retransmitted $((syn1 - syn0)) times"
    echo "beside 400 busy flows, 5 new connections echoed 4 KiB each in $took s; no packet dropped at the TUN, no SYN resent"
}

test_exit_mode_reaches_beyond_server() {
    local seen
    seen=$(c $APPS ask-peer 198.18.9.2 8081) || fail "could not reach 198.18.9.2 through the exit"
    [ "$seen" = "198.18.9.1" ] || fail "destination saw $seen, expected the masqueraded 198.18.9.1"
    echo "198.18.9.2 reached through the server; it saw $seen (masquerade)"
}

test_status_reports_the_session() {
    local line
    line=$(json_get "$WORK/client.sock" '"%s %s %s %s" % (s["role"], s["peers"][0]["connected"], s["peers"][0]["uplink"], s["bytes_sent"] > 0)')
    [ "$line" = "client True wlan0 True" ] || fail "client status: $line"
    line=$(json_get "$WORK/server.sock" '"%s %s %s" % (s["role"], s["peers"][0]["name"], s["peers"][0]["connected"])')
    [ "$line" = "server laptop True" ] || fail "server status: $line"
    "$ROAMTUN" status --socket "$WORK/client.sock" | grep -q "uplink:       wlan0 198.18.1.2" || fail "human status lacks the uplink"
    echo "status (json and text) shows role, peer, uplink wlan0 and traffic"
}

test_unknown_client_key_is_refused() {
    local rk rpub
    rk=$("$ROAMTUN" genkey)
    rpub=$(echo "$rk" | "$ROAMTUN" pubkey)
    # Same server, a key the server does not list; its own TUN and prefix so it disturbs nothing.
    cat >"$WORK/rogue.toml" <<EOF
private_key = "$rk"
virtual_ips = ["100.100.0.2"]
routes = ["100.100.0.0/16"]
control_socket = "$WORK/rogue.sock"

[tun]
name = "roamx"

$(sed -n '/^\[server\]/,$p' "$WORK/client.toml")
EOF
    chmod 600 "$WORK/rogue.toml"
    spawn "$WORK/rogue.log" "$NS_C" "$ROAMTUN" client -c "$WORK/rogue.toml"
    local rogue=$LAST_PID
    wait_for 10 "the server to log the refusal" grep -q "unknown client public key $rpub" "$WORK/server.log" || return 1
    kill "$rogue"
    local n
    n=$(json_get "$WORK/server.sock" 'sum(1 for p in s["peers"] if p["connected"])')
    [ "$n" = 1 ] || fail "server has $n connected peers, expected only the real client"
    grep -q "refused" "$WORK/rogue.log" || grep -q "ended the connection during the handshake" "$WORK/rogue.log" || fail "the rogue client's log does not say it was refused"
    echo "unknown key $rpub refused; server log names it; only the real client is connected"
}

test_malformed_config_exits_2_with_line() {
    printf 'private_key = "abc"\nlisten = "198.18.1.1:7700"\n' >"$WORK/bad.toml"
    local out rc
    out=$("$ROAMTUN" server --check -c "$WORK/bad.toml" 2>&1)
    rc=$?
    [ $rc -eq 2 ] || fail "exit code $rc, expected 2 ($out)"
    echo "$out" | grep -q "line 1" || fail "no line number in: $out"
    echo "exit 2: $(echo "$out" | head -n 1)"
}

test_no_privilege_says_so() {
    local out rc
    # Its own copy of the config: one with a private key must be private to the user who reads it.
    cp "$WORK/client.toml" "$WORK/nobody.toml"
    chown 65534:65534 "$WORK/nobody.toml"
    chmod 600 "$WORK/nobody.toml"
    out=$(setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all "$ROAMTUN" client -c "$WORK/nobody.toml" 2>&1)
    rc=$?
    [ $rc -ne 0 ] || fail "started without privileges"
    echo "$out" | grep -q "CAP_NET_ADMIN" || fail "message does not say what is missing: $out"
    echo "unprivileged start fails with: $out"
}

test_server_vanishes_client_retries_then_reconnects() {
    # A connection open when the server goes: its app must see a reset, not a hang.
    spawn "$WORK/apps.log" "$NS_C" $APPS hold 100.64.0.1 7000 "$WORK/hold.ready" "$WORK/hold.out"
    wait_ready "$WORK/hold.ready"
    kill -TERM "$SERVER_PID"
    wait_for 10 "the server to exit" sh -c "! kill -0 $SERVER_PID" || fail "server did not exit"
    wait_for 10 "the client to log a failed reconnect" grep -q "cannot reach the server" "$WORK/client.log" \
        || fail "client did not report the unreachable server"
    wait_for 10 "the held connection to end" test -s "$WORK/hold.out" || fail "the app's connection hangs"
    [ "$(cat "$WORK/hold.out")" = reset ] || fail "the app's connection ended with $(cat "$WORK/hold.out"), expected a reset"
    wait_for 10 "a second failed attempt (backoff)" sh -c "[ \$(grep -c 'cannot reach the server' '$WORK/client.log') -ge 2 ]" \
        || fail "client did not retry"
    spawn "$WORK/server.log" "$NS_S" "$ROAMTUN" server -c "$WORK/server.toml"
    # Cases run in subshells: later cases find the new server through this file.
    echo "$LAST_PID" >"$WORK/server.pid"
    wait_for 20 "the client to reconnect" client_connected || fail "client did not reconnect"
    local seen
    seen=$(c $APPS ask-peer 100.64.0.1 7001) || fail "no TCP through the tunnel after the reconnect"
    [ "$seen" = "100.64.0.2" ] || fail "after reconnect the server saw $seen"
    echo "server stopped: the open app connection was reset; client logged $(grep -c 'cannot reach the server' "$WORK/client.log") retries with backoff, reconnected when it came back"
}

test_clean_shutdown_removes_tun_and_routes() {
    kill -TERM "$CLIENT_PID"
    wait_for 10 "client to exit" sh -c "! kill -0 $CLIENT_PID" || return 1
    c ip link show roam0 >/dev/null 2>&1 && fail "roam0 still exists"
    c ip route | grep -q 100.64.0.0/10 && fail "route still installed"
    test -e "$WORK/client.sock" && fail "control socket left behind"
    [ "$(s cat /proc/sys/net/ipv4/ip_forward)" = 1 ] || fail "exit mode did not enable forwarding"
    local server_pid
    server_pid=$(cat "$WORK/server.pid")
    kill -TERM "$server_pid"
    wait_for 10 "server to exit" sh -c "! kill -0 $server_pid" || fail "server did not exit"
    s ip link show roamsrv0 >/dev/null 2>&1 && fail "roamsrv0 still exists"
    [ "$(s cat /proc/sys/net/ipv4/ip_forward)" = "$FORWARDING_BEFORE" ] || fail "server left ip_forward changed"
    echo "after SIGTERM: roam0/roamsrv0, routes, control socket gone; forwarding back to $FORWARDING_BEFORE"
}

netns_topology
setup_inet
SERVER_EXTRA="exit = true" CLIENT_ROUTES='"100.64.0.0/10", "198.18.9.0/24"' netns_configs
FORWARDING_BEFORE=$(s cat /proc/sys/net/ipv4/ip_forward)
netns_start_daemons || { cat "$WORK"/*.log; exit 1; }
echo "$SERVER_PID" >"$WORK/server.pid"
start_servers || { echo "test servers did not start"; exit 1; }

run test_curl_download_64MiB
run test_curl_upload_64MiB
run test_200_concurrent_echo_connections
run test_server_sees_client_virtual_ip
run test_server_initiated_connection
run test_half_close
run test_refused_connection_is_refused_fast
run test_udp_echo_10000
run test_ping_server_virtual_ip
run test_iperf3_both_directions
run test_new_connections_open_beside_400_busy_flows
run test_exit_mode_reaches_beyond_server
run test_status_reports_the_session
run test_unknown_client_key_is_refused
run test_malformed_config_exits_2_with_line
run test_no_privilege_says_so
run test_server_vanishes_client_retries_then_reconnects
run test_clean_shutdown_removes_tun_and_routes

echo "datapath: $PASSED passed, $FAILED failed"
[ $FAILED -eq 0 ]
