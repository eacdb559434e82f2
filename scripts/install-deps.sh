#!/usr/bin/env bash
# Installs the Debian packages the demo, the tests and the benchmarks use, if any is missing.
set -euo pipefail
need=()
for pair in iperf3:iperf3 curl:curl nc:netcat-openbsd nft:nftables ip:iproute2 python3:python3 \
            ping:iputils-ping setpriv:util-linux ss:iproute2 nstat:iproute2 cc:build-essential; do
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
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo is missing: install Rust (https://rustup.rs) or Debian's cargo package" >&2
    exit 1
fi
