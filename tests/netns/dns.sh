#!/usr/bin/env bash
# The client's `dns = ["100.64.0.1"]` (src/dns/), in network namespaces with real daemons, a real
# resolver and a real client app:
#
#   ns $NS_C (client)                                  ns $NS_S (server)
#   getent -> /etc/resolv.conf (its own, see below)    dnsmasq on 100.64.0.1:53, zone roamtun.test
#          -> roam0 100.64.0.2                          roamsrv0 100.64.0.1
#             roamtun client                            roamtun server :7700
#             wlan0 198.18.1.2/24  <==== veth ====>    up1 198.18.1.1/24
#
# `ip netns exec` bind-mounts /etc/netns/$NS_C/resolv.conf over /etc/resolv.conf for everything it
# runs in the client's namespace, so the client daemon rewrites that file and the host's own
# /etc/resolv.conf is never touched (each case checks it is unchanged). No systemd-resolved serves
# that namespace, so the client uses its resolv.conf backend.
#
# Cases:
#   * a name resolved through the tunnel by the resolver on the server's virtual IP (the resolver's
#     log shows the query came from the client's virtual IP, which only exists behind the tunnel);
#     status names the DNS applied; resolv.conf byte for byte as before after SIGTERM;
#   * SIGKILL leaves the tunnel's resolv.conf; the next start puts the original back before it writes
#     its own, and its stop leaves the original byte for byte;
#   * a panic in the engine task (ROAMTUN_TEST_PANIC=engine): the client exits non-zero with
#     resolv.conf back;
#   * a resolv.conf that another program rewrote while the tunnel was up is left as that program
#     wrote it.
#
# `tests/netns/dns.sh NAME` runs only the cases whose name contains NAME. Each case prints one line;
# the file ends with "dns: N passed, N failed". Run as root.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=../../scripts/lib/netns.sh
. "$ROOT/scripts/lib/netns.sh"
# shellcheck source=../../scripts/lib/roaming.sh
. "$ROOT/scripts/lib/roaming.sh"

NETNS_ETC=/etc/netns/$NS_C
CREATED_ETC_NETNS=
[ -d /etc/netns ] || CREATED_ETC_NETNS=1
dns_cleanup() {
    netns_cleanup
    rm -rf "$NETNS_ETC"
    [ -n "$CREATED_ETC_NETNS" ] && rmdir /etc/netns 2>/dev/null
    true
}
trap dns_cleanup EXIT

if ! command -v dnsmasq >/dev/null; then
    echo "dns: dnsmasq is missing (scripts/install-deps.sh installs dnsmasq-base)"
    echo "dns: 0 passed, 1 failed"
    exit 1
fi
HOST_RESOLV_BEFORE=$(sha256sum /etc/resolv.conf 2>/dev/null)

# What the client namespace's resolv.conf says before the client starts (a DHCP client's file).
ORIGINAL="$WORK/resolv.conf.original"
cat >"$ORIGINAL" <<'EOF'
# written by the DHCP client of the client namespace
nameserver 198.18.1.1
search lan
options timeout:1 attempts:1
EOF
NAME=app.roamtun.test
ANSWER=198.18.77.7

setup() {
    rm -f "$WORK/client.dns" "$WORK/dnsmasq.log"
    mkdir -p "$NETNS_ETC"
    cp "$ORIGINAL" "$NETNS_ETC/resolv.conf"
    chmod 644 "$NETNS_ETC/resolv.conf"
    netns_topology
    CLIENT_EXTRA='dns = ["100.64.0.1"]' netns_configs
    spawn "$WORK/server.log" "$NS_S" env ROAMTUN_LOG=info "$ROAMTUN" server -c "$WORK/server.toml"
    wait_for 10 "server control socket" test -S "$WORK/server.sock" || fail "the server did not start"
    wait_for 10 "the server's virtual IP" sh -c "ip netns exec $NS_S ip -4 addr show roamsrv0 | grep -q 100.64.0.1" ||
        fail "the server's TUN has no 100.64.0.1"
    # A resolver for a local-only zone, on the server's virtual IP only; it forwards nothing.
    spawn "$WORK/dnsmasq.out" "$NS_S" dnsmasq --keep-in-foreground --conf-file=/dev/null --user=root --group=root \
        --pid-file= --no-resolv --no-hosts --bind-interfaces --listen-address=100.64.0.1 --port=53 \
        --local=/roamtun.test/ --host-record="$NAME,$ANSWER" --log-queries --log-facility="$WORK/dnsmasq.log"
    wait_for 10 "dnsmasq on 100.64.0.1:53" sh -c "ip netns exec $NS_S ss -Hlun 'sport = :53' | grep -q 100.64.0.1" ||
        fail "dnsmasq does not listen: $(cat "$WORK/dnsmasq.out")"
}

start_client() {
    spawn "$WORK/client.log" "$NS_C" env ROAMTUN_LOG=info "$@" "$ROAMTUN" client -c "$WORK/client.toml"
    CLIENT_PID=$LAST_PID
}

# What the client namespace reads as /etc/resolv.conf (the bind mount ip netns exec makes).
ns_resolv() { c cat /etc/resolv.conf; }
ns_resolv_is_original() { c cmp -s /etc/resolv.conf "$ORIGINAL"; }
ns_resolv_is_tunnels() { ns_resolv | grep -qx 'nameserver 100.64.0.1'; }

host_untouched() {
    [ "$(sha256sum /etc/resolv.conf 2>/dev/null)" = "$HOST_RESOLV_BEFORE" ] || fail "the host's /etc/resolv.conf changed"
}

# stop_client SIGNAL: sends it and waits for the client (a child of this shell, so not in a
# command substitution) to exit; its exit code is in $CODE.
stop_client() {
    kill -"$1" "$CLIENT_PID"
    wait "$CLIENT_PID" 2>/dev/null
    CODE=$?
}

# Resolves $NAME in the client namespace as an app would (getaddrinfo through nsswitch and
# /etc/resolv.conf) and checks the answer and that it came through the tunnel.
resolve_through_tunnel() {
    local got
    got=$(c getent ahostsv4 "$NAME" | awk '{print $1; exit}')
    echo "resolved:    $NAME -> ${got:-nothing}"
    [ "$got" = "$ANSWER" ] || fail "getent ahostsv4 $NAME said '${got}', not $ANSWER; resolv.conf: $(ns_resolv)"
    grep -q "query\[A\] $NAME from 100.64.0.2" "$WORK/dnsmasq.log" ||
        fail "the resolver did not see the query from the client's virtual IP: $(cat "$WORK/dnsmasq.log")"
}

# exit_within SECONDS: $CODE is the client's exit code once it exits, or "running" after SECONDS.
exit_within() {
    local deadline=$((SECONDS + $1))
    while kill -0 "$CLIENT_PID" 2>/dev/null; do
        if [ $SECONDS -ge "$deadline" ]; then
            CODE=running
            return
        fi
        sleep 0.05
    done
    wait "$CLIENT_PID"
    CODE=$?
}

test_a_name_resolves_through_the_tunnel_and_resolv_conf_comes_back() {
    setup
    ns_resolv_is_original || fail "the namespace's resolv.conf is not the original before the start (nothing to check)"
    start_client
    wait_for 15 "the client to connect" client_connected || fail "the client did not connect"
    ns_resolv_is_tunnels || fail "resolv.conf does not name the tunnel's server: $(ns_resolv)"
    [ "$(json_get "$WORK/client.sock" 's["dns"]["backend"], s["dns"]["servers"]')" = "resolv.conf ['100.64.0.1']" ] ||
        fail "status does not show the DNS applied: $(json_get "$WORK/client.sock" 's.get("dns")')"
    "$ROAMTUN" status --socket "$WORK/client.sock" | grep -q "dns:          100.64.0.1 in /etc/resolv.conf" ||
        fail "the status text has no dns line: $("$ROAMTUN" status --socket "$WORK/client.sock")"
    resolve_through_tunnel
    [ -e "$WORK/client.dns" ] || fail "no saved copy beside the control socket"
    stop_client TERM
    [ "$CODE" = 0 ] || fail "the client exited $CODE at SIGTERM"
    ns_resolv_is_original || fail "resolv.conf is not the original after the stop: $(ns_resolv)"
    [ -e "$WORK/client.dns" ] && fail "the saved copy is left after the stop"
    echo "restored:    resolv.conf byte for byte after SIGTERM"
    host_untouched
}

test_after_sigkill_the_next_start_puts_resolv_conf_back() {
    setup
    start_client
    wait_for 15 "the client to connect" client_connected || fail "the client did not connect"
    ns_resolv_is_tunnels || fail "resolv.conf does not name the tunnel's server (nothing to check)"
    stop_client KILL
    ns_resolv_is_tunnels || fail "SIGKILL left the original resolv.conf (nothing to check)"
    [ -e "$WORK/client.dns" ] || fail "SIGKILL left no saved copy"
    start_client
    wait_for 15 "the restarted client to connect" client_connected || fail "the restarted client did not connect"
    grep -q "a previous client was killed with its DNS applied" "$WORK/client.log" ||
        fail "the log does not say the killed client's resolv.conf was put back"
    ns_resolv_is_tunnels || fail "the restarted client did not apply its DNS: $(ns_resolv)"
    resolve_through_tunnel
    stop_client TERM
    [ "$CODE" = 0 ] || fail "the client exited $CODE at SIGTERM"
    ns_resolv_is_original || fail "resolv.conf is not the original after SIGKILL, a start and a stop: $(ns_resolv)"
    echo "restored:    resolv.conf byte for byte after SIGKILL, a new start and SIGTERM"
    host_untouched
}

test_a_panic_puts_resolv_conf_back() {
    setup
    start_client ROAMTUN_TEST_PANIC=engine
    wait_for 15 "the tunnel's resolv.conf" ns_resolv_is_tunnels || fail "the client did not apply its DNS"
    # The status request fires the injected panic; its answer never comes.
    "$ROAMTUN" status --socket "$WORK/client.sock" >/dev/null 2>&1 && fail "the status request was answered"
    exit_within 10
    echo "exit:        client exited with $CODE after the engine panic"
    [ "$CODE" = running ] && fail "the client still runs after its engine task panicked"
    [ "$CODE" != 0 ] || fail "the client exited 0 after a panic"
    ns_resolv_is_original || fail "resolv.conf is not the original after the panic: $(ns_resolv)"
    host_untouched
}


test_a_resolv_conf_rewritten_meanwhile_is_left_alone() {
    setup
    start_client
    wait_for 15 "the client to connect" client_connected || fail "the client did not connect"
    ns_resolv_is_tunnels || fail "resolv.conf does not name the tunnel's server (nothing to check)"
    # The DHCP client renews its lease and writes its file again, through the same path.
    printf '# renewed lease\nnameserver 198.18.1.254\n' >"$WORK/renewed"
    c sh -c "cat '$WORK/renewed' > /etc/resolv.conf"
    stop_client TERM
    [ "$CODE" = 0 ] || fail "the client exited $CODE at SIGTERM"
    c cmp -s /etc/resolv.conf "$WORK/renewed" || fail "the newer resolv.conf was overwritten: $(ns_resolv)"
    grep -q "rewritten by another program" "$WORK/client.log" || fail "the log does not say the file was left alone"
    echo "left alone:  the renewed resolv.conf is kept at stop"
    host_untouched
}

for t in $(declare -F | awk '{print $3}' | grep '^test_'); do
    run "$t"
done
echo "dns: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
