#!/usr/bin/env bash
# Benchmark: how long an interactive exchange waits behind bulk transfers on a slow uplink, through
# roamtun and on the bare link, in one run. A benchmark, not a test: it reports numbers, it judges
# none.
#
#   ns client 198.18.1.2/24 (wlan0) <==== veth, tbf at $RATE both ways ====> 198.18.1.1/24 (up1) ns server
#   direct : client -> 198.18.1.1
#   roamtun: client -> roam0 100.64.0.2 -> roamtun client ~~ TLS ~~ roamtun server -> 100.64.0.1
#
# The uplink is shaped with a token bucket (tbf: $RATE, 32 KiB burst, 20 ms of queue), both ways: a
# slow link with a modest buffer, as an LTE or DSL uplink. For each rate, setup and load (idle; one
# or four iperf3 flows down; one up), a TCP ping-pong of 64 B (TCP_NODELAY, $BENCH_RR round trips
# after 5 unmeasured ones) runs on its own connection, starting 3 s into a $BENCH_SECS s bulk
# transfer; p50 and p99 of its round trips, and the bulk transfer's throughput. Then again with each
# share of packet loss in $BENCH_LOSSES (percent; nftables drops that share on arrival at each end,
# both ways) and $BENCH_LOSS_RR round trips: head-of-line blocking, where a loss on the relay
# connection holds up every stream behind it, shows there; the client's "path lost" decisions during
# roamtun's runs are counted. Run as root: sudo ./scripts/bench-interactive.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
BENCH_RATES=${BENCH_RATES:-"50mbit 10mbit"}
BENCH_SECS=${BENCH_SECS:-20}
BENCH_RR=${BENCH_RR:-40}
BENCH_LOSSES=${BENCH_LOSSES:-"0 1"}
BENCH_LOSS_RR=${BENCH_LOSS_RR:-200}
IPERF_PORT=5201
RR_PORT=7100

# shellcheck source=lib/prepare.sh
. "$ROOT/scripts/lib/prepare.sh"
prepare "the benchmark" --bench
LATENCY="$ROOT/scripts/lib/latency.py"
trap netns_cleanup EXIT

shape() {
    local rate=$1
    c tc qdisc replace dev wlan0 root tbf rate "$rate" burst 32kb latency 20ms
    s tc qdisc replace dev up1 root tbf rate "$rate" burst 32kb latency 20ms
}

# lose PERCENT: drops that share of the packets arriving on each end of the uplink (nftables, netdev
# ingress: the packet has crossed the link and is lost, as on a lossy radio), both ways; 0 removes it.
lose() {
    local permille
    permille=$(awk -v p="$1" 'BEGIN { printf "%d", p * 10 }')
    c nft delete table netdev roamtun_bench_loss 2>/dev/null || true
    s nft delete table netdev roamtun_bench_loss 2>/dev/null || true
    [ "$permille" -gt 0 ] || return 0
    c nft -f - <<EOF
table netdev roamtun_bench_loss {
    chain in { type filter hook ingress device "wlan0" priority 0; numgen random mod 1000 < $permille drop; }
}
EOF
    s nft -f - <<EOF
table netdev roamtun_bench_loss {
    chain in { type filter hook ingress device "up1" priority 0; numgen random mod 1000 < $permille drop; }
}
EOF
}

paths_lost() { grep -c "path lost" "$WORK/client.log" || true; }

iperf_listening() { s sh -c "ss -ltn | grep -q ':$IPERF_PORT '"; }

# measure DST LOAD COUNT: prints "p50_ms p99_ms bulk_mbit note" for COUNT round trips of a ping-pong
# to DST under LOAD (idle, down1, down4, up1).
measure() {
    local dst=$1 load=$2 count=$3 bulk_pid="" args=() rr note=""
    case $load in
        idle) ;;
        down1) args=(-R) ;;
        down4) args=(-R -P 4) ;;
        up1) args=() ;;
    esac
    if [ "$load" != idle ]; then
        c timeout $((BENCH_SECS + 20)) iperf3 -c "$dst" -p "$IPERF_PORT" -t "$BENCH_SECS" "${args[@]}" -J \
            >"$WORK/bulk.json" 2>>"$WORK/iperf-client.log" &
        bulk_pid=$!
        echo "$bulk_pid" >>"$PIDFILE"
        # TCP's ramp-up, and a few of roamtun's 500 ms rate samples.
        sleep 3
    fi
    if ! rr=$(c timeout 120 python3 "$LATENCY" client "$dst" "$RR_PORT" --count "$count" --warmup 5 --timeout 10 \
        2>>"$WORK/latency-client.log"); then
        rr="n/a n/a"
    fi
    local bulk=-
    if [ -n "$bulk_pid" ]; then
        kill -0 "$bulk_pid" 2>/dev/null || note="(the bulk transfer ended before the ping-pong)"
        wait "$bulk_pid" || true
        bulk=$(python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print("%.1f" % (j["end"]["sum_received"]["bits_per_second"] / 1e6))' \
            "$WORK/bulk.json" 2>/dev/null || echo n/a)
    fi
    read -r p50 p99 <<<"$rr"
    # latency.py prints microseconds.
    awk -v a="$p50" -v b="$p99" -v t="$bulk" -v n="$note" \
        'BEGIN { if (a == "n/a") printf "n/a n/a %s %s\n", t, n; else printf "%.2f %.2f %s %s\n", a / 1000, b / 1000, t, n }'
}

bench_start=$SECONDS
netns_topology
spawn "$WORK/iperf-server.log" "$NS_S" iperf3 -s -p "$IPERF_PORT"
wait_for 10 "iperf3 server" iperf_listening
spawn "$WORK/latency-server.log" "$NS_S" python3 "$LATENCY" server 0.0.0.0 "$RR_PORT" "$WORK/rr.ready"
wait_ready "$WORK/rr.ready"
netns_configs
netns_start_daemons

ROWS=()
for rate in $BENCH_RATES; do
    shape "$rate"
    for loss in $BENCH_LOSSES; do
        lose "$loss"
        count=$BENCH_RR
        [ "$loss" = 0 ] || count=$BENCH_LOSS_RR
        for load in idle down1 down4 up1; do
            for setup in direct roamtun; do
                dst=198.18.1.1
                [ "$setup" = roamtun ] && dst=100.64.0.1
                log "$rate, loss $loss %, $load: $setup"
                lost_before=$(paths_lost)
                read -r p50 p99 bulk note <<<"$(measure "$dst" "$load" "$count")"
                if [ "$setup" = roamtun ]; then
                    lost=$(($(paths_lost) - lost_before))
                    [ "$lost" -eq 0 ] || note="$note($lost path(s) declared lost)"
                fi
                log "  p50 $p50 ms, p99 $p99 ms, bulk $bulk Mbit/s $note"
                ROWS+=("$rate|$loss|$load|$setup|$p50|$p99|$bulk|$note")
            done
        done
    done
    lose 0
done
log "finished in $((SECONDS - bench_start))s (without the build); cleaning up"

DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD -- 2>/dev/null || COMMIT="$COMMIT (with uncommitted changes)"
echo
echo "roamtun interactive latency under bulk transfers: $DATE, nproc $(nproc), kernel $(uname -r), commit $COMMIT"
echo "tbf both ways (32 KiB burst, 20 ms queue); loss: that share of the packets dropped on arrival at each end (nftables);"
echo "ping-pong of 64 B, $BENCH_RR round trips ($BENCH_LOSS_RR with loss), starting 3 s into a ${BENCH_SECS} s iperf3 transfer"
echo
echo "| rate | loss | load | direct p50 / p99 ms | roamtun p50 / p99 ms | roamtun / direct (p50) | bulk Mbit/s direct / roamtun |"
echo "|---|---:|---|---:|---:|---:|---:|"
for rate in $BENCH_RATES; do
    for loss in $BENCH_LOSSES; do
        for load in idle down1 down4 up1; do
            d=() r=()
            for row in "${ROWS[@]}"; do
                IFS='|' read -r ra ls lo se p50 p99 bulk note <<<"$row"
                [ "$ra" = "$rate" ] && [ "$ls" = "$loss" ] && [ "$lo" = "$load" ] || continue
                if [ "$se" = direct ]; then d=("$p50" "$p99" "$bulk" "$note"); else r=("$p50" "$p99" "$bulk" "$note"); fi
            done
            ratio=$(awk -v a="${r[0]}" -v b="${d[0]}" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%.1f", a / b; else print "n/a" }')
            echo "| $rate | $loss % | $load | ${d[0]} / ${d[1]} | ${r[0]} / ${r[1]} | $ratio | ${d[2]} / ${r[2]} ${d[3]}${r[3]} |"
        done
    done
done
