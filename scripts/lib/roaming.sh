# shellcheck shell=bash
# What the roaming tests share (tests/netns/transition.sh, tests/netns/linkmgr.sh): running cases with
# a fresh topology each, the apps a user would have open during a switch, and reading the switches
# back from `roamtun status`. Sourced after scripts/lib/netns.sh.

PASSED=0
FAILED=0
ONLY=${1:-}
# 256 MiB each way by default; the bench and quick local runs may lower it.
SIZE=${ROAMTUN_TRANSFER:-$((256 << 20))}

run() {
    local name=$1
    [ -n "$ONLY" ] && [[ "$name" != *"$ONLY"* ]] && return
    local rc start=$SECONDS
    : >"$WORK/client.log"
    : >"$WORK/server.log"
    ("$name") >"$WORK/case.out" 2>&1
    rc=$?
    if [ $rc -eq 0 ]; then
        PASSED=$((PASSED + 1))
        printf 'ok   %-44s %3ds\n' "$name" $((SECONDS - start))
        sed 's/^/     /' "$WORK/case.out" | grep -E '^     (bulk|interactive|udp-stream|switch|switches|reset|memory|detected|source|restored|refused|reloaded)' || true
    else
        FAILED=$((FAILED + 1))
        printf 'FAIL %-44s %3ds\n' "$name" $((SECONDS - start))
        sed 's/^/     | /' "$WORK/case.out"
        echo "     | --- client log (tail)"; tail -n 25 "$WORK/client.log" | sed 's/^/     | /'
        echo "     | --- server log (tail)"; tail -n 25 "$WORK/server.log" | sed 's/^/     | /'
    fi
    teardown
}

fail() {
    echo "$*"
    exit 1
}

# Stops what the last case started and removes its namespaces; the next case starts afresh.
teardown() {
    local pid
    for pid in $(cat "$PIDFILE"); do kill "$pid" 2>/dev/null || true; done
    for pid in $(cat "$PIDFILE"); do
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
    done
    : >"$PIDFILE"
    local ns
    # EXTRA_NS: the emulator's namespace of scripts/lib/wan.sh, remade by the next case's setup.
    for ns in "$NS_C" "$NS_S" "${EXTRA_NS[@]:-}"; do
        [ -n "$ns" ] || continue
        pids=$(ip netns pids "$ns" 2>/dev/null)
        [ -n "$pids" ] && kill -9 $pids 2>/dev/null
        ip netns del "$ns" 2>/dev/null || true
    done
    rm -f "$WORK"/*.ready "$WORK"/stop "$WORK"/*.sock
}

# Starts the apps of every case; the transfer paced at RATE bytes/s each way.
start_workload() {
    local rate=$1
    spawn "$WORK/apps.log" "$NS_S" $APPS bulk-server 100.64.0.1 7200 "$WORK/bulk.ready"
    spawn "$WORK/apps.log" "$NS_S" $APPS echo-server 100.64.0.1 7000 "$WORK/echo.ready"
    spawn "$WORK/apps.log" "$NS_S" $APPS udp-echo-server 100.64.0.1 7003 "$WORK/udp.ready"
    spawn "$WORK/apps.log" "$NS_C" $APPS echo-server 100.64.0.2 7100 "$WORK/cecho.ready"
    for f in bulk echo udp cecho; do wait_ready "$WORK/$f.ready" || fail "app $f did not start"; done
    spawn "$WORK/bulk.out" "$NS_C" $APPS bulk-client 100.64.0.1 7200 --size "$SIZE" --rate "$rate" --timeout 240
    BULK_PID=$LAST_PID
    spawn "$WORK/interactive.out" "$NS_C" $APPS interactive 100.64.0.1 7000 "$WORK/stop" --timeout 240
    INTER_PID=$LAST_PID
    spawn "$WORK/sinteractive.out" "$NS_S" $APPS interactive 100.64.0.2 7100 "$WORK/stop" --timeout 240
    SINTER_PID=$LAST_PID
    spawn "$WORK/udp.out" "$NS_C" $APPS udp-stream 100.64.0.1 7003 "$WORK/stop" --timeout 240
    UDP_PID=$LAST_PID
}

progress() { wait_progress "$1"; }

# Waits for every app; fails unless all of them verified what they got.
finish_workload() {
    local rc=0
    wait "$BULK_PID" || rc=1
    touch "$WORK/stop"
    wait "$INTER_PID" || rc=1
    wait "$SINTER_PID" || rc=1
    wait "$UDP_PID" || true
    echo "bulk:        $(tail -n 1 "$WORK/bulk.out")"
    echo "interactive: client-opened: $(tail -n 1 "$WORK/interactive.out" | sed 's/^interactive: //')"
    echo "interactive: server-opened: $(tail -n 1 "$WORK/sinteractive.out" | sed 's/^interactive: //')"
    echo "udp-stream:  $(tail -n 1 "$WORK/udp.out" | sed 's/^udp-stream: //')"
    grep -q "bulk-server: received $SIZE/$SIZE bytes, sha256 ok" "$WORK/apps.log" || { echo "the server side did not verify the transfer"; rc=1; }
    [ $rc -eq 0 ] || fail "an app saw a failure"
}

# switch UPLINK: a planned switch through the control socket; prints the daemon's one-line summary.
switch_to() {
    local out
    out=$(timeout 20 "$ROAMTUN" switch "$1" --socket "$WORK/client.sock" 2>&1) || fail "roamtun switch $1 failed: $out"
    echo "switch:      $out"
}

# The client's current uplink and its switch history, from status.
active_uplink() { json_get "$WORK/client.sock" 's["peers"][0]["uplink"]'; }
switch_kinds() { json_get "$WORK/client.sock" '" ".join(w["kind"] + ":" + str(w["from"]) + ">" + str(w["to"]) for w in s["peers"][0]["switches"])'; }
epoch() { json_get "$WORK/client.sock" 's["peers"][0]["epoch"]'; }

# expect_switches KINDS [WHAT]: prints the session's switches (switch_kinds); fails unless they are KINDS.
expect_switches() {
    local kinds
    kinds=$(switch_kinds)
    echo "switches:    $kinds"
    [ "$kinds" = "$1" ] || fail "${2:-status shows switches}: '$kinds'"
}

# Waits for the client to be on a path of a later epoch than $EPOCH0 (taken before the event).
resumed() { [ "$(epoch)" -gt "$EPOCH0" ] && client_connected; }
wait_resumed() { wait_for 30 "the session to resume on a new path" resumed; }

