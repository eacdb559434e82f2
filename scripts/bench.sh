#!/usr/bin/env bash
# Benchmark: throughput and TCP request/response latency of roamtun against the bare veth and against
# wireguard-go, in one topology, one after the other (never two tunnels at once: they would compete
# for the same cores). A benchmark, not a test: it reports numbers, it judges none.
#
#   ns client 198.18.1.2/24 (wlan0) <==== veth ====> 198.18.1.1/24 (up1) ns server
#   (a) direct veth : client -> 198.18.1.1
#   (b) roamtun     : client -> roam0 100.64.0.2 -> roamtun client ~~ TLS ~~ roamtun server -> 100.64.0.1
#   (c) wireguard-go: client -> wgc 100.65.0.2 ~~ UDP 198.18.1.1:51820 ~~ wgs 100.65.0.1
#   (d) TCP relay   : client -> relay 198.18.1.2 ~~ TCP ~~ relay 198.18.1.1 -> 198.18.1.1 (run right
#                     after (a)), twice: splice (no copy into user space) and copy (one in, one out).
#                     The same three kernel TCP connections as roamtun, without encryption, TUNs or
#                     smoltcp: what the relay's shape alone costs on this machine (lib/tcp_relay.py)
#
# Per setup: iperf3 single flow up (client -> server) and down (-R), $BENCH_RUNS runs of
# $BENCH_SECS s each, median; a ping-pong of $BENCH_RR round trips of 64 bytes on one TCP connection
# (TCP_NODELAY), p50 and p99; the whole machine's CPU time per GiB carried and the share of it the
# hypervisor stole (a busy neighbour slows every figure of a run). For roamtun also the daemons'
# VmRSS/VmHWM, idle and after the throughput runs. Progress goes to stderr; the table and a markdown
# snippet for docs/benchmarks.md go to stdout. Run as root: sudo ./scripts/bench.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BENCH_SECS=${BENCH_SECS:-5}
BENCH_RUNS=${BENCH_RUNS:-3}
BENCH_RR=${BENCH_RR:-2000}
IPERF_PORT=5201
RR_PORT=7100
# The TCP relays listen on these ports plus an offset (client relay +100, server relay +200).
PORT_SHIFT=0
WG_PORT=51820

# shellcheck source=lib/prepare.sh
. "$ROOT/scripts/lib/prepare.sh"
prepare "the benchmark" --bench
LATENCY="$ROOT/scripts/lib/latency.py"
TCP_RELAY="$ROOT/scripts/lib/tcp_relay.py"
# wireguard-go's control sockets live in /var/run/wireguard/NAME.sock, outside any namespace: the
# interface names must differ between the two namespaces and from other runs.
WG_C="wgc-$$"
WG_S="wgs-$$"

bench_cleanup() {
    local rc=$?
    if [ $rc -ne 0 ] && [ -d "$WORK" ]; then
        echo "benchmark failed (exit $rc); log tails:" >&2
        for f in "$WORK"/*.log; do
            [ -s "$f" ] || continue
            echo "--- $f" >&2
            tail -n 15 "$f" >&2
        done
    fi
    # Stops every process by PID (wireguard-go too: SIGTERM makes it remove its socket), deletes the
    # namespaces and with them the TUN and wireguard interfaces.
    netns_cleanup
    rm -f "/var/run/wireguard/$WG_C.sock" "/var/run/wireguard/$WG_S.sock"
}
trap bench_cleanup EXIT

not_running() { ! kill -0 "$1" 2>/dev/null; }

# stop_pid PID NAME: SIGTERM, then waits (bounded) for the process to exit; SIGKILL if it does not.
stop_pid() {
    kill "$1" 2>/dev/null || true
    if ! wait_for 10 "$2 to exit" not_running "$1"; then
        kill -9 "$1" 2>/dev/null || true
    fi
    wait "$1" 2>/dev/null || true
}

iperf_listening() { s sh -c "ss -ltn | grep -q ':$IPERF_PORT '"; }

start_iperf_server() {
    spawn "$WORK/iperf-server.log" "$NS_S" iperf3 -s -p "$IPERF_PORT"
    IPERF_PID=$LAST_PID
    wait_for 10 "iperf3 server" iperf_listening
}

# The "cpu" line of /proc/stat: "busy steal" in clock ticks. Busy is user, nice, system, irq and
# softirq time of all CPUs (every process and the kernel); steal is time the hypervisor gave our
# virtual CPUs to someone else, which makes every figure of that run slower.
cpu_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $9; exit}' /proc/stat; }

# iperf_once DST up|down: one single-flow run from the client ns; sets IPERF_GBPS to the Gbit/s
# received, IPERF_RETR to the sender's TCP retransmits, IPERF_CPU to the whole machine's CPU
# seconds per GiB carried and IPERF_STEAL to the share of the CPUs' time stolen during the run (%).
# Not run in $(...): it may restart the iperf3 server, whose PID must stay known here.
iperf_once() {
    local dst=$1 dir=$2 rev='' before after
    [ "$dir" = down ] && rev=-R
    before=$(cpu_ticks)
    # shellcheck disable=SC2086 # $rev is empty or one word
    if ! timeout --foreground $((BENCH_SECS + 15)) ip netns exec "$NS_C" \
        iperf3 -c "$dst" -p "$((IPERF_PORT + PORT_SHIFT))" -t "$BENCH_SECS" --connect-timeout 3000 -J $rev \
        >"$WORK/iperf.json" 2>>"$WORK/iperf-client.log"; then
        log "iperf3 to $dst ($dir) failed: $(grep -o '"error":.*' "$WORK/iperf.json" | head -n 1)"
        # A client that died mid-test can leave the server busy: start a fresh one.
        stop_pid "$IPERF_PID" "iperf3 server"
        start_iperf_server
        return 1
    fi
    after=$(cpu_ticks)
    read -r IPERF_GBPS IPERF_RETR IPERF_CPU IPERF_STEAL < <(python3 -c 'import json, os, sys
end = json.load(open(sys.argv[1]))["end"]
hz, cpus = os.sysconf("SC_CLK_TCK"), os.cpu_count()
busy0, steal0 = map(int, sys.argv[2].split())
busy1, steal1 = map(int, sys.argv[3].split())
got = end["sum_received"]
gib = got["bytes"] / 2**30
print("%.2f" % (got["bits_per_second"] / 1e9), end["sum_sent"].get("retransmits", "n/a"),
      "%.2f" % ((busy1 - busy0) / hz / gib), "%.0f" % (100 * (steal1 - steal0) / hz / cpus / got["seconds"]))' \
        "$WORK/iperf.json" "$before" "$after")
}

# median / minmax of the numbers given; "n/a" when there are none.
# MEDIAN_FMT: printf format of the median (default two decimals).
median() {
    printf '%s\n' "$@" | awk '/^[0-9.]+$/' | sort -g |
        awk -v f="${MEDIAN_FMT:-%.2f}\n" '{v[NR]=$1} END {if (NR==0) print "n/a"; else if (NR%2) printf f, v[(NR+1)/2]; else printf f, (v[NR/2]+v[NR/2+1])/2}'
}
minmax() {
    printf '%s\n' "$@" | awk '/^[0-9.]+$/' | sort -g |
        awk 'NR==1 {lo=$1} {hi=$1} END {if (NR==0) print "n/a"; else printf "%.2f-%.2f\n", lo, hi}'
}
maximum() {
    printf '%s\n' "$@" | awk '/^[0-9.]+$/' | sort -g | awk 'END {print (NR ? $1 : "n/a")}'
}
ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN {if (a ~ /^[0-9.]+$/ && b ~ /^[0-9.]+$/ && b > 0) printf "%.2f\n", a/b; else print "n/a"}'
}

declare -A UP DOWN UP_RANGE DOWN_RANGE UP_RETR DOWN_RETR UP_CPU DOWN_CPU UP_STEAL DOWN_STEAL RR50 RR99 MTU
SETUPS=(direct splice copy roamtun wireguard)
declare -A LABEL=([direct]="direct veth" [splice]="TCP relay, splice" [copy]="TCP relay, copy"
    [roamtun]="roamtun" [wireguard]="wireguard-go")

# throughput SETUP DST: $BENCH_RUNS runs per direction.
throughput() {
    local setup=$1 dst=$2 dir i
    local -a samples retr cpu steal
    for dir in up down; do
        samples=()
        retr=()
        cpu=()
        steal=()
        for i in $(seq "$BENCH_RUNS"); do
            if iperf_once "$dst" "$dir"; then
                samples+=("$IPERF_GBPS")
                retr+=("$IPERF_RETR")
                cpu+=("$IPERF_CPU")
                steal+=("$IPERF_STEAL")
                log "${LABEL[$setup]} $dir run $i: $IPERF_GBPS Gbit/s, $IPERF_RETR retransmits," \
                    "$IPERF_CPU CPU-s/GiB, $IPERF_STEAL % stolen"
            fi
        done
        if [ "$dir" = up ]; then
            UP[$setup]=$(median "${samples[@]}")
            UP_RANGE[$setup]=$(minmax "${samples[@]}")
            UP_RETR[$setup]=$(MEDIAN_FMT=%d median "${retr[@]}")
            UP_CPU[$setup]=$(median "${cpu[@]}")
            UP_STEAL[$setup]=$(maximum "${steal[@]}")
        else
            DOWN[$setup]=$(median "${samples[@]}")
            DOWN_RANGE[$setup]=$(minmax "${samples[@]}")
            DOWN_RETR[$setup]=$(MEDIAN_FMT=%d median "${retr[@]}")
            DOWN_CPU[$setup]=$(median "${cpu[@]}")
            DOWN_STEAL[$setup]=$(maximum "${steal[@]}")
        fi
    done
}

# latency SETUP DST: the TCP ping-pong; p50 and p99 in microseconds.
latency() {
    local setup=$1 dst=$2 out
    if out=$(timeout --foreground 60 ip netns exec "$NS_C" python3 "$LATENCY" client "$dst" "$((RR_PORT + PORT_SHIFT))" \
        --count "$BENCH_RR" --size 64 2>>"$WORK/latency-client.log"); then
        read -r "RR50[$setup]" "RR99[$setup]" <<<"$out"
        log "${LABEL[$setup]} TCP request/response: p50 ${RR50[$setup]} us, p99 ${RR99[$setup]} us"
    else
        log "${LABEL[$setup]} TCP request/response failed"
        RR50[$setup]=n/a
        RR99[$setup]=n/a
    fi
}

# mem PID: "VmRSS VmHWM" in MiB.
mem() {
    awk '/^VmRSS:/ {r=$2} /^VmHWM:/ {h=$2} END {printf "%.1f %.1f\n", r/1024, h/1024}' "/proc/$1/status"
}

mtu() { ip netns exec "$1" cat "/sys/class/net/$2/mtu"; }

bench_start=$SECONDS
log "namespaces $NS_C (client) and $NS_S (server), veth 198.18.1.2 <-> 198.18.1.1"
netns_topology
MTU[direct]=$(mtu "$NS_C" wlan0)
start_iperf_server
spawn "$WORK/latency-server.log" "$NS_S" python3 "$LATENCY" server 0.0.0.0 "$RR_PORT" "$WORK/rr.ready"
wait_ready "$WORK/rr.ready"

# (a) direct veth
log "(a) direct veth: 198.18.1.1"
throughput direct 198.18.1.1
latency direct 198.18.1.1

# (d) the two plain TCP relays, each in front of the same iperf3 and echo servers
tcp_relay() {
    local mode=$1 port ready=() pids=() pid
    log "(d) TCP relay ($mode): 198.18.1.2 -> 198.18.1.1 -> 198.18.1.1"
    for port in "$IPERF_PORT" "$RR_PORT"; do
        spawn "$WORK/relay-server.log" "$NS_S" python3 "$TCP_RELAY" 198.18.1.1 $((port + 200)) \
            198.18.1.1 "$port" "$WORK/relay-$mode-s-$port.ready" --mode "$mode"
        pids+=("$LAST_PID")
        spawn "$WORK/relay-client.log" "$NS_C" python3 "$TCP_RELAY" 198.18.1.2 $((port + 100)) \
            198.18.1.1 $((port + 200)) "$WORK/relay-$mode-c-$port.ready" --mode "$mode"
        pids+=("$LAST_PID")
        ready+=("$WORK/relay-$mode-s-$port.ready" "$WORK/relay-$mode-c-$port.ready")
    done
    for f in "${ready[@]}"; do wait_ready "$f"; done
    MTU[$mode]=${MTU[direct]}
    PORT_SHIFT=100
    throughput "$mode" 198.18.1.2
    latency "$mode" 198.18.1.2
    PORT_SHIFT=0
    for pid in "${pids[@]}"; do stop_pid "$pid" "TCP relay"; done
}
tcp_relay splice
tcp_relay copy

# (b) roamtun
log "(b) roamtun: 100.64.0.1 through the tunnel"
netns_configs
netns_start_daemons
MTU[roamtun]=$(mtu "$NS_C" roam0)
read -r C_RSS0 C_HWM0 <<<"$(mem "$CLIENT_PID")"
read -r S_RSS0 S_HWM0 <<<"$(mem "$SERVER_PID")"
throughput roamtun 100.64.0.1
read -r C_RSS1 C_HWM1 <<<"$(mem "$CLIENT_PID")"
read -r S_RSS1 S_HWM1 <<<"$(mem "$SERVER_PID")"
latency roamtun 100.64.0.1
stop_pid "$CLIENT_PID" "roamtun client"
stop_pid "$SERVER_PID" "roamtun server"

# (c) wireguard-go, with roamtun stopped
log "(c) wireguard-go: 100.65.0.1 through $WG_C -> $WG_S"
(
    umask 077
    wg genkey >"$WORK/wg-c.key"
    wg genkey >"$WORK/wg-s.key"
)
WG_C_PUB=$(wg pubkey <"$WORK/wg-c.key")
WG_S_PUB=$(wg pubkey <"$WORK/wg-s.key")
spawn "$WORK/wireguard-server.log" "$NS_S" env WG_PROCESS_FOREGROUND=1 wireguard-go "$WG_S"
spawn "$WORK/wireguard-client.log" "$NS_C" env WG_PROCESS_FOREGROUND=1 wireguard-go "$WG_C"
wait_for 10 "wireguard-go $WG_S control socket" test -S "/var/run/wireguard/$WG_S.sock"
wait_for 10 "wireguard-go $WG_C control socket" test -S "/var/run/wireguard/$WG_C.sock"
s wg set "$WG_S" listen-port "$WG_PORT" private-key "$WORK/wg-s.key" \
    peer "$WG_C_PUB" allowed-ips 100.65.0.2/32
c wg set "$WG_C" private-key "$WORK/wg-c.key" \
    peer "$WG_S_PUB" allowed-ips 100.65.0.1/32 endpoint "198.18.1.1:$WG_PORT"
s ip addr add 100.65.0.1/24 dev "$WG_S"
c ip addr add 100.65.0.2/24 dev "$WG_C"
s ip link set "$WG_S" up
c ip link set "$WG_C" up
# The first packet triggers the handshake; an answered ping means the tunnel carries traffic.
wait_for 10 "a wireguard handshake (ping 100.65.0.1)" c ping -c 1 -W 1 -q 100.65.0.1
MTU[wireguard]=$(mtu "$NS_C" "$WG_C")
throughput wireguard 100.65.0.1
latency wireguard 100.65.0.1
log "finished in $((SECONDS - bench_start))s (without the build); cleaning up"

# ---- report
DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
NPROC=$(nproc)
KERNEL=$(uname -r)
CPU=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null || COMMIT="$COMMIT (with uncommitted changes)"
WG_VERSION=$(wireguard-go --version 2>/dev/null | awk 'NR==1 {print $2}')
IPERF_VERSION=$(iperf3 --version | awk 'NR==1 {print $2}')
R_UP_A=$(ratio "${UP[roamtun]}" "${UP[direct]}")
R_DOWN_A=$(ratio "${DOWN[roamtun]}" "${DOWN[direct]}")
R_UP_C=$(ratio "${UP[roamtun]}" "${UP[wireguard]}")
R_DOWN_C=$(ratio "${DOWN[roamtun]}" "${DOWN[wireguard]}")
R_UP_D=$(ratio "${UP[roamtun]}" "${UP[copy]}")
R_DOWN_D=$(ratio "${DOWN[roamtun]}" "${DOWN[copy]}")
R_UP_S=$(ratio "${UP[splice]}" "${UP[direct]}")
R_DOWN_S=$(ratio "${DOWN[splice]}" "${DOWN[direct]}")
R_UP_CP=$(ratio "${UP[copy]}" "${UP[direct]}")
R_DOWN_CP=$(ratio "${DOWN[copy]}" "${DOWN[direct]}")
METHOD="iperf3 $IPERF_VERSION single flow, ${BENCH_SECS} s, median of $BENCH_RUNS runs (min-max), retr = median TCP retransmits of the iperf3 sender per run (up/down; for roamtun only the leg to its local daemon); CPU-s/GiB = busy time of the whole machine (all processes and the kernel) per GiB carried, median; stolen = share of the virtual CPUs' time the hypervisor gave to others, worst run; TCP request/response: $BENCH_RR round trips of 64 B on one connection, TCP_NODELAY, Python client and echo server"

echo
echo "roamtun benchmark: $DATE, nproc $NPROC ($CPU), kernel $KERNEL, commit $COMMIT"
echo "$METHOD"
echo
printf '%-18s %5s  %-21s %-21s %-13s %9s %9s\n' setup MTU "up Gbit/s" "down Gbit/s" "retr up/down" "RR p50 us" "RR p99 us"
for k in "${SETUPS[@]}"; do
    printf '%-18s %5s  %-21s %-21s %-13s %9s %9s\n' "${LABEL[$k]}" "${MTU[$k]:-?}" \
        "${UP[$k]} (${UP_RANGE[$k]})" "${DOWN[$k]} (${DOWN_RANGE[$k]})" \
        "${UP_RETR[$k]}/${DOWN_RETR[$k]}" "${RR50[$k]}" "${RR99[$k]}"
done
echo
printf '%-18s %-21s %-21s\n' setup "CPU-s/GiB up/down" "stolen % up/down"
for k in "${SETUPS[@]}"; do
    printf '%-18s %-21s %-21s\n' "${LABEL[$k]}" "${UP_CPU[$k]}/${DOWN_CPU[$k]}" "${UP_STEAL[$k]}/${DOWN_STEAL[$k]}"
done
echo
printf '%-27s up %5s   down %5s\n' "roamtun / direct veth" "$R_UP_A" "$R_DOWN_A"
printf '%-27s up %5s   down %5s\n' "roamtun / wireguard-go" "$R_UP_C" "$R_DOWN_C"
printf '%-27s up %5s   down %5s\n' "roamtun / TCP relay, copy" "$R_UP_D" "$R_DOWN_D"
printf '%-27s up %5s   down %5s\n' "TCP relay, splice / direct" "$R_UP_S" "$R_DOWN_S"
printf '%-27s up %5s   down %5s\n' "TCP relay, copy / direct" "$R_UP_CP" "$R_DOWN_CP"
echo
printf '%-28s %11s %11s %11s %11s\n' "roamtun daemons, MiB" "client RSS" "client peak" "server RSS" "server peak"
printf '%-28s %11s %11s %11s %11s\n' "idle, connected" "$C_RSS0" "$C_HWM0" "$S_RSS0" "$S_HWM0"
printf '%-28s %11s %11s %11s %11s\n' "after the throughput runs" "$C_RSS1" "$C_HWM1" "$S_RSS1" "$S_HWM1"

echo
echo "----- markdown for docs/benchmarks.md -----"
cat <<EOF
### $DATE

$NPROC CPUs ($CPU), kernel \`$KERNEL\`, roamtun \`$COMMIT\`, wireguard-go $WG_VERSION.
$METHOD.

| setup | MTU | up Gbit/s | down Gbit/s | retr up/down | RR p50 µs | RR p99 µs |
|---|---:|---:|---:|---:|---:|---:|
EOF
for k in "${SETUPS[@]}"; do
    echo "| ${LABEL[$k]} | ${MTU[$k]:-?} | ${UP[$k]} (${UP_RANGE[$k]}) | ${DOWN[$k]} (${DOWN_RANGE[$k]}) | ${UP_RETR[$k]}/${DOWN_RETR[$k]} | ${RR50[$k]} | ${RR99[$k]} |"
done
cat <<EOF

| setup | CPU-s per GiB up / down | stolen % up / down (worst run) |
|---|---:|---:|
EOF
for k in "${SETUPS[@]}"; do
    echo "| ${LABEL[$k]} | ${UP_CPU[$k]} / ${DOWN_CPU[$k]} | ${UP_STEAL[$k]} / ${DOWN_STEAL[$k]} |"
done
cat <<EOF

| throughput ratio | up | down |
|---|---:|---:|
| roamtun / direct veth | $R_UP_A | $R_DOWN_A |
| roamtun / wireguard-go | $R_UP_C | $R_DOWN_C |
| roamtun / TCP relay, copy | $R_UP_D | $R_DOWN_D |
| TCP relay, splice / direct veth | $R_UP_S | $R_DOWN_S |
| TCP relay, copy / direct veth | $R_UP_CP | $R_DOWN_CP |

| roamtun daemons, MiB | client VmRSS | client VmHWM | server VmRSS | server VmHWM |
|---|---:|---:|---:|---:|
| idle, connected | $C_RSS0 | $C_HWM0 | $S_RSS0 | $S_HWM0 |
| after the throughput runs | $C_RSS1 | $C_HWM1 | $S_RSS1 | $S_HWM1 |
EOF
