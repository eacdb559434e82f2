#!/usr/bin/env bash
# The live demo: builds roamtun, creates a client and a server network namespace joined by two veth
# uplinks, starts both daemons, moves a verified file both ways through the tunnel, then keeps a
# transfer and an interactive session running while the client switches uplinks three times (a planned
# switch, a network that silently drops everything behind the active uplink, then the active link
# pulled down), shows `roamtun status` and cleans everything up (also on failure or Ctrl-C).
#
#   ns client: apps -> roam0 100.64.0.2 (stable virtual IP) -> roamtun client -> wlan0 198.18.1.2
#                                                                            or wwan0 198.18.2.2
#   ns server: roamtun server on 198.18.0.1:7700 (over up1 and up2) -> roamsrv0 100.64.0.1 -> apps
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=lib/prepare.sh
. "$ROOT/scripts/lib/prepare.sh"
prepare "the demo"
trap netns_cleanup EXIT

echo "==> namespaces $NS_C (client) and $NS_S (server); uplinks wlan0 198.18.1.2 and wwan0 198.18.2.2"
netns_topology
netns_second_uplink
SERVER_ADDR=198.18.0.1 CLIENT_EXTRA='uplinks = ["wlan0", "wwan0"]' netns_configs
netns_start_daemons
echo "==> client connected; virtual IP 100.64.0.2 on roam0"

mkdir -p "$WORK/www"
head -c $((32 << 20)) /dev/urandom >"$WORK/www/file"
spawn "$WORK/apps.log" "$NS_S" $APPS http-server 100.64.0.1 8080 "$WORK/www" "$WORK/http.ready"
wait_ready "$WORK/http.ready"

start=$(date +%s.%N)
c curl -sS -o "$WORK/got" http://100.64.0.1:8080/file
down_secs=$(python3 -c "import sys; print(round(float(sys.argv[1]) - float(sys.argv[2]), 2))" "$(date +%s.%N)" "$start")
want=$(sha256sum <"$WORK/www/file" | cut -d' ' -f1)
got=$(sha256sum <"$WORK/got" | cut -d' ' -f1)
[ "$want" = "$got" ] || { echo "download corrupted: $want != $got"; exit 1; }
echo "==> downloaded 32 MiB through the tunnel, sha256 $got matches"
up=$(c curl -sS -T "$WORK/got" http://100.64.0.1:8080/upload)
[ "$up" = "$want" ] || { echo "upload corrupted: server saw $up"; exit 1; }
echo "==> uploaded 32 MiB, the server computed the same sha256"
c ping -c 3 -i 0.2 -q 100.64.0.1 | tail -n 1 | sed 's/^/==> ping 100.64.0.1: /'

echo
echo "==> roaming: a 256 MiB transfer each way and an echo every 50 ms keep running while the client"
echo "    switches uplinks (planned wlan0 -> wwan0, a black hole behind wwan0, then wlan0 pulled down)"
spawn "$WORK/apps.log" "$NS_S" $APPS bulk-server 100.64.0.1 7200 "$WORK/bulk.ready"
spawn "$WORK/apps.log" "$NS_S" $APPS echo-server 100.64.0.1 7000 "$WORK/echo.ready"
wait_ready "$WORK/bulk.ready"
wait_ready "$WORK/echo.ready"
spawn "$WORK/bulk.out" "$NS_C" $APPS bulk-client 100.64.0.1 7200 --size $((256 << 20)) --rate $((12 << 20)) --timeout 120
bulk=$LAST_PID
spawn "$WORK/echo.out" "$NS_C" $APPS interactive 100.64.0.1 7000 "$WORK/stop" --timeout 120
echo_pid=$LAST_PID
wait_progress 32
echo "==> roamtun switch wwan0"
"$ROAMTUN" switch wwan0 --socket "$WORK/client.sock" | sed 's/^/    /'
wait_progress 32
state() { json_get "$WORK/client.sock" '" ".join(u["name"] + "=" + u["state"] for u in s["uplinks"])'; }
on_uplink() { [ "$(json_get "$WORK/client.sock" 's["peers"][0]["uplink"]')" = "$1" ]; }
settled() { [ "$(state)" = "wlan0=active wwan0=standby" ]; }
echo "==> black hole: the network behind wwan0 drops everything (nftables at the far end; the link stays up)"
drop_all s up2 roamtun_demo
wait_for 10 "the session back on wlan0" on_uplink wlan0
echo "    decided: $(json_get "$WORK/client.sock" 's["peers"][0]["last_error"]'); now on $(json_get "$WORK/client.sock" 's["peers"][0]["uplink"]')"
s nft delete table inet roamtun_demo
wait_for 15 "a warm standby path on wwan0 again" settled
echo "    black hole gone; uplinks: $(state)"
echo "==> ip link set wlan0 down (the active uplink disappears)"
c ip link set wlan0 down
wait "$bulk" || { cat "$WORK/bulk.out"; echo "the transfer failed"; exit 1; }
touch "$WORK/stop"
wait "$echo_pid" || { cat "$WORK/echo.out"; echo "the interactive session failed"; exit 1; }
sed 's/^/==> /' "$WORK/bulk.out" "$WORK/echo.out"
echo
echo "==> roamtun status (client)"
"$ROAMTUN" status --socket "$WORK/client.sock"
echo
echo "==> roamtun status (server)"
"$ROAMTUN" status --socket "$WORK/server.sock"
echo
echo "demo finished: transfers verified (download took ${down_secs}s), the session survived all three switches; cleaning up"
