#!/usr/bin/env bash
# Peers at fleet size: `peers_dir` (one file per peer) and the server's reload (`roamtun reload`,
# SIGHUP), with real daemons in namespaces:
#
#   ns client: the laptop (an inline [[peer]]), moving verified data the whole time
#   ns phone:  a second client, added to and removed from peers_dir while the laptop works
#              pho0 198.18.9.2 <== veth ==> ph0 198.18.9.1 (server)
#
# What a fleet operator checks: an added peer connects without a restart, a removed one's session
# ends with a CLOSE that says why, a broken peer file is refused with its name and changes nothing,
# and the laptop's session (same epoch) and transfers never notice.
#
# The file ends with "reload: N passed, N failed". Run as root.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=../../scripts/lib/netns.sh
. "$ROOT/scripts/lib/netns.sh"
trap netns_cleanup EXIT
SERVER_ADDR=198.18.0.1
NS_P="rt-p-$$"
EXTRA_NS=("$NS_P")
# shellcheck source=../../scripts/lib/roaming.sh
. "$ROOT/scripts/lib/roaming.sh"
SIZE=$((32 << 20))

add_phone() {
    cat >"$WORK/peers/phone.toml" <<EOF
public_key = "$PHONE_PUB"
virtual_ips = ["100.64.0.3"]
EOF
}

server_has_phone_session() {
    json_get "$WORK/server.sock" '[p["session"] is not None for p in s["peers"] if p["name"] == "phone"]' | grep -q True
}
no_phone_session() { ! server_has_phone_session; }
server_peer_names() { json_get "$WORK/server.sock" '",".join(p["name"] for p in s["peers"])'; }

setup() {
    # What an earlier case left (teardown removes the client's and server's namespaces only).
    ip netns del "$NS_P" 2>/dev/null
    rm -rf "$WORK/peers"
    netns_topology
    netns_second_uplink
    netns_side_network "$NS_P" pho0 ph0
    mkdir -p "$WORK/peers"
    SERVER_EXTRA='peers_dir = "peers"' netns_configs
    netns_phone_config
    netns_start_daemons || fail "the daemons did not start"
    spawn "$WORK/phone.log" "$NS_P" env ROAMTUN_LOG=info "$ROAMTUN" client -c "$WORK/phone.toml"
    PHONE_PID=$LAST_PID
}

test_a_peer_added_then_removed_without_a_restart() {
    setup
    start_workload $((4 << 20))
    progress 4
    EPOCH0=$(epoch)
    wait_for 10 "the phone to be refused (not configured yet)" grep -q "refused\|public key" "$WORK/phone.log" ||
        fail "the unconfigured phone was not refused"
    add_phone
    local out
    out=$("$ROAMTUN" reload --socket "$WORK/server.sock" 2>&1) || fail "roamtun reload failed: $out"
    echo "reload:      $out"
    [[ "$out" == *"1 added (phone)"* ]] || fail "the reload does not report the phone as added: $out"
    wait_for 20 "the phone to connect" phone_connected || fail "the added phone did not connect"
    [ "$(server_peer_names)" = "laptop,phone" ] || fail "the server's status lists peers '$(server_peer_names)'"
    # Removed again, by SIGHUP this time.
    rm "$WORK/peers/phone.toml"
    kill -HUP "$SERVER_PID"
    wait_for 10 "the phone's session to end" no_phone_session ||
        fail "the removed phone still has a session on the server"
    wait_for 10 "the phone to log the reason" grep -q "removed from the server's configuration" "$WORK/phone.log" ||
        fail "the phone's log does not say why its session ended: $(tail -n 3 "$WORK/phone.log")"
    grep -q "configuration reloaded" "$WORK/server.log" || fail "the server did not log the SIGHUP reload"
    kill -0 "$SERVER_PID" || fail "SIGHUP stopped the server"
    finish_workload
    [ "$(epoch)" = "$EPOCH0" ] || fail "the laptop's session moved (epoch $EPOCH0 -> $(epoch)) during the reloads"
    client_connected || fail "the laptop is not connected after the reloads"
}

test_a_broken_peer_file_changes_nothing() {
    setup
    add_phone
    "$ROAMTUN" reload --socket "$WORK/server.sock" >/dev/null || fail "the first reload failed"
    wait_for 20 "the phone to connect" phone_connected || fail "the phone did not connect"
    # Another peer's file with a typo, and the phone's file given away to the laptop's address.
    printf 'public_key = "%s"\nvirtual_ipz = ["100.64.0.9"]\n' "$PHONE_PUB" >"$WORK/peers/tablet.toml"
    local out code
    out=$("$ROAMTUN" reload --socket "$WORK/server.sock" 2>&1)
    code=$?
    echo "reload:      exit $code: $out"
    [ "$code" != 0 ] || fail "a broken peer file was accepted"
    [[ "$out" == *"tablet.toml"* ]] || fail "the error does not name the file: $out"
    [[ "$out" == *"nothing changed"* ]] || fail "the error does not say that nothing changed: $out"
    phone_connected || fail "the phone lost its session to a refused reload"
    client_connected || fail "the laptop lost its session to a refused reload"
    [ "$(server_peer_names)" = "laptop,phone" ] || fail "the server's peers changed: $(server_peer_names)"
}

for t in $(declare -F | awk '{print $3}' | grep '^test_'); do
    run "$t"
done
echo "reload: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
