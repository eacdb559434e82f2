#!/usr/bin/env bash
# Benchmark: the longest pause an app sees in the bytes it receives while the device changes uplinks,
# for roamtun and, in the same run on the same links, plain TCP, MPTCP (a subflow on each uplink) and
# wireguard-go (its endpoint re-set by a script, as a roaming client would). A benchmark, not a test:
# it reports numbers and judges none.
#
#   ns client                                            ns server (198.18.0.1 on lo)
#   wlan0 198.18.1.2/24 <==== veth ====> up1 198.18.1.1/24
#   wwan0 198.18.2.2/24 <==== veth ====> up2 198.18.2.1/24
#   default via wlan0 (metric 100), via wwan0 (metric 200)
#
# HANDOVER_PROFILE chooses the links: veth (the default) joins the namespaces directly (a round trip of
# about 50 µs); wan puts each uplink through the WAN emulator (scripts/lib/wan.sh), wlan0 as Wi-Fi
# (20 ms RTT, 200 Mbit/s) and wwan0 as LTE (50 ms RTT, 50 Mbit/s), the addresses unchanged, so that
# every protocol step of a switch costs its round trip as on real uplinks.
#
# A server app streams to a client app (scripts/lib/handover.py), paced at 2 MB/s and at full speed;
# the client records the longest gap between received bytes from the moment of the event:
#   none      nothing happens: the stream's own longest gap, the floor of every other figure
#   planned   a switch to the other uplink the user asked for (roamtun switch; for wireguard-go a
#             route change plus endpoint re-set); MPTCP and plain TCP have no such thing (n/a)
#   loss      the active uplink goes down while the other one works
#   blackhole the network behind the active uplink silently drops everything (nftables on the server
#             end of its veth; the link stays up) while the other one works
#   outage-D  every uplink down for D seconds (D = 0.5, 1, 2, 5), then back: pause - D is reported
# Each event $HANDOVER_REPS times (default 20): p50 / p99 in ms, and how many never resumed within
# the window. HANDOVER_KINDS, _SYSTEMS, _RATES, _OUTAGES choose a part (e.g. HANDOVER_KINDS="loss
# blackhole" HANDOVER_RATES=2000000). HANDOVER_WINDOW (s, default 6) is how long after the event the
# client watches for the longest gap; HANDOVER_TUNING holds [tuning] lines for both roamtun daemons
# (e.g. HANDOVER_TUNING='congestion_control = "bbr"'). HANDOVER_WATCH=S keeps watching S s after
# every event but the outages, and HANDOVER_FROM=F counts only the gaps that end F s or more after
# it: a later stall, not the event's own pause (e.g. HANDOVER_WATCH=14 HANDOVER_FROM=2 for what
# comes 10 s after a switch). Run as root: sudo ./scripts/bench-handover.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
REPS=${HANDOVER_REPS:-20}
OUTAGES=${HANDOVER_OUTAGES-"0.5 1 2 5"}
RATES=${HANDOVER_RATES:-"2000000 0"}
SYSTEMS=${HANDOVER_SYSTEMS:-"roamtun tcp mptcp wireguard"}
PROFILE=${HANDOVER_PROFILE:-veth}
WINDOW=${HANDOVER_WINDOW:-6}
WATCH=${HANDOVER_WATCH:-0}
FROM=${HANDOVER_FROM:-0}
WG_PORT=51820

# shellcheck source=lib/prepare.sh
. "$ROOT/scripts/lib/prepare.sh"
prepare "the benchmark" --bench
HO="python3 $ROOT/scripts/lib/handover.py"
WG_C="wgc-$$"
WG_S="wgs-$$"
SERVER_ADDR=198.18.0.1

bench_cleanup() {
    netns_cleanup
    rm -f "/var/run/wireguard/$WG_C.sock" "/var/run/wireguard/$WG_S.sock"
}
trap bench_cleanup EXIT

case "$PROFILE" in
    veth)
        netns_topology
        netns_second_uplink
        LINKS="veth links (about 50 us RTT)"
        ;;
    wan)
        # The emulators run bounded: long enough for every cell of a full run.
        WAN_DURATION=${WAN_DURATION:-14400}
        # shellcheck source=lib/wan.sh
        . "$ROOT/scripts/lib/wan.sh"
        netns_wan_uplinks || exit 1
        LINKS="WAN profile: wlan0 Wi-Fi $(wan_rtt_ms wifi) ms RTT $(wan_profile wifi | cut -d' ' -f2) Mbit/s, wwan0 LTE $(wan_rtt_ms lte) ms RTT $(wan_profile lte | cut -d' ' -f2) Mbit/s (roamtun-wanem)"
        log "links: $LINKS; measured RTT wlan0 $(wan_rtt "$NS_C" 198.18.1.1) ms, wwan0 $(wan_rtt "$NS_C" 198.18.2.1) ms"
        ;;
    *)
        echo "HANDOVER_PROFILE=$PROFILE: veth or wan" >&2
        exit 2
        ;;
esac

# Puts the uplinks back as they were: up, with their default routes, nothing dropped.
restore() {
    s nft delete table inet roamtun_bench_bh 2>/dev/null || true
    c ip link set wlan0 up
    c ip link set wwan0 up
    c ip route replace default via 198.18.1.1 dev wlan0 metric 100
    c ip route replace default via 198.18.2.1 dev wwan0 metric 200
    c ip route del default metric 50 2>/dev/null || true
    # wireguard-go keeps sending from the address that worked last (wwan0's after a loss on wlan0):
    # re-point it so that the next event finds it on wlan0, the active uplink, like the others.
    [ -n "${WG_UP:-}" ] && wg_repoint
    return 0
}

declare -A TARGET PORT
declare -A PEER_OF=([wlan0]=up1 [wwan0]=up2)
PORT=([roamtun]=7303 [tcp]=7300 [mptcp]=7301 [wireguard]=7302)

setup_roamtun() {
    local tuning=
    [ -n "${HANDOVER_TUNING:-}" ] && tuning="[tuning]
$HANDOVER_TUNING"
    CLIENT_EXTRA="uplinks = [\"wlan0\", \"wwan0\"]
$tuning" SERVER_EXTRA="$tuning" netns_configs
    netns_start_daemons
    TARGET[roamtun]=100.64.0.1
}

setup_tcp() { TARGET[tcp]=$SERVER_ADDR; }

setup_mptcp() {
    c ip mptcp limits set subflow 2 add_addr_accepted 2
    s ip mptcp limits set subflow 2 add_addr_accepted 2
    c ip mptcp endpoint add 198.18.2.2 dev wwan0 subflow
    TARGET[mptcp]=$SERVER_ADDR
}

setup_wireguard() {
    mkdir -p /var/run/wireguard
    wg genkey >"$WORK/wg-c.key"
    wg genkey >"$WORK/wg-s.key"
    spawn "$WORK/wireguard-server.log" "$NS_S" env WG_PROCESS_FOREGROUND=1 wireguard-go "$WG_S"
    spawn "$WORK/wireguard-client.log" "$NS_C" env WG_PROCESS_FOREGROUND=1 wireguard-go "$WG_C"
    wait_for 10 "wireguard-go control sockets" test -S "/var/run/wireguard/$WG_C.sock" -a -S "/var/run/wireguard/$WG_S.sock"
    s wg set "$WG_S" listen-port "$WG_PORT" private-key "$WORK/wg-s.key" peer "$(wg pubkey <"$WORK/wg-c.key")" allowed-ips 100.65.0.2/32
    c wg set "$WG_C" private-key "$WORK/wg-c.key" peer "$(wg pubkey <"$WORK/wg-s.key")" allowed-ips 100.65.0.1/32 endpoint "$SERVER_ADDR:$WG_PORT"
    s ip addr add 100.65.0.1/24 dev "$WG_S"
    c ip addr add 100.65.0.2/24 dev "$WG_C"
    s ip link set "$WG_S" up
    c ip link set "$WG_C" up
    TARGET[wireguard]=100.65.0.1
    WG_UP=1
}

# What a roaming wireguard client's script does after a link change: point the peer at the server
# again, which drops the cached source address of the old uplink.
wg_repoint() { c wg set "$WG_C" peer "$(wg pubkey <"$WORK/wg-s.key")" endpoint "$SERVER_ADDR:$WG_PORT"; }

roamtun_settled() {
    client_connected && [ "$(json_get "$WORK/client.sock" '" ".join(sorted(u["state"] for u in s["uplinks"]))')" = "active standby" ]
}
roamtun_uplink() { json_get "$WORK/client.sock" 's["peers"][0]["uplink"]'; }

# event SYSTEM KIND: does the thing being measured (the client app already waits for the mark).
event() {
    local sys=$1 kind=$2 active other gw
    case "$kind" in
        none)
            # The baseline: the longest gap of the undisturbed stream.
            touch "$WORK/mark"
            ;;
        planned)
            if [ "$sys" = roamtun ]; then
                active=$(roamtun_uplink)
                other=wwan0; [ "$active" = wwan0 ] && other=wlan0
                touch "$WORK/mark"
                timeout 20 "$ROAMTUN" switch "$other" --socket "$WORK/client.sock" >/dev/null
            else
                # wireguard-go: the route to the server moves to wwan0, the endpoint is re-set.
                touch "$WORK/mark"
                c ip route replace default via 198.18.2.1 dev wwan0 metric 50
                wg_repoint
            fi
            ;;
        loss)
            active=wlan0
            [ "$sys" = roamtun ] && active=$(roamtun_uplink)
            touch "$WORK/mark"
            c ip link set "$active" down
            [ "$sys" = wireguard ] && wg_repoint
            ;;
        blackhole)
            active=wlan0
            [ "$sys" = roamtun ] && active=$(roamtun_uplink)
            touch "$WORK/mark"
            # At the far end, as a broken network would: the client's kernel sees nothing fail.
            drop_all s "${PEER_OF[$active]}" roamtun_bench_bh
            ;;
        outage-*)
            touch "$WORK/mark"
            c ip link set wlan0 down
            c ip link set wwan0 down
            sleep "${kind#outage-}" # the outage itself
            c ip link set wlan0 up
            c ip link set wwan0 up
            c ip route replace default via 198.18.1.1 dev wlan0 metric 100
            c ip route replace default via 198.18.2.1 dev wwan0 metric 200
            [ "$sys" = wireguard ] && wg_repoint
            ;;
    esac
    return 0
}

# measure SYSTEM KIND RATE: one repetition; prints the pause in ms or "never".
measure() {
    local sys=$1 kind=$2 rate=$3 mptcp= window=$WINDOW at_least=$WATCH
    [ "$sys" = mptcp ] && mptcp=--mptcp
    case "$kind" in
        outage-*) at_least=${kind#outage-} ;;
        *) at_least=$WATCH ;;
    esac
    window=$(python3 -c "print($at_least + $WINDOW)")
    rm -f "$WORK/ready" "$WORK/mark" "$WORK/stop" "$WORK/gap"
    # shellcheck disable=SC2086 # $mptcp is empty or one flag
    spawn "$WORK/gap.log" "$NS_C" $HO gap-client "${TARGET[$sys]}" "${SRV_PORT}" $mptcp --ready "$WORK/ready" \
        --mark "$WORK/mark" --stop "$WORK/stop" --out "$WORK/gap" --window "$window" --at-least "$at_least" --from "$FROM" --timeout 60
    local pid=$LAST_PID
    if ! wait_for 15 "the stream to flow" test -e "$WORK/ready"; then
        kill "$pid" 2>/dev/null || true
        echo never
        return
    fi
    event "$sys" "$kind"
    wait "$pid" || true
    local gap
    gap=$(cat "$WORK/gap" 2>/dev/null || echo never)
    restore
    # Let roamtun settle back on a path (the next repetition must start from a working session).
    # And with a warm standby path on the other uplink again, as before the first one.
    [ "$sys" = roamtun ] && wait_for 30 "roamtun connected with a standby path" roamtun_settled
    case "$kind" in
        outage-*) [ "$gap" != never ] && gap=$(python3 -c "print(f'{$gap - ${kind#outage-} * 1000:.1f}')") ;;
    esac
    echo "$gap"
}

# p50/p99 of the finite values, and how many never resumed.
summary() {
    python3 - "$@" <<'EOF'
import sys
vals = sys.argv[1:]
nums = sorted(float(v) for v in vals if v not in ("never", "n/a"))
never = sum(1 for v in vals if v == "never")
def pct(p):
    return nums[min(len(nums) - 1, int(round(p / 100 * (len(nums) - 1))))]
if not nums:
    print(f"never ({never}/{len(vals)})")
else:
    s = f"{pct(50):.0f} / {pct(99):.0f}"
    print(s + (f" ({never} never)" if never else ""))
EOF
}

declare -A RESULT
KINDS="none planned loss blackhole"
for d in $OUTAGES; do KINDS="$KINDS outage-$d"; done
KINDS=${HANDOVER_KINDS:-$KINDS}
for sys in $SYSTEMS; do
    log "setting up $sys"
    "setup_$sys"
    SRV_PORT=${PORT[$sys]}
    for rate in $RATES; do
        mptcp=
        [ "$sys" = mptcp ] && mptcp=--mptcp
        bind=$SERVER_ADDR
        [ "$sys" = roamtun ] && bind=100.64.0.1
        [ "$sys" = wireguard ] && bind=100.65.0.1
        rm -f "$WORK/srv.ready"
        # shellcheck disable=SC2086
        spawn "$WORK/stream.log" "$NS_S" $HO stream-server "$bind" "$SRV_PORT" "$WORK/srv.ready" --rate "$rate" $mptcp
        srv=$LAST_PID
        wait_for 10 "stream server" test -e "$WORK/srv.ready"
        for kind in $KINDS; do
            if [ "$kind" = planned ] && { [ "$sys" = tcp ] || [ "$sys" = mptcp ]; }; then
                RESULT[$sys,$rate,$kind]="n/a"
                continue
            fi
            vals=()
            for _ in $(seq "$REPS"); do vals+=("$(measure "$sys" "$kind" "$rate")"); done
            RESULT[$sys,$rate,$kind]=$(summary "${vals[@]}")
            log "$sys rate=$rate $kind: ${RESULT[$sys,$rate,$kind]} (${vals[*]})"
        done
        kill "$srv" 2>/dev/null || true
        wait "$srv" 2>/dev/null || true
        SRV_PORT=$((SRV_PORT + 10))
    done
    if [ "$sys" = roamtun ]; then
        # Its daemons would otherwise react to the other systems' link changes.
        kill "$CLIENT_PID" "$SERVER_PID" 2>/dev/null || true
        wait "$CLIENT_PID" "$SERVER_PID" 2>/dev/null || true
    fi
done

echo
echo "Longest pause seen by the receiving app, ms, p50 / p99 over $REPS runs (outage rows: pause - outage); $LINKS."
for rate in $RATES; do
    label="paced $((rate / 1000000)) MB/s"
    [ "$rate" = 0 ] && label="full speed"
    echo
    echo "$label"
    printf '| event |'; for sys in $SYSTEMS; do printf ' %s |' "$sys"; done; echo
    printf '|---|'; for _ in $SYSTEMS; do printf -- '---:|'; done; echo
    for kind in $KINDS; do
        printf '| %s |' "$kind"
        for sys in $SYSTEMS; do printf ' %s |' "${RESULT[$sys,$rate,$kind]:-n/a}"; done
        echo
    done
done
echo
echo "$(nproc) CPUs, kernel $(uname -r), roamtun $(git rev-parse --short HEAD), $(date -u +%Y-%m-%d), window ${WINDOW} s${HANDOVER_WATCH:+, watched $WATCH s}${HANDOVER_FROM:+, gaps from $FROM s after the event}${HANDOVER_TUNING:+, roamtun tuning: $HANDOVER_TUNING}"
