#!/usr/bin/env bash
# Uplink switches with live sessions, in network namespaces with two uplinks:
#
#   ns client: roam0 100.64.0.2, roamtun client bound to wlan0 198.18.1.2 or wwan0 198.18.2.2
#   ns server: roamtun server on 198.18.0.1:7700 (reachable over up1 and up2), roamsrv0 100.64.0.1
#
# Every case runs, during the switch, what a user would have open (tests/netns/apps.py):
#   * a 256 MiB transfer in both directions at once, sha256-checked at both ends;
#   * an interactive session from the client (an echo every 50 ms, every reply checked);
#   * an interactive session the *server* side opened to the client's virtual IP;
#   * a UDP stream whose losses are reported.
# A case passes when all of them come through intact (no reset, no byte lost) and the daemon's status
# records the switch. The apps' own TCP retransmission counts are reported (they should stay 0: the
# apps talk to the local smoltcp stack, which never sees the outage).
#
# Each case prints one line; the file ends with "N passed, N failed". Run as root.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=../../scripts/lib/netns.sh
. "$ROOT/scripts/lib/netns.sh"
trap netns_cleanup EXIT
SERVER_ADDR=198.18.0.1

# shellcheck source=../../scripts/lib/roaming.sh
. "$ROOT/scripts/lib/roaming.sh"

# setup [UPLINKS]: two uplinks, daemons up, connected over the first uplink.
setup() {
    netns_topology
    netns_second_uplink
    CLIENT_EXTRA="uplinks = [${1:-\"wlan0\", \"wwan0\"}]
${CLIENT_TUNING:-}" SERVER_EXTRA="${SERVER_TUNING:-}" netns_configs
    netns_start_daemons || fail "the daemons did not start"
}

test_planned_switch_there_and_back() {
    setup
    start_workload $((24 << 20))
    progress 32
    switch_to wwan0
    [ "$(active_uplink)" = wwan0 ] || fail "status says uplink $(active_uplink), not wwan0"
    progress 32
    switch_to wlan0
    finish_workload
    expect_switches "planned:wlan0>wwan0 planned:wwan0>wlan0"
}

test_link_down_mid_transfer() {
    setup
    start_workload $((32 << 20))
    progress 32
    EPOCH0=$(epoch)
    c ip link set wlan0 down
    wait_resumed
    finish_workload
    expect_switches "unexpected:wlan0>wwan0"
}

test_new_address_on_the_only_uplink() {
    setup '"wlan0"'
    c ip link set wwan0 down
    start_workload $((32 << 20))
    progress 32
    EPOCH0=$(epoch)
    # DHCP gives another address: the old one goes, a new one and the default route come.
    c ip addr del 198.18.1.2/24 dev wlan0
    c ip addr add 198.18.1.3/24 dev wlan0
    c ip route add default via 198.18.1.1 dev wlan0 metric 100
    wait_resumed
    finish_workload
    local kinds local_addr
    kinds=$(switch_kinds)
    local_addr=$(json_get "$WORK/client.sock" 's["peers"][0]["local_address"]')
    echo "switches:    $kinds, now from $local_addr"
    [ "$kinds" = "unexpected:wlan0>wlan0" ] || fail "status shows switches '$kinds'"
    [[ "$local_addr" == 198.18.1.3:* ]] || fail "the session is on $local_addr, not the new address"
}

test_black_hole_transport_timeout() {
    CLIENT_TUNING="[tuning]
dead_after_ms = 300
probe_interval_ms = 100" SERVER_TUNING="[tuning]
dead_after_ms = 300
probe_interval_ms = 100" setup
    start_workload $((24 << 20))
    progress 32
    EPOCH0=$(epoch)
    # Everything on wlan0 silently dropped, both ways; the link stays up with its address. Dropped by
    # the client's own firewall, sends fail locally and nothing waits in flight for the stall check:
    # it is silence (dead_after_ms) that decides here (tests/netns/linkmgr.sh drops at the far end).
    drop_all c wlan0 roamtun_blackhole
    wait_resumed
    echo "detected:    $(json_get "$WORK/client.sock" 's["peers"][0]["last_error"]') (dead_after_ms 300, stall_after_ms 100); $(json_get "$WORK/client.sock" '"%d bytes replayed" % s["peers"][0]["switches"][-1]["bytes_replayed"]') (the apps' longest pause is in the bulk line)"
    finish_workload
    expect_switches "unexpected:wlan0>wwan0"
}

test_twenty_switches_in_thirty_seconds() {
    setup
    # Paced so the transfer outlasts the switches.
    start_workload $((SIZE / 34))
    progress 8
    local i up=wwan0 t0=$SECONDS
    for i in $(seq 20); do
        switch_to "$up" >/dev/null
        if [ "$up" = wwan0 ]; then up=wlan0; else up=wwan0; fi
        sleep 1.2 # pacing: 20 switches spread over ~30 s, not a wait for an event
    done
    echo "switches:    20 planned switches in $((SECONDS - t0)) s, epoch now $(epoch)"
    [ "$(epoch)" = 20 ] || fail "epoch $(epoch) after 20 switches"
    finish_workload
}

test_system_wide_default_route_through_the_tun() {
    CLIENT_ROUTES='"0.0.0.0/0"' setup
    # A full tunnel: the default into roam0 is in its own table, beside the uplinks' in the main one.
    c ip route show table 52100 | grep -q "default dev roam0" || fail "no default route into roam0: $(c ip route show table 52100)"
    c ip route get 100.64.0.1 | grep -q "dev roam0" || fail "the server's virtual IP is not routed into roam0: $(c ip route get 100.64.0.1)"
    start_workload $((32 << 20))
    progress 32
    switch_to wwan0
    progress 16
    EPOCH0=$(epoch)
    c ip link set wwan0 down
    wait_resumed
    finish_workload
    expect_switches "planned:wlan0>wwan0 unexpected:wwan0>wlan0"
}

rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

test_outage_beyond_the_switch_timeout() {
    # The server notices the silence after dead_after_ms (1 s), then waits the switch timeout.
    CLIENT_TUNING="[tuning]
dead_after_ms = 1000
probe_interval_ms = 250
switch_timeout_secs = 3" SERVER_TUNING="[tuning]
dead_after_ms = 1000
probe_interval_ms = 250
switch_timeout_secs = 3" setup
    local idle
    idle=$(rss_kib "$SERVER_PID")
    start_workload $((32 << 20))
    progress 32
    local t0
    t0=$(date +%s.%N)
    c ip link set wlan0 down
    c ip link set wwan0 down
    # The server-opened session must end with a reset once the switch timeout has passed.
    wait "$SINTER_PID" && fail "the server-side app did not notice the session ending"
    local took
    took=$(python3 -c "import time; print(f'{time.time() - $t0:.1f}')")
    echo "reset:       server-side app reset $took s after the outage began (dead_after_ms 1 s + switch timeout 3 s): $(tail -n 1 "$WORK/sinteractive.out")"
    python3 -c "import sys; sys.exit(0 if $took <= 5 else 1)" || fail "the reset came after $took s, later than timeout + 2 s"
    wait "$BULK_PID" && fail "the transfer cannot have completed"
    touch "$WORK/stop"
    wait "$INTER_PID"
    local connected
    connected=$(json_get "$WORK/server.sock" 's["peers"][0]["connected"] or s["peers"][0]["session"] is not None')
    [ "$connected" = False ] || fail "the server still shows the session"
    grep -q "did not come back within the switch timeout" "$WORK/server.log" || fail "the server log does not say why"
    local after
    after=$(rss_kib "$SERVER_PID")
    echo "memory:      server RSS idle $idle KiB, after expiry $after KiB"
    [ "$after" -le $((idle + 4096)) ] || fail "the server kept $((after - idle)) KiB after the session expired"
}

# A laptop closed for longer than the server's switch timeout, but not its own: its peer's
# switch_timeout_secs keeps the session (and the apps' connections) for it.
test_a_peer_of_its_own_switch_timeout_comes_back_after_the_default() {
    netns_topology
    netns_second_uplink
    CLIENT_EXTRA='uplinks = ["wlan0", "wwan0"]
[tuning]
dead_after_ms = 1000
probe_interval_ms = 250
switch_timeout_secs = 60' SERVER_EXTRA='[tuning]
dead_after_ms = 1000
probe_interval_ms = 250
switch_timeout_secs = 2' netns_configs
    # The laptop's [[peer]] is the last table of server.toml.
    echo "switch_timeout_secs = 30" >>"$WORK/server.toml"
    netns_start_daemons || fail "the daemons did not start"
    SIZE=$((16 << 20)) start_workload $((2 << 20))
    progress 2
    EPOCH0=$(epoch)
    local session
    session=$(json_get "$WORK/client.sock" 's["peers"][0]["session"]')
    c ip link set wlan0 down
    c ip link set wwan0 down
    wait_for 20 "the server to notice the loss" grep -q "path lost" "$WORK/server.log" || fail "the server did not notice"
    # The outage itself (the case's input, not a wait for an event): three times the server's
    # default switch timeout.
    sleep 6
    c ip link set wlan0 up
    c ip route add default via 198.18.1.1 dev wlan0 metric 100 2>/dev/null
    wait_resumed || fail "the session did not resume after the outage"
    [ "$(json_get "$WORK/client.sock" 's["peers"][0]["session"]')" = "$session" ] || fail "a new session started: the peer's switch timeout was not used"
    grep -q "did not come back within the switch timeout" "$WORK/server.log" && fail "the server expired the session"
    SIZE=$((16 << 20)) finish_workload
}

for t in $(declare -F | awk '{print $3}' | grep '^test_'); do
    run "$t"
done
echo "transition: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
