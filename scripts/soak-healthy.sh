#!/usr/bin/env bash
# Soak (a benchmark, not a CI test): ten minutes on three healthy uplinks with live apps, with the
# quick detection settings (dead_after_ms 250, probe_interval_ms 100, stall_after_ms 100), the default
# decision task (min_gain 5, dwell 10 s, fail-back after 30 s) and both daemons busy. Nothing is done
# to the links, so every switch and every lost path is a false alarm. Reports them, the apps' results
# (a paced transfer both ways with sha256, interactive echoes from both sides, a UDP stream) and the
# daemons' RSS; exits 1 on any switch, lost path or app failure.
#
#   ns client: eth0 198.18.3.2 (preferred), wlan0 198.18.1.2, wwan0 198.18.2.2 (metered)
#   ns server: roamtun server on 198.18.0.1:7700
#
# SOAK_SECS (default 600) sets the length, SOAK_RATE the transfer rate each way (default 4 MB/s).
# Run as root: sudo ./scripts/soak-healthy.sh
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
SECS=${SOAK_SECS:-600}
RATE=${SOAK_RATE:-4000000}
# shellcheck source=lib/prepare.sh
. "$ROOT/scripts/lib/prepare.sh"
prepare "the soak"
trap netns_cleanup EXIT
# shellcheck disable=SC2034 # netns_configs (lib/netns.sh) reads it
SERVER_ADDR=198.18.0.1

netns_topology
netns_second_uplink
netns_third_uplink
tuning='[tuning]
dead_after_ms = 250
probe_interval_ms = 100
stall_after_ms = 100'
CLIENT_EXTRA="uplinks = [\"eth0\", \"wlan0\", { name = \"wwan0\", metered = true }]
$tuning" SERVER_EXTRA="$tuning" netns_configs
netns_start_daemons || exit 1
states() { json_get "$WORK/client.sock" '" ".join(u["name"] + "=" + u["state"] for u in s["uplinks"])'; }
settled() { [ "$(states)" = "eth0=active wlan0=standby wwan0=standby" ]; }
wait_for 20 "the session on eth0 with standby paths on wlan0 and wwan0" settled || { log "not settled: $(states)"; exit 1; }
lost_before=$(grep -c "path lost" "$WORK/client.log" "$WORK/server.log" | awk -F: '{s+=$2} END {print s}')

size=$((RATE * SECS))
spawn "$WORK/apps.log" "$NS_S" $APPS bulk-server 100.64.0.1 7200 "$WORK/bulk.ready"
spawn "$WORK/apps.log" "$NS_S" $APPS echo-server 100.64.0.1 7000 "$WORK/echo.ready"
spawn "$WORK/apps.log" "$NS_S" $APPS udp-echo-server 100.64.0.1 7003 "$WORK/udp.ready"
spawn "$WORK/apps.log" "$NS_C" $APPS echo-server 100.64.0.2 7100 "$WORK/cecho.ready"
for f in bulk echo udp cecho; do wait_ready "$WORK/$f.ready" || exit 1; done
log "soaking for $SECS s: $((size >> 20)) MiB each way at $((RATE / 1000)) kB/s, echoes every 50 ms both ways, UDP"
spawn "$WORK/bulk.out" "$NS_C" $APPS bulk-client 100.64.0.1 7200 --size "$size" --rate "$RATE" --timeout $((SECS + 120))
bulk=$LAST_PID
spawn "$WORK/inter.out" "$NS_C" $APPS interactive 100.64.0.1 7000 "$WORK/stop" --timeout $((SECS + 120))
inter=$LAST_PID
spawn "$WORK/sinter.out" "$NS_S" $APPS interactive 100.64.0.2 7100 "$WORK/stop" --timeout $((SECS + 120))
sinter=$LAST_PID
spawn "$WORK/udp.out" "$NS_C" $APPS udp-stream 100.64.0.1 7003 "$WORK/stop" --timeout $((SECS + 120))
udp=$LAST_PID

rc=0
wait "$bulk" || rc=1
touch "$WORK/stop"
wait "$inter" || rc=1
wait "$sinter" || rc=1
wait "$udp" || true
grep -q "bulk-server: received $size/$size bytes, sha256 ok" "$WORK/apps.log" || rc=1

rss() { awk '/VmRSS/ {printf "%.1f MiB", $2 / 1024}' "/proc/$1/status"; }
epoch=$(json_get "$WORK/client.sock" 's["peers"][0]["epoch"]')
lost=$(($(grep -c "path lost" "$WORK/client.log" "$WORK/server.log" | awk -F: '{s+=$2} END {print s}') - lost_before))
echo
echo "soak: $SECS s on healthy links, roamtun $(git rev-parse --short HEAD), $(nproc) CPUs, kernel $(uname -r), $(date -u +%Y-%m-%d)"
echo "switches:    $epoch (session epoch); paths lost (active or standby, both daemons): $lost"
grep "path lost" "$WORK/client.log" "$WORK/server.log" | tail -n 5 | sed 's/^/             /'
echo "uplinks:     $(states)"
echo "bulk:        $(tail -n 1 "$WORK/bulk.out")"
echo "interactive: client-opened: $(tail -n 1 "$WORK/inter.out")"
echo "interactive: server-opened: $(tail -n 1 "$WORK/sinter.out")"
echo "udp-stream:  $(tail -n 1 "$WORK/udp.out")"
echo "rss:         client $(rss "$CLIENT_PID"), server $(rss "$SERVER_PID")"
[ "$epoch" -eq 0 ] && [ "$lost" -eq 0 ] || rc=1
[ $rc -eq 0 ] && echo "soak: no false switch, every app verified" || echo "soak: FAILED"
exit $rc
