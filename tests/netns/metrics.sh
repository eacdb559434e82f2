#!/usr/bin/env bash
# The Prometheus endpoint (`metrics_listen`) of both daemons, scraped with curl while a transfer runs
# and after a planned and an unexpected switch: the values agree with `roamtun status`, the switch
# counters count by kind, and anything but GET /metrics gets 404.
#
# The file ends with "metrics: N passed, N failed". Run as root.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=../../scripts/lib/netns.sh
. "$ROOT/scripts/lib/netns.sh"
trap netns_cleanup EXIT
SERVER_ADDR=198.18.0.1
# shellcheck source=../../scripts/lib/roaming.sh
. "$ROOT/scripts/lib/roaming.sh"
SIZE=$((16 << 20))

# metric NS URL NAME{LABELS}: the value of one sample line, or nothing.
metric() {
    "$1" curl -sf "$2" | awk -v m="$3" '$1 == m {print $2}'
}

test_both_daemons_serve_their_metrics() {
    netns_topology
    netns_second_uplink
    CLIENT_EXTRA='uplinks = ["wlan0", "wwan0"]
metrics_listen = "198.18.1.2:9477"' SERVER_EXTRA='metrics_listen = "198.18.0.1:9477"' netns_configs
    netns_start_daemons || fail "the daemons did not start"
    local client=http://198.18.1.2:9477/metrics server=http://198.18.0.1:9477/metrics
    start_workload $((4 << 20))
    progress 4
    switch_to wwan0
    EPOCH0=$(epoch)
    c ip link set wwan0 down
    wait_resumed || fail "the session did not resume on wlan0"
    finish_workload
    c curl -sf "$client" >"$WORK/client.metrics" || fail "the client's endpoint did not answer"
    c curl -sf "$server" >"$WORK/server.metrics" || fail "the server's endpoint did not answer"
    grep -q '^# EOF' "$WORK/server.metrics" || fail "the answer is not OpenMetrics text (no # EOF)"
    local sessions planned unexpected sent status_sent state
    sessions=$(metric c "$server" roamtun_sessions)
    planned=$(metric c "$server" 'roamtun_switches_total{peer="laptop",kind="planned"}')
    unexpected=$(metric c "$server" 'roamtun_switches_total{peer="laptop",kind="unexpected"}')
    echo "metrics:     server: roamtun_sessions $sessions, switches planned $planned, unexpected $unexpected"
    [ "$sessions" = 1 ] || fail "roamtun_sessions is '$sessions', not 1"
    [ "$planned" = 1 ] || fail "the planned switch was counted '$planned' times"
    [ "$unexpected" = 1 ] || fail "the unexpected switch was counted '$unexpected' times"
    # The client names its session's peer "server"; its bytes match its status (the apps are done).
    sent=$(metric c "$client" 'roamtun_peer_bytes_sent_total{peer="server"}')
    status_sent=$(json_get "$WORK/client.sock" 's["peers"][0]["counters"]["bytes_sent"]')
    echo "metrics:     client: bytes sent $sent (status: $status_sent)"
    [ -n "$sent" ] && [ "$sent" = "$status_sent" ] || fail "the client's bytes sent '$sent' differ from its status ($status_sent)"
    [ "$sent" -ge "$SIZE" ] || fail "the client counts $sent bytes sent for a $SIZE-byte transfer"
    state=$(metric c "$client" 'roamtun_uplink_state{uplink="wlan0",state="active"}')
    [ "$state" = 1 ] || fail "the client does not show wlan0 active: $(grep uplink_state "$WORK/client.metrics")"
    local code
    code=$(c curl -s -o /dev/null -w '%{http_code}' http://198.18.0.1:9477/other)
    [ "$code" = 404 ] || fail "GET /other answered $code, not 404"
}

test_a_taken_metrics_address_is_a_clear_error() {
    netns_topology
    netns_second_uplink
    SERVER_EXTRA='metrics_listen = "198.18.0.1:7700"' netns_configs
    local out code
    out=$(s "$ROAMTUN" server -c "$WORK/server.toml" 2>&1)
    code=$?
    echo "error:       exit $code: $(echo "$out" | tail -n 1)"
    [ "$code" = 1 ] || fail "exit $code, not 1"
    echo "$out" | grep -q "cannot listen for metrics on 198.18.0.1:7700" || fail "the error does not name the metrics address: $out"
    s ip link show roamsrv0 >/dev/null 2>&1 && fail "the TUN is left behind"
    return 0
}

for t in $(declare -F | awk '{print $3}' | grep '^test_'); do
    run "$t"
done
echo "metrics: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
