#!/usr/bin/env bash
# Crash containment (src/daemon/crash.rs), in network namespaces with real daemons:
#   * a panic in the client's engine task (injected with ROAMTUN_TEST_PANIC=engine, fired by a status
#     request): the client exits non-zero and leaves no TUN, no route into it, no per-uplink rule or
#     table route and no control socket behind;
#   * a panic in one of the server's connection tasks (ROAMTUN_TEST_PANIC=connection): the server
#     exits non-zero with its TUN gone, and a client that connects to the restarted server works;
#   * a client killed with SIGKILL leaves its per-uplink rules and tables; the next start removes them
#     before it installs its own;
#   * an exit-mode server killed with SIGKILL leaves forwarding on; the next start puts back what the
#     killed one found.
#
# Each case prints one line; the file ends with "crash: N passed, N failed". Run as root.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=../../scripts/lib/netns.sh
. "$ROOT/scripts/lib/netns.sh"
trap netns_cleanup EXIT
SERVER_ADDR=198.18.0.1
# shellcheck source=../../scripts/lib/roaming.sh
. "$ROOT/scripts/lib/roaming.sh"

# The client uses both uplinks with per-uplink routing, so it has rules and tables to leave behind.
setup() {
    netns_topology
    netns_second_uplink
    CLIENT_EXTRA='uplinks = ["wlan0", "wwan0"]
[routing]
per_uplink_tables = true' netns_configs
}

start_server() {
    spawn "$WORK/server.log" "$NS_S" env ROAMTUN_LOG=info "$@" "$ROAMTUN" server -c "$WORK/server.toml"
    SERVER_PID=$LAST_PID
    wait_for 10 "server control socket" test -S "$WORK/server.sock"
}

start_client() {
    spawn "$WORK/client.log" "$NS_C" env ROAMTUN_LOG=info "$@" "$ROAMTUN" client -c "$WORK/client.toml"
    CLIENT_PID=$LAST_PID
}

# exit_code PID SECONDS: waits for PID (a child of this shell) to exit and prints its exit code, or
# "running" when it is still up after SECONDS.
exit_code() {
    local deadline=$((SECONDS + $2))
    while kill -0 "$1" 2>/dev/null; do
        if [ $SECONDS -ge $deadline ]; then
            echo running
            return
        fi
        sleep 0.05
    done
    wait "$1"
    echo $?
}

our_rules() { c ip -4 rule show priority 5200; }
our_table_routes() { c ip -4 route show table 52000; c ip -4 route show table 52001; }

test_engine_panic_leaves_nothing_behind() {
    setup
    start_server
    start_client ROAMTUN_TEST_PANIC=engine
    wait_for 15 "a path" sh -c "ip netns exec $NS_C ip -4 rule show priority 5200 | grep -q 198.18" ||
        fail "the client installed no per-uplink rule (nothing to check)"
    c ip link show roam0 >/dev/null 2>&1 || fail "the client has no TUN (nothing to check)"
    # The status request fires the injected panic; its answer never comes.
    "$ROAMTUN" status --socket "$WORK/client.sock" >/dev/null 2>&1 && fail "the status request was answered"
    local code
    code=$(exit_code "$CLIENT_PID" 10)
    echo "exit:        client exited with $code after the engine panic"
    [ "$code" = running ] && fail "the client still runs after its engine task panicked"
    [ "$code" != 0 ] || fail "the client exited 0 after a panic"
    grep -q "the injected engine fault" "$WORK/client.log" || fail "the log does not show the panic"
    grep -Eq "(a task|the engine task) panicked: ROAMTUN_TEST_PANIC=engine" "$WORK/client.log" || fail "the log does not say why the daemon stopped"
    c ip link show roam0 >/dev/null 2>&1 && fail "the TUN roam0 is still there"
    [ -z "$(c ip -4 route show 100.64.0.0/10)" ] || fail "a route into the TUN is left: $(c ip -4 route show 100.64.0.0/10)"
    [ -z "$(our_rules)" ] || fail "per-uplink rules are left: $(our_rules)"
    [ -z "$(our_table_routes)" ] || fail "per-uplink table routes are left: $(our_table_routes)"
    [ -e "$WORK/client.sock" ] && fail "the control socket is left"
    return 0
}

test_connection_task_panic_stops_the_server() {
    setup
    start_server ROAMTUN_TEST_PANIC=connection
    s ip link show roamsrv0 >/dev/null 2>&1 || fail "the server has no TUN (nothing to check)"
    start_client
    local code
    code=$(exit_code "$SERVER_PID" 15)
    echo "exit:        server exited with $code after a connection task panicked"
    [ "$code" = running ] && fail "the server still runs after a connection task panicked"
    [ "$code" != 0 ] || fail "the server exited 0 after a panic"
    grep -q "a task panicked: ROAMTUN_TEST_PANIC=connection" "$WORK/server.log" || fail "the log does not say why the server stopped"
    s ip link show roamsrv0 >/dev/null 2>&1 && fail "the server's TUN is still there"
    [ -z "$(s ip -4 route show 100.64.0.0/10)" ] || fail "the route to the clients is left"
    # Restarted without the fault (as systemd would), the server takes the client's next dial.
    start_server
    wait_for 20 "the client to connect to the restarted server" client_connected ||
        fail "the client did not connect to the restarted server"
}

test_killed_client_leftovers_are_removed_at_start() {
    setup
    start_server
    start_client
    wait_for 15 "the client to connect" client_connected || fail "the client did not connect"
    wait_for 10 "a rule for 198.18.1.2" sh -c "ip netns exec $NS_C ip -4 rule show priority 5200 | grep -q 198.18.1.2" ||
        fail "no per-uplink rule for wlan0's address"
    kill -9 "$CLIENT_PID"
    wait "$CLIENT_PID" 2>/dev/null
    our_rules | grep -q 198.18.1.2 || fail "SIGKILL left no rule behind (nothing to check)"
    [ -n "$(our_table_routes)" ] || fail "SIGKILL left no table route behind (nothing to check)"
    # While it was down, wlan0 got another address: the old rule is stale.
    c ip addr del 198.18.1.2/24 dev wlan0
    c ip addr add 198.18.1.3/24 dev wlan0
    c ip route add default via 198.18.1.1 dev wlan0 metric 100
    start_client
    wait_for 15 "the restarted client to connect" client_connected || fail "the restarted client did not connect"
    wait_for 10 "a rule for 198.18.1.3" sh -c "ip netns exec $NS_C ip -4 rule show priority 5200 | grep -q 198.18.1.3" ||
        fail "no rule for the new address"
    grep -q "left behind" "$WORK/client.log" || fail "the log does not say that leftovers were removed"
    echo "rules:       $(our_rules | tr '\n' ';')"
    our_rules | grep -q 198.18.1.2 && fail "the stale rule for 198.18.1.2 is still there"
    [ "$(our_rules | grep -c 198.18.1.3)" = 1 ] || fail "the rule for 198.18.1.3 is not there exactly once"
    return 0
}

test_killed_exit_server_forwarding_is_restored_at_start() {
    netns_topology
    netns_second_uplink
    SERVER_EXTRA='exit = true' netns_configs
    local before
    before=$(s cat /proc/sys/net/ipv4/ip_forward)
    start_server
    [ "$(s cat /proc/sys/net/ipv4/ip_forward)" = 1 ] || fail "exit mode did not enable forwarding (nothing to check)"
    kill -9 "$SERVER_PID"
    wait "$SERVER_PID" 2>/dev/null
    [ "$(s cat /proc/sys/net/ipv4/ip_forward)" = 1 ] || fail "SIGKILL left forwarding as it was (nothing to check)"
    # The next start puts back what the killed one found, and its own clean stop keeps it so. (The
    # killed daemon's control socket is still there: wait for the new one's log, not the socket.)
    start_server
    wait_for 10 "the restart to restore forwarding" grep -q "restored the forwarding setting a killed daemon left changed" "$WORK/server.log" ||
        fail "the next start did not restore the forwarding settings"
    wait_for 10 "the restarted server's control socket" status_json "$WORK/server.sock" ||
        fail "the restarted server does not answer"
    kill -TERM "$SERVER_PID"
    wait "$SERVER_PID"
    echo "forwarding:  $before before, 1 after SIGKILL, $(s cat /proc/sys/net/ipv4/ip_forward) after the next start and stop"
    [ "$(s cat /proc/sys/net/ipv4/ip_forward)" = "$before" ] || fail "ip_forward is $(s cat /proc/sys/net/ipv4/ip_forward), not $before as before the first start"
}

for t in $(declare -F | awk '{print $3}' | grep '^test_'); do
    run "$t"
done
echo "crash: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
