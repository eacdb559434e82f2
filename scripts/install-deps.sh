#!/usr/bin/env bash
# Installs the Debian packages the demo, the tests and the benchmarks use, if any is missing.
set -euo pipefail
need=()
for pair in iperf3:iperf3 curl:curl nc:netcat-openbsd nft:nftables ip:iproute2 python3:python3 \
            ping:iputils-ping setpriv:util-linux ss:iproute2 nstat:iproute2 cc:build-essential \
            ethtool:ethtool dnsmasq:dnsmasq-base; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || need+=("${pair#*:}")
done
if [ "${1:-}" = "--bench" ]; then
    command -v wireguard-go >/dev/null 2>&1 || need+=(wireguard-go)
    command -v wg >/dev/null 2>&1 || need+=(wireguard-tools)
fi
if [ ${#need[@]} -gt 0 ]; then
    echo "installing: ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Debian's own rustc is older than the 1.91 roamtun needs: rustup it is (scripts/lib/cargo-env.sh).
# shellcheck source=lib/cargo-env.sh
. "$(dirname "$0")/lib/cargo-env.sh"
find_cargo || exit 1
