# shellcheck shell=bash
# Debian packages for scripts/test and scripts/try.
# Sourced; uses log from common.sh.

# What the last ensure_debian_packages installed (empty when all were present).
DEBIAN_PACKAGES_INSTALLED=()

# ensure_debian_packages PKG...: installs the packages dpkg does not list as
# installed. Ask dpkg first: `apt-get update` costs seconds and needs the
# network, so it only runs when something is actually missing.
ensure_debian_packages() {
    local missing=() pkg
    for pkg in "$@"; do
        if ! dpkg-query -W -f='${db:Status-Abbrev}' "$pkg" 2>/dev/null | grep -q '^ii'; then
            missing+=("$pkg")
        fi
    done
    DEBIAN_PACKAGES_INSTALLED=()
    if ((${#missing[@]} == 0)); then
        log "all Debian packages present"
        return
    fi
    log "installing: ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
    # shellcheck disable=SC2034  # read by the caller
    DEBIAN_PACKAGES_INSTALLED=("${missing[@]}")
}
