#!/usr/bin/env bash
# Benchmark: how long a new connection takes beside many busy ones, by tuning.tcp_buffer (each app
# flow's window). A benchmark, not a test: it reports numbers, it judges none.
#
#   ns client: roam0 100.64.0.2, wlan0 198.18.1.2/24 <== veth ==> up1 198.18.1.1/24 ns server: roamsrv0 100.64.0.1
#
# The client's apps run $FLOWS busy uploads (iperf3, $PROCS processes of $((FLOWS / PROCS)) flows) to
# the server's virtual IP for $BENCH_SECS s. Meanwhile $PROBES new connections, one after another,
# each connect and echo 4 KiB with an echo server beside the iperf3 ones; the time of each, from
# connect() to the last echoed byte, is the figure. Setups, each with a fresh pair of daemons:
#
#   (a) idle:     the probes alone (the baseline of the same run)
#   (b) default:  the default [tuning] (tcp_buffer 256 KiB)
#   (c) small:    tcp_buffer = 32768, the small-device tuning of docs/config.md
#
# Reported per setup: probe times (median, slowest), what the busy flows carried, packets the kernel
# dropped at the full TUN queue, and the client side's TCP retransmissions with two of their causes:
# tail loss probes (an ACK later than the sender's timer, no loss needed) and zero-window probes (a
# flow held back by the daemon's backpressure). Progress goes to stderr; the table goes to stdout.
# Run as root: sudo ./scripts/bench-many-flows.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BENCH_SECS=${BENCH_SECS:-15}
FLOWS=${FLOWS:-400}
PROCS=${PROCS:-4}
PROBES=${PROBES:-20}
PER_PROC=$((FLOWS / PROCS))
[ "$PER_PROC" -ge 1 ] && [ "$PER_PROC" -le 128 ] || { echo "FLOWS/PROCS must be 1..128 (iperf3's limit)" >&2; exit 1; }
[ "$PROBES" -ge 1 ] && [ "$PROBES" -le 200 ] || { echo "PROBES must be 1..200" >&2; exit 1; }
BASE_PORT=5300

# shellcheck source=lib/prepare.sh
. "$ROOT/scripts/lib/prepare.sh"
prepare "the benchmark"
trap netns_cleanup EXIT
# Its `teardown` ends each setup (daemons, apps and namespaces).
# shellcheck source=lib/roaming.sh
. "$ROOT/scripts/lib/roaming.sh"
APPS="python3 $ROOT/tests/netns/apps.py"

# probe: PROBES sequential connect + 4 KiB echo round trips to the echo server; prints each in ms.
probe() {
    c timeout $((PROBES + 60)) python3 - "$PROBES" <<'EOF'
import socket, sys, time
for _ in range(int(sys.argv[1])):
    t0 = time.monotonic()
    s = socket.create_connection(("100.64.0.1", 7000), timeout=30)
    s.sendall(b"x" * 4096)
    got = 0
    while got < 4096:
        chunk = s.recv(65536)
        if not chunk:
            sys.exit("the echo server closed early")
        got += len(chunk)
    s.close()
    print("%.1f" % ((time.monotonic() - t0) * 1e3), flush=True)
    time.sleep(0.3)
EOF
}

# Packets the kernel dropped at the TUN: on their way to the daemon (its queue full) and on their
# way from it (the receive backlog full).
tun_dropped() { c cat /sys/class/net/roam0/statistics/tx_dropped /sys/class/net/roam0/statistics/rx_dropped | awk '{s += $1} END {print s}'; }
# counters: the client namespace's TCP retransmissions, tail loss probes and zero-window probes.
counters() {
    c nstat -az TcpRetransSegs TcpExtTCPLossProbes TcpExtTCPWinProbe |
        awk '$1 == "TcpRetransSegs" {r = $2} $1 == "TcpExtTCPLossProbes" {t = $2} $1 == "TcpExtTCPWinProbe" {w = $2} END {print r + 0, t + 0, w + 0}'
}

declare -A MEDIAN SLOWEST GBITS DROPPED RETRANS TLP WINPROBE
# measure SETUP LOADED: the probes, under the busy flows when LOADED is yes.
measure() {
    local setup=$1 loaded=$2 i pids=() d0 r0 t0 w0 r1 t1 w1 times
    d0=$(tun_dropped)
    read -r r0 t0 w0 < <(counters)
    if [ "$loaded" = yes ]; then
        for ((i = 1; i <= PROCS; i++)); do
            c timeout $((BENCH_SECS + 60)) iperf3 -c 100.64.0.1 -p $((BASE_PORT + i)) -P "$PER_PROC" \
                -t "$BENCH_SECS" -J >"$WORK/iperf-$setup-$i.json" 2>>"$WORK/iperf-client.log" &
            pids+=($!)
            echo "$!" >>"$PIDFILE"
        done
        # The flows open and fill their windows first.
        sleep 3
    fi
    times=$(probe) || { log "$setup: a probe failed"; exit 1; }
    local failed=0
    for i in "${pids[@]}"; do wait "$i" || failed=1; done
    [ $failed -eq 0 ] || { log "$setup: an iperf3 client failed (see $WORK/iperf-client.log)"; exit 1; }
    DROPPED[$setup]=$(($(tun_dropped) - d0))
    read -r r1 t1 w1 < <(counters)
    RETRANS[$setup]=$((r1 - r0)) TLP[$setup]=$((t1 - t0)) WINPROBE[$setup]=$((w1 - w0))
    read -r MEDIAN[$setup] SLOWEST[$setup] < <(echo "$times" | python3 -c 'import statistics, sys
t = [float(x) for x in sys.stdin.read().split()]
print("%.1f %.1f" % (statistics.median(t), max(t)))')
    if [ "$loaded" = yes ]; then
        GBITS[$setup]=$(python3 -c 'import glob, json, sys
got = sum(json.load(open(f))["end"]["sum_received"]["bytes"] for f in glob.glob(sys.argv[1] + "/iperf-%s-*.json" % sys.argv[2]))
print("%.2f" % (got * 8 / float(sys.argv[3]) / 1e9))' "$WORK" "$setup" "$BENCH_SECS")
    else
        GBITS[$setup]=-
    fi
    log "$setup: probes median ${MEDIAN[$setup]} ms, slowest ${SLOWEST[$setup]} ms; busy flows ${GBITS[$setup]} Gbit/s; TUN drops ${DROPPED[$setup]}, retransmissions ${RETRANS[$setup]} (loss probes ${TLP[$setup]}, zero-window probes ${WINPROBE[$setup]})"
}

# setup_and_measure SETUP LOADED TUNING: fresh daemons with TUNING, then measure.
setup_and_measure() {
    local setup=$1 loaded=$2 tuning=$3 i
    log "($setup) $tuning"
    netns_topology
    CLIENT_EXTRA="[tuning]
$tuning" SERVER_EXTRA="[tuning]
$tuning" netns_configs
    netns_start_daemons
    spawn "$WORK/apps.log" "$NS_S" $APPS echo-server 100.64.0.1 7000 "$WORK/echo.ready"
    for ((i = 1; i <= PROCS; i++)); do spawn "$WORK/iperf-server.log" "$NS_S" iperf3 -s -B 100.64.0.1 -p $((BASE_PORT + i)); done
    wait_ready "$WORK/echo.ready"
    wait_for 10 "$PROCS iperf3 servers" s sh -c "[ \$(ss -ltnH | grep -c '100.64.0.1:53') -ge $PROCS ]"
    measure "$setup" "$loaded"
    teardown
}

log "$FLOWS busy flows ($PROCS x $PER_PROC), $PROBES probes per setup, ${BENCH_SECS} s of load"
setup_and_measure idle no ""
setup_and_measure default yes ""
setup_and_measure small yes "tcp_buffer = 32768"

# ---- report
ratio() { python3 -c 'import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); print("%.1f" % (a / b) if b else "n/a")' "$1" "$2"; }
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null || COMMIT="$COMMIT (with uncommitted changes)"
echo
echo "roamtun many-flows benchmark: $(date -u '+%Y-%m-%d %H:%M UTC'), nproc $(nproc), kernel $(uname -r), commit $COMMIT"
echo "$FLOWS busy upload flows ($PROCS iperf3 x $PER_PROC) for ${BENCH_SECS} s over veth (no added RTT); $PROBES new connections, each connect + 4 KiB echo, one after another"
echo
printf '%-8s %-10s %-11s %-12s %-10s %s\n' setup "median ms" "slowest ms" "busy Gbit/s" "TUN drops" "retransmissions (loss probes, zero-window probes)"
for k in idle default small; do
    printf '%-8s %-10s %-11s %-12s %-10s %s\n' "$k" "${MEDIAN[$k]}" "${SLOWEST[$k]}" "${GBITS[$k]}" "${DROPPED[$k]}" \
        "${RETRANS[$k]} (${TLP[$k]}, ${WINPROBE[$k]})"
done
echo
echo "median against idle: default $(ratio "${MEDIAN[default]}" "${MEDIAN[idle]}")x, tcp_buffer 32 KiB $(ratio "${MEDIAN[small]}" "${MEDIAN[idle]}")x"
