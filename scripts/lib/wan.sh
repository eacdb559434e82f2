# shellcheck shell=bash
# Links with a real round trip and rate between two namespaces, through the user-space WAN emulator
# (wanem/, binary roamtun-wanem; this machine has no tc netem). Sourced after scripts/lib/netns.sh,
# whose spawn / cleanup it uses: every emulator runs bounded in time (--duration) and is tracked by
# PID; its namespace is in EXTRA_NS, so netns_cleanup (and roaming.sh's teardown) remove it.
#
# One emulated link (wan_link), the emulator's namespace $NS_W in the middle:
#
#   ns A                          ns $NS_W                                      ns B
#   IF_A ADDR_A <== veth ==> wNa  <== roamtun-wanem: delay, rate, queue ==>  wNb <== veth ==> IF_B ADDR_B
#
# IF_A and IF_B are on one Ethernet segment (ARP crosses the emulator too), so ADDR_A and ADDR_B are
# in one subnet. The emulator reads and writes whole frames with AF_PACKET, so every offload that
# makes a frame larger than the MTU (TSO/GSO on the sender, GRO on the receiver) or leaves its
# checksum to the hardware (tx checksumming: a packet socket would copy a frame whose TCP checksum
# is not filled in yet) is off on all four ends.
#
#   wan_profile wifi|lte   prints "DELAY_MS RATE_MBIT": Wi-Fi 20 ms RTT 200 Mbit/s, LTE 50 ms RTT
#                          50 Mbit/s (the one-way delay is half the round trip)
#   wan_link NS_A IF_A ADDR_A NS_B IF_B ADDR_B DELAY_MS RATE_MBIT [LOSS_PCT]
#   netns_wan_uplinks      the roaming topology of scripts/lib/netns.sh with wlan0 over Wi-Fi and
#                          wwan0 over LTE (below)

WANEM=${WANEM:-$ROOT/target/release/roamtun-wanem}
NS_W="rt-w-$$"
EXTRA_NS+=("$NS_W")
# Long enough for the longest run that uses it (the benchmark sets more); a bound, not a timeout.
WAN_DURATION=${WAN_DURATION:-600}
WAN_LINKS=0

wan_profile() {
    case "$1" in
        wifi) echo "10 200" ;;
        lte) echo "25 50" ;;
        *)
            echo "wan_profile: unknown profile '$1' (wifi or lte)" >&2
            return 1
            ;;
    esac
}

# The RTT a profile stands for, in ms, for printed figures.
wan_rtt_ms() { echo $(($(wan_profile "$1" | cut -d' ' -f1) * 2)); }

w() { ip netns exec "$NS_W" "$@"; }

# offloads_off NS IFACE: every offload that would hand the emulator a frame it cannot pass on.
offloads_off() {
    local ns=$1 dev=$2 k
    ip netns exec "$ns" ethtool -K "$dev" tx off rx off tso off gso off gro off >/dev/null 2>&1 || true
    # Read back: a frame larger than the MTU would be dropped by the emulator as oversized.
    for k in tcp-segmentation-offload generic-segmentation-offload generic-receive-offload tx-checksumming; do
        if ip netns exec "$ns" ethtool -k "$dev" 2>/dev/null | grep -q "^$k: on"; then
            echo "wan_link: $k is still on for $dev in $ns" >&2
            return 1
        fi
    done
}

wan_link() {
    local ns_a=$1 if_a=$2 addr_a=$3 ns_b=$4 if_b=$5 addr_b=$6 delay=$7 rate=$8 loss=${9:-0}
    if [ ! -x "$WANEM" ]; then
        echo "wan_link: no emulator at $WANEM (cargo build --release -p roamtun-wanem)" >&2
        return 1
    fi
    command -v ethtool >/dev/null || { echo "wan_link: ethtool is needed (scripts/install-deps.sh)" >&2; return 1; }
    if ! ip netns list | grep -qw "$NS_W"; then
        ip netns add "$NS_W" || return 1
        w ip link set lo up
        # The middle namespace is a wire, not a host: no IPv6 chatter of its own on the segments.
        w sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    fi
    WAN_LINKS=$((WAN_LINKS + 1))
    local wa="w${WAN_LINKS}a" wb="w${WAN_LINKS}b"
    ip link add "$if_a" netns "$ns_a" type veth peer name "$wa" netns "$NS_W" || return 1
    ip link add "$if_b" netns "$ns_b" type veth peer name "$wb" netns "$NS_W" || return 1
    offloads_off "$ns_a" "$if_a" && offloads_off "$NS_W" "$wa" && offloads_off "$NS_W" "$wb" &&
        offloads_off "$ns_b" "$if_b" || return 1
    w ip link set "$wa" up
    w ip link set "$wb" up
    ip netns exec "$ns_a" ip addr add "$addr_a" dev "$if_a"
    ip netns exec "$ns_b" ip addr add "$addr_b" dev "$if_b"
    ip netns exec "$ns_a" ip link set "$if_a" up
    ip netns exec "$ns_b" ip link set "$if_b" up
    local log="$WORK/wanem-$if_a.log"
    spawn "$log" "$NS_W" "$WANEM" --a "$wa" --b "$wb" --duration "$WAN_DURATION" --delay-ms "$delay" \
        --rate-mbit "$rate" --loss-ab "$loss" --loss-ba "$loss" --seed "$WAN_LINKS"
    WAN_PID=$LAST_PID
    wait_for 10 "the emulator between $if_a and $if_b to start" grep -q "wanem: ready" "$log" || {
        cat "$log" >&2
        return 1
    }
}

# The roaming topology (scripts/lib/netns.sh's netns_topology + netns_second_uplink), each uplink
# through the emulator:
#
#   ns $NS_C (client)                                                 ns $NS_S (server, 198.18.0.1 on lo)
#   wlan0 198.18.1.2/24 <== wifi: 10 ms each way, 200 Mbit/s ==> up1 198.18.1.1/24
#   wwan0 198.18.2.2/24 <== lte:  25 ms each way,  50 Mbit/s ==> up2 198.18.2.1/24
#   client: default via 198.18.1.1 dev wlan0 metric 100, default via 198.18.2.1 dev wwan0 metric 200
netns_wan_uplinks() {
    ip netns add "$NS_C" || return 1
    ip netns add "$NS_S" || return 1
    c ip link set lo up
    s ip link set lo up
    # shellcheck disable=SC2046 # the profile is two words on purpose
    wan_link "$NS_C" wlan0 198.18.1.2/24 "$NS_S" up1 198.18.1.1/24 $(wan_profile wifi) || return 1
    # shellcheck disable=SC2046
    wan_link "$NS_C" wwan0 198.18.2.2/24 "$NS_S" up2 198.18.2.1/24 $(wan_profile lte) || return 1
    s ip addr add 198.18.0.1/32 dev lo
    c ip route add default via 198.18.1.1 dev wlan0 metric 100
    c ip route add default via 198.18.2.1 dev wwan0 metric 200
}

# wan_rtt NS ADDR [COUNT]: the average ping round trip in ms (after one ping that resolves ARP).
wan_rtt() {
    ip netns exec "$1" ping -c 1 -W 5 "$2" >/dev/null 2>&1 || return 1
    ip netns exec "$1" ping -q -c "${3:-5}" -i 0.2 -W 5 "$2" | awk -F/ '/^rtt/ {print $5}'
}
