#!/usr/bin/env bash
# Runs every test: formatting and lints, unit, property and kernel (netlink) tests with cargo, then
# the end-to-end tests in network namespaces with real apps. Needs root (namespaces, TUN devices).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
if [ "$(id -u)" != 0 ]; then
    echo "scripts/test.sh needs root: it creates network namespaces and TUN devices (as root, or sudo ./scripts/test.sh)" >&2
    exit 1
fi
modprobe tun 2>/dev/null || true
scripts/install-deps.sh || exit 1
# shellcheck source=lib/cargo-env.sh
. scripts/lib/cargo-env.sh
find_cargo || exit 1

step() { echo; echo "==> $*"; }
failed=()

step "cargo fmt --check"
cargo fmt --all -- --check || failed+=(fmt)
# The fuzz crate is a workspace of its own (docs/fuzzing.md); its one-line targets need no build here:
# tests/fuzz_replay.rs of each crate replays their corpora.
(cd "$ROOT/fuzz" && cargo fmt -- --check) || failed+=(fmt-fuzz)
step "cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings || failed+=(clippy)
step "cargo build --release"
# The WAN emulator too: tests/netns/wan.sh puts it between the namespaces.
cargo build --release --quiet -p roamtun -p roamtun-wanem || { echo "build failed"; exit 1; }
step "cargo test (unit, property, netlink)"
cargo test --workspace --quiet 2>&1 | tee "$ROOT/target/cargo-test.log"
[ "${PIPESTATUS[0]}" -eq 0 ] || failed+=(cargo-test)

netns_passed=0
netns_failed=0
for t in tests/netns/*.sh; do
    step "$t"
    out=$(mktemp)
    timeout 900 bash "$t" 2>&1 | tee "$out"
    line=$(grep -E '^[a-z-]+: [0-9]+ passed, [0-9]+ failed' "$out" | tail -n 1)
    p=$(echo "$line" | sed -E 's/.* ([0-9]+) passed.*/\1/')
    f=$(echo "$line" | sed -E 's/.* ([0-9]+) failed.*/\1/')
    netns_passed=$((netns_passed + ${p:-0}))
    # A script that died before its summary counts as one failure.
    netns_failed=$((netns_failed + ${f:-1}))
    rm -f "$out"
done

cargo_passed=$(grep -Eo '[0-9]+ passed' target/cargo-test.log | awk '{s+=$1} END {print s+0}')
cargo_failed=$(grep -Eo '[0-9]+ failed' target/cargo-test.log | awk '{s+=$1} END {print s+0}')
echo
echo "cargo tests: $cargo_passed passed, $cargo_failed failed; netns tests: $netns_passed passed, $netns_failed failed"
[ ${#failed[@]} -eq 0 ] || echo "failed steps: ${failed[*]}"
total_failed=$((cargo_failed + netns_failed + ${#failed[@]}))
echo "$((cargo_passed + netns_passed)) passed, $total_failed failed"
[ "$total_failed" -eq 0 ]
