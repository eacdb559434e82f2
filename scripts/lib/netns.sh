# shellcheck shell=bash
# Shared by the demo, the netns tests and the benchmarks: namespaces, daemons, waits, cleanup.
#
# Topology (one uplink; later issues add more):
#
#   ns $NS_C (client)                              ns $NS_S (server)
#   apps -> roam0 100.64.0.2                        roamsrv0 100.64.0.1 -> apps
#           roamtun client                          roamtun server :7700
#           wlan0 198.18.1.2/24  <==== veth ====>  up1 198.18.1.1/24
#
# Only 198.18.0.0/15 ("physical" links) and 100.64.0.0/10 (virtual IPs) are used, and only inside the
# namespaces made here. Everything started here is tracked by PID and stopped by `netns_cleanup`, which
# the caller installs with `trap netns_cleanup EXIT`.

ROOT=${ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
ROAMTUN=${ROAMTUN:-$ROOT/target/release/roamtun}
APPS="python3 $ROOT/tests/netns/apps.py"
NS_C="rt-c-$$"
NS_S="rt-s-$$"
WORK=$(mktemp -d /tmp/roamtun-netns.XXXXXX)
# Readable by all: one test runs the daemon unprivileged and it must get as far as the TUN.
chmod 755 "$WORK"
# PIDs go to a file, not an array: cases run in subshells and what they start must be cleaned up too.
PIDFILE=$WORK/pids
: >"$PIDFILE"

c() { ip netns exec "$NS_C" "$@"; }
s() { ip netns exec "$NS_S" "$@"; }

netns_cleanup() {
    local pid pids
    pids=$(cat "$PIDFILE" 2>/dev/null)
    for pid in $pids; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in $pids; do
        # Bounded wait for each to exit; then force.
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    local ns
    for ns in "$NS_C" "$NS_S" "${EXTRA_NS[@]:-}"; do
        [ -n "$ns" ] || continue
        # Anything a case started some other way still runs inside our namespaces: stop it too.
        pids=$(ip netns pids "$ns" 2>/dev/null)
        [ -n "$pids" ] && kill -9 $pids 2>/dev/null
        ip netns del "$ns" 2>/dev/null || true
    done
    [ -n "${KEEP_WORK:-}" ] || rm -rf "$WORK"
}

# spawn LOG NS CMD...: runs CMD in namespace NS in the background with its output in LOG; remembers
# its PID in $LAST_PID and for cleanup. `ip netns exec` execs CMD, so the PID is CMD's own.
spawn() {
    local log=$1 ns=$2
    shift 2
    ip netns exec "$ns" "$@" >>"$log" 2>&1 &
    LAST_PID=$!
    echo "$LAST_PID" >>"$PIDFILE"
}

# wait_for SECONDS DESCRIPTION CMD...: polls CMD every 50 ms until it succeeds; fails after SECONDS.
wait_for() {
    local secs=$1 what=$2
    shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        if [ $SECONDS -ge $deadline ]; then
            echo "timed out after ${secs}s waiting for: $what" >&2
            return 1
        fi
        sleep 0.05
    done
}

# Waits for a file an app creates once it listens.
wait_ready() { wait_for 10 "$1 to be ready" test -e "$1"; }

# The second uplink of a roaming device and a server address reachable over both (tests/netns/transition.sh):
#
#   wlan0 198.18.1.2/24 <== veth ==> up1 198.18.1.1/24      server address 198.18.0.1 (on its lo)
#   wwan0 198.18.2.2/24 <== veth ==> up2 198.18.2.1/24
#   client: default via 198.18.1.1 dev wlan0 metric 100, default via 198.18.2.1 dev wwan0 metric 200
netns_second_uplink() {
    ip link add wwan0 netns "$NS_C" type veth peer name up2 netns "$NS_S"
    c ip addr add 198.18.2.2/24 dev wwan0
    s ip addr add 198.18.2.1/24 dev up2
    c ip link set wwan0 up
    s ip link set up2 up
    s ip addr add 198.18.0.1/32 dev lo
    c ip route add default via 198.18.1.1 dev wlan0 metric 100
    c ip route add default via 198.18.2.1 dev wwan0 metric 200
}

# A third, preferred uplink for the link manager's tests: eth0 198.18.3.2/24 <==> up3 198.18.3.1/24,
# default via eth0 metric 50. Call after netns_second_uplink.
netns_third_uplink() {
    ip link add eth0 netns "$NS_C" type veth peer name up3 netns "$NS_S"
    c ip addr add 198.18.3.2/24 dev eth0
    s ip addr add 198.18.3.1/24 dev up3
    c ip link set eth0 up
    s ip link set up3 up
    c ip route add default via 198.18.3.1 dev eth0 metric 50
}

# drop_all c|s IFACE TABLE: nftables table TABLE in the client (c) or server (s) namespace drops every
# packet in and out of IFACE: a black hole with the link up (`nft delete table inet TABLE` ends it).
drop_all() {
    "$1" nft -f - <<EOF
table inet $3 {
    chain in { type filter hook input priority 0; iifname "$2" drop; }
    chain out { type filter hook output priority 0; oifname "$2" drop; }
}
EOF
}

netns_topology() {
    ip netns add "$NS_C"
    ip netns add "$NS_S"
    ip link add wlan0 netns "$NS_C" type veth peer name up1 netns "$NS_S"
    c ip link set lo up
    s ip link set lo up
    c ip addr add 198.18.1.2/24 dev wlan0
    s ip addr add 198.18.1.1/24 dev up1
    c ip link set wlan0 up
    s ip link set up1 up
}

# Writes $WORK/server.toml and $WORK/client.toml with fresh keys. Extra lines come from
# SERVER_EXTRA / CLIENT_EXTRA / CLIENT_ROUTES. SERVER_ADDR is one address or a TOML list of "ip:port".
netns_configs() {
    local ck sk cp sp addr
    addr="\"${SERVER_ADDR:-198.18.1.1}:7700\""
    [[ "${SERVER_ADDR:-}" == \[* ]] && addr=$SERVER_ADDR
    ck=$("$ROAMTUN" genkey)
    sk=$("$ROAMTUN" genkey)
    cp=$(echo "$ck" | "$ROAMTUN" pubkey)
    sp=$(echo "$sk" | "$ROAMTUN" pubkey)
    CLIENT_PUB=$cp
    cat >"$WORK/server.toml" <<EOF
private_key = "$sk"
listen = $addr
virtual_ips = ["100.64.0.1"]
client_prefixes = ["100.64.0.0/10"]
control_socket = "$WORK/server.sock"
${SERVER_EXTRA:-}

[[peer]]
name = "laptop"
public_key = "$cp"
virtual_ips = ["100.64.0.2"]
EOF
    cat >"$WORK/client.toml" <<EOF
private_key = "$ck"
virtual_ips = ["100.64.0.2"]
routes = [${CLIENT_ROUTES:-"\"100.64.0.0/10\""}]
control_socket = "$WORK/client.sock"
${CLIENT_EXTRA:-}

[server]
address = $addr
public_key = "$sp"
EOF
    # They hold the private keys inline: the daemons refuse a config file other users can read.
    chmod 600 "$WORK/server.toml" "$WORK/client.toml"
}

status_json() { "$ROAMTUN" status --json --socket "$1"; }

# True once the client's status says the server session is up.
client_connected() {
    status_json "$WORK/client.sock" | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["peers"][0]["connected"] else 1)'
}

netns_start_daemons() {
    spawn "$WORK/server.log" "$NS_S" env ROAMTUN_LOG="${ROAMTUN_LOG:-info}" "$ROAMTUN" server -c "$WORK/server.toml"
    SERVER_PID=$LAST_PID
    wait_for 10 "server control socket" test -S "$WORK/server.sock"
    spawn "$WORK/client.log" "$NS_C" env ROAMTUN_LOG="${ROAMTUN_LOG:-info}" "$ROAMTUN" client -c "$WORK/client.toml"
    CLIENT_PID=$LAST_PID
    wait_for 15 "client to connect to the server" client_connected
}

# json_get SOCKET PYTHON_EXPR: evaluates an expression on the status dict `s`.
json_get() {
    status_json "$1" | python3 -c "import json,sys; s=json.load(sys.stdin); print($2)"
}

client_received_at_least() { [ "$(json_get "$WORK/client.sock" 's["bytes_received"]')" -ge "$1" ]; }

# wait_progress MIB: waits until the client has received MIB more (all flows) than when called.
wait_progress() {
    local target
    target=$(($(json_get "$WORK/client.sock" 's["bytes_received"]') + ($1 << 20)))
    wait_for 60 "$1 MiB more through the tunnel" client_received_at_least "$target"
}

# A third namespace NS (a phone, or a stranger) on its own link to the server:
#   IF 198.18.9.2/24 (in NS) <== veth ==> SIF 198.18.9.1/24 (server), route to 198.18.0.1 via .1.
# The caller adds NS to EXTRA_NS so that netns_cleanup removes it.
netns_side_network() {
    local ns=$1 ifname=$2 sifname=$3
    ip netns add "$ns"
    ip netns exec "$ns" ip link set lo up
    ip link add "$ifname" netns "$ns" type veth peer name "$sifname" netns "$NS_S"
    s ip addr add 198.18.9.1/24 dev "$sifname"
    s ip link set "$sifname" up
    ip netns exec "$ns" ip addr add 198.18.9.2/24 dev "$ifname"
    ip netns exec "$ns" ip link set "$ifname" up
    ip netns exec "$ns" ip route add 198.18.0.1/32 via 198.18.9.1
}

# A second client, "phone" (virtual IP 100.64.0.3): its config $WORK/phone.toml (control socket
# $WORK/phone.sock, the server at 198.18.0.1:7700) and its public key in $PHONE_PUB. Where its
# [[peer]] goes (server.toml or a peers_dir file) is the caller's choice. Call after netns_configs.
netns_phone_config() {
    local key server_pub
    key=$("$ROAMTUN" genkey)
    PHONE_PUB=$(echo "$key" | "$ROAMTUN" pubkey)
    server_pub=$(sed -n 's/^public_key = "\(.*\)"$/\1/p' "$WORK/client.toml")
    cat >"$WORK/phone.toml" <<EOF
private_key = "$key"
virtual_ips = ["100.64.0.3"]
routes = ["100.64.0.1/32"]
control_socket = "$WORK/phone.sock"

[server]
address = "198.18.0.1:7700"
public_key = "$server_pub"
EOF
    chmod 600 "$WORK/phone.toml"
}

phone_connected() {
    status_json "$WORK/phone.sock" | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["peers"][0]["connected"] else 1)'
}
