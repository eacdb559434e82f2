#!/usr/bin/env bash
# A stranger floods the server with connections that never send a byte (tests/netns/flood.py), from
# 128 addresses of a third namespace (and more from one of them), while a client moves verified data (the apps of
# tests/netns/transition.sh) and loses its uplink, and a second peer connects from the stranger's
# own network:
#
#   ns client: roamtun client, wlan0 + wwan0           ns server: roamtun server 198.18.0.1:7700
#   ns stranger: atk0 198.18.9.2 (a second peer, roamtun client) and 198.18.9.10-138 (the flood)
#                <== veth ==> fl0 198.18.9.1 (server)
#
# What a server operator checks: the client's session resumes on its other uplink and every byte
# arrives, the second peer gets its session, the flood is refused and counted (status), the server's
# memory stays bounded and its log is not flooded.
#
# Then what else a shared server must bound: an app that never reads (backpressure end to end), 100
# switches in a row (descriptors and memory flat), TLS keys refreshed under traffic.
#
# The file ends with "flood: N passed, N failed". Run as root.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=../../scripts/lib/netns.sh
. "$ROOT/scripts/lib/netns.sh"
trap netns_cleanup EXIT
SERVER_ADDR=198.18.0.1
NS_A="rt-a-$$"
EXTRA_NS=("$NS_A")
# shellcheck source=../../scripts/lib/roaming.sh
. "$ROOT/scripts/lib/roaming.sh"
SIZE=$((64 << 20))
FLOOD_SECS=${FLOOD_SECS:-20}

a() { ip netns exec "$NS_A" "$@"; }

# The stranger's namespace: the phone's address .2 and 129 more for the flood.
stranger_network() {
    netns_side_network "$NS_A" atk0 fl0
    local i
    for i in $(seq 10 138); do a ip addr add "198.18.9.$i/24" dev atk0; done
}

# The phone as a second [[peer]] of server.toml, run in the stranger's namespace.
second_peer() {
    netns_phone_config
    printf '\n[[peer]]\nname = "phone"\npublic_key = "%s"\nvirtual_ips = ["100.64.0.3"]\n' "$PHONE_PUB" >>"$WORK/server.toml"
}

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
server_get() { json_get "$WORK/server.sock" "$1"; }
evicting() { [ "$(server_get 's["handshakes_evicted"]')" -gt 0 ]; }
no_pending() { [ "$(server_get 's["handshakes_pending"]')" -eq 0 ]; }
elapsed_ms() { python3 -c "import time; print(int((time.time() - $1) * 1000))"; }

test_flood_while_a_client_roams_and_another_connects() {
    netns_topology
    netns_second_uplink
    stranger_network
    CLIENT_EXTRA='uplinks = ["wlan0", "wwan0"]' netns_configs
    second_peer
    netns_start_daemons || fail "the daemons did not start"
    local idle
    idle=$(rss_kib "$SERVER_PID")
    start_workload $((8 << 20))
    progress 8
    # 128 sources, 600 new connections a second, up to 4000 held: past the overall bound (1024, so
    # the oldest are evicted); and one source with 200: past its own bound (16).
    spawn "$WORK/flood.out" "$NS_A" python3 "$ROOT/tests/netns/flood.py" 198.18.0.1 7700 \
        --sources 198.18.9.10 --count 128 --hold 4000 --rate 600 --duration "$FLOOD_SECS" --stats "$WORK/flood.json"
    local flood_pid=$LAST_PID
    spawn "$WORK/flood.out" "$NS_A" python3 "$ROOT/tests/netns/flood.py" 198.18.0.1 7700 \
        --sources 198.18.9.138 --count 1 --hold 200 --rate 100 --duration "$FLOOD_SECS" --stats "$WORK/narrow.json"
    local narrow_pid=$LAST_PID
    wait_for 15 "the server's handshake table to fill (evictions)" evicting || fail "the flood never filled the handshake table"
    echo "flood:       pending $(server_get 's["handshakes_pending"]'), evicted $(server_get 's["handshakes_evicted"]'), over the source limit $(server_get 's["connections_over_limit"]')"

    # The client loses its uplink in the middle of the flood.
    EPOCH0=$(epoch)
    local t0
    t0=$(date +%s.%N)
    c ip link set wlan0 down
    wait_resumed || fail "the session did not resume during the flood"
    echo "resumed:     on wwan0 $(elapsed_ms "$t0") ms after wlan0 went down"

    # A peer that was not connected before gets its session.
    t0=$(date +%s.%N)
    spawn "$WORK/phone.log" "$NS_A" env ROAMTUN_LOG=info "$ROAMTUN" client -c "$WORK/phone.toml"
    wait_for 20 "the second peer to connect" phone_connected || fail "the second peer did not connect during the flood"
    echo "connected:   second peer in $(elapsed_ms "$t0") ms"

    local during
    during=$(rss_kib "$SERVER_PID")
    finish_workload
    wait "$flood_pid" || fail "the flooder failed: $(cat "$WORK/flood.out")"
    wait "$narrow_pid" || fail "the one-source flooder failed: $(cat "$WORK/flood.out")"
    echo "stranger:    128 sources $(cat "$WORK/flood.json"), one source $(cat "$WORK/narrow.json")"
    echo "memory:      server RSS idle $idle KiB, during the flood $during KiB"
    [ "$during" -le $((idle + 65536)) ] || fail "the server grew by $(((during - idle) / 1024)) MiB during the flood"
    [ "$(server_get 's["connections_over_limit"]')" -gt 0 ] || fail "no connection was refused at its source's limit"
    wait_for 10 "the flood's connections to be gone" no_pending || fail "connections stay pending after the flood"
    # At most 5 lines per kind and 10 s window (the next line says how many were left out).
    local lines windows
    lines=$(grep -c "connection refused before its handshake\|client refused" "$WORK/server.log")
    windows=$((FLOOD_SECS / 10 + 2))
    echo "log:         $lines lines about refusals"
    [ "$lines" -le $((windows * 2 * 5)) ] || fail "the server logged $lines lines about the flood"
    return 0
}

has_standby() { json_get "$WORK/client.sock" '"standby" in [u["state"] for u in s["uplinks"]]' | grep -q True; }
# The server started with a hard limit of 64 descriptors, so the flood exhausts them (accept fails
# with EMFILE): it must neither spin nor stop serving its session, and it recovers once the flood
# ends.
test_descriptor_exhaustion_does_not_stop_the_server() {
    netns_topology
    netns_second_uplink
    stranger_network
    netns_configs
    second_peer
    spawn "$WORK/server.log" "$NS_S" prlimit --nofile=64:64 env ROAMTUN_LOG=info "$ROAMTUN" server -c "$WORK/server.toml"
    SERVER_PID=$LAST_PID
    wait_for 10 "server control socket" test -S "$WORK/server.sock" || fail "the server did not start"
    spawn "$WORK/client.log" "$NS_C" env ROAMTUN_LOG=info "$ROAMTUN" client -c "$WORK/client.toml"
    CLIENT_PID=$LAST_PID
    wait_for 15 "client to connect to the server" client_connected || fail "the client did not connect"
    SIZE=$((16 << 20)) start_workload $((2 << 20))
    spawn "$WORK/flood.out" "$NS_A" python3 "$ROOT/tests/netns/flood.py" 198.18.0.1 7700 \
        --sources 198.18.9.10 --count 128 --hold 2000 --rate 600 --duration 8 --stats "$WORK/flood.json"
    local flood_pid=$LAST_PID
    wait_for 10 "accept to fail" grep -q "accept failed" "$WORK/server.log" || fail "the flood did not exhaust the descriptors"
    local cpu0 cpu1
    cpu0=$(awk '{print $14 + $15}' "/proc/$SERVER_PID/stat")
    wait "$flood_pid" || fail "the flooder failed"
    cpu1=$(awk '{print $14 + $15}' "/proc/$SERVER_PID/stat")
    SIZE=$((16 << 20)) finish_workload
    echo "emfile:      $(grep -c "accept failed" "$WORK/server.log") accept-failure lines logged; server CPU during the flood $(((cpu1 - cpu0) * 10)) ms"
    # Not spinning: far less than the two cores' time of the flood (8 s).
    [ $((cpu1 - cpu0)) -le 400 ] || fail "the server used $(((cpu1 - cpu0) * 10)) ms of CPU: it spins on accept"
    [ "$(grep -c "accept failed" "$WORK/server.log")" -le 18 ] || fail "accept failures flood the log"
    spawn "$WORK/phone.log" "$NS_A" env ROAMTUN_LOG=info "$ROAMTUN" client -c "$WORK/phone.toml"
    wait_for 20 "the second peer to connect after the flood" phone_connected || fail "a new peer cannot connect after the flood"
}

fds() { find "/proc/$1/fd" -mindepth 1 -maxdepth 1 | wc -l; }

# A path that ends must leave nothing behind: 100 planned switches between two uplinks (each one
# closes the old path) while a transfer runs, and the descriptors and memory of both daemons stay
# where they were after the first few.
test_hundred_switches_leave_descriptors_and_memory_flat() {
    netns_topology
    netns_second_uplink
    CLIENT_EXTRA='uplinks = ["wlan0", "wwan0"]' netns_configs
    netns_start_daemons || fail "the daemons did not start"
    SIZE=$((32 << 20)) start_workload $((1 << 20))
    local i to
    for i in 1 2 3 4; do
        to=$([ $((i % 2)) = 1 ] && echo wwan0 || echo wlan0)
        timeout 20 "$ROAMTUN" switch "$to" --socket "$WORK/client.sock" >/dev/null || fail "switch $i to $to failed"
    done
    local c_fd s_fd c_rss s_rss
    c_fd=$(fds "$CLIENT_PID") s_fd=$(fds "$SERVER_PID") c_rss=$(rss_kib "$CLIENT_PID") s_rss=$(rss_kib "$SERVER_PID")
    for i in $(seq 5 104); do
        to=$([ $((i % 2)) = 1 ] && echo wwan0 || echo wlan0)
        timeout 20 "$ROAMTUN" switch "$to" --socket "$WORK/client.sock" >/dev/null || fail "switch $i to $to failed"
    done
    # Let the last closed path's tasks end (the standby path is re-opened by Search).
    wait_for 10 "a warm standby again" sh -c "$ROAMTUN status --json --socket $WORK/client.sock | grep -q '\"standby\": *true'" || true
    SIZE=$((32 << 20)) finish_workload
    local c_fd2 s_fd2 c_rss2 s_rss2
    c_fd2=$(fds "$CLIENT_PID") s_fd2=$(fds "$SERVER_PID") c_rss2=$(rss_kib "$CLIENT_PID") s_rss2=$(rss_kib "$SERVER_PID")
    echo "switches:    100 more, epoch $(epoch)"
    echo "memory:      fds client $c_fd -> $c_fd2, server $s_fd -> $s_fd2; RSS client $c_rss -> $c_rss2 KiB, server $s_rss -> $s_rss2 KiB"
    [ "$c_fd2" -le $((c_fd + 2)) ] || fail "the client holds $((c_fd2 - c_fd)) more descriptors after 100 switches"
    [ "$s_fd2" -le $((s_fd + 2)) ] || fail "the server holds $((s_fd2 - s_fd)) more descriptors after 100 switches"
    [ "$c_rss2" -le $((c_rss + 8192)) ] || fail "the client grew by $(((c_rss2 - c_rss) / 1024)) MiB over 100 switches"
    [ "$s_rss2" -le $((s_rss + 8192)) ] || fail "the server grew by $(((s_rss2 - s_rss) / 1024)) MiB over 100 switches"
}

server_sent() { json_get "$WORK/server.sock" 's["bytes_sent"]'; }
# True once the server has sent nothing more for a second: the backpressure reached it.
server_stalled() {
    local before
    before=$(server_sent)
    sleep 1
    [ "$(server_sent)" = "$before" ]
}

# Backpressure end to end: a client app that reads nothing while the server app sends 128 MiB. The
# sender must be stopped by flow control (not buffered in either daemon), and every byte must
# arrive once the app reads.
test_an_app_that_never_reads_holds_memory_bounded() {
    netns_topology
    netns_second_uplink
    netns_configs
    netns_start_daemons || fail "the daemons did not start"
    spawn "$WORK/apps.log" "$NS_S" $APPS bulk-server 100.64.0.1 7200 "$WORK/bulk.ready"
    wait_ready "$WORK/bulk.ready" || fail "the bulk server did not start"
    local c_idle s_idle
    c_idle=$(rss_kib "$CLIENT_PID") s_idle=$(rss_kib "$SERVER_PID")
    spawn "$WORK/bulk.out" "$NS_C" $APPS bulk-client 100.64.0.1 7200 --size $((128 << 20)) --read-after "$WORK/read" --timeout 120
    local bulk_pid=$LAST_PID
    wait_for 30 "the server's sending to stop (backpressure)" server_stalled || fail "the server kept sending to an app that does not read"
    local c_held s_held sent
    c_held=$(rss_kib "$CLIENT_PID") s_held=$(rss_kib "$SERVER_PID") sent=$(server_sent)
    echo "memory:      while the app reads nothing: client RSS $c_idle -> $c_held KiB, server $s_idle -> $s_held KiB; the server stopped at $((sent >> 10)) KiB sent"
    [ "$c_held" -le $((c_idle + 16384)) ] || fail "the client holds $(((c_held - c_idle) / 1024)) MiB for an app that does not read"
    [ "$s_held" -le $((s_idle + 16384)) ] || fail "the server holds $(((s_held - s_idle) / 1024)) MiB for an app that does not read"
    [ "$sent" -lt $((64 << 20)) ] || fail "the server sent $((sent >> 20)) MiB before it stopped"
    touch "$WORK/read"
    wait "$bulk_pid" || fail "the transfer failed once the app read: $(tail -n 1 "$WORK/bulk.out")"
    echo "bulk:        $(tail -n 1 "$WORK/bulk.out")"
}

key_updates() { json_get "$1" 's["tls_key_updates"]'; }

# Not a flood, but the other half of a path that strangers may watch for days: its TLS keys roll.
test_tls_keys_refresh_under_traffic() {
    netns_topology
    netns_second_uplink
    CLIENT_EXTRA='[tuning]
rekey_interval_secs = 1' SERVER_EXTRA='[tuning]
rekey_interval_secs = 1' netns_configs
    netns_start_daemons || fail "the daemons did not start"
    EPOCH0=$(epoch)
    SIZE=$((16 << 20)) start_workload $((4 << 20))
    SIZE=$((16 << 20)) finish_workload
    local client server
    client=$(key_updates "$WORK/client.sock")
    server=$(key_updates "$WORK/server.sock")
    echo "rekey:       $client key updates sent by the client, $server by the server, during a 4 s transfer"
    [ "$client" -ge 3 ] || fail "the client refreshed its keys $client times in 4 s (every 1 s configured)"
    [ "$server" -ge 3 ] || fail "the server refreshed its keys $server times in 4 s"
    [ "$(epoch)" = "$EPOCH0" ] || fail "the session changed paths: the refreshes broke a path"
}

for t in $(declare -F | awk '{print $3}' | grep '^test_'); do
    run "$t"
done
echo "flood: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
