# shellcheck shell=bash
# Puts cargo on PATH for a script that runs as root, whether started as root (root's own
# ~/.cargo/bin, which a login shell adds but `su -c` or a service does not) or through sudo, which
# resets PATH (secure_path) and so hides the invoking user's ~/.cargo/bin. With sudo, the user's
# rustup toolchains are used (RUSTUP_HOME) while the registry cache stays root's own (CARGO_HOME
# unchanged), so nothing in the user's ~/.cargo becomes root's.
#
#   find_cargo    returns 1 with a message if there is no cargo to be found

find_cargo() {
    command -v cargo >/dev/null 2>&1 && return 0
    local dir=${CARGO_HOME:-$HOME/.cargo}/bin home
    if [ -x "$dir/cargo" ]; then
        export PATH="$dir:$PATH"
        return 0
    fi
    if [ -n "${SUDO_USER:-}" ] && [ "$SUDO_USER" != root ]; then
        home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
        if [ -n "$home" ] && [ -x "$home/.cargo/bin/cargo" ]; then
            export PATH="$home/.cargo/bin:$PATH"
            # rustup's cargo finds its toolchains in RUSTUP_HOME, by default root's ~/.rustup.
            if [ -z "${RUSTUP_HOME:-}" ] && [ -d "$home/.rustup" ] && [ ! -d "$HOME/.rustup/toolchains" ]; then
                export RUSTUP_HOME="$home/.rustup"
            fi
            return 0
        fi
    fi
    echo "cargo is missing: install Rust ≥ 1.91 with rustup (https://rustup.rs), as root or as the user who runs sudo" >&2
    return 1
}
