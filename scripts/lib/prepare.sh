# shellcheck shell=bash
# How each script a person runs by hand begins (the demo, the soak, the benchmarks): as root, with the
# tun module, the Debian packages it uses and a release build of roamtun, then the netns library
# loaded. The caller has set ROOT and made it the working directory; it installs its own EXIT trap
# (`netns_cleanup`, or a function that ends with it) right after `prepare`.
#
#   prepare WHAT [--bench]   WHAT names the run in the message for a user who is not root ("the demo");
#                            --bench also installs the packages of the systems compared (wireguard-go)

log() { echo "==> $*" >&2; }

prepare() {
    local what=$1 deps=${2:-}
    if [ "$(id -u)" != 0 ]; then
        echo "$what needs root for network namespaces and TUN devices: run it as root, or sudo $0" >&2
        exit 1
    fi
    modprobe tun 2>/dev/null || true
    # shellcheck disable=SC2086 # deps is empty or one flag
    "$ROOT/scripts/install-deps.sh" $deps >&2 || exit 1
    # shellcheck source=cargo-env.sh
    . "$ROOT/scripts/lib/cargo-env.sh"
    find_cargo || exit 1
    log "building roamtun (release)"
    # With the WAN emulator, which the benchmarks' wan profile puts between the namespaces.
    cargo build --release --quiet -p roamtun -p roamtun-wanem || exit 1
    # Sourced here, its variables and functions are still global: it declares nothing local at the
    # top level.
    # shellcheck source=netns.sh
    . "$ROOT/scripts/lib/netns.sh"
    # With an EXIT trap, an interrupt ends the script as soon as the current (time-bounded) command
    # returns, and the trap cleans up.
    trap 'exit 130' INT TERM
}
