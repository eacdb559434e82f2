#!/usr/bin/env bash
# Uplink switches at real round-trip times: the client's two uplinks go through the WAN emulator
# (scripts/lib/wan.sh), so that every protocol step of a switch costs a round trip, as it does on a
# real Wi-Fi or LTE link, and cannot hide behind a veth's 50 µs:
#
#   ns client                                                          ns server (198.18.0.1 on lo)
#   roam0 100.64.0.2                                                   roamsrv0 100.64.0.1
#   wlan0 198.18.1.2/24 <==> [wanem: Wi-Fi 10 ms each way, 200 Mbit/s] <==> up1 198.18.1.1/24
#   wwan0 198.18.2.2/24 <==> [wanem: LTE   25 ms each way,  50 Mbit/s] <==> up2 198.18.2.1/24
#   (each emulator in its own pair of veths, in ns rt-w-PID)
#
# First the links themselves (ping RTT and iperf3 rate as figures; asserted only what cannot hold
# without the emulator in the path: an RTT of at least the configured one, a rate not above the
# configured one). Then the relay sockets' congestion control, read back with `ss -ti` in both
# namespaces (cubic and bbr configured, against the host's default). Then a planned switch, a link down, a black hole and a 1 s outage, each during the
# workload of scripts/lib/roaming.sh (sha256-verified transfers both ways, interactive sessions opened
# from either side, a UDP stream), every byte verified. The apps' longest pause (bulk line) and the
# switch record's stall (status) are printed as figures, never judged.
#
# Each case prints one line; the file ends with "wan: N passed, N failed". Run as root.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=../../scripts/lib/netns.sh
. "$ROOT/scripts/lib/netns.sh"
# shellcheck source=../../scripts/lib/wan.sh
. "$ROOT/scripts/lib/wan.sh"
trap netns_cleanup EXIT
SERVER_ADDR=198.18.0.1

# shellcheck source=../../scripts/lib/roaming.sh
. "$ROOT/scripts/lib/roaming.sh"
# Small enough for LTE's rate: each case's transfer takes a few seconds at the paced rate.
SIZE=${ROAMTUN_TRANSFER:-$((12 << 20))}
# Each way, paced: 2 MiB/s is a third of LTE's 6.25 MB/s, so the switch, not the link, sets the pause.
RATE=$((2 << 20))

setup() {
    netns_wan_uplinks || fail "the emulated links did not come up"
    CLIENT_EXTRA="uplinks = [\"wlan0\", \"wwan0\"]
${CLIENT_TUNING:-}" SERVER_EXTRA="${SERVER_TUNING:-}" netns_configs
    netns_start_daemons || fail "the daemons did not start"
}

# The switch record's stall and the bytes it replayed, from the client's status.
stall_line() {
    echo "switch:      stall $(json_get "$WORK/client.sock" '"%.1f ms, %d bytes replayed" % (s["peers"][0]["switches"][-1]["stall_ms"], s["peers"][0]["switches"][-1]["bytes_replayed"])') (status; the apps' longest pause is in the bulk line; RTT Wi-Fi $(wan_rtt_ms wifi) ms, LTE $(wan_rtt_ms lte) ms)"
}

listening() { s ss -ltnH "sport = :$1" | grep -q LISTEN; }

# iperf3 from the client to the server's end of one uplink (its subnet's route: only that link):
# the receiver's rate in Mbit/s.
iperf_mbit() {
    local port=$1 peer=$2
    spawn "$WORK/iperf-server.log" "$NS_S" iperf3 -s -1 -p "$port" -B "$peer"
    wait_for 10 "iperf3 to listen on $port" listening "$port"
    c timeout 20 iperf3 -c "$peer" -p "$port" -t 3 -J |
        python3 -c 'import json,sys; r = json.load(sys.stdin)["end"]["sum_received"]; print(round(r["bits_per_second"] / 1e6))'
}

test_emulated_links_have_their_rtt_and_rate() {
    netns_wan_uplinks || fail "the emulated links did not come up"
    local prof iface peer rtt want rate max port=5201
    for prof in wifi lte; do
        iface=wlan0 peer=198.18.1.1
        [ $prof = lte ] && iface=wwan0 peer=198.18.2.1
        rtt=$(wan_rtt "$NS_C" "$peer" 5) || fail "no ping reply over $iface"
        want=$(wan_rtt_ms $prof)
        rate=$(iperf_mbit $port $peer) || fail "iperf3 over $iface failed"
        max=$(wan_profile $prof | cut -d' ' -f2)
        echo "detected:    $iface ($prof): ping RTT $rtt ms (configured $want), iperf3 TCP $rate Mbit/s (configured $max, every frame byte counted)"
        python3 -c "import sys; sys.exit(0 if $rtt >= $want else 1)" || fail "$iface: RTT $rtt ms is below the configured $want ms: the emulator is not in the path"
        # Above the configured rate only if something bypasses the emulator.
        python3 -c "import sys; sys.exit(0 if 0 < $rate <= $max * 1.05 else 1)" || fail "$iface: $rate Mbit/s, not in (0, $max]"
        port=$((port + 1))
    done
}

# relay_ccs c|s: the congestion control of every established relay connection in the client's (c) or
# server's (s) namespace, as the kernel reports it (ss -ti: the first word of the info line).
relay_ccs() {
    "$1" ss -tinH state established '( sport = :7700 or dport = :7700 )' |
        awk '/^[ \t]/ {print $1}' | sort -u | tr '\n' ' ' | sed 's/ $//'
}

two_relay_connections() { [ "$(c ss -tnH state established '( dport = :7700 )' | wc -l)" -ge 2 ]; }

# The relay sockets use tuning.congestion_control whatever the host's default (bbr on the test
# machine: then the default, cubic, can only show up if the daemon set it), on both daemons, and the
# status says which.
test_relay_sockets_use_the_configured_congestion_control() {
    local want
    for want in cubic bbr; do
        CLIENT_TUNING="[tuning]
congestion_control = \"$want\"" SERVER_TUNING="[tuning]
congestion_control = \"$want\"" setup
        # Both uplinks' paths: the active one and the warm standby.
        wait_for 10 "a path on each uplink" two_relay_connections
        local client server shown
        client=$(relay_ccs c)
        server=$(relay_ccs s)
        shown=$(json_get "$WORK/client.sock" 's["peers"][0]["congestion_control"]')
        echo "detected:    $want configured (host default $(c sysctl -n net.ipv4.tcp_congestion_control)): ss -ti client '$client', server '$server', status '$shown'"
        [ "$client" = "$want" ] || fail "the client's relay sockets use '$client', not $want"
        [ "$server" = "$want" ] || fail "the server's relay sockets use '$server', not $want"
        [ "$shown" = "$want" ] || fail "status says '$shown', not $want"
        teardown
    done
}

test_planned_switch_over_wan() {
    setup
    start_workload $RATE
    progress 4
    switch_to wwan0
    [ "$(active_uplink)" = wwan0 ] || fail "status says uplink $(active_uplink), not wwan0"
    stall_line
    finish_workload
    expect_switches "planned:wlan0>wwan0"
}

test_link_down_over_wan() {
    setup
    start_workload $RATE
    progress 4
    EPOCH0=$(epoch)
    c ip link set wlan0 down
    wait_resumed
    stall_line
    finish_workload
    expect_switches "unexpected:wlan0>wwan0"
}

test_black_hole_over_wan() {
    CLIENT_TUNING="[tuning]
dead_after_ms = 300
stall_after_ms = 100
probe_interval_ms = 100" SERVER_TUNING="[tuning]
dead_after_ms = 300
stall_after_ms = 100
probe_interval_ms = 100" setup
    start_workload $RATE
    progress 4
    EPOCH0=$(epoch)
    # Behind wlan0, at the far end of its emulated link, as a broken access point would: the client's
    # kernel sees no local error, only silence.
    drop_all s up1 roamtun_blackhole
    wait_resumed
    echo "detected:    $(json_get "$WORK/client.sock" 's["peers"][0]["last_error"]') (dead_after_ms 300, stall_after_ms 100)"
    stall_line
    finish_workload
    expect_switches "unexpected:wlan0>wwan0"
}

test_outage_of_one_second_same_address_back() {
    setup
    start_workload $RATE
    progress 4
    EPOCH0=$(epoch)
    c ip link set wlan0 down
    c ip link set wwan0 down
    sleep 1 # the outage itself
    c ip link set wlan0 up
    c ip link set wwan0 up
    # Link down took the routes with it; DHCP would put them back.
    c ip route replace default via 198.18.1.1 dev wlan0 metric 100
    c ip route replace default via 198.18.2.1 dev wwan0 metric 200
    wait_resumed
    stall_line
    finish_workload
    local kinds
    kinds=$(switch_kinds)
    echo "switches:    $kinds"
    [[ "$kinds" == unexpected:wlan0\>* ]] || fail "status shows switches '$kinds'"
}

# The links first: every later figure means something only if they are what they claim.
for t in test_emulated_links_have_their_rtt_and_rate test_relay_sockets_use_the_configured_congestion_control test_planned_switch_over_wan test_link_down_over_wan \
    test_black_hole_over_wan test_outage_of_one_second_same_address_back; do
    run "$t"
done
echo "wan: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
