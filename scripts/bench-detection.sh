#!/usr/bin/env bash
# Benchmark: how fast the client decides that its active uplink is gone, for roamtun (MPTCP and
# wireguard-go have no such decision to log: scripts/bench-handover.sh measures, for all three in one
# run, when the app's data flows again after the same events, kinds "loss" and "blackhole").
#
#   link down   `ip link set wlan0 down`: rtnetlink reports it; time to the "path lost" decision
#   black hole  nftables drops everything behind wlan0 (at the far end), the link stays up. Idle: the Check probes (PING
#               every probe_interval_ms) fall silent, decided after dead_after_ms. Under a paced
#               transfer: the relay socket's bytes go unacknowledged, decided after stall_after_ms
#
# Two uplinks (tests/netns/transition.sh topology), `dead_after_ms = 250`, `probe_interval_ms = 100`,
# `stall_after_ms = 100` (the default).
# The time of each event is taken just before the command that causes it; the time of the decision
# is the timestamp of the client's "path lost" log line. Each event $DETECT_REPS times (default 20),
# p50 / p99 in ms. Run as root: sudo ./scripts/bench-detection.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
REPS=${DETECT_REPS:-20}
# shellcheck source=lib/prepare.sh
. "$ROOT/scripts/lib/prepare.sh"
prepare "the benchmark"
trap netns_cleanup EXIT
# shellcheck disable=SC2034 # netns_configs (lib/netns.sh) reads it
SERVER_ADDR=198.18.0.1

netns_topology
netns_second_uplink
tuning='[tuning]
dead_after_ms = 250
probe_interval_ms = 100
stall_after_ms = 100'
CLIENT_EXTRA="uplinks = [\"wlan0\", \"wwan0\"]
[decision]
dwell_secs = 1
fail_back_after_secs = 1
$tuning" SERVER_EXTRA="$tuning" netns_configs
netns_start_daemons

state() { json_get "$WORK/client.sock" '" ".join(u["name"] + "=" + u["state"] for u in s["uplinks"])'; }
settled() { [ "$(state)" = "wlan0=active wwan0=standby" ]; }
standby_on_wlan0() { [ "$(state)" = "wlan0=standby wwan0=active" ]; }
# decision_ms T0: waits for the client's first "path lost" line for wlan0 logged after T0 (ns since
# the epoch); prints its time minus T0 in ms. Lines of earlier events, or of other paths, do not count.
decision_ms() {
    python3 - "$WORK/client.log" "$1" <<'EOF'
import datetime, re, sys, time
log, t0 = sys.argv[1], int(sys.argv[2]) / 1e9
deadline = time.time() + 10
while time.time() < deadline:
    for line in open(log, errors="replace"):
        line = re.sub(r"\x1b\[[0-9;]*m", "", line)
        if "path lost" not in line or 'uplink=Some("wlan0")' not in line:
            continue
        ts = line.split()[0].rstrip("Z")
        t = datetime.datetime.fromisoformat(ts).replace(tzinfo=datetime.timezone.utc).timestamp()
        if t >= t0:
            print(f"{(t - t0) * 1000:.1f}")
            sys.exit(0)
    time.sleep(0.05)
sys.exit("no path-lost decision within 10 s")
EOF
}
# A black hole in the network behind wlan0, as a broken access point or ISP would make one: the far
# end (the server's up1) drops everything, so the client's kernel sees no local error at all.
blackhole() { drop_all s up1 roamtun_bench_bh; }

summary() {
    python3 - "$@" <<'EOF'
import sys
v = sorted(float(x) for x in sys.argv[1:])
pct = lambda p: v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]
print(f"{pct(50):.0f} / {pct(99):.0f} (min {v[0]:.0f}, max {v[-1]:.0f})")
EOF
}

declare -A RESULT
wait_for 20 "session on wlan0 with a standby on wwan0" settled
for kind in link-down black-hole-idle black-hole-busy; do
    if [ "$kind" = black-hole-busy ]; then
        spawn "$WORK/apps.log" "$NS_S" $APPS bulk-server 100.64.0.1 7200 "$WORK/bulk.ready"
        wait_ready "$WORK/bulk.ready"
        spawn "$WORK/bulk.out" "$NS_C" $APPS bulk-client 100.64.0.1 7200 --size $((4 << 30)) --rate $((8 << 20)) --timeout 900
    fi
    vals=()
    for _ in $(seq "$REPS"); do
        t0=$(date +%s%N)
        case "$kind" in
            link-down) c ip link set wlan0 down ;;
            *) blackhole ;;
        esac
        vals+=("$(decision_ms "$t0")")
        case "$kind" in
            link-down)
                c ip link set wlan0 up
                c ip route replace default via 198.18.1.1 dev wlan0 metric 100
                ;;
            *) s nft delete table inet roamtun_bench_bh ;;
        esac
        # Back to the starting point: a standby path on wlan0 again, and the session moved there (by
        # hand: the decision task rightly distrusts an uplink that failed several times a minute).
        wait_for 30 "a standby path on wlan0 again" standby_on_wlan0
        "$ROAMTUN" switch wlan0 --socket "$WORK/client.sock" >/dev/null
        wait_for 30 "the session back on wlan0" settled
    done
    RESULT[$kind]=$(summary "${vals[@]}")
    log "$kind: ${RESULT[$kind]} (${vals[*]})"
done

echo
echo "Time from the event to the client's decision that the path is lost, ms, p50 / p99 over $REPS runs"
echo "(dead_after_ms 250, probe_interval_ms 100, stall_after_ms 100):"
echo
echo "| event | decision ms |"
echo "|---|---:|"
for kind in link-down black-hole-idle black-hole-busy; do echo "| $kind | ${RESULT[$kind]} |"; done
echo
echo "$(nproc) CPUs, kernel $(uname -r), roamtun $(git rev-parse --short HEAD), $(date -u +%Y-%m-%d)"
