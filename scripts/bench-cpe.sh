#!/usr/bin/env bash
# Benchmark: the client daemon as a router (CPE) for a LAN of $CPE_HOSTS hosts with $CPE_FLOWS TCP
# flows between them and the server side, against the same router forwarding the same flows without
# a tunnel, in one run. A benchmark, not a test: it reports numbers, it judges none.
#
#   ns host0..hostN-1: eth0 198.19.50.(10+i)/24 ┐
#                                               ┴ veth ==> bridge lan0 198.19.50.1/24 in ns client
#   ns client (the router): wlan0 198.18.1.2/24 <==== veth ====> up1 198.18.1.1/24 ns server
#
#   (a) forwarded: the router's kernel routes the LAN to 198.18.1.1 (no tunnel): the baseline
#   (b) roamtun:   [lan] mode = "masquerade" with the default [tuning], to 100.64.0.1 through the tunnel
#   (c) roamtun:   the same with the small-device [tuning] of docs/config.md ("Router (CPE)")
#
# Per setup: every host runs iperf3 with $CPE_FLOWS/$CPE_HOSTS parallel flows at once, to its own
# iperf3 server, for $BENCH_SECS s, up (LAN -> server) and then down (-R). Reported: the bytes all
# receivers got, the whole machine's CPU time per GiB carried (all processes and the kernel, so the
# iperf3 ends' share is in every setup alike), how evenly the flows shared it (Jain's index, 1 when
# all carried the same, and the slowest flow against the mean), the senders' retransmission timeouts
# and, for roamtun, the client daemon's VmRSS idle, while all flows are open, and its VmHWM at the
# end. Progress goes to stderr; the table goes to stdout.
#
#   CPE_SETUPS="forwarded roamtun roamtun-small"   the setups to run (default all three)
#   CPE_TUN_QUEUE=N   sets both TUNs' transmit queue to N packets after the daemons start, instead of
#                     the length roamtun gives them (Tuning::tun_queue_len), to compare the two
# Run as root: sudo ./scripts/bench-cpe.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BENCH_SECS=${BENCH_SECS:-10}
CPE_HOSTS=${CPE_HOSTS:-20}
CPE_FLOWS=${CPE_FLOWS:-500}
PER_HOST=$(((CPE_FLOWS + CPE_HOSTS - 1) / CPE_HOSTS))
[ "$CPE_HOSTS" -ge 1 ] && [ "$CPE_HOSTS" -le 200 ] || { echo "CPE_HOSTS must be 1..200" >&2; exit 1; }
# iperf3 refuses more than 128 parallel streams.
[ "$PER_HOST" -le 128 ] || { echo "CPE_FLOWS/CPE_HOSTS must be at most 128" >&2; exit 1; }
BASE_PORT=5300
CPE_SETUPS=${CPE_SETUPS:-forwarded roamtun roamtun-small}
CPE_TUN_QUEUE=${CPE_TUN_QUEUE:-}

# shellcheck source=lib/prepare.sh
. "$ROOT/scripts/lib/prepare.sh"
prepare "the benchmark" --bench
HOST_NS=()
for ((i = 0; i < CPE_HOSTS; i++)); do HOST_NS+=("rt-h$i-$$"); done
EXTRA_NS=("${HOST_NS[@]}")
trap netns_cleanup EXIT

host_ip() { echo "198.19.50.$((10 + $1))"; }

# The "cpu" line of /proc/stat: busy ticks of all CPUs (user, nice, system, irq, softirq).
cpu_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8; exit}' /proc/stat; }

# rto_count NS...: retransmission timeouts (TcpExtTCPTimeouts) of the TCP senders in all NS so far.
rto_count() {
    local ns total=0 n
    for ns in "$@"; do
        n=$(ip netns exec "$ns" nstat -asz TcpExtTCPTimeouts | awk '$1 == "TcpExtTCPTimeouts" {print $2}')
        total=$((total + ${n:-0}))
    done
    echo "$total"
}

# rss PID / hwm PID: VmRSS / VmHWM in MiB.
rss() { awk '/^VmRSS:/ {printf "%.1f\n", $2 / 1024}' "/proc/$1/status"; }
hwm() { awk '/^VmHWM:/ {printf "%.1f\n", $2 / 1024}' "/proc/$1/status"; }

# run_iperf SETUP DIR TARGET: all hosts' iperf3 at once toward TARGET (DIR up or down); sets GIB to
# the GiB the receivers got, CPU to CPU-s per GiB, FAIR to Jain's index over the flows' bytes, SLOW
# to the slowest flow's bytes against the mean, RTO to the senders' retransmission timeouts and, when
# SETUP is a roamtun one, RSS_OPEN to the client daemon's VmRSS with every flow open.
run_iperf() {
    local setup=$1 dir=$2 target=$3 i pids=() before after rev=() t0=$SECONDS senders=("${HOST_NS[@]}") rto0
    [ "$dir" = down ] && rev=(-R) && senders=("$NS_S")
    rto0=$(rto_count "${senders[@]}")
    before=$(cpu_ticks)
    for ((i = 0; i < CPE_HOSTS; i++)); do
        ip netns exec "${HOST_NS[$i]}" timeout $((BENCH_SECS + 90)) iperf3 -c "$target" \
            -p $((BASE_PORT + i)) -P "$PER_HOST" -t "$BENCH_SECS" "${rev[@]}" -J \
            >"$WORK/iperf-$setup-$dir-$i.json" 2>>"$WORK/iperf-client.log" &
        pids+=($!)
        echo "$!" >>"$PIDFILE"
    done
    RSS_OPEN=
    if [ "$setup" != forwarded ]; then
        # Halfway through, every flow is open and carrying data.
        sleep $((BENCH_SECS / 2))
        RSS_OPEN=$(rss "$CLIENT_PID")
    fi
    local failed=0
    for i in "${pids[@]}"; do wait "$i" || failed=1; done
    after=$(cpu_ticks)
    [ $failed -eq 0 ] || { log "$setup $dir: an iperf3 client failed (see $WORK/iperf-client.log)"; exit 1; }
    RTO=$(($(rto_count "${senders[@]}") - rto0))
    read -r GIB CPU FAIR SLOW < <(python3 -c 'import glob, json, os, sys
setup, d, busy0, busy1 = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
runs = [json.load(open(f)) for f in glob.glob(sys.argv[5] + "/iperf-%s-%s-*.json" % (setup, d))]
got = sum(r["end"]["sum_received"]["bytes"] for r in runs)
flows = [s["receiver"]["bytes"] for r in runs for s in r["end"]["streams"]]
gib = got / 2**30
mean = sum(flows) / len(flows)
fair = sum(flows) ** 2 / (len(flows) * sum(f * f for f in flows))
print("%.2f" % gib, "%.2f" % ((busy1 - busy0) / os.sysconf("SC_CLK_TCK") / gib), "%.2f" % fair, "%.2f" % (min(flows) / mean))' \
        "$setup" "$dir" "$before" "$after" "$WORK")
    WALL=$((SECONDS - t0))
    log "$setup $dir: $GIB GiB, $WALL s from the first start to the last iperf3's end, $CPU CPU-s/GiB, fairness $FAIR (slowest flow $SLOW of the mean), $RTO retransmission timeouts, client RSS with all flows open ${RSS_OPEN:-n/a} MiB"
}

declare -A GIB_UP GIB_DOWN CPU_UP CPU_DOWN FAIR_UP FAIR_DOWN RTO_UP RTO_DOWN RSS_IDLE RSS_UP RSS_DOWN HWM
measure() {
    local setup=$1 target=$2
    run_iperf "$setup" up "$target"
    GIB_UP[$setup]=$GIB CPU_UP[$setup]=$CPU FAIR_UP[$setup]="$FAIR/$SLOW" RTO_UP[$setup]=$RTO RSS_UP[$setup]=$RSS_OPEN
    run_iperf "$setup" down "$target"
    GIB_DOWN[$setup]=$GIB CPU_DOWN[$setup]=$CPU FAIR_DOWN[$setup]="$FAIR/$SLOW" RTO_DOWN[$setup]=$RTO
    RSS_DOWN[$setup]=$RSS_OPEN
}
runs() { [[ " $CPE_SETUPS " == *" $1 "* ]]; }

log "router $NS_C, server $NS_S, $CPE_HOSTS LAN hosts, $PER_HOST flows each ($((PER_HOST * CPE_HOSTS)) in all)"
netns_topology
c ip link add lan0 type bridge
c ip addr add 198.19.50.1/24 dev lan0
c ip link set lan0 up
for ((i = 0; i < CPE_HOSTS; i++)); do
    ns=${HOST_NS[$i]}
    ip netns add "$ns"
    ip netns exec "$ns" ip link set lo up
    ip link add eth0 netns "$ns" type veth peer name "lan0p$i" netns "$NS_C"
    ip netns exec "$ns" ip addr add "$(host_ip "$i")/24" dev eth0
    ip netns exec "$ns" ip link set eth0 up
    c ip link set "lan0p$i" master lan0 up
    ip netns exec "$ns" ip route add default via 198.19.50.1
    spawn "$WORK/iperf-server.log" "$NS_S" iperf3 -s -p $((BASE_PORT + i))
done
wait_for 10 "$CPE_HOSTS iperf3 servers" s sh -c "[ \$(ss -ltnH | grep -c ':5[3-4][0-9][0-9] ') -ge $CPE_HOSTS ]"

# (a) the router forwarding without a tunnel; the server routes the LAN back through it.
if runs forwarded; then
    log "(a) forwarded: the LAN to 198.18.1.1 through the router's kernel"
    c sysctl -qw net.ipv4.ip_forward=1
    s ip route add 198.19.50.0/24 via 198.18.1.2
    measure forwarded 198.18.1.1
    s ip route del 198.19.50.0/24 via 198.18.1.2
    c sysctl -qw net.ipv4.ip_forward=0
fi

# (b) and (c): roamtun, each with a fresh pair of daemons.
SMALL_TUNING='[tuning]
tcp_buffer = 32768
stream_window = 65536'
roamtun_setup() {
    local setup=$1 tuning=$2
    log "($3) $setup: the LAN to 100.64.0.1 through the tunnel"
    CLIENT_EXTRA="[lan]
prefixes = [\"198.19.50.0/24\"]
mode = \"masquerade\"
$tuning" netns_configs
    netns_start_daemons
    if [ -n "$CPE_TUN_QUEUE" ]; then
        c ip link set roam0 txqueuelen "$CPE_TUN_QUEUE"
        s ip link set roamsrv0 txqueuelen "$CPE_TUN_QUEUE"
    fi
    RSS_IDLE[$setup]=$(rss "$CLIENT_PID")
    measure "$setup" 100.64.0.1
    HWM[$setup]=$(hwm "$CLIENT_PID")
    kill "$CLIENT_PID" "$SERVER_PID"
    wait_for 10 "the daemons to exit" sh -c "! kill -0 $CLIENT_PID 2>/dev/null && ! kill -0 $SERVER_PID 2>/dev/null"
}
runs roamtun && roamtun_setup roamtun "" b
runs roamtun-small && roamtun_setup roamtun-small "$SMALL_TUNING" c

# ---- report
ratio() { python3 -c 'import sys; a, b = float(sys.argv[1]), float(sys.argv[2]); print("%.2f" % (a / b) if b else "n/a")' "$1" "$2"; }
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null || COMMIT="$COMMIT (with uncommitted changes)"
echo
echo "roamtun CPE benchmark: $(date -u '+%Y-%m-%d %H:%M UTC'), nproc $(nproc), kernel $(uname -r), commit $COMMIT"
echo "$CPE_HOSTS LAN hosts x $PER_HOST iperf3 flows, ${BENCH_SECS} s up then ${BENCH_SECS} s down${CPE_TUN_QUEUE:+, TUN queues set to $CPE_TUN_QUEUE packets}; CPU-s/GiB = busy time of the whole machine per GiB received; fair = Jain's index / slowest flow against the mean; RTO = the senders' retransmission timeouts; RSS = the client daemon's VmRSS (MiB): idle / all flows open up / down, VmHWM at the end"
echo
printf '%-14s %-17s %-11s %-6s %-17s %-11s %-6s %-19s %s\n' setup "GiB up (CPU/GiB)" "fair up" "RTO" "GiB down (CPU/GiB)" "fair down" "RTO" "RSS idle/up/down" "VmHWM"
for k in $CPE_SETUPS; do
    printf '%-14s %-17s %-11s %-6s %-17s %-11s %-6s %-19s %s\n' "$k" "${GIB_UP[$k]} (${CPU_UP[$k]})" "${FAIR_UP[$k]}" \
        "${RTO_UP[$k]}" "${GIB_DOWN[$k]} (${CPU_DOWN[$k]})" "${FAIR_DOWN[$k]}" "${RTO_DOWN[$k]}" \
        "${RSS_IDLE[$k]:--}/${RSS_UP[$k]:--}/${RSS_DOWN[$k]:--}" "${HWM[$k]:--}"
done
if runs forwarded; then
    echo
    for k in roamtun roamtun-small; do
        runs "$k" || continue
        echo "CPU per GiB against forwarding, up/down, $k: $(ratio "${CPU_UP[$k]}" "${CPU_UP[forwarded]}")/$(ratio "${CPU_DOWN[$k]}" "${CPU_DOWN[forwarded]}")"
    done
fi
